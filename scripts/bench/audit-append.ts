/**
 * Audit log append throughput: C concurrent appenders, each awaiting its
 * append before the next, ~300-byte records, for a fixed record count.
 * Prints appends/s per durability mode, with a raw "write + fdatasync per
 * record" loop on the same disk as the baseline the group commit beats.
 *
 *   bun scripts/bench/audit-append.ts [appenders=16] [records=50000] [dir=$TMPDIR]
 */
import * as fs from "node:fs";
import { open } from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { openLog, verifyLog, type Durability } from "../../src/audit/index.ts";

const appenders = Number(process.argv[2] ?? 16);
const records = Number(process.argv[3] ?? 50_000);
const base = fs.mkdtempSync(path.join(process.argv[4] ?? os.tmpdir(), "agate-bench-"));
const text = "x".repeat(110); // with the log's v, i, prev and t, a payload of ~300 bytes

async function run(durability: Durability): Promise<number> {
  const dir = fs.mkdtempSync(path.join(base, durability.mode + "-"));
  const log = await openLog(dir, { durability });
  let issued = 0;
  const start = performance.now();
  await Promise.all(
    Array.from({ length: appenders }, async (_, w) => {
      while (issued < records) {
        issued++;
        await log.append({ type: "command", session: `s-${w}`, text, decision: { allow: true } });
      }
    }),
  );
  await log.flush();
  const s = (performance.now() - start) / 1000;
  await log.close();
  const v = await verifyLog(dir);
  if (!v.ok || v.records !== records) throw new Error(`verify failed: ${JSON.stringify(v)}`);
  return records / s;
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
  const strict = await run({ mode: "strict" });
  const interval = await run({ mode: "interval", interval_ms: 100 });
  const raw = await baseline(2000);
  const strictDir = path.join(base, fs.readdirSync(base).find((d) => d.startsWith("strict-"))!);
  const bytes = fs.readdirSync(strictDir).reduce((sum, f) => sum + fs.statSync(path.join(strictDir, f)).size, 0);
  const vStart = performance.now();
  const v = await verifyLog(strictDir);
  const verifyRate = v.ok ? v.records / ((performance.now() - vStart) / 1000) : 0;
  const fmt = (x: number) => Math.round(x).toLocaleString("en-US");
  console.log(`${appenders} appenders, ${records} records of ${Math.round(bytes / records - 8)} bytes on average, in ${base}`);
  console.log(`baseline  write+fdatasync per record: ${fmt(raw)} records/s`);
  console.log(`strict    group commit:               ${fmt(strict)} appends/s  (${(strict / raw).toFixed(1)}x baseline)`);
  console.log(`interval  100 ms:                     ${fmt(interval)} appends/s  (${(interval / raw).toFixed(1)}x baseline)`);
  console.log(`verify:                               ${fmt(verifyRate)} records/s`);
} finally {
  fs.rmSync(base, { recursive: true, force: true });
}
