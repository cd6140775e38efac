/**
 * Catalog facts: what the target's own catalog says about the functions,
 * relations and settings a statement names, added to its SQL facts before
 * the policy decides (SqlStatement.calls, .relations, .settings[].context;
 * SqlFacts.catalog).
 *
 * Names are resolved the way that fails closed. The session's search_path
 * is the client's to change (SET search_path is allowed), so an unqualified
 * name stands for every candidate of that name in any schema: `UPDATE
 * pg_class` is a write to pg_catalog.pg_class (and to any other pg_class),
 * `now()` is every function called now, and a rule that denies any
 * candidate denies the call. Function names are matched without regard to
 * case (the parser's facts are lower-case), which also only adds
 * candidates.
 *
 * Lookups go through the gateway's own catalog connection (catalog.ts,
 * search_path ''), one round trip for everything a statement names that is
 * not cached. The cache holds answers, found or not, until the policy
 * version changes or CACHE_MS passes. A statement whose names are all
 * cached is completed synchronously; facts already completed in this cache
 * generation are returned as they are (no allocation), which is the path of
 * repeated statements. A lookup that fails completes the facts with
 * `catalog: {known: false, error}`; the policy refuses what needs them.
 */
import type postgres from "postgres";
import type { Command, SqlCall, SqlColumnRef, SqlFacts, SqlRelation, SqlSetting, SqlStatement } from "../../core/types.ts";
import type { Catalog } from "./catalog.ts";

const CACHE_MS = 60_000;
/** A lookup that takes longer than this counts as failed (the facts are then unknown). */
const LOOKUP_TIMEOUT_MS = 10_000;
/** Names held at most (all kinds together); beyond, the cache starts afresh (names invented by a client cannot grow it without bound). */
const MAX_CACHED = 50_000;
/** Names per kind looked up in one round trip at most; a statement naming more is looked up in several. */
const MAX_NAMES = 1000;

const FUNCTION_KINDS: Record<string, string> = { f: "function", p: "procedure", a: "aggregate", w: "window" };
const VOLATILITY: Record<string, string> = { i: "immutable", s: "stable", v: "volatile" };
const RELATION_KINDS: Record<string, string> = {
  r: "table",
  p: "partitioned table",
  v: "view",
  m: "materialized view",
  f: "foreign table",
  S: "sequence",
  i: "index",
  I: "partitioned index",
  c: "composite type",
  t: "toast table",
};
/** Names in SqlSetting that are not in pg_settings but change only what any user may change. */
const PSEUDO_SETTINGS: Record<string, string> = { all: "user", transaction_snapshot: "user" };

/**
 * Shared empty list. Lists here are never frozen (Bun's JSON.stringify is
 * slow on frozen arrays, see sql.ts freezeFacts) and MUST be treated as
 * read-only: they are shared through the cache. Their objects are frozen.
 */
const EMPTY: never[] = [];

/** The schema catalogs live in: pg_catalog, information_schema, pg_toast (and its per-session pg_toast_temp_N). */
export function isCatalogSchema(schema: string): boolean {
  return schema === "pg_catalog" || schema === "information_schema" || schema.startsWith("pg_toast");
}

interface ProcRow {
  key: string;
  schema: string;
  kind: string;
  volatility: string;
  language: string;
  trusted: boolean;
  security_definer: boolean;
  builtin: boolean;
  public: boolean;
  extension: string | null;
}

/** One generation of answers, by name as written. */
interface Cache {
  gen: string;
  calls: Map<string, readonly SqlCall[]>;
  reads: Map<string, readonly SqlRelation[]>;
  writes: Map<string, readonly SqlRelation[]>;
  settings: Map<string, string>;
  /** Per relation name as written: the columns of every candidate (for SqlStatement.sources). */
  columns: Map<string, readonly RelationColumns[]>;
  /** Per relation name as written: whether some candidate runs code of its own when read (rules, row security) or written (and user triggers, defaults and constraints). */
  hooks: Map<string, RelationHooks>;
  /** Whether the target has operators, casts or domain checks that run a user's code (USER_CODE); undefined until asked. */
  hiddenCode?: boolean;
}

/**
 * A function (pg_proc p) that is a user's code for early.ts: not built in,
 * and volatile or in a language other than C (an extension's C function
 * declared immutable or stable is taken at its word; a SQL or PL function
 * may call anything, whatever it declares).
 */
const USER_CODE = `p.oid >= 16384 AND (p.provolatile = 'v' OR p.prolang NOT IN (SELECT l.oid FROM pg_catalog.pg_language l WHERE l.lanname IN ('c', 'internal')))`;

/** Operators, casts and domain checks that run a user's code: a statement reaches them without naming a function. */
const HIDDEN_CODE = `SELECT EXISTS (SELECT FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode WHERE ${USER_CODE})
  OR EXISTS (SELECT FROM pg_catalog.pg_cast k JOIN pg_catalog.pg_proc p ON p.oid = k.castfunc WHERE ${USER_CODE})
  OR EXISTS (SELECT FROM pg_catalog.pg_constraint co JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass AND d.objid = co.oid
             JOIN pg_catalog.pg_proc p ON d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND p.oid = d.refobjid
             WHERE co.contypid <> 0 AND ${USER_CODE}) AS hidden`;

/** Whether reading or writing a relation may run code the statement does not name (early.ts). */
export interface RelationHooks {
  read: boolean;
  write: boolean;
}

/**
 * The columns of one relation: its own (`own`, lower-case names), and every
 * base column whose value reading it may give: its own columns, its
 * ancestors' (partitions, inheritance: same names) and, for a view, every
 * base column its rewrite rule depends on (recursively). `named` is the
 * name a base column is read under, null for one behind a view (any of the
 * view's columns may carry it).
 */
interface RelationColumns {
  own: ReadonlySet<string>;
  bases: readonly { ref: SqlColumnRef; named: string | null }[];
}

/**
 * Functions that run a query given as text or name a relation by a string
 * (their reads are invisible to the parser): a statement calling one may
 * return any relation's values.
 */
const QUERY_FUNCTIONS = new Set([
  "table_to_xml", "table_to_xmlschema", "table_to_xml_and_xmlschema",
  "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema",
  "cursor_to_xml", "cursor_to_xmlschema",
  "schema_to_xml", "schema_to_xmlschema", "schema_to_xml_and_xmlschema",
  "database_to_xml", "database_to_xmlschema", "database_to_xml_and_xmlschema",
  "dblink", "dblink_exec", "dblink_send_query", "dblink_get_result", "dblink_fetch",
]);

/**
 * For relations named $1: every base column reading each may give (see
 * RelationColumns), following views' rewrite-rule dependencies and
 * ancestors, at most 32 levels deep.
 */
const RELATION_COLUMNS = `
  WITH RECURSIVE up(root, relid, attnum, via_view, depth) AS (
    SELECT c.oid, c.oid, NULL::pg_catalog.int4, false, 0 FROM pg_catalog.pg_class c WHERE c.relname = ANY($1::pg_catalog.text[])
    UNION
    SELECT up.root, COALESCE(d.refobjid, i.inhparent), CASE WHEN d.refobjid IS NOT NULL THEN d.refobjsubid END,
           up.via_view OR d.refobjid IS NOT NULL, up.depth + 1
    FROM up
    LEFT JOIN (pg_catalog.pg_rewrite rw JOIN pg_catalog.pg_depend d
               ON d.objid = rw.oid AND d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
              AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid <> rw.ev_class AND d.refobjsubid > 0)
      ON rw.ev_class = up.relid
    LEFT JOIN pg_catalog.pg_inherits i ON i.inhrelid = up.relid
    WHERE up.depth < 32 AND (d.refobjid IS NOT NULL OR i.inhparent IS NOT NULL)
  )
  SELECT DISTINCT r.relname AS key, rn.nspname AS schema, up.depth = 0 AS own, NOT up.via_view AS named,
         n.nspname AS bschema, c.relname AS btable, a.attname AS bcolumn
  FROM up
  JOIN pg_catalog.pg_class r ON r.oid = up.root JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
  JOIN pg_catalog.pg_class c ON c.oid = up.relid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_attribute a ON a.attrelid = up.relid AND a.attnum > 0 AND NOT a.attisdropped
   AND (up.attnum IS NULL OR a.attnum = up.attnum)`;

/** What a statement list names that the cache does not answer yet. */
interface Missing {
  functions: Set<string>;
  relations: Set<string>;
  settings: Set<string>;
}

type Query = <T extends readonly object[]>(text: string, params: unknown[]) => Promise<T>;

export class CatalogFacts {
  private cache: Cache = newCache("");
  private readonly completed = new WeakMap<SqlFacts, { gen: string; out: SqlFacts }>();

  /** `query` runs one statement on the catalog connection; `now` is for tests. */
  constructor(
    private readonly query: Query,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * Replace `command.sql` with its facts completed from the catalog:
   * synchronously when every name is cached (returns undefined), else the
   * returned promise does it after one lookup. Never rejects: a failed
   * lookup completes the facts as unknown.
   */
  complete(command: Command, policyVersion: string): Promise<void> | undefined {
    const facts = command.sql;
    if (facts === undefined || facts.statements.length === 0) return undefined;
    const cache = this.generation(policyVersion);
    const done = this.completed.get(facts);
    if (done !== undefined && done.gen === cache.gen) {
      command.sql = done.out;
      return undefined;
    }
    const missing = this.missing(facts, cache);
    if (missing === undefined) {
      command.sql = this.build(facts, cache);
      return undefined;
    }
    return this.lookup(missing, cache).then(
      () => {
        command.sql = this.build(facts, cache);
      },
      (e: unknown) => {
        command.sql = unknown(facts, e instanceof Error ? e.message : String(e));
      },
    );
  }

  /**
   * Whether reading or writing relation `name` (as written) may run code
   * the statement does not name: a rule, a row-security policy, or (on
   * writes) a user trigger, on any candidate. Undefined when the current
   * cache does not know the name (complete() the statement first).
   */
  hooks(name: string): RelationHooks | undefined {
    return this.cache.hooks.get(name);
  }

  /** Whether the target has operators, casts or domain checks that run a user's code (see USER_CODE); undefined when not known yet. */
  get hiddenCode(): boolean | undefined {
    return this.cache.hiddenCode;
  }

  /** Drop every cached answer (a DDL statement ran through agate: lineage must not be stale). */
  invalidate(): void {
    this.epoch++;
    this.cache = newCache("");
  }

  private epoch = 0;

  private generation(version: string): Cache {
    const gen = `${version}\0${Math.floor(this.now() / CACHE_MS)}\0${this.epoch}`;
    const c = this.cache;
    if (c.gen !== gen || c.calls.size + c.reads.size + c.settings.size > MAX_CACHED) this.cache = newCache(gen);
    return this.cache;
  }

  private missing(facts: SqlFacts, cache: Cache): Missing | undefined {
    let m: Missing | undefined;
    const need = () => (m ??= { functions: new Set(), relations: new Set(), settings: new Set() });
    for (const st of facts.statements) {
      for (const f of st.functions) if (!cache.calls.has(f)) need().functions.add(f);
      for (const r of st.reads) if (!cache.reads.has(r)) need().relations.add(r);
      for (const r of st.writes) if (!cache.writes.has(r)) need().relations.add(r);
      for (const s of st.settings) if (s.name !== null && !cache.settings.has(s.name)) need().settings.add(s.name);
    }
    if (cache.hiddenCode === undefined) need();
    return m;
  }

  private async lookup(m: Missing, cache: Cache): Promise<void> {
    if (cache.hiddenCode === undefined) {
      const [row] = await timed(this.query<{ hidden: boolean }[]>(HIDDEN_CODE, []));
      cache.hiddenCode = row?.hidden ?? true;
    }
    const functions = [...m.functions];
    const relations = [...m.relations];
    const settings = [...m.settings];
    for (let at = 0; at < Math.max(functions.length, relations.length, settings.length); at += MAX_NAMES) {
      const f = functions.slice(at, at + MAX_NAMES);
      const r = relations.slice(at, at + MAX_NAMES);
      const s = settings.slice(at, at + MAX_NAMES);
      await timed(Promise.all([this.functions(f, cache), this.relations(r, cache), this.settings(s, cache)]));
    }
  }

  private async functions(names: string[], cache: Cache): Promise<void> {
    if (names.length === 0) return;
    const keys = [...new Set(names.map((n) => lastPart(n)))];
    const [procs, types] = await Promise.all([
      this.query<ProcRow[]>(
        `SELECT pg_catalog.lower(p.proname) AS key, n.nspname AS schema, p.prokind::pg_catalog.text AS kind,
                p.provolatile::pg_catalog.text AS volatility, l.lanname AS language, l.lanpltrusted AS trusted,
                p.prosecdef AS security_definer, p.oid::pg_catalog.int8 < 16384 AS builtin,
                (p.proacl IS NULL OR EXISTS (SELECT FROM pg_catalog.aclexplode(p.proacl) a
                                             WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE')) AS public,
                (SELECT e.extname FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
                 WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid
                   AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass AND d.deptype = 'e' LIMIT 1) AS extension
         FROM pg_catalog.pg_proc p
         JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
         JOIN pg_catalog.pg_language l ON l.oid = p.prolang
         WHERE pg_catalog.lower(p.proname) = ANY($1::pg_catalog.text[])`,
        [keys],
      ),
      this.query<{ key: string; schema: string }[]>(
        `SELECT pg_catalog.lower(t.typname) AS key, n.nspname AS schema
         FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
         WHERE pg_catalog.lower(t.typname) = ANY($1::pg_catalog.text[])`,
        [keys],
      ),
    ]);
    for (const name of names) {
      const { key, schema } = split(name);
      const inSchema = (s: string) => schema === undefined || s.toLowerCase() === schema || (schema === "pg_temp" && s.startsWith("pg_temp"));
      const found: SqlCall[] = [];
      for (const p of procs) {
        if (p.key !== key || !inSchema(p.schema)) continue;
        found.push(
          Object.freeze({
            name,
            found: true,
            schema: p.schema,
            kind: FUNCTION_KINDS[p.kind] ?? p.kind,
            public: p.public,
            volatility: VOLATILITY[p.volatility] ?? p.volatility,
            language: p.language,
            trusted: p.trusted,
            security_definer: p.security_definer,
            builtin: p.builtin,
            extension: p.extension,
          }),
        );
      }
      if (found.length === 0) {
        const type = types.some((t) => t.key === key && inSchema(t.schema));
        found.push(Object.freeze({ name, found: false, type, schema: schema ?? null, kind: null, public: null, volatility: null, language: null, trusted: null, security_definer: null, builtin: null, extension: null }));
      }
      cache.calls.set(name, found);
    }
  }

  private async relations(names: string[], cache: Cache): Promise<void> {
    if (names.length === 0) return;
    const keys = [...new Set(names.map((n) => lastPart(n)))];
    const [rows, cols] = await Promise.all([
      this.query<{ key: string; schema: string; kind: string; rules: boolean; triggers: boolean; rls: boolean; code: boolean }[]>(
        `SELECT c.relname AS key, n.nspname AS schema, c.relkind::pg_catalog.text AS kind,
                c.relhasrules AS rules, c.relrowsecurity AS rls,
                c.relhastriggers AND EXISTS (SELECT FROM pg_catalog.pg_trigger tg WHERE tg.tgrelid = c.oid AND NOT tg.tgisinternal) AS triggers,
                EXISTS (SELECT FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_proc p ON d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND p.oid = d.refobjid
                        WHERE ${USER_CODE}
                          AND ((d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND d.objid IN (SELECT ad.oid FROM pg_catalog.pg_attrdef ad WHERE ad.adrelid = c.oid))
                            OR (d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass AND d.objid IN (SELECT co.oid FROM pg_catalog.pg_constraint co WHERE co.conrelid = c.oid)))) AS code
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relname = ANY($1::pg_catalog.text[])`,
        [keys],
      ),
      this.query<{ key: string; schema: string; own: boolean; named: boolean; bschema: string; btable: string; bcolumn: string }[]>(RELATION_COLUMNS, [keys]),
    ]);
    const byRelation = new Map<string, { own: Set<string>; bases: { ref: SqlColumnRef; named: string | null }[] }>();
    for (const c of cols) {
      const k = `${c.schema}\0${c.key}`;
      let r = byRelation.get(k);
      if (r === undefined) byRelation.set(k, (r = { own: new Set(), bases: [] }));
      if (c.own) r.own.add(c.bcolumn.toLowerCase());
      r.bases.push({ ref: Object.freeze({ schema: c.bschema, table: c.btable, column: c.bcolumn }), named: c.named ? c.bcolumn.toLowerCase() : null });
    }
    for (const name of names) {
      const { schema } = split(name, false);
      const key = lastPart(name);
      const inSchema = (s: string) => schema === undefined || s === schema || (schema === "pg_temp" && s.startsWith("pg_temp"));
      const candidates = rows.filter((r) => r.key === key && inSchema(r.schema));
      // (A catalog's own views have rules too; they run nothing a client wrote.)
      const own = candidates.filter((r) => !isCatalogSchema(r.schema));
      cache.hooks.set(name, { read: own.some((r) => r.rules || r.rls), write: own.some((r) => r.rules || r.rls || r.triggers || r.code) });
      cache.columns.set(name, candidates.map((r) => byRelation.get(`${r.schema}\0${r.key}`) ?? { own: new Set<string>(), bases: EMPTY }));
      for (const access of ["read", "write"] as const) {
        const list: SqlRelation[] = candidates.map((r) =>
          Object.freeze({ name, access, found: true, schema: r.schema, kind: RELATION_KINDS[r.kind] ?? r.kind, catalog: isCatalogSchema(r.schema) }),
        );
        if (list.length === 0) list.push(Object.freeze({ name, access, found: false, schema: schema ?? null, kind: null, catalog: schema !== undefined && isCatalogSchema(schema) }));
        (access === "read" ? cache.reads : cache.writes).set(name, list);
      }
    }
  }

  private async settings(names: string[], cache: Cache): Promise<void> {
    if (names.length === 0) return;
    const rows = await this.query<{ key: string; context: string }[]>(
      `SELECT pg_catalog.lower(s.name) AS key, s.context FROM pg_catalog.pg_settings s
       WHERE pg_catalog.lower(s.name) = ANY($1::pg_catalog.text[])`,
      [names],
    );
    const context = new Map(rows.map((r) => [r.key, r.context]));
    for (const name of names) cache.settings.set(name, context.get(name) ?? PSEUDO_SETTINGS[name] ?? (name.includes(".") ? "placeholder" : "unknown"));
  }

  /** The facts completed from `cache`, which answers every name in them. */
  private build(facts: SqlFacts, cache: Cache): SqlFacts {
    const statements = facts.statements.map((st) => {
      const out: SqlStatement = {
        ...st,
        calls: gather(st.functions, cache.calls),
        relations: gatherRelations(st, cache),
        settings: st.settings.length === 0 ? st.settings : st.settings.map((s) => withContext(s, s.name === null ? "unknown" : (cache.settings.get(s.name) ?? "unknown"))),
      };
      const calls = out.calls ?? EMPTY;
      out.sources = sourcesOf(st.outputs, st.opaque, st, cache);
      out.copies = sourcesOf(st.written_from, st.written_opaque, st, cache);
      out.sources_opaque = calls.some((c) => QUERY_FUNCTIONS.has(lastPart(c.name)) || (c.found && c.builtin !== true));
      return Object.freeze(out);
    });
    const out: SqlFacts = Object.freeze({ statements, multi: facts.multi, catalog: KNOWN });
    this.completed.set(facts, { gen: cache.gen, out });
    this.completed.set(out, { gen: cache.gen, out });
    return out;
  }
}

const KNOWN = Object.freeze({ known: true });

/** `p`, or a rejection once it took longer than LOOKUP_TIMEOUT_MS. */
async function timed<T>(p: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`the catalog lookup took longer than ${LOOKUP_TIMEOUT_MS / 1000} s`)), LOOKUP_TIMEOUT_MS);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function newCache(gen: string): Cache {
  return { gen, calls: new Map(), reads: new Map(), writes: new Map(), settings: new Map(), columns: new Map(), hooks: new Map() };
}

/** Facts when the catalog could not be asked: no calls or relations, every setting's context unknown. */
function unknown(facts: SqlFacts, error: string): SqlFacts {
  const statements = facts.statements.map((st) =>
    Object.freeze({ ...st, calls: EMPTY, relations: EMPTY, settings: st.settings.map((s) => withContext(s, "unknown")), sources: EMPTY, sources_opaque: true, copies: EMPTY }),
  );
  return Object.freeze({ statements, multi: facts.multi, catalog: Object.freeze({ known: false, error }) });
}

function withContext(s: SqlSetting, context: string): SqlSetting {
  return Object.freeze({ name: s.name, action: s.action, local: s.local, call: s.call, context });
}

function gather<T>(names: readonly string[], from: Map<string, readonly T[]>): T[] {
  if (names.length === 0) return EMPTY;
  if (names.length === 1) return from.get(names[0]!) as T[];
  const out: T[] = [];
  for (const n of names) out.push(...from.get(n)!);
  return out;
}

/**
 * The base columns whose values may flow into a statement's outputs
 * (`outputs`, `opaque`) or into what it writes (`written_from`,
 * `written_opaque`): of every relation it reads or writes, those named
 * (a view's base columns when any of the view's columns is), or all of them
 * when opaque (renamed columns, a star, a whole row).
 */
function sourcesOf(outputs: readonly string[] = EMPTY, opaque: boolean | undefined, st: SqlStatement, cache: Cache): SqlColumnRef[] {
  if (outputs.length === 0 && opaque !== true) return EMPTY;
  const names = new Set(outputs.map((n) => n.toLowerCase()));
  const out: SqlColumnRef[] = [];
  const seen = new Set<string>();
  for (const rel of [...st.reads, ...st.writes]) {
    for (const r of cache.columns.get(rel) ?? EMPTY) {
      let viaView: boolean | undefined;
      for (const b of r.bases) {
        const flows = opaque === true || (b.named !== null ? names.has(b.named) : (viaView ??= [...r.own].some((n) => names.has(n))));
        if (!flows) continue;
        const k = `${b.ref.schema}\0${b.ref.table}\0${b.ref.column}`;
        if (seen.has(k)) continue;
        seen.add(k);
        out.push(b.ref);
      }
    }
  }
  return out.length === 0 ? EMPTY : out;
}

function gatherRelations(st: SqlStatement, cache: Cache): SqlRelation[] {
  if (st.writes.length === 0) return gather(st.reads, cache.reads);
  if (st.reads.length === 0) return gather(st.writes, cache.writes);
  return [...gather(st.reads, cache.reads), ...gather(st.writes, cache.writes)];
}

function lastPart(name: string): string {
  const dot = name.lastIndexOf(".");
  return dot < 0 ? name : name.slice(dot + 1);
}

/** "db.schema.name" → {key: "name", schema: "schema"}; `lower`: function names are compared lower-case. */
function split(name: string, lower = true): { key: string; schema: string | undefined } {
  const parts = name.split(".");
  const key = parts[parts.length - 1]!;
  const schema = parts.length >= 2 ? parts[parts.length - 2] : undefined;
  return { key: lower ? key.toLowerCase() : key, schema: lower ? schema?.toLowerCase() : schema };
}

/**
 * Whether every function that `fn` (a name of `st.functions`) may resolve
 * to is built in, by the statement's catalog facts; undefined when they do
 * not say. For lexing.ts: a built-in function other than set_config cannot
 * change how later text lexes.
 */
export function builtInCall(st: SqlStatement, fn: string): boolean | undefined {
  let seen = false;
  for (const c of st.calls ?? EMPTY) {
    if (c.name !== fn) continue;
    if (!c.found || c.builtin !== true) return false;
    seen = true;
  }
  return seen ? true : undefined;
}

const perCatalog = new WeakMap<Catalog, CatalogFacts>();

/** The facts cache of one target (one per Catalog, so per connection). */
export function catalogFacts(catalog: Catalog): CatalogFacts {
  let f = perCatalog.get(catalog);
  if (f === undefined) {
    const sql = (): postgres.Sql => catalog.connection();
    f = new CatalogFacts((text, params) => sql().unsafe(text, params as postgres.ParameterOrJSON<never>[]) as unknown as Promise<never>);
    perCatalog.set(catalog, f);
  }
  return f;
}
