/**
 * Approvals: hold a command the policy marked `approval.required` until
 * people decide, it times out, or the client withdraws it.
 *
 * `hold()` is what the guard calls: it creates the request in the store,
 * records it (durably) in the audit log, tells the client where to approve
 * (through the protocol's callback) and the webhooks, then waits. The
 * decision arrives through the store (from this gateway's admin API, or
 * another gateway sharing a PostgreSQL store). The holding gateway records
 * how the request ended; the gateway that took a vote records the vote.
 */
import { randomBytes } from "node:crypto";
import { AgateError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import { maskText, SECRET_DETECTORS } from "../mask/index.ts";
import type { ApprovalGate, InputApproval } from "../core/guard.ts";
import type { Command, Decision, Identity, Session, SqlStatement } from "../core/types.ts";
import type { ApprovalRequest, ApprovalStore, Approver, Grant, Vote } from "./types.ts";

export type { ApprovalRequest, ApprovalStore, Grant, Vote } from "./types.ts";

export interface Webhook {
  url: string;
  /** slack: an incoming-webhook message ({text}); json: the request and links. */
  format: "slack" | "json";
}

export interface ApprovalsOptions {
  store: ApprovalStore;
  /** Names this gateway in requests it holds; unique among gateways sharing a store. */
  gateway: string;
  /** Base URL of the admin API, for links to approve (notices, webhooks). */
  publicUrl: () => string | undefined;
  /** Used when the policy gives no timeout. */
  defaultTimeoutS: number;
  webhooks: Webhook[];
  /** Records in the audit log: `durable` waits for fdatasync. */
  record: (fields: Record<string, unknown>, durable: boolean) => Promise<unknown> | void;
  log: Logger;
}

export type HoldOutcome = { status: "approved"; request: ApprovalRequest; approval: InputApproval } | { status: "denied" | "expired" | "withdrawn"; request: ApprovalRequest };

const WEBHOOK_TIMEOUT_MS = 5000;

/**
 * Credentials are redacted from a request's text before it is stored, shown
 * to approvers or posted to a webhook (a chat channel is no place for a
 * password in an ALTER ROLE). Personal data is the policy's to mask (issue 5).
 */

/**
 * The planner's estimates of a command's writes, for people: "DELETE:
 * estimated 52,000 rows (planner)", one part per write statement ("statement
 * 2, UPDATE: …" when there are several statements); undefined when nothing
 * was estimated.
 */
export function describeEstimates(statements: readonly SqlStatement[]): string | undefined {
  const parts: string[] = [];
  statements.forEach((s, i) => {
    if (s.estimated_rows === undefined) return;
    const which = statements.length > 1 ? `statement ${i + 1}, ${s.tag}` : s.tag;
    const rows = s.estimated_rows;
    parts.push(`${which}: ${rows === null ? "no estimate could be made" : `estimated ${rows.toLocaleString("en-US")} ${rows === 1 ? "row" : "rows"} (planner)`}`);
  });
  return parts.length > 0 ? parts.join("; ") : undefined;
}

export class Approvals implements ApprovalGate {
  readonly #o: ApprovalsOptions;
  /** The abort of each session's held command, to withdraw it on cancel. */
  readonly #held = new Map<string, AbortController>();
  readonly #holding = new Set<Promise<unknown>>();

  constructor(o: ApprovalsOptions) {
    this.#o = o;
  }

  get store(): ApprovalStore {
    return this.#o.store;
  }

  /**
   * End requests this gateway held before it (re)started: their clients'
   * connections are gone, so they can never be released.
   */
  async start(): Promise<void> {
    for (const r of await this.#o.store.list({ status: "pending" })) {
      if (r.gateway !== this.#o.gateway) continue;
      const ended = await this.#o.store.finish(r.id, "expired", "the gateway restarted; the client's connection was lost");
      if (ended) await this.#decided(ended);
    }
  }

  /** Link to a request for people (admin API). */
  link(id: string): string | undefined {
    const base = this.#o.publicUrl();
    return base ? `${base.replace(/\/$/, "")}/v1/approvals/${id}` : undefined;
  }

  /** Active grants for the policy input: this identity on this connection. */
  grants(identity: Identity, connection: string): Grant[] {
    return this.#o.store.activeGrants(identity.subject, identity.issuer, connection, Date.now());
  }

  /** Hold `command` until it is decided, times out, or is withdrawn. */
  hold(session: Session, command: Command, decision: Decision, onHold?: (req: ApprovalRequest, link?: string) => void): Promise<HoldOutcome> {
    const p = this.#hold(session, command, decision, onHold);
    this.#holding.add(p);
    p.finally(() => this.#holding.delete(p)).catch(() => {});
    return p;
  }

  /** Shutting down: end every held command (expired, "the gateway is shutting down") and wait for them. */
  async close(): Promise<void> {
    for (const c of this.#held.values()) c.abort("shutdown");
    await Promise.allSettled([...this.#holding]);
  }

  async #hold(session: Session, command: Command, decision: Decision, onHold?: (req: ApprovalRequest, link?: string) => void): Promise<HoldOutcome> {
    const now = Date.now();
    const timeoutS = decision.approval.timeout_s > 0 ? decision.approval.timeout_s : this.#o.defaultTimeoutS;
    const req: ApprovalRequest = {
      id: `apr_${randomBytes(15).toString("base64url")}`,
      created_at: new Date(now).toISOString(),
      expires_at: new Date(now + timeoutS * 1000).toISOString(),
      status: "pending",
      gateway: this.#o.gateway,
      session: session.id,
      requester: session.identity,
      connection: session.connection,
      command: { text: maskText(command.text, SECRET_DETECTORS, { kind: "redact" }).text, ...(command.sql ? { facts: command.sql.statements.map((s) => ({ kind: s.kind, tag: s.tag, writes: s.writes, has_where: s.has_where, ...(s.estimated_rows !== undefined ? { estimated_rows: s.estimated_rows } : {}) })) } : {}) },
      reasons: decision.reasons,
      ...(command.sql && describeEstimates(command.sql.statements) ? { estimate: describeEstimates(command.sql.statements) } : {}),
      approvers: decision.approval.approvers,
      min_approvers: Math.max(1, decision.approval.min_approvers ?? 1),
      votes: [],
    };
    // Registered first, so a cancel that comes while the request is being stored is not lost.
    const abort = new AbortController();
    this.#held.set(session.id, abort);
    try {
      await this.#o.store.create(req);
    } catch (e) {
      this.#held.delete(session.id);
      throw e;
    }
    try {
      await this.#o.record(
        {
          type: "approval_requested",
          request: req.id,
          session: session.id,
          identity: session.identity,
          seq: command.seq,
          text: req.command.text,
          reasons: req.reasons,
          ...(req.estimate ? { estimate: req.estimate } : {}),
          approvers: req.approvers,
          min_approvers: req.min_approvers,
          expires_at: req.expires_at,
        },
        true,
      );
    } catch (e) {
      // The request could not be recorded: the command is refused (fail closed), and nobody may approve it.
      this.#held.delete(session.id);
      await this.#o.store.finish(req.id, "expired", "the audit log could not record the request").catch(() => {});
      throw e;
    }
    const link = this.link(req.id);
    onHold?.(req, link);
    this.#post("requested", req, link);

    const timer = setTimeout(() => abort.abort("timeout"), timeoutS * 1000);
    let ended: ApprovalRequest;
    try {
      ended = await this.#o.store.waitDecided(req.id, abort.signal);
    } catch {
      // Timed out or withdrawn: end it, unless a decision got there first.
      const reason = abort.signal.reason;
      const why =
        reason === "timeout"
          ? `timed out: no decision within ${timeoutS} s`
          : reason === "shutdown"
            ? "the gateway is shutting down"
            : reason === "disconnected"
              ? "the client's connection closed"
              : "the client withdrew it (cancelled)";
      const withdrawn = reason === "withdrawn" || reason === "disconnected";
      ended = (await this.#o.store.finish(req.id, withdrawn ? "withdrawn" : "expired", why)) ?? { ...req, status: withdrawn ? "withdrawn" : "expired", decided_reason: why };
    } finally {
      clearTimeout(timer);
      if (this.#held.get(session.id) === abort) this.#held.delete(session.id);
    }
    await this.#decided(ended);
    if (ended.status === "approved") {
      const approves = ended.votes.filter((v) => v.decision === "approve");
      return {
        status: "approved",
        request: ended,
        approval: { request: ended.id, at: ended.decided_at!, granted_by: approves.map((v) => ({ subject: v.by.subject, issuer: v.by.issuer, at: v.at, reason: v.reason })) },
      };
    }
    return { status: ended.status === "pending" ? "expired" : (ended.status as "denied" | "expired" | "withdrawn"), request: ended };
  }

  /** The client cancelled (or its connection closed): withdraw the command this session is holding, if any. */
  withdraw(sessionId: string, why: "cancelled" | "disconnected" = "cancelled"): boolean {
    const held = this.#held.get(sessionId);
    if (!held) return false;
    held.abort(why === "disconnected" ? "disconnected" : "withdrawn");
    return true;
  }

  /** An approver votes (admin API). Records the vote; the holder records the end. */
  async vote(id: string, by: Identity, decision: "approve" | "deny", reason: string, grantMinutes?: number): Promise<ApprovalRequest> {
    if (!reason.trim()) throw new AgateError("APPROVAL_NO_REASON", "a decision needs a reason");
    const approver: Approver = { subject: by.subject, issuer: by.issuer, groups: by.groups, kind: by.kind };
    const vote: Vote = { by: approver, at: new Date().toISOString(), decision, reason, ...(grantMinutes !== undefined ? { grant_minutes: grantMinutes } : {}) };
    const after = await this.#o.store.vote(id, vote);
    await this.#o.record({ type: "approval_vote", request: id, identity: by, decision, reason, ...(grantMinutes !== undefined ? { grant_minutes: grantMinutes } : {}), status: after.status }, true);
    return after;
  }

  async #decided(r: ApprovalRequest): Promise<void> {
    await this.#o.record(
      {
        type: "approval_decided",
        request: r.id,
        session: r.session,
        identity: r.requester,
        status: r.status,
        reason: r.decided_reason ?? "",
        votes: r.votes.map((v) => ({ by: v.by.subject, issuer: v.by.issuer, decision: v.decision, at: v.at, reason: v.reason, ...(v.grant_minutes ? { grant_minutes: v.grant_minutes } : {}) })),
      },
      true,
    );
    this.#post("decided", r, this.link(r.id));
  }

  /** Fire-and-forget webhook posts; failures are logged, never block the command. */
  #post(event: "requested" | "decided", r: ApprovalRequest, link?: string): void {
    for (const w of this.#o.webhooks) {
      if (w.format === "slack" && event === "decided") continue;
      const body =
        w.format === "slack"
          ? {
              text:
                `*${r.requester.subject}* asks to run on *${r.connection.name}*:\n\`\`\`${r.command.text.slice(0, 2000)}\`\`\`\n` +
                `Why: ${r.reasons.join("; ") || "policy"}\n${r.estimate ? `Estimate: ${r.estimate}\n` : ""}Approvers: ${r.approvers.join(", ")} (${r.min_approvers} needed), until ${r.expires_at}\n` +
                (link ? `<${link}|Review request ${r.id}>` : `Request ${r.id}: agate approvals approve ${r.id} --reason …`),
            }
          : { event: `approval.${event}`, request: r, ...(link ? { link, approve: `${link}/approve`, deny: `${link}/deny` } : {}) };
      fetch(w.url, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body), signal: AbortSignal.timeout(WEBHOOK_TIMEOUT_MS) })
        .then((res) => {
          if (!res.ok) this.#o.log("warn", "approval webhook refused", { url: w.url, status: res.status, request: r.id });
        })
        .catch((e: Error) => this.#o.log("warn", "approval webhook failed", { url: w.url, error: e.message, request: r.id }));
    }
  }
}
