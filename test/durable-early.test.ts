/**
 * The log's contract (docs/ARCHITECTURE.md): nothing the client receives
 * leaves agate before the record of the statement that produced it is
 * durable, and nothing takes durable effect in the database before its
 * record is durable. Statements that provably cannot take durable effect
 * first are forwarded at once, their answer held until the record is
 * durable (src/protocols/postgres/early.ts); every other one waits.
 *
 * The gateway runs in-process with its audit fdatasync held by the test, so
 * "forwarded" is what the target itself shows (pg_stat_activity, the rows it
 * holds) while the record is not durable yet.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import pg from "pg";
import postgres from "postgres";
import type { FileHandle } from "node:fs/promises";
import type { SqlStatement } from "../src/core/types.ts";
import { forwardEarly } from "../src/protocols/postgres/early.ts";
import { CatalogFacts } from "../src/protocols/postgres/facts.ts";
import { analyzeSql, initSql } from "../src/protocols/postgres/sql.ts";
import { startTestGateway, type TestGateway } from "./helpers/gateway.ts";
import { startPostgres, type TestPostgres } from "./helpers/postgres.ts";

let db: TestPostgres;

/** The audit log's fdatasync, held while `held` is set; `failNext` makes the next one fail (an EIO). */
class SyncControl {
  held = false;
  /** fdatasyncs started while held (each waits for release()). */
  waiting = 0;
  failNext = false;
  private waiters: (() => void)[] = [];
  readonly faults = {
    datasync: async (fh: FileHandle) => {
      if (this.held) {
        this.waiting++;
        await new Promise<void>((resolve) => this.waiters.push(resolve));
      }
      if (this.failNext) {
        this.failNext = false;
        throw Object.assign(new Error("EIO: i/o error, fdatasync"), { code: "EIO" });
      }
      await fh.datasync();
    },
  };
  hold(): void {
    this.held = true;
    this.waiting = 0;
  }
  release(): void {
    this.held = false;
    for (const w of this.waiters.splice(0)) w();
  }
}

beforeAll(async () => {
  await initSql();
  db = await startPostgres();
  await db.psql(`CREATE TABLE early (v text NOT NULL); ALTER TABLE early OWNER TO app_scram;
    CREATE TABLE hooked (v text NOT NULL); ALTER TABLE hooked OWNER TO app_scram;
    CREATE FUNCTION note_it() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
    CREATE TRIGGER hooked_note BEFORE INSERT ON hooked FOR EACH ROW EXECUTE FUNCTION note_it();
    CREATE TABLE guarded (v text); ALTER TABLE guarded ENABLE ROW LEVEL SECURITY;
    CREATE TABLE parent (id int PRIMARY KEY); CREATE TABLE child (id int REFERENCES parent);
    CREATE VIEW early_view AS SELECT v FROM early;
    CREATE FUNCTION user_stable() RETURNS int LANGUAGE sql STABLE AS 'SELECT 1';
    CREATE FUNCTION user_volatile() RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN 'x'; END $$;
    CREATE TABLE defaulted (v text DEFAULT user_volatile()); CREATE TABLE checked (v text CHECK (v <> user_volatile()));`);
  // A database whose operators run a user's code: any statement may reach it without naming it.
  await db.psql("CREATE DATABASE hidden", "postgres");
  await db.psql(`CREATE FUNCTION same(a int, b int) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN RETURN a = b; END $$;
    CREATE OPERATOR === (LEFTARG = int, RIGHTARG = int, FUNCTION = same);`, "hidden");
}, 120_000);

afterAll(async () => {
  await db?.stop();
});

/** Poll `cond` up to `tries` times, 20 ms apart; true once it holds. */
async function until(cond: () => boolean | Promise<boolean>, tries = 500): Promise<boolean> {
  for (let i = 0; i < tries; i++) {
    if (await cond()) return true;
    await Bun.sleep(20);
  }
  return cond();
}

/** How many backends of the target are running (or last ran) exactly `text`. */
async function seenByTarget(text: string): Promise<number> {
  return Number((await db.psql(`SELECT count(*) FROM pg_stat_activity WHERE query = '${text.replaceAll("'", "''")}'`)).trim());
}

/** A query's promise, and whether it has settled. */
function watch<T>(p: Promise<T>): { p: Promise<T>; settled: () => boolean } {
  let done = false;
  p.then(
    () => (done = true),
    () => (done = true),
  );
  return { p, settled: () => done };
}

describe("which statements are forwarded before their record is durable", () => {
  let sql: postgres.Sql;
  let facts: CatalogFacts;
  beforeAll(() => {
    sql = postgres(db.url(), { max: 1, onnotice: () => {}, connection: { search_path: "" } });
    facts = new CatalogFacts((text, params) => sql.unsafe(text, params as never[]) as never);
  });
  afterAll(() => sql.end());

  async function early(text: string, inBlock: boolean): Promise<boolean> {
    const command = { seq: 1, text, sql: analyzeSql(text) };
    await facts.complete(command, "v1");
    expect(command.sql.catalog).toEqual({ known: true });
    return forwardEarly(command.sql.statements as SqlStatement[], inBlock, facts);
  }

  /** Each case's text is forwarded early (true) or durable first (false). */
  async function expectEarly(cases: [string, boolean][], inBlock: boolean): Promise<void> {
    const got: [string, boolean][] = [];
    for (const [text] of cases) got.push([text, await early(text, inBlock)]);
    expect(got).toEqual(cases);
  }

  test("outside a block: reads of plain relations with immutable or stable built-ins, and BEGIN", async () => {
    const cases: [string, boolean][] = [
      ["SELECT v FROM early WHERE v = 'x'", true],
      ["SELECT now(), lower('A'), count(*) FROM early", true],
      ["SELECT relname FROM pg_class; SHOW search_path", true],
      ["SELECT * FROM pg_stat_activity", true], // a catalog view
      ["BEGIN", true],
      ["BEGIN; UPDATE early SET v = v", true], // the UPDATE runs inside the block BEGIN opened, which the query does not commit
      ["SELECT * FROM child JOIN parent USING (id)", true],
      // autocommit writes, volatile functions, what runs code the statement does not name
      ["INSERT INTO early VALUES ('x')", false],
      ["SELECT random()", false],
      ["SELECT nextval('s')", false],
      ["SELECT pg_terminate_backend(1)", false],
      ["SELECT set_config('search_path', 'public', false)", false],
      ["SELECT user_stable()", false], // not built in: its body may do anything
      ["SELECT * FROM early_view", false],
      ["SELECT * FROM guarded", false], // row security policies may call functions
      ["SELECT * FROM no_such_table", false],
      ["WITH d AS (DELETE FROM early RETURNING v) SELECT * FROM d", false],
      ["SELECT 1; INSERT INTO early VALUES ('x')", false], // one implicit transaction, committed at its end
      ["SET search_path = public", false],
      ["COPY early TO STDOUT", false],
      ["CREATE TABLE x (a int)", false],
      ["NOTIFY ch", false],
      ["COMMIT", false],
    ];
    await expectEarly(cases, false);
  });

  test("on a target whose operators, casts or domain checks run a user's code, nothing is forwarded early", async () => {
    const other = postgres(db.url("postgres", "hidden"), { max: 1, onnotice: () => {}, connection: { search_path: "" } });
    try {
      const hidden = new CatalogFacts((text, params) => other.unsafe(text, params as never[]) as never);
      const command = { seq: 1, text: "SELECT 1", sql: analyzeSql("SELECT 1") };
      await hidden.complete(command, "v1");
      expect(hidden.hiddenCode).toBe(true);
      expect(forwardEarly(command.sql.statements as SqlStatement[], true, hidden)).toBe(false);
      // …while the other database has none.
      expect(facts.hiddenCode).toBe(false);
    } finally {
      await other.end();
    }
  });

  test("inside a block: row writes and the harmless volatile built-ins too; never what ends the block or escapes it", async () => {
    const cases: [string, boolean][] = [
      ["INSERT INTO early VALUES ('x')", true],
      ["UPDATE early SET v = 'y' WHERE v = 'x'; DELETE FROM early WHERE v = 'y'", true],
      ["INSERT INTO child VALUES (1)", true], // foreign keys' triggers are the catalog's own
      ["SELECT nextval('s'), random(), gen_random_uuid(), clock_timestamp()", true],
      ["NOTIFY ch", true],
      ["SAVEPOINT a; RELEASE a", true],
      ["ROLLBACK", true],
      ["COMMIT", false],
      ["END", false],
      ["PREPARE TRANSACTION 'x'", false],
      ["COMMIT PREPARED 'x'", false],
      ["UPDATE early SET v = 'x'; COMMIT", false],
      ["ROLLBACK; INSERT INTO early VALUES ('x')", false], // after ROLLBACK the INSERT runs in autocommit
      ["INSERT INTO hooked VALUES ('x')", false], // a user trigger
      ["INSERT INTO defaulted VALUES ('x')", false], // a default that calls a user's function
      ["UPDATE checked SET v = 'y'", false], // a constraint that does
      ["SELECT * FROM defaulted", true],
      ["SELECT * FROM hooked", true], // reading runs no trigger
      ["SELECT setval('s', 1)", false], // not rolled back
      ["SELECT pg_advisory_lock(1)", false], // outlives the block
      ["SELECT pg_terminate_backend(1)", false],
      ["INSERT INTO early SELECT user_stable()::text", false],
      ["SET LOCAL search_path = public", false],
      ["CALL p()", false],
      ["DO $$ BEGIN END $$", false],
      ["COPY early FROM STDIN", false],
      ["ALTER TABLE early ADD COLUMN w int", false],
    ];
    await expectEarly(cases, true);
  });
});

describe("the log's contract through the gateway", () => {
  const syncs = new SyncControl();
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startTestGateway(db, { auditFaults: syncs.faults });
  });
  afterAll(async () => {
    syncs.release();
    await gw?.close();
  });

  for (const simple of [true, false]) {
    const protocol = simple ? "simple" : "extended";
    test(`${protocol}: a read is forwarded at once, and answered only once its record is durable`, async () => {
      const sql = postgres(gw.url(), { max: 1, onnotice: () => {}, prepare: false });
      try {
        await sql`SELECT 1`; // the session's start is durable
        const text = `SELECT 'early read ${protocol}' AS v`;
        syncs.hold();
        const q = watch(simple ? sql.unsafe(text).simple() : sql.unsafe(text));
        // The target runs it while the record is not durable yet…
        expect(await until(async () => (await seenByTarget(text)) === 1)).toBe(true);
        expect(await until(() => syncs.waiting > 0)).toBe(true);
        // …and the client has no answer.
        expect(q.settled()).toBe(false);
        syncs.release();
        expect({ ...(await q.p)[0] }).toEqual({ v: `early read ${protocol}` });
      } finally {
        syncs.release();
        await sql.end();
      }
    });

    test(`${protocol}: an autocommit write reaches the target only once its record is durable`, async () => {
      const sql = postgres(gw.url(), { max: 1, onnotice: () => {}, prepare: false });
      try {
        await sql`SELECT 1`;
        const text = `INSERT INTO early VALUES ('autocommit ${protocol}')`;
        syncs.hold();
        const q = watch(simple ? sql.unsafe(text).simple() : sql.unsafe(text));
        expect(await until(() => syncs.waiting > 0)).toBe(true);
        // The record is being made durable: the target has not seen the statement.
        for (let i = 0; i < 5; i++) {
          expect(await seenByTarget(text)).toBe(0);
          expect(await db.psql(`SELECT count(*) FROM early WHERE v = 'autocommit ${protocol}'`)).toBe("0\n");
        }
        expect(q.settled()).toBe(false);
        syncs.release();
        await q.p;
        expect(await db.psql(`SELECT count(*) FROM early WHERE v = 'autocommit ${protocol}'`)).toBe("1\n");
      } finally {
        syncs.release();
        await sql.end();
      }
    });

    test(`${protocol}: inside a transaction block a write is forwarded at once, its answer held; COMMIT waits for its record`, async () => {
      const sql = postgres(gw.url(), { max: 1, onnotice: () => {}, prepare: false });
      const run = (text: string) => (simple ? sql.unsafe(text).simple() : sql.unsafe(text));
      const count = async () => (await db.psql(`SELECT count(*) FROM early WHERE v = 'in block ${protocol}'`)).trim();
      try {
        await run("BEGIN");
        const text = `INSERT INTO early VALUES ('in block ${protocol}')`;
        syncs.hold();
        const q = watch(run(text));
        expect(await until(async () => (await seenByTarget(text)) === 1)).toBe(true);
        expect(await until(() => syncs.waiting > 0)).toBe(true);
        expect(q.settled()).toBe(false);
        syncs.release();
        await q.p;
        // COMMIT is durable first: while its record is not durable, the target has not committed.
        syncs.hold();
        const commit = watch(run("COMMIT"));
        expect(await until(() => syncs.waiting > 0)).toBe(true);
        for (let i = 0; i < 5; i++) expect(await count()).toBe("0");
        expect(commit.settled()).toBe(false);
        syncs.release();
        await commit.p;
        expect(await count()).toBe("1");
      } finally {
        syncs.release();
        await sql.end();
      }
    });
  }
});

describe("a record that cannot be made durable after its statement was forwarded", () => {
  const syncs = new SyncControl();
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startTestGateway(db, { auditFaults: syncs.faults, config: { log_level: "error" } });
  });
  afterAll(async () => {
    syncs.release();
    await gw?.close().catch(() => {});
  });

  test("the client gets no answer, only agate's error; the session closes and the target rolls the block back", async () => {
    const c = new pg.Client({ connectionString: gw.url() });
    c.on("error", () => {}); // the connection ends under it
    await c.connect();
    try {
      await c.query("BEGIN");
      const text = "INSERT INTO early VALUES ('never durable')";
      syncs.hold();
      const q = watch(c.query(text));
      expect(await until(async () => (await seenByTarget(text)) === 1)).toBe(true);
      expect(await until(() => syncs.waiting > 0)).toBe(true);
      syncs.failNext = true;
      syncs.release();
      const err = await q.p.then(
        () => undefined,
        (e: Error & { code?: string }) => e,
      );
      // Not the INSERT's answer: agate's error, saying the log failed.
      expect(err?.message).toContain("The audit log could not write or fsync");
      expect(err?.code).toBe("XX000");
      // The target's backend is gone with its connection, and the row with its transaction.
      expect(await until(async () => (await seenByTarget(text)) === 0)).toBe(true);
      expect(await db.psql(`SELECT count(*) FROM early WHERE v = 'never durable'`)).toBe("0\n");
    } finally {
      syncs.release();
      await c.end().catch(() => {});
    }
  });
});
