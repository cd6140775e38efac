/**
 * The approvals store for one gateway: a SQLite file (bun:sqlite). Requests
 * are JSON documents with their status in a column; a vote is one
 * IMMEDIATE transaction (read, applyVote, write, grant). Changes made by
 * another process (the CLI never writes here: it goes through the admin
 * API, but a second process could) are noticed through PRAGMA data_version.
 */
import type { Database } from "bun:sqlite";
import { AgateError } from "../core/errors.ts";
import { dataVersion, openSqlite } from "../store/sqlite.ts";
import { applyVote, grantOf, type ApprovalRequest, type ApprovalStatus, type ApprovalStore, type Grant, type Vote } from "./types.ts";

const SCHEMA = `
CREATE TABLE IF NOT EXISTS approvals (
  id         TEXT PRIMARY KEY,
  status     TEXT NOT NULL,
  created_at TEXT NOT NULL,
  doc        TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS approvals_status ON approvals (status);
CREATE TABLE IF NOT EXISTS grants (
  id         TEXT PRIMARY KEY,
  subject    TEXT NOT NULL,
  issuer     TEXT NOT NULL,
  connection TEXT NOT NULL,
  expires_at TEXT NOT NULL,
  doc        TEXT NOT NULL
) STRICT;`;

/** How often waiters look for decisions made by another process. */
const POLL_MS = 200;

export class SqliteApprovalStore implements ApprovalStore {
  readonly #db: Database;
  readonly #waiters = new Map<string, Set<(r: ApprovalRequest) => void>>();
  #grants: Grant[] = [];
  #version = -1;
  #timer: ReturnType<typeof setInterval>;

  constructor(path: string) {
    this.#db = openSqlite(path, SCHEMA, "approvals store", "APPROVALS_UNAVAILABLE");
    this.#reloadGrants();
    this.#timer = setInterval(() => this.#poll(), POLL_MS);
    this.#timer.unref?.();
  }

  async create(req: ApprovalRequest): Promise<void> {
    this.#db.query("INSERT INTO approvals (id, status, created_at, doc) VALUES (?, ?, ?, ?)").run(req.id, req.status, req.created_at, JSON.stringify(req));
  }

  async get(id: string): Promise<ApprovalRequest | null> {
    const row = this.#db.query("SELECT doc FROM approvals WHERE id = ?").get(id) as { doc: string } | null;
    return row ? (JSON.parse(row.doc) as ApprovalRequest) : null;
  }

  async list(filter: { status?: ApprovalStatus } = {}): Promise<ApprovalRequest[]> {
    const rows = (filter.status ? this.#db.query("SELECT doc FROM approvals WHERE status = ? ORDER BY created_at").all(filter.status) : this.#db.query("SELECT doc FROM approvals ORDER BY created_at").all()) as { doc: string }[];
    return rows.map((r) => JSON.parse(r.doc) as ApprovalRequest);
  }

  async vote(id: string, vote: Vote): Promise<ApprovalRequest> {
    const next = this.#db.transaction(() => {
      const req = this.#getSync(id);
      const after = applyVote(req, vote, Date.now());
      this.#put(after);
      const grant = grantOf(after, vote);
      if (grant) {
        this.#db.query("INSERT INTO grants (id, subject, issuer, connection, expires_at, doc) VALUES (?, ?, ?, ?, ?, ?)").run(grant.id, grant.subject, grant.issuer, grant.connection, grant.expires_at, JSON.stringify(grant));
      }
      return after;
    }).immediate();
    this.#reloadGrants();
    this.#wake(next);
    return next;
  }

  async finish(id: string, status: "expired" | "withdrawn", reason: string): Promise<ApprovalRequest | null> {
    const next = this.#db.transaction(() => {
      const row = this.#db.query("SELECT doc FROM approvals WHERE id = ?").get(id) as { doc: string } | null;
      if (!row) return null;
      const req = JSON.parse(row.doc) as ApprovalRequest;
      if (req.status !== "pending") return req;
      const after: ApprovalRequest = { ...req, status, decided_at: new Date().toISOString(), decided_reason: reason };
      this.#put(after);
      return after;
    }).immediate();
    if (next) this.#wake(next);
    return next;
  }

  waitDecided(id: string, signal: AbortSignal): Promise<ApprovalRequest> {
    return new Promise((resolve, reject) => {
      const done = (r: ApprovalRequest) => {
        this.#waiters.get(id)?.delete(done);
        signal.removeEventListener("abort", onAbort);
        resolve(r);
      };
      const onAbort = () => {
        this.#waiters.get(id)?.delete(done);
        reject(signal.reason);
      };
      if (signal.aborted) return onAbort();
      signal.addEventListener("abort", onAbort, { once: true });
      let set = this.#waiters.get(id);
      if (!set) this.#waiters.set(id, (set = new Set()));
      set.add(done);
      const now = this.#getSync(id);
      if (now.status !== "pending") done(now);
    });
  }

  activeGrants(subject: string, issuer: string, connection: string, now: number): Grant[] {
    if (this.#grants.length === 0) return [];
    return this.#grants.filter((g) => g.subject === subject && g.issuer === issuer && g.connection === connection && Date.parse(g.expires_at) > now);
  }

  async close(): Promise<void> {
    clearInterval(this.#timer);
    this.#db.close();
  }

  #getSync(id: string): ApprovalRequest {
    const row = this.#db.query("SELECT doc FROM approvals WHERE id = ?").get(id) as { doc: string } | null;
    if (!row) throw new AgateError("APPROVAL_NOT_FOUND", `no approval request ${id}`);
    return JSON.parse(row.doc) as ApprovalRequest;
  }

  #put(req: ApprovalRequest): void {
    this.#db.query("UPDATE approvals SET status = ?, doc = ? WHERE id = ?").run(req.status, JSON.stringify(req), req.id);
  }

  /** Release the request's waiters on the next turn, after the caller of vote() has recorded the vote. */
  #wake(req: ApprovalRequest): void {
    if (req.status === "pending") return;
    const waiters = [...(this.#waiters.get(req.id) ?? [])];
    if (waiters.length) setImmediate(() => waiters.forEach((w) => w(req)));
  }

  #reloadGrants(): void {
    const now = new Date().toISOString();
    this.#grants = (this.#db.query("SELECT doc FROM grants WHERE expires_at > ?").all(now) as { doc: string }[]).map((r) => JSON.parse(r.doc) as Grant);
    this.#version = dataVersion(this.#db);
  }

  /** Another process changed the file: reload grants and wake waiters whose request was decided. */
  #poll(): void {
    const v = dataVersion(this.#db);
    if (v === this.#version) return;
    this.#reloadGrants();
    for (const id of this.#waiters.keys()) {
      const r = this.#db.query("SELECT doc FROM approvals WHERE id = ?").get(id) as { doc: string } | null;
      if (r) this.#wake(JSON.parse(r.doc) as ApprovalRequest);
    }
  }
}
