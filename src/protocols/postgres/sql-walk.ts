/**
 * Facts about one statement, read off its libpg-query parse tree: what kind
 * of statement it is, the command tag PostgreSQL would give it, which
 * relations it reads and writes, which functions it calls, which columns it
 * names and whether it turns a whole row into a value.
 *
 * The walk is generic: every object and array of the tree is visited, so a
 * relation or a function call is found wherever the grammar lets one stand
 * (subqueries, CTEs, DEFAULT expressions, the body of EXPLAIN, PREPARE,
 * COPY (query), CREATE TABLE AS) with no case per statement type. Only
 * what depends on position comes from tables: which relation a statement
 * writes, its kind and its tag.
 *
 * Tree shape (libpg-query JSON, PostgreSQL 18): a field typed `Node` holds a
 * wrapper whose one key is the node type, `{"SelectStmt": {...}}`; a field
 * typed as one particular struct holds it bare, so `InsertStmt.relation` is
 * a RangeVar without wrapper. Node type names start with a capital letter
 * and field names never do (checked against @pgsql/types 18), which is how
 * the walk tells the two apart.
 */
import type { SqlInner, SqlSetting, SqlStatement } from "../../core/types.ts";

type Obj = Record<string, unknown>;

/** Everything `SqlStatement` holds from the parser (not `text`, which the caller slices, nor the catalog's facts). */
export type StatementFacts = Omit<SqlStatement, "text" | "calls" | "relations">;

/**
 * Facts for one top-level statement.
 *
 * @param type the wrapper key of `stmts[i].stmt`, e.g. "DropStmt"
 * @param node the object under that key
 * @throws RangeError if the tree is nested deeper than the JS stack allows
 *   (the caller maps it to AgateError SQL_TOO_DEEP).
 */
export function describeStatement(type: string, node: Obj): StatementFacts {
  const walk = new Walk();
  walk.node(type, node);
  const row = NODES[type];
  const facts: StatementFacts = {
    kind: type === "SelectStmt" && node.intoClause ? "ddl" : (row?.kind ?? "utility"),
    node: type,
    tag: tagOf(type, node, row),
    reads: [...walk.reads],
    writes: [...walk.writes],
    functions: [...walk.functions],
    columns: [...walk.columns],
    whole_row: walk.wholeRow(),
    outputs: [...walk.flowing],
    opaque: walk.renamed || walk.outputStar || walk.returnStar || walk.wholeRowOutside(),
    written_from: [...walk.flowingWrite],
    written_opaque: walk.renamed || walk.outputStar || walk.wholeRowOutside(),
    settings: walk.settings,
  };
  Object.assign(facts, shapeFacts(type, node));
  const inner = innerStatements(type, node);
  if (inner.length > 0) facts.inner = inner;
  // Every UPDATE and DELETE anywhere in the tree counts, so that a
  // data-modifying CTE, EXPLAIN ANALYZE DELETE or PREPARE … AS UPDATE
  // without WHERE reports false too (fail closed).
  if (walk.updateOrDelete > 0) facts.has_where = walk.updateOrDeleteWithWhere === walk.updateOrDelete;
  // INSERT … VALUES of literal rows inserts as many rows as it lists (a rule on the table
  // may do more: estimate.ts asks the planner then).
  const values = type === "InsertStmt" && !node.withClause ? ((node.selectStmt as Obj | undefined)?.SelectStmt as Obj | undefined) : undefined;
  if (values && Array.isArray(values.valuesLists) && !values.withClause) facts.estimated_rows = values.valuesLists.length;
  const equal = whereEqual(type, node);
  if (equal) facts.where_equal = equal;
  const name = NAMED[type] ? node[NAMED[type]] : undefined;
  if (typeof name === "string") facts.name = name;
  if (type === "CopyStmt") {
    const program = node.is_program === true;
    const filename = typeof node.filename === "string";
    facts.copy = {
      direction: node.is_from === true ? "from" : "to",
      program,
      file: filename && !program,
      stdio: !filename,
      format: copyFormat(node.options),
    };
  }
  return facts;
}

/**
 * An UPDATE or DELETE of one relation, without FROM, USING or WITH: the
 * columns its WHERE clause requires to equal a constant or a parameter
 * (`id = 42`, `$1 = t.id`, `id = '7'::int`), in its top-level AND, and
 * whether it writes ONLY that relation (no inheritance children). A
 * unique key among those columns bounds the rows it can touch at one
 * (estimate.ts). Anything else in the clause only narrows it further; a
 * COLLATE, an expression or a schema-qualified operator other than
 * pg_catalog's `=` is not counted.
 */
function whereEqual(type: string, node: Obj): { columns: string[]; only: boolean } | undefined {
  if ((type !== "UpdateStmt" && type !== "DeleteStmt") || node.withClause) return undefined;
  const from = type === "UpdateStmt" ? node.fromClause : node.usingClause;
  if (Array.isArray(from) && from.length > 0) return undefined;
  const rel = node.relation as Obj | undefined;
  if (!isRangeVar(rel) || typeof rel.relname !== "string") return undefined;
  const alias = (rel.alias as Obj | undefined)?.aliasname as string | undefined;
  // A column of the written relation, as the WHERE clause may name it: bare, by alias (which hides the
  // relation's own name), by relation name, or schema-qualified.
  const column = (e: unknown): string | undefined => {
    const fields = ((e as Obj | undefined)?.ColumnRef as Obj | undefined)?.fields;
    if (!Array.isArray(fields) || !fields.every((f) => typeof ((f as Obj)?.String as Obj | undefined)?.sval === "string")) return undefined;
    const names = fields.map((f) => ((f as Obj).String as Obj).sval as string);
    const col = names.at(-1)!;
    if (names.length === 1) return col;
    if (names.length === 2) return names[0] === (alias ?? rel.relname) ? col : undefined;
    if (names.length === 3 && alias === undefined) return names[0] === rel.schemaname && names[1] === rel.relname ? col : undefined;
    return undefined;
  };
  const constant = (e: unknown): boolean => {
    const o = e as Obj | undefined;
    if (!o) return false;
    if (o.A_Const || o.ParamRef) return true;
    const cast = o.TypeCast as Obj | undefined;
    return cast !== undefined && constant(cast.arg);
  };
  const columns = new Set<string>();
  const visit = (e: unknown): void => {
    const and = (e as Obj | undefined)?.BoolExpr as Obj | undefined;
    if (and?.boolop === "AND_EXPR" && Array.isArray(and.args)) return and.args.forEach(visit);
    const op = (e as Obj | undefined)?.A_Expr as Obj | undefined;
    if (op?.kind !== "AEXPR_OP" || !Array.isArray(op.name)) return;
    const name = op.name.map((n) => ((n as Obj)?.String as Obj | undefined)?.sval);
    if (!(name.length === 1 && name[0] === "=") && !(name.length === 2 && name[0] === "pg_catalog" && name[1] === "=")) return;
    const left = column(op.lexpr);
    const c = left ?? column(op.rexpr);
    if (c !== undefined && constant(left !== undefined ? op.rexpr : op.lexpr)) columns.add(c);
  };
  visit(node.whereClause);
  return columns.size > 0 ? { columns: [...columns], only: rel.inh !== true } : undefined;
}

/**
 * Facts that depend on the statement's own shape: `temp` for a CREATE of a
 * temporary table, view or sequence (TEMP, or in schema pg_temp), and
 * `subcommands` for ALTER TABLE (AlterTableCmd subtypes, e.g. "AT_AddColumn").
 */
function shapeFacts(type: string, node: Obj): { temp?: boolean; subcommands?: string[] } {
  const out: { temp?: boolean; subcommands?: string[] } = {};
  const created = CREATED[type]?.(node);
  if (isRangeVar(created)) out.temp = created.relpersistence === "t" || created.schemaname === "pg_temp";
  if (type === "AlterTableStmt" && Array.isArray(node.cmds)) {
    out.subcommands = node.cmds.map((c) => String(((c as Obj | null)?.AlterTableCmd as Obj | undefined)?.subtype ?? "unknown"));
  }
  return out;
}

/** The RangeVar a CREATE of a relation creates. */
const CREATED: Record<string, (n: Obj) => unknown> = {
  CreateStmt: (n) => n.relation,
  CreateTableAsStmt: (n) => (n.into as Obj | undefined)?.rel,
  SelectStmt: (n) => (n.intoClause as Obj | undefined)?.rel,
  ViewStmt: (n) => n.view,
  CreateSeqStmt: (n) => n.sequence,
};

/**
 * Statements nested in this one that PostgreSQL runs as statements in their
 * own right: the body of EXPLAIN, PREPARE and DECLARE, and the elements of
 * CREATE SCHEMA. The policy judges each by its kind, so that EXPLAIN ANALYZE
 * or CREATE SCHEMA … GRANT cannot carry a statement past the allowlist.
 */
function innerStatements(type: string, node: Obj): SqlInner[] {
  const bodies: unknown[] = [];
  if (type === "ExplainStmt" || type === "PrepareStmt" || type === "DeclareCursorStmt") bodies.push(node.query);
  else if (type === "CreateSchemaStmt" && Array.isArray(node.schemaElts)) bodies.push(...node.schemaElts);
  const inner: SqlInner[] = [];
  for (const b of bodies) {
    if (b === null || typeof b !== "object") continue;
    const t = Object.keys(b)[0];
    const n = t === undefined ? undefined : (b as Obj)[t];
    if (t === undefined || n === null || typeof n !== "object") continue;
    const row = NODES[t];
    const kind = t === "SelectStmt" && (n as Obj).intoClause ? "ddl" : (row?.kind ?? "utility");
    inner.push({ kind, node: t, tag: tagOf(t, n as Obj, row), ...shapeFacts(t, n as Obj) });
  }
  return inner;
}

// ---------------------------------------------------------------------------
// Settings: SET, RESET, SHOW, set_config() and current_setting()

/** SET TRANSACTION …, SET SESSION CHARACTERISTICS AS TRANSACTION …: the settings they change, by DefElem name. */
const SESSION_CHARACTERISTICS: Record<string, string> = {
  transaction_isolation: "default_transaction_isolation",
  transaction_read_only: "default_transaction_read_only",
  transaction_deferrable: "default_transaction_deferrable",
};

/**
 * The settings a VariableSetStmt changes, names lower-case: SET ROLE is
 * "role", SET SESSION AUTHORIZATION "session_authorization", SET TIME ZONE
 * "timezone", SET NAMES "client_encoding", RESET ALL "all", SET TRANSACTION
 * … the transaction_* settings it names, SET TRANSACTION SNAPSHOT
 * "transaction_snapshot".
 */
function variableSet(n: Obj): SqlSetting[] {
  const local = n.is_local === true;
  const action = n.kind === "VAR_RESET" || n.kind === "VAR_RESET_ALL" ? "reset" : "set";
  if (n.kind === "VAR_RESET_ALL") return [{ name: "all", action, local, call: false }];
  const name = typeof n.name === "string" ? n.name : null;
  if (n.kind !== "VAR_SET_MULTI" || name === null) return [{ name: name?.toLowerCase() ?? null, action, local, call: false }];
  if (name === "TRANSACTION SNAPSHOT") return [{ name: "transaction_snapshot", action, local, call: false }];
  const names: SqlSetting[] = [];
  for (const a of (n.args as Obj[] | undefined) ?? []) {
    const def = (a.DefElem as Obj | undefined)?.defname;
    const set = typeof def === "string" ? (name === "SESSION CHARACTERISTICS" ? SESSION_CHARACTERISTICS[def] : def) : undefined;
    names.push({ name: set ?? null, action, local, call: false });
  }
  return names.length > 0 ? names : [{ name: null, action, local, call: false }];
}

/** Functions that set or read a setting named by their first argument. */
const SETTING_FUNCTIONS: Record<string, "set" | "show"> = {
  set_config: "set",
  "pg_catalog.set_config": "set",
  current_setting: "show",
  "pg_catalog.current_setting": "show",
};

/**
 * set_config(name, value, is_local) or current_setting(name [, missing_ok]):
 * the setting when its name is a constant (also cast, or passed by name),
 * null when it is computed, so the policy can refuse what it cannot know.
 */
function settingCall(action: "set" | "show", args: unknown[]): SqlSetting {
  const arg = (position: number, name: string): unknown => {
    for (const a of args) {
      const named = (a as Obj | null)?.NamedArgExpr as Obj | undefined;
      if (named?.name === name) return named.arg;
    }
    const a = args[position] as Obj | undefined;
    return a?.NamedArgExpr ? undefined : a;
  };
  const name = constantText(arg(0, "setting_name"));
  const local = action === "set" ? constantBool(arg(2, "is_local")) : false;
  return { name: name?.toLowerCase() ?? null, action, local: local ?? false, call: true };
}

/** A string constant, possibly cast (`'x'::text`). */
function constantText(v: unknown): string | undefined {
  let n = v as Obj | undefined;
  while (n?.TypeCast) n = (n.TypeCast as Obj).arg as Obj | undefined;
  const s = ((n?.A_Const as Obj | undefined)?.sval as Obj | undefined)?.sval;
  return typeof s === "string" ? s : undefined;
}

/** A boolean constant (`true`, `false`, `'on'`…): undefined when computed. */
function constantBool(v: unknown): boolean | undefined {
  let n = v as Obj | undefined;
  while (n?.TypeCast) n = (n.TypeCast as Obj).arg as Obj | undefined;
  const c = n?.A_Const as Obj | undefined;
  if (c?.boolval !== undefined) return (c.boolval as Obj).boolval === true;
  const s = (c?.sval as Obj | undefined)?.sval;
  if (typeof s === "string") return ["t", "true", "on", "yes", "1"].includes(s.toLowerCase());
  return undefined;
}

/** COPY's FORMAT option (also written BINARY or CSV), lower-case; "text" when not given. */
function copyFormat(options: unknown): string {
  if (Array.isArray(options)) {
    for (const o of options) {
      const d = (o as Obj | null)?.DefElem as Obj | undefined;
      const v = ((d?.arg as Obj | undefined)?.String as Obj | undefined)?.sval;
      if (d?.defname === "format" && typeof v === "string") return v.toLowerCase();
    }
  }
  return "text";
}

/** Statements that name a cursor or a prepared statement, and the field that holds the name. */
const NAMED: Record<string, string> = {
  DeclareCursorStmt: "portalname",
  FetchStmt: "portalname",
  ClosePortalStmt: "portalname",
  PrepareStmt: "name",
  ExecuteStmt: "name",
  DeallocateStmt: "name",
};

// ---------------------------------------------------------------------------
// The visitor

/** Fields that hold a bare RangeVar (every `: RangeVar` field in @pgsql/types 18). */
const RANGEVAR_FIELDS = new Set([
  "rel", // IntoClause
  "relation", // Insert/Update/Delete/Merge/Copy/Create/AlterTable/Index/Rename/… statements
  "identitySequence", // ColumnDef
  "name", // PartitionCmd (ATTACH/DETACH PARTITION); a string elsewhere
  "pktable", // Constraint (REFERENCES)
  "table", // CreatePolicyStmt, AlterPolicyStmt
  "constrrel", // CreateTrigStmt (FROM referenced_table)
  "sequence", // CreateSeqStmt, AlterSeqStmt
  "typevar", // CompositeTypeStmt
  "view", // ViewStmt
]);

/**
 * Built-in functions that take any row and give back its content, which
 * PostgreSQL also lets a query call as a column: `u.row_to_json` is
 * `row_to_json(u)`. From pg_proc (one argument of type record, "any",
 * anyelement or anycompatible, result carrying the values), plus hstore.
 */
const ROW_FUNCTIONS = new Set([
  "any_value",
  "array_agg",
  "concat",
  "hash_record",
  "hstore",
  "json_agg",
  "json_agg_strict",
  "json_build_array",
  "jsonb_agg",
  "jsonb_agg_strict",
  "jsonb_build_array",
  "quote_literal",
  "quote_nullable",
  "record_out",
  "record_send",
  "row_to_json",
  "to_json",
  "to_jsonb",
]);

/** Subqueries whose result is a boolean: a star in their select list carries nothing out. */
const BOOLEAN_SUBLINKS = new Set(["EXISTS_SUBLINK", "ANY_SUBLINK", "ALL_SUBLINK", "ROWCOMPARE_SUBLINK"]);

/**
 * Fields whose expressions decide which rows a statement touches or in what
 * order, not what values leave it: a covered column named only there does not
 * taint the statement (the WHERE-clause oracle is inherent, see README).
 */
const CONDITION_FIELDS = new Set([
  "whereClause",
  "havingClause",
  "groupClause",
  "sortClause",
  "quals", // JoinExpr ON
  "joinCondition", // MERGE ON
  "usingClause", // JoinExpr USING (a list of names); DeleteStmt USING is a FROM list of relations
  "limitCount",
  "limitOffset",
  "distinctClause",
  "partitionClause", // WindowDef
  "orderClause", // WindowDef
  "agg_order", // FuncCall ORDER BY
  "agg_filter", // FuncCall FILTER (WHERE …)
]);

class Walk {
  readonly reads = new Set<string>();
  /** Column names used where their value can flow into an output (outside CONDITION_FIELDS). */
  readonly flowing = new Set<string>();
  /** A FROM item or CTE renames its columns (`t(a, b)`, `WITH c(a) AS …`) outside a condition. */
  renamed = false;
  /** `flowing` but for RETURNING lists: what may flow into what the statement writes (or keeps, set_config …). */
  readonly flowingWrite = new Set<string>();
  /** A star outside a condition (outside RETURNING; there, returnStar): every column of the FROM items flows out. */
  outputStar = false;
  returnStar = false;
  /** Depth of RETURNING lists around the current node. */
  private returning = 0;
  /** Whole rows made into values outside conditions. */
  private rowOutside = false;
  private readonly bareOutside = new Set<string>();
  /** Depth of CONDITION_FIELDS around the current node. */
  private condition = 0;
  readonly writes = new Set<string>();
  readonly functions = new Set<string>();
  readonly columns = new Set<string>();
  readonly settings: SqlSetting[] = [];
  updateOrDelete = 0;
  updateOrDeleteWithWhere = 0;
  /** A whole row is made into a value (apart from single-field names, see `rowNames`). */
  private anyRow = false;
  /** Single-field ColumnRef names: a whole row when one names a FROM item. */
  private readonly bareNames = new Set<string>();
  /** Names and aliases of FROM items (relations, CTEs, subqueries, functions, joins). */
  private readonly rowNames = new Set<string>();
  /** Select-list and RETURNING items (their name is a label): does a star there keep its columns' origin? */
  private readonly outputs = new Map<object, boolean>();
  /** SelectStmts whose result columns have no origin: set-operation arms, scalar and ARRAY subqueries. */
  private readonly noOrigin = new Set<unknown>();
  /** RangeVar objects that are the written target of the node that holds them. */
  private readonly targets = new Set<object>();
  /** CTE names visible at this point of the walk, innermost WITH last. */
  private readonly ctes: string[][] = [];

  value(v: unknown): void {
    if (Array.isArray(v)) {
      for (const item of v) this.value(item);
    } else if (v !== null && typeof v === "object") {
      this.fields(v as Obj);
    }
  }

  wholeRowOutside(): boolean {
    if (this.rowOutside) return true;
    for (const name of this.bareOutside) if (this.rowNames.has(name)) return true;
    return false;
  }

  wholeRow(): boolean {
    if (this.anyRow) return true;
    for (const name of this.bareNames) if (this.rowNames.has(name)) return true;
    return false;
  }

  /** A node of a known type: the wrapper key, or the top-level statement. */
  node(type: string, n: Obj): void {
    if (type === "RangeVar") return this.rangeVar(n);
    if (type === "ColumnRef") return this.columnRef(n);
    if (type === "ResTarget") return this.resTarget(n);
    if (type === "FuncCall") this.funcCall(n);
    else if (type === "VariableSetStmt") this.settings.push(...variableSet(n));
    else if (type === "VariableShowStmt") this.settings.push({ name: typeof n.name === "string" ? n.name.toLowerCase() : null, action: "show", local: false, call: false });
    else if (type === "UpdateStmt" || type === "DeleteStmt") {
      this.updateOrDelete++;
      if (n.whereClause) this.updateOrDeleteWithWhere++;
      if (type === "UpdateStmt") this.selfAssignments(n);
    } else if (type === "SelectStmt") {
      // PostgreSQL expands a star in a select list into plain columns, which
      // keep their origin unless the result is a set operation's or a subquery's.
      if (n.larg) this.noOrigin.add(n.larg).add(n.rarg);
      this.output(n.targetList, !this.noOrigin.has(n));
    } else if (type === "SubLink") {
      const select = (n.subselect as Obj | undefined)?.SelectStmt;
      if (!BOOLEAN_SUBLINKS.has(n.subLinkType as string)) this.noOrigin.add(select);
    } else if (type === "JoinExpr") {
      for (const name of nameItems(n.usingClause)) this.columns.add(name);
      // A FULL join merges its common columns with COALESCE: NATURAL names none of them.
      if (n.isNatural === true && n.jointype === "JOIN_FULL") this.anyRow = true;
    } else if (type === "RangeFunction" && !n.alias) {
      // Unaliased, a function in FROM is named after the function.
      for (const list of (n.functions as Obj[] | undefined) ?? []) {
        const first = ((list.List as Obj | undefined)?.items as Obj[] | undefined)?.[0];
        const name = nameItems((first?.FuncCall as Obj | undefined)?.funcname).pop();
        if (name !== undefined) this.rowNames.add(name);
      }
    } else if (type === "CopyStmt") {
      for (const name of nameItems(n.attlist)) this.columns.add(name);
    }
    const returning = n.returningClause as Obj | undefined;
    if (returning) {
      this.output(returning.exprs, true);
      this.rowNames.add("old").add("new");
      for (const o of (returning.options as Obj[] | undefined) ?? []) {
        const alias = (o.ReturningOption as Obj | undefined)?.value; // RETURNING WITH (OLD AS o)
        if (typeof alias === "string") this.rowNames.add(alias);
      }
    }
    const row = NODES[type];
    if (row?.writes) this.markTargets(row.writes(n));
    if (row?.writesNames) for (const name of row.writesNames(n)) this.writes.add(name);
    const withClause = n.withClause as Obj | undefined;
    if (withClause === undefined) return this.fields(n);
    const names = this.withQueries(withClause);
    this.ctes.push(names);
    this.fields(n, "withClause");
    this.ctes.pop();
  }

  /**
   * Walk the queries of a WITH clause, each with the CTE names PostgreSQL
   * lets it see: without RECURSIVE only the earlier siblings (in
   * `WITH t AS (SELECT * FROM t)` the inner `t` is the table), with
   * RECURSIVE all of them. Returns the names, for the statement's body.
   */
  private withQueries(w: Obj): string[] {
    const ctes = Array.isArray(w.ctes) ? (w.ctes as unknown[]) : [];
    const names: string[] = [];
    for (const c of ctes) {
      const name = ((c as Obj | null)?.CommonTableExpr as Obj | undefined)?.ctename;
      if (typeof name === "string") names.push(name);
    }
    const recursive = w.recursive === true;
    ctes.forEach((c, i) => {
      this.ctes.push(recursive ? names : names.slice(0, i));
      this.value(c);
      this.ctes.pop();
    });
    return names;
  }

  /** Run `walk` one level deeper in RETURNING lists or in conditions. */
  private within(depth: "returning" | "condition", walk: () => void): void {
    this[depth]++;
    try {
      walk();
    } finally {
      this[depth]--;
    }
  }

  private fields(o: Obj, skip?: string): void {
    for (const key in o) {
      if (key === skip) continue;
      const v = o[key];
      if (v === null || typeof v !== "object") continue;
      if (key === "returningClause" || CONDITION_FIELDS.has(key)) {
        this.within(key === "returningClause" ? "returning" : "condition", () => this.value(v));
        continue;
      }
      if (key === "aliascolnames" && Array.isArray(v) && v.length > 0 && this.condition === 0) this.renamed = true;
      const first = key.charCodeAt(0);
      if (first >= 65 && first <= 90 /* A-Z: a node wrapper */) {
        this.node(key, v as Obj);
      } else if (RANGEVAR_FIELDS.has(key) && isRangeVar(v)) {
        this.rangeVar(v);
      } else if (key === "funccall" && !Array.isArray(v)) {
        // CallStmt.funccall is the one bare FuncCall field.
        this.node("FuncCall", v as Obj);
      } else if ((key === "larg" || key === "rarg") && typeof (v as Obj).op === "string") {
        // SelectStmt.larg/rarg hold bare SelectStmts (JoinExpr's hold wrappers).
        this.node("SelectStmt", v as Obj);
      } else if (key === "alias" || key === "join_using_alias") {
        this.aliasColumns(v as Obj);
        const name = (v as Obj).aliasname;
        if (typeof name === "string") this.rowNames.add(name);
      } else {
        this.value(v);
      }
    }
  }

  /** `AS s(a, b)`: the columns get new names, which agate does not follow (the statement is then opaque). */
  private aliasColumns(alias: Obj): void {
    if (Array.isArray(alias.colnames) && alias.colnames.length > 0 && this.condition === 0) this.renamed = true;
  }

  private rangeVar(rv: Obj): void {
    const name = qualifiedName(rv);
    if (name === undefined) return;
    this.rowNames.add(rv.relname as string);
    const alias = (rv.alias as Obj | undefined)?.aliasname;
    if (typeof alias === "string") this.rowNames.add(alias);
    if (rv.alias) this.aliasColumns(rv.alias as Obj);
    if (this.targets.has(rv)) {
      this.writes.add(name);
    } else if (rv.schemaname === undefined && rv.catalogname === undefined && this.isCte(rv.relname as string)) {
      // A reference to a WITH query, not to a relation.
    } else {
      this.reads.add(name);
    }
  }

  /**
   * `a.b.c` names column c. A trailing star is a whole row unless it is an
   * expanded select-list item (`resTarget`). A single name may be a whole
   * row (`SELECT u FROM users u`); `u.row_to_json` is a call on one.
   */
  private columnRef(n: Obj): void {
    const fields = (n.fields as Obj[] | undefined) ?? [];
    const last = (fields.at(-1)?.String as Obj | undefined)?.sval;
    const outside = this.condition === 0;
    if (typeof last !== "string") {
      this.anyRow = true;
      if (outside) this.rowOutside = true;
      return;
    }
    this.columns.add(last);
    // EXCLUDED.c in ON CONFLICT DO UPDATE is the row the statement itself proposed, not stored data.
    const first = (fields[0]?.String as Obj | undefined)?.sval;
    if (outside && !(fields.length > 1 && typeof first === "string" && first.toLowerCase() === "excluded")) {
      this.flowing.add(last);
      if (this.returning === 0) this.flowingWrite.add(last);
    }
    if (fields.length === 1) {
      this.bareNames.add(last);
      if (outside) this.bareOutside.add(last);
    } else if (ROW_FUNCTIONS.has(last)) {
      this.anyRow = true;
      if (outside) this.rowOutside = true;
    }
  }

  /**
   * `UPDATE t SET c = lower(c)`: a SET item whose value is computed from the
   * same column of the same row alone (no subquery, no other column) keeps
   * the value where it was; it is no copy (written_from leaves it out).
   */
  private selfAssignments(n: Obj): void {
    const rel = n.relation as Obj | undefined;
    const names = new Set<string>();
    if (typeof rel?.relname === "string") names.add(rel.relname);
    const alias = (rel?.alias as Obj | undefined)?.aliasname;
    if (typeof alias === "string") names.add(alias);
    for (const item of (n.targetList as Obj[] | undefined) ?? []) {
      const t = item.ResTarget as Obj | undefined;
      if (t && typeof t.name === "string" && t.indirection === undefined && onlyColumn(t.val, t.name, names)) this.inPlace.add(t);
    }
  }

  /** UPDATE SET items that transform a column in place (selfAssignments). */
  private readonly inPlace = new Set<object>();

  private resTarget(n: Obj): void {
    if (this.inPlace.has(n)) {
      // what flows into the write stays in the column it came from
      this.inPlace.delete(n);
      return this.within("returning", () => this.resTarget(n));
    }
    const keepsOrigin = this.outputs.get(n);
    // Outside select lists and RETURNING the name is a column: INSERT (a, b), UPDATE SET a = ….
    if (keepsOrigin === undefined && typeof n.name === "string") this.columns.add(n.name);
    if (keepsOrigin === true && isStar(n.val)) {
      if (this.condition === 0 && this.returning > 0) this.returnStar = true;
      else if (this.condition === 0) this.outputStar = true;
      return;
    }
    this.fields(n);
  }

  private output(items: unknown, keepsOrigin: boolean): void {
    if (!Array.isArray(items)) return;
    for (const item of items) {
      const target = (item as Obj).ResTarget;
      if (target) this.outputs.set(target, keepsOrigin);
    }
  }

  private funcCall(n: Obj): void {
    const name = nameList(n.funcname);
    if (name === undefined) return;
    const lower = name.toLowerCase();
    this.functions.add(lower);
    const fn = SETTING_FUNCTIONS[lower];
    if (fn) this.settings.push(settingCall(fn, (n.args as unknown[] | undefined) ?? []));
  }

  private markTargets(v: unknown): void {
    if (Array.isArray(v)) {
      for (const item of v) {
        const rv = (item as Obj | null)?.RangeVar;
        if (isRangeVar(rv)) this.targets.add(rv);
      }
    } else if (isRangeVar(v)) {
      this.targets.add(v);
    }
  }

  private isCte(name: string): boolean {
    for (const scope of this.ctes) if (scope.includes(name)) return true;
    return false;
  }
}

/** Whether expression `v` reads no column but `column` (bare, or qualified by one of `names`), and runs no subquery. */
function onlyColumn(v: unknown, column: string, names: ReadonlySet<string>): boolean {
  if (Array.isArray(v)) return v.every((x) => onlyColumn(x, column, names));
  if (v === null || typeof v !== "object") return true;
  const o = v as Obj;
  if (o.SubLink !== undefined || o.A_Star !== undefined) return false;
  const ref = o.ColumnRef as Obj | undefined;
  if (ref) {
    const parts = ((ref.fields as Obj[] | undefined) ?? []).map((f) => (f.String as Obj | undefined)?.sval);
    if (parts.some((p) => typeof p !== "string")) return false;
    if (parts.length === 1) return parts[0] === column;
    return parts.length === 2 && names.has(parts[0] as string) && parts[1] === column;
  }
  for (const key in o) if (!onlyColumn(o[key], column, names)) return false;
  return true;
}

function isRangeVar(v: unknown): v is Obj {
  return v !== null && typeof v === "object" && typeof (v as Obj).relname === "string";
}

/** `{ColumnRef: {fields: […, {A_Star: {}}]}}`: `*` or `t.*`. */
function isStar(v: unknown): boolean {
  const fields = ((v as Obj | undefined)?.ColumnRef as Obj | undefined)?.fields as Obj[] | undefined;
  return fields?.at(-1)?.A_Star !== undefined;
}

/** "catalog.schema.rel", "schema.rel" or "rel", as written. */
function qualifiedName(rv: Obj): string | undefined {
  if (typeof rv.relname !== "string") return undefined;
  let name = rv.relname;
  if (typeof rv.schemaname === "string") name = `${rv.schemaname}.${name}`;
  if (typeof rv.catalogname === "string") name = `${rv.catalogname}.${name}`;
  return name;
}

/** The strings of a list of String nodes (`[{String: {sval}}]`). */
function nameItems(v: unknown): string[] {
  const names: string[] = [];
  if (!Array.isArray(v)) return names;
  for (const item of v) {
    const s = ((item as Obj | null)?.String as Obj | undefined)?.sval;
    if (typeof s === "string") names.push(s);
  }
  return names;
}

/** Join a list of String nodes (`[{String: {sval}}]`) with dots. */
function nameList(v: unknown): string | undefined {
  if (!Array.isArray(v) || v.length === 0) return undefined;
  const parts: string[] = [];
  for (const item of v) {
    const s = ((item as Obj | null)?.String as Obj | undefined)?.sval;
    if (typeof s !== "string") return undefined;
    parts.push(s);
  }
  return parts.join(".");
}

// ---------------------------------------------------------------------------
// Tables: kind, tag and written targets per node type

interface NodeRow {
  kind?: string;
  /** A fixed tag, or one computed from the node. Missing: the node name. */
  tag?: string | ((n: Obj) => string);
  /** The RangeVar (or list of wrapped RangeVars) this node writes. */
  writes?: (n: Obj) => unknown;
  /** Relations this node writes that appear as name lists, not RangeVars. */
  writesNames?: (n: Obj) => string[];
}

/** PostgreSQL's name for each ObjectType, as used in "DROP …"/"ALTER …" tags. */
const OBJECT_NOUN: Record<string, string> = {
  OBJECT_ACCESS_METHOD: "ACCESS METHOD",
  OBJECT_AGGREGATE: "AGGREGATE",
  OBJECT_AMOP: "OPERATOR FAMILY",
  OBJECT_AMPROC: "OPERATOR FAMILY",
  OBJECT_ATTRIBUTE: "TYPE",
  OBJECT_CAST: "CAST",
  OBJECT_COLUMN: "TABLE",
  OBJECT_COLLATION: "COLLATION",
  OBJECT_CONVERSION: "CONVERSION",
  OBJECT_DATABASE: "DATABASE",
  OBJECT_DEFAULT: "TABLE",
  OBJECT_DEFACL: "DEFAULT PRIVILEGES",
  OBJECT_DOMAIN: "DOMAIN",
  OBJECT_DOMCONSTRAINT: "DOMAIN",
  OBJECT_EVENT_TRIGGER: "EVENT TRIGGER",
  OBJECT_EXTENSION: "EXTENSION",
  OBJECT_FDW: "FOREIGN DATA WRAPPER",
  OBJECT_FOREIGN_SERVER: "SERVER",
  OBJECT_FOREIGN_TABLE: "FOREIGN TABLE",
  OBJECT_FUNCTION: "FUNCTION",
  OBJECT_INDEX: "INDEX",
  OBJECT_LANGUAGE: "LANGUAGE",
  OBJECT_LARGEOBJECT: "LARGE OBJECT",
  OBJECT_MATVIEW: "MATERIALIZED VIEW",
  OBJECT_OPCLASS: "OPERATOR CLASS",
  OBJECT_OPERATOR: "OPERATOR",
  OBJECT_OPFAMILY: "OPERATOR FAMILY",
  OBJECT_POLICY: "POLICY",
  OBJECT_PROCEDURE: "PROCEDURE",
  OBJECT_PUBLICATION: "PUBLICATION",
  OBJECT_PUBLICATION_NAMESPACE: "PUBLICATION",
  OBJECT_PUBLICATION_REL: "PUBLICATION",
  OBJECT_ROLE: "ROLE",
  OBJECT_ROUTINE: "ROUTINE",
  OBJECT_RULE: "RULE",
  OBJECT_SCHEMA: "SCHEMA",
  OBJECT_SEQUENCE: "SEQUENCE",
  OBJECT_SUBSCRIPTION: "SUBSCRIPTION",
  OBJECT_STATISTIC_EXT: "STATISTICS",
  OBJECT_TABCONSTRAINT: "TABLE",
  OBJECT_TABLE: "TABLE",
  OBJECT_TABLESPACE: "TABLESPACE",
  OBJECT_TRANSFORM: "TRANSFORM",
  OBJECT_TRIGGER: "TRIGGER",
  OBJECT_TSCONFIGURATION: "TEXT SEARCH CONFIGURATION",
  OBJECT_TSDICTIONARY: "TEXT SEARCH DICTIONARY",
  OBJECT_TSPARSER: "TEXT SEARCH PARSER",
  OBJECT_TSTEMPLATE: "TEXT SEARCH TEMPLATE",
  OBJECT_TYPE: "TYPE",
  OBJECT_USER_MAPPING: "USER MAPPING",
  OBJECT_VIEW: "VIEW",
};

/** Object types that name a relation (pg_class row): their names count as writes in DROP/COMMENT. */
const RELATION_OBJECTS = new Set([
  "OBJECT_TABLE",
  "OBJECT_VIEW",
  "OBJECT_MATVIEW",
  "OBJECT_INDEX",
  "OBJECT_SEQUENCE",
  "OBJECT_FOREIGN_TABLE",
]);

const verb = (word: string, field: string, fallback: string) => (n: Obj) => {
  const noun = OBJECT_NOUN[n[field] as string];
  return noun ? `${word} ${noun}` : fallback;
};
const alterTag = (field: string) => verb("ALTER", field, "ALTER");
const relation = (n: Obj) => n.relation;

/** Names in a list of `{List: {items: [String…]}}` (DROP's `objects`). */
function nameLists(v: unknown): string[] {
  const names: string[] = [];
  if (!Array.isArray(v)) return names;
  for (const item of v) {
    const name = nameList(((item as Obj | null)?.List as Obj | undefined)?.items);
    if (name !== undefined) names.push(name);
  }
  return names;
}

const TRANSACTION_TAG: Record<string, string> = {
  TRANS_STMT_BEGIN: "BEGIN",
  TRANS_STMT_START: "START TRANSACTION",
  TRANS_STMT_COMMIT: "COMMIT",
  TRANS_STMT_ROLLBACK: "ROLLBACK",
  TRANS_STMT_ROLLBACK_TO: "ROLLBACK",
  TRANS_STMT_SAVEPOINT: "SAVEPOINT",
  TRANS_STMT_RELEASE: "RELEASE",
  TRANS_STMT_PREPARE: "PREPARE TRANSACTION",
  TRANS_STMT_COMMIT_PREPARED: "COMMIT PREPARED",
  TRANS_STMT_ROLLBACK_PREPARED: "ROLLBACK PREPARED",
};

const DISCARD_TAG: Record<string, string> = {
  DISCARD_ALL: "DISCARD ALL",
  DISCARD_PLANS: "DISCARD PLANS",
  DISCARD_SEQUENCES: "DISCARD SEQUENCES",
  DISCARD_TEMP: "DISCARD TEMP",
};

const ddl = (tag: NodeRow["tag"], writes?: NodeRow["writes"]): NodeRow => ({ kind: "ddl", tag, writes });
const utility = (tag: NodeRow["tag"], writes?: NodeRow["writes"]): NodeRow => ({ kind: "utility", tag, writes });

/**
 * One row per statement node: kind, command tag (after PostgreSQL's
 * CreateCommandTag in src/backend/tcop/utility.c) and written targets.
 * Node types missing here are kind "utility" with the node name as tag.
 * A few rows are not top-level statements (VacuumRelation, PartitionCmd)
 * and only contribute written targets.
 */
const NODES: Record<string, NodeRow> = {
  // Plannable queries
  SelectStmt: {
    kind: "select",
    tag: (n) => (n.intoClause ? "SELECT INTO" : "SELECT"),
    writes: (n) => (n.intoClause as Obj | undefined)?.rel,
  },
  InsertStmt: { kind: "insert", tag: "INSERT", writes: relation },
  UpdateStmt: { kind: "update", tag: "UPDATE", writes: relation },
  DeleteStmt: { kind: "delete", tag: "DELETE", writes: relation },
  MergeStmt: { kind: "merge", tag: "MERGE", writes: relation },
  CopyStmt: { kind: "copy", tag: "COPY", writes: (n) => (n.is_from === true ? n.relation : undefined) },

  // Session, transaction and client-side statements
  TransactionStmt: { kind: "transaction", tag: (n) => TRANSACTION_TAG[n.kind as string] ?? "TRANSACTION" },
  VariableSetStmt: {
    kind: "set",
    tag: (n) => (n.kind === "VAR_RESET" || n.kind === "VAR_RESET_ALL" ? "RESET" : "SET"),
  },
  VariableShowStmt: { kind: "show", tag: "SHOW" },
  ExplainStmt: { kind: "explain", tag: "EXPLAIN" },
  CallStmt: { kind: "call", tag: "CALL" },
  PrepareStmt: { kind: "prepare", tag: "PREPARE" },
  ExecuteStmt: { kind: "execute", tag: "EXECUTE" },
  DoStmt: { kind: "do", tag: "DO" },

  // DDL: tables and other relations
  CreateStmt: ddl("CREATE TABLE", relation),
  CreateForeignTableStmt: ddl("CREATE FOREIGN TABLE", (n) => (n.base as Obj | undefined)?.relation),
  CreateTableAsStmt: ddl(
    (n) =>
      n.objtype === "OBJECT_MATVIEW"
        ? "CREATE MATERIALIZED VIEW"
        : n.is_select_into === true
          ? "SELECT INTO"
          : "CREATE TABLE AS",
    (n) => (n.into as Obj | undefined)?.rel,
  ),
  ViewStmt: ddl("CREATE VIEW", (n) => n.view),
  RefreshMatViewStmt: ddl("REFRESH MATERIALIZED VIEW", relation),
  CreateSeqStmt: ddl("CREATE SEQUENCE", (n) => n.sequence),
  AlterSeqStmt: ddl("ALTER SEQUENCE", (n) => n.sequence),
  IndexStmt: ddl("CREATE INDEX", relation),
  AlterTableStmt: ddl(alterTag("objtype"), relation),
  AlterTableMoveAllStmt: ddl(alterTag("objtype")),
  PartitionCmd: { writes: (n) => n.name },
  TruncateStmt: ddl("TRUNCATE TABLE", (n) => n.relations),
  DropStmt: {
    kind: "ddl",
    tag: verb("DROP", "removeType", "DROP"),
    writesNames: (n) => (RELATION_OBJECTS.has(n.removeType as string) ? nameLists(n.objects) : []),
  },
  RenameStmt: ddl(alterTag("renameType"), relation),
  AlterObjectSchemaStmt: ddl(alterTag("objectType"), relation),
  AlterOwnerStmt: ddl(alterTag("objectType"), relation),
  AlterObjectDependsStmt: ddl(alterTag("objectType"), relation),
  RuleStmt: ddl("CREATE RULE", relation),
  CreateTrigStmt: ddl("CREATE TRIGGER", relation),
  CreatePolicyStmt: ddl("CREATE POLICY", (n) => n.table),
  AlterPolicyStmt: ddl("ALTER POLICY", (n) => n.table),
  CreateStatsStmt: ddl("CREATE STATISTICS"),
  AlterStatsStmt: ddl("ALTER STATISTICS"),
  CommentStmt: {
    kind: "ddl",
    tag: "COMMENT",
    writesNames: (n) => (RELATION_OBJECTS.has(n.objtype as string) ? nameLists([n.object]) : []),
  },
  SecLabelStmt: {
    kind: "ddl",
    tag: "SECURITY LABEL",
    writesNames: (n) => (RELATION_OBJECTS.has(n.objtype as string) ? nameLists([n.object]) : []),
  },
  GrantStmt: ddl((n) => (n.is_grant === true ? "GRANT" : "REVOKE"), (n) => n.objects),

  // DDL: everything else
  GrantRoleStmt: ddl((n) => (n.is_grant === true ? "GRANT ROLE" : "REVOKE ROLE")),
  AlterDefaultPrivilegesStmt: ddl("ALTER DEFAULT PRIVILEGES"),
  CreateSchemaStmt: ddl("CREATE SCHEMA"),
  CreateDomainStmt: ddl("CREATE DOMAIN"),
  AlterDomainStmt: ddl("ALTER DOMAIN"),
  DefineStmt: ddl(verb("CREATE", "kind", "CREATE")),
  CompositeTypeStmt: ddl("CREATE TYPE", (n) => n.typevar),
  CreateEnumStmt: ddl("CREATE TYPE"),
  CreateRangeStmt: ddl("CREATE TYPE"),
  AlterEnumStmt: ddl("ALTER TYPE"),
  AlterTypeStmt: ddl("ALTER TYPE"),
  CreateFunctionStmt: ddl((n) => (n.is_procedure === true ? "CREATE PROCEDURE" : "CREATE FUNCTION")),
  AlterFunctionStmt: ddl(alterTag("objtype")),
  AlterOperatorStmt: ddl("ALTER OPERATOR"),
  CreateOpClassStmt: ddl("CREATE OPERATOR CLASS"),
  CreateOpFamilyStmt: ddl("CREATE OPERATOR FAMILY"),
  AlterOpFamilyStmt: ddl("ALTER OPERATOR FAMILY"),
  CreateCastStmt: ddl("CREATE CAST"),
  CreateConversionStmt: ddl("CREATE CONVERSION"),
  CreateTransformStmt: ddl("CREATE TRANSFORM"),
  AlterCollationStmt: ddl("ALTER COLLATION"),
  AlterTSDictionaryStmt: ddl("ALTER TEXT SEARCH DICTIONARY"),
  AlterTSConfigurationStmt: ddl("ALTER TEXT SEARCH CONFIGURATION"),
  CreateExtensionStmt: ddl("CREATE EXTENSION"),
  AlterExtensionStmt: ddl("ALTER EXTENSION"),
  AlterExtensionContentsStmt: ddl("ALTER EXTENSION"),
  CreatePLangStmt: ddl("CREATE LANGUAGE"),
  CreateAmStmt: ddl("CREATE ACCESS METHOD"),
  CreateEventTrigStmt: ddl("CREATE EVENT TRIGGER"),
  AlterEventTrigStmt: ddl("ALTER EVENT TRIGGER"),
  CreateFdwStmt: ddl("CREATE FOREIGN DATA WRAPPER"),
  AlterFdwStmt: ddl("ALTER FOREIGN DATA WRAPPER"),
  CreateForeignServerStmt: ddl("CREATE SERVER"),
  AlterForeignServerStmt: ddl("ALTER SERVER"),
  CreateUserMappingStmt: ddl("CREATE USER MAPPING"),
  AlterUserMappingStmt: ddl("ALTER USER MAPPING"),
  DropUserMappingStmt: ddl("DROP USER MAPPING"),
  ImportForeignSchemaStmt: ddl("IMPORT FOREIGN SCHEMA"),
  CreatePublicationStmt: ddl("CREATE PUBLICATION"),
  AlterPublicationStmt: ddl("ALTER PUBLICATION"),
  CreateSubscriptionStmt: ddl("CREATE SUBSCRIPTION"),
  AlterSubscriptionStmt: ddl("ALTER SUBSCRIPTION"),
  DropSubscriptionStmt: ddl("DROP SUBSCRIPTION"),
  CreateRoleStmt: ddl("CREATE ROLE"),
  AlterRoleStmt: ddl("ALTER ROLE"),
  AlterRoleSetStmt: ddl("ALTER ROLE"),
  DropRoleStmt: ddl("DROP ROLE"),
  DropOwnedStmt: ddl("DROP OWNED"),
  ReassignOwnedStmt: ddl("REASSIGN OWNED"),
  CreatedbStmt: ddl("CREATE DATABASE"),
  AlterDatabaseStmt: ddl("ALTER DATABASE"),
  AlterDatabaseSetStmt: ddl("ALTER DATABASE"),
  AlterDatabaseRefreshCollStmt: ddl("ALTER DATABASE"),
  DropdbStmt: ddl("DROP DATABASE"),
  CreateTableSpaceStmt: ddl("CREATE TABLESPACE"),
  AlterTableSpaceOptionsStmt: ddl("ALTER TABLESPACE"),
  DropTableSpaceStmt: ddl("DROP TABLESPACE"),
  AlterSystemStmt: ddl("ALTER SYSTEM"),

  // Utility. Maintenance that rewrites a relation or its storage counts it as written.
  VacuumStmt: utility((n) => (n.is_vacuumcmd === true ? "VACUUM" : "ANALYZE")),
  VacuumRelation: { writes: relation },
  ClusterStmt: utility("CLUSTER", relation),
  ReindexStmt: utility("REINDEX", relation),
  LockStmt: utility("LOCK TABLE"),
  CheckPointStmt: utility("CHECKPOINT"),
  LoadStmt: utility("LOAD"),
  DiscardStmt: utility((n) => DISCARD_TAG[n.target as string] ?? "DISCARD"),
  DeclareCursorStmt: utility("DECLARE CURSOR"),
  FetchStmt: utility((n) => (n.ismove === true ? "MOVE" : "FETCH")),
  ClosePortalStmt: utility((n) => (typeof n.portalname === "string" ? "CLOSE CURSOR" : "CLOSE CURSOR ALL")),
  DeallocateStmt: utility((n) => (n.isall === true ? "DEALLOCATE ALL" : "DEALLOCATE")),
  ConstraintsSetStmt: utility("SET CONSTRAINTS"),
  ListenStmt: utility("LISTEN"),
  UnlistenStmt: utility("UNLISTEN"),
  NotifyStmt: utility("NOTIFY"),
};

function tagOf(type: string, node: Obj, row: NodeRow | undefined): string {
  const tag = row?.tag;
  if (typeof tag === "string") return tag;
  if (tag) return tag(node);
  return type;
}
