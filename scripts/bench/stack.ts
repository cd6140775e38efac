/**
 * What the benchmark scripts that start a stack of processes share
 * (pgbench-stack.ts, mask-stack.ts): progress lines, running commands,
 * clean-up in reverse order on exit, error, SIGINT, SIGTERM or SIGHUP, CPU
 * and memory figures from /proc, and an `agate serve` process of its own.
 *
 * Importing this module has no effect; a script calls handleSignals() once.
 */
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { generateKey } from "../../src/audit/note.ts";
import { createApiKey } from "../../src/identity/apikey.ts";
import { freePort } from "../../test/helpers/postgres.ts";

export const REPO = resolve(import.meta.dir, "../..");

export function say(msg: string): void {
  process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

// ── clean-up: every process started here, in reverse order ──────────────

const cleanups: { name: string; fn: () => Promise<void> }[] = [];
const children = new Set<Bun.Subprocess>();
let stopping = false;
let cleaning: Promise<void> | undefined;

/** Run `fn` at clean-up, after everything registered later. */
export function onCleanup(name: string, fn: () => Promise<void>): void {
  cleanups.push({ name, fn });
}

/** A signal arrived: everything is being stopped. */
export function isStopping(): boolean {
  return stopping;
}

/** Kill the commands still running, then run the clean-ups in reverse order (once; later calls get the same promise). */
export function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    for (const c of children) c.kill("SIGKILL");
    for (const { name, fn } of cleanups.reverse()) {
      try {
        await withTimeout(fn(), 20_000, `stopping ${name}`);
      } catch (e) {
        say(`clean-up: ${name}: ${(e as Error).message}`);
      }
    }
  })();
  return cleaning;
}

/** On SIGINT, SIGTERM or SIGHUP: clean up and exit 128 + the signal's number. */
export function handleSignals(): void {
  for (const [signal, code] of [["SIGINT", 130], ["SIGTERM", 143], ["SIGHUP", 129]] as const) {
    process.on(signal, () => {
      if (stopping) return;
      stopping = true;
      say(`${signal}: stopping everything`);
      void cleanup().finally(() => process.exit(code));
    });
  }
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout>;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms);
    }),
  ]);
}

export interface RunOptions {
  env?: Record<string, string>;
  timeoutMs?: number;
  cwd?: string;
  /** Where stdout goes: "pipe" (the default) returns it as text; "ignore" sends it to /dev/null. */
  stdout?: "pipe" | "ignore";
  /** Hand stdout to this as it arrives instead of collecting it (`out` is then ""). */
  onStdout?: (chunk: Uint8Array) => void;
}

/** Run to completion (bounded by timeoutMs, killed at clean-up); stdout and stderr as text, and the CPU seconds it used. */
export async function run(argv: string[], opts: RunOptions = {}): Promise<{ code: number; out: string; err: string; cpu: number }> {
  if (stopping) throw new Error("stopping");
  const p = Bun.spawn(argv, {
    stdout: opts.stdout ?? "pipe",
    stderr: "pipe",
    stdin: "ignore",
    cwd: opts.cwd,
    env: { ...process.env, ...opts.env },
    timeout: opts.timeoutMs ?? 120_000,
    killSignal: "SIGKILL",
  });
  children.add(p);
  try {
    const stdout = async (): Promise<string> => {
      if (!(p.stdout instanceof ReadableStream)) return "";
      if (!opts.onStdout) return new Response(p.stdout).text();
      for await (const chunk of p.stdout) opts.onStdout(chunk);
      return "";
    };
    const [out, err, code] = await Promise.all([stdout(), new Response(p.stderr).text(), p.exited]);
    const ru = p.resourceUsage();
    const cpu = ru ? Number(ru.cpuTime.user + ru.cpuTime.system) / 1e6 : 0;
    return { code, out, err, cpu };
  } finally {
    children.delete(p);
  }
}

export async function mustRun(argv: string[], opts: RunOptions = {}): Promise<string> {
  const r = await run(argv, opts);
  if (r.code !== 0) throw new Error(`${argv.join(" ")} exited ${r.code}: ${(r.err || r.out).trim()}`);
  return r.out;
}

export function signalPid(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

/** The last 4000 characters of a file, or "" when it cannot be read. */
export function readText(file: string): string {
  try {
    return readFileSync(file, "utf8").slice(-4000);
  } catch {
    return "";
  }
}

// ── CPU and memory from /proc ──────────────────────────────────────────

let clkTck: number | undefined;

/** CPU seconds (user + system) a live process has used, or NaN. */
export async function procCpu(pid: number | undefined): Promise<number> {
  clkTck ??= Number((await mustRun(["getconf", "CLK_TCK"])).trim()) || 100;
  return procCpuSync(pid, clkTck);
}

function procCpuSync(pid: number | undefined, tck: number): number {
  if (!pid) return NaN;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" "); // fields from 3 (state) on
    return (Number(f[11]) + Number(f[12])) / tck; // utime (14), stime (15)
  } catch {
    return NaN;
  }
}

/**
 * CPU seconds of a live process's main thread and of its worker threads (a Bun Worker's thread is named
 * "Worker"); the rest (thread pool, collector, JIT) is the process's total minus these.
 */
export async function threadCpu(pid: number | undefined): Promise<{ main: number; workers: number }> {
  clkTck ??= Number((await mustRun(["getconf", "CLK_TCK"])).trim()) || 100;
  const out = { main: NaN, workers: NaN };
  if (!pid) return out;
  try {
    out.workers = 0;
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      const cpu = (Number(f[11]) + Number(f[12])) / clkTck;
      if (Number(tid) === pid) out.main = cpu;
      else if (comm.startsWith("Worker")) out.workers += cpu;
    }
  } catch {
    // the process ended
  }
  return out;
}

/** Busy and total jiffies of the whole machine. */
export function machineCpu(): { busy: number; total: number } {
  const f = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0); // user nice system idle iowait irq softirq steal
  const idle = f[3]! + f[4]!;
  return { busy: total - idle, total };
}

/** Resident set size of a live process now (VmRSS) and at its peak (VmHWM), in bytes; NaN when unknown. */
export function procMemory(pid: number | undefined): { rss: number; peak: number } {
  const out = { rss: NaN, peak: NaN };
  if (!pid) return out;
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const kb = (key: string) => {
      const m = new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(status);
      return m ? Number(m[1]) * 1024 : NaN;
    };
    out.rss = kb("VmRSS");
    out.peak = kb("VmHWM");
  } catch {
    // gone
  }
  return out;
}

// ── agate serve, a process of its own ───────────────────────────────────

export interface AgateProcess {
  /** Its directory: agate.yaml, agate.log (stderr), audit.key(.pub), audit/. */
  dir: string;
  pid: number;
  /** The listen port of each connection, by name. */
  ports: Record<string, number>;
  /** The API key identity to log in with: user name and password. */
  user: string;
  password: string;
  auditDir: string;
  /** The audit log's verifier key file. */
  verifierKey: string;
  /** SIGTERM (agate closes listeners and flushes the audit log), SIGKILL after 10 s; idempotent. */
  stop(): Promise<void>;
}

export interface AgateOptions {
  /** Where its directory is made (`base/name`). */
  base: string;
  name: string;
  /** The PostgreSQL every connection forwards to; the password is passed in AGATE_BENCH_TARGET_PASSWORD. */
  target: { port: number; database: string; user: string; password: string };
  /** One loopback listener (on a free port) per connection name. */
  connections: string[];
  /** audit.durability; default strict. */
  durability?: object;
  /** policy.data; default none. */
  policyData?: object;
  /** Extra bun flags for the gateway process (e.g. --cpu-prof). */
  flags?: string[];
  /** log_level; default info. */
  logLevel?: string;
  /** More keys for every connection (startup_timeout_ms, max_message_bytes, …). */
  connection?: object;
  /** More top-level config keys (lockout, …). */
  config?: object;
}

/**
 * `bun src/main.ts serve --config DIR/agate.yaml` with the embedded default
 * policy, a fresh audit signing key and one API key identity ("bench", group
 * bench); resolves once it prints that it listens. Stopped at clean-up.
 */
export async function startAgate(o: AgateOptions): Promise<AgateProcess> {
  const dir = join(o.base, o.name);
  mkdirSync(dir, { mode: 0o755 });
  const auditDir = join(dir, "audit");
  const log = join(dir, "agate.log");
  const { key, sha256 } = createApiKey();
  const signing = generateKey(`bench/${o.name}`);
  writeFileSync(join(dir, "audit.key"), signing.signerKey, { mode: 0o600 });
  writeFileSync(join(dir, "audit.key.pub"), signing.verifierKey);
  const ports: Record<string, number> = {};
  for (const name of o.connections) ports[name] = await freePort();
  // JSON is YAML. Everything not given is the default: embedded policy, strict durability, log_level info.
  const config = {
    audit: { dir: auditDir, durability: o.durability ?? { mode: "strict" }, signing_key: join(dir, "audit.key") },
    identity: { api_keys: [{ id: "bench", kind: "service", groups: ["bench"], sha256 }] },
    ...(o.policyData ? { policy: { data: o.policyData } } : {}),
    connections: o.connections.map((name) => ({
      name,
      protocol: "postgres",
      listen: `127.0.0.1:${ports[name]}`,
      allow_plaintext_auth: true,
      target: { host: "127.0.0.1", port: o.target.port, database: o.target.database, user: o.target.user, password_env: "AGATE_BENCH_TARGET_PASSWORD" },
      ...o.connection,
    })),
    ...(o.logLevel ? { log_level: o.logLevel } : {}),
    ...o.config,
  };
  const configFile = join(dir, "agate.yaml");
  writeFileSync(configFile, JSON.stringify(config, null, 2) + "\n", { mode: 0o600 });
  const flags = o.flags ?? [];
  const proc = Bun.spawn(["bun", ...flags, "src/main.ts", "serve", "--config", configFile], {
    cwd: REPO,
    stdout: "pipe",
    stderr: Bun.file(log),
    stdin: "ignore",
    env: { ...process.env, AGATE_BENCH_TARGET_PASSWORD: o.target.password },
  });
  let stopped: Promise<void> | undefined;
  const stop = () =>
    (stopped ??= (async () => {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill("SIGTERM"); // closes listeners and flushes the audit log
      const done = await Promise.race([proc.exited.then(() => true), Bun.sleep(10_000).then(() => false)]);
      if (!done) {
        say(`${o.name} did not exit within 10 s of SIGTERM; killing it`);
        proc.kill("SIGKILL");
        await proc.exited;
      }
    })());
  onCleanup(o.name, stop);
  const reader = proc.stdout.getReader();
  let text = "";
  const ready = (async () => {
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`${o.name} exited before listening: ${readText(log)}`);
      text += decoder.decode(value, { stream: true });
      if (o.connections.every((_, i) => text.split("listening on").length > i + 1)) return;
    }
  })();
  await withTimeout(ready, 30_000, `${o.name} start-up`);
  void (async () => {
    // Keep draining stdout so agate never blocks on a full pipe.
    for (;;) if ((await reader.read()).done) return;
  })().catch(() => {});
  return { dir, pid: proc.pid, ports, user: "bench", password: key, auditDir, verifierKey: join(dir, "audit.key.pub"), stop };
}

/** libpq's environment for a client of `e` (password, no TLS, a connect timeout, an application name). */
export function pgEnv(e: { password: string }, app: string): Record<string, string> {
  return { PGPASSWORD: e.password, PGSSLMODE: "disable", PGCONNECT_TIMEOUT: "10", PGAPPNAME: app };
}

/** Run a benchmark's main, report a failure, clean up and exit with its code (unless a signal is already stopping everything). */
export async function runMain(main: () => Promise<number>): Promise<void> {
  let code = 1;
  try {
    code = await main();
  } catch (e) {
    if (!isStopping()) say(`failed: ${e instanceof Error ? e.message : String(e)}`);
  } finally {
    if (!isStopping()) {
      await cleanup();
      process.exit(code);
    }
  }
}

/** --help: print the script's header comment (its first block comment) and exit. */
export function printHelp(script: string): never {
  const doc = readFileSync(script, "utf8").split("*/")[0]!;
  console.log(doc.replace(/^#!.*\n/, "").replace(/^\/\*\*\n/, "").replace(/^ \* ?/gm, ""));
  process.exit(0);
}
