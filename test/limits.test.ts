/**
 * Connection and session limits (core/limits.ts) through the PostgreSQL
 * adapter, against a real PostgreSQL: every refusal is PostgreSQL's own
 * (53300 for counts, 57P05 / 25P03 for idle timeouts, 57P01 for the
 * lifetime), recorded in the audit log and counted in /metrics. Timeouts are
 * small so the tests are quick; they assert what happened and in which
 * order, never how long it took.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import postgres from "postgres";
import { generateKey } from "../src/audit/note.ts";
import { parseConfig } from "../src/config/index.ts";
import { DEFAULT_LIMITS } from "../src/core/limits.ts";
import { hashApiKey } from "../src/identity/apikey.ts";
import { API_KEY, psql, recordsOf, startTestGateway, type TestGateway, USER } from "./helpers/gateway.ts";
import { startPostgres, type TestPostgres } from "./helpers/postgres.ts";
import { errorOf, loginError, Query, rawSession, type RawSession } from "./helpers/wire.ts";

let db: TestPostgres;
const gateways: TestGateway[] = [];
const open: RawSession[] = [];

beforeAll(async () => {
  db = await startPostgres();
  await db.psql("CREATE TABLE limits_t (n int); ALTER TABLE limits_t OWNER TO app_scram;", "app");
});

afterAll(async () => {
  for (const s of open) s.close();
  for (const g of gateways) await g.close();
  await db?.stop();
});

const OTHER = "second-runner";
const OTHER_KEY = "agk_second_key_for_integration_tests_only";

/** A gateway whose app-db connection has these limits, two API keys, and an admin API for /metrics. */
async function gateway(limits: Record<string, number>): Promise<TestGateway> {
  const g = await startTestGateway(db, {
    connection: { limits },
    config: {
      admin: { listen: "127.0.0.1:0" },
      identity: {
        api_keys: [
          { id: USER, groups: ["ci"], kind: "service", sha256: hashApiKey(API_KEY) },
          { id: OTHER, groups: ["ci"], kind: "service", sha256: hashApiKey(OTHER_KEY) },
        ],
      },
    },
  });
  gateways.push(g);
  return g;
}

async function session(g: TestGateway, o: { user?: string; key?: string; localAddress?: string } = {}): Promise<RawSession> {
  const s = await rawSession(g.port, { user: o.user ?? USER, password: o.key ?? API_KEY, ...(o.localAddress ? { localAddress: o.localAddress } : {}) });
  open.push(s);
  return s;
}

async function metrics(g: TestGateway): Promise<string> {
  return (await fetch(`http://127.0.0.1:${g.gateway.admin!.port}/metrics`)).text();
}

/** Log in until the gateway lets us (a closed connection's slot is given back when the gateway sees the close). */
async function eventuallyIn(port: number, o: { user: string; password: string; localAddress?: string }): Promise<{ code: string; message: string } | null> {
  let e = await loginError(port, o);
  for (let i = 0; i < 100 && e; i++) {
    await Bun.sleep(20);
    e = await loginError(port, o);
  }
  return e;
}

describe("configuration", () => {
  const dir = mkdtempSync(join(tmpdir(), "agate-limits-config-"));
  writeFileSync(join(dir, "audit.key"), generateKey("limits.test/audit").signerKey, { mode: 0o600 });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const parse = (limits?: unknown) =>
    parseConfig({ audit: { dir: "./audit", signing_key: "./audit.key" }, connections: [{ name: "c", listen: "127.0.0.1:0", allow_plaintext_auth: true, target: { database: "d", user: "u" }, ...(limits !== undefined ? { limits } : {}) }] }, dir, {});

  test("defaults: 100 connections a listener (PostgreSQL's max_connections), everything else off", () => {
    expect(parse().connections[0]!.limits).toEqual(DEFAULT_LIMITS);
    expect(DEFAULT_LIMITS.max_connections).toBe(100);
    expect(parse({ idle_session_timeout_s: 0.5, max_sessions_per_identity: 3 }).connections[0]!.limits).toEqual({ ...DEFAULT_LIMITS, idle_session_timeout_s: 0.5, max_sessions_per_identity: 3 });
  });

  test("an unknown key, a negative time or a fractional count is refused, naming the key", () => {
    expect(() => parse({ max_conections: 3 })).toThrow(/connections\[0\]\.limits has an unknown key "max_conections"/);
    expect(() => parse({ idle_session_timeout_s: -1 })).toThrow(/connections\[0\]\.limits\.idle_session_timeout_s is -1; expected a number of seconds >= 0/);
    expect(() => parse({ max_connections: 2.5 })).toThrow(/connections\[0\]\.limits\.max_connections is 2\.5; expected a whole number >= 0/);
  });
});

describe("connection counts", () => {
  test("max_connections: the third client gets FATAL 53300 after its startup packet (psql and a raw client), recorded; a freed slot is given again", async () => {
    const g = await gateway({ max_connections: 2 });
    const a = await session(g);
    await session(g);
    const r = await psql(g.url(), "SELECT 1");
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(`FATAL:  agate: sorry, too many clients already: connection "app-db" allows 2 at once (limits.max_connections)`);
    expect((await loginError(g.port, { user: USER, password: API_KEY }))?.code).toBe("53300");
    const refused = await recordsOf(g, "session_refused", (rs) => rs.length >= 2);
    expect(refused.map((x) => [x.code, x.sqlstate, x.user])).toEqual([
      ["LIMIT_CONNECTIONS", "53300", USER],
      ["LIMIT_CONNECTIONS", "53300", USER],
    ]);
    expect(await metrics(g)).toContain(`agate_limit_refusals_total{connection="app-db",code="LIMIT_CONNECTIONS"} 2`);
    a.close();
    expect(await eventuallyIn(g.port, { user: USER, password: API_KEY })).toBeNull();
  });

  test("max_connections_per_address: a second connection from 127.0.0.1 is refused, one from 127.0.0.2 is not", async () => {
    const g = await gateway({ max_connections_per_address: 1 });
    await session(g, { localAddress: "127.0.0.1" });
    const e = await loginError(g.port, { user: USER, password: API_KEY, localAddress: "127.0.0.1" });
    expect(e).toEqual({ code: "53300", message: `agate: too many connections from 127.0.0.1: connection "app-db" allows 1 from one address (limits.max_connections_per_address)` });
    const other = await session(g, { localAddress: "127.0.0.2" });
    other.send(Query("SELECT 1"));
    expect((await other.untilReady()).some((m) => m.type === "D")).toBe(true);
    const refused = await recordsOf(g, "session_refused", (rs) => rs.length >= 1);
    expect(refused.map((x) => [x.code, (x.client as { address: string }).address])).toEqual([["LIMIT_CONNECTIONS_PER_ADDRESS", "127.0.0.1"]]);
    expect(await metrics(g)).toContain(`agate_connections_open{connection="app-db"} 2`);
  });

  test("a connection that has not logged in holds its slot too", async () => {
    const g = await gateway({ max_connections: 1 });
    const idle = await Bun.connect({ hostname: "127.0.0.1", port: g.port, socket: { data() {} } });
    try {
      let e = await loginError(g.port, { user: USER, password: API_KEY });
      for (let i = 0; i < 50 && e === null; i++) e = await loginError(g.port, { user: USER, password: API_KEY }); // until the gateway has accepted `idle`
      expect(e?.code).toBe("53300");
    } finally {
      idle.end();
    }
    expect(await eventuallyIn(g.port, { user: USER, password: API_KEY })).toBeNull();
  });
});

describe("a CancelRequest over the limit", () => {
  test("is still heard, as PostgreSQL hears it: porsager cancels its only session's statement with max_connections 1", async () => {
    const g = await gateway({ max_connections: 1 });
    const sql = postgres(g.url(), { max: 1 });
    try {
      const q = sql`SELECT pg_sleep(30)`;
      const started = q.execute();
      // Until the statement runs (a cancel before it would be lost, as with PostgreSQL).
      for (let i = 0; i < 200; i++) {
        if ((await db.psql("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'")).trim() === "1") break;
        await Bun.sleep(25);
      }
      q.cancel();
      expect(((await started.then(() => null, (e) => e)) as { code?: string } | null)?.code).toBe("57014");
      expect((await sql`SELECT 1 AS ok`)[0]!.ok).toBe(1);
    } finally {
      await sql.end();
    }
  });
});

describe("sessions per identity", () => {
  test("max_sessions_per_identity: a second session as the same key is refused 53300 after its credential is verified; another identity is not; recorded", async () => {
    const g = await gateway({ max_sessions_per_identity: 1 });
    const first = await session(g);
    const e = await loginError(g.port, { user: USER, password: API_KEY });
    expect(e).toEqual({ code: "53300", message: `agate: too many sessions for "${USER}": connection "app-db" allows 1 at once for one identity (limits.max_sessions_per_identity)` });
    // node-postgres, as another identity: let in.
    const client = new pg.Client({ connectionString: g.url({ user: OTHER, key: OTHER_KEY }) });
    await client.connect();
    expect((await client.query("SELECT 7 AS n")).rows).toEqual([{ n: 7 }]);
    await client.end();
    const refused = await recordsOf(g, "session_refused", (rs) => rs.length >= 1);
    expect(refused.length).toBe(1);
    expect(refused[0]!.code).toBe("LIMIT_SESSIONS_PER_IDENTITY");
    expect((refused[0]!.identity as { subject: string }).subject).toBe(USER);
    first.close();
    expect(await eventuallyIn(g.port, { user: USER, password: API_KEY })).toBeNull();
  });
});

describe("idle timeouts and lifetime", () => {
  test("idle outside a transaction ends with 57P05 first; idle inside one later with 25P03, and its insert is rolled back; a running statement is never idle", async () => {
    const g = await gateway({ idle_session_timeout_s: 0.5, idle_in_transaction_timeout_s: 2 });
    const outside = await session(g);
    const inside = await session(g);
    inside.send(Query("BEGIN; INSERT INTO limits_t VALUES (1)"));
    expect((await inside.untilReady()).at(-1)!.body.toString()).toBe("T");
    const order: string[] = [];
    const ended = [outside.until("E").then((m) => (order.push("outside"), m)), inside.until("E").then((m) => (order.push("inside"), m))];
    // Meanwhile a statement that runs longer than the idle timeout, then one more on the same connection.
    const busy = await psql(g.url(), "SELECT pg_sleep(1)", ["-c", "SELECT 'still here'"]);
    expect(busy.code).toBe(0);
    expect(busy.stdout).toContain("still here");
    const [o, i] = await Promise.all(ended);
    expect(order).toEqual(["outside", "inside"]);
    expect(errorOf(o!.at(-1)!)).toEqual({ code: "57P05", message: "agate: terminating connection due to idle-session timeout (limits.idle_session_timeout_s: 0.5)" });
    expect(errorOf(i!.at(-1)!)).toEqual({ code: "25P03", message: "agate: terminating connection due to idle-in-transaction timeout (limits.idle_in_transaction_timeout_s: 2)" });
    await outside.untilReady();
    await inside.untilReady();
    expect(outside.closed && inside.closed).toBe(true);
    expect((await db.psql("SELECT count(*) FROM limits_t", "app")).trim()).toBe("0");
    const ends = await recordsOf(g, "session_end", (rs) => rs.filter((x) => x.code).length >= 2);
    expect(ends.filter((x) => x.code).map((x) => x.code)).toEqual(["IDLE_SESSION_TIMEOUT", "IDLE_IN_TRANSACTION_TIMEOUT"]);
    expect(ends.find((x) => x.code === "IDLE_SESSION_TIMEOUT")!.reason).toContain("idle-session timeout");
    const m = await metrics(g);
    expect(m).toContain(`agate_limit_session_ends_total{connection="app-db",code="IDLE_SESSION_TIMEOUT"} `);
    expect(m).toContain(`agate_limit_session_ends_total{connection="app-db",code="IDLE_IN_TRANSACTION_TIMEOUT"} 1`);
  });

  test("max_session_lifetime_s ends even a busy session with 57P01 before its statement answers, and the target's backend goes", async () => {
    const g = await gateway({ max_session_lifetime_s: 0.5 });
    const s = await session(g);
    s.send(Query("SELECT pg_sleep(30), 'lifetime-test'"));
    const got = await s.until("E");
    expect(got.some((m) => m.type === "D")).toBe(false);
    expect(errorOf(got.at(-1)!)).toEqual({ code: "57P01", message: "agate: terminating connection: the session reached its maximum lifetime of 0.5 s (limits.max_session_lifetime_s); reconnect" });
    await s.untilReady();
    expect(s.closed).toBe(true);
    let running = "1";
    for (let i = 0; i < 200 && running !== "0"; i++) {
      running = (await db.psql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%lifetime-test%' AND pid <> pg_backend_pid()")).trim();
      if (running !== "0") await Bun.sleep(25);
    }
    expect(running).toBe("0");
    const ends = await recordsOf(g, "session_end", (rs) => rs.some((x) => x.code === "SESSION_LIFETIME"));
    expect(ends.filter((x) => x.code === "SESSION_LIFETIME").length).toBe(1);
  });
});
