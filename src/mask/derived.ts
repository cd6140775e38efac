/**
 * Derived mask rules: masking follows covered data into where a statement
 * writes it. When the policy allows a statement that moves a covered value
 * somewhere else (agate.mask.deny_covered_copy switched off), the
 * destination inherits the rule, and agate keeps the derived rule in its
 * store (a SQLite file, `mask.derived_store`) so that it holds in every
 * later session and after a restart, and applies it like a configured rule
 * (the guard adds it to every decision's mask of that connection). A
 * setting is the session's own (set_config without is_local): its derived
 * rule is kept for that session only, in memory.
 *
 *   destination                              derived rule
 *   INSERT/UPDATE/MERGE target, CREATE TABLE AS, SELECT INTO (temporary or
 *   not)                                     every column of that table:
 *                                            "<schema.>table.*", the schema
 *                                            as written (none: any schema)
 *   set_config(name, …), name a constant     the setting: SHOW, current_setting
 *                                            and the ParameterStatus of that
 *                                            name are masked whole
 *
 * A derived column rule covers the whole table: agate does not know which
 * destination column a covered value went into, so it masks them all (the
 * safe side). It takes the strictest style of the rules it derives from
 * (redact, then hmac, then partial).
 *
 * Destinations agate cannot follow are refused even when the policy allows
 * the copy (fail closed): a notification (pg_notify), a large object
 * (lo_from_bytea, lo_put, lowrite, lo_import), a sequence (setval), a WAL
 * message (pg_logical_emit_message), set_config of a name that is not a
 * constant, a view or foreign table written through, and a table whose
 * name cannot be written as a rule (a dot, a colon or white space in it).
 *
 * A table a rule covers whole (every derived rule does) cannot be renamed
 * or moved to another schema (ALTER TABLE … RENAME, SET SCHEMA): its
 * values would then be under a name no rule covers.
 *
 * Not followed: a partition or inheritance child written directly is
 * covered when read directly, not when read through its parent (whose rows
 * include it); name the parent's columns in the configured rules for that.
 */
import type { Database } from "bun:sqlite";
import type { SqlStatement } from "../core/types.ts";
import { openSqlite } from "../store/sqlite.ts";
import { type ColumnRule, type CompiledMask, ruleForColumn, strictest } from "./rules.ts";

const SCHEMA = `
CREATE TABLE IF NOT EXISTS derived_rules (
  connection TEXT NOT NULL,
  kind       TEXT NOT NULL CHECK (kind IN ('column', 'setting')),
  rule       TEXT NOT NULL,          -- "public.copy.*:partial"
  style      TEXT NOT NULL,          -- redact | partial | hmac
  sources    TEXT NOT NULL,          -- JSON array: the configured (or derived) rules it follows
  created_at TEXT NOT NULL,
  PRIMARY KEY (connection, kind, rule)
) STRICT;`;

/** One derived rule. */
export interface DerivedRule {
  kind: "column" | "setting";
  /** A column rule in the configured syntax ("public.copy.*", style suffix included), or a setting's name. */
  rule: string;
  style: "redact" | "partial" | "hmac";
  /** The rules the copied values were covered by. */
  sources: string[];
}

const NONE: readonly string[] = Object.freeze([]);

export class DerivedRuleStore {
  readonly #db: Database;
  readonly #byConnection = new Map<string, string[]>();
  /**
   * Set where several worker threads serve (src/workers), each with its own copy: resolves once every other
   * thread has re-read the rules after this one added some. The guard waits for it before it forwards the
   * statement that derived them, so no session anywhere reads the copy unmasked.
   */
  share: (() => Promise<void>) | undefined;

  /** Open (creating, mode 0600) the store at `path`. */
  constructor(readonly path: string) {
    this.#db = openSqlite(path, SCHEMA, "derived mask rules store", "MASK_DERIVED_UNAVAILABLE");
    this.#load();
  }

  /** The derived column rules of connection `name` (the same list while nothing changes). */
  forConnection(name: string): readonly string[] {
    return this.#byConnection.get(name) ?? NONE;
  }

  /** Keep `rules` for `connection`; returns those that were new. */
  add(connection: string, rules: readonly DerivedRule[]): DerivedRule[] {
    const at = new Date().toISOString();
    const insert = this.#db.query("INSERT OR IGNORE INTO derived_rules (connection, kind, rule, style, sources, created_at) VALUES (?, ?, ?, ?, ?, ?)");
    const added = this.#db.transaction(() => rules.filter((r) => insert.run(connection, r.kind, r.rule, r.style, JSON.stringify(r.sources), at).changes > 0)).immediate();
    if (added.length > 0) this.#load();
    return added;
  }

  close(): void {
    this.#db.close();
  }

  /** Read the rules again: another thread (src/workers) added some. */
  reload(): void {
    this.#load();
  }

  #load(): void {
    this.#byConnection.clear();
    const rows = this.#db.query("SELECT connection, rule FROM derived_rules WHERE kind = 'column' ORDER BY created_at, rule").all() as { connection: string; rule: string }[];
    for (const r of rows) {
      let m = this.#byConnection.get(r.connection);
      if (m === undefined) this.#byConnection.set(r.connection, (m = []));
      m.push(r.rule);
    }
  }
}

/** What a statement list derives under a mask: new rules, or why it must be refused. */
export interface Derivation {
  rules: DerivedRule[];
  /** A destination agate cannot follow a covered value into. */
  refuse?: string;
}

/** Calls that keep a value where agate cannot follow it, and what they keep it in. */
const UNTRACKED: Record<string, string> = {
  pg_notify: "a notification",
  lo_from_bytea: "a large object",
  lo_put: "a large object",
  lowrite: "a large object",
  lo_import: "a large object",
  setval: "a sequence",
  pg_logical_emit_message: "a WAL message",
};

const NAME = /^[^\s.:]+$/;

/**
 * The rules `statements` derive under `m` (the mask in force, derived rules
 * included): for each statement that writes covered values (its `copies`;
 * any relation when its sources are opaque or were not resolved), one rule
 * per destination.
 */
export function derive(statements: readonly SqlStatement[], m: CompiledMask): Derivation {
  const out: DerivedRule[] = [];
  if (m.columns.length === 0) return { rules: out };
  for (const st of statements) {
    if (st.node === "RenameStmt" || st.node === "AlterObjectSchemaStmt") {
      for (const w of st.writes) {
        const r = wholeTableRule(m, w);
        if (r) return { rules: out, refuse: `${w} is masked whole by the rule ${r.rule}; renamed or moved to another schema, its values would be under a name the rule does not cover` };
      }
    }
    if (!writesRows(st) && !st.settings.some((s) => s.call && s.action === "set") && !st.functions.some((f) => UNTRACKED[lastPart(f)] !== undefined)) continue;
    const covering = coveringRules(st, m);
    if (covering.length === 0) continue;
    const style = covering[strictest(covering)]!.style.kind;
    const sources = [...new Set(covering.map((r) => r.rule))];
    for (const fn of st.functions) {
      const kept = UNTRACKED[lastPart(fn)];
      if (kept) return { rules: out, refuse: `${lastPart(fn)}() would keep values covered by ${sources.join(", ")} in ${kept}, where agate cannot follow them to mask them` };
    }
    for (const s of st.settings) {
      if (!s.call || s.action !== "set") continue;
      if (s.name === null) return { rules: out, refuse: `set_config() would keep values covered by ${sources.join(", ")} in a setting whose name is not a constant, so agate cannot mask it` };
      out.push({ kind: "setting", rule: s.name, style, sources });
    }
    if (!writesRows(st)) continue;
    for (const w of st.writes) {
      // A view (or a foreign table) passes what it is given on to relations agate cannot name here.
      const other = st.relations?.find((r) => r.name === w && r.access === "write" && r.found && r.kind !== "table" && r.kind !== "partitioned table");
      if (other) return { rules: out, refuse: `${w} is a ${other.kind}: the values covered by ${sources.join(", ")} written through it land where agate cannot follow them; write to its table` };
      const parts = w.split(".").slice(-2);
      if (!parts.every((p) => NAME.test(p))) return { rules: out, refuse: `the table ${w} would receive values covered by ${sources.join(", ")}, and its name cannot be written as a mask rule` };
      out.push({ kind: "column", rule: `${parts.join(".")}.*${style === "redact" ? "" : `:${style}`}`, style, sources });
    }
  }
  return { rules: out };
}

/** The rules covering what `st` writes or keeps: its covered copies, or every rule when they cannot be told. */
function coveringRules(st: SqlStatement, m: CompiledMask): ColumnRule[] {
  if (st.copies === undefined || st.sources_opaque === true) return m.columns;
  const out: ColumnRule[] = [];
  for (const c of st.copies) {
    const r = ruleForColumn(m, c.schema, c.table, c.column);
    if (r) out.push(r);
  }
  return out;
}

/**
 * A rule covering every column of relation `name` ("copy.*", as derived
 * rules are): a schema part is taken to match when the name has none.
 */
function wholeTableRule(m: CompiledMask, name: string): ColumnRule | undefined {
  const parts = name.split(".").slice(-2);
  const table = parts[parts.length - 1]!;
  const schema = parts.length === 2 ? parts[0] : undefined;
  return m.columns.find((r) => {
    const n = r.parts.length;
    if (n < 2 || !r.parts[n - 1]!.test("\0") || !r.parts[n - 2]!.test(table)) return false;
    return n < 3 || schema === undefined || r.parts[0]!.test(schema);
  });
}

/** Statements that put rows into their `writes` (a materialized view keeps its lineage: agate follows it like a view's). */
function writesRows(st: SqlStatement): boolean {
  if (st.writes.length === 0) return false;
  if (st.kind === "insert" || st.kind === "update" || st.kind === "merge") return true;
  // PREPARE … AS INSERT (its EXECUTE names no relation) and EXPLAIN ANALYZE INSERT write what their body writes
  if (st.node === "PrepareStmt" || st.node === "ExplainStmt") return true;
  return (st.node === "CreateTableAsStmt" || st.node === "SelectStmt") && st.tag !== "CREATE MATERIALIZED VIEW";
}

function lastPart(name: string): string {
  const dot = name.lastIndexOf(".");
  return dot < 0 ? name : name.slice(dot + 1);
}
