#!/usr/bin/env bun
/**
 * Soak and fuzz the PostgreSQL listener: `agate serve` as a process of its
 * own (embedded default policy, strict audit log) in front of a throwaway
 * PostgreSQL, and WORKERS connections at a time, each one fuzz case
 * (fuzz.ts: the known-bad classes and random mutations of valid streams,
 * before and after login, COPY included), for SECONDS.
 *
 * Every INTERVAL seconds a fresh porsager client must answer `select 1`
 * within 30 s (else a hang is counted; the slowest answer is reported), and the gateway must still run
 * (else a crash); its RSS is sampled every 250 ms. What clients read is
 * searched for internal errors (XX000 "internal error") and stack traces.
 * A case ending in a probe Query that never gets its answer is counted as
 * a stuck session (a desync of that one session, not a gateway hang).
 *
 * Prints a summary on stderr and, with --json, the figures as JSON on
 * stdout. Exits 0 when there was no crash, no hang, no stack trace and (with
 * --rss-limit-mb) the peak RSS stayed under the limit; 2 otherwise; 1 when
 * something fails to run.
 *
 *   bun scripts/bench/soak.ts [options]
 *     --seconds N        how long to fuzz (default 60)
 *     --workers N        fuzz connections open at a time (default 32)
 *     --interval N       seconds between liveness checks (default 2)
 *     --seed N           the random seed (default: from the clock; printed)
 *     --only CLASS       only the known-bad cases of one class (fuzz.ts KNOWN_BAD, e.g. pipeline-flood)
 *     --rss-limit-mb N   fail when the gateway's peak RSS exceeds N MB
 *     --json             the figures as JSON on stdout
 *     --keep             keep the gateway's directory (config, log, audit log)
 *     -h, --help         this text
 *
 * Needs bun, psql and the PostgreSQL server binaries (as
 * test/helpers/postgres.ts finds them). Everything listens on 127.0.0.1.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import postgres from "postgres";
import { startPostgres } from "../../test/helpers/postgres.ts";
import { type Credentials, type FuzzCase, FUZZ_TABLE, fuzzCase, KNOWN_BAD, Random } from "./fuzz.ts";
import { handleSignals, isStopping, onCleanup, printHelp, procMemory, runMain, say, startAgate, withTimeout } from "./stack.ts";

const { values: opt, positionals } = parseArgs({
  args: process.argv.slice(2),
  allowPositionals: true,
  options: {
    seconds: { type: "string", default: "60" },
    workers: { type: "string", default: "32" },
    interval: { type: "string", default: "2" },
    seed: { type: "string" },
    only: { type: "string" },
    "rss-limit-mb": { type: "string" },
    json: { type: "boolean", default: false },
    keep: { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (opt.help) printHelp(import.meta.path);
if (positionals.length > 0) throw new Error(`unexpected argument ${positionals[0]}; see --help`);
const SECONDS = Number(opt.seconds);
const WORKERS = Number(opt.workers);
const INTERVAL_MS = Number(opt.interval) * 1000;
const SEED = opt.seed !== undefined ? Number(opt.seed) : Date.now() % 2 ** 31;
const ONLY = opt.only as (typeof KNOWN_BAD)[number] | undefined;
if (ONLY !== undefined && !KNOWN_BAD.includes(ONLY)) throw new Error(`--only must be one of ${KNOWN_BAD.join(", ")}`);
const RSS_LIMIT = opt["rss-limit-mb"] !== undefined ? Number(opt["rss-limit-mb"]) * 2 ** 20 : Infinity;
for (const [k, v] of [["seconds", SECONDS], ["workers", WORKERS], ["interval", INTERVAL_MS], ["seed", SEED], ["rss-limit-mb", RSS_LIMIT]] as const) {
  if (!Number.isFinite(v) && v !== Infinity) throw new Error(`--${k} must be a number`);
}

/** A liveness check that takes longer than this is a hang (generous: a loaded 2-core machine answers in seconds, a hang never). */
const LIVENESS_TIMEOUT_MS = 30_000;
/** A case's connection is closed after this long without a byte from the gateway… */
const CASE_IDLE_MS = 1_000;
/** …or this long in all (a drip case lasts up to its startup timeout). */
const CASE_MAX_MS = 15_000;
/** The gateway's startup timeout in the soak: drip cases must be cut by it. */
const STARTUP_TIMEOUT_MS = 3_000;
/** What is kept of a case's answer to search (the rest is only counted). */
const KEEP_RECEIVED = 256 * 1024;

interface Figures {
  seconds: number;
  seed: number;
  workers: number;
  connections: number;
  messages: number;
  bytesSent: number;
  byKind: Record<string, number>;
  crashes: number;
  hangs: number;
  livenessChecks: number;
  livenessFailures: string[];
  livenessMaxMs: number;
  stuckSessions: Record<string, number>;
  internalErrors: Record<string, number>;
  stackTraces: number;
  dripsOutlivingTimeout: number;
  rssStartMb: number;
  rssPeakMb: number;
  rssEndMb: number;
  gatewayLogErrors: Record<string, number>;
}

const mb = (bytes: number) => Math.round((bytes / 2 ** 20) * 10) / 10;
const count = (m: Record<string, number>, k: string) => (m[k] = (m[k] ?? 0) + 1);

/** Play one case on a fresh connection; what the gateway answered. */
async function play(port: number, fc: FuzzCase, f: Figures): Promise<void> {
  const started = performance.now();
  const sock = net.connect(port, "127.0.0.1");
  sock.setNoDelay(true);
  const kept: Buffer[] = [];
  let keptBytes = 0;
  let lastData = performance.now();
  let closed = false;
  sock.on("data", (c: Buffer) => {
    lastData = performance.now();
    if (keptBytes < KEEP_RECEIVED) {
      kept.push(c);
      keptBytes += c.length;
    }
  });
  if (fc.noRead) sock.pause();
  sock.on("error", () => {});
  const gone = new Promise<void>((done) => sock.once("close", () => ((closed = true), done())));
  await Promise.race([new Promise((done) => sock.once("connect", done)), gone]);
  for (const w of fc.writes) {
    if (closed) break;
    if (w.delayMs) await Bun.sleep(w.delayMs);
    if (closed) break;
    f.bytesSent += w.bytes.length;
    if (!sock.write(w.bytes)) {
      // The gateway stopped reading (as it must after a refusal): wait for it to read on or cut us off.
      await Promise.race([new Promise((done) => sock.once("drain", done)), gone, Bun.sleep(CASE_IDLE_MS * 3)]);
      if (sock.writableNeedDrain) break;
    }
  }
  const received = () => Buffer.concat(kept).toString("latin1");
  for (;;) {
    if (closed || isStopping()) break;
    const now = performance.now();
    if (now - started > CASE_MAX_MS) break;
    if (fc.expectsAnswer ? /soak-probe[^]*Z\0\0\0\x05[ITE]$/.test(received()) : now - lastData > CASE_IDLE_MS) break;
    if (fc.expectsAnswer && now - lastData > 5 * CASE_IDLE_MS) break;
    await Bun.sleep(50);
  }
  sock.destroy();
  await gone;
  f.connections++;
  f.messages += fc.messages;
  count(f.byKind, fc.kind);
  const text = received();
  if (fc.expectsAnswer && !text.includes("soak-probe")) {
    count(f.stuckSessions, fc.kind);
    if (process.env.SOAK_DEBUG) say(`stuck ${fc.kind}: sent ${JSON.stringify(Buffer.concat(fc.writes.map((w) => w.bytes)).toString("latin1").slice(0, 2000))}\n  got ${JSON.stringify(text.slice(-1500))}`);
  }
  if (/XX000[^]{0,20}M[^\0]*internal error/.test(text)) {
    count(f.internalErrors, fc.kind);
    if (process.env.SOAK_DEBUG) say(`internal error ${fc.kind}: sent ${JSON.stringify(Buffer.concat(fc.writes.map((w) => w.bytes)).toString("latin1").slice(0, 2000))}\n  got ${JSON.stringify(text.slice(-1500))}`);
  }
  if (/\n\s+at \S|\.ts:\d+:\d+/.test(text)) f.stackTraces++;
  if (fc.kind === "known-bad:drip" && !closed) f.dripsOutlivingTimeout++;
}

async function main(): Promise<number> {
  handleSignals();
  say(`soak: ${SECONDS} s, ${WORKERS} connections at a time, seed ${SEED}`);
  const base = mkdtempSync(join(tmpdir(), "agate-soak-"));
  onCleanup("temp dir", async () => {
    if (!opt.keep) rmSync(base, { recursive: true, force: true });
    else say(`kept ${base}`);
  });
  const pg = await startPostgres();
  onCleanup("postgres", () => pg.stop());
  await pg.psql(`CREATE TABLE ${FUZZ_TABLE} (id int, v text); ALTER TABLE ${FUZZ_TABLE} OWNER TO app_scram;`, "app");
  const agate = await startAgate({
    base,
    name: "agate",
    target: { port: pg.port, database: "app", user: "app_scram", password: pg.password },
    connections: ["soak"],
    logLevel: "warn",
    connection: { startup_timeout_ms: STARTUP_TIMEOUT_MS },
    // The fuzzer's mangled logins would get its address blocked within seconds, and the rest of the run would
    // fuzz only the block; failed-login lockout has its own tests (test/lockout.test.ts).
    config: { lockout: { delay_after: 0, block_after: 0 } },
  });
  const port = agate.ports.soak!;
  const creds: Credentials = { user: agate.user, password: agate.password, database: "app" };
  const f: Figures = {
    seconds: SECONDS, seed: SEED, workers: WORKERS, connections: 0, messages: 0, bytesSent: 0, byKind: {}, crashes: 0, hangs: 0,
    livenessChecks: 0, livenessFailures: [], livenessMaxMs: 0, stuckSessions: {}, internalErrors: {}, stackTraces: 0, dripsOutlivingTimeout: 0,
    rssStartMb: mb(procMemory(agate.pid).rss), rssPeakMb: 0, rssEndMb: 0, gatewayLogErrors: {},
  };
  let peak = 0;
  const alive = () => Number.isFinite(procMemory(agate.pid).rss);
  const sampler = setInterval(() => (peak = Math.max(peak, procMemory(agate.pid).rss || 0)), 250);

  const deadline = performance.now() + SECONDS * 1000;
  const rnd = new Random(SEED);
  let crashed = false;
  const worker = async () => {
    while (performance.now() < deadline && !crashed && !isStopping()) await play(port, fuzzCase(rnd, creds, ONLY), f);
  };
  const liveness = async () => {
    while (performance.now() < deadline && !crashed && !isStopping()) {
      await Bun.sleep(INTERVAL_MS);
      if (!alive()) {
        crashed = true;
        f.crashes++;
        break;
      }
      f.livenessChecks++;
      const t0 = performance.now();
      const sql = postgres({ host: "127.0.0.1", port, user: creds.user, password: creds.password, database: "app", max: 1, connect_timeout: LIVENESS_TIMEOUT_MS / 1000, onnotice: () => {} });
      try {
        const [row] = await withTimeout(sql`select 1 as ok`, LIVENESS_TIMEOUT_MS, "select 1");
        if (row?.ok !== 1) f.livenessFailures.push(`select 1 answered ${JSON.stringify(row)}`);
      } catch (e) {
        const msg = (e as Error).message;
        if (msg.includes("timed out")) f.hangs++;
        f.livenessFailures.push(msg);
      } finally {
        f.livenessMaxMs = Math.max(f.livenessMaxMs, Math.round(performance.now() - t0));
        void sql.end({ timeout: 1 }).catch(() => {});
      }
      say(`soak: ${f.connections} connections, ${f.messages} messages, rss ${mb(procMemory(agate.pid).rss)} MB (peak ${mb(peak)} MB), liveness ${Math.round(performance.now() - t0)} ms`);
    }
  };
  await Promise.all([liveness(), ...Array.from({ length: WORKERS }, worker)]);
  clearInterval(sampler);
  if (!crashed && !alive()) f.crashes++;
  const mem = procMemory(agate.pid);
  f.rssPeakMb = mb(Math.max(peak, mem.peak || 0));
  f.rssEndMb = mb(mem.rss);
  await agate.stop();
  for (const line of readFileSync(join(agate.dir, "agate.log"), "utf8").split("\n")) {
    const m = /"level":"(error|fatal)".*?"msg":"([^"]*)"/.exec(line);
    if (m) count(f.gatewayLogErrors, m[2]!);
  }
  const stuck = Object.values(f.stuckSessions).reduce((a, b) => a + b, 0);
  const internal = Object.values(f.internalErrors).reduce((a, b) => a + b, 0);
  say(
    `soak: ${f.messages} messages fuzzed over ${f.connections} connections in ${SECONDS} s (seed ${SEED}); crashes ${f.crashes}, hangs ${f.hangs} ` +
      `(${f.livenessChecks} liveness checks, slowest ${f.livenessMaxMs} ms), stack traces ${f.stackTraces}, internal errors ${internal}, stuck sessions ${stuck}, ` +
      `drips outliving the startup timeout ${f.dripsOutlivingTimeout}; RSS ${f.rssStartMb} MB at start, peak ${f.rssPeakMb} MB, ${f.rssEndMb} MB at the end`,
  );
  if (stuck > 0) say(`soak: stuck sessions by case: ${JSON.stringify(f.stuckSessions)}`);
  if (internal > 0) say(`soak: internal errors by case: ${JSON.stringify(f.internalErrors)}`);
  if (f.livenessFailures.length > 0) say(`soak: liveness failures: ${f.livenessFailures.slice(0, 5).join("; ")}`);
  if (opt.json) console.log(JSON.stringify(f, null, 2));
  const ok = f.crashes === 0 && f.hangs === 0 && f.livenessFailures.length === 0 && f.stackTraces === 0 && f.rssPeakMb * 2 ** 20 <= RSS_LIMIT;
  return ok ? 0 : 2;
}

await runMain(main);
