/**
 * The audit log against the disk it runs on.
 *
 * - agate:    W concurrent writers, each awaiting its append before the next
 *             (the gateway's pattern: a statement waits for its record),
 *             realistic command/outcome records, strict durability (append
 *             resolves after the fdatasync that covers it), Merkle tree and
 *             signed checkpoints on (every 10,000 records or 10 s, as by
 *             default).
 * - raw:      the baseline: the same W writers appending the very same
 *             bytes (agate's frames, read back from its segments) to a plain
 *             file with the same group commit, one write and one fdatasync
 *             per batch, and no encoding, hashing or tree: the ceiling any
 *             durable append on this disk can reach.
 * - naive:    for scale, one writer doing write + fdatasync per record.
 * - verify:   `agate verify` of the log agate wrote (signatures, tree, chain,
 *             CRCs), records/s.
 *
 * agate and raw alternate for R rounds; the medians are compared. Prints
 * records/s and p50/p99 append latency for each, and the ratio agate/raw
 * (target >= 0.7) and verify's rate (target >= 200,000 records/s).
 *
 *   bun scripts/bench/audit.ts [--writers 16] [--records 40000] [--rounds 3] [--dir $TMPDIR]
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { openLog, verifyLog } from "../../src/audit/index.ts";
import { generateKey, parseSignerKey, parseVerifierKey } from "../../src/audit/note.ts";
import { scanSegment, listSegments } from "../../src/audit/segments.ts";
import { printHelp } from "./stack.ts";

const { values: opt } = parseArgs({
  options: {
    writers: { type: "string", default: "16" },
    records: { type: "string", default: "40000" },
    rounds: { type: "string", default: "3" },
    dir: { type: "string", default: os.tmpdir() },
    help: { type: "boolean", short: "h" },
  },
});
if (opt.help) printHelp(import.meta.path);
const W = Number(opt.writers);
const N = Number(opt.records);
const R = Number(opt.rounds);
const base = fs.mkdtempSync(path.join(opt.dir!, "agate-bench-audit-"));
const { signerKey, verifierKey } = generateKey("bench.local/audit");
const signer = parseSignerKey(signerKey);

/** A gateway-shaped record: statements alternate with their outcomes. */
function record(k: number): Record<string, unknown> {
  const session = `3f0c9a4e-8d1b-4f7a-9c2e-${String(k % 64).padStart(12, "0")}`;
  if (k % 2 === 1) return { type: "outcome", session, seqs: [k >> 1], tags: ["UPDATE 1"], rows: 1 };
  return {
    type: "command",
    session,
    seq: k >> 1,
    text: `UPDATE pgbench_accounts SET abalance = abalance + ${k % 5000} WHERE aid = ${(k * 7919) % 100_000};`,
    sql: [{ kind: "update", tag: "UPDATE", tables: ["pgbench_accounts"], functions: [], where: true }],
    params: [],
    decision: { allow: true, reasons: [], policy: "8ab3f8a3f7b0" },
  };
}

interface Run {
  rate: number;
  p50: number;
  p99: number;
}

function summarize(n: number, ms: number, lat: Float64Array): Run {
  const sorted = lat.slice(0, n).sort();
  return { rate: n / (ms / 1000), p50: sorted[Math.floor(n * 0.5)]!, p99: sorted[Math.floor(n * 0.99)]! };
}

/** W writers, each awaiting `append(k)` for the next k, until N are done. */
async function drive(append: (k: number) => Promise<unknown>): Promise<Run> {
  const lat = new Float64Array(N);
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: W }, async () => {
      while (next < N) {
        const k = next++;
        const s = performance.now();
        await append(k);
        lat[k] = performance.now() - s;
      }
    }),
  );
  return summarize(N, performance.now() - t0, lat);
}

async function agateRun(round: number): Promise<{ run: Run; dir: string }> {
  const dir = path.join(base, `agate-${round}`);
  const recs = Array.from({ length: N }, (_, k) => record(k));
  const log = await openLog(dir, { signer, checkpointEveryRecords: 10_000, checkpointEverySeconds: 10 });
  Bun.gc(true);
  const run = await drive((k) => log.append(recs[k]!));
  await log.close();
  return { run, dir };
}

/** Every frame agate wrote, as it is on disk. */
async function framesOf(dir: string): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for (const s of await listSegments(dir)) {
    for await (const chunk of scanSegment(s.path)) {
      for (const f of chunk.frames) {
        const frame = Buffer.allocUnsafe(8 + f.payload.length);
        frame.writeUInt32BE(f.payload.length, 0);
        frame.writeUInt32BE(0, 4);
        f.payload.copy(frame, 8);
        out.push(frame);
      }
    }
  }
  return out;
}

/** Group commit with nothing else: queue the bytes, one write + one fdatasync per batch. */
async function rawRun(round: number, frames: Buffer[]): Promise<Run> {
  const fd = fs.openSync(path.join(base, `raw-${round}`), "w");
  let queue: { data: Buffer; done: () => void }[] = [];
  let busy = false;
  let pos = 0;
  const cycle = () => {
    busy = true;
    const batch = queue;
    queue = [];
    const data = Buffer.concat(batch.map((b) => b.data));
    for (let off = 0; off < data.length; ) off += fs.writeSync(fd, data, off, data.length - off, pos + off);
    pos += data.length;
    fs.fdatasync(fd, (err) => {
      if (err) throw err;
      for (const b of batch) b.done();
      busy = false;
      if (queue.length) setImmediate(cycle);
    });
  };
  const append = (k: number) =>
    new Promise<void>((done) => {
      queue.push({ data: frames[k]!, done });
      if (!busy && queue.length === 1) setImmediate(() => !busy && queue.length && cycle());
    });
  Bun.gc(true);
  const run = await drive(append);
  fs.closeSync(fd);
  return run;
}

async function naive(frames: Buffer[], n: number): Promise<number> {
  const fd = fs.openSync(path.join(base, "naive"), "w");
  let pos = 0;
  const t0 = performance.now();
  for (let k = 0; k < n; k++) {
    const f = frames[k]!;
    fs.writeSync(fd, f, 0, f.length, pos);
    pos += f.length;
    await new Promise<void>((res, rej) => fs.fdatasync(fd, (e) => (e ? rej(e) : res())));
  }
  fs.closeSync(fd);
  return n / ((performance.now() - t0) / 1000);
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const fmt = (x: number) => Math.round(x).toLocaleString("en-US");

try {
  console.log(`${W} writers, ${N} records per run, ${R} rounds, in ${base} (${os.availableParallelism()} cores)`);
  const agate: Run[] = [];
  const raw: Run[] = [];
  let frames: Buffer[] = [];
  let lastDir = "";
  for (let r = 0; r < R; r++) {
    const a = await agateRun(r);
    agate.push(a.run);
    if (r === 0) frames = await framesOf(a.dir);
    if (lastDir) fs.rmSync(lastDir, { recursive: true, force: true });
    lastDir = a.dir;
    raw.push(await rawRun(r, frames));
    fs.rmSync(path.join(base, `raw-${r}`), { force: true });
    console.log(`round ${r + 1}: agate ${fmt(a.run.rate)}/s (p99 ${a.run.p99.toFixed(2)} ms), raw ${fmt(raw[r]!.rate)}/s (p99 ${raw[r]!.p99.toFixed(2)} ms)`);
  }
  const bytes = frames.reduce((s, f) => s + f.length, 0) / frames.length;
  const naiveRate = await naive(frames, 2000);

  // verify: the last agate log, plus a bigger one made quickly in interval mode.
  const big = path.join(base, "verify");
  {
    const log = await openLog(big, { signer, durability: { mode: "interval", interval_ms: 50 } });
    for (let k = 0; k < 300_000; k++) {
      log.appendLater(record(k));
      if (k % 10_000 === 9_999) await log.checkpoint();
    }
    await log.close();
  }
  const key = parseVerifierKey(verifierKey);
  const t0 = performance.now();
  const v = await verifyLog(big, { key });
  const verifyRate = v.records / ((performance.now() - t0) / 1000);
  if (!v.ok) throw new Error(`verify failed: ${JSON.stringify(v)}`);

  const A = { rate: median(agate.map((x) => x.rate)), p50: median(agate.map((x) => x.p50)), p99: median(agate.map((x) => x.p99)) };
  const B = { rate: median(raw.map((x) => x.rate)), p50: median(raw.map((x) => x.p50)), p99: median(raw.map((x) => x.p99)) };
  console.log("");
  console.log(`records of ${Math.round(bytes)} bytes framed on average; medians of ${R} rounds`);
  console.log(`| path | records/s | p50 append | p99 append |`);
  console.log(`|---|---|---|---|`);
  console.log(`| raw group commit (baseline) | ${fmt(B.rate)} | ${B.p50.toFixed(2)} ms | ${B.p99.toFixed(2)} ms |`);
  console.log(`| agate (strict, Merkle tree, checkpoints) | ${fmt(A.rate)} | ${A.p50.toFixed(2)} ms | ${A.p99.toFixed(2)} ms |`);
  console.log(`| naive write+fdatasync per record | ${fmt(naiveRate)} | | |`);
  console.log("");
  console.log(`agate/raw: ${(A.rate / B.rate).toFixed(2)}x (target >= 0.7)`);
  console.log(`verify: ${fmt(verifyRate)} records/s over ${fmt(v.records)} records and ${v.checkpoints} checkpoints, signatures checked (target >= 200,000)`);
} finally {
  fs.rmSync(base, { recursive: true, force: true });
}
