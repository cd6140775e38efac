#!/usr/bin/env bun
/**
 * pgbench throughput in one run against three paths to the same throwaway
 * PostgreSQL server (fsync on, one server config for all three):
 *
 *   direct      pgbench → PostgreSQL
 *   pgbouncer   pgbench → pgbouncer (session pool, SCRAM) → PostgreSQL
 *   agate       pgbench → `agate serve` (embedded default policy, strict
 *               durable audit log: the default config) → PostgreSQL
 *
 * Each path runs select-only (`-S`) and the built-in TPC-B-like script, each
 * with `-M simple` and `-M prepared`, 16 clients on 2 threads (--clients
 * 16,64 adds a row per run with 64 clients on 2 threads), `-n`, for a
 * fixed duration; what pgbench's own vacuum would do (VACUUM branches and
 * tellers, TRUNCATE history) is done directly before every run. Prints TPS,
 * average latency, the agate/direct and agate/pgbouncer ratios, the CPU the
 * gateway process used, and verifies the audit log at the end.
 *
 *   bun scripts/bench/pgbench-stack.ts [duration_s=20] [options]
 *     --only W:M[,W:M]     runs to do (W: select-only|tpcb-like, M: simple|prepared)
 *     --paths P[,P]        paths to measure (direct,pgbouncer,agate)
 *     --warmup S           seconds of select-only per path before measuring (default 2; 0 = none)
 *     --audit MODE         strict (default) or interval:MS, to see what durability costs
 *     --clients N[,N]      pgbench clients per run, each on 2 threads (default 16; e.g. 16,64)
 *     --agate-flags="..." extra bun flags for the agate process (e.g. --agate-flags="--cpu-prof --cpu-prof-dir=/tmp/p")
 *     --agate-workers N[,N] agate's `workers` (default 1); with several (e.g. 1,2) one agate per count, each
 *                          measured in every run, and a table of each against the first (the main table shows the first)
 *     --hold               start the stack, print its endpoints as NAME=value lines, wait for Ctrl-C
 *     --keep               keep the temp dir (configs, logs, audit log) afterwards
 *
 * Everything listens on 127.0.0.1 only; every process started here (PostgreSQL,
 * pgbouncer, agate, pgbench) is stopped on exit, error, SIGINT or SIGTERM.
 */
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { availableParallelism, cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { freePort, startPostgres, type TestPostgres } from "../../test/helpers/postgres.ts";
import { handleSignals, isStopping, machineCpu, mustRun, onCleanup, pgEnv, printHelp, runMain, procCpu, readText, REPO, run, say, signalPid, startAgate as spawnAgate, threadCpu } from "./stack.ts";
const THREADS = 2;
const SCALE = 10;
const USER = "app_scram";
const DB = "app";

type Workload = "select-only" | "tpcb-like";
type Mode = "simple" | "prepared";
type PathName = "direct" | "pgbouncer" | "agate";
const WORKLOADS: Workload[] = ["select-only", "tpcb-like"];
const MODES: Mode[] = ["simple", "prepared"];
const PATHS: PathName[] = ["direct", "pgbouncer", "agate"];

// ── arguments ──────────────────────────────────────────────────────────

const { values: opt, positionals } = parseArgs({
  args: process.argv.slice(2),
  allowPositionals: true,
  options: {
    only: { type: "string" },
    paths: { type: "string" },
    warmup: { type: "string", default: "2" },
    audit: { type: "string", default: "strict" },
    clients: { type: "string", default: "16" },
    "agate-flags": { type: "string", default: "" },
    "agate-workers": { type: "string", default: "1" },
    hold: { type: "boolean", default: false },
    keep: { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (opt.help) printHelp(import.meta.path);
const duration = Number(positionals[0] ?? 20);
if (!Number.isInteger(duration) || duration < 1 || duration > 3600) die(`duration must be whole seconds from 1 to 3600; got ${positionals[0]}`);
const warmup = Number(opt.warmup);
if (!Number.isFinite(warmup) || warmup < 0 || warmup > 600) die(`--warmup must be 0–600 seconds; got ${opt.warmup}`);
const paths = (opt.paths ? opt.paths.split(",") : PATHS) as PathName[];
for (const p of paths) if (!PATHS.includes(p)) die(`--paths: unknown path ${p}; expected ${PATHS.join(", ")}`);
const clientCounts = opt.clients!.split(",").map((s) => Number(s.trim()));
for (const c of clientCounts) if (!Number.isInteger(c) || c < 1 || c > 150) die(`--clients must be whole numbers from 1 to 150; got ${opt.clients}`);
const runs: { workload: Workload; mode: Mode; clients: number }[] = [];
for (const clients of clientCounts) for (const workload of WORKLOADS) for (const mode of MODES) runs.push({ workload, mode, clients });
const only = opt.only?.split(",").map((s) => s.trim());
if (only) for (const o of only) if (!runs.some((r) => `${r.workload}:${r.mode}` === o)) die(`--only: unknown run ${o}; expected e.g. select-only:simple`);
const selected = only ? runs.filter((r) => only.includes(`${r.workload}:${r.mode}`)) : runs;
/** pgbouncer's session pool holds one server connection per client: it must fit the largest run. */
const POOL = Math.max(20, ...clientCounts);
const durability = parseDurability(opt.audit!);
const agateFlags = opt["agate-flags"]!.split(/\s+/).filter(Boolean);
const workerCounts = opt["agate-workers"]!.split(",").map((s) => Number(s.trim()));
for (const w of workerCounts) if (!Number.isInteger(w) || w < 1 || w > 64) die(`--agate-workers must be whole numbers from 1 to 64; got ${opt["agate-workers"]}`);
if (new Set(workerCounts).size !== workerCounts.length) die(`--agate-workers lists a count twice: ${opt["agate-workers"]}`);
/** The result key of the agate with `w` workers: the first count is "agate" (the main table), the others "agate-wN". */
const agateKey = (w: number) => (w === workerCounts[0] ? "agate" : `agate-w${w}`);

function parseDurability(s: string): object {
  if (s === "strict") return { mode: "strict" };
  const m = /^interval:(\d+)$/.exec(s);
  if (m) return { mode: "interval", interval_ms: Number(m[1]) };
  die(`--audit is ${s}; expected strict or interval:MS`);
}

function die(msg: string): never {
  process.stderr.write(`pgbench-stack: ${msg}\n`);
  process.exit(2);
}

handleSignals();

// ── the stack ──────────────────────────────────────────────────────────

interface Endpoint {
  name: PathName;
  port: number;
  user: string;
  password: string;
  /** Long-lived gateway process to account CPU for (pgbouncer, agate). */
  pid?: number;
}

const asRoot = process.getuid?.() === 0;
const base = mkdtempSync(join(tmpdir(), "agate-pgbench-"));
chmodSync(base, 0o755);
onCleanup("temp dir", async () => {
  if (opt.keep) say(`kept ${base}`);
  else rmSync(base, { recursive: true, force: true });
});

type Agate = Awaited<ReturnType<typeof startAgate>>;

async function startStack(): Promise<{ pg: TestPostgres; endpoints: Record<PathName, Endpoint>; agates: Agate[] }> {
  say(`temp dir ${base} (audit log, configs, logs); machine: ${availableParallelism()} cores, ${cpus()[0]?.model ?? "?"}`);
  say("starting PostgreSQL (fsync on)");
  const pg = await startPostgres({ fsync: true });
  onCleanup("PostgreSQL", () => pg.stop());
  // A stable role for all three paths: pgbench's tables belong to app_scram.
  const direct: Endpoint = { name: "direct", port: pg.port, user: USER, password: pg.password };

  say(`pgbench -i -s ${SCALE} as ${USER}`);
  await mustRun(["pgbench", "-i", "-s", String(SCALE), "-q", ...conn(direct), DB], { env: pgEnv(direct, "pgbench"), timeoutMs: 600_000 });

  const bouncer = await startPgbouncer(pg);
  const agates: Agate[] = [];
  for (const w of workerCounts) agates.push(await startAgate(pg, w));
  const endpoints = { direct, pgbouncer: bouncer, agate: agates[0]!.endpoint };
  for (const e of [direct, bouncer, ...agates.map((a) => a.endpoint)]) {
    const out = await mustRun(["psql", "-X", "-At", ...conn(e), "-c", "select count(*) from pgbench_branches", DB], { env: pgEnv(e, "pgbench"), timeoutMs: 30_000 });
    if (out.trim() !== String(SCALE)) throw new Error(`${e.name}: expected ${SCALE} branches, got ${out.trim()}`);
  }
  return { pg, endpoints, agates };
}

async function startPgbouncer(pg: TestPostgres): Promise<Endpoint> {
  // runuser would only say "Permission denied" for a program it cannot find
  if (!Bun.which("pgbouncer")) throw new Error("pgbouncer not found on PATH: `bash scripts/bench/pgbench.sh` installs it, or leave it out with --paths direct,agate");
  const dir = join(base, "pgbouncer");
  mkdirSync(dir, { mode: 0o755 });
  const port = await freePort();
  const ini = join(dir, "pgbouncer.ini");
  const pidfile = join(dir, "pgbouncer.pid");
  writeFileSync(join(dir, "userlist.txt"), `"${USER}" "${pg.password}"\n`, { mode: 0o644 });
  writeFileSync(
    ini,
    `[databases]
${DB} = host=127.0.0.1 port=${pg.port} dbname=${DB}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = ${join(dir, "userlist.txt")}
pool_mode = session
max_client_conn = ${POOL + 20}
default_pool_size = ${POOL}
logfile = ${join(dir, "pgbouncer.log")}
pidfile = ${pidfile}
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
`,
    { mode: 0o644 },
  );
  if (asRoot) {
    // pgbouncer refuses to run as root: it runs as the postgres system user, which must own its log and pid files.
    const uid = Number((await mustRun(["id", "-u", "postgres"])).trim());
    const gid = Number((await mustRun(["id", "-g", "postgres"])).trim());
    chownSync(dir, uid, gid);
  }
  say(`starting pgbouncer on 127.0.0.1:${port} (session pool)`);
  const argv = asRoot ? ["runuser", "-u", "postgres", "--", "pgbouncer", ini] : ["pgbouncer", ini];
  const proc = Bun.spawn(argv, { stdout: "ignore", stderr: Bun.file(join(base, "pgbouncer.stderr")), stdin: "ignore" });
  const readPid = () => {
    try {
      return Number(readFileSync(pidfile, "utf8").trim()) || undefined;
    } catch {
      return undefined;
    }
  };
  let pid: number | undefined;
  onCleanup("pgbouncer", async () => {
    pid ??= readPid();
    // SIGTERM: immediate shutdown. Signal pgbouncer itself, then let runuser reap it and exit;
    // runuser is only signalled when there is no pid to signal or pgbouncer does not stop.
    if (pid) signalPid(pid, "SIGTERM");
    else proc.kill("SIGTERM");
    const done = await Promise.race([proc.exited.then(() => true), Bun.sleep(5000).then(() => false)]);
    if (!done) {
      if (pid) signalPid(pid, "SIGKILL");
      proc.kill("SIGKILL");
      await proc.exited;
    }
  });
  for (let i = 0; ; i++) {
    pid = readPid();
    if (pid && (await run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", String(port), "-d", DB], { timeoutMs: 5000 })).code === 0) break;
    if (proc.exitCode !== null || i > 100) throw new Error(`pgbouncer did not start: ${readText(join(dir, "pgbouncer.log"))}${readText(join(base, "pgbouncer.stderr"))}`);
    await Bun.sleep(100);
  }
  return { name: "pgbouncer", port, user: USER, password: pg.password, pid };
}

async function startAgate(pg: TestPostgres, workers: number): Promise<{ workers: number; endpoint: Endpoint; auditDir: string; verifierKey: string; stop: () => Promise<void> }> {
  const name = agateKey(workers);
  say(`starting ${name} (workers ${workers}, audit ${JSON.stringify(durability)}${agateFlags.length ? `, bun ${agateFlags.join(" ")}` : ""})`);
  const a = await spawnAgate({ base, name, target: { port: pg.port, database: DB, user: USER, password: pg.password }, connections: ["bench"], durability, flags: agateFlags, config: { workers } });
  say(`${name} listening on 127.0.0.1:${a.ports.bench} (audit log in ${a.auditDir})`);
  return { workers, endpoint: { name: "agate", port: a.ports.bench!, user: a.user, password: a.password, pid: a.pid }, auditDir: a.auditDir, verifierKey: a.verifierKey, stop: a.stop };
}

/** Host, port and user; the database goes last as a positional argument (for pgbench, -d means --debug). */
function conn(e: Endpoint): string[] {
  return ["-h", "127.0.0.1", "-p", String(e.port), "-U", e.user];
}

// ── one pgbench run ────────────────────────────────────────────────────

interface Result {
  tps: number;
  latencyMs: number;
  transactions: number;
  /** CPU of the gateway process, % of one core. */
  gatewayCpu: number;
  /** CPU of pgbench itself, % of one core. */
  pgbenchCpu: number;
  /** Whole-machine busy time, % of all cores. */
  machineBusy: number;
  /** CPU seconds of the gateway's main thread and of its worker threads (the rest: pools, collector, JIT). */
  threads: { main: number; workers: number; total: number };
}

async function pgbench(e: Endpoint, workload: Workload, mode: Mode, seconds: number, pg: TestPostgres, clients = 16): Promise<Result> {
  // What pgbench does itself without -n, done directly so all three paths start alike.
  for (const sql of ["VACUUM pgbench_branches", "VACUUM pgbench_tellers", "TRUNCATE pgbench_history"]) await pg.psql(sql);
  const argv = ["pgbench", "-n", ...(workload === "select-only" ? ["-S"] : []), "-M", mode, "-c", String(clients), "-j", String(THREADS), "-T", String(seconds), ...conn(e), DB];
  const g0 = await procCpu(e.pid);
  const t0s = await threadCpu(e.pid);
  const m0 = machineCpu();
  const t0 = performance.now();
  const r = await run(argv, { env: pgEnv(e, "pgbench"), timeoutMs: (seconds + 60) * 1000 });
  const wall = (performance.now() - t0) / 1000;
  const m1 = machineCpu();
  const g1 = await procCpu(e.pid);
  const t1s = await threadCpu(e.pid);
  if (isStopping()) throw new Error("stopping");
  const tps = /^tps = ([\d.]+) \(without initial connection time\)/m.exec(r.out);
  const lat = /^latency average = ([\d.]+) ms/m.exec(r.out);
  const tx = /^number of transactions actually processed: (\d+)/m.exec(r.out);
  const failed = /^number of failed transactions: (\d+)/m.exec(r.out);
  if (r.code !== 0 || !tps || !lat || !tx) throw new Error(`${argv.join(" ")} (${e.name}) exited ${r.code}:\n${r.out}\n${r.err}`);
  if (failed && Number(failed[1]) > 0) throw new Error(`${e.name} ${workload} ${mode}: ${failed[1]} failed transactions:\n${r.out}\n${r.err}`);
  return {
    tps: Number(tps[1]),
    latencyMs: Number(lat[1]),
    transactions: Number(tx[1]),
    gatewayCpu: e.pid ? (100 * (g1 - g0)) / wall : NaN,
    pgbenchCpu: (100 * r.cpu) / wall,
    machineBusy: (100 * (m1.busy - m0.busy)) / Math.max(1, m1.total - m0.total),
    threads: { main: t1s.main - t0s.main, workers: t1s.workers - t0s.workers, total: g1 - g0 },
  };
}

// ── report ─────────────────────────────────────────────────────────────

const pad = (s: string, n: number) => s.padEnd(n);
const lpad = (s: string, n: number) => s.padStart(n);
const fmt = (n: number | undefined, digits = 0) => (n === undefined || Number.isNaN(n) ? "-" : n.toFixed(digits));
const ratio = (a?: number, b?: number) => (a === undefined || b === undefined || !b ? "-" : (a / b).toFixed(2));

/** The gateway's CPU per transaction by thread: main / worker threads / the rest, in us. */
const byThread = (r?: Result) => {
  if (!r) return "-";
  const per = (s: number) => fmt((s / r.transactions) * 1e6);
  return `${per(r.threads.main)}/${per(r.threads.workers)}/${per(r.threads.total - r.threads.main - r.threads.workers)}`;
};

/** Gateway CPU microseconds per transaction. */
const cpuPerTx = (r?: Result) => (r ? (r.gatewayCpu / 100 / r.tps) * 1e6 : undefined);

function table(results: Map<string, Result>): string {
  const key = (w: Workload, m: Mode, c: number, p: PathName) => `${w}/${m}/${c}/${p}`;
  const lines = [
    `${pad("workload", 14)}${pad("mode", 10)}${lpad("clients", 8)}${lpad("direct tps", 11)}${lpad("pgbouncer tps", 15)}${lpad("agate tps", 11)}${lpad("agate/direct", 14)}${lpad("agate/pgbouncer", 17)}  lat direct/pgb/agate (ms)`,
  ];
  for (const { workload, mode, clients } of selected) {
    const [d, b, a] = PATHS.map((p) => results.get(key(workload, mode, clients, p)));
    lines.push(
      `${pad(workload, 14)}${pad(mode, 10)}${lpad(String(clients), 8)}${lpad(fmt(d?.tps), 11)}${lpad(fmt(b?.tps), 15)}${lpad(fmt(a?.tps), 11)}${lpad(ratio(a?.tps, d?.tps), 14)}${lpad(ratio(a?.tps, b?.tps), 17)}  ${[d, b, a].map((r) => fmt(r?.latencyMs, 3)).join(" / ")}`,
    );
  }
  lines.push("", "CPU during each run (gateway and pgbench: % of one core; machine: % of all cores busy; us/tx: gateway CPU per transaction)");
  lines.push(`${pad("workload", 14)}${pad("mode", 10)}${lpad("clients", 8)}${lpad("pgbouncer", 11)}${lpad("agate", 8)}${lpad("pgb us/tx", 11)}${lpad("agate us/tx", 13)}${lpad("pgbench d/b/a", 17)}  machine busy d/b/a`);
  for (const { workload, mode, clients } of selected) {
    const [d, b, a] = PATHS.map((p) => results.get(key(workload, mode, clients, p)));
    lines.push(
      `${pad(workload, 14)}${pad(mode, 10)}${lpad(String(clients), 8)}${lpad(fmt(b?.gatewayCpu), 11)}${lpad(fmt(a?.gatewayCpu), 8)}${lpad(fmt(cpuPerTx(b)), 11)}${lpad(fmt(cpuPerTx(a)), 13)}${lpad([d, b, a].map((r) => fmt(r?.pgbenchCpu)).join("/"), 17)}  ${[d, b, a].map((r) => fmt(r?.machineBusy)).join("/")}`,
    );
  }
  if (workerCounts.length > 1) {
    const [first, ...others] = workerCounts;
    lines.push("", `agate by workers (each against workers ${first}, same run; us/tx: gateway CPU per transaction, all threads; by thread: main / worker threads / the rest (pools, collector, JIT), us per transaction of all)`);
    lines.push(`${pad("workload", 14)}${pad("mode", 10)}${lpad("clients", 8)}${workerCounts.map((w) => lpad(`w${w} tps`, 10)).join("")}${others.map((w) => lpad(`w${w}/w${first}`, 9)).join("")}${workerCounts.map((w) => lpad(`w${w} us/tx`, 11)).join("")}${workerCounts.map((w) => lpad(`w${w} cpu%`, 10)).join("")}  lat ms ${workerCounts.map((w) => `w${w}`).join("/")}  ${workerCounts.map((w) => `w${w} main/workers/rest`).join("  ")}`);
    for (const { workload, mode, clients } of selected) {
      const rs = workerCounts.map((w) => results.get(`${workload}/${mode}/${clients}/${agateKey(w)}`));
      lines.push(
        `${pad(workload, 14)}${pad(mode, 10)}${lpad(String(clients), 8)}${rs.map((r) => lpad(fmt(r?.tps), 10)).join("")}${rs.slice(1).map((r) => lpad(ratio(r?.tps, rs[0]?.tps), 9)).join("")}${rs.map((r) => lpad(fmt(cpuPerTx(r)), 11)).join("")}${rs.map((r) => lpad(fmt(r?.gatewayCpu), 10)).join("")}  ${rs.map((r) => fmt(r?.latencyMs, 3)).join(" / ")}  ${rs.map((r) => byThread(r)).join("  ")}`,
      );
    }
  }
  return lines.join("\n");
}

// ── main ───────────────────────────────────────────────────────────────

async function main(): Promise<number> {
  const { pg, endpoints, agates } = await startStack();
  const agate = agates[0]!;
  const { auditDir } = agate;
  const agatePid = agate.endpoint.pid!;
  /** What one path stands for: "agate" is every agate (one per --agate-workers count). */
  const measured = (p: PathName) => (p === "agate" ? agates.map((a) => ({ key: agateKey(a.workers), e: a.endpoint })) : [{ key: p, e: endpoints[p] }]);

  if (opt.hold) {
    for (const p of PATHS) {
      const e = endpoints[p];
      console.log(`${p.toUpperCase()}_URL=postgres://${e.user}:${encodeURIComponent(e.password)}@127.0.0.1:${e.port}/${DB}`);
    }
    console.log(`AGATE_PID=${agatePid}`);
    for (const a of agates.slice(1)) {
      const e = a.endpoint;
      console.log(`AGATE_W${a.workers}_URL=postgres://${e.user}:${encodeURIComponent(e.password)}@127.0.0.1:${e.port}/${DB}`);
      console.log(`AGATE_W${a.workers}_PID=${e.pid}`);
    }
    console.log(`PGBOUNCER_PID=${endpoints.pgbouncer.pid ?? ""}`);
    console.log(`AUDIT_DIR=${auditDir}`);
    console.log(`PG_SOCKET_DIR=${pg.dir}`);
    say("holding; Ctrl-C (or SIGTERM) stops everything");
    await new Promise(() => {});
  }

  // Other load on the machine skews every number: measure it once, before the runs.
  const idle0 = machineCpu();
  await Bun.sleep(1000);
  const idle1 = machineCpu();
  const busyBefore = (100 * (idle1.busy - idle0.busy)) / Math.max(1, idle1.total - idle0.total);
  if (busyBefore > 10) say(`warning: the machine is ${busyBefore.toFixed(0)}% busy before the runs (other processes); results will be noisy`);

  if (warmup > 0) {
    for (const p of paths) {
      for (const { key, e } of measured(p)) {
        say(`warm-up ${key}: select-only simple ${warmup} s`);
        await pgbench(e, "select-only", "simple", warmup, pg);
      }
    }
  }

  const results = new Map<string, Result>();
  for (const { workload, mode, clients } of selected) {
    for (const p of paths) {
      for (const { key, e } of measured(p)) {
        say(`${key}: ${workload} -M ${mode}, ${clients} clients / ${THREADS} threads, ${duration} s`);
        const r = await pgbench(e, workload, mode, duration, pg, clients);
        results.set(`${workload}/${mode}/${clients}/${key}`, r);
        say(`  tps ${r.tps.toFixed(0)}, latency ${r.latencyMs.toFixed(3)} ms${Number.isNaN(r.gatewayCpu) ? "" : `, gateway CPU ${r.gatewayCpu.toFixed(0)}%`}`);
      }
    }
  }

  // Stop each agate (it flushes the log), then verify its log from its files.
  const verifies = [];
  for (const a of agates) {
    await a.stop();
    verifies.push(await run(["bun", "src/main.ts", "verify", "--quiet", "--log", a.auditDir, "--key", a.verifierKey], { cwd: REPO, timeoutMs: 600_000 }));
  }
  const verify = verifies[0]!;
  const auditBytes = readdirSync(auditDir).reduce((sum, f) => sum + statSync(join(auditDir, f)).size, 0);
  const verified = /^ok: (\d+) records/m.exec(verify.out);

  console.log("");
  console.log(
    `pgbench -c ${clientCounts.join("|")} -j ${THREADS} -T ${duration} -n, scale ${SCALE}, PostgreSQL fsync=on (one server for all paths), all on 127.0.0.1; pgbouncer session pool (pool ${POOL}); agate default policy`,
  );
  console.log(table(results));
  console.log("");
  const durabilityText = (durability as { mode: string }).mode === "strict" ? "strict (each command durable before it is forwarded)" : JSON.stringify(durability);
  console.log(
    `audit: durability ${durabilityText}; ${verified ? `${verified[1]} records` : "? records"}, ${(auditBytes / 1e6).toFixed(1)} MB in ${auditDir} (${tmpdir()}, same filesystem as the repo: ${sameFs(auditDir, REPO) ? "yes" : "no"}); agate verify: ${verify.code === 0 ? "ok" : `FAILED (exit ${verify.code}): ${verify.out.trim()} ${verify.err.trim()}`}`,
  );
  console.log(
    `machine: ${availableParallelism()} cores (${cpus()[0]?.model ?? "?"}), shared by pgbench, PostgreSQL and the gateway; ${busyBefore.toFixed(0)}% busy before the runs (idle stack)`,
  );
  for (const mode of MODES) {
    const a = results.get(`select-only/${mode}/${clientCounts[0]}/agate`);
    const b = results.get(`select-only/${mode}/${clientCounts[0]}/pgbouncer`);
    if (a && b) console.log(`target agate >= 0.8 x pgbouncer select-only TPS (${mode}): ${(a.tps / b.tps).toFixed(2)} -> ${a.tps >= 0.8 * b.tps ? "MET" : "NOT MET"}`);
  }
  for (const [i, a] of agates.entries()) {
    if (i === 0) continue;
    const v = verifies[i]!;
    console.log(`audit of ${agateKey(a.workers)}: ${/^ok: (\d+) records/m.exec(v.out)?.[1] ?? "?"} records; agate verify: ${v.code === 0 ? "ok" : `FAILED (exit ${v.code}): ${v.out.trim()} ${v.err.trim()}`}`);
  }
  return verifies.every((v) => v.code === 0) ? 0 : 1;
}

function sameFs(a: string, b: string): boolean {
  try {
    return statSync(a).dev === statSync(b).dev;
  } catch {
    return false;
  }
}

await runMain(main);
