/**
 * Assembles a running gateway from a Config: the audit log, the policy
 * engine, the identity step, the guard, and one listener per connection.
 */
import defaultPolicyPath from "../wasm/policy.wasm" with { type: "file" };
import { openLog } from "./audit/index.ts";
import type { Config } from "./config/index.ts";
import { Guard } from "./core/guard.ts";
import type { Logger } from "./core/log.ts";
import { ApiKeyVerifier } from "./identity/apikey.ts";
import { createPolicyEngine } from "./policy/index.ts";
import { listenPostgres, type PgListener } from "./protocols/postgres/server.ts";
import { initSql } from "./protocols/postgres/sql.ts";

export interface Gateway {
  listeners: { name: string; host: string; port: number }[];
  close(): Promise<void>;
}

/** The policy bundle compiled into the executable (wasm/policy.wasm at build time). */
export async function defaultPolicyBytes(): Promise<Uint8Array> {
  return Bun.file(defaultPolicyPath).bytes();
}

export async function startGateway(config: Config, log: Logger): Promise<Gateway> {
  await initSql();
  const audit = await openLog(config.audit.dir, {
    durability: config.audit.durability,
    segmentBytes: config.audit.segment_bytes,
    onWarn: (msg, facts) => log("warn", msg, facts as Record<string, unknown>),
  });
  const policy = await createPolicyEngine({
    ...(config.policy.bundle ? { file: config.policy.bundle, watch: config.policy.watch } : { bytes: await defaultPolicyBytes() }),
    data: config.policy.data,
    onLog: (level, msg, facts) => log(level, msg, facts),
  });
  log("info", "policy loaded", { version: policy.version, bundle: config.policy.bundle ?? "(embedded default)" });
  const guard = new Guard({
    policy,
    audit,
    identity: new ApiKeyVerifier(config.identity.api_keys),
    onAuditError: (error, fields) => log("error", "audit record lost", { error: error.message, type: fields.type, session: fields.session }),
  });

  const listeners: PgListener[] = [];
  const described: Gateway["listeners"] = [];
  try {
    for (const c of config.connections) {
      const l = await listenPostgres({
        connection: { name: c.name, protocol: "postgres", target: `${c.target.host}:${c.target.port}/${c.target.database}` },
        host: c.host,
        port: c.port,
        target: c.target,
        guard,
        log,
        ...(c.tls ? { tls: c.tls } : {}),
        maxMessageBytes: c.max_message_bytes,
        startupTimeoutMs: c.startup_timeout_ms,
      });
      listeners.push(l);
      described.push({ name: c.name, host: c.host, port: l.port });
      log("info", "listening", { connection: c.name, protocol: "postgres", address: `${c.host}:${l.port}`, target: `${c.target.host}:${c.target.port}` });
    }
  } catch (e) {
    await Promise.all(listeners.map((l) => l.close({ sessions: true })));
    await audit.close();
    policy.close();
    throw e;
  }
  return {
    listeners: described,
    async close() {
      await Promise.all(listeners.map((l) => l.close({ sessions: true })));
      await audit.close();
      policy.close();
    },
  };
}
