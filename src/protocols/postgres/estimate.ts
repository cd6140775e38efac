/**
 * Row estimates for writes, from the target's own planner, for the approval
 * rules (policies/agate/approvals.rego): every statement that changes rows
 * when it runs gets `estimated_rows` in its facts, the rows its ModifyTable
 * nodes are planned to touch, or null when no estimate could be made.
 *
 * Which statements write, wherever the write stands:
 *
 * * INSERT, UPDATE, DELETE, MERGE (INSERT … SELECT, UPDATE … FROM included);
 * * a SELECT with a data-modifying WITH query;
 * * EXPLAIN ANALYZE of a write (EXPLAIN without ANALYZE runs nothing and is
 *   not one; an option list agate cannot read plainly counts as ANALYZE);
 * * EXECUTE of a statement this session prepared with SQL PREPARE, which is
 *   judged as that statement: its facts take the prepared statement's place;
 * * COPY (DELETE … RETURNING …) TO STDOUT, CREATE TABLE AS with a
 *   data-modifying WITH query: writes, estimate null (held).
 *
 * Without the planner: INSERT … VALUES counts the rows it lists, and an
 * UPDATE or DELETE by a unique key touches at most one row (keyBound),
 * unless rules on the table may do more.
 *
 * COPY … FROM STDIN is not estimated: the client sends every row it
 * inserts, it changes no existing row, and holding every bulk load would
 * break them (a policy can hold kind "copy" itself).
 *
 * How: `EXPLAIN (FORMAT JSON)` without ANALYZE of the statement (of X for
 * EXPLAIN ANALYZE X; for EXECUTE, the session's PREPARE replayed and
 * EXPLAIN EXECUTE with the same arguments; in the extended protocol the
 * Parse's text and parameter types PREPAREd and EXECUTEd with the Bind
 * values as literals), on a small pool of the gateway's own connections to
 * the target, inside BEGIN READ ONLY … ROLLBACK with a short
 * statement_timeout and the client session's search_path. The rows of every
 * ModifyTable node (CTEs, InitPlans and rule actions included) are summed,
 * each counted as the rows of the plan it modifies.
 *
 * Order: a write is estimated only if the policy would allow the command
 * with no estimate at all (Guard.preview); a refused statement never
 * reaches the target's planner.
 *
 * The session's search_path is followed (SearchPath below); where agate
 * cannot know it, the estimate is not made (null: held).
 */
import type postgres from "postgres";
import { AgateError, asError } from "../../core/errors.ts";
import type { Guard } from "../../core/guard.ts";
import type { Logger } from "../../core/log.ts";
import type { Command, Session, SqlFacts, SqlStatement } from "../../core/types.ts";
import { binaryAsText } from "./binary.ts";
import { analyzeSql } from "./sql.ts";
import { type PgTarget, targetSql } from "./upstream.ts";

/** How long the planner may take for one estimate. */
export const ESTIMATE_TIMEOUT_MS = 2000;
/** Connections per target for estimates (estimates are pipelined on them, in turn). */
const POOL_SIZE = 4;
/** Suffixes tried when looking for the statement inside EXPLAIN or PREPARE. */
const MAX_INNER_TRIES = 64;
/** The name agate's own PREPARE uses for an extended-protocol statement, on its own connection. */
const ESTIMATE_STATEMENT = "agate_estimate";
const BYTEA = 17;
/** How long what a relation has (rules, keys, children) is trusted (as the catalog's cache). */
const RULES_CACHE_MS = 60_000;

/** What to ask the planner: setup statements (PREPAREs), then EXPLAIN of `target`. */
interface Job {
  setup: string[];
  target: string;
  /** Parameters of agate's own PREPARE given as bytea without a declared type: the server must infer bytea for them, or the estimate is void. */
  bytea?: number[];
}

/**
 * The search_path the client session has: the role's default, a value as
 * written after SET … TO, one given to set_config(), or unknown.
 */
type PathState = { kind: "default" } | { kind: "set"; value: string } | { kind: "config"; value: string } | undefined;
/** How the estimator sets a search_path: SET … TO syntax as written, or set_config()'s value. */
export type SearchPath = { to: string } | { config: string };

/** A relation that could not be looked up: the planner is asked. */
const UNKNOWN_RELATION: RelationFacts = { rules: true, kind: "", children: true, keys: [] };

/** What an estimate needs to know of a relation the statement writes. */
export interface RelationFacts {
  /** Rules may turn a write into other writes: only the planner knows what it does then. */
  rules: boolean;
  /** pg_class.relkind: "r" table, "p" partitioned table, … */
  kind: string;
  /** Inheritance children or partitions. */
  children: boolean;
  /** Column names of each unique key that bounds an equality to one row. */
  keys: string[][];
}

/**
 * At most one row: an UPDATE or DELETE whose WHERE clause sets every column
 * of one unique key equal to a constant or parameter (sql-walk.ts
 * whereEqual), of a plain table written ONLY or without children, or a
 * partitioned table (whose unique keys hold across its partitions), with
 * no rules. Otherwise undefined: the planner is asked.
 */
export function keyBound(s: SqlStatement, table: RelationFacts | null): number | undefined {
  const eq = s.where_equal;
  if (!eq || table === null || table.rules || (s.kind !== "update" && s.kind !== "delete")) return undefined;
  if (!(table.kind === "p" || (table.kind === "r" && (eq.only || !table.children)))) return undefined;
  return table.keys.some((k) => k.length > 0 && k.every((c) => eq.columns.includes(c))) ? 1 : undefined;
}

/** The gateway's connections for estimates, one pool per target (beside the catalog's connection). */
export class Estimator {
  /**
   * Single-connection clients, taken in turn. One client sends what it is
   * given in order, pipelined, each query with its own Sync, so several
   * estimates share a connection: each sends all its statements (BEGIN …
   * ROLLBACK) in one synchronous pass, which nothing else can interleave.
   */
  private readonly all: postgres.Sql[] = [];
  private turn = 0;
  private readonly typeNames = new Map<number, string>();

  constructor(private readonly target: PgTarget) {}

  /**
   * The rows `job` is planned to modify, or throws. `path`: the session's
   * search_path as written after SET … TO (undefined: the role's default,
   * which this pool's connections have). The texts are the facts' (read
   * with standard_conforming_strings on, as lexing.ts writes them).
   */
  async rows(job: Job, path?: SearchPath): Promise<number> {
    const c = this.pick();
    // Everything below is sent in this one synchronous pass (see `all`).
    const block = path !== undefined;
    {
      // The connection's own settings make every transaction READ ONLY, with the timeout and standard strings:
      // each statement runs in its own implicit one, unless SET LOCAL search_path needs BEGIN … ROLLBACK.
      const steps: Promise<unknown>[] = block ? [c.unsafe("BEGIN READ ONLY")] : [];
      // The value as the client wrote it after SET search_path TO: one statement, through the extended protocol.
      if (path !== undefined) steps.push(setPath(c, path));
      for (const s of job.setup) steps.push(c.unsafe(s));
      const inferred = job.bytea?.length
        ? c.unsafe(`SELECT parameter_types::pg_catalog.text[] AS types FROM pg_catalog.pg_prepared_statements WHERE name = '${ESTIMATE_STATEMENT}'`)
        : undefined;
      if (inferred) steps.push(inferred);
      const plan = c.unsafe(`EXPLAIN (FORMAT JSON) ${job.target}`);
      steps.push(plan);
      if (block) steps.push(c.unsafe("ROLLBACK"));
      if (job.setup.length > 0) steps.push(c.unsafe("DEALLOCATE ALL"));
      const settled = await Promise.allSettled(steps);
      const failed = settled.find((s) => s.status === "rejected");
      if (failed) throw asError((failed as PromiseRejectedResult).reason);
      if (inferred) {
        const [row] = (settled[steps.indexOf(inferred)] as PromiseFulfilledResult<{ types: string | string[] }[]>).value;
        const types = typeof row?.types === "string" ? row.types.replace(/^\{|\}$/g, "").split(",") : (row?.types ?? []);
        if (!job.bytea!.every((i) => types[i] === "bytea")) throw new AgateError("ESTIMATE_BINARY", "a binary parameter's type, as the target infers it, is not bytea; its value cannot be given to the planner");
      }
      const rows = (settled[steps.indexOf(plan)] as PromiseFulfilledResult<{ "QUERY PLAN": unknown }[]>).value;
      const out = rows[0]?.["QUERY PLAN"];
      return modifiedRows(typeof out === "string" ? JSON.parse(out) : out);
    }
  }

  /**
   * What agate's connection sees of `relation` (as written, resolved under
   * `path`): whether it has rules, which could make an INSERT … VALUES do
   * more than insert its rows, its kind, children and unique keys (cached
   * for RULES_CACHE_MS, or until invalidate()), or null when it does not
   * resolve (not cached: it may be committed later).
   */
  async relation(relation: string, path?: SearchPath): Promise<RelationFacts | null> {
    const key = `${JSON.stringify(path ?? null)}\0${relation}`;
    const hit = this.relations.get(key);
    if (hit && Date.now() - hit.at <= RULES_CACHE_MS) return hit.facts;
    const c = this.pick();
    const steps: Promise<unknown>[] = [c.unsafe("BEGIN READ ONLY")];
    if (path !== undefined) steps.push(setPath(c, path));
    const name = relation.split(".").map((p) => `"${p.replaceAll('"', '""')}"`).join(".");
    // The unique keys that bound an equality to one row: valid, not deferrable (a deferred check allows
    // duplicates until commit), not partial, no expressions; key columns only (INCLUDE columns are not unique).
    const found = c.unsafe(
      `SELECT c.relhasrules AS rules, c.relkind::text AS kind, c.relhassubclass AS children,
         (SELECT COALESCE(pg_catalog.json_agg(k.cols)::text, '[]') FROM (
            SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attnum) AS cols
            FROM pg_catalog.pg_index i
            CROSS JOIN LATERAL pg_catalog.unnest((i.indkey::pg_catalog.int2[])[0:i.indnkeyatts - 1]) AS u(attnum)
            JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = u.attnum
            WHERE i.indrelid = c.oid AND i.indisunique AND i.indimmediate AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
            GROUP BY i.indexrelid) k) AS keys
       FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass($1)`,
      [name],
    );
    steps.push(found, c.unsafe("ROLLBACK"));
    const settled = await Promise.allSettled(steps);
    const failed = settled.find((s) => s.status === "rejected");
    if (failed) throw asError((failed as PromiseRejectedResult).reason);
    const [row] = (settled[steps.indexOf(found)] as PromiseFulfilledResult<{ rules: boolean; kind: string; children: boolean; keys: string }[]>).value;
    if (!row) return null;
    const facts: RelationFacts = { rules: row.rules, kind: row.kind, children: row.children, keys: JSON.parse(row.keys) as string[][] };
    this.relations.set(key, { facts, at: Date.now() });
    return facts;
  }
  private readonly relations = new Map<string, { facts: RelationFacts; at: number }>();

  /** A DDL statement ran through agate: rules, keys and inheritance are read anew. */
  invalidate(): void {
    this.relations.clear();
  }

  /** PREPARE's name for each parameter type: "unknown" where the Parse left it to the server. */
  async typeList(oids: number[]): Promise<string[]> {
    const missing = [...new Set(oids.filter((o) => o !== 0 && !this.typeNames.has(o)))];
    if (missing.length > 0) {
      const rows = await this.pick()<{ oid: string; name: string }[]>`
        SELECT t.oid::pg_catalog.int8::text AS oid, pg_catalog.format_type(t.oid, NULL) AS name
        FROM pg_catalog.pg_type t WHERE t.oid::pg_catalog.int8 = ANY(pg_catalog.string_to_array(${missing.join(",")}, ',')::pg_catalog.int8[])`;
      for (const r of rows) this.typeNames.set(Number(r.oid), r.name);
    }
    return oids.map((o) => {
      if (o === 0) return "unknown";
      const name = this.typeNames.get(o);
      if (name === undefined) throw new AgateError("ESTIMATE_TYPE", `parameter type ${o} is not in the target's catalog`);
      return name;
    });
  }

  async close(): Promise<void> {
    await Promise.all(this.all.splice(0).map((c) => c.end({ timeout: 1 })));
  }

  /** The next client in turn (made on first use, up to POOL_SIZE). */
  private pick(): postgres.Sql {
    if (this.all.length < POOL_SIZE) this.all.push(this.client());
    return this.all[this.turn++ % this.all.length]!;
  }

  private client(): postgres.Sql {
    // No search_path here: these sessions keep the role's default, as a client's session starts with it.
    const settings = { application_name: "agate estimates", default_transaction_read_only: "on", statement_timeout: String(ESTIMATE_TIMEOUT_MS), standard_conforming_strings: "on" };
    return targetSql(this.target, settings, { max: 1, idle_timeout: 60, prepare: false, fetch_types: false });
  }
}

/** The session's search_path for this transaction: as the client wrote it after SET … TO (one statement, extended protocol), or set_config()'s value as a parameter. */
function setPath(c: postgres.Sql, path: SearchPath): Promise<unknown> {
  return "to" in path ? c.unsafe(`SET LOCAL search_path TO ${path.to}`) : c.unsafe("SELECT pg_catalog.set_config('search_path', $1, true)", [path.config]);
}

/**
 * The rows an EXPLAIN (FORMAT JSON) output modifies: for every ModifyTable
 * node, the rows of the plans under it (its own "Plan Rows" is 0 without
 * RETURNING), InitPlans and SubPlans aside, which are walked on their own.
 */
export function modifiedRows(explain: unknown): number {
  let total = 0;
  const visit = (node: Record<string, unknown>): void => {
    const plans = Array.isArray(node.Plans) ? (node.Plans as Record<string, unknown>[]) : [];
    if (node["Node Type"] === "ModifyTable") {
      const input = plans.filter((p) => p["Parent Relationship"] !== "InitPlan" && p["Parent Relationship"] !== "SubPlan");
      total += input.length > 0 ? input.reduce((n, p) => n + Number(p["Plan Rows"] ?? 0), 0) : Number(node["Plan Rows"] ?? 0);
    }
    for (const p of plans) visit(p);
  };
  if (!Array.isArray(explain)) throw new AgateError("ESTIMATE_PLAN", "EXPLAIN (FORMAT JSON) answered something other than a list of plans");
  for (const q of explain as { Plan?: Record<string, unknown> }[]) if (q.Plan) visit(q.Plan);
  if (!Number.isFinite(total)) throw new AgateError("ESTIMATE_PLAN", "the plan's row counts are not numbers");
  return Math.round(total);
}

/** One session's part: its search_path and the estimates of its writes. */
export class WriteEstimates {
  private path: PathState = { kind: "default" };
  /** A SET/RESET of search_path that ran alone: it takes effect once its outcome says it committed. */
  private pending: { seq: number; path: PathState } | undefined;

  /**
   * The settings the session was started with (its startup parameters, as
   * agate passed them): a search_path among them is the session's, as
   * set_config() would set it; a role or session_authorization makes what
   * "$user" means, so the path, unknown.
   */
  startWith(params: Readonly<Record<string, string>>): void {
    for (const [name, value] of Object.entries(params)) {
      const n = name.toLowerCase();
      if (n === "search_path" && this.path !== undefined) this.path = { kind: "config", value };
      else if (n === "role" || n === "session_authorization") this.path = undefined;
    }
  }

  /**
   * Give `command` its writes' estimates (replacing command.sql; the
   * parser's facts are frozen), and an EXECUTE of a SQL-PREPAREd statement
   * that statement's facts. `bound.paramTypes` alone: a Parse (not
   * estimated: its values come at Execute); `bound.params`: an Execute's
   * Bind values, with its Parse's types. Returns whether writes were
   * estimated (an Execute is then decided anew, not by its Parse's decision).
   */
  async enrich(
    ctx: { guard: Guard; session: Session; estimator: Estimator; log: Logger; prepared: ReadonlyMap<string, SqlStatement> },
    command: Command,
    bound: { paramTypes?: number[]; params?: (string | null)[] },
  ): Promise<boolean> {
    const facts = command.sql;
    if (!facts || command.invalid) return false;
    const parse = bound.params === undefined && bound.paramTypes !== undefined;
    const path = this.path;
    const local = new Map(ctx.prepared);
    let pathKnown = this.path !== undefined;
    const plans: (Plan | undefined)[] = [];
    let changed = false;
    for (const s of facts.statements) {
      this.made(s);
      if (s.node === "PrepareStmt" && s.name !== undefined) local.set(s.name, s);
      if (s.node === "DeallocateStmt") s.name === undefined ? local.clear() : local.delete(s.name);
      const plan = planOf(s, local);
      if (plan?.judged !== undefined) changed = true;
      plans.push(plan && { ...plan, path: pathKnown });
      if (touchesPath(s)) pathKnown = false;
    }
    this.follow(command, facts);
    const writes = plans.filter((p) => p?.write).length;
    if (parse) {
      // Decided again at Execute with the Bind values; keep the types for then.
      if (changed) command.sql = { ...facts, statements: facts.statements.map((s, i) => plans[i]?.judged ?? s) };
      return false;
    }
    if (writes === 0 && !changed) return false;
    const types = bound.paramTypes;
    const unknown = facts.statements.map((s, i) => withEstimate(plans[i]?.judged ?? s, plans[i]?.write ? null : undefined));
    const preliminary: SqlFacts = { ...facts, statements: unknown };
    command.sql = preliminary;
    if (writes === 0) return false;
    const at: SearchPath | undefined = path?.kind === "set" ? { to: path.value } : path?.kind === "config" ? { config: path.value } : undefined;
    const failed = (s: SqlStatement, e: unknown) => ctx.log("warn", "a write's row estimate could not be made; the policy sees null", { session: ctx.session.id, statement: s.tag, error: asError(e).message });
    // Estimates that need no planner, only catalog lookups (never the statement): INSERT … VALUES lists its rows,
    // unless a rule on the table may do more; a write only to tables this session made, which agate's connection
    // cannot see (temporary, or created in the open transaction), changes no row outside the session.
    const lookup = (name: string): Promise<RelationFacts | null> => ctx.estimator.relation(name, at).catch(() => UNKNOWN_RELATION);
    const listed = await Promise.all(
      facts.statements.map(async (s, i) => {
        if (!plans[i]?.write || !plans[i]!.path || path === undefined) return undefined;
        if (s.writes.length > 0 && s.writes.every((w) => this.madeTables.has(w))) {
          const seen = await Promise.all(s.writes.map(lookup));
          if (seen.every((r) => r === null)) return 0;
        }
        if (s.writes.length !== 1) return undefined;
        if (s.where_equal) return keyBound(s, await lookup(s.writes[0]!));
        const rows = s.kind === "insert" ? s.estimated_rows : undefined;
        if (typeof rows !== "number") return undefined;
        const table = await lookup(s.writes[0]!);
        return table !== null && !table.rules ? rows : undefined;
      }),
    );
    const planner = plans.some((p, i) => p?.write && p.job && p.path && path !== undefined && listed[i] === undefined);
    // The planner sees nothing of a command the policy refuses.
    if (planner && !ctx.guard.preview(ctx.session, command).allow) return true;
    const estimated = await Promise.all(
      facts.statements.map(async (s, i) => {
        const p = plans[i];
        if (!p?.write) return unknown[i]!;
        if (listed[i] !== undefined) return withEstimate(unknown[i]!, listed[i]!);
        if (!p.job || !p.path || path === undefined) return unknown[i]!;
        try {
          const job = await this.bind(ctx.estimator, p.job, bound.params, types);
          return withEstimate(unknown[i]!, await ctx.estimator.rows(job, at));
        } catch (e) {
          failed(s, e);
          return unknown[i]!;
        }
      }),
    );
    command.sql = { ...facts, statements: estimated };
    return true;
  }

  /**
   * Tables this session created (CREATE TABLE, CREATE TABLE AS, SELECT INTO), as written,
   * until a DDL statement names them again (a rule, a trigger, a rename, a
   * DROP, an INHERIT) or DISCARD: writes to them alone count 0 rows when agate's
   * connection cannot see them. A CREATE that failed leaves a name that
   * either resolves for agate (and is estimated as usual) or for no one.
   */
  private readonly madeTables = new Set<string>();
  private made(s: SqlStatement): void {
    if (s.node === "DiscardStmt" && (s.tag === "DISCARD ALL" || s.tag === "DISCARD TEMP")) this.madeTables.clear();
    else if ((s.node === "CreateStmt" || s.tag === "CREATE TABLE AS" || s.tag === "SELECT INTO") && s.writes.length === 1) this.madeTables.add(s.writes[0]!);
    // Any other DDL naming one (ALTER TABLE big INHERIT it names it as read) ends it.
    else if (s.kind === "ddl") for (const w of [...s.writes, ...s.reads]) this.madeTables.delete(w);
  }

  /** Commands `seqs` were answered (ReadyForQuery): a pending search_path takes effect if its command ran alone, committed and failed nowhere. */
  answered(seqs: number[], failed: boolean, txStatus: number): void {
    const p = this.pending;
    if (!p || !seqs.includes(p.seq)) return;
    this.pending = undefined;
    if (seqs.length === 1 && !failed && txStatus === 0x49 /* I: outside a transaction block */) this.path = p.path;
  }

  /**
   * A command that may change the search_path makes it unknown from here
   * on; one that sets it plainly (a single `SET search_path TO …` or RESET,
   * RESET ALL, DISCARD ALL) gives it back once it committed (`answered`).
   */
  private follow(command: Command, facts: SqlFacts): void {
    if (!facts.statements.some(touchesPath)) return;
    this.path = undefined;
    const only = facts.statements.length === 1 ? facts.statements[0]! : undefined;
    const next = only && plainPath(only);
    this.pending = next ? { seq: command.seq, path: next } : undefined;
  }

  /** An extended-protocol statement with Bind values: PREPAREd with the Parse's types and EXECUTEd with the values as literals. */
  private async bind(estimator: Estimator, job: Job, params: (string | null)[] | undefined, types: number[] | undefined): Promise<Job> {
    if (!params || params.length === 0) return job;
    const literals = params.map((v, i) => literal(v, types?.[i] ?? 0)).join(", ");
    const bytea = params.flatMap((v, i) => (v?.startsWith("base64:") && !types?.[i] ? [i] : []));
    if (job.setup.length > 0) {
      // A portal bound to a SQL-PREPAREd statement (`EXECUTE "p"`, made by agate): the Bind values are its
      // arguments (of types agate does not check). An EXECUTE with $n arguments cannot be PREPAREd again.
      if (!/^EXECUTE\s+"(?:[^"]|"")*"$/.test(job.target)) throw new AgateError("ESTIMATE_PARAMS", "an EXECUTE with bound parameters cannot be given to the planner");
      if (bytea.length > 0) throw new AgateError("ESTIMATE_BINARY", "a binary parameter without a declared type cannot be given to the planner");
      return { setup: job.setup, target: `${job.target} (${literals})` };
    }
    const names = await estimator.typeList(params.map((_, i) => types?.[i] ?? 0));
    return { setup: [...job.setup, `PREPARE ${ESTIMATE_STATEMENT} (${names.join(", ")}) AS ${job.target}`], target: `EXECUTE ${ESTIMATE_STATEMENT} (${literals})`, ...(bytea.length ? { bytea } : {}) };
  }
}

interface Plan {
  /** The statement changes rows when it runs. */
  write: boolean;
  /** What to ask the planner; absent: no estimate can be made. */
  job?: Job;
  /** The facts the statement is judged by, when not its own (EXECUTE of a SQL-PREPAREd statement). */
  judged?: SqlStatement;
  /** The session's search_path is known for it. */
  path?: boolean;
}

const WRITE_KINDS = new Set(["insert", "update", "delete", "merge"]);

/** Whether `s` writes rows when it runs, and how to estimate them. `prepared`: the session's SQL-PREPAREd statements. */
function planOf(s: SqlStatement, prepared: ReadonlyMap<string, SqlStatement>, depth = 0): Plan | undefined {
  if (WRITE_KINDS.has(s.kind) || (s.node === "SelectStmt" && s.kind === "select" && s.writes.length > 0)) return { write: true, job: { setup: [], target: s.text } };
  if (depth > 2) return s.writes.length > 0 ? { write: true } : undefined;
  switch (s.node) {
    case "ExplainStmt": {
      if (s.writes.length === 0) return undefined;
      const found = innerStatement(s);
      if (!found) return { write: true };
      const inner = planOf(found.statement, prepared, depth + 1);
      if (!inner?.write || plainExplain(s.text.slice(0, found.at))) return undefined;
      return { write: true, ...(inner.job ? { job: inner.job } : {}) };
    }
    case "ExecuteStmt": {
      const p = s.name !== undefined ? prepared.get(s.name) : undefined;
      // Not prepared by this session's SQL as agate saw it: the target answers that it does not
      // exist (only server-side code that runs PREPARE could have made it; see the README).
      if (!p) return undefined;
      const found = innerStatement(p);
      const judged = { ...(found?.statement ?? { ...p, kind: s.kind, node: s.node, tag: s.tag }), text: s.text };
      if (p.writes.length === 0) return { write: false, judged };
      return { write: true, job: { setup: [p.text], target: s.text }, judged };
    }
    case "CopyStmt":
      // COPY (DELETE … RETURNING …) TO: a write inside; COPY … FROM writes only the rows the client sends.
      return s.copy?.direction === "to" && (s.writes.length > 0 || s.has_where !== undefined) ? { write: true } : undefined;
    case "CreateTableAsStmt":
      return s.writes.length > 1 || s.has_where !== undefined ? { write: true } : undefined;
    default:
      return undefined;
  }
}

/**
 * The statement inside EXPLAIN or PREPARE, and where it starts in `s.text`:
 * the first suffix of the text, starting at a keyword or parenthesis, that
 * parses as one statement with the same facts as the whole (the parser's
 * facts include the inner statement's everywhere, so a suffix that is
 * something else does not match).
 */
function innerStatement(s: SqlStatement): { statement: SqlStatement; at: number } | undefined {
  let tries = 0;
  for (const m of s.text.matchAll(/\b(?:select|insert|update|delete|merge|with|values|table|execute)\b|\(/gi)) {
    if (m.index === 0) continue;
    if (++tries > MAX_INNER_TRIES) return undefined;
    let facts: SqlFacts;
    try {
      facts = analyzeSql(s.text.slice(m.index));
    } catch {
      continue;
    }
    const x = facts.statements.length === 1 ? facts.statements[0]! : undefined;
    if (x && sameFacts(x, s)) return { statement: x, at: m.index };
  }
  return undefined;
}

function sameFacts(a: SqlStatement, b: SqlStatement): boolean {
  const same = (x: string[], y: string[]) => x.length === y.length && x.every((v) => y.includes(v));
  return same(a.reads, b.reads) && same(a.writes, b.writes) && same(a.functions, b.functions) && same(a.columns, b.columns) && a.whole_row === b.whole_row && a.has_where === b.has_where;
}

/** EXPLAIN options that plainly do not include ANALYZE: `EXPLAIN`, `EXPLAIN VERBOSE`, `EXPLAIN (FORMAT JSON, COSTS off)`. */
function plainExplain(prefix: string): boolean {
  const p = prefix.trim();
  if (/^explain(\s+verbose)?$/i.test(p)) return true;
  const list = /^explain\s*\(([a-z_\s,0-9]*)\)$/i.exec(p);
  return list !== null && !/analy[sz]e/i.test(list[1]!);
}

/** Whether `s` may change the session's search_path (or what "$user" in it means). */
function touchesPath(s: SqlStatement): boolean {
  if (s.functions.some((f) => f === "set_config" || f.endsWith(".set_config"))) return true;
  if (s.node === "DiscardStmt") return s.tag === "DISCARD ALL";
  if (s.node !== "VariableSetStmt") return false;
  // Only a setting named plainly is known not to be one of these (a quoted or U& name is not read here).
  const name = /^\s*(?:set|reset)\s+(?:session\s+|local\s+)?([a-z_][a-z_0-9.]*)(?=\s|=|$)/i.exec(s.text)?.[1]?.toLowerCase();
  return name === undefined || PATH_SETTINGS.has(name);
}

/** SET/RESET names that change the search_path or whose "$user" it is. */
const PATH_SETTINGS = new Set(["search_path", "role", "authorization", "all", "session"]);

/** The search_path a plain SET/RESET of it leaves: undefined when agate does not follow it (SET LOCAL, SET ROLE …). */
function plainPath(s: SqlStatement): PathState {
  if (s.node === "DiscardStmt") return { kind: "default" };
  // SELECT set_config('search_path', '…', false), as ORMs send it.
  const config = /^\s*select\s+(?:pg_catalog\.)?set_config\s*\(\s*'search_path'\s*,\s*'((?:[^'\\]|'')*)'\s*,\s*false\s*\)\s*$/i.exec(s.text);
  if (config && s.node === "SelectStmt") return { kind: "config", value: config[1]!.replaceAll("''", "'") };
  if (s.node !== "VariableSetStmt") return undefined;
  if (/^\s*reset\s+(search_path|all)\s*$/i.test(s.text)) return { kind: "default" };
  const set = /^\s*set\s+(?:session\s+)?search_path\s*(?:to|=)\s*([\s\S]+)$/i.exec(s.text);
  if (!set) return undefined;
  const value = set[1]!.trim();
  return /^default$/i.test(value) ? { kind: "default" } : { kind: "set", value };
}

function withEstimate(s: SqlStatement, rows: number | null | undefined): SqlStatement {
  return rows === undefined ? s : { ...s, estimated_rows: rows };
}

/**
 * A Bind value as a literal for EXECUTE: text as a standard string; binary
 * ones decoded to the text PostgreSQL would print (binary.ts), and one
 * without a declared type as bytea (checked against the type the server
 * infers, Job.bytea).
 */
function literal(v: string | null, type: number): string {
  if (v === null) return "NULL";
  if (!v.startsWith("base64:")) return quote(v);
  const b = Buffer.from(v.slice(7), "base64");
  let text: string | undefined;
  try {
    text = binaryAsText(type === 0 ? BYTEA : type, b);
  } catch (e) {
    throw new AgateError("ESTIMATE_BINARY", `a binary parameter of type ${type} is malformed: ${asError(e).message}`);
  }
  if (text === undefined) throw new AgateError("ESTIMATE_BINARY", `a binary parameter of type ${type} cannot be given to the planner`);
  return quote(text);
}

/** An escape string: read the same whatever standard_conforming_strings is. */
function quote(v: string): string {
  if (v.includes("\0")) throw new AgateError("ESTIMATE_BINARY", "a parameter holds a zero byte");
  return `E'${v.replaceAll("\\", "\\\\").replaceAll("'", "''")}'`;
}
