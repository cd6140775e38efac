/**
 * Brute-force protection (core/lockout.ts) through the PostgreSQL adapter,
 * against a real PostgreSQL: failed logins from one address delay its
 * failure answers, then block it for a while; failures for one user name
 * from any address lock it, in the accounts store, until
 * `agate accounts unlock`. Each block, lock and unlock is recorded; blocks
 * and locks are in /metrics.
 * Thresholds are small; the tests assert outcomes and order, not durations.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { generateKey } from "../src/audit/note.ts";
import { parseConfig } from "../src/config/index.ts";
import { Lockout } from "../src/core/lockout.ts";
import { AccountStore } from "../src/identity/accounts.ts";
import { hashApiKey } from "../src/identity/apikey.ts";
import { API_KEY, psql, recordsOf, sh, startTestGateway, type TestGateway, USER } from "./helpers/gateway.ts";
import { startPostgres, type TestPostgres } from "./helpers/postgres.ts";
import { loginError } from "./helpers/wire.ts";

let db: TestPostgres;
const gateways: TestGateway[] = [];
const dirs: string[] = [];

beforeAll(async () => {
  db = await startPostgres();
});

afterAll(async () => {
  for (const g of gateways) await g.close();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  await db?.stop();
});

const WRONG = "agk_not_a_key_of_this_gateway";
const OTHER = "second-runner";
const OTHER_KEY = "agk_second_key_for_integration_tests_only";
const MAIN = join(import.meta.dir, "../src/main.ts");

async function gateway(lockout: Record<string, number>, accounts?: string): Promise<TestGateway> {
  const g = await startTestGateway(db, {
    config: {
      admin: { listen: "127.0.0.1:0" },
      lockout,
      identity: {
        api_keys: [
          { id: USER, groups: ["ci"], kind: "service", sha256: hashApiKey(API_KEY) },
          { id: OTHER, groups: ["ci"], kind: "service", sha256: hashApiKey(OTHER_KEY) },
        ],
        ...(accounts ? { accounts } : {}),
      },
    },
  });
  gateways.push(g);
  return g;
}

async function metric(g: TestGateway, name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${g.gateway.admin!.port}/metrics`)).text();
  const m = new RegExp(`^${name} (\\S+)$`, "m").exec(text);
  if (!m) throw new Error(`no ${name} in /metrics:\n${text}`);
  return Number(m[1]);
}

const attempt = (g: TestGateway, localAddress: string, password: string, user = USER) => loginError(g.port, { user, password, localAddress });

describe("configuration", () => {
  test("lock_user_after needs an accounts store to keep its locks in", () => {
    const dir = mkdtempSync(join(tmpdir(), "agate-lockout-config-"));
    dirs.push(dir);
    writeFileSync(join(dir, "audit.key"), generateKey("lockout.test/audit").signerKey, { mode: 0o600 });
    const parse = (extra: Record<string, unknown>) => parseConfig({ audit: { dir: "./audit", signing_key: "./audit.key" }, ...extra }, dir, {});
    expect(parse({}).lockout).toEqual({ window_s: 300, delay_after: 3, delay_ms: 250, max_delay_ms: 4000, block_after: 20, block_s: 600, lock_user_after: 0 });
    expect(() => parse({ lockout: { lock_user_after: 5 } })).toThrow(/lockout.lock_user_after needs identity.accounts/);
    expect(parse({ lockout: { lock_user_after: 5 }, identity: { accounts: "./accounts.db" } }).lockout.lock_user_after).toBe(5);
    expect(() => parse({ lockout: { block_afer: 5 } })).toThrow(/lockout has an unknown key "block_afer"/);
  });

  test("the delay doubles past delay_after up to max_delay_ms; the window forgets old failures", () => {
    let now = 0;
    const l = new Lockout({ window_s: 10, delay_after: 2, delay_ms: 100, max_delay_ms: 350, block_after: 0, block_s: 1, lock_user_after: 0 }, undefined, () => now);
    expect([1, 2, 3, 4, 5].map(() => l.failed("10.0.0.1", "u").delayMs)).toEqual([0, 0, 100, 200, 350]);
    now += 10_001;
    expect(l.failed("10.0.0.1", "u").delayMs).toBe(0);
    expect(l.check("10.0.0.1", "u")).toBeNull();
  });
});

describe("per client address", () => {
  test("past delay_after its failure answers are delayed (a good login from it answers first), at block_after it is blocked, recorded and in /metrics, then the block ends", async () => {
    const g = await gateway({ delay_after: 2, delay_ms: 1000, max_delay_ms: 1000, block_after: 4, block_s: 3 });
    const bad = "127.0.0.3";
    for (let i = 0; i < 2; i++) expect((await attempt(g, bad, WRONG))?.code).toBe("28P01");
    expect(await metric(g, "agate_login_delayed_total")).toBe(0);
    // The third failure is delayed; a correct login from the same address, started after it, is not.
    const order: string[] = [];
    const delayed = attempt(g, bad, WRONG).then((e) => (order.push("failure"), e));
    await Bun.sleep(50);
    const good = attempt(g, bad, API_KEY).then((e) => (order.push("success"), e));
    expect(await good).toBeNull();
    expect((await delayed)?.code).toBe("28P01");
    expect(order).toEqual(["success", "failure"]);
    expect(await metric(g, "agate_login_delayed_total")).toBe(1);
    // The fourth blocks the address: even the right key is refused now, before it is asked for, with 28000.
    expect((await attempt(g, bad, WRONG))?.code).toBe("28P01");
    const blocked = await attempt(g, bad, API_KEY);
    expect(blocked?.code).toBe("28000");
    expect(blocked?.message).toMatch(/^agate: too many failed logins from 127\.0\.0\.3: logins from it are refused until \d{4}-\d\d-\d\dT/);
    // Another address is not affected.
    expect(await attempt(g, "127.0.0.4", API_KEY)).toBeNull();
    expect(await metric(g, "agate_lockout_address_blocks_total")).toBe(1);
    expect(await metric(g, "agate_lockout_blocked_addresses")).toBe(1);
    expect(await metric(g, "agate_login_failures_total")).toBe(4);
    const events = await recordsOf(g, "lockout", (rs) => rs.length >= 1);
    expect(events.map((e) => [e.action, e.address, e.failures])).toEqual([["address_blocked", bad, 4]]);
    const refused = await recordsOf(g, "session_refused", (rs) => rs.some((r) => r.code === "LOCKOUT_ADDRESS"));
    expect(refused.map((r) => r.code)).toEqual(["AUTH_FAILED", "AUTH_FAILED", "AUTH_FAILED", "AUTH_FAILED", "LOCKOUT_ADDRESS"]);
    // block_s later the address may try again.
    let e = await attempt(g, bad, API_KEY);
    for (let i = 0; i < 500 && e; i++) {
      await Bun.sleep(20);
      e = await attempt(g, bad, API_KEY);
    }
    expect(e).toBeNull();
    expect(await metric(g, "agate_lockout_blocked_addresses")).toBe(0);
  });
});

describe("per user", () => {
  test("failures from several addresses lock the user; right and wrong passwords then get the same 28000; the lock survives a restart until `agate accounts unlock`", async () => {
    const dir = mkdtempSync(join(tmpdir(), "agate-lockout-"));
    dirs.push(dir);
    const accounts = join(dir, "accounts.db");
    const config = { delay_after: 0, block_after: 0, lock_user_after: 3 };
    const g = await gateway(config, accounts);
    for (const from of ["127.0.0.5", "127.0.0.6"]) expect((await attempt(g, from, WRONG))?.code).toBe("28P01");
    // A success resets the user's count, so an attacker cannot lock a user who keeps logging in... until 3 in a row fail.
    expect(await attempt(g, "127.0.0.1", API_KEY)).toBeNull();
    for (const from of ["127.0.0.5", "127.0.0.6", "127.0.0.7"]) expect((await attempt(g, from, WRONG))?.code).toBe("28P01");
    const right = await attempt(g, "127.0.0.8", API_KEY);
    const wrong = await attempt(g, "127.0.0.8", WRONG);
    expect(right).toEqual({ code: "28000", message: `agate: logins as "${USER}" are locked after repeated failed logins (since ${right!.message.match(/since ([^)]+)\)/)![1]}); an operator can unlock them with \`agate accounts unlock ${USER}\`` });
    expect(wrong).toEqual(right);
    // psql, a real client, reads the same refusal; another user is not locked.
    const r = await psql(g.url(), "SELECT 1");
    expect(r.stderr).toContain(`FATAL:  agate: logins as "${USER}" are locked`);
    expect(await attempt(g, "127.0.0.8", OTHER_KEY, OTHER)).toBeNull();
    expect(await metric(g, "agate_lockout_locked_users")).toBe(1);
    expect(await metric(g, "agate_lockout_user_locks_total")).toBe(1);
    const events = await recordsOf(g, "lockout", (rs) => rs.length >= 1);
    expect(events.map((e) => [e.action, e.user, e.failures])).toEqual([["user_locked", USER, 3]]);

    // A restart keeps the lock.
    await g.close();
    gateways.splice(gateways.indexOf(g), 1);
    const again = await gateway(config, accounts);
    expect((await attempt(again, "127.0.0.9", API_KEY))?.code).toBe("28000");
    const listed = await sh([process.execPath, MAIN, "accounts", "locked", "--db", accounts, "--json"]);
    expect(listed.code).toBe(0);
    expect((JSON.parse(listed.stdout) as { user: string; failures: number }[]).map((l) => [l.user, l.failures])).toEqual([[USER, 3]]);
    // Unlocked by the CLI, another process: the running gateway lets the user in again.
    const unlock = await sh([process.execPath, MAIN, "accounts", "unlock", USER, "--db", accounts]);
    expect(unlock.code).toBe(0);
    expect(unlock.stdout).toContain(`unlocked ${USER}`);
    let e = await attempt(again, "127.0.0.9", API_KEY);
    for (let i = 0; i < 100 && e; i++) {
      await Bun.sleep(20);
      e = await attempt(again, "127.0.0.9", API_KEY);
    }
    expect(e).toBeNull();
    expect(await metric(again, "agate_lockout_locked_users")).toBe(0);
    // The unlock is recorded by the gateway (the CLI does not write the log), with who made it and the lock it lifted.
    const [unlocked] = await recordsOf(again, "lockout", (rs) => rs.length >= 1);
    expect(unlocked).toMatchObject({ action: "user_unlocked", user: USER, failures: 3, locked_at: right!.message.match(/since ([^)]+)\)/)![1] });
    expect(String(unlocked!.by)).toEndWith(`@${hostname()}`);
    expect(Date.parse(String(unlocked!.at))).toBeGreaterThan(Date.parse(String(unlocked!.locked_at)) - 1);
    const twice = await sh([process.execPath, MAIN, "accounts", "unlock", USER, "--db", accounts]);
    expect(twice.code).toBe(1);
    expect(twice.stderr).toContain(`"${USER}" is not locked`);
  });

  test("an unlock made while no gateway runs is recorded by the next one to start, once", async () => {
    const dir = mkdtempSync(join(tmpdir(), "agate-lockout-"));
    dirs.push(dir);
    const accounts = join(dir, "accounts.db");
    const store = new AccountStore(accounts);
    store.lockUser("someone", 7);
    store.close();
    const unlock = await sh([process.execPath, MAIN, "accounts", "unlock", "someone", "--db", accounts]);
    expect(unlock.code).toBe(0);
    const g = await gateway({ delay_after: 0, block_after: 0, lock_user_after: 3 }, accounts);
    const records = await recordsOf(g, "lockout", (rs) => rs.length >= 1);
    expect(records.map((r) => [r.action, r.user, r.failures])).toEqual([["user_unlocked", "someone", 7]]);
    // Deleted from the store once durable: a later gateway does not record it again.
    const reader = new AccountStore(accounts);
    try {
      let pending = reader.pendingEvents();
      for (let i = 0; i < 200 && pending.length > 0; i++) {
        await Bun.sleep(25);
        pending = reader.pendingEvents();
      }
      expect(pending).toEqual([]);
    } finally {
      reader.close();
    }
  });

  test("`agate accounts --help` describes locked and unlock", async () => {
    const r = await sh([process.execPath, MAIN, "accounts", "--help"]);
    expect(r.stdout).toContain("agate accounts unlock USER (--config FILE | --db FILE)");
    expect(r.stdout).toContain("agate accounts locked (--config FILE | --db FILE) [--json]");
    const top = await sh([process.execPath, MAIN, "--help"]);
    expect(top.stdout).toContain("accounts create|list|revoke|locked|unlock");
  });
});
