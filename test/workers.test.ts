/**
 * `workers: 2` (src/workers): two threads accept on one port (SO_REUSEPORT)
 * and share one audit log, one set of limits and lockout counts, cancel keys
 * and derived mask rules. Real PostgreSQL, real clients (postgres.js, psql);
 * which thread a connection lands on is the kernel's choice, so each test
 * opens enough sessions to have some on both, and reads where each landed
 * from its session_start record (`worker`, matched by application_name).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { MessageChannel } from "node:worker_threads";
import type { FileHandle } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { openLog, readRecords } from "../src/audit/index.ts";
import { parseWorkers } from "../src/config/index.ts";
import { appendBatch, RemoteAuditSink } from "../src/workers/audit.ts";
import { Peer } from "../src/workers/peer.ts";
import type { Logger } from "../src/core/log.ts";
import { hashApiKey } from "../src/identity/apikey.ts";
import { API_KEY, psql, sh, startTestGateway, type TestGateway, USER } from "./helpers/gateway.ts";
import { freePort, startPostgres, type TestPostgres } from "./helpers/postgres.ts";
import { loginError } from "./helpers/wire.ts";

const EMAIL = "quentin.marlowe@example.org";
const MAIN = join(import.meta.dir, "../src/main.ts");

let db: TestPostgres;
let gw: TestGateway;
let stateDir: string;
/** What the gateway logged (every thread's lines reach the main thread's logger). */
const logged: { level: string; msg: string; facts: Record<string, unknown> }[] = [];
const log: Logger = (level, msg, facts = {}) => void logged.push({ level, msg, facts });
const open: postgres.Sql[] = [];

beforeAll(async () => {
  stateDir = mkdtempSync(join(tmpdir(), "agate-workers-"));
  db = await startPostgres();
  await db.psql(`
    CREATE TABLE people (id int PRIMARY KEY, email text);
    INSERT INTO people VALUES (1, '${EMAIL}');
    GRANT ALL ON ALL TABLES IN SCHEMA public TO app_scram;
    GRANT CREATE ON SCHEMA public TO app_scram;
  `);
  gw = await startTestGateway(db, {
    log,
    config: {
      workers: 2,
      log_level: "debug",
      mask: { derived_store: join(stateDir, "mask-derived.db") },
      approvals: { store: join(stateDir, "approvals.db") },
      policy: { data: { agate: { config: { allow_rules: ["approve_ddl", "deny_alter", "deny_covered_copy"], mask: { columns: ["public.people.email"], detectors: [] } } } } },
    },
  });
}, 120_000);

afterAll(async () => {
  await Promise.all(open.map((s) => s.end({ timeout: 0 })));
  await gw?.close();
  await db?.stop();
  rmSync(stateDir, { recursive: true, force: true });
});

async function records(dir = gw.auditDir): Promise<Record<string, any>[]> {
  const out: Record<string, any>[] = [];
  for await (const r of readRecords(dir)) out.push(r as Record<string, any>);
  return out;
}

/** Poll the log until `until` holds of its records (bounded by a count, not a clock). */
async function recordsUntil(until: (rs: Record<string, any>[]) => boolean, dir = gw.auditDir): Promise<Record<string, any>[]> {
  let rs = await records(dir);
  for (let i = 0; i < 400 && !until(rs); i++) {
    await Bun.sleep(25);
    rs = await records(dir);
  }
  return rs;
}

/**
 * Sessions held open, each with its own application_name, until there are
 * some on worker 0 and some on worker 1; returns them by worker.
 */
async function sessionsOnBoth(g: TestGateway, tag: string): Promise<[postgres.Sql[], postgres.Sql[]]> {
  const by: [postgres.Sql[], postgres.Sql[]] = [[], []];
  for (let round = 0; round < 8 && (by[0].length === 0 || by[1].length === 0); round++) {
    const batch = Array.from({ length: 6 }, (_, k) => {
      const name = `${tag}-${round}-${k}`;
      const sql = postgres(g.url({ params: `application_name=${name}` }), { max: 1, onnotice: () => {}, idle_timeout: 0 });
      open.push(sql);
      return { name, sql };
    });
    await Promise.all(batch.map(({ sql }) => sql`SELECT 1`));
    const starts = await recordsUntil((rs) => batch.every(({ name }) => rs.some((r) => r.type === "session_start" && r.client?.application === name)), g.auditDir);
    for (const { name, sql } of batch) {
      const w = starts.find((r) => r.type === "session_start" && r.client?.application === name)?.worker;
      if (w === 0) by[0].push(sql);
      else if (w === 1) by[1].push(sql);
    }
  }
  expect(by[0].length).toBeGreaterThan(0);
  expect(by[1].length).toBeGreaterThan(0);
  return by;
}

describe("the workers setting", () => {
  test("auto is the CPU count; a count is a whole number from 1; anything else is refused naming the key", () => {
    expect(parseWorkers("auto", "workers")).toBe(availableParallelism());
    expect(parseWorkers(3, "workers")).toBe(3);
    expect(parseWorkers("2", "--workers")).toBe(2);
    for (const bad of [0, -1, 1.5, "two", "", null, 257]) expect(() => parseWorkers(bad, "--workers")).toThrow(/^--workers is .*; expected auto or a whole number from 1 to 256$/);
  });
});

describe("a worker's audit sink (the main thread's log over a message port)", () => {
  test("past its window appends wait in order, none dropped; each resolves with its index once durable", async () => {
    const dir = mkdtempSync(join(tmpdir(), "agate-sink-"));
    let held: (() => void)[] | null = [];
    const log = await openLog(join(dir, "audit"), {
      __faultFs: {
        datasync: async (fh: FileHandle) => {
          if (held) await new Promise<void>((go) => held!.push(go));
          await fh.datasync();
        },
      },
    });
    const { port1, port2 } = new MessageChannel();
    try {
      new Peer(port1, { audit: (parts: string[]) => appendBatch(log, parts) });
      const sink = new RemoteAuditSink(new Peer(port2, {}), 4);
      const settled: number[] = [];
      const appends = Array.from({ length: 10 }, (_, n) => {
        if (n % 3 === 2) {
          sink.appendLater({ type: "later", n });
          return null;
        }
        return sink.append({ type: "now", n }).then((index) => void settled.push(index));
      });
      // The fsync is held: four records went over, the rest wait in the worker.
      for (let i = 0; i < 400 && log.size < 4; i++) await Bun.sleep(5);
      await Bun.sleep(50);
      expect(log.size).toBe(4);
      expect(settled).toEqual([]);
      const go = held;
      held = null;
      for (const g of go) g();
      await Promise.all(appends);
      await sink.drain();
      expect(log.size).toBe(10);
      // Every append resolved with its own record's index, in order.
      expect(settled).toEqual([0, 1, 3, 4, 6, 7, 9]);
      const rs: Record<string, any>[] = [];
      for await (const r of readRecords(join(dir, "audit"))) rs.push(r as Record<string, any>);
      expect(rs.map((r) => r.n)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
      expect(rs.map((r) => r.type)).toEqual(["now", "now", "later", "now", "now", "later", "now", "now", "later", "now"]);
    } finally {
      held?.forEach((g) => g());
      port1.close();
      await log.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("two workers on one port", () => {
  test("sessions land on both threads; every command of each is in the one log, which verifies", async () => {
    const [w0, w1] = await sessionsOnBoth(gw, "spread");
    const texts: string[] = [];
    await Promise.all(
      [...w0, ...w1].map(async (sql, s) => {
        for (let n = 0; n < 20; n++) {
          const text = `SELECT ${s * 100 + n} AS marker_${s}_${n}`;
          texts.push(text);
          await sql.unsafe(text).simple();
        }
      }),
    );
    const rs = await recordsUntil((all) => texts.every((t) => all.some((r) => r.type === "outcome" && all.some((c) => c.type === "command" && c.text === t && c.session === r.session && r.seqs?.includes(c.seq)))));
    const commands = new Map(rs.filter((r) => r.type === "command").map((r) => [r.text, r]));
    for (const t of texts) expect(commands.get(t)?.decision?.allow).toBe(true);
    // One ordered log: indexes count up from 0 with no gap, whichever thread made the record.
    expect(rs.map((r) => r.i)).toEqual(rs.map((_, k) => k));
    const workers = new Set(rs.filter((r) => r.type === "session_start").map((r) => r.worker));
    expect([...workers].sort()).toEqual([0, 1]);
  });

  test("a refusal names its own record's index, on either thread", async () => {
    const [w0, w1] = await sessionsOnBoth(gw, "refused");
    for (const sql of [w0[0]!, w1[0]!]) {
      const err = await sql.unsafe("TRUNCATE people").then(
        () => null,
        (e: Error & { detail?: string }) => e,
      );
      const m = /^session ([0-9a-f-]+), audit record (\d+)$/.exec(err?.detail ?? "");
      expect(m).not.toBeNull();
      const rs = await records();
      const rec = rs[Number(m![2])]!;
      expect(rec).toMatchObject({ type: "command", session: m![1], text: "TRUNCATE people", decision: { allow: false } });
    }
  });

  test("a CancelRequest reaches the session whichever thread accepts it", async () => {
    const [w0, w1] = await sessionsOnBoth(gw, "cancel");
    const before = logged.filter((l) => l.msg === "cancel request relayed to the other workers").length;
    let relayed = 0;
    let attempts = 0;
    // The cancel's own connection lands where the kernel puts it: cancel until some crossed threads (and some did not).
    for (; attempts < 40 && (relayed === 0 || relayed === attempts); attempts++) {
      const sql = (attempts % 2 === 0 ? w0 : w1)[0]!;
      const q = sql`SELECT pg_sleep(600)`;
      const running = q.execute().then(
        () => null,
        (e: { code?: string }) => e,
      );
      // Cancel once the target runs it (a cancel that arrives first cancels nothing).
      for (let i = 0; i < 400; i++) {
        const active = await db.psql("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = 'SELECT pg_sleep(600)'");
        if (active.trim() === "1") break;
        await Bun.sleep(10);
      }
      q.cancel();
      expect((await running)?.code).toBe("57014");
      relayed = logged.filter((l) => l.msg === "cancel request relayed to the other workers").length - before;
    }
    expect(relayed).toBeGreaterThan(0);
    expect(relayed).toBeLessThan(attempts);
    const rs = await recordsUntil((all) => all.filter((r) => r.type === "cancel").length >= attempts);
    expect(rs.filter((r) => r.type === "cancel").length).toBeGreaterThanOrEqual(attempts);
  }, 60_000);

  test("a mask rule derived in a session of one thread is in force in a session of the other before the copy can be read", async () => {
    const [w0, w1] = await sessionsOnBoth(gw, "derived");
    // Each direction once: the main thread's rule reaching the worker, and the worker's reaching the main thread.
    for (const [from, to, table] of [
      [w0[0]!, w1[0]!, "copy_from_main"],
      [w1[0]!, w0[0]!, "copy_from_worker"],
    ] as const) {
      // The reading session was open (and had read through its thread's rules) before the rule existed.
      await to`SELECT 1`;
      await from.unsafe(`CREATE TABLE ${table} AS SELECT id, email FROM people`);
      const rows = await to.unsafe(`SELECT email FROM ${table}`);
      expect(rows.map((r) => r.email)).toEqual(["[REDACTED:email]"]);
    }
    const rs = await records();
    expect(rs.filter((r) => r.type === "mask_derived").map((r) => r.rule)).toEqual(["copy_from_main.*", "copy_from_worker.*"]);
  });

  test("psql through either thread: extended and simple protocol answer the same", async () => {
    const outs = await Promise.all(Array.from({ length: 8 }, () => psql(gw.url(), "SELECT email FROM people")));
    for (const o of outs) {
      expect(o.stderr).toBe("");
      expect(o.stdout.trim()).toBe("[REDACTED:email]");
    }
  });
});

describe("limits and lockout hold across the threads", () => {
  let g: TestGateway;
  beforeAll(async () => {
    g = await startTestGateway(db, {
      config: { workers: 2, lockout: { delay_after: 0, block_after: 4, block_s: 600 }, admin: { listen: "127.0.0.1:0", groups: ["auditor"] } },
      connection: { limits: { max_connections: 4, max_sessions_per_identity: 0 } },
    });
  });
  afterAll(() => g?.close());

  test("max_connections counts every thread's connections: the fifth is refused (53300), wherever it lands", async () => {
    const held = Array.from({ length: 4 }, () => postgres(g.url(), { max: 1, onnotice: () => {}, idle_timeout: 0 }));
    try {
      await Promise.all(held.map((s) => s`SELECT 1`));
      const starts = await recordsUntil((rs) => rs.filter((r) => r.type === "session_start").length >= 4, g.auditDir);
      expect(starts.filter((r) => r.type === "session_start").length).toBe(4);
      // /metrics (main thread) counts both threads' connections and sessions.
      const metrics = await (await fetch(`http://127.0.0.1:${g.gateway.admin!.port}/metrics`)).text();
      expect(metrics).toContain('agate_connections_open{connection="app-db"} 4\n');
      expect(metrics).toContain('agate_sessions_open{connection="app-db"} 4\n');
      // Several tries, so that some land on each thread (a limit counted per thread would let those on the other in).
      const refused = await Promise.all(Array.from({ length: 6 }, () => psql(g.url(), "SELECT 1")));
      for (const r of refused) {
        expect(r.code).not.toBe(0);
        expect(r.stderr).toContain("too many clients already");
      }
      await held[0]!.end();
      // Released by whichever thread held it: a new connection gets in again.
      let ok = await psql(g.url(), "SELECT 'in again'");
      for (let i = 0; i < 100 && ok.code !== 0; i++) {
        await Bun.sleep(20);
        ok = await psql(g.url(), "SELECT 'in again'");
      }
      expect(ok.stdout.trim()).toBe("in again");
    } finally {
      await Promise.all(held.map((s) => s.end({ timeout: 0 })));
    }
  });

  test("failed logins count across threads: after block_after failures the address is blocked on every thread", async () => {
    // The connections of the test before are given back (by whichever thread held them) first.
    for (let i = 0; i < 400; i++) {
      const metrics = await (await fetch(`http://127.0.0.1:${g.gateway.admin!.port}/metrics`)).text();
      if (metrics.includes('agate_connections_open{connection="app-db"} 0\n')) break;
      await Bun.sleep(10);
    }
    for (let i = 0; i < 4; i++) {
      const e = await loginError(g.port, { user: "ci-runner", password: `wrong-${i}` });
      expect(e?.code).toBe("28P01");
    }
    // Spread over both threads by now (four connections); the right key is refused too, on either.
    for (let i = 0; i < 6; i++) {
      const e = await loginError(g.port, { user: "ci-runner", password: API_KEY });
      expect(e?.code).toBe("28000");
      expect(e?.message).toContain("too many failed logins");
    }
  });
});

describe("approvals across threads", () => {
  const APPROVER_KEY = "agk_workers_test_approver_key_not_real";
  let g: TestGateway;
  beforeAll(async () => {
    g = await startTestGateway(db, {
      config: {
        workers: 2,
        admin: { listen: "127.0.0.1:0", groups: ["auditor"] },
        approvals: { store: join(stateDir, "approvals-across.db"), timeout_s: 60 },
        identity: {
          api_keys: [
            { id: USER, groups: ["ci"], kind: "service", sha256: hashApiKey(API_KEY) },
            { id: "dba-1", groups: ["dba"], kind: "human", sha256: hashApiKey(APPROVER_KEY) },
          ],
        },
        policy: { data: { agate: { config: { approvals: { approvers: ["dba"], timeout_s: 60 } } } } },
      },
    });
  });
  afterAll(() => g?.close());

  test("a statement held by either thread is released by a vote through the admin API (main thread)", async () => {
    const admin = `http://127.0.0.1:${g.gateway.admin!.port}`;
    const call = async (method: string, path: string, body?: object) => {
      const res = await fetch(`${admin}${path}`, { method, headers: { authorization: `Bearer ${APPROVER_KEY}`, ...(body ? { "content-type": "application/json" } : {}) }, ...(body ? { body: JSON.stringify(body) } : {}) });
      return (await res.json()) as Record<string, any>;
    };
    const [w0, w1] = await sessionsOnBoth(g, "approve");
    const gateways = new Set<string>();
    for (const [k, sql] of [w0[0]!, w1[0]!].entries()) {
      // DDL waits for an approver (the default policy's approve_ddl).
      const held = sql.unsafe(`CREATE TABLE approved_${k} (x int)`).then(
        () => null,
        (e: Error) => e,
      );
      let request: Record<string, any> | undefined;
      for (let i = 0; i < 400 && !request; i++) {
        request = ((await call("GET", "/v1/approvals?status=pending")).requests as Record<string, any>[]).find((r) => r.command?.text === `CREATE TABLE approved_${k} (x int)`);
        if (!request) await Bun.sleep(25);
      }
      expect(request).toBeDefined();
      gateways.add(request!.gateway);
      expect((await call("POST", `/v1/approvals/${request!.id}/approve`, { reason: "workers test" })).status).toBe("approved");
      expect(await held).toBeNull();
      expect(await db.psql(`SELECT to_regclass('approved_${k}') IS NOT NULL`)).toBe("t\n");
    }
    // Held by two threads, each under its own name in the one store.
    expect(gateways.size).toBe(2);
  }, 60_000);
});

describe("the main thread's log fails", () => {
  let failing = false;
  let g: TestGateway;
  beforeAll(async () => {
    g = await startTestGateway(db, {
      // The refusals are logged as errors: expected here.
      log: () => {},
      config: { workers: 2, log_level: "error" },
      auditFaults: {
        datasync: async (fh) => {
          if (failing) throw Object.assign(new Error("EIO: i/o error, fdatasync"), { code: "EIO" });
          await fh.datasync();
        },
      },
    });
  });
  afterAll(() => g?.close().catch(() => {}));

  test("sessions of both threads are refused with agate's error (fail closed), and nothing reaches the target", async () => {
    const [w0, w1] = await sessionsOnBoth(g, "failing");
    failing = true;
    for (const [k, sql] of [w0[0]!, w1[0]!].entries()) {
      // An autocommit write: forwarded only once its record is durable, which it never is.
      const err = await sql.unsafe(`INSERT INTO people VALUES (${100 + k}, 'never@example.org')`).simple().then(
        () => null,
        (e: Error & { code?: string }) => e,
      );
      expect(err?.message).toContain("agate could not record the statement, so it was not run");
      expect(err?.message).toContain("The audit log could not write or fsync");
      expect(err?.code).toBe("58000");
    }
    expect(await db.psql("SELECT count(*) FROM people WHERE id >= 100")).toBe("0\n");
    // A new login is refused too, whichever thread takes it: its session_start cannot be made durable.
    for (let i = 0; i < 4; i++) {
      const r = await psql(g.url(), "SELECT 1");
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain("audit");
    }
  });
});

describe("a fixed port", () => {
  test("a second gateway with workers cannot join a port the first holds (SO_REUSEPORT would let it share it silently)", async () => {
    const port = await freePort();
    const first = await startTestGateway(db, { config: { workers: 2 }, connection: { listen: `127.0.0.1:${port}` } });
    try {
      expect(first.port).toBe(port);
      const second = startTestGateway(db, { config: { workers: 2 }, connection: { listen: `127.0.0.1:${port}` } });
      const err = await second.then(
        async (g) => {
          await g.close();
          return null;
        },
        (e: { code?: string; message?: string }) => e,
      );
      expect(err?.code).toBe("LISTEN_FAILED");
      expect(err?.message).toContain(`cannot listen on 127.0.0.1:${port}`);
      // The first still serves.
      expect((await psql(first.url(), "SELECT 'still here'")).stdout.trim()).toBe("still here");
    } finally {
      await first.close();
    }
  });
});

describe("shutdown", () => {
  test("close ends every thread's sessions, their last records reach the log, and `agate verify` passes", async () => {
    const g = await startTestGateway(db, { config: { workers: 2 } });
    const sessions = (await sessionsOnBoth(g, "shutdown")).flat();
    try {
      await Promise.all(sessions.map((s, k) => s.unsafe(`SELECT ${k} AS before_shutdown`).simple()));
      await g.gateway.close();
      const rs = await records(g.auditDir);
      const started = rs.filter((r) => r.type === "session_start");
      expect(started.length).toBe(sessions.length);
      expect(new Set(started.map((r) => r.worker)).size).toBe(2);
      const ended = new Set(rs.filter((r) => r.type === "session_end").map((r) => r.session));
      for (const s of started) expect(ended.has(s.session)).toBe(true);
      const v = await sh([process.execPath, MAIN, "verify", "--log", g.auditDir, "--key", g.verifierKey, "--quiet"]);
      expect(v.stdout).toStartWith(`ok: ${rs.length} records`);
      expect(v.code).toBe(0);
    } finally {
      await Promise.all(sessions.map((s) => s.end({ timeout: 0 })));
      rmSync(join(g.auditDir, ".."), { recursive: true, force: true });
    }
  });
});
