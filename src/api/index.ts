/**
 * The admin API (Hono): the audit log's checkpoints, proofs and records,
 * and Prometheus metrics.
 *
 *   GET /v1/log/checkpoint                         latest signed checkpoint (text/plain, a C2SP signed note)
 *   GET /v1/log/proof/inclusion?index=I&size=N     {index, size, leaf_hash, hashes[]}   (base64; size defaults to the latest checkpoint's)
 *   GET /v1/log/proof/consistency?from=A&to=B      {from, to, hashes[]}                 (to defaults to the latest checkpoint's size)
 *   GET /v1/log/records/I                          record I's payload, its canonical JSON bytes; Agate-Leaf-Hash header
 *   GET /metrics                                   Prometheus text format (no authentication: serve it on a private address)
 *
 *   GET  /v1/approvals?status=pending              approval requests (newest last)
 *   GET  /v1/approvals/ID                          one request
 *   POST /v1/approvals/ID/approve                  {reason, grant_minutes?}: vote to approve (and grant a window)
 *   POST /v1/approvals/ID/deny                     {reason}: deny
 *
 * /v1 needs `Authorization: Bearer <API key or OIDC token>`. /v1/log needs
 * an account in one of the configured admin groups; /v1/approvals any
 * verified identity (the approval rules say who may decide what). Errors
 * are JSON `{error: {code, message}}`.
 */
import { Hono, type Context } from "hono";
import type { TransparencyLog } from "../audit/index.ts";
import type { Approvals } from "../approvals/index.ts";
import type { ShipStatus } from "../audit/ship.ts";
import { AgateError } from "../core/errors.ts";
import type { ListenerLimits } from "../core/limits.ts";
import type { LockoutStatus } from "../core/lockout.ts";
import type { Identity } from "../core/types.ts";

export interface AdminOptions {
  log: TransparencyLog;
  /** Verifies a bearer credential (an API key). */
  authenticate: (bearer: string) => Promise<Identity>;
  /** Accounts in one of these groups may call /v1. */
  groups: string[];
  ship?: () => ShipStatus;
  approvals?: Approvals;
  /** Failed logins, blocks and locks (core/lockout.ts). */
  lockout?: () => LockoutStatus;
  /** Each listener's limits, with what they hold and refused (core/limits.ts). */
  limits?: ListenerLimits[];
}

const b64 = (h: Uint8Array) => Buffer.from(h).toString("base64");

/** What the authentication middleware leaves for the routes. */
type Env = { Variables: { identity: Identity } };

export function adminApp(o: AdminOptions): Hono<Env> {
  const app = new Hono<Env>();

  app.onError((e, c) => {
    if (e instanceof AgateError) {
      const status =
        e.code === "UNAUTHENTICATED"
          ? 401
          : e.code === "FORBIDDEN" || e.code === "APPROVAL_SELF" || e.code === "APPROVAL_NOT_APPROVER"
            ? 403
            : e.code.startsWith("AUDIT_NO_SUCH") || e.code === "NOT_FOUND" || e.code === "APPROVAL_NOT_FOUND"
              ? 404
              : e.code === "APPROVAL_NOT_PENDING" || e.code === "APPROVAL_REPEAT"
                ? 409
                : 400;
      return c.json({ error: { code: e.code, message: e.message } }, status);
    }
    return c.json({ error: { code: "INTERNAL", message: "The request failed inside agate; see the gateway's log." } }, 500);
  });

  app.use("/v1/*", async (c, next) => {
    const m = /^Bearer (\S+)$/.exec(c.req.header("authorization") ?? "");
    if (!m) throw new AgateError("UNAUTHENTICATED", "Send an API key or token as `Authorization: Bearer <credential>`.");
    let id: Identity;
    try {
      id = await o.authenticate(m[1]!);
    } catch {
      throw new AgateError("UNAUTHENTICATED", "The credential (API key or token) is not valid.");
    }
    c.set("identity", id);
    await next();
  });
  app.use("/v1/log/*", async (c, next) => {
    const groups = c.get("identity").groups;
    if (!groups.some((g) => o.groups.includes(g))) throw new AgateError("FORBIDDEN", `This API needs membership of one of: ${o.groups.join(", ")}.`);
    await next();
  });

  const approvals = () => {
    if (!o.approvals) throw new AgateError("NOT_FOUND", "Approvals are not enabled on this gateway.");
    return o.approvals;
  };
  app.get("/v1/approvals", async (c) => {
    const status = c.req.query("status");
    if (status !== undefined && !["pending", "approved", "denied", "expired", "withdrawn"].includes(status)) {
      throw new AgateError("BAD_REQUEST", `status must be pending, approved, denied, expired or withdrawn; got ${JSON.stringify(status)}.`);
    }
    return c.json({ requests: await approvals().store.list(status ? { status: status as "pending" } : {}) });
  });
  app.get("/v1/approvals/:id", async (c) => {
    const r = await approvals().store.get(c.req.param("id"));
    if (!r) throw new AgateError("APPROVAL_NOT_FOUND", `No approval request ${c.req.param("id")}.`);
    return c.json(r);
  });
  const decide = (decision: "approve" | "deny") => async (c: Context<Env>) => {
    let body: { reason?: unknown; grant_minutes?: unknown } = {};
    try {
      body = (await c.req.json()) as typeof body;
    } catch {
      throw new AgateError("BAD_REQUEST", 'Send a JSON body: {"reason": "…"} (and for approve, optionally "grant_minutes": 15).');
    }
    if (typeof body.reason !== "string" || !body.reason.trim()) throw new AgateError("BAD_REQUEST", "A decision needs a reason: {\"reason\": \"…\"}.");
    if (body.grant_minutes !== undefined && (decision === "deny" || typeof body.grant_minutes !== "number")) {
      throw new AgateError("BAD_REQUEST", "grant_minutes is a number of minutes, and only for approve.");
    }
    const r = await approvals().vote(c.req.param("id")!, c.get("identity"), decision, body.reason, body.grant_minutes as number | undefined);
    return c.json(r);
  };
  app.post("/v1/approvals/:id/approve", decide("approve"));
  app.post("/v1/approvals/:id/deny", decide("deny"));

  const latestSize = () => {
    const cp = o.log.latestCheckpoint;
    if (!cp) throw new AgateError("NOT_FOUND", "The log has no checkpoint yet.");
    return cp.size;
  };
  const int = (c: Context, name: string, fallback?: () => number): number => {
    const v = c.req.query(name);
    if (v === undefined || v === "") {
      if (fallback) return fallback();
      throw new AgateError("BAD_REQUEST", `Query parameter ${name} is required.`);
    }
    if (!/^\d+$/.test(v) || !Number.isSafeInteger(Number(v))) throw new AgateError("BAD_REQUEST", `Query parameter ${name} must be a whole number; got ${JSON.stringify(v)}.`);
    return Number(v);
  };

  app.get("/v1/log/checkpoint", (c) => {
    const cp = o.log.latestCheckpoint;
    if (!cp) throw new AgateError("NOT_FOUND", "The log has no checkpoint yet.");
    return c.text(cp.note, 200, { "Content-Type": "text/plain; charset=utf-8" });
  });

  app.get("/v1/log/proof/inclusion", (c) => {
    const index = int(c, "index");
    const size = int(c, "size", latestSize);
    const hashes = o.log.inclusionProof(index, size);
    return c.json({ index, size, leaf_hash: b64(o.log.leafHash(index)), hashes: hashes.map(b64) });
  });

  app.get("/v1/log/proof/consistency", (c) => {
    const from = int(c, "from");
    const to = int(c, "to", latestSize);
    return c.json({ from, to, hashes: o.log.consistencyProof(from, to).map(b64) });
  });

  app.get("/v1/log/records/:index", async (c) => {
    const v = c.req.param("index");
    if (!/^\d+$/.test(v)) throw new AgateError("BAD_REQUEST", `The record index must be a whole number; got ${JSON.stringify(v)}.`);
    const index = Number(v);
    const payload = await o.log.readRecord(index);
    return c.body(new Uint8Array(payload), 200, { "Content-Type": "application/json", "Agate-Leaf-Hash": b64(o.log.leafHash(index)) });
  });

  app.get("/metrics", (c) => {
    const lines: string[] = [];
    const metric = (name: string, type: "gauge" | "counter", help: string, value: number) => {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, `${name} ${value}`);
    };
    metric("agate_audit_records", "gauge", "Records appended to the audit log.", o.log.size);
    metric("agate_audit_durable_records", "gauge", "Records known durable (fdatasync'd).", o.log.durableSize);
    metric("agate_audit_checkpoint_size", "gauge", "Tree size signed by the latest checkpoint (-1: none).", o.log.latestCheckpoint?.size ?? -1);
    const s = o.ship?.();
    if (s) {
      metric("agate_audit_ship_backlog_segments", "gauge", "Sealed segments waiting to be uploaded.", s.backlogSegments);
      metric("agate_audit_ship_backlog_bytes", "gauge", "Bytes of sealed segments waiting to be uploaded.", s.backlogBytes);
      metric("agate_audit_ship_backlog_checkpoints", "gauge", "Checkpoints waiting to be uploaded.", s.backlogCheckpoints);
      metric("agate_audit_ship_shipped_records", "gauge", "Records covered by uploaded segments.", s.shippedRecords);
      metric("agate_audit_ship_uploads_total", "counter", "Objects uploaded.", s.uploads);
      metric("agate_audit_ship_errors_total", "counter", "Failed upload attempts.", s.errors);
      metric("agate_audit_ship_last_success_timestamp_seconds", "gauge", "When the last upload was confirmed (0: never).", s.lastSuccessAt / 1000);
      metric("agate_audit_ship_failing", "gauge", "1 while uploads are failing.", s.lastError ? 1 : 0);
    }
    const l = o.lockout?.();
    if (l) {
      metric("agate_login_failures_total", "counter", "Failed logins (a wrong or unusable credential).", l.failures);
      metric("agate_login_delayed_total", "counter", "Failure answers delayed because their address failed repeatedly.", l.delayed);
      metric("agate_lockout_address_blocks_total", "counter", "Client addresses blocked after repeated failed logins.", l.addressBlocks);
      metric("agate_lockout_user_locks_total", "counter", "User names locked after repeated failed logins.", l.userLocks);
      metric("agate_lockout_refused_total", "counter", "Logins refused from a blocked address or as a locked user.", l.refusedBlocked + l.refusedLocked);
      metric("agate_lockout_blocked_addresses", "gauge", "Client addresses blocked now.", l.blockedAddresses);
      metric("agate_lockout_locked_users", "gauge", "User names locked now (until `agate accounts unlock`).", l.lockedUsers);
    }
    if (o.limits?.length) {
      const series = (name: string, type: "gauge" | "counter", help: string, values: [Record<string, string>, number][]) => {
        lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
        for (const [labels, v] of values) lines.push(`${name}{${Object.entries(labels).map(([k, x]) => `${k}="${x.replace(/[\\"]/g, "\\$&").replace(/\n/g, "\\n")}"`).join(",")}} ${v}`);
      };
      series("agate_connections_open", "gauge", "Client connections open on each listener, logged in or not.", o.limits.map((x) => [{ connection: x.connection }, x.connections]));
      series("agate_sessions_open", "gauge", "Sessions open on each listener.", o.limits.map((x) => [{ connection: x.connection }, x.sessions]));
      series("agate_limit_refusals_total", "counter", "Connections and sessions refused by a limit (limits.*), by code.", o.limits.flatMap((x) => (["LIMIT_CONNECTIONS", "LIMIT_CONNECTIONS_PER_ADDRESS", "LIMIT_SESSIONS_PER_IDENTITY"] as const).map((code): [Record<string, string>, number] => [{ connection: x.connection, code }, x.counts[code]])));
      series("agate_limit_session_ends_total", "counter", "Sessions ended by an idle timeout or the session lifetime, by code.", o.limits.flatMap((x) => (["IDLE_SESSION_TIMEOUT", "IDLE_IN_TRANSACTION_TIMEOUT", "SESSION_LIFETIME"] as const).map((code): [Record<string, string>, number] => [{ connection: x.connection, code }, x.counts[code]])));
    }
    return c.text(`${lines.join("\n")}\n`, 200, { "Content-Type": "text/plain; version=0.0.4" });
  });

  app.notFound((c) => c.json({ error: { code: "NOT_FOUND", message: `No route for ${c.req.method} ${c.req.path}.` } }, 404));
  return app;
}
