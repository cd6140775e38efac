/**
 * Assembles a running gateway from a Config: the audit log (with its
 * checkpoints and shipping), the policy engine, the identity step, the
 * guard, one listener per connection, and the admin API.
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
import { Guard } from "./core/guard.ts";
import { ListenerLimits } from "./core/limits.ts";
import { Lockout } from "./core/lockout.ts";
import type { Logger } from "./core/log.ts";
import { AccountStore, recordAccountEvents } from "./identity/accounts.ts";
import { Identities } from "./identity/index.ts";
import { DerivedRuleStore } from "./mask/derived.ts";
import { createPolicyEngine, type PolicyManifest } from "./policy/index.ts";
import { logPrivileges } from "./protocols/postgres/doctor.ts";
import { listenPostgres, type PgListener } from "./protocols/postgres/server.ts";
import { initSql } from "./protocols/postgres/sql.ts";

export interface Gateway {
  listeners: { name: string; host: string; port: number }[];
  /** The admin API's address, if configured. */
  admin?: { host: string; port: number };
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
  const policy = await createPolicyEngine({
    ...(config.policy.bundle ? { file: config.policy.bundle, watch: config.policy.watch } : { bytes: await defaultPolicyBytes(), manifest: defaultPolicyManifest as PolicyManifest }),
    data: config.policy.data,
    onLog: (level, msg, facts) => log(level, msg, facts),
  });
  log("info", "policy loaded", { version: policy.version, bundle: config.policy.bundle ?? "(embedded default)", decisions_cached: policy.caching });
  const accounts = config.identity.accounts ? new AccountStore(config.identity.accounts) : undefined;
  const identity = new Identities(config.identity, accounts);
  const lockout = new Lockout(config.lockout, accounts);
  const accountEvents = accounts ? recordAccountEvents(accounts, (fields) => audit.append(fields), log) : undefined;
  const limits: ListenerLimits[] = [];
  const a = config.approvals;
  const approvalStore = a.store.kind === "sqlite" ? new SqliteApprovalStore(a.store.path) : await (await import("./approvals/pg.ts")).PgApprovalStore.open(a.store.url);
  let adminUrl: string | undefined;
  const approvals = new Approvals({
    store: approvalStore,
    gateway: a.gateway ?? `${hostname()}:${config.audit.dir}`,
    publicUrl: () => a.public_url ?? adminUrl,
    defaultTimeoutS: a.timeout_s,
    webhooks: a.webhooks,
    record: (fields, durable) => (durable ? audit.append(fields) : void audit.appendLater(fields)),
    log,
  });
  await approvals.start();
  const derived = new DerivedRuleStore(config.mask.derived_store);
  const guard = new Guard({
    derived,
    policy,
    audit,
    identity,
    approvals,
    maskKeys: { ...(config.mask.hmac_key ? { hmac: config.mask.hmac_key } : {}) },
    lockout,
    onAuditError: (error, fields) => log("error", "audit record lost", { error: error.message, type: fields.type, session: fields.session }),
  });

  const listeners: PgListener[] = [];
  const described: Gateway["listeners"] = [];
  // What closed sessions leave behind is collected once RSS has grown by 64 MB (core/memory.ts).
  const releaseMemoryBound = boundGarbage(log);
  let admin: ReturnType<typeof Bun.serve> | null = null;
  // What each target credential can do, logged in the background (never delaying or failing start-up).
  const privilegeChecks = new AbortController();
  const shutdown = async () => {
    privilegeChecks.abort();
    // Held commands end (recorded, "the gateway is shutting down") before their sessions close and before the log closes.
    await approvals.close();
    await accountEvents?.close();
    await Promise.all(listeners.map((l) => l.close({ sessions: true })));
    await admin?.stop(true);
    // Seal and checkpoint what is left so all of it can ship, then drain.
    await shipper?.sealNow();
    await audit.close();
    await shipper?.close(SHIP_DRAIN_MS);
    policy.close();
    accounts?.close();
    await approvalStore.close();
    releaseMemoryBound();
    derived.close();
  };
  try {
    for (const c of config.connections) {
      const connectionLimits = new ListenerLimits(c.name, c.limits);
      limits.push(connectionLimits);
      const l = await listenPostgres({
        connection: { name: c.name, protocol: "postgres", target: `${c.target.host}:${c.target.port}/${c.target.database}` },
        host: c.host,
        port: c.port,
        target: c.target,
        guard,
        log,
        ...(c.tls ? { tls: c.tls } : {}),
        maxMessageBytes: c.max_message_bytes,
        allowPlaintextAuth: c.allow_plaintext_auth,
        startupTimeoutMs: c.startup_timeout_ms,
        limits: connectionLimits,
      });
      listeners.push(l);
      described.push({ name: c.name, host: c.host, port: l.port });
      log("info", "listening", { connection: c.name, protocol: "postgres", address: `${c.host}:${l.port}`, target: `${c.target.host}:${c.target.port}` });
    }
    if (config.admin) {
      const app = adminApp({ log: audit, authenticate: (key) => identity.verifyBearer(key), groups: config.admin.groups, approvals, ...(shipper ? { ship: () => shipper!.status() } : {}), lockout: () => lockout.status(), limits });
      admin = Bun.serve({ hostname: config.admin.host, port: config.admin.port, fetch: app.fetch });
      adminUrl = `http://${config.admin.host.includes(":") ? `[${config.admin.host}]` : config.admin.host}:${admin.port}`;
      log("info", "admin API listening", { address: `${config.admin.host}:${admin.port}` });
    }
  } catch (e) {
    await shutdown();
    throw e;
  }
  for (const c of config.connections) void logPrivileges(c.name, c.target, log, privilegeChecks.signal);
  return {
    listeners: described,
    ...(admin ? { admin: { host: config.admin!.host, port: admin.port! } } : {}),
    close: shutdown,
  };
}
