/**
 * Assembles a running gateway from a Config: the audit log (with its
 * checkpoints and shipping), the policy engine, the identity step, the
 * guard, one listener per connection, and the admin API.
 *
 * With `workers: N` above 1, this thread serves as worker 0 and N - 1
 * worker threads (src/workers) serve the same listeners (SO_REUSEPORT),
 * each with its own policy engine, identity step, guard and stores'
 * connections; this thread keeps what must be one: the audit log, its
 * shipping, the admin API, the limits and the lockout.
 */
import defaultPolicyPath from "../wasm/policy.wasm" with { type: "file" };
import defaultPolicyManifest from "../wasm/manifest.json" with { type: "json" };
import { adminApp } from "./api/index.ts";
import { hostname } from "node:os";
import { Approvals } from "./approvals/index.ts";
import { SqliteApprovalStore } from "./approvals/sqlite.ts";
import { openLog } from "./audit/index.ts";
import type { FaultFs } from "./audit/writer.ts";
import { parseSignerKey } from "./audit/note.ts";
import { Shipper } from "./audit/ship.ts";
import type { Config } from "./config/index.ts";
import { boundGarbage } from "./core/memory.ts";
import { type AuditSink, Guard } from "./core/guard.ts";
import { type Limits, ListenerLimits } from "./core/limits.ts";
import { Lockout, type LoginLockout } from "./core/lockout.ts";
import type { Logger } from "./core/log.ts";
import { AccountStore, recordAccountEvents } from "./identity/accounts.ts";
import { Identities } from "./identity/index.ts";
import { DerivedRuleStore } from "./mask/derived.ts";
import { createPolicyEngine, type PolicyManifest } from "./policy/index.ts";
import { logPrivileges } from "./protocols/postgres/doctor.ts";
import { listenPostgres, type PgListener } from "./protocols/postgres/server.ts";
import { initSql } from "./protocols/postgres/sql.ts";
import { startSshListeners } from "./protocols/ssh/start.ts";
import { startWorkers, type WorkerPool } from "./workers/pool.ts";

export interface Gateway {
  listeners: { name: string; host: string; port: number }[];
  /** The admin API's address, if configured. */
  admin?: { host: string; port: number };
  /** Threads serving the listeners (config `workers`). */
  workers: number;
  close(): Promise<void>;
}

/** How long a clean shutdown waits for the shipping backlog to drain. */
const SHIP_DRAIN_MS = 10_000;

/** The policy bundle compiled into the executable (wasm/policy.wasm at build time). */
export async function defaultPolicyBytes(): Promise<Uint8Array> {
  return Bun.file(defaultPolicyPath).bytes();
}

/** `testing.auditFaults`: tests only, replaces the audit log's write/fdatasync (OpenOptions.__faultFs). */
export async function startGateway(config: Config, log: Logger, testing: { auditFaults?: Partial<FaultFs> } = {}): Promise<Gateway> {
  await initSql();
  const signer = parseSignerKey(config.audit.signing_key.text);
  let shipper: Shipper | null = null;
  const audit = await openLog(config.audit.dir, {
    durability: config.audit.durability,
    segmentBytes: config.audit.segment_bytes,
    onWarn: (msg, facts) => log("warn", msg, facts as Record<string, unknown>),
    signer,
    origin: config.audit.origin ?? signer.name,
    checkpointEveryRecords: config.audit.checkpoint.every_records,
    checkpointEverySeconds: config.audit.checkpoint.every_seconds,
    onCheckpoint: (c) => shipper?.addCheckpoint(c),
    onSealed: () => shipper?.notify(),
    ...(testing.auditFaults ? { __faultFs: testing.auditFaults } : {}),
  });
  log("info", "audit log open", { dir: config.audit.dir, records: audit.size, checkpoint: audit.latestCheckpoint?.size ?? null, key: signer.verifierKey });
  if (config.audit.ship) {
    shipper = await Shipper.open(config.audit.dir, config.audit.ship, audit, log);
    shipper.start(config.audit.seal_after_s);
  }
  const several = config.workers > 1;
  const limits = new Map([...config.connections, ...config.ssh].map((c) => [c.name, new ListenerLimits(c.name, c.limits)]));
  // What `agate accounts unlock` leaves in the accounts store is recorded here, once for every worker thread.
  const eventsStore = config.identity.accounts ? new AccountStore(config.identity.accounts) : undefined;
  const accountEvents = eventsStore ? recordAccountEvents(eventsStore, (fields) => audit.append(fields), log) : undefined;
  let adminUrl: string | undefined;
  let pool: WorkerPool | null = null;
  let admin: ReturnType<typeof Bun.serve> | null = null;
  // What each target credential can do, logged in the background (never delaying or failing start-up).
  const privilegeChecks = new AbortController();
  const gatewayName = config.approvals.gateway ?? `${hostname()}:${config.audit.dir}`;
  let serving: Serving<Lockout> | null = null;
  const shutdown = async () => {
    privilegeChecks.abort();
    // Held commands end (recorded, "the gateway is shutting down") and sessions close in every thread before the log closes.
    await Promise.all([pool?.close(), serving?.end()]);
    await accountEvents?.close();
    eventsStore?.close();
    await admin?.stop(true);
    // Seal and checkpoint what is left so all of it can ship, then drain.
    await shipper?.sealNow();
    await audit.close();
    await shipper?.close(SHIP_DRAIN_MS);
    await serving?.release();
  };
  try {
    serving = await serveConnections(config, log, {
      audit,
      lockout: (accounts) => new Lockout(config.lockout, accounts),
      limits: (name) => limits.get(name)!,
      gateway: gatewayName,
      publicUrl: () => config.approvals.public_url ?? adminUrl,
      ...(several ? { worker: 0, reusePort: "first" as const, shareDerived: () => pool!.reloadDerived() } : {}),
    });
    const { identity, approvals, lockout } = serving;
    if (config.admin) {
      const app = adminApp({ log: audit, authenticate: (key) => identity.verifyBearer(key), groups: config.admin.groups, approvals, ...(shipper ? { ship: () => shipper!.status() } : {}), lockout: () => lockout.status(), limits: [...limits.values()] });
      admin = Bun.serve({ hostname: config.admin.host, port: config.admin.port, fetch: app.fetch });
      adminUrl = `http://${config.admin.host.includes(":") ? `[${config.admin.host}]` : config.admin.host}:${admin.port}`;
      log("info", "admin API listening", { address: `${config.admin.host}:${admin.port}` });
    }
    if (several) {
      pool = await startWorkers(config.workers - 1, {
        config,
        ports: serving.listeners.map((l) => l.port),
        gateway: gatewayName,
        ...(config.approvals.public_url ?? adminUrl ? { publicUrl: config.approvals.public_url ?? adminUrl } : {}),
      }, { audit, limits, lockout, derived: serving.derived, log });
      log("info", "workers started", { workers: config.workers });
    }
  } catch (e) {
    await shutdown();
    throw e;
  }
  for (const c of config.connections) void logPrivileges(c.name, c.target, log, privilegeChecks.signal);
  return {
    listeners: serving.listeners,
    ...(admin ? { admin: { host: config.admin!.host, port: admin.port! } } : {}),
    workers: config.workers,
    close: shutdown,
  };
}

/** What one serving thread is given (startGateway for worker 0, src/workers/worker.ts for the others). */
export interface ServeOptions<L extends LoginLockout> {
  audit: AuditSink;
  lockout: (accounts: AccountStore | undefined) => L;
  limits: (connection: string) => Limits;
  /** The approvals' gateway name; a worker thread's own is derived from it. */
  gateway: string;
  publicUrl: () => string | undefined;
  /** Set with several workers: this thread's number. */
  worker?: number;
  /** Bind the listeners with SO_REUSEPORT (several workers): first, or joining the port the first bound. */
  reusePort?: "first" | "join";
  /** The ports to bind, by connection (a worker thread binds the ones the main thread got). */
  ports?: number[];
  /** Make derived mask rules this thread added hold in every other thread (DerivedRuleStore.share). */
  shareDerived?: () => Promise<void>;
}

export interface Serving<L extends LoginLockout> {
  listeners: Gateway["listeners"];
  identity: Identities;
  approvals: Approvals;
  lockout: L;
  derived: DerivedRuleStore;
  /** End held commands, then stop accepting and end every session (their last records are appended). */
  end(): Promise<void>;
  /** Close the policy engine and the stores (after end(), once the log no longer needs them). */
  release(): Promise<void>;
}

/** One thread's policy engine, identity step, approvals, guard and listeners. */
export async function serveConnections<L extends LoginLockout>(config: Config, log: Logger, o: ServeOptions<L>): Promise<Serving<L>> {
  const closers: (() => unknown)[] = [];
  const release = async () => {
    for (const c of closers.splice(0).reverse()) await c();
  };
  const listeners: PgListener[] = [];
  let approvals: Approvals | undefined;
  const end = async () => {
    await approvals?.close();
    await Promise.all(listeners.splice(0).map((l) => l.close({ sessions: true })));
  };
  try {
    const policy = await createPolicyEngine({
      ...(config.policy.bundle ? { file: config.policy.bundle, watch: config.policy.watch } : { bytes: await defaultPolicyBytes(), manifest: defaultPolicyManifest as PolicyManifest }),
      data: config.policy.data,
      onLog: (level, msg, facts) => log(level, msg, facts),
    });
    closers.push(() => policy.close());
    log("info", "policy loaded", { version: policy.version, bundle: config.policy.bundle ?? "(embedded default)", decisions_cached: policy.caching });
    const accounts = config.identity.accounts ? new AccountStore(config.identity.accounts) : undefined;
    if (accounts) closers.push(() => accounts.close());
    const identity = new Identities(config.identity, accounts);
    const lockout = o.lockout(accounts);
    const a = config.approvals;
    const approvalStore = a.store.kind === "sqlite" ? new SqliteApprovalStore(a.store.path) : await (await import("./approvals/pg.ts")).PgApprovalStore.open(a.store.url);
    closers.push(() => approvalStore.close());
    const audit = o.audit;
    approvals = new Approvals({
      store: approvalStore,
      // Unique among the gateways (and threads) sharing the store: each ends only the requests it held.
      gateway: o.worker ? `${o.gateway}#${o.worker}` : o.gateway,
      publicUrl: o.publicUrl,
      defaultTimeoutS: a.timeout_s,
      webhooks: a.webhooks,
      record: (fields, durable) => (durable ? audit.append(fields) : void audit.appendLater(fields)),
      log,
    });
    await approvals.start();
    // What closed sessions leave behind is collected once RSS has grown by 64 MB (core/memory.ts); a worker
    // thread collects when the main thread does (RSS is the process's).
    if (!o.worker) closers.push(boundGarbage(log));
    const derived = new DerivedRuleStore(config.mask.derived_store);
    closers.push(() => derived.close());
    derived.share = o.shareDerived;
    const guard = new Guard({
      derived,
      policy,
      audit,
      identity,
      approvals,
      maskKeys: { ...(config.mask.hmac_key ? { hmac: config.mask.hmac_key } : {}) },
      lockout,
      onAuditError: (error, fields) => log("error", "audit record lost", { error: error.message, type: fields.type, session: fields.session }),
      ...(o.worker !== undefined ? { worker: o.worker } : {}),
    });
    const described: Gateway["listeners"] = [];
    for (const [i, c] of config.connections.entries()) {
      const l = await listenPostgres({
        connection: { name: c.name, protocol: "postgres", target: `${c.target.host}:${c.target.port}/${c.target.database}` },
        host: c.host,
        port: o.ports?.[i] ?? c.port,
        target: c.target,
        guard,
        log,
        ...(c.tls ? { tls: c.tls } : {}),
        maxMessageBytes: c.max_message_bytes,
        allowPlaintextAuth: c.allow_plaintext_auth,
        startupTimeoutMs: c.startup_timeout_ms,
        limits: o.limits(c.name),
        ...(o.reusePort ? { reusePort: o.reusePort } : {}),
      });
      listeners.push(l);
      described.push({ name: c.name, host: c.host, port: l.port });
      log("info", "listening", { connection: c.name, protocol: "postgres", address: `${c.host}:${l.port}`, target: `${c.target.host}:${c.target.port}`, ...(o.worker !== undefined ? { worker: o.worker } : {}) });
    }
    // SSH is served by the main thread only: its listener binds no shared port.
    if (!o.worker) {
      for (const l of await startSshListeners(config.ssh, guard, log, o.limits)) {
        listeners.push(l);
        described.push({ name: l.name, host: l.host, port: l.port });
      }
    }
    return { listeners: described, identity, approvals, lockout, derived, end, release };
  } catch (e) {
    await end();
    await release();
    throw e;
  }
}
