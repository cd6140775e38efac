import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { AgateError } from "../src/core/errors.ts";
import type { SqlStatement } from "../src/core/types.ts";
import { analyzeSql, clearSqlCache, initSql } from "../src/protocols/postgres/sql.ts";
import { literalShape } from "../src/protocols/postgres/sql-shape.ts";

beforeAll(async () => {
  await initSql();
});

/** The one statement of `text`. */
function one(text: string): SqlStatement {
  const facts = analyzeSql(text);
  expect(facts.statements).toHaveLength(1);
  expect(facts.multi).toBe(false);
  return facts.statements[0]!;
}

function codeOf(fn: () => unknown): { code: string; details: Record<string, unknown> } | undefined {
  try {
    fn();
  } catch (e) {
    if (e instanceof AgateError) return { code: e.code, details: e.details };
    throw e;
  }
  return undefined;
}

const sorted = (xs: readonly string[]) => [...xs].sort();

interface Case {
  sql: string;
  kind: string;
  tag: string;
  reads?: string[];
  writes?: string[];
  functions?: string[];
  has_where?: boolean;
}

/** One row per kind (and the tags and relation rules that matter to a policy). */
const CASES: Case[] = [
  // select
  { sql: "select 1", kind: "select", tag: "SELECT" },
  { sql: "select * from t1 join s.t2 using(id)", kind: "select", tag: "SELECT", reads: ["s.t2", "t1"] },
  { sql: "SELECT abalance FROM pgbench_accounts WHERE aid = $1", kind: "select", tag: "SELECT", reads: ["pgbench_accounts"] },
  { sql: "select * from db.s.t", kind: "select", tag: "SELECT", reads: ["db.s.t"] },
  { sql: "select 1 from a union select 2 from b", kind: "select", tag: "SELECT", reads: ["a", "b"] },
  // insert / update / delete / merge
  { sql: "insert into t (a) values (now())", kind: "insert", tag: "INSERT", writes: ["t"], functions: ["now"] },
  { sql: "insert into s.t select * from u on conflict do nothing", kind: "insert", tag: "INSERT", reads: ["u"], writes: ["s.t"] },
  { sql: "update t set a = 1 where id = $1", kind: "update", tag: "UPDATE", writes: ["t"], has_where: true },
  { sql: "update t set a = u.a from u", kind: "update", tag: "UPDATE", reads: ["u"], writes: ["t"], has_where: false },
  { sql: "delete from t", kind: "delete", tag: "DELETE", writes: ["t"], has_where: false },
  { sql: "delete from s.t using u where s.t.id = u.id", kind: "delete", tag: "DELETE", reads: ["u"], writes: ["s.t"], has_where: true },
  { sql: "merge into t using s on t.id = s.id when matched then delete", kind: "merge", tag: "MERGE", reads: ["s"], writes: ["t"] },
  // transaction, set, show
  { sql: "begin", kind: "transaction", tag: "BEGIN" },
  { sql: "start transaction isolation level serializable", kind: "transaction", tag: "START TRANSACTION" },
  { sql: "commit", kind: "transaction", tag: "COMMIT" },
  { sql: "rollback to savepoint a", kind: "transaction", tag: "ROLLBACK" },
  { sql: "set search_path = app, public", kind: "set", tag: "SET" },
  { sql: "reset all", kind: "set", tag: "RESET" },
  { sql: "show work_mem", kind: "show", tag: "SHOW" },
  // explain, call, prepare, execute, do
  { sql: "explain select * from t", kind: "explain", tag: "EXPLAIN", reads: ["t"] },
  { sql: "explain analyze delete from t", kind: "explain", tag: "EXPLAIN", writes: ["t"], has_where: false },
  { sql: "call s.Archive(now())", kind: "call", tag: "CALL", functions: ["now", "s.archive"] },
  { sql: "prepare p as delete from t where id = $1", kind: "prepare", tag: "PREPARE", writes: ["t"], has_where: true },
  { sql: "execute p(1)", kind: "execute", tag: "EXECUTE" },
  { sql: "do $$ begin perform 1; end $$", kind: "do", tag: "DO" },
  // ddl
  { sql: "drop table x, s.y", kind: "ddl", tag: "DROP TABLE", writes: ["s.y", "x"] },
  { sql: "drop index if exists i", kind: "ddl", tag: "DROP INDEX", writes: ["i"] },
  { sql: "drop materialized view mv", kind: "ddl", tag: "DROP MATERIALIZED VIEW", writes: ["mv"] },
  { sql: "drop function f(int)", kind: "ddl", tag: "DROP FUNCTION" },
  { sql: "drop schema s cascade", kind: "ddl", tag: "DROP SCHEMA" },
  {
    sql: "create table s.t (id int default nextval('seq'), o int references o(id), like tpl)",
    kind: "ddl",
    tag: "CREATE TABLE",
    reads: ["o", "tpl"],
    writes: ["s.t"],
    functions: ["nextval"],
  },
  { sql: "create table t2 as select * from t", kind: "ddl", tag: "CREATE TABLE AS", reads: ["t"], writes: ["t2"] },
  { sql: "select * into t2 from t", kind: "ddl", tag: "SELECT INTO", reads: ["t"], writes: ["t2"] },
  { sql: "create materialized view mv as select count(*) from t", kind: "ddl", tag: "CREATE MATERIALIZED VIEW", reads: ["t"], writes: ["mv"], functions: ["count"] },
  { sql: "create view v as select * from t", kind: "ddl", tag: "CREATE VIEW", reads: ["t"], writes: ["v"] },
  { sql: "alter table t add column c int", kind: "ddl", tag: "ALTER TABLE", writes: ["t"] },
  { sql: "alter table t rename to u", kind: "ddl", tag: "ALTER TABLE", writes: ["t"] },
  { sql: "alter table p attach partition c for values in (1)", kind: "ddl", tag: "ALTER TABLE", writes: ["c", "p"] },
  { sql: "truncate a, s.b", kind: "ddl", tag: "TRUNCATE TABLE", writes: ["a", "s.b"] },
  { sql: "create index i on t (lower(c))", kind: "ddl", tag: "CREATE INDEX", writes: ["t"], functions: ["lower"] },
  { sql: "grant select on t, s.u to bob", kind: "ddl", tag: "GRANT", writes: ["s.u", "t"] },
  { sql: "revoke all on schema s from bob", kind: "ddl", tag: "REVOKE" },
  { sql: "comment on table s.t is 'x'", kind: "ddl", tag: "COMMENT", writes: ["s.t"] },
  { sql: "create role bob login", kind: "ddl", tag: "CREATE ROLE" },
  { sql: "alter system set wal_level = minimal", kind: "ddl", tag: "ALTER SYSTEM" },
  { sql: "create function f() returns int language sql as 'select 1'", kind: "ddl", tag: "CREATE FUNCTION" },
  // utility
  { sql: "vacuum full t", kind: "utility", tag: "VACUUM", writes: ["t"] },
  { sql: "analyze t", kind: "utility", tag: "ANALYZE", writes: ["t"] },
  { sql: "lock table t in access exclusive mode", kind: "utility", tag: "LOCK TABLE", reads: ["t"] },
  { sql: "listen ch", kind: "utility", tag: "LISTEN" },
  { sql: "load 'auto_explain'", kind: "utility", tag: "LOAD" },
  { sql: "checkpoint", kind: "utility", tag: "CHECKPOINT" },
  { sql: "discard all", kind: "utility", tag: "DISCARD ALL" },
  { sql: "deallocate all", kind: "utility", tag: "DEALLOCATE ALL" },
];

describe("analyzeSql: kinds, tags, relations, functions", () => {
  test.each(CASES)("$sql", (c) => {
    const st = one(c.sql);
    expect(st.kind).toBe(c.kind);
    expect(st.tag).toBe(c.tag);
    expect(sorted(st.reads)).toEqual(c.reads ?? []);
    expect(sorted(st.writes)).toEqual(c.writes ?? []);
    expect(sorted(st.functions)).toEqual(c.functions ?? []);
    expect(st.has_where).toBe(c.has_where);
    expect(st.text).toBe(c.sql);
  });

  test("set-returning functions in FROM and TABLE syntax", () => {
    expect(one("select * from pg_ls_dir('.') d, lateral pg_read_file(d) f").functions).toEqual(["pg_ls_dir", "pg_read_file"]);
    expect(one("table s.t").reads).toEqual(["s.t"]);
  });

  test("node is libpg-query's node type", () => {
    expect(one("drop table x").node).toBe("DropStmt");
    expect(one("select * into t2 from t").node).toBe("SelectStmt");
  });

  test("a function in a nested subquery is found", () => {
    const st = one(
      "select * from t where x in (select y from (select pg_catalog.PG_READ_FILE('/etc/passwd') as y) s where length(y) > 0)",
    );
    expect(sorted(st.functions)).toEqual(["length", "pg_catalog.pg_read_file"]);
    expect(st.reads).toEqual(["t"]);
  });

  test("a CTE name is not a relation; a qualified name or one outside the WITH is", () => {
    expect(one("with recent as (select * from orders) select * from recent").reads).toEqual(["orders"]);
    expect(sorted(one("with recent as (select 1) select * from recent, public.recent").reads)).toEqual(["public.recent"]);
    // The WITH is scoped to the subquery: the outer `x` is a table.
    expect(one("select * from (with x as (select 1) select * from x) a, x").reads).toEqual(["x"]);
    // Without RECURSIVE a CTE cannot see itself: naming it after the table it reads hides nothing.
    expect(one("with secrets as (select * from secrets) select * from secrets").reads).toEqual(["secrets"]);
    expect(sorted(one("with a as (select * from b), b as (select * from a) select * from b").reads)).toEqual(["b"]);
    // A recursive CTE refers to itself.
    expect(
      one("with recursive r(n) as (select 1 union all select n + 1 from r where n < 3) select * from r").reads,
    ).toEqual([]);
  });

  test("a data-modifying CTE counts as a write, and its missing WHERE shows", () => {
    const st = one("with gone as (delete from t returning *) insert into archive select * from gone");
    expect(st.kind).toBe("insert");
    expect(sorted(st.writes)).toEqual(["archive", "t"]);
    expect(st.reads).toEqual([]);
    expect(st.has_where).toBe(false);
    const sel = one("with x as (update t set a = 1 where id = 2 returning *) select * from x");
    expect(sel.kind).toBe("select");
    expect(sel.writes).toEqual(["t"]);
    expect(sel.has_where).toBe(true);
  });

  test("COPY: direction, program, file, stdio, format", () => {
    const fromStdin = one("COPY t FROM STDIN");
    expect(fromStdin.copy).toEqual({ direction: "from", program: false, file: false, stdio: true, format: "text" });
    expect(fromStdin.writes).toEqual(["t"]);
    expect(fromStdin.reads).toEqual([]);

    const toFile = one("COPY t TO '/tmp/x'");
    expect(toFile.copy).toEqual({ direction: "to", program: false, file: true, stdio: false, format: "text" });
    expect(toFile.reads).toEqual(["t"]);
    expect(toFile.writes).toEqual([]);

    const fromProgram = one("COPY t FROM PROGRAM 'ls'");
    expect(fromProgram.copy).toEqual({ direction: "from", program: true, file: false, stdio: false, format: "text" });
    expect(fromProgram.writes).toEqual(["t"]);

    const query = one("copy (select * from t where pg_sleep(1) is null) to stdout");
    expect(query.copy).toEqual({ direction: "to", program: false, file: false, stdio: true, format: "text" });
    expect(query.reads).toEqual(["t"]);
    expect(query.functions).toEqual(["pg_sleep"]);
    expect(query.tag).toBe("COPY");
    expect(one("COPY t TO STDOUT WITH (FORMAT 'CSV')").copy?.format).toBe("csv");
    expect(one("COPY t TO STDOUT BINARY").copy?.format).toBe("binary");
    expect(one("COPY (SELECT 1) TO STDOUT WITH (FORMAT binary, HEADER false)").copy?.format).toBe("binary");
    expect(query.kind).toBe("copy");
  });
});

describe("analyzeSql: columns named and whole rows", () => {
  /** [columns, whole_row] of the one statement of `text`. */
  const refs = (text: string) => {
    const st = one(text);
    return [st.columns, st.whole_row];
  };

  test("plain selects, aliases and joins: the last part of each name, first seen first, once", () => {
    expect(refs("select email, id from users where id = 1 order by email")).toEqual([["email", "id"], false]);
    expect(refs("select u.email as e, public.users.name from public.users u")).toEqual([["email", "name"], false]);
    expect(
      refs("select u.email, upper(o.note) from users u join orders o on o.uid = u.id where o.total > 1 group by 1, 2"),
    ).toEqual([["email", "note", "uid", "id", "total"], false]);
    expect(refs("select string_agg(email, ',') filter (where active) from users")).toEqual([["email", "active"], false]);
    // JOIN USING names its columns too (a FULL join merges them with COALESCE).
    expect(refs("select * from users full join old_users using (email)")).toEqual([["email"], false]);
  });

  test("quoted identifiers keep their case, unquoted ones are lower-cased by the parser", () => {
    expect(refs('select "Email", NAME from users')).toEqual([["Email", "name"], false]);
  });

  test("CTEs and subqueries", () => {
    expect(refs("with c as (select email from users) select * from c")).toEqual([["email"], false]);
    expect(refs("select x.e from (select email as e from users) x where x.e like '%@x'")).toEqual([["e", "email"], false]);
    expect(refs("select id, (select max(total) from orders o where o.uid = u.id) from users u")).toEqual([["id", "total", "uid"], false]);
  });

  test("INSERT, UPDATE, DELETE, MERGE: target columns, expressions and RETURNING", () => {
    expect(refs("insert into users (id, email) values (1, 'a') returning id, created")).toEqual([["id", "email", "created"], false]);
    expect(refs("insert into users (id) select uid from staged returning *")).toEqual([["id", "uid"], false]);
    expect(refs("update users set email = lower(email), seen = now() where id = $1 returning users.name")).toEqual([
      ["email", "seen", "id", "name"],
      false,
    ]);
    expect(refs("delete from users where id = 1 returning *")).toEqual([["id"], false]);
    expect(refs("merge into t using s on t.id = s.id when not matched then insert (id, a) values (s.id, s.b)")).toEqual([
      ["id", "a", "b"],
      false,
    ]);
  });

  test("a star expanded into plain columns is no whole row and names no column", () => {
    expect(refs("select * from users")).toEqual([[], false]);
    expect(refs("select u.*, o.id from users u, orders o")).toEqual([["id"], false]);
    expect(refs("select x.* from (select * from users) x")).toEqual([[], false]);
    expect(refs("with c as (select * from users) select c.* from c")).toEqual([[], false]);
    expect(refs("select * from users where exists (select * from orders)")).toEqual([[], false]);
    expect(refs("select count(*) from users")).toEqual([[], false]);
  });

  test("a whole row made into a value", () => {
    for (const text of [
      "select row_to_json(u) from users u",
      "select row_to_json(u.*) from users u",
      "select u from users u",
      "select users::text from users",
      "select to_jsonb(x) from (select * from users) x",
      "with c as (select * from users) select c from c",
      "select (u.*)::text from users u",
      "select row(u.*) from users u",
      "select count(u.*) from users u",
      "select (u).* from users u",
      "select f from some_function() f",
      "select some_function from some_function()",
      "update users set email = '' where id = 1 returning old",
      // Column notation for a function call: u.row_to_json is row_to_json(u).
      "select u.row_to_json from users u",
      // A star whose columns lose their origin: set operations, scalar and ARRAY subqueries.
      "select * from users union all select * from users",
      "select (select * from emails)",
      "select array(select e.* from emails e)",
      // NATURAL FULL JOIN merges unnamed common columns with COALESCE.
      "select * from users natural full join old_users",
    ]) {
      expect([text, one(text).whole_row]).toEqual([text, true]);
    }
  });
});

describe("analyzeSql: what flows out (taint by reference)", () => {
  /** [outputs, opaque, written_from, written_opaque] of the one statement of `text`. */
  const flow = (text: string) => {
    const st = one(text);
    return [st.outputs, st.opaque, st.written_from, st.written_opaque];
  };

  test("names in conditions do not flow; names elsewhere do", () => {
    expect(flow("select count(*) from users where substr(email, 1, 1) = 'a'")).toEqual([[], false, [], false]);
    expect(flow("select length(name) from users u join t on t.id = u.id where email > 'a' group by name having max(card) > '1' order by email limit (select count(ssn) from u)")).toEqual([["name"], false, ["name"], false]);
    expect(flow("select string_agg(name, ',' order by email) filter (where card is null), row_number() over (partition by ssn order by email) from users")).toEqual([["name"], false, ["name"], false]);
    expect(flow("select case when email like 'a%' then 1 end from users")[0]).toEqual(["email"]);
  });

  test("alias column lists, CTE column lists, stars and whole rows make a statement opaque", () => {
    expect(flow("select upper(e) from users u(i, e)")[1]).toBe(true);
    expect(flow("select x from (select email from users) s(x)")[1]).toBe(true);
    expect(flow("with c(a) as (select email from users) select a from c")[1]).toBe(true);
    expect(flow("table users")[1]).toBe(true);
    expect(flow("select u from users u")[1]).toBe(true);
    // … but not inside a condition
    expect(flow("select 1 from t where exists (select * from users u(i, e) where e = 'x')")[1]).toBe(false);
  });

  test("RETURNING flows to the client, not into the write; EXCLUDED is the statement's own row", () => {
    expect(flow("update users set name = 'x' where id = 1 returning *")).toEqual([[], true, [], false]);
    expect(flow("insert into sink select email from users returning t")).toEqual([["email", "t"], false, ["email"], false]);
    expect(flow("insert into users (id, email) values (1, 'a') on conflict (id) do update set email = excluded.email")).toEqual([[], false, [], false]);
  });

  test("UPDATE SET c = f(c) transforms in place: no copy; from another column or a subquery it is one", () => {
    expect(flow("update users u set email = lower(trim(u.email)), name = 'x' where id = 1")).toEqual([["email"], false, [], false]);
    expect(flow("update users set name = email where id = 1")[2]).toEqual(["email"]);
    expect(flow("update users set email = (select email from other) where id = 1")[2]).toEqual(["email"]);
    expect(flow("update users set email = o.email from other o where o.id = users.id")[2]).toEqual(["email"]);
  });
});

describe("analyzeSql: statements and their text", () => {
  test("several statements: one entry each, with its own text", () => {
    const facts = analyzeSql("select 1; drop table x");
    expect(facts.multi).toBe(true);
    expect(facts.statements.map((s) => [s.kind, s.tag, s.text])).toEqual([
      ["select", "SELECT", "select 1"],
      ["ddl", "DROP TABLE", "drop table x"],
    ]);
    expect(facts.statements[1]!.writes).toEqual(["x"]);
  });

  test("text slices are byte offsets into UTF-8, not string indexes", () => {
    expect(analyzeSql("select 'ü'; select 2").statements.map((s) => s.text)).toEqual(["select 'ü'", "select 2"]);
    expect(analyzeSql("select '日本語😀' ;\n delete from \"tä\" ; ").statements.map((s) => s.text)).toEqual([
      "select '日本語😀'",
      'delete from "tä"',
    ]);
  });

  test("trailing semicolon and surrounding space are not part of the text", () => {
    expect(one("  select 1 ;  ").text).toBe("select 1");
  });

  test("empty query: no statements", () => {
    for (const text of ["", "   ", " ;; ", "-- only a comment\n", "/* c */ ;"]) {
      expect(analyzeSql(text)).toEqual({ statements: [], multi: false });
    }
  });
});

describe("analyzeSql: errors", () => {
  test("a statement that does not parse: SQL_PARSE with PostgreSQL's message and position", () => {
    let caught: unknown;
    try {
      analyzeSql("select 1; selec 2");
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(AgateError);
    const e = caught as AgateError;
    expect(e.code).toBe("SQL_PARSE");
    expect(e.message).toBe('syntax error at or near "selec"');
    expect(e.details).toEqual({ position: 10 });
    // The position counts characters, as PostgreSQL does.
    expect(codeOf(() => analyzeSql("select 'ü' frm t"))).toEqual({ code: "SQL_PARSE", details: { position: 15 } });
  });

  test("the same bad text is refused again from the cache", () => {
    const first = codeOf(() => analyzeSql("select from where"));
    expect(first?.code).toBe("SQL_PARSE");
    expect(codeOf(() => analyzeSql("select from where"))).toEqual(first);
  });

  test("a zero byte is refused, not cut off (the parser would stop reading there)", () => {
    expect(codeOf(() => analyzeSql("select 1\0; drop table x"))?.code).toBe("SQL_PARSE");
  });

  test("nesting too deep for the parser's stack: SQL_TOO_DEEP, and the parser keeps working", async () => {
    const deep = (n: number, seed: number) => `select ${seed}` + "+1".repeat(n);
    expect(codeOf(() => analyzeSql(deep(20_000, 1)))?.code).toBe("SQL_TOO_DEEP");
    expect(one("select * from t").reads).toEqual(["t"]); // the spare instance took over
    // A new spare is made in the background; after it, a second fault is survived too.
    await Bun.sleep(200);
    expect(codeOf(() => analyzeSql(deep(20_000, 2)))?.code).toBe("SQL_TOO_DEEP");
    expect(one("select * from u").reads).toEqual(["u"]);
    await Bun.sleep(200);
  });
});

describe("analyzeSql: cache", () => {
  test("results are frozen and shared", () => {
    const a = analyzeSql("select * from cached_t");
    expect(analyzeSql("select * from cached_t")).toBe(a);
    expect(Object.isFrozen(a)).toBe(true);
    expect(Object.isFrozen(a.statements[0])).toBe(true);
    // Arrays stay unfrozen on purpose (see freezeFacts): Bun stringifies frozen arrays 4x slower.
    expect(() => ((a.statements[0] as { kind: string }).kind = "drop")).toThrow(TypeError);
  });

  test("throughput, uncached and cached (printed; only the ratio is asserted)", () => {
    const q = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
    const rate = (fn: () => void, ms: number) => {
      let n = 0;
      const start = performance.now();
      while (performance.now() - start < ms) {
        for (let i = 0; i < 100; i++) fn();
        n += 100;
      }
      return n / ((performance.now() - start) / 1000);
    };
    rate(() => {
      clearSqlCache();
      analyzeSql(q);
    }, 100); // warm up
    const uncached = rate(() => {
      clearSqlCache();
      analyzeSql(q);
    }, 700);
    analyzeSql(q);
    const cached = rate(() => analyzeSql(q), 300);
    console.log(
      `analyzeSql("${q}"): uncached ${Math.round(uncached).toLocaleString("en")} /s, cached ${Math.round(cached).toLocaleString("en")} /s (×${Math.round(cached / uncached)})`,
    );
    expect(cached).toBeGreaterThan(uncached * 10);
  });
});

describe("single executable", () => {
  const dirs: string[] = [];
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  test("bun build --compile embeds the parser: the binary runs with no node_modules", async () => {
    const root = resolve(import.meta.dir, "..");
    const build = mkdtempSync(join(tmpdir(), "agate-sql-build-"));
    const run = mkdtempSync(join(tmpdir(), "agate-sql-run-"));
    dirs.push(build, run);
    writeFileSync(
      join(build, "entry.ts"),
      `import { analyzeSql, initSql } from ${JSON.stringify(join(root, "src/protocols/postgres/sql.ts"))};
import wasm from ${JSON.stringify(join(root, "node_modules/libpg-query/wasm/libpg-query.wasm"))} with { type: "file" };
let notReady = "";
try { analyzeSql("select 1"); } catch (e) { notReady = (e as { code: string }).code; }
await initSql();
console.log(JSON.stringify({ notReady, wasm, facts: analyzeSql("select 1") }));
`,
    );
    const exe = join(build, "agate-sql");
    const compile = Bun.spawnSync([process.execPath, "build", "--compile", "entry.ts", "--outfile", exe], {
      cwd: build,
      stdout: "pipe",
      stderr: "pipe",
    });
    expect(compile.stderr.toString()).not.toContain("error");
    expect(compile.exitCode).toBe(0);

    const copied = join(run, "agate-sql");
    copyFileSync(exe, copied);
    rmSync(build, { recursive: true, force: true }); // nothing of the build is left to find
    const proc = Bun.spawnSync([copied], {
      cwd: run,
      env: { PATH: "/usr/bin:/bin", HOME: run },
      stdout: "pipe",
      stderr: "pipe",
    });
    expect(proc.stderr.toString()).toBe("");
    expect(proc.exitCode).toBe(0);
    const out = JSON.parse(proc.stdout.toString()) as { notReady: string; wasm: string; facts: unknown };
    expect(out.notReady).toBe("SQL_NOT_READY");
    expect(out.wasm.startsWith("/$bunfs/")).toBe(true); // served from inside the executable
    expect(out.facts).toEqual({
      statements: [
        { kind: "select", node: "SelectStmt", tag: "SELECT", reads: [], writes: [], functions: [], columns: [], whole_row: false, outputs: [], opaque: false, written_from: [], written_opaque: false, settings: [], text: "select 1" },
      ],
      multi: false,
    });
  }, 60_000);
});

describe("literal shapes: inlined values share one parse", () => {
  test("strings that differ only in literals have the same shape; others do not", () => {
    const a = literalShape("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;");
    expect(a).toBeDefined();
    expect(literalShape("SELECT abalance FROM pgbench_accounts WHERE aid = 7;")).toBe(a!);
    expect(literalShape("SELECT abalance FROM pgbench_accounts WHERE aid = 7.5")).not.toBe(a!);
    expect(literalShape("UPDATE t SET note = 'it''s' WHERE id = 3")).toBe(literalShape("UPDATE t SET note = 'x' WHERE id = 44")!);
    expect(literalShape("SELECT f1(1)")).not.toBe(literalShape("SELECT f2(1)")!);
  });

  test("anything the narrow scanner does not fully understand is not shaped", () => {
    for (const text of [
      "SELECT E'a\\'b'", // escape string
      "SELECT 'a\\'", // backslash: depends on standard_conforming_strings
      "SELECT $1",
      "SELECT $$x$$",
      'SELECT "Col" FROM t',
      "SELECT 1 -- comment",
      "SELECT /* c */ 1",
      "SELECT 1; DROP TABLE t",
      "SELECT x'ff'",
      "SELECT 1e5x",
      "SELECT 'ü'",
      "SELECT 'unterminated",
    ]) {
      expect(literalShape(text)).toBeUndefined();
    }
  });

  test("facts through a shape are the facts of a fresh parse, with the statement's own text", () => {
    const texts = [
      "SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
      "  select * from t1 join s.t2 using (id) where t1.x > 10 limit 5 ",
      "UPDATE pgbench_branches SET bbalance = bbalance + -4000 WHERE bid = 1;",
      "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP);",
      "SELECT pg_read_file('/etc/hostname')",
      "COPY t FROM '/tmp/x'",
      // facts read from a literal: never shared by shape
      "SELECT set_config('application_name', 'x', false)",
      "SELECT current_setting('search_path')",
      "COPY t TO STDOUT (FORMAT 'csv')",
    ];
    for (const text of texts) {
      const variant = text.replace(/\d+/g, (d) => String(Number(d) + 1)).replace(/'[^']*'/g, "'other'");
      clearSqlCache();
      const fresh = analyzeSql(variant);
      clearSqlCache();
      analyzeSql(text); // primes the shape
      const viaShape = analyzeSql(variant);
      expect(viaShape).toEqual(fresh);
      expect(viaShape.statements[0]!.text).toBe(fresh.statements[0]!.text);
    }
  });
});

describe("settings, temporary objects, subcommands and inner statements", () => {
  test("SET, RESET, SHOW, set_config() and current_setting() name their settings", () => {
    const names = (text: string) => analyzeSql(text).statements.flatMap((s) => s.settings.map((x) => [x.name, x.action, x.local, x.call]));
    expect(names("SET LOCAL log_statement = none")).toEqual([["log_statement", "set", true, false]]);
    expect(names("SET ROLE postgres")).toEqual([["role", "set", false, false]]);
    expect(names("SET SESSION AUTHORIZATION postgres")).toEqual([["session_authorization", "set", false, false]]);
    expect(names("SET TIME ZONE 'UTC'")).toEqual([["timezone", "set", false, false]]);
    expect(names("RESET ALL")).toEqual([["all", "reset", false, false]]);
    expect(names("SHOW ALL")).toEqual([["all", "show", false, false]]);
    expect(names("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY")).toEqual([
      ["transaction_isolation", "set", false, false],
      ["transaction_read_only", "set", false, false],
    ]);
    expect(names("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")).toEqual([["default_transaction_read_only", "set", false, false]]);
    expect(names("SELECT set_config('Log_Statement', 'none', true)")).toEqual([["log_statement", "set", true, true]]);
    expect(names("SELECT pg_catalog.set_config(setting_name => 'log_statement'::text, new_value => 'none', is_local => false)")).toEqual([["log_statement", "set", false, true]]);
    expect(names("SELECT set_config(n, 'none', false) FROM (VALUES ('log_statement')) v(n)")).toEqual([[null, "set", false, true]]);
    expect(names("SELECT current_setting('data_directory')")).toEqual([["data_directory", "show", false, true]]);
    expect(names("SELECT 1")).toEqual([]);
  });

  test("temporary objects, ALTER TABLE subcommands, statements inside others", () => {
    expect(one("CREATE TEMP TABLE t (a int)").temp).toBe(true);
    expect(one("CREATE TABLE pg_temp.t AS SELECT 1").temp).toBe(true);
    expect(one("SELECT 1 INTO TEMP t").temp).toBe(true);
    expect(one("CREATE TABLE t (a int)").temp).toBe(false);
    expect(one("ALTER TABLE t ADD COLUMN b int, DROP COLUMN c").subcommands).toEqual(["AT_AddColumn", "AT_DropColumn"]);
    expect(one("EXPLAIN ANALYZE DELETE FROM t").inner).toEqual([{ kind: "delete", node: "DeleteStmt", tag: "DELETE" }]);
    expect(one("PREPARE p AS UPDATE t SET a = 1").inner?.map((s) => s.node)).toEqual(["UpdateStmt"]);
    expect(one("CREATE SCHEMA s CREATE TABLE t (a int) GRANT SELECT ON t TO PUBLIC").inner?.map((s) => s.tag)).toEqual(["CREATE TABLE", "GRANT"]);
    expect(one("SELECT 1").inner).toBeUndefined();
  });
});

describe("analyzeSql: where_equal (the equalities that can bound a write at one row)", () => {
  const eq = (sql: string) => analyzeSql(sql).statements[0]!.where_equal;
  test("top-level AND of column = constant or parameter, either side, casts of constants, by alias or by name", () => {
    expect(eq("update t set v = 1 where id = $1")).toEqual({ columns: ["id"], only: false });
    expect(eq("delete from only s.t where 3 = t.a and s.t.b = '4'::int and c > 0")).toEqual({ columns: ["a", "b"], only: true });
    expect(eq("update t as x set v = 1 where x.id = 7 and (x.k = $2 and true)")).toEqual({ columns: ["id", "k"], only: false });
    expect(eq("update t set v = 1 where id operator(pg_catalog.=) 5")).toEqual({ columns: ["id"], only: false });
  });
  test("nothing that could match more than the equality says: OR, NOT, other operators, expressions, COLLATE, another relation's column, FROM/USING, WITH", () => {
    for (const sql of [
      "update t set v = 1",
      "update t set v = 1 where id = 1 or id = 2",
      "update t set v = 1 where not (id = 1)",
      "update t set v = 1 where id >= 1",
      "update t set v = 1 where id = id",
      "update t set v = 1 where id = 1 + 1",
      "update t set v = 1 where lower(k) = 'a'",
      "update t set v = 1 where k = 'a' collate \"C\"",
      "update t set v = 1 where id operator(public.=) 1",
      "update t as x set v = 1 where t.id = 1",
      "update t set v = 1 where u.id = 1",
      "update t set v = u.v from u where t.id = 1",
      "delete from t using u where t.id = 1",
      "with d as (delete from u returning id) update t set v = 1 where id = 1",
      "insert into t values (1)",
      "select * from t where id = 1",
    ]) expect([sql, eq(sql)]).toEqual([sql, undefined]);
  });
});
