/**
 * Just-in-time approvals end to end: real PostgreSQL, a real OpenID Provider
 * (oidc-provider, test/helpers/oidc.ts) whose tokens approvers use, psql and
 * porsager as clients, the admin API and the CLI as the approver's side.
 *
 * The main gateway runs in this process with three connections to the same
 * database, told apart by the policy data (the embedded default policy reads
 * data.agate.config.approvals and .connections[NAME].approvals):
 *
 *   app-db   approvers [dba], 60 s, one approver
 *   fast-db  timeout_s 1
 *   two-db   min_approvers 2
 *
 * Other gateways: one with a custom policy bundle that inspects
 * input.approval, and gateway PROCESSES (agate serve) sharing one PostgreSQL
 * approvals store, or restarting on their SQLite store after kill -9.
 *
 * Everything is asynchronous (Bun.spawn, never spawnSync: the in-process
 * gateway shares the event loop); waits are bounded polls, and nothing
 * asserts on wall-clock durations.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { cpSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import type { Subprocess } from "bun";
import postgres from "postgres";
import { readRecords } from "../src/audit/index.ts";
import { hashApiKey } from "../src/identity/apikey.ts";
import { API_KEY, USER, sh, spawnGateway, startTestGateway, type GatewayProcess, type TestGateway, writeServeConfig } from "./helpers/gateway.ts";
import { startIssuer, type TestIssuer } from "./helpers/oidc.ts";
import { startPostgres, type TestPostgres } from "./helpers/postgres.ts";

const ROOT = resolve(import.meta.dir, "..");
const MAIN = join(ROOT, "src/main.ts");
const BUN = process.execPath;

type Rec = Record<string, any>;

let db: TestPostgres;
let iss: TestIssuer;
let tmp: string;
/** The in-process gateway with app-db, fast-db and two-db. */
let main: TestGateway;
/** Loopback receiver for the main gateway's webhooks. */
let hooks: ReturnType<typeof Bun.serve>;
const hookBodies: { path: string; body: Rec }[] = [];
/** The policy bundle with the "approval must cite a ticket" rule. */
let ticketBundle: string;
/** Tokens from the provider. */
let bob: string; // dba
let carol: string; // dba
let alice: string; // dba, and a requester
let dan: string; // dev: not an approver
let gina: string; // eng: requester of the grant test

const procs: Subprocess[] = [];

/** The test rule: a released command is refused unless an approver's reason cites a ticket. */
const TICKET_RULE = `package agate

violations contains violation(
	"agate.test.deny_approval_without_ticket", "deny_approval_without_ticket", false,
	"an approval must cite a ticket in its reason",
) if {
	input.approval
	not approval_cites_ticket
}

approval_cites_ticket if {
	some g in input.approval.granted_by
	contains(g.reason, "ticket")
}
`;

const identityConfig = () => ({
  api_keys: [{ id: USER, groups: ["ci"], kind: "service", sha256: hashApiKey(API_KEY) }],
  oidc: [{ issuer: iss.issuer, audience: "agate" }],
});

const connection = (name: string) => ({
  name,
  listen: "127.0.0.1:0",
  allow_plaintext_auth: true,
  target: { host: db.host, port: db.port, database: "app", user: "app_scram", password: db.password },
});

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), "agate-approvals-e2e-"));
  const policies = join(tmp, "policies");
  const out = join(tmp, "wasm");
  cpSync(join(ROOT, "policies"), policies, { recursive: true });
  writeFileSync(join(policies, "agate", "ticket.rego"), TICKET_RULE);
  const [pg, issuer, built] = await Promise.all([startPostgres(), startIssuer({ audience: "agate" }), sh([BUN, MAIN, "policy", "build", "--policies", policies, "--out", out])]);
  db = pg;
  iss = issuer;
  if (built.code !== 0) throw new Error(`policy build failed: ${built.stderr}`);
  ticketBundle = join(out, "policy.wasm");
  hooks = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch: async (req) => {
      hookBodies.push({ path: new URL(req.url).pathname, body: (await req.json()) as Rec });
      return new Response("ok");
    },
  });
  [bob, carol, alice, dan, gina] = await Promise.all([
    iss.sign({ sub: "bob", groups: ["dba"] }),
    iss.sign({ sub: "carol", groups: ["dba", "oncall"] }),
    iss.sign({ sub: "alice", groups: ["dba", "eng"] }),
    iss.sign({ sub: "dan", groups: ["dev"] }),
    iss.sign({ sub: "gina", groups: ["eng"] }),
  ]);
  main = await startTestGateway(db, {
    config: {
      identity: identityConfig(),
      admin: { listen: "127.0.0.1:0", groups: ["auditor"] },
      approvals: {
        timeout_s: 60,
        webhooks: [
          { url: `http://127.0.0.1:${hooks.port}/slack`, format: "slack" },
          { url: `http://127.0.0.1:${hooks.port}/json`, format: "json" },
        ],
      },
      policy: {
        data: {
          agate: {
            config: {
              // max_rows 2: every write to the tests' three-row tables not aimed at one row is held.
              approvals: { approvers: ["dba"], timeout_s: 60, max_rows: 2 },
              connections: { "fast-db": { approvals: { timeout_s: 1 } }, "two-db": { approvals: { min_approvers: 2 } } },
            },
          },
        },
      },
      connections: [connection("app-db"), connection("fast-db"), connection("two-db")],
    },
  });
}, 120_000);

afterAll(async () => {
  for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
  await Promise.all(procs.map((p) => p.exited));
  await main?.close();
  hooks?.stop(true);
  await iss?.close();
  await db?.stop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

// ── helpers ─────────────────────────────────────────────────────────────

const portOf = (gw: TestGateway, name: string) => gw.gateway.listeners.find((l) => l.name === name)!.port;
const adminOf = (gw: TestGateway) => `http://127.0.0.1:${gw.gateway.admin!.port}`;

/**
 * A fresh table of three rows (a, b, c), owned by the role agate connects as.
 * Never analysed, so the planner assumes ten pages of rows (1270 for this
 * shape): over the default approvals.max_rows of the other gateways too.
 */
async function table(name: string): Promise<void> {
  await db.psql(`DROP TABLE IF EXISTS ${name}; CREATE TABLE ${name} (id int PRIMARY KEY, v text NOT NULL); INSERT INTO ${name} VALUES (1, 'a'), (2, 'b'), (3, 'c'); ALTER TABLE ${name} OWNER TO app_scram;`);
}

/** The table's values in id order, read directly from PostgreSQL. */
async function values(name: string): Promise<string> {
  return (await db.psql(`SELECT coalesce(string_agg(v, ',' ORDER BY id), '') FROM ${name}`)).trim();
}

interface RunningPsql {
  proc: Subprocess<"ignore", "pipe", "pipe">;
  /** The request id from the NOTICE, as soon as psql prints it; null if psql ended without one. */
  held: Promise<string | null>;
  done: Promise<{ code: number; stdout: string; stderr: string }>;
  stderr(): string;
}

/** psql -c SQL through agate, spawned; stderr is read while it runs (the NOTICE comes before the result). */
function startPsql(port: number, user: string, password: string, sql: string): RunningPsql {
  const proc = Bun.spawn(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", "-h", "127.0.0.1", "-p", String(port), "-U", user, "-d", "app", "-c", sql], {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, PGPASSWORD: password, PGSSLMODE: "disable", PGCONNECT_TIMEOUT: "10" },
  });
  procs.push(proc);
  let err = "";
  let found: (id: string | null) => void = () => {};
  const held = new Promise<string | null>((r) => (found = r));
  const errDone = (async () => {
    const d = new TextDecoder();
    for await (const c of proc.stderr) {
      err += d.decode(c, { stream: true });
      const m = /waits for approval .*request (apr_[A-Za-z0-9_-]{20})/.exec(err);
      if (m) found(m[1]!);
    }
    found(null);
  })();
  const done = (async () => {
    const [stdout, code] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
    await errDone;
    return { code, stdout, stderr: err };
  })();
  return { proc, held, done, stderr: () => err };
}

/** The id of the request psql's statement is held by; fails the test (with psql's output) if it was not held. */
async function heldId(p: RunningPsql): Promise<string> {
  const id = await p.held;
  if (!id) {
    const d = await p.done;
    throw new Error(`the statement was not held (psql exit ${d.code}):\nstdout: ${d.stdout}\nstderr: ${d.stderr}`);
  }
  return id;
}

/** Call an admin API with a bearer credential. */
async function api(base: string, method: string, path: string, token?: string, body?: object): Promise<{ status: number; json: Rec }> {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body ? { "content-type": "application/json" } : {}) },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
  return { status: res.status, json: (await res.json()) as Rec };
}

const approve = (base: string, id: string, token: string, reason: string, extra: object = {}) => api(base, "POST", `/v1/approvals/${id}/approve`, token, { reason, ...extra });
const deny = (base: string, id: string, token: string, reason: string) => api(base, "POST", `/v1/approvals/${id}/deny`, token, { reason });

async function records(auditDir: string): Promise<Rec[]> {
  const out: Rec[] = [];
  for await (const r of readRecords(auditDir)) out.push(r);
  return out;
}

/** Poll the audit log until `pred` holds for its records (later records are group-committed, not awaited). */
async function waitRecords(auditDir: string, pred: (rs: Rec[]) => boolean, what: string): Promise<Rec[]> {
  for (let i = 0; i < 200; i++) {
    const rs = await records(auditDir).catch(() => [] as Rec[]);
    if (pred(rs)) return rs;
    await Bun.sleep(25);
  }
  throw new Error(`the audit log never showed ${what}`);
}

/** Poll `cond` up to `tries` times, `ms` apart; whether it came to hold. */
async function until(cond: () => boolean | Promise<boolean>, tries = 200, ms = 25): Promise<boolean> {
  for (let i = 0; i < tries; i++) {
    if (await cond()) return true;
    await Bun.sleep(ms);
  }
  return cond();
}

// ── 1-2. approve, deny ──────────────────────────────────────────────────

describe("held for approval (psql through the main gateway)", () => {
  test("UPDATE without WHERE waits (NOTICE, not forwarded) until an approver with an OIDC token approves; then it runs, and the audit log has it all", async () => {
    await table("t_approve");
    const p = startPsql(portOf(main, "app-db"), USER, API_KEY, "UPDATE t_approve SET v = 'x'");
    const id = await heldId(p);
    // The NOTICE says who approves and links to the admin API.
    expect(p.stderr()).toContain("NOTICE:  01000: agate: this statement waits for approval by dba: request " + id);
    expect(p.stderr()).toContain(`Approve or deny at ${adminOf(main)}/v1/approvals/${id}`);
    // Held, not forwarded: the table is as it was, and psql is still waiting.
    expect(await values("t_approve")).toBe("a,b,c");
    const pending = await api(adminOf(main), "GET", "/v1/approvals?status=pending", bob);
    expect(pending.status).toBe(200);
    const req = (pending.json.requests as Rec[]).find((r) => r.id === id);
    expect(req).toMatchObject({
      status: "pending",
      requester: { subject: USER, issuer: "agate:api-key" },
      connection: { name: "app-db", protocol: "postgres" },
      command: { text: "UPDATE t_approve SET v = 'x'" },
      approvers: ["dba"],
      min_approvers: 1,
      votes: [],
    });
    expect(req!.reasons.join(" ")).toContain("agate.sql.approve_large_write: UPDATE is estimated to touch");
    expect(req!.estimate).toMatch(/^UPDATE: estimated [\d,]+ rows \(planner\)$/);
    expect(p.proc.exitCode).toBeNull();

    const voted = await approve(adminOf(main), id, bob, "cleanup, ticket OPS-42");
    expect(voted.status).toBe(200);
    expect(voted.json).toMatchObject({ id, status: "approved", votes: [{ by: { subject: "bob", issuer: iss.issuer, groups: ["dba"] }, decision: "approve", reason: "cleanup, ticket OPS-42" }] });

    const out = await p.done;
    expect(out.code).toBe(0);
    expect(out.stdout.trim()).toBe("UPDATE 3");
    expect(await values("t_approve")).toBe("x,x,x");

    const rs = await waitRecords(main.auditDir, (rs) => rs.some((r) => r.type === "outcome" && r.tags?.includes("UPDATE 3")) && rs.some((r) => r.type === "command" && r.approval?.request === id), "the released command and its outcome");
    const requested = rs.find((r) => r.type === "approval_requested" && r.request === id)!;
    expect(requested).toMatchObject({ identity: { subject: USER }, text: "UPDATE t_approve SET v = 'x'", approvers: ["dba"], min_approvers: 1 });
    const vote = rs.find((r) => r.type === "approval_vote" && r.request === id)!;
    expect(vote).toMatchObject({ identity: { subject: "bob", issuer: iss.issuer }, decision: "approve", reason: "cleanup, ticket OPS-42", status: "approved" });
    const decided = rs.find((r) => r.type === "approval_decided" && r.request === id)!;
    expect(decided).toMatchObject({ status: "approved", votes: [{ by: "bob", decision: "approve" }] });
    expect(decided.reason).toContain("approved by bob");
    const command = rs.find((r) => r.type === "command" && r.approval?.request === id)!;
    expect(command).toMatchObject({ session: requested.session, seq: requested.seq, text: "UPDATE t_approve SET v = 'x'", decision: { allow: true } });
    expect(command.approval.granted_by).toEqual([{ subject: "bob", issuer: iss.issuer, at: expect.any(String), reason: "cleanup, ticket OPS-42" }]);
    // Order: requested, vote, decided, then the command (before it was forwarded), then its outcome.
    const at = (r: Rec) => rs.indexOf(r);
    expect(at(requested)).toBeLessThan(at(vote));
    expect(at(vote)).toBeLessThan(at(decided));
    expect(at(decided)).toBeLessThan(at(command));
    // Exactly one command record for the statement: the held one was not also recorded as refused.
    expect(rs.filter((r) => r.type === "command" && r.session === requested.session)).toHaveLength(1);
  });

  test("credentials in a held statement are redacted in the request and the API", async () => {
    await table("t_secret");
    const secret = "postgres://app:Sup3rS3cretPw@db.internal:5432/app";
    const p = startPsql(portOf(main, "app-db"), USER, API_KEY, `UPDATE t_secret SET v = '${secret}'`);
    const id = await heldId(p);
    const shown = await api(adminOf(main), "GET", `/v1/approvals/${id}`, bob);
    expect(shown.json.command.text).toBe("UPDATE t_secret SET v = 'postgres://app:[REDACTED:url_password]@db.internal:5432/app'");
    expect(JSON.stringify(shown.json)).not.toContain("Sup3rS3cretPw");
    await deny(adminOf(main), id, bob, "no secrets in SQL");
    await p.done;
  });

  test("denied with a reason: psql fails with 42501 and the reason; the table is unchanged", async () => {
    await table("t_deny");
    const p = startPsql(portOf(main, "app-db"), USER, API_KEY, "UPDATE t_deny SET v = 'x'");
    const id = await heldId(p);
    // A deny takes no grant.
    expect((await api(adminOf(main), "POST", `/v1/approvals/${id}/deny`, bob, { reason: "no", grant_minutes: 5 })).status).toBe(400);
    // A decision needs a reason.
    expect((await api(adminOf(main), "POST", `/v1/approvals/${id}/deny`, bob, { reason: "  " })).json.error.code).toBe("BAD_REQUEST");
    const voted = await deny(adminOf(main), id, bob, "not during the freeze");
    expect(voted.status).toBe(200);
    expect(voted.json.status).toBe("denied");
    const out = await p.done;
    expect(out.code).not.toBe(0);
    expect(out.stderr).toContain("ERROR:  42501: agate: statement refused by policy: agate.approval.denied");
    expect(out.stderr).toContain(id);
    expect(out.stderr).toContain("denied by bob: not during the freeze");
    expect(out.stdout).toBe("");
    expect(await values("t_deny")).toBe("a,b,c");
    const rs = await waitRecords(main.auditDir, (rs) => rs.some((r) => r.type === "command" && r.text === "UPDATE t_deny SET v = 'x'"), "the refused command");
    expect(rs.find((r) => r.type === "approval_decided" && r.request === id)).toMatchObject({ status: "denied", reason: "denied by bob: not during the freeze" });
    const command = rs.find((r) => r.type === "command" && r.text === "UPDATE t_deny SET v = 'x'")!;
    expect(command.decision.allow).toBe(false);
    expect(command.approval).toBeUndefined();
  });

  test("no decision in time (fast-db: policy data timeout_s 1): psql fails saying it timed out; late votes are refused", async () => {
    await table("t_timeout");
    const p = startPsql(portOf(main, "fast-db"), USER, API_KEY, "DELETE FROM t_timeout");
    const id = await heldId(p);
    const out = await p.done;
    expect(out.code).not.toBe(0);
    expect(out.stderr).toContain("ERROR:  42501: agate: statement refused by policy: agate.approval.expired");
    expect(out.stderr).toContain(id);
    expect(out.stderr).toContain("timed out");
    expect(await values("t_timeout")).toBe("a,b,c");
    const got = await api(adminOf(main), "GET", `/v1/approvals/${id}`, bob);
    expect(got.json.status).toBe("expired");
    // The timeout came from the policy data for this connection.
    expect(Date.parse(got.json.expires_at) - Date.parse(got.json.created_at)).toBe(1000);
    const late = await approve(adminOf(main), id, bob, "too late");
    expect(late.status).toBe(409);
    expect(late.json.error.code).toBe("APPROVAL_NOT_PENDING");
  });
});

// ── 4-5. who may decide ─────────────────────────────────────────────────

describe("who may decide", () => {
  test("the requester cannot decide their own request even as a dba (403 APPROVAL_SELF); a non-member cannot (403 APPROVAL_NOT_APPROVER); a decided request takes no more votes (409)", async () => {
    await table("t_self");
    const p = startPsql(portOf(main, "app-db"), "alice", alice, "UPDATE t_self SET v = 'x'");
    const id = await heldId(p);
    const base = adminOf(main);

    const self = await approve(base, id, alice, "looks fine to me");
    expect(self.status).toBe(403);
    expect(self.json.error.code).toBe("APPROVAL_SELF");
    expect((await deny(base, id, alice, "changed my mind")).json.error.code).toBe("APPROVAL_SELF");
    const outsider = await approve(base, id, dan, "sure");
    expect(outsider.status).toBe(403);
    expect(outsider.json.error.code).toBe("APPROVAL_NOT_APPROVER");
    // An API key identity outside the approver groups is refused the same way.
    expect((await approve(base, id, API_KEY, "sure")).json.error.code).toBe("APPROVAL_NOT_APPROVER");
    // No credential, or a bad one: 401.
    expect((await api(base, "POST", `/v1/approvals/${id}/approve`, undefined, { reason: "x" })).status).toBe(401);
    expect((await api(base, "POST", `/v1/approvals/${id}/approve`, "agk_not_a_key", { reason: "x" })).status).toBe(401);
    // An unknown request: 404.
    expect((await approve(base, "apr_AAAAAAAAAAAAAAAAAAAA", bob, "x")).status).toBe(404);

    // None of that was a vote: still pending, nothing ran.
    const still = await api(base, "GET", `/v1/approvals/${id}`, dan);
    expect(still.json).toMatchObject({ status: "pending", votes: [] });
    expect(await values("t_self")).toBe("a,b,c");
    expect(p.proc.exitCode).toBeNull();

    const ok = await approve(base, id, bob, "ticket OPS-7");
    expect(ok.json.status).toBe("approved");
    const again = await approve(base, id, bob, "ticket OPS-7");
    expect(again.status).toBe(409);
    expect(again.json.error.code).toBe("APPROVAL_NOT_PENDING");
    expect((await deny(base, id, carol, "too late")).status).toBe(409);

    const out = await p.done;
    expect(out.code).toBe(0);
    expect(out.stdout.trim()).toBe("UPDATE 3");
    expect(await values("t_self")).toBe("x,x,x");
  });

  test("two approvers (two-db: min_approvers 2): one approval leaves it waiting, the same approver again is refused (409 APPROVAL_REPEAT), a second approver releases it", async () => {
    await table("t_two");
    const p = startPsql(portOf(main, "two-db"), USER, API_KEY, "UPDATE t_two SET v = 'x'");
    const id = await heldId(p);
    expect(p.stderr()).toContain("waits for approval by dba, 2 of them");
    const base = adminOf(main);

    const first = await approve(base, id, bob, "ticket OPS-9");
    expect(first.status).toBe(200);
    expect(first.json).toMatchObject({ status: "pending", min_approvers: 2, votes: [{ by: { subject: "bob" }, decision: "approve" }] });
    const repeat = await approve(base, id, bob, "really, ticket OPS-9");
    expect(repeat.status).toBe(409);
    expect(repeat.json.error.code).toBe("APPROVAL_REPEAT");
    // Still held: pending in the store, nothing ran, psql waits.
    expect((await api(base, "GET", `/v1/approvals/${id}`, bob)).json).toMatchObject({ status: "pending", votes: [{ by: { subject: "bob" } }] });
    expect(await values("t_two")).toBe("a,b,c");
    expect(p.proc.exitCode).toBeNull();

    const second = await approve(base, id, carol, "agreed, ticket OPS-9");
    expect(second.json.status).toBe("approved");
    const out = await p.done;
    expect(out.code).toBe(0);
    expect(out.stdout.trim()).toBe("UPDATE 3");
    expect(await values("t_two")).toBe("x,x,x");
    const rs = await waitRecords(main.auditDir, (rs) => rs.some((r) => r.type === "command" && r.approval?.request === id), "the released command");
    const command = rs.find((r) => r.type === "command" && r.approval?.request === id)!;
    expect(command.approval.granted_by.map((g: Rec) => g.subject)).toEqual(["bob", "carol"]);
    expect(rs.filter((r) => r.type === "approval_vote" && r.request === id).map((r) => [r.identity.subject, r.status])).toEqual([
      ["bob", "pending"],
      ["carol", "approved"],
    ]);
  });
});

// ── 6. grants ───────────────────────────────────────────────────────────

describe("time-boxed grant", () => {
  test("an approval with grant_minutes lets the same identity's next unbounded DELETE on the connection through without asking; after it ends, asking again", async () => {
    await table("t_grant");
    const base = adminOf(main);
    const port = portOf(main, "app-db");
    const p = startPsql(port, "gina", gina, "DELETE FROM t_grant");
    const id = await heldId(p);
    const voted = await approve(base, id, bob, "bulk cleanup, ticket OPS-11", { grant_minutes: 0.05 });
    expect(voted.status).toBe(200);
    expect(voted.json.status).toBe("approved");
    expect(voted.json.votes[0].grant_minutes).toBe(0.05);
    const grantEnds = Date.parse(voted.json.votes[0].at) + 0.05 * 60_000;
    const first = await p.done;
    expect(first.code).toBe(0);
    expect(first.stdout.trim()).toBe("DELETE 3");

    // Within the grant: no NOTICE, no new request, it just runs.
    await db.psql("INSERT INTO t_grant VALUES (1, 'a'), (2, 'b')");
    const q = startPsql(port, "gina", gina, "DELETE FROM t_grant");
    expect(await q.held).toBeNull();
    const second = await q.done;
    expect(second.code).toBe(0);
    expect(second.stdout.trim()).toBe("DELETE 2");
    expect(second.stderr).not.toContain("NOTICE");
    expect(await values("t_grant")).toBe("");
    const all = (await api(base, "GET", "/v1/approvals", bob)).json.requests as Rec[];
    expect(all.filter((r) => r.requester.subject === "gina").map((r) => r.id)).toEqual([id]);

    // After the grant's end (polled; the gateway's clock is this process's), the next one is held again.
    expect(await until(() => Date.now() > grantEnds + 50, 400, 25)).toBe(true);
    await db.psql("INSERT INTO t_grant VALUES (1, 'a')");
    const r = startPsql(port, "gina", gina, "DELETE FROM t_grant");
    const id2 = await heldId(r);
    expect(id2).not.toBe(id);
    expect(await values("t_grant")).toBe("a");
    expect((await deny(base, id2, bob, "the window is over")).json.status).toBe("denied");
    const third = await r.done;
    expect(third.code).not.toBe(0);
    expect(third.stderr).toContain("42501");
    expect(await values("t_grant")).toBe("a");
  });
});

// ── 7. withdrawing ──────────────────────────────────────────────────────

describe("withdrawing", () => {
  test("a CancelRequest (porsager .cancel()) withdraws the held statement: the client gets an error, the request ends withdrawn, nothing ran", async () => {
    await table("t_cancel");
    const notices: Rec[] = [];
    const sql = postgres(main.url(), { max: 1, idle_timeout: 0, connect_timeout: 10, onnotice: (n) => notices.push(n) });
    try {
      const q = sql`UPDATE t_cancel SET v = 'y'`;
      const settled = q.then(
        () => null,
        (e: Rec) => e,
      );
      expect(await until(() => notices.some((n) => /apr_/.test(n.message)))).toBe(true);
      const id = /request (apr_[A-Za-z0-9_-]{20})/.exec(notices.find((n) => /apr_/.test(n.message))!.message)![1]!;
      expect(await values("t_cancel")).toBe("a,b,c");
      await q.cancel();
      const err = await settled;
      expect(err).not.toBeNull();
      expect(err!.code).toBe("42501");
      expect(err!.message).toContain(`agate.approval.withdrawn: request ${id}`);
      const got = await api(adminOf(main), "GET", `/v1/approvals/${id}`, bob);
      expect(got.json.status).toBe("withdrawn");
      expect(got.json.decided_reason).toContain("cancel");
      expect(await values("t_cancel")).toBe("a,b,c");
      // A withdrawn request cannot be approved after the fact.
      expect((await approve(adminOf(main), id, bob, "ticket OPS-1")).json.error.code).toBe("APPROVAL_NOT_PENDING");
      // The session goes on.
      expect((await sql`SELECT count(*)::int AS n FROM t_cancel`)[0]!.n).toBe(3);
      const rs = await waitRecords(main.auditDir, (rs) => rs.some((r) => r.type === "approval_decided" && r.request === id) && rs.some((r) => r.type === "cancel" && r.withdrew_approval === true), "the cancel and the withdrawal");
      expect(rs.find((r) => r.type === "approval_decided" && r.request === id)).toMatchObject({ status: "withdrawn" });
    } finally {
      await sql.end({ timeout: 0 });
    }
  });

  test("a client that disconnects while held (psql killed, no CancelRequest) withdraws it too: it can no longer be approved", async () => {
    await table("t_gone");
    const p = startPsql(portOf(main, "app-db"), USER, API_KEY, "UPDATE t_gone SET v = 'x'");
    const id = await heldId(p);
    p.proc.kill("SIGKILL");
    await p.done;
    const base = adminOf(main);
    expect(await until(async () => (await api(base, "GET", `/v1/approvals/${id}`, bob)).json.status !== "pending")).toBe(true);
    const got = await api(base, "GET", `/v1/approvals/${id}`, bob);
    expect(got.json.status).toBe("withdrawn");
    expect(got.json.decided_reason).toContain("connection closed");
    expect((await approve(base, id, bob, "ticket OPS-1")).status).toBe(409);
    expect(await values("t_gone")).toBe("a,b,c");
  });
});

// ── 8. the policy has the last word ─────────────────────────────────────

describe("the policy sees input.approval", () => {
  test("a custom rule refuses a released statement whose approval cites no ticket, and lets one that does run", async () => {
    const gw = await startTestGateway(db, {
      config: { identity: identityConfig(), admin: { listen: "127.0.0.1:0", groups: ["auditor"] }, policy: { bundle: ticketBundle } },
    });
    try {
      await table("t_ticket");
      const base = adminOf(gw);
      const p = startPsql(gw.port, USER, API_KEY, "UPDATE t_ticket SET v = 'x'");
      const id = await heldId(p);
      expect((await approve(base, id, bob, "no reason")).json.status).toBe("approved");
      const refused = await p.done;
      expect(refused.code).not.toBe(0);
      expect(refused.stderr).toContain("42501");
      expect(refused.stderr).toContain("agate.test.deny_approval_without_ticket: an approval must cite a ticket in its reason");
      expect(await values("t_ticket")).toBe("a,b,c");

      const q = startPsql(gw.port, USER, API_KEY, "UPDATE t_ticket SET v = 'x'");
      const id2 = await heldId(q);
      expect((await approve(base, id2, bob, "ticket OPS-1")).json.status).toBe("approved");
      const ran = await q.done;
      expect(ran.code).toBe(0);
      expect(ran.stdout.trim()).toBe("UPDATE 3");
      expect(await values("t_ticket")).toBe("x,x,x");

      const rs = await waitRecords(gw.auditDir, (rs) => rs.filter((r) => r.type === "command" && r.approval).length === 2, "both released commands");
      const [first, second] = rs.filter((r) => r.type === "command" && r.approval);
      expect(first).toMatchObject({ approval: { request: id, granted_by: [{ subject: "bob", reason: "no reason" }] }, decision: { allow: false } });
      expect(first!.decision.reasons).toContain("agate.test.deny_approval_without_ticket: an approval must cite a ticket in its reason");
      expect(second).toMatchObject({ approval: { request: id2, granted_by: [{ subject: "bob", reason: "ticket OPS-1" }] }, decision: { allow: true } });
    } finally {
      await gw.close();
    }
  });
});

// ── 9. the CLI ──────────────────────────────────────────────────────────

describe("agate approvals (CLI)", () => {
  test("list shows the pending request; show describes it; approve releases it; the requester's own approve fails", async () => {
    await table("t_cli");
    const server = adminOf(main);
    const p = startPsql(portOf(main, "app-db"), USER, API_KEY, "UPDATE t_cli SET v = 'x'");
    const id = await heldId(p);
    const cli = (...args: string[]) => sh([BUN, MAIN, "approvals", ...args, "--server", server]);

    const list = await cli("list", "--token", bob);
    expect(list.code).toBe(0);
    const line = list.stdout.split("\n").find((l) => l.startsWith(id));
    expect(line).toBeDefined();
    expect(line).toMatch(/pending\s+ci-runner on app-db: UPDATE t_cli SET v = 'x'/);
    expect(line).toMatch(/\[UPDATE: estimated [\d,]+ rows \(planner\)\]$/);
    const pendingJson = await cli("list", "--status", "pending", "--json", "--token", bob);
    expect((JSON.parse(pendingJson.stdout) as Rec[]).map((r) => r.id)).toContain(id);

    const show = await cli("show", id, "--token", bob);
    expect(show.code).toBe(0);
    expect(show.stdout).toContain(`${id}  pending`);
    expect(show.stdout).toContain("approvers  dba (1 needed)");
    expect(show.stdout).toMatch(/estimate   UPDATE: estimated [\d,]+ rows \(planner\)/);

    const self = await cli("approve", id, "--reason", "mine", "--token", API_KEY);
    expect(self.code).toBe(1);
    expect(self.stderr).toContain("[APPROVAL_SELF]");
    const noReason = await cli("approve", id, "--token", bob);
    expect(noReason.code).toBe(2);

    const ok = await cli("approve", id, "--reason", "via the CLI, ticket OPS-5", "--token", bob);
    expect(ok.stderr).toBe("");
    expect(ok.code).toBe(0);
    expect(ok.stdout).toContain(`${id}  approved`);
    expect(ok.stdout).toContain(`vote       bob: approve, "via the CLI, ticket OPS-5"`);
    const out = await p.done;
    expect(out.code).toBe(0);
    expect(out.stdout.trim()).toBe("UPDATE 3");
    expect(await values("t_cli")).toBe("x,x,x");
  });
});

// ── 10. webhooks ────────────────────────────────────────────────────────

describe("webhooks", () => {
  test("a slack webhook gets a text naming the request and the requester; a json webhook gets approval.requested, then approval.decided", async () => {
    await table("t_hook");
    const p = startPsql(portOf(main, "app-db"), USER, API_KEY, "DELETE FROM t_hook");
    const id = await heldId(p);
    const slack = () => hookBodies.filter((h) => h.path === "/slack" && String(h.body.text).includes(id));
    const json = (event: string) => hookBodies.filter((h) => h.path === "/json" && h.body.event === event && h.body.request?.id === id);
    expect(await until(() => slack().length > 0 && json("approval.requested").length > 0)).toBe(true);
    const text = String(slack()[0]!.body.text);
    expect(text).toContain("*ci-runner* asks to run on *app-db*");
    expect(text).toContain("DELETE FROM t_hook");
    expect(text).toMatch(/Estimate: DELETE: estimated [\d,]+ rows \(planner\)/);
    expect(text).toContain(`<${adminOf(main)}/v1/approvals/${id}|Review request ${id}>`);
    const requested = json("approval.requested")[0]!.body;
    expect(requested.request.estimate).toMatch(/^DELETE: estimated [\d,]+ rows \(planner\)$/);
    expect(requested).toMatchObject({ request: { id, status: "pending", requester: { subject: USER }, approvers: ["dba"] }, link: `${adminOf(main)}/v1/approvals/${id}`, approve: `${adminOf(main)}/v1/approvals/${id}/approve` });

    expect((await deny(adminOf(main), id, bob, "use a WHERE")).json.status).toBe("denied");
    expect((await p.done).code).not.toBe(0);
    expect(await until(() => json("approval.decided").length > 0)).toBe(true);
    expect(json("approval.decided")[0]!.body).toMatchObject({ request: { id, status: "denied", decided_reason: "denied by bob: use a WHERE" } });
    // Slack hears of requests only.
    expect(slack()).toHaveLength(1);
    expect(await values("t_hook")).toBe("a,b,c");
  });
});

// ── 11. gateway processes ───────────────────────────────────────────────


/** A config directory for `agate serve` with these approvals settings (lines under approvals:), the admin API and the test issuer. */
function writeApprovalsConfig(dir: string, approvals: string): void {
  writeServeConfig(dir, db, {
    by: "approvals.test",
    apiKey: { id: USER, key: API_KEY },
    logLevel: "info",
    audit: "  checkpoint: { every_records: 10000, every_seconds: 0.25 }",
    sections: `approvals:\n${approvals}\nadmin:\n  listen: 127.0.0.1:0\n  groups: [auditor]`,
    identity: `  oidc:\n    - { issuer: "${iss.issuer}", audience: agate }`,
  });
}

/** `agate serve` on `dir`'s config in its own process, once both the listener and the admin API are announced. */
function serve(dir: string, env: Record<string, string> = {}): Promise<GatewayProcess> {
  return spawnGateway(dir, { env: { AGATE_TEST_PG_PASSWORD: db.password, ...env }, admin: true, spawned: (p) => procs.push(p) });
}

describe("gateway processes", () => {
  test("two gateways sharing a PostgreSQL store: held on A, approved through B's admin API, released on A", async () => {
    await db.psql("CREATE DATABASE approvals OWNER app_scram", "postgres");
    const storeUrl = `postgres://app_scram:${encodeURIComponent(db.password)}@${db.host}:${db.port}/approvals`;
    const dirA = mkdtempSync(join(tmp, "gw-a-"));
    const dirB = mkdtempSync(join(tmp, "gw-b-"));
    writeApprovalsConfig(dirA, "  store_env: AGATE_TEST_APPROVALS_URL\n  gateway: gw-a\n  timeout_s: 60");
    writeApprovalsConfig(dirB, "  store_env: AGATE_TEST_APPROVALS_URL\n  gateway: gw-b\n  timeout_s: 60");
    const env = { AGATE_TEST_APPROVALS_URL: storeUrl };
    const [a, b] = await Promise.all([serve(dirA, env), serve(dirB, env)]);
    await table("t_shared");

    const p = startPsql(a.port, USER, API_KEY, "UPDATE t_shared SET v = 'x'");
    const id = await heldId(p);
    // A's NOTICE links to A's admin API; B sees the request through the shared store.
    expect(p.stderr()).toContain(`Approve or deny at ${a.admin}/v1/approvals/${id}`);
    const onB = (await api(b.admin, "GET", "/v1/approvals?status=pending", bob)).json.requests as Rec[];
    expect(onB.find((r) => r.id === id)).toMatchObject({ gateway: "gw-a", status: "pending", requester: { subject: USER } });
    expect(await values("t_shared")).toBe("a,b,c");

    const voted = await approve(b.admin, id, bob, "from the other gateway, ticket OPS-3");
    expect(voted.status).toBe(200);
    expect(voted.json.status).toBe("approved");
    const out = await p.done;
    expect(out.code).toBe(0);
    expect(out.stdout.trim()).toBe("UPDATE 3");
    expect(await values("t_shared")).toBe("x,x,x");
    expect((await api(a.admin, "GET", `/v1/approvals/${id}`, bob)).json.status).toBe("approved");

    // B recorded the vote; A recorded the request, the decision and the released command.
    const auditA = join(dirA, "audit");
    const auditB = join(dirB, "audit");
    const rsB = await waitRecords(auditB, (rs) => rs.some((r) => r.type === "approval_vote" && r.request === id), "B's vote record");
    expect(rsB.find((r) => r.type === "approval_vote" && r.request === id)).toMatchObject({ identity: { subject: "bob" }, decision: "approve", status: "approved" });
    expect(rsB.some((r) => r.type === "approval_requested" || r.type === "approval_decided")).toBe(false);
    const rsA = await waitRecords(auditA, (rs) => rs.some((r) => r.type === "command" && r.approval?.request === id), "A's released command");
    expect(rsA.find((r) => r.type === "approval_requested" && r.request === id)).toBeDefined();
    expect(rsA.find((r) => r.type === "approval_decided" && r.request === id)).toMatchObject({ status: "approved" });
    expect(rsA.some((r) => r.type === "approval_vote")).toBe(false);
    expect(rsA.find((r) => r.type === "command" && r.approval?.request === id)!.approval.granted_by[0]).toMatchObject({ subject: "bob", issuer: iss.issuer });

    a.proc.kill("SIGTERM");
    b.proc.kill("SIGTERM");
    expect(await a.exited()).toBe(0);
    expect(await b.exited()).toBe(0);
    const errors = (s: string) => s.split("\n").filter((l) => l.startsWith("{") && JSON.parse(l).level === "error");
    expect(errors(a.stderr())).toEqual([]);
    expect(errors(b.stderr())).toEqual([]);
  });

  test("SQLite store: a gateway killed (-9) while holding a statement ends that request as expired when it restarts", async () => {
    const dir = mkdtempSync(join(tmp, "gw-restart-"));
    writeApprovalsConfig(dir, "  store: ./approvals.db\n  timeout_s: 60");
    await table("t_restart");
    const first = await serve(dir);
    const p = startPsql(first.port, USER, API_KEY, "UPDATE t_restart SET v = 'x'");
    const id = await heldId(p);
    first.proc.kill("SIGKILL");
    await first.exited();
    expect((await p.done).code).not.toBe(0);

    const second = await serve(dir);
    const got = await api(second.admin, "GET", `/v1/approvals/${id}`, bob);
    expect(got.json.status).toBe("expired");
    expect(got.json.decided_reason).toContain("restarted");
    expect((await approve(second.admin, id, bob, "ticket OPS-1")).status).toBe(409);
    expect((await api(second.admin, "GET", "/v1/approvals?status=pending", bob)).json.requests).toEqual([]);
    const rs = await waitRecords(join(dir, "audit"), (rs) => rs.some((r) => r.type === "approval_decided" && r.request === id), "the expiry after the restart");
    expect(rs.find((r) => r.type === "approval_decided" && r.request === id)).toMatchObject({ status: "expired" });
    expect(rs.find((r) => r.type === "approval_decided" && r.request === id)!.reason).toContain("restarted");
    expect(await values("t_restart")).toBe("a,b,c");
    second.proc.kill("SIGTERM");
    expect(await second.exited()).toBe(0);
  });

  test("in process: closing a gateway ends what it holds as expired (the gateway is shutting down), recorded before the log closes", async () => {
    const gw = await startTestGateway(db, { config: { identity: identityConfig() } });
    await table("t_shutdown");
    const p = startPsql(gw.port, USER, API_KEY, "UPDATE t_shutdown SET v = 'x'");
    const id = await heldId(p);
    await gw.gateway.close();
    expect((await p.done).code).not.toBe(0);
    const rs = await records(gw.auditDir);
    rmSync(dirname(gw.auditDir), { recursive: true, force: true });
    expect(rs.find((r) => r.type === "approval_decided" && r.request === id)).toMatchObject({ status: "expired", reason: "the gateway is shutting down" });
    expect(await values("t_shutdown")).toBe("a,b,c");
  });
});
