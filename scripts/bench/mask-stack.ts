#!/usr/bin/env bun
/**
 * Masking throughput and memory: one SELECT streaming a whole table (by
 * default 1,000,000 rows, about 240 MB as DataRow messages, with e-mails and
 * card numbers in their own columns and e-mails or phone numbers in every
 * tenth note) from one throwaway PostgreSQL, through three paths in one run:
 *
 *   direct      psql → PostgreSQL
 *   agate-off   psql → `agate serve` with masking off (no detectors, no column rules)
 *   agate-on    psql → `agate serve` with column rules on email and card
 *               (card:partial) and every detector ("*") on all other columns
 *
 * Each gateway is a process of its own (embedded default policy, strict
 * durable audit log, masking set in policy.data per connection). The client
 * is psql with FETCH_COUNT (it reads through a cursor, FETCH 10000 rows at a
 * time; through agate each FETCH is a statement decided and audited) and
 * output to /dev/null; a run's time is psql's whole wall time, connection
 * included. After one warm-up per path (whose output is counted), the paths
 * are run in turn, direct, off, on, direct, off, on, … and the medians
 * compared: masking-on must reach >= 0.5x direct and >= 0.8x masking-off
 * throughput. MB/s is the result's size as DataRow messages in text format,
 * unmasked (computed in SQL, 1 MB = 10^6 bytes), over the wall time.
 *
 * Memory: the peak RSS (VmHWM) of the masking-on gateway after the runs,
 * and of another fresh masking-on gateway that runs the same number of
 * queries on a tenth of the rows (a LIMIT): the peak must not grow with the
 * result size (target: the larger result's peak <= 1.25x the smaller's).
 *
 * Prints PASS/FAIL against the targets and exits 0 either way (it is a
 * measurement); it exits 1 when something fails to run.
 *
 *   bun scripts/bench/mask-stack.ts [options]      (or bash scripts/bench/mask.sh)
 *     --rows N            rows in the table (default 1000000; the memory run uses N/10)
 *     --runs N            measured runs per path after the warm-up (default 3)
 *     --fetch-count N     psql's FETCH_COUNT (default 10000)
 *     --agate-flags="..." extra bun flags for every agate process (e.g. --agate-flags="--cpu-prof --cpu-prof-dir=/tmp/p")
 *     --keep              keep the temp dir (gateway configs, logs, audit logs) afterwards;
 *                         PostgreSQL's data directory is removed either way
 *     -h, --help          this text
 *
 * Needs bun, psql, pg_isready and the PostgreSQL server binaries (as
 * test/helpers/postgres.ts finds them: /usr/lib/postgresql/<v>/bin, PATH, or
 * PG_BIN). Everything listens on 127.0.0.1 only; every process started here
 * is stopped on exit, error, SIGINT or SIGTERM.
 */
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { availableParallelism, cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { readRecords } from "../../src/audit/index.ts";
import { startPostgres, type TestPostgres } from "../../test/helpers/postgres.ts";
import { FIRST, LAST, NOTES } from "./mask-data.ts";
import { type AgateProcess, handleSignals, isStopping, machineCpu, mustRun, onCleanup, pgEnv, printHelp, runMain, procCpu, procMemory, run, say, startAgate } from "./stack.ts";

const USER = "app_scram";
const DB = "app";
const TABLE = "bench_customers";
const COLUMNS = "id, name, email, card, note, created_at";
const MASK_COLUMNS = [`public.${TABLE}.email`, `public.${TABLE}.card:partial`];
/** The same policy data for every gateway: masking is off unless the connection is bench-on. */
const POLICY_DATA = {
  agate: { config: { mask: { detectors: [], columns: [] }, connections: { "bench-on": { mask: { detectors: ["*"], columns: MASK_COLUMNS } } } } },
};
const MEMORY_TARGET = 1.25;

// ── arguments ──────────────────────────────────────────────────────────

const { values: opt, positionals } = parseArgs({
  args: process.argv.slice(2),
  allowPositionals: true,
  options: {
    rows: { type: "string", default: "1000000" },
    runs: { type: "string", default: "3" },
    "fetch-count": { type: "string", default: "10000" },
    "agate-flags": { type: "string", default: "" },
    keep: { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (opt.help) printHelp(import.meta.path);
if (positionals.length > 0) die(`unexpected argument ${positionals[0]}; see --help`);
const ROWS = wholeNumber("--rows", opt.rows!, 10, 100_000_000);
const RUNS = wholeNumber("--runs", opt.runs!, 1, 100);
const FETCH_COUNT = wholeNumber("--fetch-count", opt["fetch-count"]!, 1, 10_000_000);
const SMALL = Math.max(1, Math.floor(ROWS / 10));
const agateFlags = opt["agate-flags"]!.split(/\s+/).filter(Boolean);

function wholeNumber(name: string, s: string, min: number, max: number): number {
  const n = Number(s);
  if (!Number.isInteger(n) || n < min || n > max) die(`${name} must be a whole number from ${min} to ${max}; got ${s}`);
  return n;
}

function die(msg: string): never {
  process.stderr.write(`mask-stack: ${msg}\n`);
  process.exit(2);
}

handleSignals();

const base = mkdtempSync(join(tmpdir(), "agate-maskbench-"));
chmodSync(base, 0o755);
onCleanup("temp dir", async () => {
  if (opt.keep) say(`kept ${base}`);
  else rmSync(base, { recursive: true, force: true });
});

// ── the data ───────────────────────────────────────────────────────────

const sqlArray = (xs: string[]) => `ARRAY[${xs.map((x) => `'${x.replaceAll("'", "''")}'`).join(", ")}]`;

/**
 * 1 in 20 notes has an e-mail address, another 1 in 20 an international
 * phone number; cards are Visa numbers with a valid Luhn check digit, in
 * groups of four.
 */
const LOAD_SQL = `
CREATE FUNCTION bench_luhn(p text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT p || ((10 - sum(CASE WHEN (length(p) - i) % 2 = 0 THEN (d * 2) / 10 + (d * 2) % 10 ELSE d END) % 10) % 10)::text
  FROM (SELECT i, substr(p, i, 1)::int AS d FROM generate_series(1, length(p)) i) digits
$$;
CREATE TABLE ${TABLE} (id bigint PRIMARY KEY, name text NOT NULL, email text NOT NULL, card text NOT NULL, note text NOT NULL, created_at timestamptz NOT NULL);
INSERT INTO ${TABLE}
SELECT i, f || ' ' || l, lower(translate(f || '.' || l, 'üíáéó', 'uiaeo')) || i || '@example.com',
       substr(c, 1, 4) || ' ' || substr(c, 5, 4) || ' ' || substr(c, 9, 4) || ' ' || substr(c, 13, 4),
       CASE WHEN i % 20 = 0 THEN 'Asked to be contacted at ' || lower(translate(l, 'üíáéó', 'uiaeo')) || '.' || (i % 997) || '@mail.example.org instead of the address on file; order ' || (i % 100000) || ' is pending.'
            WHEN i % 20 = 10 THEN 'Prefers a call on +44 20 7946 ' || lpad((i % 10000)::text, 4, '0') || ' between nine and five; order ' || (i % 100000) || ' went to the wrong door.'
            ELSE replace((${sqlArray(NOTES)})[1 + i % 4], '%', (i % 100000)::text) END,
       timestamptz '2023-01-01 00:00:00+00' + i * interval '37 seconds'
FROM generate_series(1, ${ROWS}) i,
     LATERAL (SELECT (${sqlArray(FIRST)})[1 + i % 16] AS f, (${sqlArray(LAST)})[1 + (i / 16) % 16] AS l,
                     bench_luhn('4' || lpad(((i::bigint * 982451653 + 12345) % 100000000000000)::text, 14, '0')) AS c) g;
DROP FUNCTION bench_luhn(text);
GRANT SELECT ON ${TABLE} TO ${USER};
`;

/** The bytes of the DataRow messages of `rows` (text format): 7 of header, 4 of length and the text of each of 6 columns. */
const SIZE_SQL = (limit?: number) => `
SELECT count(*), coalesce(sum(7 + 6 * 4 + t), 0), coalesce(sum(t + 5 + 1), 0)
FROM (SELECT octet_length(id::text) + octet_length(name) + octet_length(email) + octet_length(card) + octet_length(note) + octet_length(created_at::text) AS t
      FROM (SELECT ${COLUMNS} FROM ${TABLE}${limit ? ` LIMIT ${limit}` : ""}) r) s`;

interface Size {
  rows: number;
  /** DataRow messages, text format, unmasked. */
  wire: number;
  /** psql -At output: fields joined by "|", a newline after each row. */
  text: number;
}

async function sizeOf(pg: TestPostgres, limit?: number): Promise<Size> {
  const [rows, wire, text] = (await pg.psql(SIZE_SQL(limit))).trim().split("|").map(Number);
  return { rows: rows!, wire: wire!, text: text! };
}

// ── paths and runs ─────────────────────────────────────────────────────

type PathName = "direct" | "agate-off" | "agate-on";
const PATHS: PathName[] = ["direct", "agate-off", "agate-on"];

interface Endpoint {
  name: string;
  port: number;
  user: string;
  password: string;
  /** The gateway process, for its CPU and memory. */
  pid?: number;
}

function psqlArgv(e: Endpoint, sql: string, extra: string[] = []): string[] {
  return ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", String(e.port), "-U", e.user, ...extra, "-c", sql, DB];
}

interface Run {
  wall: number;
  /** CPU seconds: the gateway process, psql, and the whole machine (all processes). */
  gatewayCpu: number;
  psqlCpu: number;
  machineCpu: number;
  /** What psql printed, when counted. */
  outBytes?: number;
}

let clkTck = 100;

/** One streaming SELECT of `limit` rows (all without), psql's output to /dev/null, or counted with `count`. */
async function select(e: Endpoint, limit: number | undefined, count = false): Promise<Run> {
  const sql = `SELECT ${COLUMNS} FROM ${TABLE}${limit ? ` LIMIT ${limit}` : ""}`;
  let outBytes = 0;
  const argv = psqlArgv(e, sql, ["-v", `FETCH_COUNT=${FETCH_COUNT}`, ...(count ? [] : ["-o", "/dev/null"])]);
  const g0 = await procCpu(e.pid);
  const m0 = machineCpu();
  const t0 = performance.now();
  const r = await run(argv, { env: pgEnv(e, "mask-bench"), timeoutMs: 3_600_000, ...(count ? { onStdout: (c: Uint8Array) => void (outBytes += c.length) } : { stdout: "ignore" as const }) });
  const wall = (performance.now() - t0) / 1000;
  const m1 = machineCpu();
  const g1 = await procCpu(e.pid);
  if (isStopping()) throw new Error("stopping");
  if (r.code !== 0) throw new Error(`${e.name}: psql exited ${r.code}: ${r.err.trim()}`);
  return { wall, gatewayCpu: e.pid ? g1 - g0 : NaN, psqlCpu: r.cpu, machineCpu: (m1.busy - m0.busy) / clkTck, ...(count ? { outBytes } : {}) };
}

// ── the audit log: what masking did ────────────────────────────────────

interface AuditSummary {
  records: number;
  commands: number;
  /** Outcomes with masking, and the sums of their tallies. */
  maskedRows: number;
  columns: Record<string, number>;
  detectors: Record<string, number>;
  fetches: number;
}

async function auditSummary(dir: string): Promise<AuditSummary> {
  const s: AuditSummary = { records: 0, commands: 0, maskedRows: 0, columns: {}, detectors: {}, fetches: 0 };
  const add = (into: Record<string, number>, from: unknown) => {
    for (const [k, v] of Object.entries((from ?? {}) as Record<string, number>)) into[k] = (into[k] ?? 0) + v;
  };
  for await (const r of readRecords(dir)) {
    s.records++;
    if (r.type === "command") {
      s.commands++;
      if (typeof r.text === "string" && /^\s*FETCH\b/i.test(r.text)) s.fetches++;
    }
    const m = r.masked as { rows?: number; columns?: unknown; detectors?: unknown } | undefined;
    if (r.type === "outcome" && m) {
      s.maskedRows += m.rows ?? 0;
      add(s.columns, m.columns);
      add(s.detectors, m.detectors);
    }
  }
  return s;
}

// ── report helpers ─────────────────────────────────────────────────────

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const k = s.length >> 1;
  return s.length % 2 ? s[k]! : (s[k - 1]! + s[k]!) / 2;
};
const mb = (bytes: number) => (bytes / 1e6).toFixed(1);
const int = (n: number) => n.toLocaleString("en-US");
const pass = (ok: boolean) => (ok ? "PASS" : "FAIL");
const pad = (s: string, n: number) => s.padEnd(n);
const lpad = (s: string, n: number) => s.padStart(n);

// ── main ───────────────────────────────────────────────────────────────

async function main(): Promise<number> {
  clkTck = Number((await mustRun(["getconf", "CLK_TCK"])).trim()) || 100;
  say(`temp dir ${base}; ${ROWS} rows, ${RUNS} runs per path, FETCH_COUNT ${FETCH_COUNT}; machine: ${availableParallelism()} cores, ${cpus()[0]?.model ?? "?"}`);
  say("starting PostgreSQL");
  // Big enough to hold the table; no synchronised scans, so every LIMIT reads the same first rows.
  const pg = await startPostgres({ settings: { shared_buffers: "512MB", synchronize_seqscans: "off" } });
  onCleanup("PostgreSQL", () => pg.stop());

  say(`loading ${int(ROWS)} rows into ${TABLE} (generate_series)`);
  let t0 = performance.now();
  await pg.psql(LOAD_SQL);
  await pg.psql(`VACUUM (FREEZE, ANALYZE) ${TABLE}`);
  const relBytes = Number((await pg.psql(`SELECT pg_total_relation_size('${TABLE}')`)).trim());
  const full = await sizeOf(pg);
  const small = await sizeOf(pg, SMALL);
  say(`  loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s: ${mb(full.wire)} MB as DataRows, ${mb(relBytes)} MB on disk`);
  if (full.rows !== ROWS) throw new Error(`expected ${ROWS} rows, counted ${full.rows}`);

  const target = { port: pg.port, database: DB, user: USER, password: pg.password };
  const gateway = async (name: string, connection: string): Promise<{ a: AgateProcess; e: Endpoint }> => {
    const a = await startAgate({ base, name, target, connections: [connection], policyData: POLICY_DATA, flags: agateFlags });
    say(`${name} listening on 127.0.0.1:${a.ports[connection]} (connection ${connection})`);
    return { a, e: { name, port: a.ports[connection]!, user: a.user, password: a.password, pid: a.pid } };
  };
  say("starting the gateways (a process each)");
  const off = await gateway("agate-off", "bench-off");
  const on = await gateway("agate-on", "bench-on");
  const direct: Endpoint = { name: "direct", port: pg.port, user: USER, password: pg.password };
  const endpoints: Record<PathName, Endpoint> = { direct, "agate-off": off.e, "agate-on": on.e };
  const idle = { off: procMemory(off.a.pid), on: procMemory(on.a.pid) };

  // What each path returns for a row with an e-mail in its note and one with a phone number.
  const sampleSql = `SELECT ${COLUMNS} FROM ${TABLE} WHERE id IN (10, 20) ORDER BY id`;
  const sample: Record<string, string> = {};
  for (const p of PATHS) sample[p] = await mustRun(psqlArgv(endpoints[p], sampleSql), { env: pgEnv(endpoints[p], "mask-bench"), timeoutMs: 30_000 });
  if (sample["agate-off"] !== sample.direct) throw new Error(`masking off changed rows:\n${sample.direct}\n${sample["agate-off"]}`);
  if (sample["agate-on"] === sample.direct) throw new Error(`masking on changed nothing:\n${sample["agate-on"]}`);

  // Other load on the machine skews every number: measure it once, before the runs.
  const idle0 = machineCpu();
  await Bun.sleep(1000);
  const idle1 = machineCpu();
  const busyBefore = (100 * (idle1.busy - idle0.busy)) / Math.max(1, idle1.total - idle0.total);
  if (busyBefore > 10) say(`warning: the machine is ${busyBefore.toFixed(0)}% busy before the runs (other processes); results will be noisy`);

  const warm: Record<string, Run> = {};
  for (const p of PATHS) {
    say(`warm-up ${p}: ${int(ROWS)} rows, psql's output counted`);
    warm[p] = await select(endpoints[p], undefined, true);
    say(`  ${warm[p].wall.toFixed(2)} s, psql printed ${mb(warm[p].outBytes!)} MB`);
  }
  if (warm.direct!.outBytes !== full.text) say(`note: psql printed ${warm.direct!.outBytes} bytes directly; SQL expected ${full.text}`);
  const onAfterWarmup = procMemory(on.a.pid);

  const runs: Record<PathName, Run[]> = { direct: [], "agate-off": [], "agate-on": [] };
  for (let k = 1; k <= RUNS; k++) {
    for (const p of PATHS) {
      say(`run ${k}/${RUNS} ${p}: ${int(ROWS)} rows`);
      const r = await select(endpoints[p], undefined);
      runs[p].push(r);
      say(`  ${r.wall.toFixed(2)} s, ${(full.wire / 1e6 / r.wall).toFixed(1)} MB/s${Number.isNaN(r.gatewayCpu) ? "" : `, gateway CPU ${r.gatewayCpu.toFixed(2)} s`}`);
    }
  }
  const mem = { off: procMemory(off.a.pid), on: procMemory(on.a.pid) };

  // The memory run: a fresh masking-on gateway, the same number of queries on a tenth of the rows.
  say(`memory run: a fresh masking-on gateway, ${1 + RUNS} SELECTs of ${int(SMALL)} rows`);
  await off.a.stop();
  await on.a.stop();
  const onSmall = await gateway("agate-on-small", "bench-on");
  const idleSmall = procMemory(onSmall.a.pid);
  const smallRuns: Run[] = [];
  for (let k = 0; k <= RUNS; k++) smallRuns.push(await select(onSmall.e, SMALL));
  const memSmall = procMemory(onSmall.a.pid);
  await onSmall.a.stop();

  const auditOn = await auditSummary(on.a.auditDir);
  const auditOff = await auditSummary(off.a.auditDir);

  // ── report ──
  const med = (p: PathName, f: (r: Run) => number) => median(runs[p].map(f));
  const rate = (p: PathName) => full.wire / 1e6 / med(p, (r) => r.wall);
  const lines: string[] = [];
  const out = (s = "") => lines.push(s);
  out(`mask benchmark: SELECT ${COLUMNS} FROM ${TABLE} (${int(ROWS)} rows), psql -At -o /dev/null with FETCH_COUNT=${FETCH_COUNT} (a cursor: ${Math.ceil(ROWS / FETCH_COUNT)} FETCHes a run)`);
  out(`result: ${mb(full.wire)} MB as DataRow messages (text format, unmasked; the MB in MB/s, 1 MB = 10^6 bytes); psql prints ${mb(full.text)} MB; table ${mb(relBytes)} MB on disk`);
  out(`masking on: columns ${MASK_COLUMNS.join(", ")}; detectors "*" (all) on the other columns; masking off: none. Both gateways: default policy, strict durable audit log`);
  out();
  out(`${pad("path", 11)}${lpad("runs (s)", 22)}${lpad("median s", 10)}${lpad("MB/s", 8)}${lpad("CPU s: gateway", 16)}${lpad("psql", 7)}${lpad("machine", 9)}`);
  for (const p of PATHS) {
    const walls = runs[p].map((r) => r.wall.toFixed(2)).join(" ");
    const g = med(p, (r) => r.gatewayCpu);
    out(`${pad(p, 11)}${lpad(walls, 22)}${lpad(med(p, (r) => r.wall).toFixed(2), 10)}${lpad(rate(p).toFixed(1), 8)}${lpad(Number.isNaN(g) ? "-" : g.toFixed(2), 16)}${lpad(med(p, (r) => r.psqlCpu).toFixed(2), 7)}${lpad(med(p, (r) => r.machineCpu).toFixed(2), 9)}`);
  }
  out(`(CPU: medians per run; machine = all processes on all ${availableParallelism()} cores, PostgreSQL and anything else running included)`);
  out();
  const onDirect = rate("agate-on") / rate("direct");
  const onOff = rate("agate-on") / rate("agate-off");
  out(`agate-off / direct  ${(rate("agate-off") / rate("direct")).toFixed(2)}`);
  out(`agate-on / direct   ${onDirect.toFixed(2)}   target >= 0.50: ${pass(onDirect >= 0.5)}`);
  out(`agate-on / off      ${onOff.toFixed(2)}   target >= 0.80: ${pass(onOff >= 0.8)}`);
  out();
  const growth = mem.on.peak / memSmall.peak;
  out(`gateway memory (VmRSS idle after start-up -> VmHWM, the peak RSS; "now": VmRSS after the last run; ${1 + RUNS} SELECTs each, warm-up included):`);
  out(`  agate-off       ${int(ROWS).padStart(11)} rows: ${mb(idle.off.rss)} MB -> peak ${mb(mem.off.peak)} MB, now ${mb(mem.off.rss)} MB`);
  out(`  agate-on        ${int(ROWS).padStart(11)} rows: ${mb(idle.on.rss)} MB -> peak ${mb(onAfterWarmup.peak)} MB after the first SELECT, ${mb(mem.on.peak)} MB after all, now ${mb(mem.on.rss)} MB`);
  out(`  agate-on-small  ${int(SMALL).padStart(11)} rows: ${mb(idleSmall.rss)} MB -> peak ${mb(memSmall.peak)} MB, now ${mb(memSmall.rss)} MB (${(small.wire / 1e6 / median(smallRuns.slice(1).map((r) => r.wall))).toFixed(1)} MB/s, ${mb(small.wire)} MB a SELECT)`);
  out(`  peak at ${int(ROWS)} rows / at ${int(SMALL)} rows: ${growth.toFixed(2)} (+${mb(mem.on.peak - memSmall.peak)} MB for ${mb(full.wire - small.wire)} MB more result)   target <= ${MEMORY_TARGET}: ${pass(growth <= MEMORY_TARGET)}`);
  out();
  const fmtCounts = (c: Record<string, number>) => Object.entries(c).map(([k, v]) => `${k} ${int(v)}`).join(", ") || "none";
  const totalRows = (1 + RUNS) * ROWS + 2; // and the two sample rows
  out(`agate-on audit log (${int(auditOn.records)} records, ${int(auditOn.fetches)} FETCHes): ${int(auditOn.maskedRows)} of ${int(totalRows)} rows masked (the two sample rows included); column rules: ${fmtCounts(auditOn.columns)}; detectors: ${fmtCounts(auditOn.detectors)}`);
  out(`agate-off audit log (${int(auditOff.records)} records, ${int(auditOff.fetches)} FETCHes): ${int(auditOff.maskedRows)} rows masked`);
  out(`psql's output (warm-up): direct ${int(warm.direct!.outBytes!)} bytes, agate-off ${int(warm["agate-off"]!.outBytes!)} (${warm["agate-off"]!.outBytes === warm.direct!.outBytes ? "same" : "DIFFERENT"}), agate-on ${int(warm["agate-on"]!.outBytes!)}`);
  out(`rows 10 and 20, direct:\n${indent(sample.direct!)}`);
  out(`rows 10 and 20, agate-on:\n${indent(sample["agate-on"]!)}`);
  out();
  out(`machine: ${availableParallelism()} cores (${cpus()[0]?.model ?? "?"}), shared by psql, PostgreSQL and the gateway; ${busyBefore.toFixed(0)}% busy before the runs (idle stack)`);
  console.log("\n" + lines.join("\n"));
  return 0;
}

function indent(s: string): string {
  return s.trimEnd().split("\n").map((l) => `  ${l}`).join("\n");
}

await runMain(main);
