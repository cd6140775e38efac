/**
 * Reply accounting: what the client sees through agate is, message for
 * message, what PostgreSQL sends it directly — with agate's error in place
 * of the refused statement's — in the orders where PostgreSQL does not
 * answer one ReadyForQuery per Query or Sync: COPY FROM STDIN entered through
 * the extended protocol (libpq's PQexecParams order, whose Sync the server
 * discards), a Sync or a Query sent during COPY, CopyFail, a Query inside a
 * batch the server already failed, and pipelined batches with a refusal
 * among them. Every scenario ends with a refusal and a sentinel query, so an
 * answer one statement late or one that never comes shows.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readRecords } from "../src/audit/index.ts";
import { message } from "../src/protocols/postgres/wire.ts";
import { API_KEY, startTestGateway, type TestGateway, USER } from "./helpers/gateway.ts";
import { PASSWORD, startPostgres, type TestPostgres } from "./helpers/postgres.ts";
import { type BackendMessage, Bind, errorOf, Execute, Flush, Parse, Query, type RawSession, rawSession, rowOf, Sync } from "./helpers/wire.ts";

let db: TestPostgres;
let gw: TestGateway;

/** The policy of the repro gateway: DROP stays refused. */
const ALLOW_RULES = ["deny_truncate", "deny_alter", "deny_opaque_code", "deny_catalog_unknown", "deny_unanalysed", "approve_ddl", "approve_unbounded_write", "approve_unestimated_write", "approve_large_write"];

beforeAll(async () => {
  db = await startPostgres();
  await db.psql("CREATE TABLE t_copy (id int, v text); GRANT ALL ON t_copy TO app_plain;", "app");
  gw = await startTestGateway(db, { targetUser: "app_plain", config: { policy: { data: { agate: { config: { allow_rules: ALLOW_RULES } } } } } });
});

afterAll(async () => {
  await gw?.close();
  await db?.stop();
});

/**
 * The refused statement: through agate a DROP, which the policy refuses at
 * Parse; directly a statement PostgreSQL fails at Parse, so that the two
 * fail at the same place in a batch.
 */
const THROUGH_REFUSED = "DROP TABLE t_nosuch";
const DIRECT_REFUSED = "SELECT * FROM t_nosuch";

const Describe = (kind: "S" | "P", name = "") => message(0x44, (w) => w.u8(kind.charCodeAt(0)).cstr(name));
const CopyData = (text: string) => message(0x64, (w) => w.bytes(Buffer.from(text)));
const CopyDone = message(0x63);
const CopyFail = (reason: string) => message(0x66, (w) => w.cstr(reason));
const BindTo = (statement: string) => Bind(statement);
const run = (sql: string) => [Parse(sql), Bind(), Execute()];

/** One write, then read up to `z` ReadyForQuery messages, or up to the first message of type `until`. */
interface Step {
  send: Buffer[];
  z?: number;
  until?: string;
}

/** A scenario: its steps, given the statement that is refused through agate (R). */
type Scenario = (R: string) => Step[];

/** Each scenario ends so: the refused statement, alone, then a sentinel query. */
const tail = (R: string): Step[] => [{ send: [Query(R)] }, { send: [Query("SELECT 'sentinel'")] }];

function norm(m: BackendMessage): string {
  switch (m.type) {
    case "E": {
      const e = errorOf(m);
      if (e.message.startsWith("agate: statement refused") || (e.code === "42P01" && e.message.includes("t_nosuch"))) return "E:REFUSED";
      return `E:${e.code}`;
    }
    case "C":
      return `C:${m.body.toString("utf8", 0, m.body.length - 1)}`;
    case "Z":
      return `Z:${String.fromCharCode(m.body[0]!)}`;
    case "D":
      return `D:${rowOf(m).map((v) => v?.toString() ?? "NULL").join(",")}`;
    case "d":
      return `d:${m.body.toString()}`;
    case "T":
    case "G":
    case "H":
      return `${m.type}:${m.body.toString("hex")}`;
    default:
      return m.type;
  }
}

async function play(s: RawSession, steps: Step[]): Promise<string[][]> {
  const out: string[][] = [];
  for (const step of steps) {
    s.send(step.send);
    const got = step.until ? await s.until(step.until) : await s.untilReady(step.z ?? 1);
    // ParameterStatus reports and notices are not what is compared.
    out.push(got.filter((m) => m.type !== "S" && m.type !== "N").map(norm));
  }
  s.close();
  return out;
}

const direct = () => rawSession(db.port, { user: "app_plain", password: PASSWORD });
const through = () => rawSession(gw.port, { user: USER, password: API_KEY });

/** Run `scenario` directly and through agate; the client must see the same. Returns the direct answers. */
async function same(scenario: Scenario): Promise<string[][]> {
  const want = await play(await direct(), [...scenario(DIRECT_REFUSED), ...tail(DIRECT_REFUSED)]);
  const got = await play(await through(), [...scenario(THROUGH_REFUSED), ...tail(THROUGH_REFUSED)]);
  expect(got).toEqual(want);
  // Not vacuous: the refusal and the sentinel were answered in their places.
  expect(want.at(-2)).toEqual(["E:REFUSED", "Z:I"]);
  expect(want.at(-1)?.slice(1)).toEqual(["D:sentinel", "C:SELECT 1", "Z:I"]);
  return want;
}

const COPY_IN = "COPY t_copy FROM STDIN";

/**
 * A message other than CopyData, CopyDone, CopyFail, Sync or Flush while the
 * server reads COPY data: PostgreSQL fails the COPY and ends the connection
 * ("protocol synchronization was lost", 08P01), and so does agate, without
 * forwarding it.
 */
async function lostSync(start: Buffer[], during: Buffer[], unrun: string): Promise<void> {
  for (const s of [await direct(), await through()]) {
    s.send(start);
    expect((await s.until("G")).map(norm).at(-1)).toStartWith("G:");
    s.send(during);
    const got = await s.untilReady();
    expect(got.map(norm).every((m) => m === "E:08P01")).toBe(true);
    expect(got.length).toBeGreaterThan(0);
    expect(s.closed).toBe(true);
  }
  expect((await records()).filter((r) => r.type === "command" && r.text === unrun)).toEqual([]);
}

async function records(): Promise<Record<string, unknown>[]> {
  await Bun.sleep(50);
  const all: Record<string, unknown>[] = [];
  for await (const r of readRecords(gw.auditDir)) all.push(r);
  return all;
}

describe("COPY FROM STDIN through the extended protocol", () => {
  test("libpq's order: Execute and Sync together, CopyData, CopyDone and a second Sync (the server discards the first); and without the first", async () => {
    const want = await same(() => [
      { send: [Parse(COPY_IN), Bind(), Execute(), Flush], until: "G" },
      { send: [CopyData("8\tno-sync\n"), CopyDone, Sync] },
      { send: [Parse(COPY_IN), Bind(), Describe("P"), Execute(), Sync], until: "G" },
      { send: [CopyData("7\tlibpq-style\n"), CopyDone, Sync] },
    ]);
    expect(want[3]).toEqual(["C:COPY 1", "Z:I"]);
  });

  test("everything in one write, data included, before the server answers", async () => {
    const want = await same(() => [{ send: [Parse(COPY_IN), Bind(), Execute(), Sync, CopyData("9\tone-write\n"), Flush, Sync, CopyDone, Sync] }]);
    expect(want[0]).toEqual(["1", "2", "G:00000200000000", "C:COPY 1", "Z:I"]);
  });

  test("CopyFail: the batch fails, the Sync after it is answered", async () => {
    const want = await same(() => [
      { send: [Parse(COPY_IN), Bind(), Execute(), Sync], until: "G" },
      { send: [CopyFail("client gave up"), Sync] },
    ]);
    expect(want[1]).toEqual(["E:57014", "Z:I"]);
  });

  test("a COPY that fails before it reads (read-only transaction), its data sent anyway: each Sync is answered; one that fails on a row: one", async () => {
    const want = await same(() => [
      { send: [Query("BEGIN READ ONLY")] },
      { send: [...run(COPY_IN), Sync, CopyData("1\tx\n"), CopyDone, Sync], z: 2 },
      { send: [Query("ROLLBACK")] },
      { send: [Parse(COPY_IN), Bind(), Execute(), Sync], until: "G" },
      { send: [CopyData("not-a-number\tx\n"), CopyDone, Sync] },
    ]);
    expect(want[1]).toEqual(["1", "2", "E:25006", "Z:E", "Z:E"]);
    expect(want[4]).toEqual(["E:22P02", "Z:I"]);
  });

  test("a Query sent while the server reads COPY data ends the connection, unrun", async () => {
    await lostSync([Parse(COPY_IN), Bind(), Execute(), Sync], [Query("SELECT 'not run, extended'"), Sync], "SELECT 'not run, extended'");
  });
});

describe("COPY through the simple protocol", () => {
  test("a Sync during COPY is discarded in COPY FROM STDIN, and answered after COPY TO STDOUT", async () => {
    await same(() => [
      { send: [Query("COPY (SELECT 1, 'x') TO STDOUT"), Sync], z: 2 },
      { send: [...run("COPY (SELECT 2) TO STDOUT"), Sync, Sync], z: 2 },
      { send: [Query(COPY_IN)], until: "G" },
      { send: [Sync, CopyData("1\tx\n"), Flush, CopyDone] },
    ]);
  });

  test("CopyFail after a Sync", async () => {
    const want = await same(() => [
      { send: [Query(COPY_IN)], until: "G" },
      { send: [Sync, CopyFail("no")] },
    ]);
    expect(want[1]).toEqual(["E:57014", "Z:I"]);
  });

  test("two COPY FROM STDIN in one query, the second one's data sent before it starts", async () => {
    await same(() => [
      { send: [Query(`${COPY_IN}; ${COPY_IN}`)], until: "G" },
      { send: [CopyData("1\ta\n"), CopyDone, Sync, CopyData("2\tb\n"), CopyDone] },
    ]);
  });

  test("a Query during COPY FROM STDIN ends the connection, unrun", async () => {
    await lostSync([Query(COPY_IN)], [Query("SELECT 'not run, simple'")], "SELECT 'not run, simple'");
  });
});

describe("a batch the server already failed", () => {
  test("a Query inside it is discarded with the rest, up to the Sync", async () => {
    const want = await same(() => [{ send: [BindTo("nosuch_stmt"), Query("SELECT 'inside-batch'"), Sync] }]);
    expect(want[0]).toEqual(["E:26000", "Z:I"]);
  });

  test("failed at Execute, then a Query, then more of the batch; a Query inside a batch that did not fail runs there", async () => {
    const want = await same(() => [
      { send: [...run("SELECT 1"), Query("SELECT 'runs'"), ...run("SELECT 2"), Sync], z: 2 },
      { send: [...run("SELECT 1/0"), Query("SELECT 'inside-batch'"), ...run("SELECT 2"), Sync] },
    ]);
    expect(want[0]).toContain("D:runs");
    expect(want[1]).toEqual(["1", "E:22012", "Z:I"]);
  });

  test("a refused statement after the failure: the client gets the server's error, as directly", async () => {
    // The batch before keeps the server busy, so its Bind error arrives after agate has refused what follows it.
    await same((R) => [
      { send: [BindTo("nosuch_stmt"), ...run(R), Sync] },
      { send: [...run("SELECT pg_sleep(0.2)"), Sync, BindTo("nosuch_stmt"), ...run(R), Sync], z: 2 },
    ]);
  });

  test("a refused Query inside it is discarded too", async () => {
    await same((R) => [{ send: [BindTo("nosuch_stmt"), Query(R), Sync] }]);
  });

  test("inside a transaction block: the block is aborted, as directly", async () => {
    await same((R) => [{ send: [Query("BEGIN")] }, { send: [BindTo("nosuch_stmt"), Query(R), ...run("SELECT 1"), Sync] }, { send: [Query("COMMIT")] }]);
  });
});

describe("pipelined batches", () => {
  test("a refusal in the middle: the batches before and after it are answered in order, after a failed one too", async () => {
    const want = await same((R) => [
      { send: [...run("SELECT 1"), Sync, ...run(R), Sync, ...run("SELECT 2"), Sync], z: 3 },
      { send: [...run("SELECT 1/0"), Query("SELECT 'skipped'"), Sync, ...run(R), Sync, ...run("SELECT 2"), Sync], z: 3 },
    ]);
    expect(want[0]).toEqual(["1", "2", "D:1", "C:SELECT 1", "Z:I", "E:REFUSED", "Z:I", "1", "2", "D:2", "C:SELECT 1", "Z:I"]);
  });

  test("a refusal after a COPY in the same pipeline", async () => {
    await same((R) => [
      { send: [Parse(COPY_IN), Bind(), Execute(), Sync], until: "G" },
      { send: [CopyData("3\tpiped\n"), CopyDone, Sync, ...run(R), Sync, ...run("SELECT 3"), Sync], z: 3 },
    ]);
  });

  test("a refused Query in a transaction after an extended COPY leaves it aborted", async () => {
    await same((R) => [
      { send: [Query("BEGIN")] },
      { send: [Parse(COPY_IN), Bind(), Execute(), Sync], until: "G" },
      { send: [CopyData("4\ttx\n"), CopyDone, Sync] },
      { send: [Query(R)] },
      { send: [Query("COMMIT")] },
    ]);
  });
});

describe("the audit log", () => {
  test("an extended COPY's outcome is its own, and the refusal after it is recorded as refused", async () => {
    const s = await through();
    await play(s, [
      { send: [Parse("COPY t_copy FROM STDIN -- audited"), Bind(), Execute(), Sync], until: "G" },
      { send: [CopyData("5\taudited\n"), CopyDone, Sync] },
      { send: [Query("DROP TABLE t_nosuch -- audited")] },
      { send: [Query("SELECT 'audited'")] },
    ]);
    const all = await records();
    const outcomeOf = (text: string) => {
      const cmd = all.find((r) => r.type === "command" && r.text === text)!;
      expect(cmd).toBeDefined();
      return all.find((r) => r.type === "outcome" && r.session === cmd.session && (r.seqs as number[]).includes(cmd.seq as number));
    };
    expect(outcomeOf("COPY t_copy FROM STDIN -- audited")?.tags).toEqual(["COPY 1"]);
    expect(outcomeOf("SELECT 'audited'")?.tags).toEqual(["SELECT 1"]);
    const denied = all.find((r) => r.type === "command" && r.text === "DROP TABLE t_nosuch -- audited")!;
    expect((denied.decision as { allow: boolean }).allow).toBe(false);
  });
});

describe("libpq", () => {
  const C = `
#include <stdio.h>
#include <libpq-fe.h>
/* COPY FROM STDIN through PQexecParams (the extended protocol), a refused DROP, a SELECT. */
int main(int argc, char **argv) {
  PGconn *c = PQconnectdb(argv[1]);
  if (PQstatus(c) != CONNECTION_OK) { fprintf(stderr, "%s", PQerrorMessage(c)); return 2; }
  PGresult *r = PQexecParams(c, "copy t_copy from stdin", 0, NULL, NULL, NULL, NULL, 0);
  printf("start %s\\n", PQresStatus(PQresultStatus(r))); PQclear(r);
  PQputCopyData(c, "6\\tlibpq\\n", 8);
  PQputCopyEnd(c, NULL);
  while ((r = PQgetResult(c))) { printf("end %s %s\\n", PQresStatus(PQresultStatus(r)), PQcmdStatus(r)); PQclear(r); }
  r = PQexec(c, argv[2]);
  printf("refused %s %s\\n", PQresStatus(PQresultStatus(r)), PQresultErrorField(r, PG_DIAG_SQLSTATE)); PQclear(r);
  r = PQexecParams(c, "select $1::text", 1, NULL, (const char *[]){"after"}, NULL, NULL, 0);
  printf("select %s %s\\n", PQresStatus(PQresultStatus(r)), PQresultStatus(r) == PGRES_TUPLES_OK ? PQgetvalue(r, 0, 0) : PQresultErrorMessage(r)); PQclear(r);
  PQfinish(c);
  return 0;
}
`;
  const cc = Bun.which("cc");
  if (!cc) console.warn("test/pg-replies.test.ts: no C compiler (cc) on PATH, so the libpq client test is skipped; scripts/setup.sh installs gcc and libpq-dev");
  test.skipIf(!cc)("PQexecParams(COPY … FROM STDIN), then a refusal and a query: answered in order (needs cc and libpq-dev)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "agate-libpq-"));
    try {
      await Bun.write(join(dir, "copy.c"), C);
      const build = Bun.spawn([cc!, "-o", join(dir, "copy"), join(dir, "copy.c"), "-I/usr/include/postgresql", "-lpq"], { stderr: "pipe" });
      const code = await build.exited;
      expect(`${code} ${await new Response(build.stderr).text()}`).toBe("0 ");
      const exec = async (url: string, refused: string) => {
        const p = Bun.spawn([join(dir, "copy"), url, refused], { stdout: "pipe", stderr: "pipe" });
        const [out, status] = await Promise.all([new Response(p.stdout).text(), p.exited]);
        return { out, status };
      };
      const want = await exec(db.url("app_plain", "app"), "drop table t_nosuch");
      const got = await exec(gw.url(), "drop table t_nosuch");
      expect(want).toEqual({ out: "start PGRES_COPY_IN\nend PGRES_COMMAND_OK COPY 1\nrefused PGRES_FATAL_ERROR 42P01\nselect PGRES_TUPLES_OK after\n", status: 0 });
      expect(got).toEqual({ out: "start PGRES_COPY_IN\nend PGRES_COMMAND_OK COPY 1\nrefused PGRES_FATAL_ERROR 42501\nselect PGRES_TUPLES_OK after\n", status: 0 });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
