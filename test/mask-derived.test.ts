/**
 * Derived mask rules (src/mask/derived.ts) end to end: with
 * agate.mask.deny_covered_copy switched off, a statement that copies a
 * covered column into another table (CREATE TABLE AS, INSERT … SELECT, a
 * temporary table, SELECT INTO) makes that table covered: a plain SELECT of
 * the copy in a new session, and after the gateway restarts, returns masked
 * values, and each derived rule is in the audit log. A setting set from a
 * covered column reads back masked in its session; destinations agate
 * cannot follow (a notification, a large object, a sequence) are refused.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { readRecords } from "../src/audit/index.ts";
import { psql, startTestGateway, type TestGateway } from "./helpers/gateway.ts";
import { startPostgres, type TestPostgres } from "./helpers/postgres.ts";

const EMAIL = "zelda.quartermain@example.org";
const CODE = "K7-PLUM-4412-ORCHID";

let db: TestPostgres;
let gw: TestGateway;
let stateDir: string;
const store = () => join(stateDir, "mask-derived.db");

function gateway(): Promise<TestGateway> {
  return startTestGateway(db, {
    config: {
      mask: { derived_store: store() },
      policy: { data: { agate: { config: { allow_rules: ["approve_ddl", "deny_alter", "deny_covered_copy"], allow_settings: ["my.x"], mask: { columns: ["public.people.email", "people.code:partial"], detectors: [] } } } } },
    },
  });
}

beforeAll(async () => {
  stateDir = mkdtempSync(join(tmpdir(), "agate-derived-"));
  db = await startPostgres();
  await db.psql(`
    CREATE TABLE people (id int PRIMARY KEY, name text, email text, code text);
    INSERT INTO people VALUES (1, 'Zed', '${EMAIL}', '${CODE}'), (2, 'Amy', 'amy@example.net', 'OTHER-CODE-0001');
    CREATE TABLE sink (t text);
    CREATE VIEW sink_view AS SELECT t FROM sink;
    GRANT ALL ON ALL TABLES IN SCHEMA public TO app_scram;
    GRANT CREATE ON SCHEMA public TO app_scram;
  `);
  gw = await gateway();
}, 120_000);

afterAll(async () => {
  await gw?.close();
  await db?.stop();
  rmSync(stateDir, { recursive: true, force: true });
});

async function query(g: TestGateway, statements: string[]): Promise<unknown[][]> {
  const sql = postgres(g.url(), { max: 1, onnotice: () => {} });
  try {
    const out: unknown[][] = [];
    for (const st of statements) out.push([...(await sql.unsafe(st))]);
    return out;
  } finally {
    await sql.end();
  }
}

async function records(g: TestGateway): Promise<Record<string, any>[]> {
  const out: Record<string, any>[] = [];
  for await (const r of readRecords(g.auditDir)) out.push(r as Record<string, any>);
  return out;
}

describe("a copy of a covered column inherits its rule", () => {
  test("CREATE TABLE AS, INSERT … SELECT, SELECT INTO and a temporary table, read in a new session", async () => {
    const [, , , , tmp] = await query(gw, [
      "CREATE TABLE copy1 AS SELECT id, email FROM people",
      "INSERT INTO sink SELECT code FROM people",
      "SELECT id, email AS e INTO copy3 FROM people",
      "CREATE TEMP TABLE tmp AS SELECT upper(email) AS shout FROM people",
      "SELECT shout FROM tmp ORDER BY shout",
    ]);
    // the temporary table, read in its own session
    expect(tmp).toEqual([{ shout: "[REDACTED:shout]" }, { shout: "[REDACTED:shout]" }]);
    const [copy1, sink, copy3] = await query(gw, ["SELECT id, email FROM copy1 ORDER BY id", "SELECT t FROM sink ORDER BY t", "SELECT * FROM copy3 ORDER BY id"]);
    // every column of a table that received covered values is masked (agate cannot tell which one got them)
    expect(copy1).toEqual([
      { id: null, email: "[REDACTED:email]" },
      { id: null, email: "[REDACTED:email]" },
    ]);
    // the style of the rule it derives from: partial
    expect((sink as { t: string }[]).map((r) => r.t)).toEqual(["*".repeat(15) + "CHID", "*".repeat(11) + "0001"]);
    expect(JSON.stringify(copy3)).not.toContain("@");
    // psql, text format, simple protocol
    const out = await psql(gw.url(), "SELECT email FROM copy1 ORDER BY id");
    expect(out.stdout.trim().split("\n")).toEqual(["[REDACTED:email]", "[REDACTED:email]"]);
  });

  test("each new derived rule is recorded in the audit log, once", async () => {
    await query(gw, ["INSERT INTO sink SELECT code FROM people WHERE id = 1"]);
    const derived = (await records(gw)).filter((r) => r.type === "mask_derived");
    expect(derived.map((r) => [r.rule, r.style, r.from])).toEqual([
      ["copy1.*", "redact", ["public.people.email"]],
      ["sink.*:partial", "partial", ["people.code:partial"]],
      ["copy3.*", "redact", ["public.people.email"]],
      ["tmp.*", "redact", ["public.people.email"]],
    ]);
    expect(derived.every((r) => r.connection === "app-db" && r.kind === "column" && typeof r.seq === "number")).toBe(true);
  });

  test("PREPARE … AS INSERT derives the rule when it is prepared (its EXECUTE names no relation)", async () => {
    await db.psql("CREATE TABLE sink2 (t text); GRANT ALL ON sink2 TO app_scram;");
    await query(gw, ["PREPARE cp AS INSERT INTO sink2 SELECT email FROM people", "EXECUTE cp"]);
    const [rows] = await query(gw, ["SELECT t FROM sink2"]);
    expect(rows).toEqual([{ t: "[REDACTED:t]" }, { t: "[REDACTED:t]" }]);
  });

  test("a copy of a copy inherits the derived rule", async () => {
    await query(gw, ["CREATE TABLE copy2 AS SELECT email AS again FROM copy1"]);
    const [rows] = await query(gw, ["SELECT again FROM copy2"]);
    expect(rows).toEqual([{ again: "[REDACTED:again]" }, { again: "[REDACTED:again]" }]);
    const derived = (await records(gw)).filter((r) => r.type === "mask_derived").map((r) => [r.rule, r.from]);
    expect(derived).toContainEqual(["copy2.*", ["copy1.*"]]);
  });

  test("a table a derived rule covers cannot be renamed or moved away from it", async () => {
    for (const st of ["ALTER TABLE copy1 RENAME TO escaped", "ALTER TABLE public.copy1 SET SCHEMA pg_temp"]) {
      const err = await query(gw, [st]).then(
        () => undefined,
        (e: Error) => e.message,
      );
      expect(err).toContain("agate.mask.untracked_copy");
    }
    // an uncovered table can
    await query(gw, ["CREATE TABLE plain_t (n int)", "ALTER TABLE plain_t RENAME TO plain_u"]);
  });

  test("after a restart the derived rules still apply", async () => {
    await gw.close();
    gw = await gateway();
    const [copy1, copy2] = await query(gw, ["SELECT email FROM copy1", "SELECT again FROM copy2"]);
    expect(copy1).toEqual([{ email: "[REDACTED:email]" }, { email: "[REDACTED:email]" }]);
    expect(copy2).toEqual([{ again: "[REDACTED:again]" }, { again: "[REDACTED:again]" }]);
    // an untouched table is not
    const [people] = await query(gw, ["SELECT name FROM people ORDER BY id"]);
    expect(people).toEqual([{ name: "Zed" }, { name: "Amy" }]);
  });
});

describe("state a covered value is kept in", () => {
  test("a setting set from a covered column reads back masked in its session, and not in another", async () => {
    const sql = postgres(gw.url(), { max: 1, onnotice: () => {} });
    try {
      await sql`SELECT set_config('my.x', email, false) FROM people WHERE id = 1`;
      const [shown] = await sql.unsafe("SHOW my.x");
      const [current] = await sql`SELECT current_setting('my.x') AS v`;
      expect(Object.values(shown!)).toEqual(["[REDACTED:my.x]"]);
      expect(current!.v).toBe("[REDACTED:v]");
    } finally {
      await sql.end();
    }
    const [[other]] = (await query(gw, ["SELECT set_config('my.x', 'plain', false) AS v"])) as [[{ v: string }]];
    expect(other.v).toBe("plain");
    const derived = (await records(gw)).filter((r) => r.type === "mask_derived" && r.kind === "setting");
    expect(derived.map((r) => [r.rule, r.scope])).toEqual([["my.x", "session"]]);
  });

  test("a view written through, a notification, a large object or a sequence cannot be followed: refused even with deny_covered_copy off", async () => {
    await db.psql("CREATE SEQUENCE sq; GRANT ALL ON SEQUENCE sq TO app_scram; GRANT EXECUTE ON FUNCTION lo_from_bytea(oid, bytea) TO app_scram;");
    for (const st of ["INSERT INTO sink_view SELECT email FROM people", "SELECT pg_notify('ch', email) FROM people", "SELECT lo_from_bytea(0, convert_to(code, 'UTF8')) FROM people WHERE id = 1", "SELECT setval('sq', length(email)) FROM people WHERE id = 1"]) {
      const err = await query(gw, [st]).then(
        () => undefined,
        (e: Error) => e.message,
      );
      expect(err).toContain("agate.mask.untracked_copy");
    }
    // the same calls with uncovered values run
    const [[n]] = (await query(gw, ["SELECT setval('sq', length(name)) AS n FROM people WHERE id = 1"])) as [[{ n: string }]];
    expect(String(n.n)).toBe("3");
  });
});
