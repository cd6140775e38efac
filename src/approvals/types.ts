/**
 * Just-in-time approvals: the shapes every store shares, and the rules of a
 * vote, written once (applyVote) so that every store enforces the same ones
 * inside its own transaction.
 */
import { AgateError } from "../core/errors.ts";
import type { Identity } from "../core/types.ts";

export type ApprovalStatus = "pending" | "approved" | "denied" | "expired" | "withdrawn";

/** Who voted: enough of an identity to check the rules and to record. */
export interface Approver {
  subject: string;
  issuer: string;
  groups: string[];
  kind: Identity["kind"];
}

export interface Vote {
  by: Approver;
  at: string;
  decision: "approve" | "deny";
  reason: string;
  /** With an approval: also let this identity's later commands on this connection through for this long (a grant). */
  grant_minutes?: number;
}

export interface ApprovalRequest {
  /** "apr_" + 20 random characters. */
  id: string;
  created_at: string;
  expires_at: string;
  status: ApprovalStatus;
  /** The gateway that holds the command (for several gateways sharing a store). */
  gateway: string;
  session: string;
  requester: Identity;
  connection: { name: string; protocol: string; target: string };
  command: { text: string; facts?: unknown };
  /** The policy's reasons for asking. */
  reasons: string[];
  /** For people: what the target's planner estimated the command's writes touch, e.g. "DELETE: estimated 52,000 rows (planner)". */
  estimate?: string;
  /** Groups whose members may decide. */
  approvers: string[];
  /** Distinct approvals needed. */
  min_approvers: number;
  votes: Vote[];
  decided_at?: string;
  /** Why it ended: the deciding vote's reason, "timed out", "the client withdrew it". */
  decided_reason?: string;
}

/** A time-boxed permission an approval left behind: the policy sees active ones as input.grants. */
export interface Grant {
  id: string;
  request: string;
  subject: string;
  issuer: string;
  connection: string;
  granted_by: string[];
  created_at: string;
  expires_at: string;
  reason: string;
}

export interface ApprovalStore {
  create(req: ApprovalRequest): Promise<void>;
  get(id: string): Promise<ApprovalRequest | null>;
  list(filter?: { status?: ApprovalStatus }): Promise<ApprovalRequest[]>;
  /**
   * Apply a vote atomically with applyVote's rules; if it approves a request
   * with grant_minutes, store the grant in the same transaction. Returns the
   * request after the vote. Throws APPROVAL_* errors from applyVote.
   */
  vote(id: string, vote: Vote): Promise<ApprovalRequest>;
  /** End a pending request (expired, withdrawn); a decided one is returned as it is. */
  finish(id: string, status: "expired" | "withdrawn", reason: string): Promise<ApprovalRequest | null>;
  /** Resolves with the request once it is no longer pending (as seen by this store), or rejects when `signal` aborts. */
  waitDecided(id: string, signal: AbortSignal): Promise<ApprovalRequest>;
  /** Active grants for this identity and connection, from memory: called on every command. */
  activeGrants(subject: string, issuer: string, connection: string, now: number): Grant[];
  close(): Promise<void>;
}

/**
 * The rules of a vote. Returns the request after `vote`, or throws:
 * APPROVAL_NOT_PENDING (already decided or expired), APPROVAL_NOT_APPROVER
 * (not in a named group), APPROVAL_SELF (the requester), APPROVAL_REPEAT
 * (already voted). A deny ends the request; approvals end it once
 * `min_approvers` distinct approvers agreed.
 */
export function applyVote(req: ApprovalRequest, vote: Vote, now: number): ApprovalRequest {
  if (req.status !== "pending") {
    throw new AgateError("APPROVAL_NOT_PENDING", `request ${req.id} is ${req.status}${req.decided_reason ? ` (${req.decided_reason})` : ""}; it can no longer be decided`);
  }
  if (Date.parse(req.expires_at) <= now) throw new AgateError("APPROVAL_NOT_PENDING", `request ${req.id} timed out at ${req.expires_at}`);
  const by = vote.by;
  if (by.subject === req.requester.subject && by.issuer === req.requester.issuer) {
    throw new AgateError("APPROVAL_SELF", `${by.subject} asked for request ${req.id} and cannot decide it`);
  }
  if (!by.groups.some((g) => req.approvers.includes(g))) {
    throw new AgateError("APPROVAL_NOT_APPROVER", `${by.subject} is not in an approver group of request ${req.id} (${req.approvers.join(", ") || "none named"})`);
  }
  if (req.votes.some((v) => v.by.subject === by.subject && v.by.issuer === by.issuer)) {
    throw new AgateError("APPROVAL_REPEAT", `${by.subject} has already voted on request ${req.id}; another approver is needed`);
  }
  if (vote.grant_minutes !== undefined && !(Number.isFinite(vote.grant_minutes) && vote.grant_minutes > 0 && vote.grant_minutes <= 24 * 60)) {
    throw new AgateError("APPROVAL_BAD_GRANT", `a grant is 1 to 1440 minutes; got ${vote.grant_minutes}`);
  }
  const votes = [...req.votes, vote];
  const next: ApprovalRequest = { ...req, votes };
  if (vote.decision === "deny") {
    return { ...next, status: "denied", decided_at: vote.at, decided_reason: `denied by ${by.subject}: ${vote.reason}` };
  }
  const approvals = votes.filter((v) => v.decision === "approve").length;
  if (approvals >= req.min_approvers) {
    const names = votes.filter((v) => v.decision === "approve").map((v) => v.by.subject);
    return { ...next, status: "approved", decided_at: vote.at, decided_reason: `approved by ${names.join(" and ")}: ${vote.reason}` };
  }
  return next;
}

/** The grant an approving vote leaves, if it asked for one and the request is now approved. */
export function grantOf(req: ApprovalRequest, vote: Vote): Grant | null {
  if (req.status !== "approved" || vote.grant_minutes === undefined) return null;
  const at = Date.parse(vote.at);
  return {
    id: `grt_${req.id.slice(4)}`,
    request: req.id,
    subject: req.requester.subject,
    issuer: req.requester.issuer,
    connection: req.connection.name,
    granted_by: req.votes.filter((v) => v.decision === "approve").map((v) => v.by.subject),
    created_at: vote.at,
    expires_at: new Date(at + vote.grant_minutes * 60_000).toISOString(),
    reason: vote.reason,
  };
}
