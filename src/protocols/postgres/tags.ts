/**
 * Does the target's command tag agree with the statement agate decided?
 *
 * Every CommandComplete names what the target ran ("INSERT 0 1", "DROP
 * TABLE"). If agate's parser read a string differently from the target's,
 * the statements the target ran are not the ones the policy decided and the
 * log recorded; the tags are where that shows. PgSession compares each tag
 * with the statement it answers, and closes the session on a mismatch.
 *
 * The comparison is on the tag's words without its row counts. Where the
 * target's tag legitimately differs from the statement's own (after
 * CreateCommandTag and the executor in PostgreSQL's source), the differences
 * are listed: COMMIT of a failed transaction reports ROLLBACK, CREATE TABLE
 * AS and SELECT INTO report SELECT, an EXECUTE reports the prepared
 * statement's tag. For DDL and utility statements the first word must agree
 * (agate's tag table names the object for most of them, the target always).
 */
import type { SqlStatement } from "../../core/types.ts";

/** Statement kinds whose tag must match word for word. */
const EXACT = new Set(["select", "insert", "update", "delete", "merge", "copy", "show", "explain", "call", "do", "set", "prepare"]);

/** `tag` without its row counts: "INSERT 0 5" → "INSERT", "DROP TABLE" → "DROP TABLE". */
export function tagVerb(tag: string): string {
  return tag.replace(/( \d+)+$/, "");
}

export function tagAgrees(st: SqlStatement, tag: string): boolean {
  const got = tagVerb(tag);
  const want = st.tag;
  if (got === want) return true;
  switch (st.node) {
    case "ExecuteStmt":
      return true; // the prepared statement's own tag; its text was decided (and tag-checked) at PREPARE
    case "FetchStmt":
      return got === "SELECT" && want === "FETCH"; // a cursor's portal run by the extended protocol's Execute
    case "CreateTableAsStmt":
      return got === "SELECT"; // CREATE TABLE AS, SELECT INTO, CREATE MATERIALIZED VIEW report the rows they stored
    case "SelectStmt":
      return got === "SELECT" && want === "SELECT INTO";
    case "TransactionStmt":
      // COMMIT (END) and PREPARE TRANSACTION of a failed transaction roll it back.
      return got === "ROLLBACK" && (want === "COMMIT" || want === "PREPARE TRANSACTION");
  }
  if (EXACT.has(st.kind)) return false;
  if (want === st.node) return true; // a statement agate has no tag for: only the count of statements is checked
  return got.split(" ")[0] === want.split(" ")[0];
}
