/**
 * Service accounts managed at run time (`agate accounts create|list|revoke`),
 * in a SQLite file (bun:sqlite). A key is shown once at creation; the store
 * keeps its SHA-256 only.
 *
 * A running gateway reads the file and notices changes made by another
 * process (PRAGMA data_version), at most every REFRESH_MS, so a revocation
 * reaches open sessions before their next command.
 *
 * The same file keeps the user names locked after repeated failed logins
 * (core/lockout.ts), so a lock survives a restart; `agate accounts unlock`
 * lifts one. A locked name need not be an account here (an API key of the
 * configuration, an OIDC user, or no one at all).
 *
 * The CLI cannot write the audit log (the gateway is its only writer), so
 * an unlock leaves an event in `account_events`, in the same transaction
 * as the lock's removal; a gateway records each event (pendingEvents) and
 * then deletes it (eventsRecorded): at least once, and an unlock made while
 * no gateway ran is recorded when one starts.
 */
import type { Database } from "bun:sqlite";
import { AgateError, asError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import { dataVersion, openSqlite } from "../store/sqlite.ts";
import { createApiKey, type ApiKeyAccount } from "./apikey.ts";

export interface StoredAccount extends ApiKeyAccount {
  owner?: string;
  created_at: string;
  revoked_at?: string;
}

/** How often a gateway looks for changes another process made. */
const REFRESH_MS = 100;
/** How often a gateway looks for events to record. */
const EVENTS_MS = 1000;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS accounts (
  id         TEXT PRIMARY KEY,
  subject    TEXT,
  owner      TEXT,
  groups     TEXT NOT NULL,          -- JSON array of strings
  kind       TEXT NOT NULL CHECK (kind IN ('human', 'service', 'agent')),
  sha256     TEXT NOT NULL UNIQUE,   -- of the key; the key itself is never stored
  created_at TEXT NOT NULL,
  expires_at TEXT,
  revoked_at TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS locked_users (
  user       TEXT PRIMARY KEY,       -- the user name as clients gave it
  locked_at  TEXT NOT NULL,
  failures   INTEGER NOT NULL        -- failed logins in the window that locked it
) STRICT;
CREATE TABLE IF NOT EXISTS account_events (
  seq        INTEGER PRIMARY KEY AUTOINCREMENT,
  at         TEXT NOT NULL,
  event      TEXT NOT NULL           -- JSON: the audit record's fields, {action: "user_unlocked", ...}
) STRICT;`;

interface Row {
  id: string;
  subject: string | null;
  owner: string | null;
  groups: string;
  kind: ApiKeyAccount["kind"];
  sha256: string;
  created_at: string;
  expires_at: string | null;
  revoked_at: string | null;
}

export interface LockedUser {
  user: string;
  locked_at: string;
  failures: number;
}

/** An operator's change to the store, for the audit log: `at` when it was made. */
export interface AccountEvent {
  seq: number;
  at: string;
  fields: { action: "user_unlocked"; user: string; by: string; locked_at: string; failures: number };
}

export class AccountStore {
  readonly #db: Database;
  #version = -1;
  #checkedAt = 0;
  #byHash = new Map<string, StoredAccount>();
  #byId = new Map<string, StoredAccount>();
  #locked = new Map<string, LockedUser>();

  /** Open (creating, mode 0600) the store at `path`. */
  constructor(readonly path: string) {
    this.#db = openSqlite(path, SCHEMA, "accounts store", "ACCOUNTS_UNAVAILABLE");
    this.#load();
  }

  /** Create an account; returns the key (shown once). */
  create(a: { id: string; subject?: string; owner?: string; groups: string[]; kind: ApiKeyAccount["kind"]; expires_at?: string }): { key: string; account: StoredAccount } {
    if (!/^[A-Za-z0-9._@-]{1,128}$/.test(a.id)) throw new AgateError("USAGE", `account id "${a.id}" must be 1-128 letters, digits, or . _ @ -`);
    if (a.expires_at !== undefined && Number.isNaN(Date.parse(a.expires_at))) throw new AgateError("USAGE", `--expires ${a.expires_at} is not a date (use RFC 3339, e.g. 2027-01-01T00:00:00Z)`);
    const { key, sha256 } = createApiKey();
    const created_at = new Date().toISOString();
    try {
      this.#db
        .query("INSERT INTO accounts (id, subject, owner, groups, kind, sha256, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
        .run(a.id, a.subject ?? null, a.owner ?? null, JSON.stringify(a.groups), a.kind, sha256, created_at, a.expires_at ? new Date(a.expires_at).toISOString() : null);
    } catch (e) {
      if (/UNIQUE|PRIMARY KEY/.test((e as Error).message)) throw new AgateError("ACCOUNT_EXISTS", `an account "${a.id}" already exists (revoked accounts keep their id)`);
      throw e;
    }
    this.#load();
    return { key, account: this.#byId.get(a.id)! };
  }

  /** Revoke an account's key now. Returns false if there is no such account or it was revoked already. */
  revoke(id: string): boolean {
    const r = this.#db.query("UPDATE accounts SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL").run(new Date().toISOString(), id);
    this.#load();
    return r.changes > 0;
  }

  /** Lock logins as `user` (after repeated failures); a lock already there is kept as it is. */
  lockUser(user: string, failures: number): void {
    this.#db.query("INSERT INTO locked_users (user, locked_at, failures) VALUES (?, ?, ?) ON CONFLICT (user) DO NOTHING").run(user, new Date().toISOString(), failures);
    this.#load();
  }

  /** Lift the lock on `user`, by operator `by`, leaving an event for the audit log. Returns false if it was not locked. */
  unlockUser(user: string, by: string): boolean {
    const unlocked = this.#db.transaction(() => {
      const lock = this.#db.query("SELECT locked_at, failures FROM locked_users WHERE user = ?").get(user) as { locked_at: string; failures: number } | null;
      if (!lock) return false;
      this.#db.query("DELETE FROM locked_users WHERE user = ?").run(user);
      const event: AccountEvent["fields"] = { action: "user_unlocked", user, by, locked_at: lock.locked_at, failures: lock.failures };
      this.#db.query("INSERT INTO account_events (at, event) VALUES (?, ?)").run(new Date().toISOString(), JSON.stringify(event));
      return true;
    })();
    this.#load();
    return unlocked;
  }

  /** Events not yet recorded in the audit log, oldest first. */
  pendingEvents(): AccountEvent[] {
    return (this.#db.query("SELECT seq, at, event FROM account_events ORDER BY seq").all() as { seq: number; at: string; event: string }[]).map((r) => ({ seq: r.seq, at: r.at, fields: JSON.parse(r.event) as AccountEvent["fields"] }));
  }

  /** The events up to `seq` are durable in the audit log. */
  eventsRecorded(seq: number): void {
    this.#db.query("DELETE FROM account_events WHERE seq <= ?").run(seq);
  }

  /** When `user` was locked, or undefined (another process's unlock is seen within REFRESH_MS). */
  lockedAt(user: string): string | undefined {
    this.refresh();
    return this.#locked.get(user)?.locked_at;
  }

  lockedUsers(): LockedUser[] {
    this.refresh(true);
    return [...this.#locked.values()].sort((a, b) => a.user.localeCompare(b.user));
  }

  lockedCount(): number {
    this.refresh();
    return this.#locked.size;
  }

  list(): StoredAccount[] {
    this.refresh(true);
    return [...this.#byId.values()].sort((a, b) => a.id.localeCompare(b.id));
  }

  /** The account with this key hash (revoked ones included: the caller says why it refuses). */
  byHash(sha256: string): StoredAccount | undefined {
    this.refresh();
    return this.#byHash.get(sha256);
  }

  byId(id: string): StoredAccount | undefined {
    this.refresh();
    return this.#byId.get(id);
  }

  /** Reload if another process changed the file (checked at most every REFRESH_MS unless forced). */
  refresh(force = false): void {
    const now = performance.now();
    if (!force && now - this.#checkedAt < REFRESH_MS) return;
    this.#checkedAt = now;
    const v = dataVersion(this.#db);
    if (v !== this.#version) this.#load();
  }

  #load(): void {
    this.#version = dataVersion(this.#db);
    const byHash = new Map<string, StoredAccount>();
    const byId = new Map<string, StoredAccount>();
    for (const r of this.#db.query("SELECT * FROM accounts").all() as Row[]) {
      const a: StoredAccount = {
        id: r.id,
        ...(r.subject ? { subject: r.subject } : {}),
        ...(r.owner ? { owner: r.owner } : {}),
        groups: JSON.parse(r.groups) as string[],
        kind: r.kind,
        sha256: r.sha256,
        created_at: r.created_at,
        ...(r.expires_at ? { expires_at: r.expires_at } : {}),
        ...(r.revoked_at ? { revoked_at: r.revoked_at } : {}),
      };
      byHash.set(a.sha256, a);
      byId.set(a.id, a);
    }
    this.#byHash = byHash;
    this.#byId = byId;
    this.#locked = new Map((this.#db.query("SELECT user, locked_at, failures FROM locked_users").all() as LockedUser[]).map((l) => [l.user, l]));
  }

  close(): void {
    this.#db.close();
  }
}

/**
 * Record the store's events in the audit log, as `{type: "lockout", action,
 * …, at}`, now and every EVENTS_MS: each is deleted once its record is
 * durable (`append` resolves). close() records what is left.
 */
export function recordAccountEvents(store: AccountStore, append: (fields: Record<string, unknown>) => Promise<number>, log: Logger): { close(): Promise<void> } {
  let running: Promise<void> | undefined;
  const once = async () => {
    try {
      for (const e of store.pendingEvents()) {
        await append({ type: "lockout", ...e.fields, at: e.at });
        store.eventsRecorded(e.seq);
      }
    } catch (err) {
      log("error", "accounts store events not recorded yet; retrying", { error: asError(err).message });
    }
  };
  // One drain at a time; a tick during one is skipped.
  const drain = () => {
    if (!running) running = once().finally(() => (running = undefined));
    return running;
  };
  void drain();
  const timer = setInterval(drain, EVENTS_MS);
  timer.unref();
  return {
    async close() {
      clearInterval(timer);
      await running;
      await drain();
    },
  };
}
