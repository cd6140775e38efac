/**
 * The PostgreSQL path end to end: real PostgreSQL from initdb, agate in
 * front of it, and real clients (psql, pgbench, porsager's postgres,
 * node-postgres) talking to agate exactly as they would to the server.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, cpSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import net from "node:net";
import { join } from "node:path";
import pg from "pg";
import postgres from "postgres";
import { readRecords, verifyLog } from "../src/audit/index.ts";
import { buildPolicies } from "../src/policy/build.ts";
import { message, startupPacket } from "../src/protocols/postgres/wire.ts";
import { API_KEY, startTestGateway, psql, sh, type TestGateway, USER } from "./helpers/gateway.ts";
import { startPostgres, type TestPostgres } from "./helpers/postgres.ts";
import { errorOf, Query, rawSession, rowOf, run, Sync } from "./helpers/wire.ts";

let db: TestPostgres;
let gw: TestGateway;

beforeAll(async () => {
  db = await startPostgres();
  await db.psql(`CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL);
    INSERT INTO accounts SELECT g, 'owner-' || g, g * 10 FROM generate_series(1, 100) g;
    ALTER TABLE accounts OWNER TO app_scram;`);
  gw = await startTestGateway(db);
});

afterAll(async () => {
  await gw?.close();
  await db?.stop();
});

async function records(): Promise<Record<string, unknown>[]> {
  const out: Record<string, unknown>[] = [];
  for await (const r of readRecords(gw.auditDir)) out.push(r);
  return out;
}

describe("psql", () => {
  test("allowed queries return the same rows as a direct connection", async () => {
    const sql = "SELECT id, owner, balance FROM accounts WHERE id % 7 = 0 ORDER BY id";
    const direct = await psql(db.url("app_scram"), sql);
    const through = await psql(gw.url(), sql);
    expect(through.stderr).toBe("");
    expect(through.code).toBe(0);
    expect(through.stdout).toBe(direct.stdout);
    expect(through.stdout.split("\n").filter(Boolean)).toHaveLength(14);
  });

  test("a denied statement fails with 42501 naming the rule, and never reaches the target", async () => {
    const r = await psql(gw.url(), "DROP TABLE accounts", ["-v", "VERBOSITY=verbose"]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("42501");
    expect(r.stderr).toContain("agate.sql.deny_drop");
    expect((await db.psql("SELECT count(*) FROM accounts")).trim()).toBe("100");
  });

  test("one denied statement refuses the whole multi-statement query", async () => {
    const r = await psql(gw.url(), "INSERT INTO accounts VALUES (1000, 'x', 1); TRUNCATE accounts");
    expect(r.stderr).toContain("agate.sql.deny_truncate");
    expect((await db.psql("SELECT count(*) FROM accounts WHERE id = 1000")).trim()).toBe("0");
  });

  test("functions that reach outside the database, COPY PROGRAM, DO blocks are refused", async () => {
    for (const [sql, rule] of [
      ["SELECT length(pg_read_file('/etc/hostname'))", "deny_server_function"],
      ["SELECT * FROM (SELECT pg_catalog.pg_ls_dir('.')) s", "deny_server_function"],
      ["COPY accounts TO PROGRAM 'cat > /tmp/agate-leak'", "deny_copy_program"],
      ["COPY accounts FROM '/etc/passwd'", "deny_copy_file"],
      ["DO $$ BEGIN PERFORM pg_read_file('/etc/hostname'); END $$", "deny_opaque_code"],
      ["WITH x AS (SELECT 1) SELECT lo_import('/etc/hostname')", "deny_server_function"],
      ["CREATE OPERATOR ### (PROCEDURE = pg_read_file, RIGHTARG = text)", "deny_function_binding"],
      ["CREATE EXTENSION IF NOT EXISTS file_fdw", "deny_external_access"],
      ["SELECT query_to_xml('select pg_read_file(''/etc/hostname'')', true, true, '')", "deny_dynamic_sql"],
      ["CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$ SELECT pg_read_file('/etc/hostname') $$", "deny_opaque_code"],
    ]) {
      const r = await psql(gw.url(), sql as string);
      expect(r.stderr).toContain(`agate.sql.${rule}`);
    }
  });

  test("a syntax error is refused by agate with 42601, unseen by the target", async () => {
    const r = await psql(gw.url(), "SELEC 1", ["-v", "VERBOSITY=verbose"]);
    expect(r.stderr).toContain("42601");
    expect(r.stderr).toContain("syntax error");
  });

  test("a refusal inside a transaction aborts it, as any error does in PostgreSQL; the session stays usable", async () => {
    const script = `BEGIN;
INSERT INTO accounts VALUES (2000, 'tx', 5);
DROP TABLE accounts;
SELECT count(*) FROM accounts WHERE id = 2000;
COMMIT;
SELECT count(*) FROM accounts WHERE id = 2000;
DROP TABLE accounts;
SELECT 'usable';`;
    const r = await sh(["psql", "-X", "-At", gw.url(), "-f", "-"], { stdin: script });
    expect(r.stderr).toContain("agate.sql.deny_drop");
    expect(r.stderr).toContain("current transaction is aborted");
    // The COMMIT rolls back: the INSERT before the refusal is gone, as it would be after any error.
    expect(r.stdout.trim().split("\n")).toEqual(["BEGIN", "INSERT 0 1", "ROLLBACK", "0", "usable"]);
  });

  test("a Query and a Terminate in one write: the Query is answered before the session ends", async () => {
    const s = await rawSession(gw.port, { user: USER, password: API_KEY });
    s.send([Query("SELECT 'answered' AS v"), Buffer.from([0x58, 0, 0, 0, 4])]);
    const got = await s.untilReady(1);
    expect(got.filter((m) => m.type === "D").map((m) => rowOf(m)[0]!.toString())).toEqual(["answered"]);
    expect(got.at(-1)!.type).toBe("Z");
    s.close();
  });

  test("a refusal in an extended batch rolls back what the batch did before it, at its Sync", async () => {
    const s = await rawSession(gw.port, { user: USER, password: API_KEY });
    s.send([...run("INSERT INTO accounts VALUES (2001, 'batch', 5)"), ...run("DROP TABLE accounts"), Sync, Query("SELECT count(*) FROM accounts WHERE id = 2001")]);
    const got = await s.untilReady(2);
    s.close();
    const errs = got.filter((m) => m.type === "E").map(errorOf);
    expect(errs.map((e) => e.code)).toEqual(["42501"]);
    expect(errs[0]!.message).toContain("deny_drop");
    expect(got.filter((m) => m.type === "D").map((m) => rowOf(m)[0]!.toString())).toEqual(["0"]);
  });

  test("agate reads SQL as the target does, whatever standard_conforming_strings and client_encoding say", async () => {
    // With standard_conforming_strings off, PostgreSQL reads backslashes in '…' as escapes, and so does agate.
    const script = "SET standard_conforming_strings = off;\nSELECT 'a\\\\' AS x;\nSELECT 1 AS plain;\nSET standard_conforming_strings = on;\nSELECT 'a\\\\' AS x;\n";
    const r = await sh(["psql", "-X", "-At", gw.url(), "-f", "-"], { stdin: script });
    expect(r.stderr).not.toContain("ERROR"); // PostgreSQL's own WARNING about the nonstandard backslash is relayed
    expect(r.stdout.trim().split("\n")).toEqual(["SET", "a\\", "1", "SET", "a\\\\"]);
    const enc = await sh(["psql", "-X", "-At", gw.url(), "-f", "-"], { stdin: "SET client_encoding = 'SJIS';\nSELECT 'ü';\nSET client_encoding = 'UTF8';\nSELECT 'ü';" });
    // psql sends ü's UTF-8 bytes, which in SJIS are two half-width katakana: valid, and returned as sent.
    expect(enc.stderr).toBe("");
    expect(enc.stdout.trim().split("\n")).toEqual(["SET", "ü", "SET", "ü"]);
  });

  test("COPY FROM STDIN and COPY TO STDOUT stream through", async () => {
    // CREATE TABLE waits for approval through agate (approve_ddl): made directly.
    await db.psql("CREATE TABLE copied (id int, note text); ALTER TABLE copied OWNER TO app_scram");
    const rows = Array.from({ length: 5000 }, (_, i) => `${i}\tnote ${i}`).join("\n") + "\n";
    const load = await sh(["psql", "-X", gw.url(), "-c", "\\copy copied FROM STDIN"], { stdin: rows });
    expect(load.stderr).toBe("");
    expect(load.stdout.trim()).toBe("COPY 5000");
    const out = await psql(gw.url(), "COPY (SELECT * FROM copied ORDER BY id) TO STDOUT");
    expect(out.stdout).toBe(rows);
  });

  test("a large result (~100 MB) arrives byte for byte as it does directly, through a slow reader", async () => {
    const q = "COPY (SELECT g, md5(g::text), repeat('x', g % 300) FROM generate_series(1, 600000) g) TO STDOUT";
    // `sleep` stalls the reader so agate must hold the target back rather than buffer everything.
    const through = await sh(["sh", "-c", `psql -X -At "${gw.url()}" -c "${q}" | (sleep 1; md5sum)`]);
    const direct = await sh(["sh", "-c", `psql -X -At "${db.url("app_scram")}" -c "${q}" | md5sum`]);
    expect(through.stdout).toBe(direct.stdout);
    expect(through.stdout).toMatch(/^[0-9a-f]{32} /);
  });

  test("a wrong API key, an unknown user and a missing password are refused with 28P01", async () => {
    for (const url of [gw.url({ key: "agk_wrong" }), gw.url({ user: "someone-else" })]) {
      const r = await psql(url, "SELECT 1");
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain("password authentication failed");
    }
    const noPassword = await sh(["psql", "-X", "-w", "-h", "127.0.0.1", "-p", String(gw.port), "-U", "ci-runner", "-d", "app", "-c", "SELECT 1"], { env: { PGPASSWORD: "" } });
    expect(noPassword.code).not.toBe(0);
  });

  test("the target's credentials never reach the client", async () => {
    const r = await psql(gw.url(), "SELECT current_user, session_user");
    expect(r.stdout.trim()).toBe("app_scram|app_scram");
    const all = JSON.stringify(await records());
    expect(all).not.toContain(db.password);
  });

  test("settings in the startup parameters reach the target (options' -c included)", async () => {
    const r = await sh(["psql", "-X", "-At", gw.url({ params: "options=-c%20search_path%3Dpg_catalog" }), "-c", "SHOW search_path"]);
    expect(r.stderr).toBe("");
    expect(r.stdout.trim()).toBe("pg_catalog");
  });
});

describe("porsager/postgres", () => {
  test("extended protocol with parameters, pipelined queries and a refusal in the middle", async () => {
    const sql = postgres(gw.url(), { max: 1, onnotice: () => {} });
    try {
      const one = await sql`SELECT owner, balance FROM accounts WHERE id = ${42}`;
      expect([...one]).toEqual([{ owner: "owner-42", balance: "420" }]);
      // Three queries pipelined on one connection; the middle one is refused.
      const results = await Promise.allSettled([
        sql`SELECT ${1}::int AS n`,
        sql`DROP TABLE accounts`,
        sql`SELECT count(*)::int AS c FROM accounts WHERE id < ${10}`,
      ]);
      expect(results[0]).toEqual({ status: "fulfilled", value: expect.arrayContaining([{ n: 1 }]) });
      expect(results[1]!.status).toBe("rejected");
      const err = (results[1] as PromiseRejectedResult).reason;
      expect(err.code).toBe("42501");
      expect(err.message).toContain("agate.sql.deny_drop");
      expect(results[2]).toEqual({ status: "fulfilled", value: expect.arrayContaining([{ c: 9 }]) });
      // Same statement text again, now a prepared statement in porsager's cache.
      expect((await sql`SELECT owner FROM accounts WHERE id = ${7}`)[0]!.owner).toBe("owner-7");
      expect((await sql`SELECT owner FROM accounts WHERE id = ${8}`)[0]!.owner).toBe("owner-8");
    } finally {
      await sql.end();
    }
  });

  test("transactions commit and roll back through the gateway", async () => {
    const sql = postgres(gw.url(), { max: 1, onnotice: () => {} });
    try {
      await sql.begin(async (tx) => {
        await tx`INSERT INTO accounts VALUES (3000, 'begin', 1)`;
      });
      await sql
        .begin(async (tx) => {
          await tx`INSERT INTO accounts VALUES (3001, 'rolled back', 1)`;
          throw new Error("roll back");
        })
        .catch(() => {});
      const rows = await sql`SELECT id FROM accounts WHERE id IN (3000, 3001) ORDER BY id`;
      expect(rows.map((r) => r.id)).toEqual([3000]);
    } finally {
      await sql.end();
    }
  });

  test("COPY through porsager's streams", async () => {
    const sql = postgres(gw.url(), { max: 1 });
    try {
      await sql`CREATE TEMP TABLE IF NOT EXISTS streamed (n int)`;
      const writable = await sql`COPY streamed FROM STDIN`.writable();
      await new Promise<void>((done, fail) => {
        writable.on("error", fail);
        writable.write(Array.from({ length: 1000 }, (_, i) => `${i}\n`).join(""));
        writable.end(done);
      });
      await Bun.sleep(0);
      const [row] = await sql`SELECT count(*)::int AS c FROM streamed`;
      expect(row?.c).toBe(1000);
    } finally {
      await sql.end();
    }
  });

  test("CancelRequest reaches the right backend through agate", async () => {
    const sql = postgres(gw.url(), { max: 1 });
    try {
      const q = sql`SELECT pg_sleep(30)`;
      const started = q.execute();
      await Bun.sleep(300);
      q.cancel();
      const err = await started.then(() => null, (e) => e);
      expect(err?.code).toBe("57014");
      await Bun.sleep(50);
      const all = await records();
      const cancel = all.find((r) => r.type === "cancel");
      expect(cancel).toBeDefined();
      const cmd = all.find((r) => r.type === "command" && r.text === "SELECT pg_sleep(30)");
      expect(cancel!.session).toBe(cmd!.session);
      expect((await sql`SELECT 1 AS ok`)[0]!.ok).toBe(1);
    } finally {
      await sql.end();
    }
  });

  test("notices and notifications pass through", async () => {
    const notices: string[] = [];
    const sql = postgres(gw.url(), { max: 2, onnotice: (n) => notices.push(String(n.message)) });
    try {
      const got = new Promise<string>((resolve) => void sql.listen("agate_test", (payload) => resolve(payload)));
      await Bun.sleep(200);
      await sql`SELECT pg_notify('agate_test', 'hello')`;
      expect(await got).toBe("hello");
      await sql`CREATE TEMP TABLE IF NOT EXISTS noticed (id int)`;
      await sql`CREATE TEMP TABLE IF NOT EXISTS noticed (id int)`;
      expect(notices.some((m) => m.includes("already exists"))).toBe(true);
    } finally {
      await sql.end();
    }
  });
});

describe("node-postgres", () => {
  test("named prepared statements, unnamed statements and a refusal keep the connection usable", async () => {
    const client = new pg.Client({ connectionString: gw.url() });
    await client.connect();
    try {
      const named = { name: "by-id", text: "SELECT owner FROM accounts WHERE id = $1", values: [5] };
      expect((await client.query(named)).rows).toEqual([{ owner: "owner-5" }]);
      expect((await client.query({ ...named, values: [6] })).rows).toEqual([{ owner: "owner-6" }]);
      const err = await client.query("ALTER TABLE accounts DROP COLUMN owner").then(() => null, (e) => e);
      expect(err?.code).toBe("42501");
      expect(err?.message).toContain("agate.sql.deny_alter");
      const err2 = await client.query({ text: "SELECT pg_read_file($1)", values: ["/etc/hostname"] }).then(() => null, (e) => e);
      expect(err2?.code).toBe("42501");
      expect((await client.query("SELECT $1::text AS v", ["after"])).rows).toEqual([{ v: "after" }]);
    } finally {
      await client.end();
    }
  });
});

describe("pgbench", () => {
  test("pgbench runs through agate with the simple and the prepared protocol", async () => {
    // pgbench -i runs TRUNCATE and DROP, which the default policy refuses: initialise directly.
    await sh(["pgbench", "-i", "-s", "1", "-q", db.url("app_scram")]);
    for (const mode of ["simple", "extended", "prepared"]) {
      const r = await sh(["pgbench", "-n", "-c", "4", "-j", "2", "-t", "50", "-M", mode, gw.url()]);
      expect(r.stderr).not.toContain("error");
      expect(r.code).toBe(0);
      expect(r.stdout).toContain("number of transactions actually processed: 200/200");
    }
    const refused = await sh(["pgbench", "-i", "-s", "1", gw.url()]);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain("agate.sql.deny_drop");
  });
});

describe("wire protocol robustness", () => {
  /** Send raw bytes; resolve with what came back once the server closes (or after the first reply, with `firstReply`). */
  function rawExchange(bytes: Buffer, firstReply = false): Promise<Buffer> {
    return new Promise((resolve) => {
      const chunks: Buffer[] = [];
      const s = net.connect(gw.port, "127.0.0.1", () => s.write(bytes));
      s.on("data", (c: Buffer) => {
        chunks.push(c);
        if (firstReply) s.destroy();
      });
      s.on("close", () => resolve(Buffer.concat(chunks)));
      s.on("error", () => resolve(Buffer.concat(chunks)));
      setTimeout(() => s.destroy(), 5000);
    });
  }

  /** The session_refused record of the client at local port `port`, polling (refusals are group-committed, not awaited). */
  async function refusedFrom(port: number): Promise<Record<string, any>> {
    for (let i = 0; i < 200; i++) {
      const r = (await records()).find((x: Record<string, any>) => x.type === "session_refused" && x.client?.port === port);
      if (r) return r;
      await Bun.sleep(20);
    }
    throw new Error(`no session_refused record for client port ${port}`);
  }

  /** Connect, send `first`; on the password request send `then`; resolve with the reply and our local port once the server closes. */
  function refusedExchange(first: Buffer, then?: Buffer): Promise<{ reply: Buffer; port: number }> {
    return new Promise((resolve) => {
      const chunks: Buffer[] = [];
      let port = 0;
      const s = net.connect(gw.port, "127.0.0.1", () => {
        port = s.localPort!;
        s.write(first);
      });
      s.on("data", (c: Buffer) => {
        chunks.push(c);
        if (then && c[0] === 0x52) s.write(then);
      });
      s.on("close", () => resolve({ reply: Buffer.concat(chunks), port }));
      s.on("error", () => {});
    });
  }

  test("an oversized startup packet is dropped without a reply, as PostgreSQL does, and recorded as session_refused with the client's address", async () => {
    const b = Buffer.alloc(8);
    b.writeInt32BE(1 << 20, 0);
    b.writeInt32BE(196608, 4);
    const { reply, port } = await refusedExchange(b);
    expect(reply.length).toBe(0); // "invalid length of startup packet": PostgreSQL closes silently
    const r = await refusedFrom(port);
    expect(r.client).toEqual({ address: "127.0.0.1", port, tls: false });
    expect(r.connection.name).toBe("app-db");
    expect(r.code).toBe("PROTOCOL_VIOLATION");
    expect(r.sqlstate).toBe("08P01");
    expect(r.reason).toBe("the startup packet: message of 1048576 bytes exceeds the limit of 10000 bytes");
    expect(r.user).toBeUndefined();
  });

  test("an oversized password message is refused with 08P01 and recorded, without the message's bytes", async () => {
    const secret = "agk_secret_in_an_oversized_password_message";
    const startup = startupPacket((w) => w.i32(196608).cstr("user").cstr("big-talker").cstr("database").cstr("app").cstr("application_name").cstr("wire-test").u8(0));
    // Declares 100000 bytes and starts sending them: the gateway refuses at the length, before buffering the body.
    const head = Buffer.alloc(5);
    head[0] = 0x70;
    head.writeInt32BE(100_000, 1);
    const { reply, port } = await refusedExchange(startup, Buffer.concat([head, Buffer.from(`${secret}\0`)]));
    expect(reply.toString()).toContain("08P01");
    const r = await refusedFrom(port);
    expect(r.client).toEqual({ address: "127.0.0.1", port, tls: false, application: "wire-test" });
    expect(r.user).toBe("big-talker");
    expect(r.code).toBe("PROTOCOL_VIOLATION");
    expect(r.reason).toBe("the password message: message of 100000 bytes exceeds the limit of 65536 bytes");
    expect(JSON.stringify(await records())).not.toContain(secret);
  });

  test("an unknown protocol version is refused, and recorded like every refusal before a credential", async () => {
    const b = Buffer.alloc(8);
    b.writeInt32BE(8, 0);
    b.writeInt32BE(2 << 16, 4);
    const { reply, port } = await refusedExchange(b);
    expect(reply.toString()).toContain("0A000");
    const r = await refusedFrom(port);
    expect([r.code, r.sqlstate, r.reason]).toEqual(["PROTOCOL_UNSUPPORTED", "0A000", "unsupported frontend protocol 2.0: agate speaks 3.0"]);
  });

  test("GSSENCRequest is declined and SSLRequest answered N without TLS configured", async () => {
    const gss = Buffer.alloc(8);
    gss.writeInt32BE(8, 0);
    gss.writeInt32BE(80877104, 4);
    expect((await rawExchange(gss, true)).toString()).toBe("N");
    const r = await psql(gw.url({ params: "sslmode=prefer" }), "SELECT 1");
    expect(r.stdout.trim()).toBe("1");
    const req = await psql(gw.url({ params: "sslmode=require" }), "SELECT 1");
    expect(req.code).not.toBe(0);
  });

  /** Log in over a raw socket, then send `bytes` and collect the reply until the server closes or sends ReadyForQuery. */
  function afterLogin(bytes: Buffer): Promise<{ reply: Buffer; closed: boolean }> {
    return new Promise((resolve) => {
      const s = net.connect(gw.port, "127.0.0.1");
      let buf = Buffer.alloc(0);
      let phase: "auth" | "ready" | "sent" = "auth";
      const startup = startupPacket((w) => w.i32(196608).cstr("user").cstr("ci-runner").cstr("database").cstr("app").u8(0));
      s.on("connect", () => s.write(startup));
      s.on("data", (c: Buffer) => {
        buf = Buffer.concat([buf, c]);
        if (phase === "auth" && buf[0] === 0x52) {
          phase = "ready";
          buf = Buffer.alloc(0);
          s.write(message(0x70, (w) => w.cstr(API_KEY)));
        } else if (phase === "ready" && buf.at(-6) === 0x5a) {
          phase = "sent";
          buf = Buffer.alloc(0);
          s.write(bytes);
        } else if (phase === "sent" && buf.at(-6) === 0x5a) {
          s.destroy();
          resolve({ reply: buf, closed: false });
        }
      });
      s.on("close", () => resolve({ reply: buf, closed: true }));
    });
  }

  test("an unknown message type after login is a protocol violation (08P01) and closes the session", async () => {
    const { reply, closed } = await afterLogin(message(0x7a, (w) => w.i32(1)));
    expect(closed).toBe(true);
    expect(reply.toString()).toContain("08P01");
  });

  test("a truncated Parse message is a protocol violation, not a crash", async () => {
    const { reply, closed } = await afterLogin(message(0x50, (w) => w.cstr("s1")));
    expect(closed).toBe(true);
    expect(reply.toString()).toContain("08P01");
    expect((await psql(gw.url(), "SELECT 1")).stdout.trim()).toBe("1");
  });

  test("the fast-path FunctionCall sub-protocol is refused and the session stays usable", async () => {
    // FunctionCall for oid 764 (lo_import), no arguments, text result.
    const { reply, closed } = await afterLogin(message(0x46, (w) => w.i32(764).i16(0).i16(0).i16(0)));
    expect(closed).toBe(false);
    expect(reply[0]).toBe(0x45);
    expect(reply.toString()).toContain("fast-path function call");
    expect(reply.at(-6)).toBe(0x5a);
  });

  test("a client that does not log in within startup_timeout_ms is dropped with 08006", async () => {
    const g = await startTestGateway(db, { connection: { startup_timeout_ms: 200 } });
    try {
      const reply = await new Promise<Buffer>((resolve) => {
        const chunks: Buffer[] = [];
        const s = net.connect(g.port, "127.0.0.1");
        s.on("data", (c: Buffer) => chunks.push(c));
        s.on("close", () => resolve(Buffer.concat(chunks)));
      });
      expect(reply.toString()).toContain("08006");
      expect(reply.toString()).toContain("authentication timed out");
    } finally {
      await g.close();
    }
  });

  test("replication connections are refused", async () => {
    const r = await sh(["psql", "-X", gw.url({ params: "replication=database" }), "-c", "IDENTIFY_SYSTEM"]);
    expect(r.stderr).toContain("replication connections are not allowed");
  });
});

describe("TLS", () => {
  let tlsGw: TestGateway;
  beforeAll(async () => {
    const key = join(db.dir, "..", `agate-tls-${process.pid}.key`);
    const cert = join(db.dir, "..", `agate-tls-${process.pid}.crt`);
    const made = await sh(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost"]);
    expect(made.code).toBe(0);
    tlsGw = await startTestGateway(db, { connection: { tls: { cert, key, required: true } } });
  });
  afterAll(async () => tlsGw?.close());

  test("sslmode=require negotiates TLS; a plain connection is refused when TLS is required", async () => {
    const r = await sh(["psql", "-X", "-At", tlsGw.url({ params: "sslmode=require" }), "-c", "SELECT 1", "-c", "\\conninfo"]);
    expect(r.stderr).toBe("");
    expect(r.stdout).toContain("SSL connection");
    const plain = await psql(tlsGw.url({ params: "sslmode=disable" }), "SELECT 1");
    expect(plain.code).not.toBe(0);
    expect(plain.stderr).toContain("requires TLS");
  });

  test("porsager over TLS", async () => {
    const sql = postgres(tlsGw.url(), { max: 1, ssl: { rejectUnauthorized: false } });
    try {
      expect((await sql`SELECT ${"tls"}::text AS v`)[0]!.v).toBe("tls");
    } finally {
      await sql.end();
    }
  });
});

describe("upstream authentication", () => {
  test("md5 and cleartext targets work too", async () => {
    for (const user of ["app_md5", "app_plain"]) {
      const g = await startTestGateway(db, { targetUser: user });
      try {
        const r = await psql(g.url(), "SELECT current_user");
        expect(r.stdout.trim()).toBe(user);
      } finally {
        await g.close();
      }
    }
  });

  test("a wrong target password is a clear 08001, without the password", async () => {
    const g = await startTestGateway(db, { connection: { target: { host: db.host, port: db.port, database: "app", user: "app_scram", password: "nope" } } });
    try {
      const sql = postgres(g.url(), { max: 1 });
      const err = await sql`SELECT 1`.then(() => null, (e) => e);
      await sql.end();
      expect(err?.code).toBe("08001");
      expect(err?.message).toContain("could not connect to the target");
      expect(err?.message).toContain("password authentication failed");
      expect(err?.message).not.toContain("nope");
    } finally {
      await g.close();
    }
  });
});

describe("a full disk under the audit log", () => {
  // A real ENOSPC: the audit directory on a tiny tmpfs. Mounting needs root (CI runs as root).
  const canMount = process.getuid?.() === 0;
  test.skipIf(!canMount)("fails closed: statements are refused with 58000 and never reach the target", async () => {
    const mnt = mkdtempSync(join(tmpdir(), "agate-full-"));
    expect((await sh(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt])).code).toBe(0);
    let g: TestGateway | undefined;
    try {
      g = await startTestGateway(db, { audit: { dir: join(mnt, "audit") } });
      expect((await psql(g.url(), "INSERT INTO accounts VALUES (4000, 'before', 1)")).stdout.trim()).toBe("INSERT 0 1");
      // Fill what is left of the file system.
      await sh(["sh", "-c", `cat /dev/zero > ${join(mnt, "filler")} 2>/dev/null; true`]);
      // The segment's last page may still have room for a few records; one session keeps inserting until the log refuses.
      const sql = postgres(g.url(), { max: 1 });
      let refused: { code?: string; message?: string } | null = null;
      let id = 4001;
      for (; id < 5000 && !refused; id++) refused = await sql`INSERT INTO accounts VALUES (${id}, 'after', 1)`.then(() => null, (e) => e);
      await sql.end().catch(() => {});
      expect(refused?.code).toBe("58000");
      expect(refused?.message).toContain("could not record");
      const failedId = id - 1;
      expect((await db.psql(`SELECT count(*) FROM accounts WHERE id = ${failedId}`)).trim()).toBe("0");
      expect((await db.psql(`SELECT count(*) FROM accounts WHERE id BETWEEN 4001 AND ${failedId - 1}`)).trim()).toBe(String(failedId - 4001));
      // Space freed and the gateway restarted: a torn tail, if the failed write left one, is cut and the chain verifies.
      await g.close().catch(() => {});
      rmSync(join(mnt, "filler"));
      g = await startTestGateway(db, { audit: { dir: join(mnt, "audit") } });
      expect((await psql(g.url(), "SELECT 1")).stdout.trim()).toBe("1");
      await g.close();
      g = undefined;
      const v = await verifyLog(join(mnt, "audit"));
      expect(v.ok).toBe(true);
    } finally {
      await g?.close().catch(() => {});
      await sh(["umount", mnt]);
      rmSync(mnt, { recursive: true, force: true });
    }
  });
});

describe("policy reload", () => {
  test("a new bundle takes effect in open sessions; a broken one keeps the last good", async () => {
    const work = mkdtempSync(join(tmpdir(), "agate-reload-"));
    const policies = join(work, "policies");
    cpSync("policies", policies, { recursive: true });
    const bundle = join(work, "policy.wasm");
    copyFileSync("wasm/policy.wasm", bundle);
    const g = await startTestGateway(db, { config: { policy: { bundle, watch: true } } });
    const sql = postgres(g.url(), { max: 1 });
    try {
      expect((await sql`SELECT count(*)::int AS c FROM accounts WHERE id < 5`)[0]!.c).toBe(4);
      writeFileSync(
        join(policies, "agate", "reload_rule.rego"),
        `package agate\n\nviolations contains violation("agate.test.deny_accounts", "deny_accounts", true, "accounts is closed") if {\n\tsome st in sql_statement\n\t"accounts" in st.reads\n}\n`,
      );
      const out = join(work, "out");
      await buildPolicies({ policiesDir: policies, outDir: out });
      copyFileSync(join(out, "policy.wasm"), bundle + ".tmp");
      renameSync(bundle + ".tmp", bundle);
      let err: { code?: string; message?: string } | null = null;
      for (let attempt = 0; attempt < 100 && !err; attempt++) {
        err = await sql`SELECT count(*) FROM accounts`.then(() => null, (e) => e);
        if (!err) await Bun.sleep(100);
      }
      expect(err?.code).toBe("42501");
      expect(err?.message).toContain("agate.test.deny_accounts");
      writeFileSync(bundle, "not a wasm module");
      await Bun.sleep(1500);
      const still = await sql`SELECT count(*) FROM accounts`.then(() => null, (e) => e);
      expect(still?.message).toContain("agate.test.deny_accounts");
      expect((await sql`SELECT 1 AS one`)[0]!.one).toBe(1);
    } finally {
      await sql.end();
      await g.close();
      rmSync(work, { recursive: true, force: true });
    }
  });
});

describe("audit log", () => {
  test("every session, command, decision and outcome is recorded, with Bind parameters", async () => {
    const sql = postgres(gw.url(), { max: 1 });
    await sql`SELECT owner FROM accounts WHERE id = ${77}`;
    await sql.end();
    await Bun.sleep(50);
    const all = await records();
    const types = new Set(all.map((r) => r.type));
    for (const t of ["session_start", "command", "outcome", "session_end", "session_refused"]) expect(types).toContain(t);
    const cmd = all.find((r) => r.type === "command" && r.text === "SELECT owner FROM accounts WHERE id = $1" && JSON.stringify(r.params) === '["77"]');
    expect(cmd).toBeDefined();
    const outcome = all.find((r) => r.type === "outcome" && r.session === cmd!.session && (r.seqs as number[]).includes(cmd!.seq as number));
    expect(outcome?.tags).toEqual(["SELECT 1"]);
    const denied = all.find((r) => r.type === "command" && (r.decision as { allow: boolean }).allow === false && String(r.text).startsWith("DROP TABLE accounts"));
    expect((denied!.decision as { reasons: string[] }).reasons[0]).toStartWith("agate.sql.deny_drop");
    const start = all.find((r) => r.type === "session_start") as { identity: { subject: string; groups: string[] } };
    expect(start.identity.subject).toBe("ci-runner");
  });

  test("agate verify passes, then fails naming the record after one byte is flipped", async () => {
    const ok = await sh(["bun", "src/main.ts", "verify", "--log", gw.auditDir, "--key", gw.verifierKey, "--quiet"]);
    expect(ok.stdout).toStartWith("ok:");
    expect(ok.code).toBe(0);
    // Tamper with a copy so the running gateway's log stays intact.
    const copy = join(gw.auditDir, "..", "tampered");
    await sh(["cp", "-r", gw.auditDir, copy]);
    const seg = join(copy, readdirSync(copy).filter((f) => f.startsWith("seg-")).sort()[0]!);
    const bytes = readFileSync(seg);
    const at = Math.floor(bytes.length / 2);
    bytes[at] = bytes[at]! ^ 0x01;
    writeFileSync(seg, bytes);
    const bad = await sh(["bun", "src/main.ts", "verify", "--log", copy, "--quiet"]);
    expect(bad.code).toBe(1);
    expect(bad.stdout).toMatch(/FAILED AUDIT_\w+: .*record \d+/);
    expect((await verifyLog(copy)).ok).toBe(false);
  });
});

describe("extended protocol against statements agate did not parse", () => {
  /** A logged-in raw protocol session: send frontend messages, read backend messages until ReadyForQuery. */
  async function session() {
    const s = net.connect(gw.port, "127.0.0.1");
    let buf = Buffer.alloc(0);
    let wake: (() => void) | undefined;
    s.on("data", (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      wake?.();
    });
    /** Messages up to and including the next ReadyForQuery: [type letter, body]. */
    const untilReady = async (): Promise<[string, Buffer][]> => {
      const out: [string, Buffer][] = [];
      for (;;) {
        while (buf.length >= 5 && buf.length >= 1 + buf.readInt32BE(1)) {
          const len = buf.readInt32BE(1);
          const msg: [string, Buffer] = [String.fromCharCode(buf[0]!), buf.subarray(5, 1 + len)];
          buf = buf.subarray(1 + len);
          out.push(msg);
          if (msg[0] === "Z") return out;
        }
        await new Promise<void>((r) => (wake = r));
      }
    };
    await new Promise<void>((r) => s.once("connect", () => r()));
    s.write(startupPacket((w) => w.i32(196608).cstr("user").cstr(USER).cstr("database").cstr("app").u8(0)));
    await new Promise<void>((r) => (wake = () => buf.length > 0 && r()));
    s.write(message(0x70, (w) => w.cstr(API_KEY)));
    await untilReady();
    return { send: (...m: Buffer[]) => s.write(Buffer.concat(m)), untilReady, end: () => s.destroy() };
  }
  const bindExecSync = (statement: string) => [
    message(0x42, (w) => w.cstr("").cstr(statement).i16(0).i16(0).i16(0)),
    message(0x45, (w) => w.cstr("").i32(0)),
    message(0x53),
  ];

  test("Bind to a statement made with SQL PREPARE runs it; to a closed one gets PostgreSQL's own error", async () => {
    const c = await session();
    try {
      c.send(message(0x51, (w) => w.cstr("PREPARE p AS SELECT 42 AS answer")));
      expect((await c.untilReady()).map(([t]) => t)).toEqual(["C", "Z"]);
      c.send(...bindExecSync("p"));
      const ran = await c.untilReady();
      expect(ran.find(([t]) => t === "D")![1].toString("latin1")).toContain("42");
      // a protocol-level statement, closed, then bound again: the target's 26000, and nothing from agate
      c.send(message(0x50, (w) => w.cstr("ps1").cstr("SELECT 1").i16(0)), message(0x53));
      await c.untilReady();
      c.send(message(0x43, (w) => w.u8(0x53).cstr("ps1")), message(0x53));
      await c.untilReady();
      c.send(...bindExecSync("ps1"));
      const errors = (await c.untilReady()).filter(([t]) => t === "E").map(([, b]) => b.toString("latin1"));
      expect(errors).toHaveLength(1);
      expect(errors[0]).toContain("26000");
    } finally {
      c.end();
    }
  });
});
