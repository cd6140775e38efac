/**
 * Which statements may be forwarded before their record is durable, with
 * their answer held in agate until it is (docs/ARCHITECTURE.md, "The log's
 * contract"). A statement qualifies only when it provably cannot take
 * durable effect in the database first: if the gateway dies before the
 * record is durable, the target either never saw the statement, or saw one
 * whose effects its dropped connection rolls back, or one with none.
 *
 * - Outside a transaction block (autocommit; a multi-statement Query and an
 *   extended batch are one implicit transaction that commits at its end):
 *   SELECT without data-modifying parts, SHOW, and BEGIN / START
 *   TRANSACTION, whose every function is built in and immutable or stable.
 * - Inside an explicit block (ReadyForQuery status 'T', nothing in flight
 *   that could end it): also INSERT, UPDATE, DELETE, MERGE, NOTIFY,
 *   SAVEPOINT, RELEASE and ROLLBACK, whose functions may include the
 *   built-in volatile ones of BLOCK_SAFE_FUNCTIONS (effects that roll back,
 *   or are harmless when they do not: a sequence value skipped, a random
 *   number, a clock read).
 * - Never: COMMIT/END, PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED, DDL,
 *   COPY, SET/RESET and set_config(), CALL, DO, EXPLAIN, PREPARE/EXECUTE,
 *   DECLARE/FETCH, LISTEN, LOCK, any other utility, any volatile function
 *   outside the list (pg_terminate_backend, pg_advisory_lock, setval, …),
 *   any function not built in (its body may do anything, whatever its
 *   declared volatility), a function that runs a query given as text, and
 *   any relation that may run code the statement does not name: a view, a
 *   foreign table, a relation with rules or row security, and (written) one
 *   with user triggers or with defaults or constraints that call a user's
 *   function; on a target whose operators, casts or domain checks run a
 *   user's code (facts.ts USER_CODE), nothing. Facts the catalog could not
 *   complete, a name it does not know, an invalid statement: durable first
 *   (fail closed).
 */
import type { SqlStatement } from "../../core/types.ts";
import type { RelationHooks } from "./facts.ts";

/** What the catalog facts (CatalogFacts) say of the target beyond a statement's own facts. */
export interface TargetCode {
  /** Whether reading or writing relation `name` runs code of its own; undefined when not known. */
  hooks(name: string): RelationHooks | undefined;
  /** Whether operators, casts or domain checks run a user's code (any statement may reach them); undefined when not known. */
  readonly hiddenCode: boolean | undefined;
}

/**
 * Built-in volatile functions a statement inside a transaction block may
 * call and still be forwarded early: their effects roll back with the
 * block (pg_notify) or do not matter when the block never commits (a
 * sequence advanced, random numbers, clock and transaction-id reads).
 */
export const BLOCK_SAFE_FUNCTIONS: ReadonlySet<string> = new Set([
  "nextval", "currval", "lastval",
  "random", "random_normal", "gen_random_uuid",
  "clock_timestamp", "timeofday",
  "pg_notify",
]);

/** Relation kinds reading which runs no code of the relation's own (a view's query, a foreign data wrapper). */
const PLAIN_KINDS = new Set(["table", "partitioned table", "materialized view", "sequence"]);

/** Statement kinds that write rows; early only inside a block. */
const ROW_WRITES = new Set(["insert", "update", "delete", "merge"]);

/**
 * Whether `statements` (one Query's, or one Execute's) may be forwarded
 * before their record is durable. `inBlock`: the target is inside an
 * explicit transaction block when the first of them runs. `target`: the
 * catalog facts of the target (CatalogFacts), completed for `statements`.
 */
export function forwardEarly(statements: readonly SqlStatement[], inBlock: boolean, target: TargetCode): boolean {
  if (statements.length === 0 || target.hiddenCode !== false) return false;
  const hooks = (name: string) => target.hooks(name);
  let block = inBlock;
  for (const st of statements) {
    if (st.kind === "transaction") {
      switch (st.tag) {
        case "BEGIN":
        case "START TRANSACTION":
          block = true;
          continue;
        case "SAVEPOINT":
        case "RELEASE":
          continue;
        case "ROLLBACK":
          // ROLLBACK, or ROLLBACK TO a savepoint (the same tag): what follows may run outside the block.
          block = false;
          continue;
        default:
          return false; // COMMIT/END, PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED: durable first
      }
    }
    const read = st.kind === "select" || st.kind === "show";
    const write = ROW_WRITES.has(st.kind) || st.node === "NotifyStmt";
    if (!(read || (block && write))) return false;
    if (read && st.writes.length > 0) return false; // a data-modifying WITH
    if (!callsAreSafe(st, block) || !relationsAreSafe(st, hooks)) return false;
  }
  return true;
}

/** Every function the statement may call is built in, and immutable or stable (or, in a block, one of BLOCK_SAFE_FUNCTIONS). */
function callsAreSafe(st: SqlStatement, block: boolean): boolean {
  if (st.functions.length === 0) return true;
  const calls = st.calls;
  // Facts not completed from the catalog, or a call that may run a query given as text or a user's code.
  if (calls === undefined || st.sources_opaque !== false) return false;
  for (const c of calls) {
    if (!c.found || c.builtin !== true) return false;
    if (c.volatility === "immutable" || c.volatility === "stable") continue;
    if (!block || !BLOCK_SAFE_FUNCTIONS.has(lastPart(c.name))) return false;
  }
  return true;
}

/** Every relation read or written is plain (or a catalog's), and runs no code of its own for this access. */
function relationsAreSafe(st: SqlStatement, hooks: (name: string) => RelationHooks | undefined): boolean {
  if (st.reads.length === 0 && st.writes.length === 0) return true;
  const relations = st.relations;
  if (relations === undefined) return false;
  for (const r of relations) {
    if (!r.found) return false;
    if (r.catalog) continue;
    if (r.kind === null || !PLAIN_KINDS.has(r.kind)) return false;
  }
  for (const name of st.reads) if (hooks(name)?.read !== false) return false;
  for (const name of st.writes) if (hooks(name)?.write !== false) return false;
  return true;
}

function lastPart(name: string): string {
  const dot = name.lastIndexOf(".");
  return dot < 0 ? name : name.slice(dot + 1);
}
