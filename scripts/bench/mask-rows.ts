#!/usr/bin/env bun
/**
 * Row masking in process, without sockets or PostgreSQL: the rows of
 * scripts/bench/mask-stack.ts (id, name, email, card, note, created_at, the
 * same values as its generate_series makes) through ResultMasker.rowInto
 * with the masking-on gateway's mask (column rules on email and
 * card:partial, every detector on the rest), in runs of about 512 KB (what
 * one socket read delivers) as the session writes them (an Outbox, its parts taken, the session's RowSlabs
 * sealed and released), against the same rows relayed unmasked (what
 * masking off does with them). Prints ns per row for both and the
 * difference: masking's own CPU per row (the process's CPU time, so other
 * load on the machine skews it less than wall time would).
 *
 *   bun scripts/bench/mask-rows.ts [--rows N] [--rounds N]
 *     --rows N    rows per round (default 1000000; 100,000 distinct rows, repeated)
 *     --rounds N  rounds, each masked then relayed (default 5); the medians are printed
 *
 * Add --cpu-prof before the script's name to profile (bun --cpu-prof scripts/bench/mask-rows.ts).
 */
import { parseArgs } from "node:util";
import { compileMask } from "../../src/mask/rules.ts";
import type { ColumnOrigin } from "../../src/protocols/postgres/catalog.ts";
import { Outbox } from "../../src/protocols/postgres/framer.ts";
import { type Field, newTally, ResultMasker, RowSlabs } from "../../src/protocols/postgres/rows.ts";
import { FIRST, LAST, NOTES } from "./mask-data.ts";
import { printHelp } from "./stack.ts";

const { values: opt } = parseArgs({ args: process.argv.slice(2), options: { rows: { type: "string", default: "1000000" }, rounds: { type: "string", default: "5" }, help: { type: "boolean", short: "h" } } });
if (opt.help) printHelp(import.meta.path);
const ROWS = Number(opt.rows);
const ROUNDS = Number(opt.rounds);
const DISTINCT = Math.min(ROWS, 100_000);

// ── the rows (as mask-stack.ts's LOAD_SQL makes them) ──────────────────

const plain = (s: string) => s.toLowerCase().replace(/[üíáéó]/g, (c) => ({ ü: "u", í: "i", á: "a", é: "e", ó: "o" })[c]!);

function luhn(p: string): string {
  let sum = 0;
  for (let i = 1; i <= p.length; i++) {
    const d = Number(p[i - 1]);
    sum += (p.length - i) % 2 === 0 ? Math.floor((d * 2) / 10) + ((d * 2) % 10) : d;
  }
  return p + ((10 - (sum % 10)) % 10);
}

function values(i: number): string[] {
  const f = FIRST[i % 16]!;
  const l = LAST[Math.floor(i / 16) % 16]!;
  const c = luhn(`4${((BigInt(i) * 982451653n + 12345n) % 100000000000000n).toString().padStart(14, "0")}`);
  const note =
    i % 20 === 0
      ? `Asked to be contacted at ${plain(l)}.${i % 997}@mail.example.org instead of the address on file; order ${i % 100000} is pending.`
      : i % 20 === 10
        ? `Prefers a call on +44 20 7946 ${String(i % 10000).padStart(4, "0")} between nine and five; order ${i % 100000} went to the wrong door.`
        : NOTES[i % 4]!.replace("%", String(i % 100000));
  const at = new Date(Date.UTC(2023, 0, 1) + i * 37_000).toISOString().replace("T", " ").replace(/\.000Z$/, "+00");
  return [String(i), `${f} ${l}`, `${plain(`${f}.${l}`)}${i}@example.com`, `${c.slice(0, 4)} ${c.slice(4, 8)} ${c.slice(8, 12)} ${c.slice(12, 16)}`, note, at];
}

function dataRow(vs: string[]): Buffer {
  const bytes = vs.map((v) => Buffer.from(v, "utf8"));
  const body = 2 + bytes.reduce((n, b) => n + 4 + b.length, 0);
  const out = Buffer.allocUnsafe(5 + body);
  out[0] = 0x44;
  out.writeInt32BE(4 + body, 1);
  out.writeUInt16BE(vs.length, 5);
  let p = 7;
  for (const b of bytes) {
    out.writeInt32BE(b.length, p);
    p += 4 + b.copy(out, p + 4);
  }
  return out;
}

// The distinct rows, back to back in one buffer as they arrive from the target (views into it, as Framer makes them).
const single = Array.from({ length: DISTINCT }, (_, k) => dataRow(values(k + 1)));
const all = Buffer.concat(single);
/** Where row k is in `all`: [from[k], from[k + 1]). */
const from = new Int32Array(DISTINCT + 1);
for (let k = 0; k < DISTINCT; k++) from[k + 1] = from[k]! + single[k]!.length;

// ── the masker, as the masking-on gateway plans it ─────────────────────

const TABLE = 16384;
const COLS: [string, number][] = [["id", 20], ["name", 25], ["email", 25], ["card", 25], ["note", 25], ["created_at", 1184]];
const fields: Field[] = COLS.map(([name, type], k) => ({ name, table: TABLE, attnum: k + 1, type, format: 0 }));
const origin = (_t: number, attnum: number): ColumnOrigin => ({ schema: "public", table: "bench_customers", column: COLS[attnum - 1]![0], via: [] });
const mask = compileMask({ columns: ["public.bench_customers.email", "public.bench_customers.card:partial"], detectors: ["*"] });

/**
 * The rows arrive in reads of up to 512 KB (what one socket read delivers),
 * each copied into the same receive buffer first (as the kernel copies into
 * the buffer a read returns, so the rows are in the cache when masking
 * reads them, in both rounds), and the rows of a read are written to the
 * client at once.
 */
const CHUNK = 512 * 1024;
/** Rows [reads[j], reads[j + 1]) arrive in read j. */
const reads: number[] = [0];
for (let k = 1; k <= DISTINCT; k++) if (k === DISTINCT || from[k + 1]! - from[reads[reads.length - 1]!]! > CHUNK) reads.push(k);
const received = Buffer.allocUnsafeSlow(CHUNK + 64 * 1024);

function round(masked: boolean): { ns: number; bytes: number; tally: ReturnType<typeof newTally> } {
  const tally = newTally();
  const slabs = new RowSlabs(true);
  const m = new ResultMasker(fields, mask, undefined, origin, tally, undefined, undefined, slabs);
  const out = new Outbox();
  let bytes = 0;
  const t0 = process.cpuUsage();
  for (let done = 0, j = 0; done < ROWS; j = (j + 1) % (reads.length - 1)) {
    const first = reads[j]!;
    const last = Math.min(reads[j + 1]!, first + ROWS - done);
    const base = from[first]!;
    all.copy(received, 0, base, from[last]!);
    for (let r = first; r < last; r++) {
      const a = from[r]! - base;
      const b = from[r + 1]! - base;
      if (masked) bytes += m.rowInto(received, a, b, out);
      else {
        out.addRange(received, a, b);
        bytes += b - a;
      }
    }
    done += last - first;
    out.takeParts();
    const sealed = slabs.seal();
    // the socket flushes them (as session.ts writeNow does once the write completes)
    if (sealed) slabs.release(sealed);
  }
  const cpu = process.cpuUsage(t0);
  const ns = (cpu.user + cpu.system) * 1000;
  m.settle();
  return { ns, bytes, tally };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
const on: number[] = [];
const off: number[] = [];
let last: ReturnType<typeof round> | undefined;
round(true);
round(false);
for (let r = 0; r < ROUNDS; r++) {
  last = round(true);
  on.push(last.ns / ROWS);
  off.push(round(false).ns / ROWS);
}
const fmt = (n: number) => n.toFixed(0).padStart(6);
console.log(`${ROWS} rows (${DISTINCT} distinct, ${(all.length / DISTINCT).toFixed(0)} bytes a DataRow), ${ROUNDS} rounds, medians:`);
console.log(`  masked   ${fmt(median(on))} ns/row   (rounds: ${on.map((x) => x.toFixed(0)).join(" ")})`);
console.log(`  relayed  ${fmt(median(off))} ns/row   (rounds: ${off.map((x) => x.toFixed(0)).join(" ")})`);
console.log(`  masking  ${fmt(median(on) - median(off))} ns/row = ${((median(on) - median(off)) / 1000).toFixed(2)} s of CPU per 1M rows`);
console.log(`  last round: ${last!.tally.rows} rows masked, columns ${JSON.stringify(last!.tally.columns)}, detectors ${JSON.stringify(last!.tally.detectors)}`);
