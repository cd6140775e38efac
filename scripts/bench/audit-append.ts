/**
 * Audit log append throughput and CPU cost.
 *
 * - append:  C concurrent appenders, each awaiting its append before the
 *            next, ~300-byte records (the group commit's best case).
 * - gateway: C "clients" doing what the gateway does per SQL statement:
 *            `await append(command)`, then `appendLater(outcome)`, with
 *            realistic record shapes (two records per statement).
 * - single:  one appender awaiting each append: every record is a batch
 *            of its own, so this shows the per-batch overhead (write,
 *            fdatasync, promises) on top of the per-record cost.
 * - enqueue: the synchronous cost of encoding and queueing one record
 *            (appendLater in a tight loop, no I/O in the timed part).
 *
 * For each mode: records/s, process CPU per record (process.cpuUsage(),
 * all threads: main, thread pool, GC) and main-thread CPU per record (from
 * /proc/self/task/<pid>/schedstat on Linux; the event loop's share, which
 * is what the gateway's connections compete for). A raw "write + fdatasync
 * per record" loop on the same disk is the baseline the group commit beats.
 *
 *   bun scripts/bench/audit-append.ts [appenders=16] [records=50000] [dir=$TMPDIR]
 */
import * as fs from "node:fs";
import { open } from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { openLog, verifyLog, type AuditLog, type Durability } from "../../src/audit/index.ts";

const appenders = Number(process.argv[2] ?? 16);
const records = Number(process.argv[3] ?? 50_000);
const base = fs.mkdtempSync(path.join(process.argv[4] ?? os.tmpdir(), "agate-bench-"));
const text = "x".repeat(110); // with the log's v, i, prev and t, a payload of ~300 bytes
const session = "3f0c9a4e-8d1b-4f7a-9c2e-5b6d7e8f9a0b";
const policy = "8ab3f8a3f7b0";

/** Nanoseconds the main thread has run, or NaN where /proc is not there. */
function mainThreadNs(): number {
  try {
    return Number(fs.readFileSync(`/proc/self/task/${process.pid}/schedstat`, "utf8").split(" ")[0]);
  } catch {
    return NaN;
  }
}

interface Cost {
  rate: number; // records/s
  cpuUs: number; // process CPU per record, µs
  mainUs: number; // main-thread CPU per record, µs
}

async function measure(n: number, body: () => Promise<void>): Promise<Cost> {
  Bun.gc(true);
  const cpu0 = process.cpuUsage();
  const main0 = mainThreadNs();
  const t0 = performance.now();
  await body();
  const s = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const main = mainThreadNs() - main0;
  return { rate: n / s, cpuUs: (cpu.user + cpu.system) / n, mainUs: main / 1000 / n };
}

async function withLog(label: string, durability: Durability, expect: number, body: (log: AuditLog) => Promise<void>): Promise<Cost> {
  const dir = fs.mkdtempSync(path.join(base, label + "-"));
  const log = await openLog(dir, { durability });
  const cost = await measure(expect, async () => {
    await body(log);
    await log.flush();
  });
  await log.close();
  const v = await verifyLog(dir);
  if (!v.ok || v.records !== expect) throw new Error(`verify failed: ${JSON.stringify(v)}`);
  return cost;
}

function appendMode(label: string, durability: Durability, clients = appenders, n = records): Promise<Cost> {
  return withLog(label, durability, n, async (log) => {
    let issued = 0;
    await Promise.all(
      Array.from({ length: clients }, async (_, w) => {
        while (issued < n) {
          issued++;
          await log.append({ type: "command", session: `s-${w}`, text, decision: { allow: true } });
        }
      }),
    );
  });
}

function command(seq: number, aid: number): Record<string, unknown> {
  return {
    type: "command",
    session,
    seq,
    text: `SELECT abalance FROM pgbench_accounts WHERE aid = ${aid};`,
    sql: [{ kind: "select", tag: "SELECT" }],
    decision: { allow: true, reasons: [], policy },
  };
}

function outcome(seq: number): Record<string, unknown> {
  return { type: "outcome", session, seqs: [seq], tags: ["SELECT 1"], rows: 1 };
}

/** Two records per statement: the awaited command, then the outcome. */
function gatewayMode(durability: Durability): Promise<Cost> {
  const statements = records / 2;
  return withLog("gateway", durability, statements * 2, async (log) => {
    let issued = 0;
    await Promise.all(
      Array.from({ length: appenders }, async () => {
        let seq = 0;
        while (issued < statements) {
          issued++;
          seq++;
          await log.append(command(seq, (issued * 7919) % 100_000));
          log.appendLater(outcome(seq));
        }
      }),
    );
  });
}

/** Synchronous encode + enqueue cost: appendLater in a loop (the durable part is outside the timing). */
async function enqueueMode(): Promise<{ command: number; outcome: number }> {
  const dir = fs.mkdtempSync(path.join(base, "enqueue-"));
  const log = await openLog(dir, { durability: { mode: "interval", interval_ms: 1000 } });
  const time = (make: (k: number) => Record<string, unknown>): number => {
    const n = 20_000;
    const recs = Array.from({ length: n }, (_, k) => make(k));
    const t0 = Bun.nanoseconds();
    for (let k = 0; k < n; k++) log.appendLater(recs[k]!);
    return (Bun.nanoseconds() - t0) / 1000 / n;
  };
  let best = { command: Infinity, outcome: Infinity };
  for (let round = 0; round < 5; round++) {
    best = { command: Math.min(best.command, time((k) => command(k, k))), outcome: Math.min(best.outcome, time((k) => outcome(k))) };
    await log.flush();
  }
  await log.close();
  return best;
}

/** Baseline: what one writer gets with one write + fdatasync per record. */
async function baseline(n: number): Promise<number> {
  const fh = await open(path.join(base, "baseline"), "w");
  const rec = Buffer.alloc(308, 0x78);
  const start = performance.now();
  for (let k = 0; k < n; k++) {
    await fh.write(rec, 0, rec.length, k * rec.length);
    await fh.datasync();
  }
  const s = (performance.now() - start) / 1000;
  await fh.close();
  return n / s;
}

try {
  const strict = await appendMode("strict", { mode: "strict" });
  const interval = await appendMode("interval", { mode: "interval", interval_ms: 100 });
  const gateway = await gatewayMode({ mode: "strict" });
  const single = await appendMode("single", { mode: "strict" }, 1, 3000);
  const enqueue = await enqueueMode();
  const raw = await baseline(2000);
  const strictDir = path.join(base, fs.readdirSync(base).find((d) => d.startsWith("strict-"))!);
  const bytes = fs.readdirSync(strictDir).reduce((sum, f) => sum + fs.statSync(path.join(strictDir, f)).size, 0);
  const vStart = performance.now();
  const v = await verifyLog(strictDir);
  const verifyRate = v.ok ? v.records / ((performance.now() - vStart) / 1000) : 0;
  const fmt = (x: number) => Math.round(x).toLocaleString("en-US");
  const us = (x: number) => x.toFixed(1).padStart(5);
  const row = (label: string, c: Cost, unit: string) =>
    `${label}${fmt(c.rate).padStart(9)} ${unit}  (${(c.rate / raw).toFixed(1).padStart(4)}x baseline)  CPU/record: process ${us(c.cpuUs)} µs, main thread ${us(c.mainUs)} µs`;
  console.log(`${appenders} appenders, ${records} records of ${Math.round(bytes / records - 8)} bytes on average, in ${base}`);
  console.log(`baseline  write+fdatasync per record: ${fmt(raw).padStart(9)} records/s`);
  console.log(row("strict    group commit:               ", strict, "appends/s"));
  console.log(row("interval  100 ms:                     ", interval, "appends/s"));
  console.log(row("gateway   await command + outcome:    ", gateway, "records/s"));
  console.log(row("single    1 appender, batch of 1:     ", single, "appends/s"));
  console.log(`enqueue   encode + queue, per record:   command ${enqueue.command.toFixed(2)} µs, outcome ${enqueue.outcome.toFixed(2)} µs (main thread, no I/O)`);
  console.log(`verify:                               ${fmt(verifyRate).padStart(9)} records/s`);
} finally {
  fs.rmSync(base, { recursive: true, force: true });
}
