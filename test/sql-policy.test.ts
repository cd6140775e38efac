/**
 * The default SQL policy against an agent holding a SUPERUSER credential:
 * every measured bypass of the old denylist (file access through
 * ts_rewrite and lo_export, table_to_xml and its siblings, writes to
 * pg_catalog, CREATE SUBSCRIPTION / RULE / ROLE, GRANTs of server roles and
 * of pg_read_file, SET SESSION AUTHORIZATION, SET and set_config of
 * log_statement, pg_terminate_backend, reading server configuration) is
 * refused with 42501, through the simple and the extended protocol, and
 * never reaches the server: PostgreSQL runs with log_statement = 'all' and
 * its log never shows them. Ordinary application work (an ORM's
 * migrations and queries, pgbench) is not refused.
 *
 * Also: the function lists in policies/agate/sql.rego are checked against
 * the server's own pg_proc.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import pg from "pg";
import postgres from "postgres";
import { resolveOpa } from "../src/policy/build.ts";
import { builtInCall, CatalogFacts } from "../src/protocols/postgres/facts.ts";
import { analyzeSql, initSql } from "../src/protocols/postgres/sql.ts";
import { psql, sh, startTestGateway, type TestGateway } from "./helpers/gateway.ts";
import { startPostgres, type TestPostgres } from "./helpers/postgres.ts";

let db: TestPostgres;
let gw: TestGateway;
/** Same target, with DDL and pgbench -i's DROP/TRUNCATE switched on: an unattended migration connection. */
let migrate: TestGateway;
/** Same target, approvals expiring at once: shows what is held. */
let held: TestGateway;
const PWNED = `/tmp/agate-pwned-${process.pid}`;

beforeAll(async () => {
  await initSql();
  db = await startPostgres({ settings: { log_statement: "all" } });
  await db.psql(`CREATE EXTENSION dblink; CREATE EXTENSION tablefunc; CREATE EXTENSION xml2; CREATE EXTENSION adminpack;
    CREATE TABLE victim (id int PRIMARY KEY, v text); INSERT INTO victim VALUES (1, 'keep');
    CREATE FUNCTION public.secdef() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';
    CREATE FUNCTION public.app_fn(int) RETURNS int LANGUAGE sql AS 'SELECT $1 + 1';
    CREATE FUNCTION public.private_fn() RETURNS int LANGUAGE sql AS 'SELECT 2';
    REVOKE EXECUTE ON FUNCTION public.private_fn() FROM PUBLIC;
    -- a C function no extension installed (bound to some library's symbol; never called here)
    CREATE FUNCTION public.sys(text) RETURNS text LANGUAGE c AS '$libdir/dblink', 'dblink_connect';`);
  const superuser = { targetUser: "postgres" };
  gw = await startTestGateway(db, superuser);
  migrate = await startTestGateway(db, { ...superuser, config: { policy: { data: { agate: { config: { allow_rules: ["approve_ddl", "deny_drop", "deny_truncate"] } } } } } });
  held = await startTestGateway(db, { ...superuser, config: { policy: { data: { agate: { config: { approvals: { timeout_s: 1 } } } } } } });
});

afterAll(async () => {
  await Promise.all([gw?.close(), migrate?.close(), held?.close()]);
  await db?.stop();
});

function serverLog(): string {
  return readFileSync(join(db.dir, "server.log"), "utf8");
}

interface Attack {
  name: string;
  /** Through the simple protocol. */
  simple: string;
  /** Through the extended protocol: text and parameters (none for statements PostgreSQL takes no parameters in). */
  extended: [string, unknown[]];
  rule: string;
}

/** `$pid` in a text is another session's backend pid. */
const ATTACKS: Attack[] = [
  { name: "ts_rewrite runs its text argument", simple: "SELECT ts_rewrite('a'::tsquery, 'SELECT pg_read_file(''/etc/hostname'')::tsquery, ''b''::tsquery')", extended: ["SELECT ts_rewrite($1::tsquery, 'SELECT ''a''::tsquery, ''b''::tsquery')", ["a"]], rule: "agate.sql.deny_dynamic_sql" },
  { name: "lo_export writes a server file", simple: `SELECT lo_export(lo_from_bytea(0, 'x'), '${PWNED}')`, extended: ["SELECT lo_export(lo_from_bytea(0, 'x'), $1)", [PWNED]], rule: "agate.sql.deny_server_function" },
  { name: "lo_import reads a server file", simple: "SELECT lo_import('/etc/hostname')", extended: ["SELECT lo_import($1)", ["/etc/hostname"]], rule: "agate.sql.deny_server_function" },
  { name: "pg_read_file", simple: "SELECT pg_read_file('/etc/hostname')", extended: ["SELECT pg_catalog.pg_read_file($1)", ["/etc/hostname"]], rule: "agate.sql.deny_server_function" },
  { name: "table_to_xml", simple: "SELECT table_to_xml('pg_authid', true, false, '')", extended: ["SELECT table_to_xml($1::regclass, true, false, '')", ["pg_authid"]], rule: "agate.sql.deny_dynamic_sql" },
  { name: "query_to_xml", simple: "SELECT query_to_xml('SELECT rolpassword FROM pg_authid', true, false, '')", extended: ["SELECT query_to_xml($1, true, false, '')", ["SELECT 1"]], rule: "agate.sql.deny_dynamic_sql" },
  { name: "schema_to_xml", simple: "SELECT schema_to_xml('public', true, false, '')", extended: ["SELECT schema_to_xml($1, true, false, '')", ["public"]], rule: "agate.sql.deny_dynamic_sql" },
  { name: "database_to_xml", simple: "SELECT database_to_xml(true, false, '')", extended: ["SELECT database_to_xml($1, false, '')", [true]], rule: "agate.sql.deny_dynamic_sql" },
  { name: "cursor_to_xml", simple: "SELECT cursor_to_xml('c', 1, true, false, '')", extended: ["SELECT cursor_to_xml($1, 1, true, false, '')", ["c"]], rule: "agate.sql.deny_dynamic_sql" },
  { name: "crosstab (tablefunc)", simple: "SELECT * FROM crosstab('SELECT 1, 2, 3') AS t(a int, b int)", extended: ["SELECT * FROM crosstab($1) AS t(a int, b int)", ["SELECT 1, 2, 3"]], rule: "agate.sql.deny_dynamic_sql" },
  { name: "xpath_table (xml2)", simple: "SELECT * FROM xpath_table('id', 'v', 'victim', '/a', 'true') AS t(id int, a text)", extended: ["SELECT * FROM xpath_table('id', 'v', 'victim', '/a', $1) AS t(id int, a text)", ["true"]], rule: "agate.sql.deny_dynamic_sql" },
  { name: "dblink connects out", simple: "SELECT dblink_connect('host=127.0.0.1 port=1')", extended: ["SELECT dblink_connect($1)", ["host=127.0.0.1 port=1"]], rule: "agate.sql.deny_server_function" },
  { name: "pg_file_write (adminpack)", simple: `SELECT pg_file_write('${PWNED}', 'x', false)`, extended: ["SELECT pg_file_write($1, 'x', false)", [PWNED]], rule: "agate.sql.deny_server_function" },
  { name: "UPDATE pg_class renames a table", simple: "UPDATE pg_class SET relname = 'renamed' WHERE relname = 'victim'", extended: ["UPDATE pg_class SET relname = 'renamed' WHERE relname = $1", ["victim"]], rule: "agate.sql.deny_catalog_write" },
  { name: "UPDATE pg_authid makes a role superuser", simple: "UPDATE pg_catalog.pg_authid SET rolsuper = true WHERE rolname = 'app_scram'", extended: ["UPDATE pg_catalog.pg_authid SET rolsuper = true WHERE rolname = $1", ["app_scram"]], rule: "agate.sql.deny_catalog_write" },
  { name: "DELETE from pg_catalog", simple: "DELETE FROM pg_depend WHERE objid = 0", extended: ["DELETE FROM pg_depend WHERE objid = $1", [0]], rule: "agate.sql.deny_catalog_write" },
  { name: "a catalog write in a CTE", simple: "WITH x AS (UPDATE pg_class SET relname = 'renamed' WHERE relname = 'victim' RETURNING 1) SELECT * FROM x", extended: ["WITH x AS (UPDATE pg_class SET relname = 'renamed' WHERE relname = $1 RETURNING 1) SELECT * FROM x", ["victim"]], rule: "agate.sql.deny_catalog_write" },
  { name: "UPDATE pg_settings sets log_statement", simple: "UPDATE pg_settings SET setting = 'none' WHERE name = 'log_statement'", extended: ["UPDATE pg_settings SET setting = 'none' WHERE name = $1", ["log_statement"]], rule: "agate.sql.deny_catalog_write" },
  { name: "CREATE SUBSCRIPTION connects out", simple: "CREATE SUBSCRIPTION s CONNECTION 'host=127.0.0.1 port=1 dbname=x' PUBLICATION p WITH (connect = false)", extended: ["CREATE SUBSCRIPTION s CONNECTION 'host=127.0.0.1 port=1 dbname=x' PUBLICATION p WITH (connect = false)", []], rule: "agate.sql.deny_external_access" },
  { name: "CREATE RULE rewrites later updates", simple: "CREATE RULE r AS ON UPDATE TO victim DO INSTEAD DELETE FROM victim", extended: ["CREATE RULE r AS ON UPDATE TO victim DO INSTEAD DELETE FROM victim", []], rule: "agate.sql.deny_statement" },
  { name: "CREATE ROLE … SUPERUSER", simple: "CREATE ROLE evil SUPERUSER LOGIN PASSWORD 'x'", extended: ["CREATE ROLE evil SUPERUSER LOGIN PASSWORD 'x'", []], rule: "agate.sql.deny_statement" },
  { name: "GRANT pg_execute_server_program", simple: "GRANT pg_execute_server_program TO app_scram", extended: ["GRANT pg_execute_server_program TO app_scram", []], rule: "agate.sql.deny_statement" },
  { name: "GRANT pg_read_server_files", simple: "GRANT pg_read_server_files TO app_scram", extended: ["GRANT pg_read_server_files TO app_scram", []], rule: "agate.sql.deny_statement" },
  { name: "GRANT EXECUTE ON pg_read_file TO PUBLIC", simple: "GRANT EXECUTE ON FUNCTION pg_read_file(text) TO PUBLIC", extended: ["GRANT EXECUTE ON FUNCTION pg_read_file(text) TO PUBLIC", []], rule: "agate.sql.deny_statement" },
  { name: "SET SESSION AUTHORIZATION", simple: "SET SESSION AUTHORIZATION app_scram", extended: ["SET SESSION AUTHORIZATION app_scram", []], rule: "agate.sql.deny_setting" },
  { name: "SET ROLE", simple: "SET ROLE app_scram", extended: ["SET ROLE app_scram", []], rule: "agate.sql.deny_setting" },
  { name: "SET log_statement", simple: "SET log_statement = 'none'", extended: ["SET LOCAL log_statement = 'none'", []], rule: "agate.sql.deny_setting" },
  { name: "set_config of log_statement", simple: "SELECT set_config('log_statement', 'none', false)", extended: ["SELECT set_config('log_statement', $1, false)", ["none"]], rule: "agate.sql.deny_setting" },
  { name: "set_config of a computed name", simple: "SELECT set_config(n, 'none', false) FROM (VALUES ('log_statement')) v(n)", extended: ["SELECT set_config($1, 'none', false)", ["log_statement"]], rule: "agate.sql.deny_setting" },
  { name: "session_replication_role disables triggers", simple: "SET session_replication_role = replica", extended: ["SET session_replication_role = replica", []], rule: "agate.sql.deny_setting" },
  { name: "pg_terminate_backend of another session", simple: "SELECT pg_terminate_backend($pid)", extended: ["SELECT pg_terminate_backend($1)", ["$pid"]], rule: "agate.sql.deny_server_function" },
  { name: "pg_cancel_backend of another session", simple: "SELECT pg_cancel_backend($pid)", extended: ["SELECT pg_cancel_backend($1)", ["$pid"]], rule: "agate.sql.deny_server_function" },
  { name: "pg_settings", simple: "SELECT name, setting FROM pg_settings", extended: ["SELECT setting FROM pg_settings WHERE name = $1", ["data_directory"]], rule: "agate.sql.deny_server_config" },
  { name: "pg_hba_file_rules", simple: "SELECT * FROM pg_hba_file_rules", extended: ["SELECT * FROM pg_catalog.pg_hba_file_rules WHERE line_number > $1", [0]], rule: "agate.sql.deny_server_config" },
  { name: "pg_file_settings", simple: "SELECT * FROM pg_file_settings", extended: ["SELECT * FROM pg_file_settings WHERE seqno > $1", [0]], rule: "agate.sql.deny_server_config" },
  { name: "password hashes in pg_authid", simple: "SELECT rolname, rolpassword FROM pg_authid", extended: ["SELECT rolpassword FROM pg_authid WHERE rolname = $1", ["postgres"]], rule: "agate.sql.deny_server_config" },
  { name: "other sessions' queries", simple: "SELECT query FROM pg_stat_activity", extended: ["SELECT query FROM pg_stat_activity WHERE pid <> $1", [0]], rule: "agate.sql.deny_server_config" },
  { name: "column values in planner statistics", simple: "SELECT most_common_vals FROM pg_stats", extended: ["SELECT most_common_vals FROM pg_stats WHERE tablename = $1", ["victim"]], rule: "agate.sql.deny_server_config" },
  { name: "COPY of pg_authid to the client", simple: "COPY pg_authid TO STDOUT", extended: ["COPY (SELECT rolpassword FROM pg_catalog.pg_authid) TO STDOUT", []], rule: "agate.sql.deny_server_config" },
  { name: "TABLE pg_shadow", simple: "TABLE pg_shadow", extended: ["SELECT passwd FROM pg_shadow WHERE usename = $1", ["postgres"]], rule: "agate.sql.deny_server_config" },
  { name: "COPY into a catalog", simple: "COPY pg_description FROM STDIN", extended: ["COPY pg_catalog.pg_description FROM STDIN", []], rule: "agate.sql.deny_catalog_write" },
  { name: "LOCK of a catalog", simple: "LOCK pg_authid", extended: ["LOCK TABLE pg_catalog.pg_class IN ACCESS EXCLUSIVE MODE", []], rule: "agate.sql.deny_catalog_write" },
  { name: "a SECURITY DEFINER function after SET search_path", simple: "SET search_path = public, pg_catalog; SELECT secdef()", extended: ["SELECT secdef(), $1::int", [1]], rule: "agate.sql.deny_security_definer" },
  { name: "an unknown function", simple: "SELECT no_such_function()", extended: ["SELECT no_such_function($1)", [1]], rule: "agate.sql.deny_unknown_function" },
  { name: "a user-defined C function from no extension", simple: "SELECT sys('id')", extended: ["SELECT public.sys($1)", ["id"]], rule: "agate.sql.deny_untrusted_function" },
  { name: "SHOW of a superuser-only setting", simple: "SHOW hba_file", extended: ["SHOW data_directory", []], rule: "agate.sql.deny_server_config" },
  { name: "SHOW ALL", simple: "SHOW ALL", extended: ["SHOW ALL", []], rule: "agate.sql.deny_server_config" },
  { name: "current_setting of a superuser-only setting", simple: "SELECT current_setting('data_directory')", extended: ["SELECT current_setting('config_file'), $1::int", [1]], rule: "agate.sql.deny_server_config" },
  { name: "COPY … PROGRAM", simple: "COPY victim TO PROGRAM 'id'", extended: ["COPY victim TO PROGRAM 'id'", []], rule: "agate.sql.deny_copy_program" },
  { name: "ALTER SYSTEM", simple: "ALTER SYSTEM SET log_statement = 'none'", extended: ["ALTER SYSTEM SET log_statement = 'none'", []], rule: "agate.sql.deny_statement" },
  { name: "ALTER ROLE … SUPERUSER", simple: "ALTER ROLE app_scram SUPERUSER", extended: ["ALTER ROLE app_scram SUPERUSER", []], rule: "agate.sql.deny_statement" },
  { name: "ALTER TABLE … DISABLE TRIGGER", simple: "ALTER TABLE victim DISABLE TRIGGER ALL", extended: ["ALTER TABLE victim DISABLE TRIGGER ALL", []], rule: "agate.sql.deny_alter" },
  { name: "CREATE TRIGGER", simple: "CREATE TRIGGER t BEFORE UPDATE ON victim FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()", extended: ["CREATE TRIGGER t BEFORE UPDATE ON victim FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()", []], rule: "agate.sql.deny_function_binding" },
  { name: "a SECURITY DEFINER function", simple: "SELECT secdef()", extended: ["SELECT public.secdef(), $1::int", [1]], rule: "agate.sql.deny_security_definer" },
  { name: "a function PUBLIC may not execute", simple: "SELECT private_fn()", extended: ["SELECT private_fn(), $1::int", [1]], rule: "agate.sql.deny_privileged_function" },
  { name: "a privileged built-in", simple: "SELECT pg_stat_reset()", extended: ["SELECT pg_stat_reset(), $1::int", [1]], rule: "agate.sql.deny_privileged_function" },
  { name: "EXPLAIN ANALYZE of a catalog write", simple: "EXPLAIN ANALYZE UPDATE pg_class SET relname = 'renamed' WHERE relname = 'victim'", extended: ["EXPLAIN ANALYZE UPDATE pg_class SET relname = 'renamed' WHERE relname = $1", ["victim"]], rule: "agate.sql.deny_catalog_write" },
  { name: "CREATE SCHEMA with a GRANT inside", simple: "CREATE SCHEMA s CREATE TABLE t (a int) GRANT ALL ON t TO PUBLIC", extended: ["CREATE SCHEMA s CREATE TABLE t (a int) GRANT ALL ON t TO PUBLIC", []], rule: "agate.sql.deny_statement" },
];

/** A marker at the start of each text, to look for in the server's log. */
const marker = (i: number, how: string) => `/*agate_atk_${i}_${how}*/ `;

describe("a superuser credential: every measured bypass is refused with 42501 and never reaches the server", () => {
  let victim: postgres.Sql;
  let pid = "";

  beforeAll(async () => {
    // another session, directly on the server: the target of pg_terminate_backend
    victim = postgres(db.url(), { max: 1, onnotice: () => {} });
    pid = String((await victim`SELECT pg_backend_pid() AS pid`)[0]!.pid);
  });

  afterAll(async () => {
    await victim?.end();
  });

  test("through the simple protocol (porsager simple, psql)", async () => {
    const sql = postgres(gw.url(), { max: 1, onnotice: () => {} });
    try {
      for (const [i, a] of ATTACKS.entries()) {
        const text = marker(i, "s") + a.simple.replaceAll("$pid", pid);
        const e = await sql.unsafe(text).simple().then(
          () => undefined,
          (err: postgres.PostgresError) => err,
        );
        expect({ attack: a.name, code: e?.code, rule: e?.message.includes(a.rule) }).toEqual({ attack: a.name, code: "42501", rule: true });
      }
    } finally {
      await sql.end();
    }
    const viaPsql = await psql(gw.url(), `${marker(0, "psql")}UPDATE pg_authid SET rolsuper = true WHERE rolname = 'app_scram'`, ["-v", "VERBOSITY=verbose"]);
    expect(viaPsql.stderr).toContain("42501");
    expect(viaPsql.stderr).toContain("agate.sql.deny_catalog_write");
  });

  test("through the extended protocol (node-postgres with parameters, porsager)", async () => {
    const client = new pg.Client({ connectionString: gw.url() });
    await client.connect();
    const sql = postgres(gw.url(), { max: 1, onnotice: () => {} });
    try {
      for (const [i, a] of ATTACKS.entries()) {
        const [text, params] = a.extended;
        const values = params.map((p) => (p === "$pid" ? pid : p));
        const e = await (values.length > 0 ? client.query(marker(i, "x") + text, values) : client.query({ name: `atk${i}`, text: marker(i, "x") + text })).then(
          () => undefined,
          (err: { code?: string; message: string }) => err,
        );
        expect({ attack: a.name, code: e?.code, rule: e?.message.includes(a.rule) }).toEqual({ attack: a.name, code: "42501", rule: true });
        const p = await sql.unsafe(marker(i, "p") + text, values as never[]).then(
          () => undefined,
          (err: postgres.PostgresError) => err,
        );
        expect({ attack: a.name, code: p?.code }).toEqual({ attack: a.name, code: "42501" });
      }
    } finally {
      await client.end();
      await sql.end();
    }
  });

  test("none of them reached the server: its log (log_statement = 'all') has none of their markers, and nothing changed", async () => {
    // the log works: an allowed statement with a marker is there
    await psql(gw.url(), "/*agate_allowed_marker*/ SELECT 1");
    const log = serverLog();
    expect(log).toContain("agate_allowed_marker");
    expect(log.match(/agate_atk_\d+_\w+/g) ?? []).toEqual([]);
    expect((await db.psql("SELECT relname FROM pg_class WHERE relname IN ('victim', 'renamed')")).trim()).toBe("victim");
    expect((await db.psql("SELECT rolsuper FROM pg_authid WHERE rolname = 'app_scram'")).trim()).toBe("f");
    expect((await db.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'evil'")).trim()).toBe("0");
    expect((await db.psql("SELECT count(*) FROM pg_subscription")).trim()).toBe("0");
    expect((await db.psql("SELECT count(*) FROM pg_rewrite WHERE rulename = 'r'")).trim()).toBe("0");
    expect((await db.psql("SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid WHERE r.rolname LIKE 'pg_%server%'")).trim()).toBe("0");
    expect((await db.psql("SHOW log_statement")).trim()).toBe("all");
    expect(existsSync(PWNED)).toBe(false);
    expect((await victim`SELECT 1 AS one`)[0]!.one).toBe(1); // the other session lives
  });
});

describe("ordinary application work is not refused", () => {
  /** An ORM's migration: DDL (unattended on `migrate`, where approve_ddl is switched off). */
  const MIGRATION = [
    `CREATE TABLE "django_migrations" ("id" bigint NOT NULL PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY, "app" varchar(255) NOT NULL, "name" varchar(255) NOT NULL, "applied" timestamp with time zone NOT NULL)`,
    `CREATE TABLE "shop_customer" ("id" bigint NOT NULL PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY, "email" varchar(254) NOT NULL UNIQUE, "name" varchar(100) NOT NULL)`,
    `CREATE TABLE "shop_order" ("id" bigserial NOT NULL PRIMARY KEY, "total" numeric(10, 2) NOT NULL, "customer_id" bigint NOT NULL)`,
    `ALTER TABLE "shop_order" ADD CONSTRAINT "shop_order_customer_id_fk" FOREIGN KEY ("customer_id") REFERENCES "shop_customer" ("id") DEFERRABLE INITIALLY DEFERRED`,
    `CREATE INDEX "shop_order_customer_id_idx" ON "shop_order" ("customer_id")`,
    `CREATE INDEX "shop_customer_email_like" ON "shop_customer" ("email" varchar_pattern_ops)`,
    `ALTER TABLE "shop_order" ADD COLUMN "note" text DEFAULT '' NOT NULL`,
    `ALTER TABLE "shop_order" ALTER COLUMN "note" DROP DEFAULT`,
    `ALTER TABLE "shop_order" RENAME COLUMN "note" TO "remark"`,
    `CREATE VIEW "shop_totals" AS SELECT "customer_id", sum("total") AS "total" FROM "shop_order" GROUP BY 1`,
    `CREATE TYPE "shop_state" AS ENUM ('new', 'paid')`,
    `ALTER TABLE "shop_order" ADD COLUMN "state" "shop_state" NOT NULL DEFAULT 'new'`,
    `COMMENT ON TABLE "shop_order" IS 'orders'`,
    `INSERT INTO "django_migrations" ("app", "name", "applied") VALUES ('shop', '0001_initial', now()) RETURNING "django_migrations"."id"`,
  ];

  /** An ORM's session setup, introspection and queries, and the rest of the allowlist. */
  const QUERIES: [string, unknown[]][] = [
    ["SET client_min_messages TO 'warning'", []],
    ["SET standard_conforming_strings = on", []],
    ["SET intervalstyle = iso_8601", []],
    ["SET TIME ZONE 'UTC'", []],
    ["SET application_name = 'orm'", []],
    ["SET statement_timeout = '5s'", []],
    ["RESET statement_timeout", []],
    ["SHOW server_version", []],
    ["SHOW search_path", []],
    ["SELECT version(), current_database(), current_schema(), current_user, pg_backend_pid()", []],
    [`SELECT c.relname, CASE WHEN c.relispartition THEN 'p' WHEN c.relkind IN ('m', 'v') THEN 'v' ELSE 't' END FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('f', 'm', 'p', 'r', 'v') AND n.nspname NOT IN ('pg_catalog', 'pg_toast') AND pg_catalog.pg_table_is_visible(c.oid)`, []],
    [`SELECT a.attname, format_type(a.atttypid, a.atttypmod), pg_get_expr(d.adbin, d.adrelid), a.attnotnull FROM pg_attribute a LEFT JOIN pg_attrdef d ON a.attrelid = d.adrelid AND a.attnum = d.adnum WHERE a.attrelid = '"shop_order"'::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`, []],
    ["SELECT column_name, data_type FROM information_schema.columns WHERE table_name = $1", ["shop_order"]],
    ["SELECT t.oid, typarray FROM pg_type t JOIN pg_namespace ns ON typnamespace = ns.oid WHERE typname = $1", ["hstore"]],
    [`SELECT pg_get_serial_sequence('"shop_order"', 'id')`, []],
    ["BEGIN", []],
    [`INSERT INTO "shop_customer" ("email", "name") VALUES ($1, $2) RETURNING "shop_customer"."id"`, ["a@example.com", "A"]],
    [`INSERT INTO "shop_order" ("total", "customer_id", "remark") VALUES ($1, (SELECT max(id) FROM shop_customer), '') RETURNING "id"`, ["12.50"]],
    ["SAVEPOINT s1", []],
    [`UPDATE "shop_order" SET "total" = "total" + $1 WHERE "id" = (SELECT max(id) FROM shop_order)`, [1]],
    ["RELEASE SAVEPOINT s1", []],
    [`SELECT o.id, c.email FROM "shop_order" o JOIN "shop_customer" c ON c.id = o.customer_id WHERE o.total > $1 ORDER BY o.id LIMIT 10 FOR UPDATE OF o`, [1]],
    ["SET CONSTRAINTS ALL IMMEDIATE", []],
    ["LOCK TABLE shop_order IN SHARE MODE", []],
    ["CREATE TEMP TABLE tmp_ids (id int) ON COMMIT DROP", []],
    ["INSERT INTO tmp_ids SELECT id FROM shop_order", []],
    ["SET LOCAL work_mem = '8MB'", []],
    ["COMMIT", []],
    [`SELECT COUNT(*) AS "__count" FROM "shop_order" WHERE "shop_order"."total" > $1`, [10]],
    ["SELECT * FROM shop_totals", []],
    ["SELECT app_fn($1::int), now(), coalesce(null, 1), uuid('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11')", [1]],
    ["SELECT pg_advisory_lock(42)", []],
    ["SELECT pg_advisory_unlock(42)", []],
    ["SELECT set_config('search_path', 'public', false)", []],
    ["EXPLAIN SELECT * FROM shop_order WHERE id = 1", []],
    ["EXPLAIN ANALYZE SELECT count(*) FROM shop_order", []],
    ["PREPARE q (bigint) AS SELECT * FROM shop_order WHERE id = $1", []],
    ["EXECUTE q(1)", []],
    ["DEALLOCATE q", []],
    ["BEGIN", []],
    ["DECLARE c CURSOR FOR SELECT id FROM shop_order", []],
    ["FETCH 10 FROM c", []],
    ["MOVE FIRST IN c", []],
    ["CLOSE c", []],
    ["COMMIT", []],
    ["LISTEN orders", []],
    ["NOTIFY orders, 'x'", []],
    ["SELECT pg_notify('orders', 'y')", []],
    ["UNLISTEN *", []],
    ["VACUUM ANALYZE shop_order", []],
    ["TABLE shop_customer", []],
    ["VALUES (1, 'a')", []],
    [`MERGE INTO shop_customer c USING (VALUES ('b@example.com', 'B')) v(e, n) ON c.email = v.e WHEN NOT MATCHED THEN INSERT (email, name) VALUES (v.e, v.n)`, []],
    [`DELETE FROM "shop_order" WHERE "id" = $1`, [-1]],
    ["DISCARD ALL", []],
  ];

  test("an ORM's migrations: held for approval on the default policy, run where approve_ddl is switched off", async () => {
    const r = await psql(held.url(), MIGRATION[0]!);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("agate: this statement waits for approval");
    expect(r.stderr).toContain("agate.approval.expired");
    const sql = postgres(migrate.url(), { max: 1, onnotice: () => {} });
    try {
      await sql.begin(async (tx) => {
        for (const text of MIGRATION) await tx.unsafe(text);
      });
    } finally {
      await sql.end();
    }
    expect((await db.psql("SELECT count(*) FROM django_migrations")).trim()).toBe("1");
  });

  test("an ORM's queries, through the extended protocol (node-postgres) and the simple one (psql)", async () => {
    const client = new pg.Client({ connectionString: gw.url() });
    await client.connect();
    const refused: string[] = [];
    try {
      for (const [text, values] of QUERIES) {
        await client.query(text, values).catch((e: Error) => refused.push(`${text}: ${e.message}`));
      }
    } finally {
      await client.end();
    }
    expect(refused).toEqual([]);
    const simple = QUERIES.filter(([, v]) => v.length === 0).map(([t]) => t);
    const r = await sh(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", gw.url(), "-f", "-"], { stdin: simple.join(";\n") + ";\n" });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
  });

  test("COPY FROM STDIN and TO STDOUT", async () => {
    const into = await sh(["psql", "-X", "-v", "ON_ERROR_STOP=1", gw.url(), "-c", "COPY shop_customer (email, name) FROM STDIN"], { stdin: "c@example.com\tC\nd@example.com\tD\n" });
    expect(into.stderr).toBe("");
    const out = await psql(gw.url(), "COPY (SELECT email FROM shop_customer ORDER BY email) TO STDOUT");
    expect(out.stdout).toContain("d@example.com");
  });

  test.skipIf(!Bun.which("pgbench"))("pgbench -i (DDL switched on) and pgbench -t 50 with the default policy, simple and prepared", async () => {
    const init = await sh(["pgbench", "-i", "-s", "1", "-q", migrate.url()]);
    expect(init.stderr).not.toContain("ERROR");
    expect(init.code).toBe(0);
    for (const mode of ["simple", "prepared"]) {
      const r = await sh(["pgbench", "-n", "-c", "2", "-t", "50", "-M", mode, gw.url()]);
      expect(r.stderr).not.toContain("ERROR");
      expect(r.code).toBe(0);
      expect(r.stdout).toContain("number of transactions actually processed: 100/100");
    }
  }, 120_000);
});

describe("the policy's function lists and the server's pg_proc", () => {
  /** A value of the default policy (package agate), by opa eval. */
  async function policyValue(name: string): Promise<Record<string, string>> {
    const r = await sh([resolveOpa(), "eval", "-f", "json", "-d", join(import.meta.dir, "../policies"), `data.agate.${name}`]);
    expect(r.code).toBe(0);
    return (JSON.parse(r.stdout) as { result: { expressions: { value: Record<string, string> }[] }[] }).result[0]!.expressions[0]!.value;
  }

  test("every name listed for this server's version exists in its pg_proc (core, and the contrib extensions installed)", async () => {
    const major = Number((await db.psql("SHOW server_version_num")).trim().slice(0, -4));
    const installed = new Set((await db.psql("SELECT extname FROM pg_extension")).trim().split("\n"));
    const procs = new Set((await db.psql("SELECT DISTINCT lower(proname) FROM pg_proc")).trim().split("\n"));
    const missing: string[] = [];
    let checked = 0;
    for (const list of ["server_functions", "dynamic_sql_functions", "server_config_functions"]) {
      for (const [name, origin] of Object.entries(await policyValue(list))) {
        const [from, versions] = origin.split(" ");
        const inVersion = (() => {
          if (versions === undefined || from !== "core") return true;
          const [lo, hi] = versions.split("-").map(Number);
          return major >= lo! && major <= (hi ?? lo!);
        })();
        if (from === "core" ? !inVersion : !installed.has(from!) || versions !== undefined) continue;
        checked++;
        if (!procs.has(name.split(".").pop()!)) missing.push(`${name} (${origin})`);
      }
    }
    expect(missing).toEqual([]);
    expect(checked).toBeGreaterThan(60);
    // and each prefix matches functions there
    for (const list of ["server_function_prefixes", "dynamic_sql_prefixes"]) {
      for (const prefix of Object.values(await policyValue(list)) as unknown as string[]) {
        if (prefix === "pg_background_") continue; // pg_background is not a contrib module
        expect({ prefix, found: [...procs].some((p) => p.startsWith(prefix)) }).toEqual({ prefix, found: true });
      }
    }
  });

  test("siblings are covered: every built-in that runs SQL from text or names or reaches files, sessions or the server's state is listed or privileged", async () => {
    const listed = new Set([...Object.keys(await policyValue("server_functions")), ...Object.keys(await policyValue("dynamic_sql_functions")), ...Object.keys(await policyValue("server_config_functions"))]);
    const rows = (
      await db.psql(`SELECT DISTINCT p.proname FROM pg_proc p
        WHERE p.oid < 16384
          AND p.proname ~ '(_to_xml|^ts_rewrite|^ts_stat|^pg_ls_|^pg_read|^pg_stat_file|^lo_import|^lo_export|_backend$|replication_slot|^pg_logical_slot|^pg_logical_emit|^pg_replication_origin|backup|^pg_switch_wal|^pg_promote|^pg_reload_conf|^pg_rotate|^pg_wal_replay_(pause|resume)$|^pg_show_all|file_rules|file_mappings|^pg_stat_get_activity|^pg_stat_get_backend_activity$|^pg_config$|logfile)'
          AND (p.proacl IS NULL OR EXISTS (SELECT FROM aclexplode(p.proacl) a WHERE a.grantee = 0))`)
    )
      .trim()
      .split("\n")
      .filter(Boolean);
    const reads = new Set(["pg_read_binary_file", "pg_read_file"]);
    const prefixes = ["pg_replication_origin_"];
    const harmless = new Set(["pg_get_replication_slots", "pg_stat_get_replication_slot", "pg_stat_reset_replication_slot", "pg_is_in_backup", "pg_backup_start_time", "pg_backend_pid", "pg_stat_get_buf_written_backend", "pg_stat_get_buf_fsync_backend", "pg_safe_snapshot_blocking_pids", "pg_blocking_pids"]);
    const unlisted = rows.filter((n) => !listed.has(n) && !reads.has(n) && !harmless.has(n) && !prefixes.some((p) => n.startsWith(p)));
    expect(unlisted).toEqual([]);
    expect(rows.length).toBeGreaterThan(20);
  });
});

describe("catalog facts", () => {
  test("a lookup that fails makes the facts unknown, and the policy refuses with that reason", async () => {
    const facts = new CatalogFacts(() => Promise.reject(new Error("connection refused")));
    const command = { seq: 1, text: "SELECT now()", sql: analyzeSql("SELECT now()") };
    await facts.complete(command, "v1");
    expect(command.sql.catalog).toEqual({ known: false, error: "connection refused" });
    expect(command.sql.statements[0]!.calls).toEqual([]);
  });

  test("resolution fails closed: an unqualified name stands for every schema's candidate", async () => {
    const sql = postgres(db.url(), { max: 1, onnotice: () => {}, connection: { search_path: "" } });
    try {
      const facts = new CatalogFacts((text, params) => sql.unsafe(text, params as never[]) as never);
      const command = { seq: 1, text: "", sql: analyzeSql("UPDATE pg_class SET relname = 'x'; SELECT private_fn(), app_fn(1); SET log_statement = none") };
      await facts.complete(command, "v1");
      const [update, select, set] = command.sql.statements;
      expect(update!.relations).toEqual([{ name: "pg_class", access: "write", found: true, schema: "pg_catalog", kind: "table", catalog: true }]);
      expect(select!.calls!.map((c) => [c.name, c.schema, c.public, c.builtin, c.language])).toEqual([
        ["private_fn", "public", false, false, "sql"],
        ["app_fn", "public", true, false, "sql"],
      ]);
      expect(set!.settings[0]!.context).toBe("superuser");
      // what the lexing barrier asks: built in or not (fail closed for user-defined candidates)
      expect(builtInCall(select!, "app_fn")).toBe(false);
      const now = { seq: 4, text: "", sql: analyzeSql("SELECT now(), nope_fn()") };
      await facts.complete(now, "v1");
      expect(builtInCall(now.sql.statements[0]!, "now")).toBe(true);
      expect(builtInCall(now.sql.statements[0]!, "nope_fn")).toBe(false);
      expect(builtInCall(analyzeSql("SELECT now()").statements[0]!, "now")).toBeUndefined();
      // cached: the same facts again need no lookup and give the same object
      const again = { seq: 2, text: "", sql: analyzeSql("UPDATE pg_class SET relname = 'x'; SELECT private_fn(), app_fn(1); SET log_statement = none") };
      expect(facts.complete(again, "v1")).toBeUndefined();
      expect(again.sql).toBe(command.sql);
      // a new policy version looks up again
      const next = { seq: 3, text: "", sql: again.sql };
      expect(facts.complete(next, "v2")).toBeInstanceOf(Promise);
    } finally {
      await sql.end();
    }
  });
});
