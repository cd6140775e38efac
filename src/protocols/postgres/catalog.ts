/**
 * Column origins for masking by table.column. RowDescription names, for each
 * result column that is a plain column reference, the relation OID and
 * attribute number it came from; PostgreSQL follows aliases, joins,
 * subqueries and CTEs itself. What it stops at is a view: the origin is then
 * the view's column. The catalog turns (OID, attnum) into names and, for a
 * view, into the base columns behind it:
 *
 * * A view's (or materialized view's) definition is described by PostgreSQL
 *   (Parse + Describe of pg_get_viewdef's text on agate's own connection,
 *   with an empty search_path so every name is qualified): each view column
 *   that is a plain reference gets its origin the same way a query's does,
 *   recursively through views on views.
 * * A view column that is computed (`upper(email) AS e`) has no origin; it
 *   stands for every base column the view's rewrite rule depends on
 *   (pg_depend), which is what a rule could possibly leak through it.
 *
 * Lookups run on one connection per target, with the gateway's own target
 * credentials; results are cached per OID for CACHE_MS (a renamed column is
 * seen anew after that). A partition or an inheritance child is followed to
 * its ancestors: a rule on the parent's column covers the child's. A
 * user-defined type sent as text (an enum, citext) is read as text, a
 * composite as a record. A lookup
 * that fails throws: the caller masks the
 * result whole rather than guess.
 */
import postgres from "postgres";
import { AgateError } from "../../core/errors.ts";
import { FIRST_USER_OID, type UserType } from "./binary.ts";
import { Estimator } from "./estimate.ts";
import { type PgTarget, targetSql } from "./upstream.ts";

/** A named column of a table or view. */
export interface ColumnName {
  schema: string;
  table: string;
  column: string;
}

export interface ColumnOrigin extends ColumnName {
  /** For a view's column: the base columns it shows (a plain reference) or may carry (a computed column). */
  via: ColumnName[];
}

interface Relation {
  schema: string;
  name: string;
  kind: string;
  columns: Map<number, ColumnOrigin>;
  at: number;
}

const CACHE_MS = 60_000;
/** Send functions whose binary output is the value's text (enums, citext …). */
const TEXT = 25;
const RECORD = 2249;
const TEXT_SENDS = new Set(["textsend", "varcharsend", "bpcharsend", "namesend", "enum_send", "unknownsend", "citext_send"]);
/** Views on views deeper than this are refused (PostgreSQL itself has no limit, but no schema needs more). */
const MAX_VIEW_DEPTH = 32;

export class Catalog {
  private sql: postgres.Sql | undefined;
  private readonly relations = new Map<number, Relation>();
  private readonly inflight = new Map<number, Promise<Relation>>();
  private readonly types = new Map<number, { as: number; user?: UserType; at: number }>();
  /** The planner's row estimates for writes (estimate.ts), on a small pool beside this connection. */
  readonly estimator: Estimator;

  constructor(private readonly target: PgTarget) {
    this.estimator = new Estimator(target);
  }

  /**
   * The origin of column `attnum` of relation `oid`: null when it must be
   * looked up (not cached, stale, or a column added since), undefined for a
   * system column.
   */
  cached(oid: number, attnum: number): ColumnOrigin | undefined | null {
    const rel = this.relations.get(oid);
    if (rel === undefined || Date.now() - rel.at > CACHE_MS) return null;
    const c = rel.columns.get(attnum);
    return c === undefined && attnum > 0 ? null : c;
  }

  /** Look the relations `oids` up again (and the views' base relations), into the cache. */
  async load(oids: Iterable<number>): Promise<void> {
    const fresh = [...new Set(oids)];
    for (const oid of fresh) if (!this.inflight.has(oid)) this.relations.delete(oid);
    await Promise.all(fresh.map((oid) => this.relation(oid, 0)));
  }

  /**
   * The built-in type a user-defined type is read as: one sent as text (an
   * enum, citext) as text (25), a composite as record (2249), anything else
   * as itself. null when it must be looked up. (Domains need nothing:
   * RowDescription already names their base type.)
   */
  cachedType(oid: number): number | null {
    const t = this.types.get(oid);
    return t === undefined || Date.now() - t.at > CACHE_MS ? null : t.as;
  }

  /**
   * What a user-defined type is, for reading its binary values (binary.ts
   * fieldText): an array of its element, a range or multirange of its
   * subtype, hstore, or read as another type. undefined when not looked up.
   */
  userType(oid: number): UserType | undefined {
    const t = this.types.get(oid);
    return t === undefined || Date.now() - t.at > CACHE_MS ? undefined : t.user;
  }

  /**
   * Look the types `oids` up, into the cache, and the user-defined types
   * they are made of (element, base type, subtype, a composite's fields),
   * a few levels deep.
   */
  async loadTypes(oids: Iterable<number>): Promise<void> {
    let want = [...new Set(oids)];
    for (let depth = 0; want.length > 0 && depth < 8; depth++) {
      const rows = await this.connection()<{ oid: string; typtype: string; send: string; elem: string; base: string; sub: string | null; msub: string | null; fields: string[] | null }[]>`
        SELECT t.oid::pg_catalog.int8::text AS oid, t.typtype::text AS typtype, t.typsend::text AS send, t.typelem::pg_catalog.int8::text AS elem,
          t.typbasetype::pg_catalog.int8::text AS base, r.rngsubtype::pg_catalog.int8::text AS sub, m.rngsubtype::pg_catalog.int8::text AS msub,
          (SELECT pg_catalog.array_agg(a.atttypid::pg_catalog.int8::text) FROM pg_catalog.pg_attribute a
            WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped) AS fields
        FROM pg_catalog.pg_type t
        LEFT JOIN pg_catalog.pg_range r ON r.rngtypid = t.oid
        LEFT JOIN pg_catalog.pg_range m ON m.rngmultitypid = t.oid
        WHERE t.oid::pg_catalog.int8 = ANY(${want}::pg_catalog.int8[])`;
      const found = new Map(rows.map((r) => [Number(r.oid), r]));
      const at = Date.now();
      const next = new Set<number>();
      for (const oid of want) {
        const r = found.get(oid);
        const fn = r?.send ?? "";
        const as = TEXT_SENDS.has(fn) ? TEXT : fn === "record_send" ? RECORD : r?.typtype === "d" && Number(r.base) < FIRST_USER_OID ? Number(r.base) : oid;
        let user: UserType | undefined;
        if (!r) user = undefined;
        else if (r.typtype === "d") user = { as: Number(r.base) };
        else if (as !== oid) user = { as };
        else if (r.typtype === "r" && r.sub) user = { range: Number(r.sub) };
        else if (r.typtype === "m" && r.msub) user = { multirange: Number(r.msub) };
        else if (fn === "array_send" && r.elem !== "0") user = { array: Number(r.elem) };
        else if (fn === "hstore_send") user = { hstore: true };
        this.types.set(oid, { as, ...(user ? { user } : {}), at });
        for (const o of [r?.elem, r?.base, r?.sub, r?.msub, ...(r?.fields ?? [])]) {
          const n = Number(o ?? 0);
          if (n >= FIRST_USER_OID && this.cachedType(n) === null) next.add(n);
        }
      }
      want = [...next];
    }
  }

  /**
   * Forget every cached origin and type, and what the estimator knows of
   * tables (rules, unique keys): a DDL statement ran through agate (CREATE
   * OR REPLACE VIEW, ALTER TABLE …), so they must be read anew at once.
   * Changes made elsewhere are seen after CACHE_MS.
   */
  invalidate(): void {
    this.relations.clear();
    this.types.clear();
    this.estimator.invalidate();
  }

  async close(): Promise<void> {
    await Promise.all([this.sql?.end({ timeout: 1 }), this.estimator.close()]);
    this.sql = undefined;
  }

  /** The catalog connection (also used for catalog facts, facts.ts). */
  connection(): postgres.Sql {
    this.sql ??= targetSql(this.target, { application_name: "agate catalog", search_path: "" }, { max: 1, idle_timeout: 60 });
    return this.sql;
  }

  private relation(oid: number, depth: number): Promise<Relation> {
    const rel = this.relations.get(oid);
    if (rel && Date.now() - rel.at <= CACHE_MS) return Promise.resolve(rel);
    let p = this.inflight.get(oid);
    if (!p) {
      p = this.fetch(oid, depth).finally(() => this.inflight.delete(oid));
      this.inflight.set(oid, p);
    }
    return p;
  }

  private async fetch(oid: number, depth: number): Promise<Relation> {
    if (depth > MAX_VIEW_DEPTH) throw new AgateError("MASK_LINEAGE", `views nest deeper than ${MAX_VIEW_DEPTH} levels`);
    const sql = this.connection();
    const rows = await sql<{ nspname: string; relname: string; relkind: string; attnum: number | null; attname: string | null }[]>`
      SELECT n.nspname, c.relname, c.relkind::text AS relkind, a.attnum, a.attname
      FROM pg_catalog.pg_class c
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      WHERE c.oid = ${oid}
      ORDER BY a.attnum`;
    if (rows.length === 0) throw new AgateError("MASK_LINEAGE", `relation ${oid} is not in the catalog`);
    const { nspname: schema, relname: name, relkind: kind } = rows[0]!;
    const columns = new Map<number, ColumnOrigin>();
    for (const r of rows) if (r.attnum !== null && r.attname !== null) columns.set(r.attnum, { schema, table: name, column: r.attname, via: [] });
    if (kind === "v" || kind === "m") await this.viewLineage(oid, columns, depth);
    else await this.ancestors(oid, columns);
    const rel: Relation = { schema, name, kind, columns, at: Date.now() };
    this.relations.set(oid, rel);
    return rel;
  }

  /**
   * A partition, or a child table under inheritance, holds its parent's
   * rows: a rule on the parent's column covers the same column read from
   * the child directly (children share their parents' column names).
   */
  private async ancestors(oid: number, columns: Map<number, ColumnOrigin>): Promise<void> {
    const parents = await this.connection()<{ nspname: string; relname: string }[]>`
      WITH RECURSIVE up(relid, depth) AS (
        SELECT i.inhparent, 1 FROM pg_catalog.pg_inherits i WHERE i.inhrelid = ${oid}
        UNION SELECT i.inhparent, up.depth + 1 FROM pg_catalog.pg_inherits i JOIN up ON i.inhrelid = up.relid WHERE up.depth < ${MAX_VIEW_DEPTH}
      )
      SELECT n.nspname, c.relname FROM up JOIN pg_catalog.pg_class c ON c.oid = up.relid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace`;
    if (parents.length === 0) return;
    for (const col of columns.values()) col.via = parents.map((p) => ({ schema: p.nspname, table: p.relname, column: col.column }));
  }

  /** Fill `via` of each view column with the base columns it shows or may carry. */
  private async viewLineage(oid: number, columns: Map<number, ColumnOrigin>, depth: number): Promise<void> {
    const sql = this.connection();
    const [view] = await sql<{ def: string | null }[]>`SELECT pg_catalog.pg_get_viewdef(${oid}::pg_catalog.oid) AS def`;
    if (!view?.def) throw new AgateError("MASK_LINEAGE", `the definition of view ${oid} cannot be read`);
    const described = await sql.unsafe(view.def).describe();
    const deps = await sql<{ refobjid: number; refobjsubid: number }[]>`
      SELECT DISTINCT d.refobjid::int8 AS refobjid, d.refobjsubid
      FROM pg_catalog.pg_depend d
      JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
      WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
        AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
        AND r.ev_class = ${oid} AND d.refobjid <> ${oid} AND d.refobjsubid > 0`;
    const base = async (rel: number, att: number): Promise<ColumnName[]> => {
      const r = await this.relation(Number(rel), depth + 1);
      const c = r.columns.get(att);
      return c ? [{ schema: c.schema, table: c.table, column: c.column }, ...c.via] : [];
    };
    const everything: ColumnName[] = [];
    for (const d of deps) everything.push(...(await base(d.refobjid, d.refobjsubid)));
    await Promise.all(
      described.columns.map(async (col, i) => {
        const mine = columns.get(i + 1);
        if (mine) mine.via = col.table !== 0 ? await base(col.table, col.number) : everything;
      }),
    );
  }
}
