/**
 * The lexing race: a statement that changes how later text lexes
 * (standard_conforming_strings, client_encoding) is a barrier, so a statement
 * pipelined behind it is read under the settings it actually runs under —
 * through the simple protocol, inside an extended batch before its Sync, and
 * with the settings changed by SET, set_config() or RESET. Text in another
 * client encoding is read in that encoding. And when the target runs
 * something other than what was decided, its command tags show it and the
 * session is closed.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readRecords } from "../src/audit/index.ts";
import { withEscapeStrings } from "../src/protocols/postgres/lexing.ts";
import { analyzeSql, initSql, scanSql } from "../src/protocols/postgres/sql.ts";
import { tagAgrees } from "../src/protocols/postgres/tags.ts";
import { API_KEY, psql, startTestGateway, type TestGateway, USER } from "./helpers/gateway.ts";
import { startPostgres, type TestPostgres } from "./helpers/postgres.ts";
import { type BackendMessage, Bind, errorOf, Execute, Flush, Parse, Query, rawSession, rowOf, run, Sync } from "./helpers/wire.ts";

let db: TestPostgres;
let gw: TestGateway;

beforeAll(async () => {
  db = await startPostgres();
  gw = await startTestGateway(db);
  await initSql();
});

afterAll(async () => {
  await gw?.close();
  await db?.stop();
});

const login = () => rawSession(gw.port, { user: USER, password: API_KEY });
const errors = (ms: BackendMessage[]) => ms.filter((m) => m.type === "E").map(errorOf);
const rows = (ms: BackendMessage[]) => ms.filter((m) => m.type === "D").map((m) => rowOf(m).map((v) => v?.toString("latin1") ?? null));

/**
 * Under standard_conforming_strings = on this is one SELECT of two strings;
 * under off, `'x\' , '` is one string and what follows is a DROP TABLE.
 */
const TWO_FACED = "SELECT 'x\\' , ' ; DROP TABLE victim; -- ' AS v";

async function victimExists(): Promise<boolean> {
  return (await db.psql("SELECT count(*) FROM pg_class WHERE relname = 'victim'", "app")).trim() === "1";
}

describe("a setting that changes lexing is a barrier", () => {
  beforeAll(async () => {
    await db.psql("CREATE TABLE victim (id int); GRANT ALL ON victim TO app_scram;", "app");
  });

  test("simple protocol: SET and the statement behind it in one write", async () => {
    const s = await login();
    // The sleep keeps the SET's answer (and its ParameterStatus) from arriving before agate reads what follows.
    s.send([Query("SELECT pg_sleep(0.3); SET standard_conforming_strings = off"), Query(TWO_FACED)]);
    const got = await s.untilReady(2);
    s.close();
    // Read with the setting off, as the target reads it: a SELECT and a DROP TABLE, which the policy refuses.
    expect(errors(got).map((e) => e.code)).toEqual(["42501"]);
    expect(errors(got)[0]!.message).toContain("DROP");
    expect(await victimExists()).toBe(true);
  });

  test("extended protocol: SET inside a batch, the next statement before its Sync (agate probes)", async () => {
    const s = await login();
    s.send([...run("SET standard_conforming_strings = off"), ...run("SELECT 'x\\' , ' , pg_read_file($$/etc/passwd$$) --' AS v"), Sync]);
    const got = await s.untilReady(1);
    // The probe's own answers never reach the client: one ParseComplete, BindComplete, CommandComplete for the SET, then the refusal.
    expect(got.filter((m) => m.type !== "S").map((m) => m.type).join("")).toBe("12CEZ");
    expect(errors(got)[0]!.message).toContain("pg_read_file");
    // The session goes on, in order. The refusal failed the batch on the target too, so its implicit
    // transaction rolled back, SET included, as after any error in PostgreSQL.
    s.send([Query("SHOW standard_conforming_strings")]);
    expect(rows(await s.untilReady(1))).toEqual([["on"]]);
    s.close();
  });

  test("a batch that failed before the probe: the target skips it with the rest, and the session goes on", async () => {
    const s = await login();
    s.send([...run("SELECT set_config('standard_conforming_strings', 'off', false)::int"), ...run("SELECT 1 AS skipped"), Sync, Query("SELECT 'c' AS v")]);
    const got = await s.untilReady(2);
    // The failed cast, then nothing for the skipped statement nor for agate's probe, then the next query.
    expect(got.filter((m) => m.type !== "S" && m.type !== "N").map((m) => m.type).join("")).toBe("12EZTDCZ");
    expect(errors(got).map((e) => e.code)).toEqual(["22P02"]);
    expect(rows(got)).toEqual([["c"]]);
    s.close();
  });

  test("a batch that failed before agate would probe is not probed: the session never hangs", async () => {
    const s = await login();
    // The barrier itself fails; the client flushes, reads the error, then goes on in the same batch.
    s.send([...run("SET statement_timeout = 'bogus'"), Flush]);
    expect((await s.until("E")).at(-1)!.type).toBe("E");
    s.send([...run("SELECT 1"), Sync]);
    expect((await s.untilReady(1)).at(-1)!.type).toBe("Z");
    // In one write, with the error racing agate's probe: always one ReadyForQuery, and the session goes on.
    for (let i = 0; i < 10; i++) {
      s.send([
        ...run("SET statement_timeout = 'bogus'"), ...run("SELECT 1"), Sync,
        // Bind fails (no value for $1) while agate still decides the Execute of the barrier behind it.
        Parse("SELECT set_config('application_name', $1::text, false)"), Bind(), Execute(), ...run("SELECT 1"), Sync,
        ...run("SELECT 1/0"), ...run("SELECT set_config('application_name', 'x', false)"), ...run("SELECT 1"), Sync,
      ]);
      const got = await s.untilReady(3);
      expect(errors(got).map((e) => e.code)).toEqual(["22023", "08P01", "22012"]);
    }
    s.send([Query("SELECT 'alive' AS v")]);
    expect(rows(await s.untilReady(1))).toEqual([["alive"]]);
    s.close();
  });

  test("statement and portal names of agate's own are reserved", async () => {
    const s = await login();
    s.send([Parse("SELECT 1", "agate.lexing.0"), Sync, Parse("SELECT 1"), Bind("", "agate.lexing.0"), Sync]);
    const got = await s.untilReady(2);
    expect(errors(got).map((e) => e.code)).toEqual(["42939", "42939"]);
    s.close();
  });

  test("set_config() and RESET change it too, and so does the end of a transaction", async () => {
    const s = await login();
    s.send([Query("SELECT pg_sleep(0.3), set_config('standard_conforming_strings', 'off', false)"), Query(TWO_FACED)]);
    let got = await s.untilReady(2);
    expect(errors(got).map((e) => e.code)).toEqual(["42501"]);
    // RESET restores on: the statement behind it is read that way and runs.
    s.send([Query("RESET standard_conforming_strings"), Query("SELECT 'a\\' AS v")]);
    got = await s.untilReady(2);
    expect(errors(got)).toEqual([]);
    expect(rows(got)).toEqual([["a\\"]]);
    // SET LOCAL ends with the transaction: a pipelined COMMIT is a barrier once the session has set something.
    s.send([Query("BEGIN"), Query("SET LOCAL standard_conforming_strings = off"), Query("COMMIT"), Query("SELECT 'b\\' AS v")]);
    got = await s.untilReady(4);
    expect(errors(got)).toEqual([]);
    expect(rows(got)).toEqual([["b\\"]]);
    s.close();
    expect(await victimExists()).toBe(true);
  });
});

describe("with standard_conforming_strings off, strings are read as the target reads them", () => {
  // Each text means with the setting off what its rewrite means with it on: compared on the target itself.
  const texts = [
    "SELECT 'a\\'b' AS v",
    "SELECT 'a\\\\' AS v",
    "SELECT 'tab\\there', 'q''q', E'e\\'e' AS v",
    "SELECT 'x\\' , ' ; SELECT 2; -- ' AS v",
    "SELECT N'n\\'n' AS v",
    "SELECT int4'7', text'\\x41' AS v",
    "SELECT 'first'\n'second\\'s' AS v",
    "SELECT $$\\$$, $t$'\\'$t$ AS v",
    "SELECT 1 AS \"id\\\" -- '\\ \n, 'after\\'' /* '\\ */ AS v",
    "SELECT B'01', X'1F', '\\u0041\\101' AS v",
    "SELECT 'é\\'é' AS v",
  ];
  const direct = async (sql: string, scs: "on" | "off") => {
    const postgres = (await import("postgres")).default;
    const c = postgres(db.url("postgres", "app"), { max: 1, onnotice: () => {} });
    try {
      await c.unsafe(`SET standard_conforming_strings = ${scs}; SET escape_string_warning = off`).simple();
      const r = await c.unsafe(sql).simple();
      return JSON.stringify(r);
    } catch (e) {
      return `error ${(e as { code?: string }).code}`;
    } finally {
      await c.end();
    }
  };

  test("the rewrite means with the setting on what the text means with it off", async () => {
    for (const text of texts) {
      const rewritten = withEscapeStrings(text, scanSql);
      expect({ text, result: await direct(rewritten, "on") }).toEqual({ text, result: await direct(text, "off") });
    }
  });

  test("through agate: the statement is decided as the target reads it, and runs", async () => {
    const s = await login();
    s.send([Query("SET standard_conforming_strings = off"), Query("SELECT 'it\\'s' AS v")]);
    const got = await s.untilReady(2);
    s.close();
    expect(errors(got)).toEqual([]);
    expect(rows(got)).toEqual([["it's"]]);
  });
});

describe("statements are read in the session's client encoding", () => {
  // 表 in SJIS is 0x95 0x5C: its second byte is a backslash. Read as anything else, E'表' does not end where it does.
  const SJIS_SELECT = Buffer.concat([Buffer.from("SELECT E'"), Buffer.from([0x95, 0x5c]), Buffer.from("' AS v")]);

  test("SJIS through the simple protocol, SET pipelined with it", async () => {
    const s = await login();
    s.send([Query("SET client_encoding = 'SJIS'"), Query(SJIS_SELECT)]);
    const got = await s.untilReady(2);
    expect(errors(got)).toEqual([]);
    expect(rows(got)).toEqual([["\x95\x5c"]]);
    s.close();
  });

  test("SJIS through the extended protocol, SET in the same batch", async () => {
    const s = await login();
    s.send([...run("SET client_encoding TO 'SJIS'"), Parse(SJIS_SELECT), Bind(), Execute(), Sync]);
    const got = await s.untilReady(1);
    expect(errors(got)).toEqual([]);
    expect(rows(got)).toEqual([["\x95\x5c"]]);
    s.close();
  });

  test("bytes that are not valid in the client encoding are refused with 22021 and recorded", async () => {
    const s = await login();
    s.send([Query("SET client_encoding = 'SJIS'"), Query(Buffer.from([0x53, 0x45, 0x4c, 0x45, 0x43, 0x54, 0x20, 0x27, 0x81, 0x27]))]);
    const got = await s.untilReady(2);
    s.close();
    expect(errors(got).map((e) => e.code)).toEqual(["22021"]);
  });

  test("LATIN1 text is read as LATIN1", async () => {
    const r = await psql(gw.url(), "SELECT 'é' AS v");
    expect(r.stdout.trim()).toBe("é");
    const latin = await rawSession(gw.port, { user: USER, password: API_KEY });
    latin.send([Query("SET client_encoding = 'LATIN1'"), Query(Buffer.from("SELECT 'é' AS v", "latin1"))]);
    expect(rows(await latin.untilReady(2))).toEqual([["é"]]);
    latin.close();
  });
});

describe("command tags agree with the decided statements", () => {
  test("every tag PostgreSQL reports agrees with agate's facts for the statement", async () => {
    // Run each statement directly against PostgreSQL and compare its tag with the facts of the same text.
    const statements = [
      "BEGIN", "SELECT 1", "VALUES (1), (2)", "TABLE pg_namespace", "CREATE TABLE tagged (id int primary key, v text)",
      "INSERT INTO tagged VALUES (1, 'a')", "INSERT INTO tagged VALUES (1, 'b') ON CONFLICT (id) DO UPDATE SET v = 'c'",
      "UPDATE tagged SET v = 'd'", "MERGE INTO tagged t USING (VALUES (2)) s(id) ON t.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (s.id, 'e')",
      "CREATE TABLE tagged2 AS SELECT * FROM tagged", "SELECT * INTO tagged3 FROM tagged", "CREATE MATERIALIZED VIEW tagged_mv AS SELECT 1",
      "REFRESH MATERIALIZED VIEW tagged_mv", "CREATE VIEW tagged_v AS SELECT 1 AS one", "CREATE INDEX ON tagged (v)", "ALTER TABLE tagged ADD COLUMN w int",
      "COMMENT ON TABLE tagged IS 'x'", "DECLARE c CURSOR FOR SELECT 1", "FETCH 1 FROM c", "MOVE 1 FROM c", "CLOSE c", "SAVEPOINT s", "RELEASE s",
      "SAVEPOINT s2", "ROLLBACK TO s2", "SET search_path = public", "SET LOCAL work_mem = '8MB'", "RESET work_mem", "SHOW work_mem",
      "EXPLAIN SELECT 1", "PREPARE p AS SELECT 1", "EXECUTE p", "DEALLOCATE p", "LISTEN ch", "NOTIFY ch", "UNLISTEN *", "LOCK TABLE tagged",
      "SET CONSTRAINTS ALL DEFERRED", "DELETE FROM tagged", "TRUNCATE tagged2", "DROP TABLE tagged3", "DROP VIEW tagged_v", "CREATE SEQUENCE tagged_seq",
      "SELECT nextval('tagged_seq')", "GRANT SELECT ON tagged TO PUBLIC", "REVOKE SELECT ON tagged FROM PUBLIC", "CREATE TYPE tagged_e AS ENUM ('a')",
      "ANALYZE tagged", "COMMIT", "START TRANSACTION", "SELECT 1/0", "COMMIT", "DISCARD ALL", "CREATE TEMP TABLE tagged_t (id int)", "VACUUM tagged",
    ];
    const postgres = (await import("postgres")).default;
    const sql = postgres(db.url("postgres", "app"), { max: 1, onnotice: () => {} });
    try {
      for (const text of statements) {
        let tag: string;
        try {
          const res = await sql.unsafe(text).simple();
          tag = `${res.command}${res.count !== undefined && res.count !== null ? ` ${res.count}` : ""}`;
        } catch {
          continue; // the failing statement; its COMMIT after it reports ROLLBACK, checked below
        }
        const st = analyzeSql(text).statements[0]!;
        expect({ text, tag, agrees: tagAgrees(st, tag) }).toEqual({ text, tag, agrees: true });
      }
    } finally {
      await sql.end();
    }
    expect(tagAgrees(analyzeSql("COMMIT").statements[0]!, "ROLLBACK")).toBe(true);
    expect(tagAgrees(analyzeSql("SELECT 'a'").statements[0]!, "DROP TABLE")).toBe(false);
    expect(tagAgrees(analyzeSql("SELECT 'a'").statements[0]!, "INSERT 0 1")).toBe(false);
    expect(tagAgrees(analyzeSql("INSERT INTO t VALUES (1)").statements[0]!, "DELETE 5")).toBe(false);
  });

  test("a target that ran more statements than were decided closes the session, and the log says why", async () => {
    // A trigger function that turns standard_conforming_strings off and takes its time: agate does not see
    // into triggers, so the statement pipelined behind the INSERT is read under the old setting.
    await db.psql(
      `CREATE TABLE sneaky (id int); CREATE TABLE victim2 (id int);
       CREATE FUNCTION sneaky_trg() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN PERFORM set_config('standard_conforming_strings', 'off', false); PERFORM pg_sleep(0.5); RETURN NEW; END $$;
       CREATE TRIGGER sneaky BEFORE INSERT ON sneaky FOR EACH ROW EXECUTE FUNCTION sneaky_trg();
       GRANT ALL ON sneaky TO app_scram; ALTER TABLE victim2 OWNER TO app_scram;`,
      "app",
    );
    const s = await login();
    s.send([Query("INSERT INTO sneaky VALUES (1)"), Query(TWO_FACED.replace("victim", "victim2"))]);
    const got = await s.untilReady(3);
    expect(s.closed).toBe(true);
    const fatal = errors(got).at(-1)!;
    expect(fatal.message).toContain('the target reported "DROP TABLE" where agate decided no further statement');
    // session_end is ordered into the next group commit: read the log until it is there.
    let reason: string | undefined;
    for (let tries = 0; reason === undefined && tries < 100; tries++) {
      for await (const r of readRecords(gw.auditDir)) if (r.type === "session_end" && String(r.reason).includes("the target reported")) reason = String(r.reason);
      if (reason === undefined) await Bun.sleep(50);
    }
    expect(reason).toContain('the target reported "DROP TABLE" where agate decided no further statement');
  });
});
