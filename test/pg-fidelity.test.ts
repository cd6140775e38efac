/**
 * What a client sees through agate is what it would see connected directly:
 * the target backend's own pid (pg_backend_pid(), notifications,
 * pg_terminate_backend, cancels), the settings it asks for at connect
 * (startup parameters and `options`, under the session-stage policy), and
 * agate's own messages in its client encoding.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import postgres from "postgres";
import { readRecords } from "../src/audit/index.ts";
import { encodeClientText } from "../src/protocols/postgres/encoding.ts";
import { inClientEncoding, NoticeResponse } from "../src/protocols/postgres/messages.ts";
import { optionSettings, splitOptions, startupSettings } from "../src/protocols/postgres/startup.ts";
import { startupPacket } from "../src/protocols/postgres/wire.ts";
import { sh, startTestGateway, type TestGateway } from "./helpers/gateway.ts";
import { startPostgres, type TestPostgres } from "./helpers/postgres.ts";

let db: TestPostgres;
let gw: TestGateway;
const dir = mkdtempSync(join(tmpdir(), "agate-fidelity-"));

beforeAll(async () => {
  db = await startPostgres();
  await db.psql("CREATE SCHEMA foo AUTHORIZATION app_scram; CREATE TABLE foo.marker (v text); INSERT INTO foo.marker VALUES ('in foo'); ALTER TABLE foo.marker OWNER TO app_scram; ANALYZE foo.marker;", "app");
  gw = await startTestGateway(db);
});

afterAll(async () => {
  await gw?.close();
  await db?.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function records(): Promise<Record<string, any>[]> {
  const out: Record<string, any>[] = [];
  for await (const r of readRecords(gw.auditDir)) out.push(r as Record<string, any>);
  return out;
}

/** The records that satisfy `ok` once there are `n` of them (refusals and cancels are group-committed: poll). */
async function recordsWhere(ok: (r: Record<string, any>) => boolean, n = 1): Promise<Record<string, any>[]> {
  for (;;) {
    const found = (await records()).filter(ok);
    if (found.length >= n) return found;
    await Bun.sleep(20);
  }
}

/** psql through agate, its output as bytes (for encodings other than UTF-8). */
async function psqlBytes(url: string, args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: Buffer; stderr: Buffer }> {
  const p = Bun.spawn(["psql", "-X", "-At", url, ...args], { stdout: "pipe", stderr: "pipe", stdin: "ignore", env: { ...process.env, ...env } });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).arrayBuffer(), new Response(p.stderr).arrayBuffer(), p.exited]);
  return { code, stdout: Buffer.from(stdout), stderr: Buffer.from(stderr) };
}

/** The error a node-postgres client gets connecting to `url`. */
async function connectError(url: string): Promise<Error & { code?: string }> {
  const c = new pg.Client({ connectionString: url });
  const err = await c.connect().then(() => null, (e) => e);
  await c.end().catch(() => {});
  if (!err) throw new Error("the connection was not refused");
  return err;
}

describe("the backend pid", () => {
  test("the driver's processID is the target backend's pg_backend_pid()", async () => {
    const c = new pg.Client({ connectionString: gw.url() });
    await c.connect();
    try {
      const pid = (c as unknown as { processID: number }).processID;
      const { rows } = await c.query("SELECT pg_backend_pid() AS pid");
      expect(rows[0].pid).toBe(pid);
      // The target knows this pid as a backend of the gateway's target user.
      expect((await db.psql(`SELECT usename FROM pg_stat_activity WHERE pid = ${pid}`)).trim()).toBe("app_scram");
    } finally {
      await c.end();
    }
  });

  test("a notification carries the same pid the client got", async () => {
    const c = new pg.Client({ connectionString: gw.url() });
    await c.connect();
    try {
      const got = new Promise<pg.Notification>((resolve) => c.on("notification", resolve));
      await c.query("LISTEN fidelity");
      await c.query("NOTIFY fidelity, 'hello'");
      const n = await got;
      expect(n.processId).toBe((c as unknown as { processID: number }).processID);
      expect(n.payload).toBe("hello");
    } finally {
      await c.end();
    }
  });

  test("pg_terminate_backend of that pid from another session ends the client's session", async () => {
    const c = new pg.Client({ connectionString: gw.url() });
    const ended = new Promise<Error>((resolve) => c.on("error", resolve));
    await c.connect();
    const pid = (c as unknown as { processID: number }).processID;
    expect((await db.psql(`SELECT pg_terminate_backend(${pid})`)).trim()).toBe("t");
    const err = (await ended) as Error & { code?: string };
    expect(err.code).toBe("57P01");
    await c.end().catch(() => {});
  });

  test("the driver's cancel stops the query on the right backend; a cancel with a wrong secret does nothing", async () => {
    const sql = postgres(gw.url(), { max: 1 });
    const other = new pg.Client({ connectionString: db.url("app_scram", "app") }); // direct: it watches the target's activity
    await other.connect();
    try {
      const pid: number = (await sql`SELECT pg_backend_pid() AS pid`)[0]!.pid;
      // The right pid with a made-up secret is ignored, as PostgreSQL ignores it.
      const forged = await new Promise<void>((resolve) => {
        const s = net.connect(gw.port, "127.0.0.1", () => s.end(startupPacket((w) => w.i32(80877102).i32(pid).i32(12345))));
        s.on("close", () => resolve());
        s.on("error", () => resolve());
      });
      void forged;
      const q = sql`SELECT pg_sleep(30)`;
      const started = q.execute();
      // Wait until the target runs it, then cancel through the driver.
      for (;;) {
        const { rows } = await other.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1 AND query LIKE 'SELECT pg_sleep%'", [pid]);
        if (rows[0].n === 1) break;
        await Bun.sleep(20);
      }
      q.cancel();
      const err = await started.then(() => null, (e) => e);
      expect(err?.code).toBe("57014");
      const cancels = await recordsWhere((r) => r.type === "cancel");
      expect(cancels).toHaveLength(1); // the forged one is not even recorded
      expect((await sql`SELECT pg_backend_pid() AS pid`)[0]!.pid).toBe(pid);
    } finally {
      await other.end();
      await sql.end();
    }
  });
});

describe("startup settings", () => {
  test("options -c, with backslash escapes, and --name=value reach the target", async () => {
    const options = encodeURIComponent(String.raw`-c search_path=foo -c datestyle=SQL,\ DMY --statement-timeout=4321`);
    const r = await sh(["psql", "-X", "-At", gw.url({ params: `options=${options}` }), "-c", "SELECT current_setting('search_path'), current_setting('datestyle'), current_setting('statement_timeout'), v FROM marker", "-c", "UPDATE marker SET v = v"]);
    expect(r.stderr).toBe("");
    // The write's estimate (approvals.rego) is made on the session's search_path: marker is foo.marker.
    expect(r.stdout.trim()).toBe("foo|SQL, DMY|4321ms|in foo\nUPDATE 1");
  });

  test("porsager's connection parameters and node-postgres's options reach the target", async () => {
    const sql = postgres(gw.url(), { max: 1, connection: { application_name: "porsager-app", search_path: "foo", idle_in_transaction_session_timeout: 12345 } });
    try {
      const [row] = await sql`SELECT current_setting('application_name') AS app, current_setting('search_path') AS path, current_setting('idle_in_transaction_session_timeout') AS idle`;
      expect(row).toEqual({ app: "porsager-app", path: "foo", idle: "12345ms" });
    } finally {
      await sql.end();
    }
    const c = new pg.Client({ connectionString: gw.url(), options: "-c search_path=foo", statement_timeout: 2000, application_name: "pg-app" });
    await c.connect();
    try {
      const { rows } = await c.query("SELECT current_setting('search_path') AS path, current_setting('statement_timeout') AS st, current_setting('application_name') AS app");
      expect(rows[0]).toEqual({ path: "foo", st: "2s", app: "pg-app" });
    } finally {
      await c.end();
    }
  });

  test("the session_start record names the settings", async () => {
    const r = await sh(["psql", "-X", "-At", gw.url({ params: "application_name=recorded-app&options=-c%20work_mem%3D8MB" }), "-c", "SELECT 1"]);
    expect(r.code).toBe(0);
    const [start] = await recordsWhere((x) => x.type === "session_start" && x.client?.application === "recorded-app");
    expect(start?.settings).toEqual(["work_mem=8MB", "application_name=recorded-app"]);
  });

  test("a setting off the allowlist refuses the session with 42501, naming it and how to allow it", async () => {
    const r = await sh(["psql", "-X", "-At", gw.url({ params: "options=-c%20log_statement%3Dnone" }), "-c", "SELECT 1"], { env: { PGAPPNAME: "refused-app" } });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("agate.session.deny_setting: startup parameter log_statement is not allowed");
    expect(r.stderr).toContain("allow_settings");
    const [refused] = await recordsWhere((x) => x.type === "session_refused" && x.client?.application === "refused-app");
    expect(refused?.code).toBe("SESSION_DENIED");
    expect(refused?.reason).toContain("log_statement");
    // So is a startup parameter that is a setting; role and session_authorization too.
    for (const connection of [{ session_replication_role: "replica" }, { role: "postgres" }, { options: "-c session_authorization=postgres" }]) {
      const sql = postgres(gw.url(), { max: 1, connection, onnotice: () => {} });
      const err = await sql`SELECT 1`.then(() => null, (e) => e);
      await sql.end();
      expect(err?.code).toBe("42501");
      expect(err?.message).toContain("agate.session.deny_setting");
    }
  });

  test("an allowed setting whose value the target rejects gets the target's error", async () => {
    const err = await connectError(gw.url({ params: "options=-c%20statement_timeout%3Dsoon" }));
    expect(err.code).toBe("22023");
    expect(err.message).toBe('invalid value for parameter "statement_timeout": "soon"');
  });

  test("backend switches other than -c are refused before login (0A000), and recorded", async () => {
    for (const opt of ["-F", "-O", "-c search_path=foo -P", "stray"]) {
      const err = await connectError(gw.url({ params: `options=${encodeURIComponent(opt)}` }));
      expect(err.code).toBe("0A000");
      expect(err.message).toContain("only settings (-c name=value or --name=value)");
    }
    const err = await connectError(gw.url({ params: "options=-c%20search_path" }));
    expect(err.code).toBe("42601");
    expect(err.message).toContain("-c search_path requires a value");
    const refused = await recordsWhere((x) => x.type === "session_refused" && x.code === "STARTUP_OPTIONS", 5);
    expect(refused.map((x) => x.sqlstate).sort()).toEqual(["0A000", "0A000", "0A000", "0A000", "42601"]);
  });

  test("replication stays refused", async () => {
    const r = await sh(["psql", "-X", "-At", gw.url({ params: "replication=database" }), "-c", "SELECT 1"]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("replication connections are not allowed");
  });

  test("standard_conforming_strings=off at connect is how agate lexes the session", async () => {
    const c = new pg.Client({ connectionString: gw.url({ params: "options=-c%20standard_conforming_strings%3Doff" }) });
    await c.connect();
    try {
      // With the setting off, \' inside '…' is a quote: one string, not a string and a comment.
      const { rows } = await c.query(String.raw`SELECT 'a\'b' AS s`);
      expect(rows[0].s).toBe("a'b");
      const refused = await c.query(String.raw`SELECT 'x\' ; DROP TABLE foo.marker; --'`).then(() => null, (e) => e);
      expect(refused).toBeNull();
    } finally {
      await c.end();
    }
  });
});

describe("agate's own messages in the client encoding", () => {
  test("a LATIN9 psql reads a refusal naming café€ in LATIN9", async () => {
    const file = join(dir, "latin9.sql");
    writeFileSync(file, Buffer.concat([Buffer.from('SET "caf'), Buffer.from([0xe9, 0xa4]), Buffer.from('.x" = 1;\n')]));
    const r = await psqlBytes(gw.url(), ["-f", file], { PGCLIENTENCODING: "LATIN9" });
    expect(r.code).toBe(0); // psql -f goes on after an error
    const stderr = r.stderr.toString("latin1");
    expect(stderr).toContain("agate.sql.deny_setting");
    expect(r.stderr.includes(Buffer.from([0x63, 0x61, 0x66, 0xe9, 0xa4]))).toBe(true); // "café€" in LATIN9
    expect(r.stderr.includes(Buffer.from("café€", "utf8"))).toBe(false);
  });

  test("after SET client_encoding, agate's messages follow", async () => {
    const file = join(dir, "latin1.sql");
    writeFileSync(file, Buffer.concat([Buffer.from("SET client_encoding = 'LATIN1';\nSET \"caf"), Buffer.from([0xe9]), Buffer.from('.x" = 1;\n')]));
    const r = await psqlBytes(gw.url(), ["-f", file]);
    expect(r.stderr.toString("latin1")).toContain("agate.sql.deny_setting: SET caf\xe9.x is not allowed");
  });

  test("encoders: single-byte, multi-byte, unrepresentable, as-is", () => {
    expect([...encodeClientText("é€", "LATIN9")]).toEqual([0xe9, 0xa4]);
    expect([...encodeClientText("é€", "LATIN1")]).toEqual([0xe9, 0x3f]);
    expect([...encodeClientText("é€", "WIN1252")]).toEqual([0xe9, 0x80]);
    expect([...encodeClientText("Ж", "KOI8R")]).toEqual([0xf6]);
    expect(encodeClientText("é€", "UTF8").toString()).toBe("é€");
    expect(encodeClientText("é€", "SQL_ASCII").toString()).toBe("é€");
    expect(encodeClientText("a€b", "EUC_TW").toString()).toBe("a?b");
    for (const [enc, label, text] of [["SJIS", "shift_jis", "表示ｱ"], ["EUC_JP", "euc-jp", "日本語ｱ"], ["GBK", "gbk", "中文"], ["BIG5", "big5", "中文"], ["UHC", "euc-kr", "한국어"], ["EUC_KR", "euc-kr", "한국어"]] as const) {
      const bytes = encodeClientText(text, enc);
      expect(new TextDecoder(label as "utf-8").decode(bytes)).toBe(text);
    }
    const notice = NoticeResponse({ severity: "NOTICE", code: "01000", message: "café", hint: "€" });
    const latin9 = inClientEncoding(notice, "LATIN9");
    expect(latin9.includes(Buffer.from([0x63, 0x61, 0x66, 0xe9, 0]))).toBe(true);
    expect(latin9.readInt32BE(1)).toBe(latin9.length - 1);
    expect(inClientEncoding(notice, "UTF8")).toBe(notice);
  });
});

describe("reading options as PostgreSQL does", () => {
  test("pg_split_opts: whitespace splits, a backslash takes the next character", () => {
    expect(splitOptions(String.raw`  -c a=b\ c	--x-y=\\z  -c "q"`)).toEqual(["-c", "a=b c", "--x-y=\\z", "-c", '"q"']);
    expect(splitOptions("")).toEqual([]);
    expect(splitOptions(String.raw`-c a=b\\`)).toEqual(["-c", "a=b\\"]);
  });

  test("-c name=value, -cname=value and --name=value; dashes in the name become underscores", () => {
    expect(optionSettings("-c search_path=foo -cwork_mem=1MB --statement-timeout=5s -c app.a-b=x=y")).toEqual([
      { name: "search_path", value: "foo", from: "options" },
      { name: "work_mem", value: "1MB", from: "options" },
      { name: "statement_timeout", value: "5s", from: "options" },
      { name: "app.a_b", value: "x=y", from: "options" },
    ]);
    expect(() => optionSettings("-c")).toThrow("-c needs a name=value argument");
    expect(() => optionSettings("--search_path")).toThrow("--search_path requires a value");
    expect(() => optionSettings("-B 100")).toThrow("only settings");
    expect(() => optionSettings("--")).toThrow("only settings");
  });

  test("parameters after options, the last of a name (any case) wins", () => {
    expect(startupSettings({ user: "u", database: "d", options: "-c TimeZone=UTC -c search_path=a", timezone: "Europe/Paris", _pq_x: "1", "_pq_.y": "1", application_name: "z" })).toEqual([
      { name: "search_path", value: "a", from: "options" },
      { name: "timezone", value: "Europe/Paris", from: "parameter" },
      { name: "_pq_x", value: "1", from: "parameter" },
      { name: "application_name", value: "z", from: "parameter" },
    ]);
  });
});
