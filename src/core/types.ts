/**
 * The protocol-neutral vocabulary every adapter speaks to the guard.
 * Adapters translate wire traffic into these shapes; nothing here knows
 * about sockets, Rego or the log format.
 */

export type Protocol = "postgres" | "ssh" | "http";

/** Who is acting. Filled by the identity step at session start. */
export interface Identity {
  subject: string;
  issuer: string;
  groups: string[];
  kind: "human" | "service" | "agent";
  /** Id of the credential used (API key id, token jti or a digest of the token); never the secret. */
  credential_id?: string;
  /** The agent acting for the subject (a token's `act`/`azp`), when there is one. */
  actor?: string;
  /** When the credential stops being valid (RFC 3339); later commands are refused. */
  expires_at?: string;
}

/** The configured target a listener fronts. */
export interface ConnectionRef {
  name: string;
  protocol: Protocol;
  /** Where agate forwards to, e.g. "127.0.0.1:5432/app". */
  target: string;
}

export interface Session {
  id: string;
  started_at: string;
  identity: Identity;
  connection: ConnectionRef;
  client: { address: string; port?: number; tls: boolean; application?: string };
}

/** Facts the SQL analyser extracts from one statement. */
export interface SqlStatement {
  /** select | insert | update | delete | merge | ddl | copy | transaction | set | show | explain | call | prepare | execute | utility */
  kind: string;
  /** libpg-query node type, e.g. "DropStmt". */
  node: string;
  /** What PostgreSQL would call it, e.g. "DROP TABLE", "SELECT". */
  tag: string;
  /** Relations read and written, as written in the statement ("public.users" or "users"). */
  reads: string[];
  writes: string[];
  /** Functions called, lower-case, schema-qualified when written so ("pg_catalog.pg_read_file"). */
  functions: string[];
  /**
   * Column names the statement uses anywhere (select list, WHERE, ORDER BY,
   * arguments, subqueries, CTEs, RETURNING, INSERT and UPDATE SET targets,
   * JOIN USING), last part only ("u.email" gives "email"), as the parser
   * gives them (unquoted names lower-case), first seen first. A star adds none.
   */
  columns: string[];
  /**
   * Whether the statement makes a whole row into a value, which can carry
   * every column of a relation into a result column without naming it:
   * `row_to_json(u)`, `SELECT u FROM users u`, `(t.*)::text`, `count(t.*)`,
   * `u.to_json`, a star in a UNION or scalar subquery, NATURAL FULL JOIN.
   * A star that PostgreSQL expands into plain columns keeping their origin
   * (`SELECT *`, `SELECT t.*`, `RETURNING *`) does not count.
   */
  whole_row: boolean;
  /**
   * Column names used where their value can flow into the statement's
   * outputs (result columns, RETURNING, written values, function arguments):
   * every use outside WHERE, JOIN ON/USING, GROUP BY, HAVING, ORDER BY,
   * LIMIT, DISTINCT ON and window/aggregate ordering. Last part only.
   */
  outputs?: string[];
  /**
   * agate cannot follow names to columns here: a FROM item or CTE renames
   * its columns (`t(a, b)`), a star or a whole row outside a condition. Every
   * column of the relations read may then flow out.
   */
  opaque?: boolean;
  /** `outputs` and `opaque` without RETURNING lists: what may flow into what the statement writes or keeps. */
  written_from?: string[];
  written_opaque?: boolean;
  /**
   * Catalog facts: the base columns whose values may flow into the outputs,
   * resolved through views (their rewrite rules' dependencies) and
   * partitions/inheritance (ancestors); `sources_opaque` when the statement
   * calls something that may read any relation (a function that runs a
   * query, a function that is not built in) or the catalog was unavailable.
   */
  sources?: SqlColumnRef[];
  sources_opaque?: boolean;
  /** Catalog facts: `sources` of what the statement writes or keeps (written_from), for agate.mask.deny_covered_copy. */
  copies?: SqlColumnRef[];
  /** UPDATE/DELETE: whether a WHERE clause is present. */
  has_where?: boolean;
  /**
   * UPDATE/DELETE of one relation without FROM/USING/WITH: the columns its
   * WHERE clause requires to equal a constant or a parameter (in its
   * top-level AND), and whether ONLY was written (no inheritance children).
   */
  where_equal?: { columns: string[]; only: boolean };
  /**
   * Statements that change rows when they run (INSERT/UPDATE/DELETE/MERGE,
   * a data-modifying WITH, EXPLAIN ANALYZE of one, EXECUTE of a prepared
   * one): the rows the target's planner estimates its ModifyTable nodes
   * touch (EXPLAIN without ANALYZE, summed; INSERT … VALUES: the rows it
   * lists, unless the table has rules); null when the estimate could not be
   * made. Absent on statements that write no rows, and on COPY FROM.
   */
  estimated_rows?: number | null;
  /** DECLARE/FETCH/MOVE/CLOSE: the cursor; PREPARE/EXECUTE/DEALLOCATE: the prepared statement (absent for CLOSE ALL, DEALLOCATE ALL). */
  name?: string;
  /** COPY: direction, whether it reads or writes a server file or program, and its format ("text", "csv", "binary"). */
  copy?: { direction: "from" | "to"; program: boolean; file: boolean; stdio: boolean; format: string };
  /**
   * Settings the statement sets, resets or reads: SET/RESET/SET LOCAL/SHOW
   * (SET ROLE is "role", SET SESSION AUTHORIZATION "session_authorization",
   * RESET ALL and SHOW ALL "all") and set_config()/current_setting() calls
   * (`call`), names lower-case; null when a call's name is not a constant.
   * `context` is the catalog's (see SqlSetting).
   */
  settings: SqlSetting[];
  /** CREATE TABLE/VIEW/SEQUENCE/TABLE AS, SELECT INTO: whether the relation is temporary (TEMP, or schema pg_temp). */
  temp?: boolean;
  /** ALTER TABLE: its subcommands, as libpg-query names them ("AT_AddColumn", "AT_DropColumn", …). */
  subcommands?: string[];
  /** Statements run as part of this one: the body of EXPLAIN, PREPARE and DECLARE, the elements of CREATE SCHEMA. */
  inner?: SqlInner[];
  /** From the target's catalog (src/protocols/postgres/facts.ts): every candidate of every function called. */
  calls?: SqlCall[];
  /** From the target's catalog: every candidate of every relation read or written. */
  relations?: SqlRelation[];
  /** The statement's own text (one statement of a multi-statement query). */
  text: string;
}

/** A base column (SqlStatement.sources). */
export interface SqlColumnRef {
  schema: string;
  table: string;
  column: string;
}

/** A statement nested in another (SqlStatement.inner). */
export interface SqlInner {
  kind: string;
  node: string;
  tag: string;
  temp?: boolean;
  subcommands?: string[];
}

export interface SqlSetting {
  name: string | null;
  action: "set" | "reset" | "show";
  /** SET LOCAL, or set_config(…, true). */
  local: boolean;
  /** Through set_config() or current_setting() rather than SET/RESET/SHOW. */
  call: boolean;
  /**
   * pg_settings.context (internal, postmaster, sighup, superuser-backend,
   * backend, superuser, user); "placeholder" for a dotted name the server
   * does not define, "unknown" when it cannot be known (not a constant, not
   * a setting, catalog unavailable). Added by the catalog lookup.
   */
  context?: string;
}

/** One function a call may resolve to (an unqualified name stands for every schema's function of that name). */
export interface SqlCall {
  /** As written, lower-case ("ts_rewrite", "pg_catalog.ts_rewrite"). */
  name: string;
  /** False: no function of that name in the catalog (`type`: the name is a type, so the call is a cast). */
  found: boolean;
  type?: boolean;
  schema: string | null;
  /** function | procedure | aggregate | window */
  kind: string | null;
  /** PUBLIC may execute it (proacl NULL, or an EXECUTE grant to PUBLIC). */
  public: boolean | null;
  /** immutable | stable | volatile */
  volatility: string | null;
  language: string | null;
  /** The language is trusted (pg_language.lanpltrusted); internal and c are not. */
  trusted: boolean | null;
  security_definer: boolean | null;
  /** Built in (OID below 16384) rather than user-defined. */
  builtin: boolean | null;
  /** The extension it belongs to, if any. */
  extension: string | null;
}

/** One relation a name read or written may resolve to. */
export interface SqlRelation {
  /** As written ("pg_class", "public.users"). */
  name: string;
  access: "read" | "write";
  found: boolean;
  schema: string | null;
  /** table | partitioned table | view | materialized view | foreign table | sequence | index | partitioned index | composite type | toast table; null when not found */
  kind: string | null;
  /** In a catalog schema: pg_catalog, information_schema, pg_toast*. */
  catalog: boolean;
}

export interface SqlFacts {
  statements: SqlStatement[];
  /** True when the query string held more than one statement. */
  multi: boolean;
  /** Whether the catalog facts (calls, relations, settings' context) could be looked up; absent before the lookup. */
  catalog?: { known: boolean; error?: string };
}

/** One thing asked of the target. */
export interface Command {
  /** Monotonic per session, from 1. */
  seq: number;
  /** The text as the client sent it (SQL, shell line, "GET /path"). */
  text: string;
  sql?: SqlFacts;
  /** SSH exec: the shell parser's facts (protocols/ssh/exec-facts.ts ExecFacts). */
  exec?: Record<string, unknown>;
  http?: Record<string, unknown>;
  /** Extended protocol: Bind parameters (text format as strings, binary as "base64:…"). */
  params?: (string | null)[];
  /** Set when the adapter could not understand the command (e.g. a SQL syntax error): it is refused unseen by the target. */
  invalid?: { code: string; message: string };
}

/** The policy's answer, as DESIGN.md's contract states it. */
export interface Decision {
  allow: boolean;
  reasons: string[];
  /** min_approvers: distinct approvals needed (default 1). */
  approval: { required: boolean; approvers: string[]; timeout_s: number; min_approvers?: number };
  mask: { columns: string[]; detectors: string[] };
}

/** What came back from the target for one or more commands. */
export interface Outcome {
  /** Command tags as the target reported them, e.g. "INSERT 0 1". */
  tags: string[];
  /** Rows the target reported (sum of the tags' row counts), or the rows it sent when more (a portal read in pieces has no tag). */
  rows: number;
  /** Bytes of result rows sent to the client, as sent (masked). */
  bytes?: number;
  error?: { code: string; message: string };
  /** What was masked in the response: rows changed, values per column rule and per detector (never the values). */
  masked?: { rows: number; columns: Record<string, number>; detectors: Record<string, number> };
  /** A process on the target (SSH exec): its exit status, or the signal that ended it. */
  exit?: { status?: number; signal?: string; core_dumped?: boolean; message?: string };
  /** Bytes the client sent to the command (SSH exec stdin). */
  bytes_in?: number;
  /** From forwarding the command to its end, in ms. */
  duration_ms?: number;
}
