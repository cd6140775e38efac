/**
 * Identity end to end: real PostgreSQL, agate in this process, and a real
 * OpenID Provider (oidc-provider, test/helpers/oidc.ts). Tokens from the
 * provider open sessions; the identity reaches the audit log and the policy;
 * `agate login` runs the device grant; forged, stale and misdirected tokens
 * are refused at login; a revoked key or an expired token stops an open
 * session at its next statement; credentials never travel without TLS unless
 * configured on loopback; the admin API takes tokens too.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { cpSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { decodeJwt, decodeProtectedHeader } from "jose";
import postgres from "postgres";
import { readRecords } from "../src/audit/index.ts";
import { generateKey } from "../src/audit/note.ts";
import { parseConfig } from "../src/config/index.ts";
import { AgateError } from "../src/core/errors.ts";
import { ALL_DETECTORS, maskText } from "../src/mask/index.ts";
import { message, startupPacket } from "../src/protocols/postgres/wire.ts";
import { sh, startTestGateway, type TestGateway } from "./helpers/gateway.ts";
import { startIssuer, type TestIssuer } from "./helpers/oidc.ts";
import { startPostgres, type TestPostgres } from "./helpers/postgres.ts";

const ROOT = resolve(import.meta.dir, "..");
const MAIN = join(ROOT, "src/main.ts");
const BUN = process.execPath;

type Rec = Record<string, any>;

let db: TestPostgres;
/** The provider the main gateway trusts. */
let iss: TestIssuer;
/** A second provider: trusted only by `fast` (short JWKS cache, no cooldown, no clock skew). */
let iss2: TestIssuer;
/** identity.oidc = iss (defaults), identity.accounts, the dba-writes policy, the admin API. */
let main: TestGateway;
let fast: TestGateway;
let tmp: string;
let accountsDb: string;
let cert: string;
let key: string;

/** The policy rule under test: writes need group dba, and the reason quotes the identity the policy saw. */
const DBA_RULE = `package agate

# Test rule: only members of group "dba" may write. The reason repeats the
# identity from the input, so a test can see exactly what the policy saw.
violations contains violation(
	"agate.test.deny_write_without_dba", "deny_write_without_dba", false,
	concat("", [
		"writes need group dba; ", input.identity.subject,
		" (", input.identity.kind, ", ", input.identity.issuer,
		", credential ", object.get(input.identity, "credential_id", "none"),
		") is in groups [", concat(", ", input.identity.groups), "]",
	]),
) if {
	some st in sql_statement
	st.kind in {"insert", "update", "delete", "merge"}
	not "dba" in input.identity.groups
}
`;

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), "agate-identity-"));
  accountsDb = join(tmp, "accounts.db");
  key = join(tmp, "tls.key");
  cert = join(tmp, "tls.crt");
  const policies = join(tmp, "policies");
  const out = join(tmp, "wasm");
  cpSync(join(ROOT, "policies"), policies, { recursive: true });
  writeFileSync(join(policies, "agate", "dba.rego"), DBA_RULE);
  const [pg, a, b, built, made] = await Promise.all([
    startPostgres(),
    startIssuer({ audience: "agate" }),
    // A second real provider; its own client's tokens have sub "other-idp-client".
    startIssuer({ audience: "agate", clients: [{ clientId: "other-idp-client", clientSecret: "other-secret", groups: ["dba"] }] }),
    sh([BUN, MAIN, "policy", "build", "--policies", policies, "--out", out]),
    sh(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost"]),
  ]);
  db = pg;
  iss = a;
  iss2 = b;
  if (built.code !== 0) throw new Error(`policy build failed: ${built.stderr}`);
  if (made.code !== 0) throw new Error(`openssl failed: ${made.stderr}`);
  await db.psql("CREATE TABLE notes (id int PRIMARY KEY, note text NOT NULL); ALTER TABLE notes OWNER TO app_scram;");
  [main, fast] = await Promise.all([
    startTestGateway(db, {
      config: {
        identity: { accounts: accountsDb, oidc: [{ issuer: iss.issuer, audience: "agate" }] },
        policy: { bundle: join(out, "policy.wasm") },
        admin: { listen: "127.0.0.1:0", groups: ["auditor"] },
      },
    }),
    startTestGateway(db, {
      config: { identity: { oidc: [{ issuer: iss2.issuer, audience: "agate", jwks_cache_s: 2, jwks_cooldown_s: 0, clock_skew_s: 0 }] } },
    }),
  ]);
});

afterAll(async () => {
  await Promise.all([main?.close(), fast?.close()]);
  await Promise.all([iss?.close(), iss2?.close()]);
  await db?.stop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

// ── helpers ─────────────────────────────────────────────────────────────

/** psql as `user` with `password` (PGPASSWORD), verbose errors so the SQLSTATE shows. */
function psqlAs(port: number, user: string, password: string, sql: string, env: Record<string, string> = {}) {
  return sh(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", "-h", "127.0.0.1", "-p", String(port), "-U", user, "-d", "app", "-c", sql], {
    env: { PGPASSWORD: password, PGSSLMODE: "disable", PGCONNECT_TIMEOUT: "10", ...env },
  });
}

interface RawLogin {
  /** Whether the server asked for the password at all. */
  askedPassword: boolean;
  ok: boolean;
  error?: { code: string; message: string };
}

/** A login over a raw socket without TLS: the SQLSTATE of a refusal (psql does not show it for connection errors). */
function rawLogin(port: number, user: string, password: string): Promise<RawLogin> {
  return new Promise((done) => {
    const s = net.connect(port, "127.0.0.1");
    let buf = Buffer.alloc(0);
    let askedPassword = false;
    const finish = (r: RawLogin) => {
      s.destroy();
      done(r);
    };
    s.on("connect", () => s.write(startupPacket((w) => w.i32(196608).cstr("user").cstr(user).cstr("database").cstr("app").u8(0))));
    s.on("data", (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      while (buf.length >= 5) {
        const len = buf.readInt32BE(1);
        if (buf.length < 1 + len) return;
        const type = buf[0];
        const body = buf.subarray(5, 1 + len);
        buf = buf.subarray(1 + len);
        if (type === 0x52) {
          const code = body.readInt32BE(0);
          if (code === 3) {
            askedPassword = true;
            s.write(message(0x70, (w) => w.cstr(password)));
          } else if (code === 0) return finish({ askedPassword, ok: true });
        } else if (type === 0x45) {
          const f: Record<string, string> = {};
          for (let i = 0; i < body.length && body[i] !== 0; ) {
            const end = body.indexOf(0, i + 1);
            f[String.fromCharCode(body[i]!)] = body.toString("utf8", i + 1, end);
            i = end + 1;
          }
          return finish({ askedPassword, ok: false, error: { code: f.C ?? "", message: f.M ?? "" } });
        }
      }
    });
    s.on("error", () => finish({ askedPassword, ok: false }));
    s.on("close", () => done({ askedPassword, ok: false }));
  });
}

async function records(gw: TestGateway): Promise<Rec[]> {
  const out: Rec[] = [];
  for await (const r of readRecords(gw.auditDir)) out.push(r);
  return out;
}

/** The first record matching `pred`, polling briefly (records after a refusal are group-committed, not awaited). */
async function waitRecord(gw: TestGateway, pred: (r: Rec) => boolean, what: string): Promise<Rec> {
  for (let i = 0; i < 100; i++) {
    const found = (await records(gw).catch(() => [])).find(pred);
    if (found) return found;
    await Bun.sleep(20);
  }
  throw new Error(`no audit record: ${what}`);
}

function client(gw: TestGateway, username: string, password: string) {
  return postgres({ host: "127.0.0.1", port: gw.port, database: "app", username, password, max: 1, ssl: false, onnotice: () => {} });
}

/** Run `q` until it throws (polling every 100 ms, at most `tries` times); returns the error. */
async function untilRefused(q: () => Promise<unknown>, tries: number): Promise<{ error: Rec; attempts: number }> {
  for (let i = 1; i <= tries; i++) {
    const error = await q().then(
      () => null,
      (e: unknown) => e as Rec,
    );
    if (error) return { error, attempts: i };
    await Bun.sleep(100);
  }
  throw new Error(`still allowed after ${tries} attempts`);
}

const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString("base64url");
const enc = (s: string) => new TextEncoder().encode(s);
const nowS = () => Math.floor(Date.now() / 1000);

// ── 1. tokens open sessions; the identity is in the log and the policy input ──

describe("OIDC sessions", () => {
  test("a client-credentials token opens a psql session; its identity is in session_start and command records", async () => {
    const token = await iss.clientToken();
    const claims = decodeJwt(token);
    expect(claims.sub).toBe("svc-reporting");
    expect(typeof claims.jti).toBe("string");
    const r = await psqlAs(main.port, "svc-reporting", token, "select 1");
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe("1");

    const identity = { subject: "svc-reporting", issuer: iss.issuer, groups: ["svc-reporting"], kind: "service", credential_id: claims.jti, expires_at: new Date(claims.exp! * 1000).toISOString() };
    const start = await waitRecord(main, (x) => x.type === "session_start" && x.identity?.credential_id === claims.jti, "session_start of the client token");
    expect(start.identity).toEqual(identity);
    const cmd = await waitRecord(main, (x) => x.type === "command" && x.session === start.session && x.text === "select 1", "its command");
    expect(cmd.identity).toEqual(identity);
    expect(cmd.decision.allow).toBe(true);
    // The log names the credential, never holds it.
    expect(JSON.stringify(await records(main))).not.toContain(token.split(".")[2]!);
  });

  test("a token an agent got on behalf of a person (act) records both: the person as subject, the agent as actor", async () => {
    const token = await iss.sign({ sub: "carol", groups: ["dev"], act: { sub: "agent-7" } });
    const r = await psqlAs(main.port, "carol", token, "select 2");
    expect(r.stderr).toBe("");
    expect(r.stdout.trim()).toBe("2");
    const jti = decodeJwt(token).jti;
    const start = await waitRecord(main, (x) => x.type === "session_start" && x.identity?.credential_id === jti, "session_start of the delegated token");
    expect(start.identity).toMatchObject({ subject: "carol", actor: "agent-7", kind: "agent", groups: ["dev"] });
  });

  test("the policy sees the identity: only tokens with group dba may write", async () => {
    const dba = await iss.sign({ sub: "dba-user", groups: ["dba"] });
    const ins = await psqlAs(main.port, "dba-user", dba, "INSERT INTO notes VALUES (1, 'by dba')");
    expect(ins.stderr).toBe("");
    expect(ins.stdout.trim()).toBe("INSERT 0 1");

    const dev = await iss.sign({ sub: "dev-user", groups: ["dev", "ops"] });
    const jti = decodeJwt(dev).jti;
    const denied = await psqlAs(main.port, "dev-user", dev, "INSERT INTO notes VALUES (2, 'by dev')");
    expect(denied.code).not.toBe(0);
    expect(denied.stderr).toContain("42501");
    expect(denied.stderr).toContain(`agate.test.deny_write_without_dba: writes need group dba; dev-user (human, ${iss.issuer}, credential ${jti}) is in groups [dev, ops]`);
    // Reads are not writes: the same identity may read.
    const read = await psqlAs(main.port, "dev-user", dev, "SELECT note FROM notes ORDER BY id");
    expect(read.stdout.trim()).toBe("by dba");
    // The client-credentials token (groups [svc-reporting]) may not write either.
    const svc = await psqlAs(main.port, "svc-reporting", await iss.clientToken(), "DELETE FROM notes");
    expect(svc.stderr).toContain("writes need group dba; svc-reporting");
    expect((await db.psql("SELECT count(*) FROM notes")).trim()).toBe("1");
    const refusal = await waitRecord(main, (x) => x.type === "command" && x.identity?.subject === "dev-user" && x.text.startsWith("INSERT"), "the denied INSERT");
    expect(refusal.decision.allow).toBe(false);
    expect(refusal.decision.reasons[0]).toStartWith("agate.test.deny_write_without_dba:");
  });
});

// ── 2. agate login (device authorization grant) ─────────────────────────

describe("agate login", () => {
  /** Spawn `agate login`; `code` resolves once the user code is on stderr. */
  function startLogin(cacheHome: string, extra: string[] = []) {
    const p = Bun.spawn([BUN, MAIN, "login", "--issuer", iss.issuer, "--client-id", "agate-cli", "--audience", "agate", ...extra], {
      cwd: ROOT,
      env: { ...process.env, XDG_CACHE_HOME: cacheHome },
      stdout: "pipe",
      stderr: "pipe",
    });
    let stderr = "";
    let gotCode: (c: string) => void = () => {};
    let noCode: (e: Error) => void = () => {};
    const code = new Promise<string>((res, rej) => {
      gotCode = res;
      noCode = rej;
    });
    code.catch(() => {}); // a cached login shows no code; only a caller that waits for one cares
    const reading = (async () => {
      const dec = new TextDecoder();
      for await (const chunk of p.stderr) {
        stderr += dec.decode(chunk, { stream: true });
        const m = /confirm the code ([A-Z0-9-]+)/.exec(stderr);
        if (m) gotCode(m[1]!);
      }
    })();
    const done = Promise.all([new Response(p.stdout).text(), p.exited, reading]).then(([stdout, exit]) => {
      noCode(new Error(`agate login ended (${exit}) without showing a code: ${stderr}`));
      return { code: exit, stdout, stderr };
    });
    return { code, done };
  }

  const exported = (stdout: string, name: string) => new RegExp(`^export ${name}='([^']*)'$`, "m").exec(stdout)?.[1];

  test("device grant end to end: approve → PGUSER/PGPASSWORD work through agate; cached next time; deny → exit 1", async () => {
    const cacheA = join(tmp, "cache-a");
    const cacheB = join(tmp, "cache-b");
    // Logins at once (agate polls every 5 s, the provider names no interval): one approved, one denied,
    // and one asking for an explicit RFC 8707 resource indicator (an absolute URI) with --resource.
    const approved = startLogin(cacheA);
    const denied = startLogin(cacheB);
    const withResource = startLogin(join(tmp, "cache-c"), ["--resource", iss.resource("agate")]);
    const [codeA, codeB, codeC] = await Promise.all([approved.code, denied.code, withResource.code]);
    expect(new Set([codeA, codeB, codeC]).size).toBe(3);
    await Promise.all([iss.approveDevice(codeA, { sub: "alice", groups: ["dba"] }), iss.denyDevice(codeB), iss.approveDevice(codeC, { sub: "bob", groups: ["dev"] })]);
    const [a, b, c3] = await Promise.all([approved.done, denied.done, withResource.done]);
    expect(c3.code).toBe(0);
    expect(decodeJwt(exported(c3.stdout, "PGPASSWORD")!)).toMatchObject({ aud: "agate", sub: "bob" });

    expect(a.code).toBe(0);
    expect(a.stderr).toContain("signed in as alice");
    const user = exported(a.stdout, "PGUSER");
    const token = exported(a.stdout, "PGPASSWORD");
    expect(user).toBe("alice");
    expect(decodeJwt(token!)).toMatchObject({ iss: iss.issuer, aud: "agate", sub: "alice", groups: ["dba"] });
    const r = await psqlAs(main.port, user!, token!, "INSERT INTO notes VALUES (10, 'by alice') RETURNING note");
    expect(r.stderr).toBe("");
    expect(r.stdout.trim().split("\n")[0]).toBe("by alice");

    expect(b.code).toBe(1);
    expect(b.stderr).toContain("denied");
    expect(b.stdout).toBe("");

    // The cached token is reused: with the provider down, so nothing (device endpoint included) was contacted.
    await iss.stop();
    try {
      const again = startLogin(cacheA);
      const c = await again.done;
      expect(c.code).toBe(0);
      expect(c.stderr).toContain("using the cached token as alice");
      expect(c.stderr).not.toContain("confirm the code");
      expect(exported(c.stdout, "PGPASSWORD")).toBe(token);
    } finally {
      await iss.start();
    }
    // The cache file is private.
    const files = [...new Bun.Glob("agate/tokens/*.json").scanSync(cacheA)];
    expect(files).toHaveLength(1);
    expect(statSync(join(cacheA, files[0]!)).mode & 0o777).toBe(0o600);
  });
});

// ── 3. attacks, refused at login ─────────────────────────────────────────

describe("refused at login", () => {
  interface Attack {
    name: string;
    user: string;
    token: string;
    says: string;
    code: string;
  }

  async function expectRefused(gw: TestGateway, a: Attack): Promise<void> {
    const r = await psqlAs(gw.port, a.user, a.token, "select 1");
    expect(r.code, a.name).not.toBe(0);
    expect(r.stdout, a.name).toBe("");
    expect(r.stderr, a.name).toContain(a.says);
    const raw = await rawLogin(gw.port, a.user, a.token);
    expect(raw.askedPassword, a.name).toBe(true);
    expect(raw.error?.code, a.name).toBe("28P01");
    expect(raw.error?.message, a.name).toContain(a.says);
    const refused = await waitRecord(gw, (x) => x.type === "session_refused" && x.user === a.user && x.code === a.code, `${a.name}: session_refused ${a.code}`);
    // The record's reason quotes what the client sent (its token's issuer) masked by every detector
    expect(refused.reason, a.name).toContain(maskText(a.says, ALL_DETECTORS, { kind: "redact" }).text);
    expect(JSON.stringify(refused), a.name).not.toContain(a.token);
  }

  test("forged, stale, misdirected and foreign tokens", async () => {
    const now = nowS();
    const valid = await iss.sign({ sub: "atk-tampered", groups: ["dev"] });
    const [h, , s] = valid.split(".");
    const attacks: Attack[] = [
      {
        name: "alg none (unsigned)",
        user: "atk-none",
        token: `${b64({ alg: "none", typ: "JWT" })}.${b64({ iss: iss.issuer, aud: "agate", sub: "atk-none", groups: ["dba"], iat: now, exp: now + 300 })}.`,
        says: `algorithm "none" is not allowed`,
        code: "AUTH_TOKEN_ALGORITHM",
      },
      {
        name: "HS256 keyed with the RSA public key (PEM)",
        user: "atk-hs-pem",
        token: await iss.sign({ sub: "atk-hs-pem" }, { alg: "HS256", key: enc(await iss.publicPem()) }),
        says: `algorithm "HS256" is not allowed`,
        code: "AUTH_TOKEN_ALGORITHM",
      },
      {
        name: "HS256 keyed with the RSA public key (JWK)",
        user: "atk-hs-jwk",
        token: await iss.sign({ sub: "atk-hs-jwk" }, { alg: "HS256", key: enc(JSON.stringify(iss.publicJwk())) }),
        says: `algorithm "HS256" is not allowed`,
        code: "AUTH_TOKEN_ALGORITHM",
      },
      { name: "expired", user: "atk-expired", token: await iss.sign({ sub: "atk-expired", iat: now - 900, exp: now - 600 }), says: "token expired", code: "AUTH_TOKEN_EXPIRED" },
      { name: "not yet valid (nbf)", user: "atk-nbf", token: await iss.sign({ sub: "atk-nbf", nbf: now + 600 }), says: "not valid before", code: "AUTH_TOKEN_NOT_YET_VALID" },
      { name: "issued in the future (iat)", user: "atk-iat", token: await iss.sign({ sub: "atk-iat", iat: now + 600, exp: now + 900 }), says: "issued in the future", code: "AUTH_TOKEN_NOT_YET_VALID" },
      { name: "wrong audience", user: "atk-aud", token: await iss.sign({ sub: "atk-aud", aud: "someone-else" }), says: "audience mismatch", code: "AUTH_TOKEN_AUDIENCE" },
      { name: "unconfigured issuer", user: "atk-iss", token: await iss.sign({ sub: "atk-iss", iss: "https://idp.evil.example" }), says: "not configured", code: "AUTH_TOKEN_ISSUER" },
      { name: "unknown kid", user: "atk-kid", token: await iss.sign({ sub: "atk-kid" }, { kid: "unknown-kid" }), says: "unknown key", code: "AUTH_TOKEN_UNKNOWN_KEY" },
      { name: "tampered payload (groups)", user: "atk-tampered", token: `${h}.${b64({ ...decodeJwt(valid), groups: ["dba"] })}.${s}`, says: "signature is invalid", code: "AUTH_TOKEN_SIGNATURE" },
      {
        name: "a second real provider, not configured here",
        user: "other-idp-client",
        token: await iss2.clientToken({ clientId: "other-idp-client" }),
        says: `issuer ${JSON.stringify(iss2.issuer)} is not configured`,
        code: "AUTH_TOKEN_ISSUER",
      },
      { name: "user name not the token's", user: "atk-mallory", token: await iss.sign({ sub: "carol", groups: ["dba"] }), says: `"atk-mallory" does not match the token`, code: "AUTH_USER_MISMATCH" },
      {
        name: "a crit header naming an extension agate does not implement (RFC 7515 §4.1.11)",
        user: "atk-crit",
        token: await iss.sign({ sub: "atk-crit" }, { header: { crit: ["urn:example:must-understand"], "urn:example:must-understand": true }, crit: { "urn:example:must-understand": true } }),
        says: `the token marks the header extension "urn:example:must-understand" critical`,
        code: "AUTH_TOKEN_CRIT",
      },
      { name: "valid for longer than 24 h (exp - iat)", user: "atk-long", token: await iss.sign({ sub: "atk-long", iat: now - 60, exp: now + 86_400 }), says: "valid for 86460 s", code: "AUTH_TOKEN_LIFETIME" },
      { name: "no iat and more than 24 h left", user: "atk-long-noiat", token: await iss.sign({ sub: "atk-long-noiat", iat: undefined, exp: now + 2 * 86_400 }), says: "has no iat), longer than the 86400 s", code: "AUTH_TOKEN_LIFETIME" },
    ];
    for (const a of attacks) await expectRefused(main, a);
    // None of them opened a session.
    const users = new Set(attacks.map((a) => a.user));
    expect((await records(main)).filter((x) => x.type === "session_start" && users.has(x.identity?.subject))).toEqual([]);
    // The real token whose payload was tampered with still works as issued.
    expect((await psqlAs(main.port, "atk-tampered", valid, "select 1")).stdout.trim()).toBe("1");
  });

  test("max_token_lifetime_s: 24 h by default, per issuer; a real provider's longer-lived tokens are refused, tokens inside the limit accepted", async () => {
    const now = nowS();
    // Inside the default limit, with iat (exactly 24 h) and without it.
    for (const [user, claims] of [
      ["svc-day", { iat: now, exp: now + 86_400 }],
      ["svc-noiat", { iat: undefined, exp: now + 600 }],
    ] as const) {
      const r = await psqlAs(main.port, user, await iss.sign({ sub: user, ...claims }), "select 1");
      expect(r.stderr, user).toBe("");
      expect(r.stdout.trim(), user).toBe("1");
    }
    // A provider issuing 2 h tokens, trusted with a 1 h limit.
    const long = await startIssuer({ audience: "agate", accessTokenTTL: 7200 });
    const g = await startTestGateway(db, { config: { identity: { oidc: [{ issuer: long.issuer, audience: "agate", max_token_lifetime_s: 3600 }] } } });
    try {
      const token = await long.clientToken();
      const c = decodeJwt(token);
      expect(c.exp! - c.iat!).toBe(7200);
      const r = await psqlAs(g.port, long.serviceClient.clientId, token, "select 1");
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain("the token is valid for 7200 s");
      expect(r.stderr).toContain("longer than the 3600 s this issuer's max_token_lifetime_s allows");
      const refused = await waitRecord(g, (x) => x.type === "session_refused" && x.code === "AUTH_TOKEN_LIFETIME", "session_refused AUTH_TOKEN_LIFETIME");
      expect(refused.user).toBe(long.serviceClient.clientId);
      // The same provider's key, a token inside the limit.
      const ok = await psqlAs(g.port, "svc-hour", await long.sign({ sub: "svc-hour", iat: now, exp: now + 3600 }), "select 1");
      expect(ok.stdout.trim()).toBe("1");
    } finally {
      await g.close();
      await long.close();
    }
    const dir = mkdtempSync(join(tmp, "cfg-"));
    writeFileSync(join(dir, "audit.key"), generateKey("agate.test/audit").signerKey, { mode: 0o600 });
    const oidc = (max: unknown) => parseConfig({ audit: { signing_key: "./audit.key" }, identity: { oidc: [{ issuer: iss.issuer, audience: "agate", ...(max !== undefined ? { max_token_lifetime_s: max } : {}) }] } }, dir, {}).identity.oidc[0]!;
    expect(oidc(undefined).max_token_lifetime_s).toBe(86_400);
    expect(oidc(600).max_token_lifetime_s).toBe(600);
    expect(() => oidc(0)).toThrow("identity.oidc[0].max_token_lifetime_s is 0; expected seconds from 1 to 2592000");
  });

  test("JWKS unreachable: cached keys serve until jwks_cache_s, then logins are refused; back when the provider is", async () => {
    // `fast` has not verified anything yet: this login discovers the provider and fetches its keys now.
    const user = "fast-user";
    expect((await psqlAs(fast.port, user, await iss2.sign({ sub: user }), "select 1")).stdout.trim()).toBe("1");
    await iss2.stop();
    try {
      // Within jwks_cache_s (2 s) of the fetch: the cached keys verify a new token.
      const within = await psqlAs(fast.port, user, await iss2.sign({ sub: user }), "select 1");
      expect(within.stderr).toBe("");
      expect(within.stdout.trim()).toBe("1");
      // After it: the keys must be fetched again, and cannot be.
      const token = await iss2.sign({ sub: user });
      let raw: RawLogin | undefined;
      for (let i = 0; i < 40 && !(raw = await rawLogin(fast.port, user, token)).error; i++) await Bun.sleep(100);
      expect(raw?.error?.code).toBe("28P01");
      expect(raw?.error?.message).toContain("could not be fetched");
      await expectRefused(fast, { name: "issuer unreachable", user, token, says: "could not be fetched and the cached ones have expired; refusing", code: "AUTH_ISSUER_UNREACHABLE" });
    } finally {
      await iss2.start();
    }
    expect((await psqlAs(fast.port, user, await iss2.sign({ sub: user }), "select 1")).stdout.trim()).toBe("1");
  });

  test("key rotation: a token with the new kid is accepted with jwks_cooldown_s 0; refused for 30 s with the default cooldown", async () => {
    const withDefaults = await startTestGateway(db, { config: { identity: { oidc: [{ issuer: iss2.issuer, audience: "agate" }] } } });
    try {
      const before = await iss2.sign({ sub: "rot-user" });
      for (const gw of [fast, withDefaults]) expect((await psqlAs(gw.port, "rot-user", before, "select 1")).stdout.trim()).toBe("1"); // keys cached
      const oldKid = iss2.publicJwk().kid;
      await iss2.rotateKey();
      const issued = await iss2.clientToken({ clientId: "other-idp-client" });
      expect(decodeProtectedHeader(issued).kid).not.toBe(oldKid);
      const r = await psqlAs(fast.port, "other-idp-client", issued, "select 1");
      expect(r.stderr).toBe("");
      expect(r.stdout.trim()).toBe("1");
      // jose's default cooldown (30 s) after the last fetch: the unknown kid is not refetched yet.
      await expectRefused(withDefaults, { name: "rotated key, default cooldown", user: "other-idp-client", token: issued, says: "unknown key", code: "AUTH_TOKEN_UNKNOWN_KEY" });
      // The old key is still published: its tokens still verify everywhere.
      for (const gw of [fast, withDefaults]) expect((await psqlAs(gw.port, "rot-user", before, "select 1")).stdout.trim()).toBe("1");
    } finally {
      await withDefaults.close();
    }
  });
});

// ── 4. mid-session ───────────────────────────────────────────────────────

describe("mid-session", () => {
  test("a revoked accounts-store key stops the open session at its next statement, and new sessions", async () => {
    const created = await sh([BUN, MAIN, "accounts", "create", "--db", accountsDb, "--id", "bot", "--groups", "ci"]);
    expect(created.code).toBe(0);
    const apiKey = created.stdout.trim();
    expect(apiKey).toMatch(/^agk_/);

    const sql = client(main, "bot", apiKey);
    try {
      expect((await sql`select 1 as n`)[0]!.n).toBe(1);
      const revoked = await sh([BUN, MAIN, "accounts", "revoke", "bot", "--db", accountsDb]);
      expect(revoked.code).toBe(0);
      expect(revoked.stdout).toContain("revoked bot");
      // The gateway re-reads the store at most every 100 ms: ten tries (~1 s) are plenty.
      const { error } = await untilRefused(() => sql`select 1 as n`, 10);
      expect(error.code).toBe("42501");
      expect(error.message).toContain(`the API key "bot" was revoked at`);
      const start = await waitRecord(main, (x) => x.type === "session_start" && x.identity?.credential_id === "bot", "bot's session_start");
      const cmd = await waitRecord(main, (x) => x.type === "command" && x.session === start.session && x.decision?.allow === false, "bot's refused command");
      expect(cmd.text).toBe("select 1 as n");
      expect(cmd.identity).toMatchObject({ subject: "bot", issuer: "agate:api-key", groups: ["ci"], kind: "service", credential_id: "bot" });
      expect(cmd.decision.reasons).toEqual([expect.stringMatching(/^agate\.identity: the API key "bot" was revoked at /)]);
    } finally {
      await sql.end();
    }
    // New sessions with the key are refused.
    const r = await psqlAs(main.port, "bot", apiKey, "select 1");
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(`the API key "bot" was revoked`);
    const raw = await rawLogin(main.port, "bot", apiKey);
    expect(raw.error).toMatchObject({ code: "28P01", message: expect.stringContaining(`the API key "bot" was revoked`) });
    await waitRecord(main, (x) => x.type === "session_refused" && x.user === "bot" && x.code === "AUTH_REVOKED", "bot's session_refused");
  });

  test("a token that expires mid-session: the next statement is refused with 'token expired … reconnect'", async () => {
    const exp = nowS() + 2;
    const token = await iss2.sign({ sub: "short-lived", exp });
    const sql = client(fast, "short-lived", token);
    try {
      expect((await sql`select 1 as n`)[0]!.n).toBe(1);
      const { error } = await untilRefused(() => sql`select 1 as n`, 40);
      expect(error.code).toBe("42501");
      expect(error.message).toMatch(/token expired at \S+; reconnect with a fresh token/);
      const cmd = await waitRecord(fast, (x) => x.type === "command" && x.identity?.subject === "short-lived" && x.decision?.allow === false, "the refused command");
      expect(cmd.decision.reasons[0]).toContain("agate.identity: the session's token expired");
    } finally {
      await sql.end();
    }
  });
});

// ── 5. TLS ───────────────────────────────────────────────────────────────

describe("credentials and TLS", () => {
  function configError(connection: Record<string, unknown>): AgateError | undefined {
    const dir = mkdtempSync(join(tmp, "cfg-"));
    writeFileSync(join(dir, "audit.key"), generateKey("agate.test/audit").signerKey, { mode: 0o600 });
    try {
      parseConfig({ audit: { dir: join(dir, "audit"), signing_key: "./audit.key" }, connections: [{ name: "db", target: { database: "app", user: "app" }, ...connection }] }, dir, {});
      return undefined;
    } catch (e) {
      return e as AgateError;
    }
  }

  test("the configuration refuses a listener that would take credentials in the clear", () => {
    const noTls = configError({ listen: "127.0.0.1:6432" });
    expect(noTls).toBeInstanceOf(AgateError);
    expect(noTls!.code).toBe("CONFIG_INVALID");
    expect(noTls!.message).toContain("allow_plaintext_auth");
    const exposed = configError({ listen: "0.0.0.0:6432", allow_plaintext_auth: true });
    expect(exposed!.code).toBe("CONFIG_INVALID");
    expect(exposed!.message).toContain("allow_plaintext_auth");
    expect(exposed!.message).toContain("0.0.0.0");
    // What is allowed: plaintext on loopback when asked for, and TLS anywhere.
    expect(configError({ listen: "127.0.0.1:6432", allow_plaintext_auth: true })).toBeUndefined();
    expect(configError({ listen: "0.0.0.0:6432", tls: { cert, key } })).toBeUndefined();
  });

  test("with tls (not required) and no allow_plaintext_auth: a plain client is refused before sending its token; TLS works", async () => {
    const gw = await startTestGateway(db, {
      connection: { allow_plaintext_auth: false, tls: { cert, key, required: false } },
      config: { identity: { oidc: [{ issuer: iss.issuer, audience: "agate" }] } },
    });
    try {
      const token = await iss.sign({ sub: "tls-user" });
      const raw = await rawLogin(gw.port, "tls-user", token);
      expect(raw.askedPassword).toBe(false);
      expect(raw.error?.code).toBe("28000");
      expect(raw.error?.message).toContain("requires TLS");
      const plain = await psqlAs(gw.port, "tls-user", token, "select 1", { PGSSLMODE: "disable" });
      expect(plain.code).not.toBe(0);
      expect(plain.stderr).toContain("requires TLS");
      const secure = await sh(["psql", "-X", "-At", "-h", "127.0.0.1", "-p", String(gw.port), "-U", "tls-user", "-d", "app", "-c", "select 1", "-c", "\\conninfo"], {
        env: { PGPASSWORD: token, PGSSLMODE: "require" },
      });
      expect(secure.stderr).toBe("");
      expect(secure.stdout).toStartWith("1\n");
      expect(secure.stdout).toContain("SSL connection");
      const start = await waitRecord(gw, (x) => x.type === "session_start" && x.identity?.subject === "tls-user", "the TLS session");
      expect(start.client.tls).toBe(true);
      expect((await records(gw)).filter((x) => x.type === "session_start" && !x.client.tls)).toEqual([]);
    } finally {
      await gw.close();
    }
  });
});

// ── 6. admin API ────────────────────────────────────────────────────────

describe("admin API", () => {
  test("accepts an OIDC bearer token of an admin group; refuses an expired one (401) and a non-member (403)", async () => {
    const base = `http://127.0.0.1:${main.gateway.admin!.port}`;
    const get = async (token: string) => {
      const res = await fetch(`${base}/v1/log/records/0`, { headers: { authorization: `Bearer ${token}` } });
      return { status: res.status, body: (await res.json()) as Rec };
    };
    const ok = await get(await iss.sign({ sub: "auditor-1", groups: ["auditor"] }));
    expect(ok.status).toBe(200);
    expect(typeof ok.body.type).toBe("string");
    const now = nowS();
    const expired = await get(await iss.sign({ sub: "auditor-1", groups: ["auditor"], iat: now - 900, exp: now - 600 }));
    expect(expired.status).toBe(401);
    expect(expired.body.error.code).toBe("UNAUTHENTICATED");
    const outsider = await get(await iss.sign({ sub: "dev-user", groups: ["dev"] }));
    expect(outsider.status).toBe(403);
  });
});
