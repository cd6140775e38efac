/**
 * An agate gateway in this process, in front of a test PostgreSQL, with one
 * API key. Clients in the same process must be asynchronous (spawn, not
 * spawnSync): the gateway shares the event loop.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import type { Subprocess } from "bun";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readRecords } from "../../src/audit/index.ts";
import { generateKey } from "../../src/audit/note.ts";
import { parseConfig } from "../../src/config/index.ts";
import { createLogger, type Logger } from "../../src/core/log.ts";
import { startGateway, type Gateway } from "../../src/gateway.ts";
import { hashApiKey } from "../../src/identity/apikey.ts";
import type { TestPostgres } from "./postgres.ts";

export const API_KEY = "agk_test_key_for_integration_tests_only";
export const USER = "ci-runner";

export interface TestGateway {
  gateway: Gateway;
  port: number;
  auditDir: string;
  /** The audit log's checkpoint verifier key. */
  verifierKey: string;
  /** URL a client uses to reach `database` through agate with the test key. */
  url(opts?: { user?: string; key?: string; database?: string; params?: string }): string;
  close(): Promise<void>;
}

export async function startTestGateway(pg: TestPostgres, opts: { connection?: Record<string, unknown>; config?: Record<string, unknown>; audit?: Record<string, unknown>; targetUser?: string; env?: Record<string, string | undefined>; log?: Logger } = {}): Promise<TestGateway> {
  const dir = mkdtempSync(join(tmpdir(), "agate-gw-"));
  const auditDir = join(dir, "audit");
  const { signerKey, verifierKey } = generateKey("agate.test/audit");
  writeFileSync(join(dir, "audit.key"), signerKey, { mode: 0o600 });
  const config = parseConfig(
    {
      // Checkpoints every quarter second, so a test's records are soon signed.
      audit: { dir: auditDir, signing_key: "./audit.key", checkpoint: { every_records: 10_000, every_seconds: 0.25 }, ...(opts.audit ?? {}) },
      identity: { api_keys: [{ id: USER, groups: ["ci"], kind: "service", sha256: hashApiKey(API_KEY) }] },
      connections: [
        {
          name: "app-db",
          listen: "127.0.0.1:0",
          allow_plaintext_auth: true,
          target: { host: pg.host, port: pg.port, database: "app", user: opts.targetUser ?? "app_scram", password: pg.password },
          ...opts.connection,
        },
      ],
      log_level: process.env.AGATE_TEST_LOG ?? "warn",
      // Suites that try many wrong credentials from 127.0.0.1 on purpose would be delayed and blocked
      // (lockout.test.ts turns it on with its own thresholds).
      lockout: { delay_after: 0, block_after: 0 },
      ...opts.config,
    },
    dir,
    { ...process.env, ...opts.env },
  );
  const gateway = await startGateway(config, opts.log ?? createLogger(config.log_level));
  const port = gateway.listeners[0]!.port;
  return {
    gateway,
    port,
    auditDir,
    verifierKey,
    url: ({ user = USER, key = API_KEY, database = "app", params = "" } = {}) =>
      `postgres://${encodeURIComponent(user)}:${encodeURIComponent(key)}@127.0.0.1:${port}/${database}${params ? `?${params}` : ""}`,
    close: async () => {
      await gateway.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A config directory for `agate serve` in front of `pg`: the checkpoint
 * signing key (mode 0600) and agate.yaml with one API key and the app-db
 * connection (its password from AGATE_TEST_PG_PASSWORD). `audit` and
 * `identity` are extra lines under those keys, `sections` extra top-level
 * YAML. Returns the verifier key.
 */
export function writeServeConfig(
  dir: string,
  pg: TestPostgres,
  o: { by: string; apiKey: { id: string; key: string }; logLevel?: string; audit?: string; identity?: string; sections?: string },
): string {
  const { signerKey, verifierKey } = generateKey(`${o.by}/audit`);
  writeFileSync(join(dir, "audit.key"), `${signerKey}\n`, { mode: 0o600 });
  writeFileSync(
    join(dir, "agate.yaml"),
    `# written by test/${o.by}.ts
log_level: ${o.logLevel ?? "warn"}
audit:
  dir: ./audit
  signing_key: ./audit.key
${o.audit ?? ""}
${o.sections ?? ""}
identity:
  api_keys:
    - { id: ${o.apiKey.id}, kind: service, groups: [ci], sha256: ${hashApiKey(o.apiKey.key)} }
${o.identity ?? ""}
connections:
  - name: app-db
    protocol: postgres
    listen: 127.0.0.1:0
    allow_plaintext_auth: true
    target: { host: ${pg.host}, port: ${pg.port}, database: app, user: app_scram, password_env: AGATE_TEST_PG_PASSWORD }
`,
  );
  return verifierKey;
}

/** Run a command without blocking the event loop; returns exit code and output. */
export async function sh(argv: string[], opts: { stdin?: string; env?: Record<string, string> } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const p = Bun.spawn(argv, {
    stdout: "pipe",
    stderr: "pipe",
    stdin: opts.stdin !== undefined ? new TextEncoder().encode(opts.stdin) : "ignore",
    env: { ...process.env, ...opts.env },
  });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, stdout, stderr };
}

/** Every file under `dir` (an audit directory), read as Latin-1 and joined: what a leak test searches. */
export function directoryText(dir: string): string {
  let text = "";
  for (const entry of readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (entry.isFile()) text += readFileSync(join(entry.parentPath, entry.name)).toString("latin1");
  }
  return text;
}

export function psql(url: string, sql: string, extra: string[] = []) {
  return sh(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", url, ...extra, "-c", sql]);
}

/** `agate serve` in a process of its own (kill -9 tests, several gateways). */
export interface GatewayProcess {
  proc: Subprocess<"ignore", "pipe", "pipe">;
  /** The config's directory. */
  dir: string;
  /** The first connection's port (`listen: 127.0.0.1:0` is fine). */
  port: number;
  /** The admin API's base URL, when asked for. */
  admin: string;
  stderr(): string;
  /** Wait for the process to end; its exit code (or 128 + signal). */
  exited(): Promise<number>;
}

/**
 * Run `bun src/main.ts serve --config <dir>/agate.yaml` in `dir` and resolve
 * once its listener (and, with `admin`, its admin API) is announced; both
 * pipes are read to the end so the gateway never blocks on them. `spawned`
 * is told about the process at once (for an afterAll that kills leftovers).
 */
export async function spawnGateway(dir: string, opts: { env?: Record<string, string | undefined>; admin?: boolean; spawned?: (p: Subprocess) => void } = {}): Promise<GatewayProcess> {
  const proc = Bun.spawn([process.execPath, join(import.meta.dir, "../../src/main.ts"), "serve", "--config", join(dir, "agate.yaml")], {
    cwd: dir,
    env: { ...process.env, ...opts.env },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  opts.spawned?.(proc);
  let err = "";
  let out = "";
  const read = async (stream: ReadableStream<Uint8Array>, add: (s: string) => void) => {
    const d = new TextDecoder();
    for await (const c of stream) add(d.decode(c, { stream: true }));
  };
  const done = Promise.all([read(proc.stderr, (s) => (err += s)), read(proc.stdout, (s) => (out += s))]);
  const listening = () => / listening on 127\.0\.0\.1:(\d+)/.exec(out);
  const admin = () => /"msg":"admin API listening","address":"127\.0\.0\.1:(\d+)"/.exec(err);
  const ready = () => listening() !== null && (!opts.admin || admin() !== null);
  for (let k = 0; k < 1200 && !ready() && proc.exitCode === null && proc.signalCode === null; k++) await Bun.sleep(25);
  if (!ready()) {
    proc.kill("SIGKILL");
    await proc.exited;
    await done;
    throw new Error(`agate serve did not start (exit ${proc.exitCode ?? proc.signalCode}):\nstdout: ${out}\nstderr: ${err}`);
  }
  return {
    proc,
    dir,
    port: Number(listening()![1]),
    admin: opts.admin ? `http://127.0.0.1:${admin()![1]}` : "",
    stderr: () => err,
    exited: async () => {
      const code = await proc.exited;
      await done;
      return code;
    },
  };
}

/**
 * The records of `type` in a running gateway's log once `until` holds of
 * them (or after about five seconds): records that follow what was
 * forwarded reach the files with the next group commit.
 */
export async function recordsOf(g: TestGateway, type: string, until: (rs: Record<string, unknown>[]) => boolean): Promise<Record<string, unknown>[]> {
  let rs: Record<string, unknown>[] = [];
  for (let i = 0; i < 200; i++) {
    rs = [];
    for await (const r of readRecords(g.auditDir)) if (r.type === type) rs.push(r);
    if (until(rs)) break;
    await Bun.sleep(25);
  }
  return rs;
}
