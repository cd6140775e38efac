/**
 * The approvals stores: one behavioural suite run against SQLite (one
 * gateway) and PostgreSQL (several gateways sharing a database), then what
 * only PostgreSQL does: two stores on one database seeing each other's
 * decisions and grants through LISTEN/NOTIFY, surviving a dropped LISTEN
 * connection, creating the schema once when gateways start together, and
 * saying so clearly when the database is not there.
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { PgApprovalStore } from "../src/approvals/pg.ts";
import { SqliteApprovalStore } from "../src/approvals/sqlite.ts";
import type { ApprovalRequest, ApprovalStore, Approver, Vote } from "../src/approvals/types.ts";
import { AgateError } from "../src/core/errors.ts";
import { freePort, startPostgres, type TestPostgres } from "./helpers/postgres.ts";

const ISSUER = "https://idp.example.com";
const MINUTE = 60_000;

const alice = { subject: "alice@example.com", issuer: ISSUER, groups: ["eng", "dba"], kind: "human" as const, credential_id: "key_7Hq2VxA9" };
const bob: Approver = { subject: "bob@example.com", issuer: ISSUER, groups: ["dba"], kind: "human" };
const carol: Approver = { subject: "carol@example.com", issuer: ISSUER, groups: ["dba", "oncall"], kind: "human" };
const dave: Approver = { subject: "dave@example.com", issuer: ISSUER, groups: ["eng"], kind: "human" };
/** Bob's name at another issuer: a different person. */
const otherBob: Approver = { ...bob, issuer: "https://other-idp.example.org" };

let clock = 0;
function request(over: Partial<ApprovalRequest> = {}): ApprovalRequest {
  const now = Date.now();
  return {
    id: `apr_${randomBytes(15).toString("base64url").slice(0, 20)}`,
    // Strictly increasing, so list() order is known.
    created_at: new Date(now + clock++).toISOString(),
    expires_at: new Date(now + 10 * MINUTE).toISOString(),
    status: "pending",
    gateway: "gw-eu-1",
    session: `ses_${randomBytes(8).toString("hex")}`,
    requester: alice,
    connection: { name: "prod-db", protocol: "postgres", target: "10.0.4.17:5432/app" },
    command: { text: "DELETE FROM accounts WHERE id = 42", facts: { statements: [{ kind: "delete", tables: ["accounts"], where: true }] } },
    reasons: ["DELETE on a production table needs a DBA's approval"],
    approvers: ["dba"],
    min_approvers: 1,
    votes: [],
    ...over,
  };
}

function vote(by: Approver, decision: Vote["decision"] = "approve", extra: Partial<Vote> = {}): Vote {
  return { by, at: new Date().toISOString(), decision, reason: decision === "approve" ? "ticket OPS-1182" : "not during the freeze", ...extra };
}

/** The AgateError code a promise rejects with (fails the test if it resolves or throws something else). */
async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (e instanceof AgateError) return e.code;
    throw e;
  }
  throw new Error("expected a rejection");
}

/** Resolves with `true` if `p` settles before the next few event-loop turns, `false` otherwise (no clock involved). */
async function settledSoon(p: Promise<unknown>): Promise<boolean> {
  let settled = false;
  p.then(
    () => (settled = true),
    () => (settled = true),
  );
  for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
  return settled;
}

/** Wait for `check` to hold, polling briefly (for things that travel through NOTIFY). */
async function eventually(check: () => boolean, what: string, tries = 1000): Promise<void> {
  for (let i = 0; i < tries; i++) {
    if (check()) return;
    await Bun.sleep(5);
  }
  throw new Error(`never happened: ${what}`);
}

// ---------------------------------------------------------------------------
// Shared fixtures: a temp directory for SQLite files, a PostgreSQL server.

let dir: string;
let pg: TestPostgres;
let admin: postgres.Sql;
let schemas = 0;
const freshSchema = () => `t_${process.pid}_${schemas++}`;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "agate-approvals-"));
  pg = await startPostgres();
  admin = postgres(pg.url("postgres", "app"), { onnotice: () => {}, max: 2 });
});

afterAll(async () => {
  await admin?.end({ timeout: 5 });
  await pg?.stop();
  rmSync(dir, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------
// The behavioural suite, once per store.

function behavesLikeAnApprovalStore(name: string, open: () => Promise<ApprovalStore>): void {
  describe(name, () => {
    let store: ApprovalStore;
    beforeEach(async () => {
      store = await open();
    });
    afterEach(async () => {
      await store.close();
    });

    test("create, get and list round-trip the whole request", async () => {
      const a = request();
      const b = request({ min_approvers: 2 });
      const c = request({ connection: { name: "billing", protocol: "http", target: "https://billing.internal" }, command: { text: "POST /refunds" } });
      for (const r of [a, b, c]) await store.create(r);
      expect(await store.get(a.id)).toEqual(a);
      expect(await store.get("apr_doesnotexist000000")).toBeNull();
      expect((await store.list()).map((r) => r.id)).toEqual([a.id, b.id, c.id]);
      await store.vote(b.id, vote(bob, "deny"));
      expect((await store.list({ status: "pending" })).map((r) => r.id)).toEqual([a.id, c.id]);
      expect((await store.list({ status: "denied" })).map((r) => r.id)).toEqual([b.id]);
      expect(await store.list({ status: "approved" })).toEqual([]);
    });

    test("one approval from an approver group member approves, with the deciding reason", async () => {
      const r = request();
      await store.create(r);
      const after = await store.vote(r.id, vote(bob, "approve", { reason: "ticket OPS-1182" }));
      expect(after.status).toBe("approved");
      expect(after.decided_reason).toBe("approved by bob@example.com: ticket OPS-1182");
      expect(after.decided_at).toBe(after.votes[0]!.at);
      expect(after.votes.map((v) => v.by.subject)).toEqual(["bob@example.com"]);
      expect(await store.get(r.id)).toEqual(after);
      expect((await store.list({ status: "approved" })).map((x) => x.id)).toEqual([r.id]);
    });

    test("the requester cannot approve their own request, even as an approver", async () => {
      const r = request();
      await store.create(r);
      expect(await codeOf(store.vote(r.id, vote({ subject: alice.subject, issuer: alice.issuer, groups: alice.groups, kind: alice.kind })))).toBe("APPROVAL_SELF");
      expect(await store.get(r.id)).toEqual(r);
    });

    test("someone outside the approver groups cannot decide", async () => {
      const r = request();
      await store.create(r);
      expect(await codeOf(store.vote(r.id, vote(dave)))).toBe("APPROVAL_NOT_APPROVER");
      expect(await codeOf(store.vote(r.id, vote(dave, "deny")))).toBe("APPROVAL_NOT_APPROVER");
      expect((await store.get(r.id))!.status).toBe("pending");
    });

    test("two approvers are two distinct people: a repeat vote is refused", async () => {
      const r = request({ min_approvers: 2 });
      await store.create(r);
      const first = await store.vote(r.id, vote(bob));
      expect(first.status).toBe("pending");
      expect(first.votes).toHaveLength(1);
      expect(await codeOf(store.vote(r.id, vote(bob)))).toBe("APPROVAL_REPEAT");
      expect((await store.get(r.id))!.votes).toHaveLength(1);
      // The same name at another issuer is someone else.
      const second = await store.vote(r.id, vote(otherBob, "approve", { reason: "checked the WHERE clause" }));
      expect(second.status).toBe("approved");
      expect(second.decided_reason).toBe("approved by bob@example.com and bob@example.com: checked the WHERE clause");
      expect(await codeOf(store.vote(r.id, vote(carol)))).toBe("APPROVAL_NOT_PENDING");
    });

    test("two approvers: the second distinct approval decides it", async () => {
      const r = request({ min_approvers: 2 });
      await store.create(r);
      await store.vote(r.id, vote(bob));
      const after = await store.vote(r.id, vote(carol, "approve", { reason: "looks right" }));
      expect(after.status).toBe("approved");
      expect(after.decided_reason).toBe("approved by bob@example.com and carol@example.com: looks right");
      expect(after.votes.map((v) => v.by.subject)).toEqual(["bob@example.com", "carol@example.com"]);
    });

    test("a deny ends the request, even after an approval, and nothing more can be voted", async () => {
      const r = request({ min_approvers: 2 });
      await store.create(r);
      await store.vote(r.id, vote(bob));
      const after = await store.vote(r.id, vote(carol, "deny", { reason: "not during the freeze" }));
      expect(after.status).toBe("denied");
      expect(after.decided_reason).toBe("denied by carol@example.com: not during the freeze");
      expect(await codeOf(store.vote(r.id, vote(otherBob)))).toBe("APPROVAL_NOT_PENDING");
      expect((await store.get(r.id))!.status).toBe("denied");
    });

    test("a request past its expiry, an unknown request and a bad grant length are refused", async () => {
      const old = request({ expires_at: new Date(Date.now() - 1000).toISOString() });
      await store.create(old);
      expect(await codeOf(store.vote(old.id, vote(bob)))).toBe("APPROVAL_NOT_PENDING");
      expect(await codeOf(store.vote("apr_doesnotexist000000", vote(bob)))).toBe("APPROVAL_NOT_FOUND");
      const r = request();
      await store.create(r);
      expect(await codeOf(store.vote(r.id, vote(bob, "approve", { grant_minutes: 0 })))).toBe("APPROVAL_BAD_GRANT");
      expect(await codeOf(store.vote(r.id, vote(bob, "approve", { grant_minutes: 24 * 60 + 1 })))).toBe("APPROVAL_BAD_GRANT");
      expect(await store.get(r.id)).toEqual(r);
    });

    test("finish ends a pending request and leaves a decided one as it is", async () => {
      const pending = request();
      const decided = request();
      await store.create(pending);
      await store.create(decided);
      const approved = await store.vote(decided.id, vote(bob));

      const ended = await store.finish(pending.id, "expired", "timed out");
      expect(ended!.status).toBe("expired");
      expect(ended!.decided_reason).toBe("timed out");
      expect(typeof ended!.decided_at).toBe("string");
      expect(await store.get(pending.id)).toEqual(ended);
      // Once ended, finishing again (or differently) changes nothing.
      expect(await store.finish(pending.id, "withdrawn", "the client withdrew it")).toEqual(ended);

      expect(await store.finish(decided.id, "withdrawn", "the client withdrew it")).toEqual(approved);
      expect(await store.get(decided.id)).toEqual(approved);
      expect(await store.finish("apr_doesnotexist000000", "expired", "timed out")).toBeNull();
      expect(await codeOf(store.vote(pending.id, vote(bob)))).toBe("APPROVAL_NOT_PENDING");
    });

    test("waitDecided resolves when a vote decides the request, not before", async () => {
      const r = request({ min_approvers: 2 });
      await store.create(r);
      const waiting = store.waitDecided(r.id, new AbortController().signal);
      await store.vote(r.id, vote(bob));
      expect(await settledSoon(waiting)).toBe(false);
      await store.vote(r.id, vote(carol));
      const decided = await waiting;
      expect(decided.status).toBe("approved");
      expect(decided.votes).toHaveLength(2);
    });

    test("waitDecided resolves on a deny, on finish, and at once for a decided request", async () => {
      const denied = request();
      const withdrawn = request();
      await store.create(denied);
      await store.create(withdrawn);
      const w1 = store.waitDecided(denied.id, new AbortController().signal);
      const w2 = store.waitDecided(withdrawn.id, new AbortController().signal);
      await store.vote(denied.id, vote(carol, "deny"));
      await store.finish(withdrawn.id, "withdrawn", "the client withdrew it");
      expect((await w1).status).toBe("denied");
      expect((await w2).decided_reason).toBe("the client withdrew it");
      expect((await store.waitDecided(denied.id, new AbortController().signal)).status).toBe("denied");
    });

    test("waitDecided rejects when aborted, and for an unknown request", async () => {
      const r = request();
      await store.create(r);
      const ac = new AbortController();
      const waiting = store.waitDecided(r.id, ac.signal);
      const reason = new Error("client disconnected");
      ac.abort(reason);
      await expect(waiting).rejects.toBe(reason);
      const already = new AbortController();
      already.abort(reason);
      await expect(store.waitDecided(r.id, already.signal)).rejects.toBe(reason);
      expect(await codeOf(store.waitDecided("apr_doesnotexist000000", new AbortController().signal))).toBe("APPROVAL_NOT_FOUND");
      // The aborted waiters are gone; a later decision still reaches a new one.
      const again = store.waitDecided(r.id, new AbortController().signal);
      await store.vote(r.id, vote(bob));
      expect((await again).status).toBe("approved");
    });

    test("an approval with grant_minutes leaves a grant for that identity and connection until it expires", async () => {
      const r = request();
      await store.create(r);
      const before = Date.now();
      expect(store.activeGrants(alice.subject, alice.issuer, "prod-db", before)).toEqual([]);
      const after = await store.vote(r.id, vote(bob, "approve", { grant_minutes: 30, reason: "incident INC-77" }));
      const at = Date.parse(after.votes[0]!.at);
      const grants = store.activeGrants(alice.subject, alice.issuer, "prod-db", Date.now());
      expect(grants).toHaveLength(1);
      expect(grants[0]).toEqual({
        id: `grt_${r.id.slice(4)}`,
        request: r.id,
        subject: alice.subject,
        issuer: alice.issuer,
        connection: "prod-db",
        granted_by: ["bob@example.com"],
        created_at: after.votes[0]!.at,
        expires_at: new Date(at + 30 * MINUTE).toISOString(),
        reason: "incident INC-77",
      });
      // Only for that identity on that connection…
      expect(store.activeGrants(alice.subject, alice.issuer, "billing", Date.now())).toEqual([]);
      expect(store.activeGrants(alice.subject, "https://other-idp.example.org", "prod-db", Date.now())).toEqual([]);
      expect(store.activeGrants(bob.subject, bob.issuer, "prod-db", Date.now())).toEqual([]);
      // …and only until it expires.
      expect(store.activeGrants(alice.subject, alice.issuer, "prod-db", at + 29 * MINUTE)).toHaveLength(1);
      expect(store.activeGrants(alice.subject, alice.issuer, "prod-db", at + 30 * MINUTE)).toEqual([]);
      expect(store.activeGrants(alice.subject, alice.issuer, "prod-db", at + 31 * MINUTE)).toEqual([]);
    });

    test("no grant without grant_minutes, from a deny, or before the request is approved", async () => {
      const plain = request({ connection: { name: "plain-db", protocol: "postgres", target: "x:5432/a" } });
      const denied = request({ connection: { name: "denied-db", protocol: "postgres", target: "x:5432/b" } });
      const two = request({ min_approvers: 2, connection: { name: "two-db", protocol: "postgres", target: "x:5432/c" } });
      for (const r of [plain, denied, two]) await store.create(r);
      await store.vote(plain.id, vote(bob));
      await store.vote(denied.id, vote(bob, "deny", { grant_minutes: 30 }));
      await store.vote(two.id, vote(bob, "approve", { grant_minutes: 30 }));
      const now = Date.now();
      for (const c of ["plain-db", "denied-db", "two-db"]) expect(store.activeGrants(alice.subject, alice.issuer, c, now)).toEqual([]);
      // The deciding (second) approval carries the grant; both approvers are named.
      await store.vote(two.id, vote(carol, "approve", { grant_minutes: 15 }));
      const [g] = store.activeGrants(alice.subject, alice.issuer, "two-db", Date.now());
      expect(g!.granted_by).toEqual(["bob@example.com", "carol@example.com"]);
      expect(Date.parse(g!.expires_at) - Date.parse(g!.created_at)).toBe(15 * MINUTE);
    });

    test("grants survive reopening the store", async () => {
      const r = request({ connection: { name: "reopen-db", protocol: "postgres", target: "x:5432/r" } });
      await store.create(r);
      await store.vote(r.id, vote(bob, "approve", { grant_minutes: 10 }));
      await store.close();
      store = await reopen(store);
      expect(store.activeGrants(alice.subject, alice.issuer, "reopen-db", Date.now())).toHaveLength(1);
      expect((await store.get(r.id))!.status).toBe("approved");
    });

    test("concurrent votes on one request are serialised: each distinct approver counts once", async () => {
      const r = request({ min_approvers: 2 });
      await store.create(r);
      const results = await Promise.allSettled([store.vote(r.id, vote(bob)), store.vote(r.id, vote(carol)), store.vote(r.id, vote(bob))]);
      const ok = results.filter((x) => x.status === "fulfilled");
      const refused = results.filter((x): x is PromiseRejectedResult => x.status === "rejected").map((x) => (x.reason as AgateError).code);
      expect(ok).toHaveLength(2);
      expect(refused).toHaveLength(1);
      expect(["APPROVAL_REPEAT", "APPROVAL_NOT_PENDING"]).toContain(refused[0]!);
      const final = (await store.get(r.id))!;
      expect(final.status).toBe("approved");
      expect(final.votes.map((v) => v.by.subject).sort()).toEqual(["bob@example.com", "carol@example.com"]);
    });
  });
}

/** How each suite reopens "the same" store (same file, same schema). */
const reopeners = new Map<ApprovalStore, () => Promise<ApprovalStore>>();
async function reopen(s: ApprovalStore): Promise<ApprovalStore> {
  const again = reopeners.get(s);
  if (!again) throw new Error("no reopener for this store");
  const next = await again();
  reopeners.set(next, again);
  return next;
}

let files = 0;
behavesLikeAnApprovalStore("SqliteApprovalStore", async () => {
  const path = join(dir, `approvals-${files++}.db`);
  const s = new SqliteApprovalStore(path);
  reopeners.set(s, async () => new SqliteApprovalStore(path));
  return s;
});

behavesLikeAnApprovalStore("PgApprovalStore", async () => {
  const schema = freshSchema();
  const s = await PgApprovalStore.open(pg.url("postgres", "app"), { schema });
  reopeners.set(s, () => PgApprovalStore.open(pg.url("postgres", "app"), { schema }));
  return s;
});

// ---------------------------------------------------------------------------
// Only PostgreSQL: several gateways on one database.

describe("PgApprovalStore: two gateways on one database", () => {
  let a: PgApprovalStore;
  let b: PgApprovalStore;
  let schema: string;
  beforeEach(async () => {
    schema = freshSchema();
    [a, b] = await Promise.all([PgApprovalStore.open(pg.url(), { schema }), PgApprovalStore.open(pg.url(), { schema })]);
  });
  afterEach(async () => {
    await Promise.all([a.close(), b.close()]);
  });

  test("a command waiting on gateway A is released by a vote made through gateway B", async () => {
    const r = request({ gateway: "gw-a" });
    await a.create(r);
    expect((await b.list({ status: "pending" })).map((x) => x.id)).toEqual([r.id]);
    const waiting = a.waitDecided(r.id, new AbortController().signal);
    expect(await settledSoon(waiting)).toBe(false);
    const t0 = performance.now();
    await b.vote(r.id, vote(bob));
    const decided = await waiting;
    console.log(`cross-gateway release: ${(performance.now() - t0).toFixed(1)} ms from B's vote call to A's waiter`);
    expect(decided.status).toBe("approved");
    expect(decided.votes[0]!.by.subject).toBe("bob@example.com");
  });

  test("finish on B (expiry, withdrawal) releases A's waiter too", async () => {
    const r = request();
    await a.create(r);
    const waiting = a.waitDecided(r.id, new AbortController().signal);
    await b.finish(r.id, "expired", "timed out");
    expect(await waiting).toMatchObject({ status: "expired", decided_reason: "timed out" });
  });

  test("a grant made through B shows up in A's activeGrants", async () => {
    const r = request({ connection: { name: "warehouse", protocol: "postgres", target: "10.0.9.1:5432/dw" } });
    await a.create(r);
    expect(a.activeGrants(alice.subject, alice.issuer, "warehouse", Date.now())).toEqual([]);
    const t0 = performance.now();
    await b.vote(r.id, vote(carol, "approve", { grant_minutes: 60 }));
    expect(b.activeGrants(alice.subject, alice.issuer, "warehouse", Date.now())).toHaveLength(1);
    await eventually(() => a.activeGrants(alice.subject, alice.issuer, "warehouse", Date.now()).length === 1, "B's grant visible on A");
    console.log(`cross-gateway grant: visible on A ${(performance.now() - t0).toFixed(1)} ms after B's vote call began`);
    expect(a.activeGrants(alice.subject, alice.issuer, "warehouse", Date.now())).toEqual(b.activeGrants(alice.subject, alice.issuer, "warehouse", Date.now()));
  });

  test("two approvers voting at once on different gateways both count", async () => {
    const r = request({ min_approvers: 2 });
    await a.create(r);
    const waitA = a.waitDecided(r.id, new AbortController().signal);
    const waitB = b.waitDecided(r.id, new AbortController().signal);
    await Promise.all([a.vote(r.id, vote(bob)), b.vote(r.id, vote(carol))]);
    const [da, db] = await Promise.all([waitA, waitB]);
    expect(da.status).toBe("approved");
    expect(da).toEqual(db);
    expect(da.votes.map((v) => v.by.subject).sort()).toEqual(["bob@example.com", "carol@example.com"]);
  });

  test("the same approver voting on both gateways at once counts once", async () => {
    const r = request({ min_approvers: 2 });
    await a.create(r);
    const results = await Promise.allSettled([a.vote(r.id, vote(bob)), b.vote(r.id, vote(bob))]);
    expect(results.filter((x) => x.status === "fulfilled")).toHaveLength(1);
    const [refused] = results.filter((x): x is PromiseRejectedResult => x.status === "rejected");
    expect((refused!.reason as AgateError).code).toBe("APPROVAL_REPEAT");
    const now = (await a.get(r.id))!;
    expect(now.status).toBe("pending");
    expect(now.votes).toHaveLength(1);
  });

  test("after the LISTEN connections are killed, waiters and grants still follow the other gateway", async () => {
    const r1 = request();
    const r2 = request({ connection: { name: "after-drop", protocol: "postgres", target: "x:5432/d" } });
    await a.create(r1);
    await a.create(r2);
    const w1 = a.waitDecided(r1.id, new AbortController().signal);
    const killed = await admin`
      SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity
      WHERE datname = 'app' AND application_name = 'agate-approvals' AND query ILIKE 'listen%'`;
    expect(killed.length).toBeGreaterThanOrEqual(2);
    // Straight away, likely before A has listened again: the vote's NOTIFY may be lost, the onlisten re-read is not.
    await b.vote(r1.id, vote(bob));
    expect((await w1).status).toBe("approved");
    // And LISTEN works again afterwards.
    const w2 = a.waitDecided(r2.id, new AbortController().signal);
    await b.vote(r2.id, vote(carol, "approve", { grant_minutes: 5 }));
    expect((await w2).status).toBe("approved");
    await eventually(() => a.activeGrants(alice.subject, alice.issuer, "after-drop", Date.now()).length === 1, "grant after the LISTEN connection came back");
    const listening = await admin`
      SELECT count(*)::int AS n FROM pg_stat_activity
      WHERE datname = 'app' AND application_name = 'agate-approvals' AND query ILIKE 'listen%'`;
    expect(listening[0]!.n).toBeGreaterThanOrEqual(2);
  });
});

describe("PgApprovalStore: a decision made while a gateway's LISTEN connection is down", () => {
  test("reaches it when porsager has listened again (the NOTIFY itself is lost)", async () => {
    const schema = freshSchema();
    const b = await PgApprovalStore.open(pg.url(), { schema });
    await admin.unsafe(`GRANT USAGE ON SCHEMA ${schema} TO app_md5; GRANT SELECT, INSERT, UPDATE ON ${schema}.approvals, ${schema}.grants TO app_md5`);
    // Gateway A runs as its own role, so that role's logins can be stopped while B carries on.
    const a = await PgApprovalStore.open(pg.url("app_md5"), { schema });
    try {
      const r = request({ connection: { name: "while-down", protocol: "postgres", target: "x:5432/w" } });
      await a.create(r);
      const waiting = a.waitDecided(r.id, new AbortController().signal);
      await admin`ALTER ROLE app_md5 NOLOGIN`;
      const killed = await admin`
        SELECT pg_terminate_backend(pid, 5000) AS ok FROM pg_stat_activity
        WHERE usename = 'app_md5' AND query ILIKE 'listen%'`;
      expect(killed.map((k) => k.ok)).toEqual([true]);
      await b.vote(r.id, vote(bob, "approve", { grant_minutes: 20 }));
      // A cannot be listening: it missed the NOTIFY.
      expect(await settledSoon(waiting)).toBe(false);
      expect(a.activeGrants(alice.subject, alice.issuer, "while-down", Date.now())).toEqual([]);
      await admin`ALTER ROLE app_md5 LOGIN`;
      const t0 = performance.now();
      // porsager reconnects (with its backoff), LISTENs, calls onlisten, and A re-reads.
      expect((await waiting).status).toBe("approved");
      console.log(`missed NOTIFY: A's waiter released ${(performance.now() - t0).toFixed(0)} ms after logins were allowed again`);
      await eventually(() => a.activeGrants(alice.subject, alice.issuer, "while-down", Date.now()).length === 1, "grant re-read after LISTEN came back");
    } finally {
      await admin`ALTER ROLE app_md5 LOGIN`;
      await Promise.all([a.close(), b.close()]);
    }
  });
});

describe("PgApprovalStore: setup and failures", () => {
  test("gateways starting at once create the schema and tables once", async () => {
    const schema = freshSchema();
    const stores = await Promise.all(Array.from({ length: 6 }, () => PgApprovalStore.open(pg.url(), { schema })));
    const tables = await admin`SELECT tablename FROM pg_tables WHERE schemaname = ${schema} ORDER BY tablename`;
    expect(tables.map((t) => t.tablename)).toEqual(["approvals", "grants"]);
    const r = request();
    await stores[0]!.create(r);
    expect((await stores[5]!.get(r.id))!.id).toBe(r.id);
    await Promise.all(stores.map((s) => s.close()));
  });

  test("the default schema is agate", async () => {
    const s = await PgApprovalStore.open(pg.url());
    const [row] = await admin`SELECT to_regclass('agate.approvals') IS NOT NULL AS a, to_regclass('agate.grants') IS NOT NULL AS g`;
    expect(row).toEqual({ a: true, g: true });
    await s.close();
  });

  test("a role with only SELECT, INSERT and UPDATE on existing tables can run it; creating them needs more", async () => {
    const schema = freshSchema();
    await (await PgApprovalStore.open(pg.url(), { schema })).close();
    await admin.unsafe(`GRANT USAGE ON SCHEMA ${schema} TO app_scram; GRANT SELECT, INSERT, UPDATE ON ${schema}.approvals, ${schema}.grants TO app_scram`);
    const s = await PgApprovalStore.open(pg.url("app_scram"), { schema });
    const r = request({ connection: { name: "least-privilege", protocol: "postgres", target: "x:5432/l" } });
    await s.create(r);
    await s.vote(r.id, vote(bob, "approve", { grant_minutes: 5 }));
    expect(s.activeGrants(alice.subject, alice.issuer, "least-privilege", Date.now())).toHaveLength(1);
    await s.close();

    const err = await PgApprovalStore.open(pg.url("app_scram"), { schema: freshSchema() }).catch((e) => e);
    expect(err).toBeInstanceOf(AgateError);
    expect(err.code).toBe("APPROVALS_UNAVAILABLE");
    expect(err.details.code).toBe("42501");
    expect(err.message).toContain("Create the schema and tables once");
    expect(err.message).toContain("USAGE on the schema");
  });

  test("a bad schema name is a configuration error", async () => {
    expect(await codeOf(PgApprovalStore.open(pg.url(), { schema: "agate; DROP TABLE x" }))).toBe("CONFIG_INVALID");
    expect(await codeOf(PgApprovalStore.open(pg.url(), { schema: "Agate" }))).toBe("CONFIG_INVALID");
  });

  test("no server at the address: APPROVALS_UNAVAILABLE naming where, never the password", async () => {
    const port = await freePort();
    const err = await PgApprovalStore.open(`postgres://postgres:${pg.password}@127.0.0.1:${port}/app`).catch((e) => e);
    expect(err).toBeInstanceOf(AgateError);
    expect(err.code).toBe("APPROVALS_UNAVAILABLE");
    expect(err.message).toContain(`Cannot reach the approvals database postgres://postgres@127.0.0.1:${port}/app`);
    expect(err.message).not.toContain(pg.password);
    expect(JSON.stringify(err.details)).not.toContain(pg.password);
  });

  test("a wrong password or a missing database: APPROVALS_UNAVAILABLE", async () => {
    const wrong = await PgApprovalStore.open(`postgres://postgres:not-the-password@127.0.0.1:${pg.port}/app`).catch((e) => e);
    expect(wrong.code).toBe("APPROVALS_UNAVAILABLE");
    expect(wrong.details.code).toBe("28P01");
    expect(wrong.message).not.toContain("not-the-password");
    const nodb = await PgApprovalStore.open(pg.url("postgres", "no_such_db")).catch((e) => e);
    expect(nodb.code).toBe("APPROVALS_UNAVAILABLE");
    expect(nodb.details.code).toBe("3D000");
    expect(await codeOf(PgApprovalStore.open("not a url"))).toBe("APPROVALS_UNAVAILABLE");
  });

  test("when the database goes away: calls fail with APPROVALS_UNAVAILABLE, grants in memory stay, close does not hang", async () => {
    const own = await startPostgres();
    let stopped = false;
    try {
      const s = await PgApprovalStore.open(own.url());
      const granted = request({ connection: { name: "outage-db", protocol: "postgres", target: "x:5432/o" } });
      const held = request();
      await s.create(granted);
      await s.create(held);
      await s.vote(granted.id, vote(bob, "approve", { grant_minutes: 10 }));
      const waiting = codeOf(s.waitDecided(held.id, new AbortController().signal));
      await own.stop();
      stopped = true;
      const get = await s.get(held.id).catch((e) => e);
      expect(get).toBeInstanceOf(AgateError);
      expect(get.code).toBe("APPROVALS_UNAVAILABLE");
      expect(get.message).toContain("Cannot reach the approvals database");
      expect(await codeOf(s.vote(held.id, vote(carol)))).toBe("APPROVALS_UNAVAILABLE");
      expect(await codeOf(s.create(request()))).toBe("APPROVALS_UNAVAILABLE");
      expect(await codeOf(s.waitDecided(held.id, new AbortController().signal))).toBe("APPROVALS_UNAVAILABLE");
      expect(s.activeGrants(alice.subject, alice.issuer, "outage-db", Date.now())).toHaveLength(1);
      const t0 = performance.now();
      await s.close();
      console.log(`close with the database gone: ${(performance.now() - t0).toFixed(0)} ms`);
      // The command still held is refused, not left hanging.
      expect(await waiting).toBe("APPROVALS_UNAVAILABLE");
    } finally {
      if (!stopped) await own.stop();
    }
  });
});
