/**
 * The approvals store for several gateways sharing one PostgreSQL database
 * (porsager's `postgres`). Requests are JSON documents (jsonb) with their
 * status in a column; a vote is one transaction (SELECT … FOR UPDATE,
 * applyVote, UPDATE, grant INSERT, pg_notify), so two gateways voting on the
 * same request at once are serialised by the row lock and both votes count.
 *
 * Every change (create, vote, finish) ends with pg_notify('agate_approvals',
 * '<id>') inside its transaction, so it is sent at commit. Each store LISTENs
 * on one connection: a notification reloads the grant cache (activeGrants is
 * synchronous, called on every command) and re-reads the request if this
 * store has someone waiting on it. When the LISTEN connection drops, porsager
 * reconnects it and calls onlisten again; we then re-read everything, since
 * notifications sent while it was down are lost. A slow resync
 * (RESYNC_MS) covers anything else that could go missing.
 */
import postgres from "postgres";
import { AgateError } from "../core/errors.ts";
import { applyVote, grantOf, type ApprovalRequest, type ApprovalStatus, type ApprovalStore, type Grant, type Vote } from "./types.ts";

/** The channel every gateway sharing the database listens on; the payload is the request id. */
export const CHANNEL = "agate_approvals";

/** Re-read grants and waited-on requests this often even without notifications (a safety net). */
const RESYNC_MS = 30_000;

/** The schema name: a plain lower-case identifier, so it means the same quoted or not. */
const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;

type Sql = postgres.Sql<{}>;

export interface PgApprovalStoreOptions {
  /** Where the tables live (created if missing); default "agate". */
  schema?: string;
}

export class PgApprovalStore implements ApprovalStore {
  readonly #sql: Sql;
  /** postgres://user@host:port/database: where, for messages (never the password). */
  readonly #where: string;
  readonly #approvals: postgres.Helper<string>;
  readonly #grantsTable: postgres.Helper<string>;
  readonly #waiters = new Map<string, Set<(r: ApprovalRequest) => void>>();
  readonly #failWaiters = new Map<(r: ApprovalRequest) => void, (e: Error) => void>();
  #grants: Grant[] = [];
  /** Grants this store wrote, with the sequence number of the write: kept until a reload that started after it. */
  readonly #recentGrants = new Map<string, { seq: number; grant: Grant }>();
  #seq = 0;
  #listener: postgres.ListenMeta | null = null;
  #timer: ReturnType<typeof setInterval> | null = null;
  #closed = false;
  /** Refresh work: reload grants, re-read these waited-on ids. */
  #dirtyGrants = false;
  readonly #dirtyIds = new Set<string>();
  #refreshing: Promise<void> | null = null;

  private constructor(sql: Sql, schema: string, where: string) {
    this.#sql = sql;
    this.#where = where;
    this.#approvals = sql(`${schema}.approvals`);
    this.#grantsTable = sql(`${schema}.grants`);
  }

  /**
   * Connect, create the schema and tables if missing (serialised across
   * gateways by an advisory lock), LISTEN, and load the active grants.
   */
  static async open(url: string, opts: PgApprovalStoreOptions = {}): Promise<PgApprovalStore> {
    const schema = opts.schema ?? "agate";
    if (!SCHEMA_NAME.test(schema)) {
      throw new AgateError("CONFIG_INVALID", `The approvals schema must be a lower-case identifier (letters, digits, _); got ${JSON.stringify(schema)}`, { schema });
    }
    let sql: Sql;
    try {
      sql = postgres(url, {
        max: 4,
        idle_timeout: 60,
        connect_timeout: 10,
        onnotice: () => {},
        connection: { application_name: "agate-approvals" },
      });
    } catch (e) {
      // Never echo the URL: it may carry a password.
      throw new AgateError("APPROVALS_UNAVAILABLE", `The approvals store URL is not a usable postgres:// URL (${(e as Error).message})`);
    }
    const o = sql.options;
    const where = `postgres://${o.user}@${o.host.map((h, i) => `${h}:${o.port[i] ?? o.port[0]}`).join(",")}/${o.database}`;
    const store = new PgApprovalStore(sql, schema, where);
    try {
      await store.#ensureSchema(schema);
      store.#listener = await sql.listen(CHANNEL, (id) => store.#notified(id), () => store.#relistened());
      await store.#reloadGrants();
    } catch (e) {
      store.#closed = true;
      await store.#listener?.unlisten().catch(() => {});
      await sql.end({ timeout: 0 }).catch(() => {});
      throw store.#unavailable(e, "opening the approvals store");
    }
    store.#timer = setInterval(() => store.#resyncAll(), RESYNC_MS);
    store.#timer.unref?.();
    return store;
  }

  async create(req: ApprovalRequest): Promise<void> {
    try {
      await this.#sql`
        WITH ins AS (
          INSERT INTO ${this.#approvals} (id, status, created_at, doc)
          VALUES (${req.id}, ${req.status}, ${req.created_at}, ${this.#json(req)})
          RETURNING id
        )
        SELECT pg_notify(${CHANNEL}, id) FROM ins`;
    } catch (e) {
      throw this.#unavailable(e, `storing approval request ${req.id}`);
    }
  }

  async get(id: string): Promise<ApprovalRequest | null> {
    try {
      return await this.#read(id);
    } catch (e) {
      throw this.#unavailable(e, `reading approval request ${id}`);
    }
  }

  async list(filter: { status?: ApprovalStatus } = {}): Promise<ApprovalRequest[]> {
    try {
      const rows = filter.status
        ? await this.#sql<{ doc: ApprovalRequest }[]>`SELECT doc FROM ${this.#approvals} WHERE status = ${filter.status} ORDER BY created_at, id`
        : await this.#sql<{ doc: ApprovalRequest }[]>`SELECT doc FROM ${this.#approvals} ORDER BY created_at, id`;
      return rows.map((r) => r.doc);
    } catch (e) {
      throw this.#unavailable(e, "listing approval requests");
    }
  }

  async vote(id: string, vote: Vote): Promise<ApprovalRequest> {
    let result: { after: ApprovalRequest; grant: Grant | null };
    try {
      result = await this.#sql.begin(async (tx) => {
        const [row] = await tx<{ doc: ApprovalRequest }[]>`SELECT doc FROM ${this.#approvals} WHERE id = ${id} FOR UPDATE`;
        if (!row) throw new AgateError("APPROVAL_NOT_FOUND", `no approval request ${id}`);
        const after = applyVote(row.doc, vote, Date.now());
        await tx`UPDATE ${this.#approvals} SET status = ${after.status}, doc = ${this.#json(after)} WHERE id = ${id}`;
        const grant = grantOf(after, vote);
        if (grant) {
          await tx`
            INSERT INTO ${this.#grantsTable} (id, subject, issuer, connection, expires_at, doc)
            VALUES (${grant.id}, ${grant.subject}, ${grant.issuer}, ${grant.connection}, ${grant.expires_at}, ${this.#json(grant)})`;
        }
        await tx`SELECT pg_notify(${CHANNEL}, ${id})`;
        return { after, grant };
      });
    } catch (e) {
      throw this.#unavailable(e, `recording a vote on approval request ${id}`);
    }
    if (result.grant) {
      // Visible here at once; other gateways load it on the notification.
      this.#recentGrants.set(result.grant.id, { seq: ++this.#seq, grant: result.grant });
      this.#grants = [...this.#grants.filter((g) => g.id !== result.grant!.id), result.grant];
    }
    this.#wake(result.after);
    return result.after;
  }

  async finish(id: string, status: "expired" | "withdrawn", reason: string): Promise<ApprovalRequest | null> {
    let next: ApprovalRequest | null;
    try {
      next = await this.#sql.begin(async (tx) => {
        const [row] = await tx<{ doc: ApprovalRequest }[]>`SELECT doc FROM ${this.#approvals} WHERE id = ${id} FOR UPDATE`;
        if (!row) return null;
        if (row.doc.status !== "pending") return row.doc;
        const after: ApprovalRequest = { ...row.doc, status, decided_at: new Date().toISOString(), decided_reason: reason };
        const updated = await tx`UPDATE ${this.#approvals} SET status = ${status}, doc = ${this.#json(after)} WHERE id = ${id} AND status = 'pending'`;
        if (updated.count === 0) return row.doc;
        await tx`SELECT pg_notify(${CHANNEL}, ${id})`;
        return after;
      });
    } catch (e) {
      throw this.#unavailable(e, `ending approval request ${id}`);
    }
    if (next) this.#wake(next);
    return next;
  }

  waitDecided(id: string, signal: AbortSignal): Promise<ApprovalRequest> {
    return new Promise((resolve, reject) => {
      const forget = () => {
        const set = this.#waiters.get(id);
        set?.delete(done);
        if (set?.size === 0) this.#waiters.delete(id);
        this.#failWaiters.delete(done);
        signal.removeEventListener("abort", onAbort);
      };
      const done = (r: ApprovalRequest) => {
        forget();
        resolve(r);
      };
      const fail = (e: Error) => {
        forget();
        reject(e);
      };
      const onAbort = () => fail(signal.reason);
      if (signal.aborted) return reject(signal.reason);
      if (this.#closed) return reject(new AgateError("APPROVALS_UNAVAILABLE", "The approvals store is closed"));
      signal.addEventListener("abort", onAbort, { once: true });
      let set = this.#waiters.get(id);
      if (!set) this.#waiters.set(id, (set = new Set()));
      set.add(done);
      this.#failWaiters.set(done, fail);
      // A decision made before we listened for it (or before this waiter was registered).
      this.#read(id).then(
        (r) => {
          if (!r) fail(new AgateError("APPROVAL_NOT_FOUND", `no approval request ${id}`));
          else if (r.status !== "pending") done(r);
        },
        (e) => fail(this.#unavailable(e, `reading approval request ${id}`)),
      );
    });
  }

  activeGrants(subject: string, issuer: string, connection: string, now: number): Grant[] {
    if (this.#grants.length === 0) return [];
    return this.#grants.filter((g) => g.subject === subject && g.issuer === issuer && g.connection === connection && Date.parse(g.expires_at) > now);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    // Unlisten first: with no channel left, porsager does not try to LISTEN again as the connection closes.
    const listener = this.#listener;
    this.#listener = null;
    if (listener) await Promise.race([listener.unlisten().catch(() => {}), Bun.sleep(1000)]);
    const closed = new AgateError("APPROVALS_UNAVAILABLE", "The approvals store was closed while a command waited for a decision");
    for (const fail of [...this.#failWaiters.values()]) fail(closed);
    await this.#sql.end({ timeout: 5 }).catch(() => {});
  }

  // ---------------------------------------------------------------------------

  async #ensureSchema(schema: string): Promise<void> {
    const sql = this.#sql;
    const present = async (q: Sql | postgres.TransactionSql<{}>) => {
      const [r] = await q<{ ok: boolean }[]>`
        SELECT to_regclass(${`${schema}.approvals`}) IS NOT NULL
           AND to_regclass(${`${schema}.grants`}) IS NOT NULL AS ok`;
      return r?.ok === true;
    };
    // Already there: no DDL, so a role with only SELECT/INSERT/UPDATE on the tables can run the gateway.
    if (await present(sql)) return;
    await sql.begin(async (tx) => {
      // Two gateways starting at once would race on CREATE SCHEMA/TABLE IF NOT EXISTS (a unique violation in the catalog).
      await tx`SELECT pg_advisory_xact_lock(hashtext(${`agate approvals schema ${schema}`}))`;
      if (await present(tx)) return;
      const [ns] = await tx`SELECT 1 FROM pg_namespace WHERE nspname = ${schema}`;
      if (!ns) await tx`CREATE SCHEMA IF NOT EXISTS ${tx(schema)}`;
      await tx`
        CREATE TABLE IF NOT EXISTS ${this.#approvals} (
          id         text PRIMARY KEY,
          status     text NOT NULL,
          created_at timestamptz NOT NULL,
          doc        jsonb NOT NULL
        )`;
      await tx`CREATE INDEX IF NOT EXISTS approvals_status ON ${this.#approvals} (status, created_at)`;
      await tx`
        CREATE TABLE IF NOT EXISTS ${this.#grantsTable} (
          id         text PRIMARY KEY,
          subject    text NOT NULL,
          issuer     text NOT NULL,
          connection text NOT NULL,
          expires_at timestamptz NOT NULL,
          doc        jsonb NOT NULL
        )`;
      await tx`CREATE INDEX IF NOT EXISTS grants_expires ON ${this.#grantsTable} (expires_at)`;
    });
  }

  /**
   * A document for a jsonb column. Not JSON.stringify(x)::jsonb: porsager
   * serialises a parameter the server describes as jsonb with JSON.stringify
   * itself, so a string would be stored as a JSON string.
   */
  #json(doc: ApprovalRequest | Grant): postgres.Parameter {
    return this.#sql.json(doc as unknown as postgres.JSONValue);
  }

  async #read(id: string): Promise<ApprovalRequest | null> {
    const [row] = await this.#sql<{ doc: ApprovalRequest }[]>`SELECT doc FROM ${this.#approvals} WHERE id = ${id}`;
    return row ? row.doc : null;
  }

  #wake(req: ApprovalRequest): void {
    if (req.status === "pending") return;
    for (const w of [...(this.#waiters.get(req.id) ?? [])]) w(req);
  }

  /** Load unexpired grants, keeping our own writes that this read may have started too early to see. */
  async #reloadGrants(): Promise<void> {
    const seq = this.#seq;
    const rows = await this.#sql<{ doc: Grant }[]>`SELECT doc FROM ${this.#grantsTable} WHERE expires_at > ${new Date().toISOString()} ORDER BY expires_at`;
    const grants = rows.map((r) => r.doc);
    const seen = new Set(grants.map((g) => g.id));
    for (const [id, r] of this.#recentGrants) {
      if (r.seq <= seq) this.#recentGrants.delete(id);
      else if (!seen.has(id)) grants.push(r.grant);
    }
    this.#grants = grants;
  }

  /** A notification: any change may be a new grant; the id may be one we wait on. */
  #notified(id: string): void {
    if (this.#closed) return;
    this.#dirtyGrants = true;
    if (this.#waiters.has(id)) this.#dirtyIds.add(id);
    this.#kick();
  }

  /** LISTEN (re)established: notifications sent while it was down are lost, so re-read everything. */
  #relistened(): void {
    this.#resyncAll();
  }

  #resyncAll(): void {
    if (this.#closed) return;
    this.#dirtyGrants = true;
    for (const id of this.#waiters.keys()) this.#dirtyIds.add(id);
    this.#kick();
  }

  /** One refresh at a time; notifications arriving meanwhile are folded into the next round. */
  #kick(): void {
    if (this.#refreshing) return;
    this.#refreshing = this.#refresh().finally(() => {
      this.#refreshing = null;
    });
  }

  async #refresh(): Promise<void> {
    while (!this.#closed && (this.#dirtyGrants || this.#dirtyIds.size > 0)) {
      const grants = this.#dirtyGrants;
      const ids = [...this.#dirtyIds].filter((id) => this.#waiters.has(id));
      this.#dirtyGrants = false;
      this.#dirtyIds.clear();
      try {
        if (grants) await this.#reloadGrants();
        if (ids.length > 0) {
          const rows = await this.#sql<{ doc: ApprovalRequest }[]>`SELECT doc FROM ${this.#approvals} WHERE id = ANY(${ids}::text[])`;
          for (const r of rows) this.#wake(r.doc);
        }
      } catch {
        // The database is unreachable: leave the work for the next notification,
        // the onlisten after porsager reconnects, or the resync timer.
        if (grants) this.#dirtyGrants = true;
        for (const id of ids) this.#dirtyIds.add(id);
        return;
      }
    }
  }

  /** Anything the database threw, as an AgateError; AgateErrors (the vote rules) pass through. */
  #unavailable(e: unknown, doing: string): AgateError {
    if (e instanceof AgateError) return e;
    const err = e as Error & { code?: string; severity?: string };
    const code = typeof err?.code === "string" ? err.code : undefined;
    const details = { database: this.#where, ...(code ? { code } : {}) };
    const message = err?.message ?? String(e);
    if (code === "CONNECTION_ENDED" || (this.#closed && code === "CONNECTION_DESTROYED")) {
      return new AgateError("APPROVALS_UNAVAILABLE", `The approvals store is closed (${doing})`, details);
    }
    if (isUnreachable(code)) {
      return new AgateError(
        "APPROVALS_UNAVAILABLE",
        `Cannot reach the approvals database ${this.#where} while ${doing}: ${message}. Check approvals.store and that PostgreSQL is running and accepts this role.`,
        details,
      );
    }
    if (code === "42501") {
      return new AgateError(
        "APPROVALS_UNAVAILABLE",
        `The approvals database ${this.#where} refused ${doing}: ${message}. Create the schema and tables once as a role that may (or grant this one CREATE), then give this role USAGE on the schema and SELECT, INSERT, UPDATE on its tables.`,
        details,
      );
    }
    return new AgateError("APPROVALS_UNAVAILABLE", `The approvals database ${this.#where} failed while ${doing}: ${message}${code ? ` (${code})` : ""}`, details);
  }
}

/** Errors that mean the database is not there (or will not have us), as opposed to a failing statement. */
function isUnreachable(code: string | undefined): boolean {
  if (!code) return false;
  if (/^E[A-Z]+$/.test(code)) return true; // ECONNREFUSED, ECONNRESET, ENOTFOUND, ETIMEDOUT, EHOSTUNREACH…
  if (/^(CONNECT_TIMEOUT|CONNECTION_CLOSED|CONNECTION_DESTROYED|SASL_SIGNATURE_MISMATCH|AUTH_TYPE_NOT_IMPLEMENTED|MESSAGE_NOT_SUPPORTED)$/.test(code)) return true;
  // SQLSTATE classes: 08 connection exception, 28 invalid authorization, 3D000 no such database,
  // 53300 too many connections, 57P01-57P03 shutdown / cannot connect now.
  return /^(08|28)/.test(code) || code === "3D000" || code === "53300" || /^57P0[1-3]$/.test(code);
}
