/**
 * What the gateway stores and relays besides result rows, end to end: a
 * real PostgreSQL, the gateway in process with every detector on and column
 * rules on vault.email and vault.card, real clients (psql, porsager,
 * psycopg in binary mode, a raw wire client). Every byte the gateway sends
 * to its clients (through a capturing proxy), every file of the audit
 * directory and every line of the gateway's log are searched for the
 * planted values, raw, as hex and as base64:
 *
 *   records    decision reasons of a statement that fails to parse, error
 *              texts copied into outcomes (the command's, and a Bind's),
 *              startup parameters (application_name, DateStyle), the user
 *              name of a refused session, binary Bind parameters (int8,
 *              numeric, float8, text, bytea) read by their declared type
 *   relayed    ParameterStatus after set_config, notification payloads
 *              (with deny_covered_copy switched off, so that they run)
 *   binary     a large object with secret-looking text inside binary data
 *              comes back byte for byte (checksum), counted as unscanned;
 *              text kept as bytea is still masked
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import net from "node:net";
import postgres from "postgres";
import { readRecords } from "../src/audit/index.ts";
import { createLogger } from "../src/core/log.ts";
import { message } from "../src/protocols/postgres/wire.ts";
import { API_KEY, directoryText, psql, sh, startTestGateway, type TestGateway, USER } from "./helpers/gateway.ts";
import { startPostgres, type TestPostgres } from "./helpers/postgres.ts";
import { PSYCOPG_PYTHON } from "./helpers/psycopg.ts";
import { Query, rawSession, Sync } from "./helpers/wire.ts";

let db: TestPostgres;
let gw: TestGateway;
let proxy: net.Server;
let proxyPort: number;
const sent: Buffer[] = [];
const logLines: string[] = [];

const EMAIL = "ada.lovelace@example.org";
const CARD = "4111111111111111";
/** A bare AWS secret key (generated, so no credential sits in the source). */
const AWS = (() => {
  const abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  for (;;) {
    const k = Array.from(randomBytes(40), (b) => abc[b % abc.length]).join("");
    if (/[A-Z]/.test(k) && /[a-z]/.test(k) && /\d/.test(k)) return k;
  }
})();
const KV_SECRET = "Zx8Kq2LmP9vR4tW7yB1n";
const PLANTED = [EMAIL, CARD, AWS, KV_SECRET];

/** A planted value in each form it could be stored or sent in. */
function forms(v: string): string[] {
  const b = Buffer.from(v);
  return [v, b.toString("hex"), b.toString("base64"), b.toString("base64").replace(/=+$/, "")];
}

/** Every planted value, in every form, found in `text`: what leaked, with some context. */
function leaks(where: string, text: string, values: readonly string[] = PLANTED): string[] {
  const out: string[] = [];
  for (const v of values)
    for (const f of forms(v)) {
      const at = text.indexOf(f);
      if (at >= 0) out.push(`${where}: ${JSON.stringify(f)} in …${JSON.stringify(text.slice(Math.max(0, at - 80), at + f.length + 20))}…`);
    }
  return out;
}

function auditFiles(): string {
  return directoryText(gw.auditDir);
}

async function records(): Promise<Record<string, any>[]> {
  const out: Record<string, any>[] = [];
  for await (const r of readRecords(gw.auditDir)) out.push(r);
  return out;
}

/** Everything the gateway sent to clients, stored and logged, searched for the planted values. */
function everywhere(values: readonly string[] = PLANTED): string[] {
  return [...leaks("to clients", Buffer.concat(sent).toString("latin1"), values), ...leaks("audit directory", auditFiles(), values), ...leaks("log", logLines.join(""), values)];
}

/** Wait until the audit log's records include one matching `pred` (outcomes and ends are appended later). */
async function eventually(pred: (r: Record<string, any>) => boolean): Promise<Record<string, any>[]> {
  for (let i = 0; i < 200; i++) {
    const rs = await records();
    if (rs.some(pred)) return rs;
    await Bun.sleep(25);
  }
  throw new Error("the expected record never arrived");
}

function url(opts: { user?: string; key?: string; params?: string } = {}): string {
  const { user = USER, key = API_KEY, params = "" } = opts;
  return `postgres://${encodeURIComponent(user)}:${encodeURIComponent(key)}@127.0.0.1:${proxyPort}/app${params ? `?${params}` : ""}`;
}

beforeAll(async () => {
  db = await startPostgres();
  await db.psql(`
    CREATE TABLE vault (id int PRIMARY KEY, email text, card text, note text);
    INSERT INTO vault VALUES (1, '${EMAIL}', '${CARD}', 'backup ${AWS}');
    GRANT ALL ON ALL TABLES IN SCHEMA public TO app_scram;
    GRANT EXECUTE ON FUNCTION lo_from_bytea(oid, bytea), lo_get(oid), lo_unlink(oid) TO app_scram;
  `);
  gw = await startTestGateway(db, {
    // Copying covered values is allowed here (allow_rules), so that set_config and pg_notify of one run and what they report is judged
    config: { policy: { data: { agate: { config: { allow_rules: ["deny_covered_copy"], mask: { columns: ["public.vault.email", "vault.card"], detectors: ["*"] } } } } } },
    log: createLogger("info", (l) => logLines.push(l)),
  });
  // A proxy in front of the gateway that keeps every byte the gateway sends.
  proxy = net.createServer((client) => {
    const up = net.connect(gw.port, "127.0.0.1");
    client.on("data", (c) => up.write(c));
    up.on("data", (c) => {
      sent.push(Buffer.from(c));
      client.write(c);
    });
    client.on("close", () => up.destroy());
    up.on("close", () => client.destroy());
    client.on("error", () => up.destroy());
    up.on("error", () => client.destroy());
  });
  await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", () => r()));
  proxyPort = (proxy.address() as net.AddressInfo).port;
}, 120_000);

// Each test judges the bytes sent to clients during it.
beforeEach(() => {
  sent.length = 0;
});

afterAll(async () => {
  proxy?.close();
  await gw?.close();
  await db?.stop();
});

describe("what the log stores passes the masker", () => {
  test("a statement that fails to parse: its reasons (the parser quotes the text) are masked like its text", async () => {
    for (const bad of [`SELECT 1 AS x ${CARD}`, `SELECT 1 AS x ${AWS}`, `SELECT 1 AS x '${EMAIL} password=${KV_SECRET}'`]) {
      const r = await psql(url(), bad);
      expect(r.code).not.toBe(0);
    }
    const rs = await records();
    const refused = rs.filter((r) => r.type === "command" && r.decision?.allow === false && /sql_parse/.test(r.decision.reasons.join(" ")));
    expect(refused.length).toBe(3);
    expect(refused.some((r) => /\[REDACTED:card\]/.test(r.decision.reasons.join(" ")))).toBe(true);
    expect(refused.some((r) => /\[REDACTED:aws_secret_key\]/.test(r.decision.reasons.join(" ")))).toBe(true);
    expect(everywhere([CARD, AWS]).filter((l) => !l.startsWith("to clients"))).toEqual([]);
  });

  test("error texts copied into outcomes: the command's, and a Bind's (recorded with every detector)", async () => {
    const sql = postgres(url(), { max: 1, onnotice: () => {} });
    try {
      // the target echoes the value in its error: masked for the client and the record by the command's detectors
      await expect(sql.unsafe(`SELECT '${EMAIL}'::int`)).rejects.toThrow(/\[REDACTED:email\]/);
      // a Bind error (the parameter does not parse as int4) answers no command agate decided
      await expect(sql`SELECT ${`card ${CARD}`}::int4 AS n`).rejects.toThrow();
      await expect(sql`SELECT ${AWS}::int4 AS n`).rejects.toThrow();
    } finally {
      await sql.end();
    }
    const rs = await eventually((r) => r.type === "outcome" && r.error && /aws_secret_key/.test(r.error.message));
    const errors = rs.filter((r) => r.type === "outcome" && r.error).map((r) => r.error.message);
    expect(errors.some((m) => m.includes("[REDACTED:email]"))).toBe(true);
    expect(errors.some((m) => m.includes("[REDACTED:card]"))).toBe(true);
    expect(leaks("audit directory", auditFiles(), [EMAIL, CARD, AWS])).toEqual([]);
    expect(leaks("log", logLines.join(""), [EMAIL, CARD, AWS])).toEqual([]);
  });

  test("startup parameters: application_name and DateStyle in session_start, session_end and the gateway's log", async () => {
    const ok = await psql(url({ params: `application_name=${encodeURIComponent(`app ${EMAIL}`)}` }), "SELECT 1");
    expect(ok.stdout.trim()).toBe("1");
    // the target refuses the DateStyle, quoting it: that lands in session_end and in the log
    const sql = postgres(url(), { max: 1, onnotice: () => {}, connection: { DateStyle: `ISO password=${KV_SECRET} ${EMAIL}`, application_name: `x api_key=${KV_SECRET}` } });
    await expect(sql`SELECT 1`).rejects.toThrow();
    await sql.end().catch(() => {});
    const rs = await eventually((r) => r.type === "session_end" && /DateStyle/i.test(r.reason));
    const start = rs.find((r) => r.type === "session_start" && r.client.application?.includes("[REDACTED:email]"));
    expect(start).toBeDefined();
    const end = rs.find((r) => r.type === "session_end" && /DateStyle/i.test(r.reason))!;
    expect(end.reason).toContain("[REDACTED:email]");
    expect(logLines.some((l) => /target connection failed/.test(l) && l.includes("[REDACTED:email]"))).toBe(true);
    expect(leaks("audit directory", auditFiles(), [EMAIL, KV_SECRET])).toEqual([]);
    expect(leaks("log", logLines.join(""), [EMAIL, KV_SECRET])).toEqual([]);
  });

  test("the user name of a refused session, in its record, its reason and the log", async () => {
    const r = await psql(url({ user: EMAIL, key: `not-a-key-${CARD}` }), "SELECT 1");
    expect(r.code).not.toBe(0);
    const rs = await eventually((x) => x.type === "session_refused" && x.user === "[REDACTED:email]");
    const refused = rs.find((x) => x.type === "session_refused" && x.user === "[REDACTED:email]")!;
    expect(refused.reason).toContain("[REDACTED:email]");
    expect(logLines.some((l) => /session refused/.test(l) && l.includes("[REDACTED:email]"))).toBe(true);
    expect(everywhere([EMAIL, CARD]).filter((l) => !l.startsWith("to clients"))).toEqual([]);
  });

  test("binary Bind parameters are read by their declared type before the detectors run", async () => {
    // a raw client: Parse declares int8, numeric, float8, text and bytea; Bind sends each in binary
    const s = await rawSession(proxyPort, { user: USER, password: API_KEY });
    const types = [20, 1700, 701, 25, 17];
    const int8 = Buffer.alloc(8);
    int8.writeBigInt64BE(BigInt(CARD));
    // numeric 4111111111111111: digits base 10000 → 4111 1111 1111 1111, weight 3
    const numeric = message(0, (w) => w.i16(4).i16(3).i16(0).i16(0).i16(4111).i16(1111).i16(1111).i16(1111)).subarray(5);
    const float8 = Buffer.alloc(8);
    float8.writeDoubleBE(Number(CARD));
    const values = [int8, numeric, float8, Buffer.from(`mail ${EMAIL}`), Buffer.concat([Buffer.from(`password=${KV_SECRET}\n`), Buffer.from(AWS)])];
    const parse = message(0x50, (w) => {
      w.cstr("").cstr("SELECT $1::text, $2::text, $3::text, $4, length($5)").i16(types.length);
      for (const t of types) w.i32(t);
    });
    const bind = message(0x42, (w) => {
      w.cstr("").cstr("").i16(1).i16(1).i16(values.length);
      for (const v of values) w.i32(v.length).bytes(v);
      w.i16(0);
    });
    const execute = message(0x45, (w) => w.cstr("").i32(0));
    s.send([parse, bind, execute, Sync]);
    const got = await s.untilReady();
    s.close();
    expect(got.map((m) => m.type)).toContain("C");
    const rs = await eventually((r) => r.type === "command" && Array.isArray(r.params) && r.params.length === 5);
    const cmd = rs.findLast((r) => r.type === "command" && Array.isArray(r.params) && r.params.length === 5)!;
    expect(cmd.params.slice(0, 2)).toEqual(["[REDACTED:card]", "[REDACTED:card]"]);
    // PostgreSQL's own text for that float8 (what the detectors read): not the card's digits in a row
    expect(cmd.params[2]).toBe("4.111111111111111e+15");
    expect(cmd.params[3]).toBe("mail [REDACTED:email]");
    expect(cmd.params[4]).toStartWith("\\x");
    const secrets = [CARD, EMAIL, KV_SECRET, AWS];
    const binaryForms = values.map((v) => v.toString("base64"));
    expect([...leaks("audit directory", auditFiles(), secrets), ...binaryForms.filter((b) => auditFiles().includes(b))]).toEqual([]);
  });

  test("psycopg in binary mode: int and Decimal parameters", async () => {
    const py = `
import psycopg, sys
from decimal import Decimal
with psycopg.connect(sys.argv[1]) as c:
    cur = c.cursor(binary=True)
    cur.execute("SELECT %b::text, %b::text", (${CARD}, Decimal("${CARD}")))
    print(cur.fetchone())
`;
    const r = await sh([PSYCOPG_PYTHON, "-c", py, url()]);
    expect(r.code).toBe(0);
    const rs = await records();
    const cmd = rs.findLast((x) => x.type === "command" && x.text === "SELECT $1::text, $2::text")!;
    expect(cmd.params).toEqual(["[REDACTED:card]", "[REDACTED:card]"]);
    expect(everywhere([CARD])).toEqual([]);
  });
});

describe("session state relayed to the client", () => {
  test("ParameterStatus after set_config of a covered column is replaced whole; of other text, masked by the detectors", async () => {
    const sql = postgres(url(), { max: 1, onnotice: () => {} });
    try {
      await sql`SELECT set_config('application_name', email, false) FROM vault WHERE id = 1`;
      await sql`SELECT set_config('application_name', note, false) FROM vault WHERE id = 1`;
      await sql.unsafe(`SET application_name = 'to ${EMAIL}'`);
      await sql`SELECT set_config('application_name', 'plain', false)`;
      // the client was told the masked values; ordinary settings pass
      expect(sql.parameters.application_name).toBe("plain");
      expect(sql.parameters.client_encoding).toBe("UTF8");
    } finally {
      await sql.end();
    }
    const wire = Buffer.concat(sent).toString("latin1");
    expect(wire).toContain("application_name\0[REDACTED:application_name]\0");
    expect(wire).toContain("application_name\0backup [REDACTED:aws_secret_key]\0");
    expect(wire).toContain("application_name\0to [REDACTED:email]\0");
    expect(everywhere([EMAIL, AWS])).toEqual([]);
  });

  test("a notification's payload: replaced whole when its statement reads a covered column", async () => {
    const sql = postgres(url(), { max: 1, onnotice: () => {} });
    const payloads: string[] = [];
    try {
      await sql.listen("side", (p) => payloads.push(p));
      await sql`SELECT pg_notify('side', email) FROM vault WHERE id = 1`.catch(() => {});
      await sql`SELECT pg_notify('side', 'hi ' || ${"grace.hopper@example.com"})`.catch(() => {});
      for (let i = 0; i < 100 && payloads.length < 2; i++) await Bun.sleep(20);
    } finally {
      await sql.end();
    }
    expect(payloads).toContain("hi [REDACTED:email]");
    expect(payloads.filter((p) => p.includes("@"))).toEqual([]);
    expect(everywhere([EMAIL, "grace.hopper@example.com"])).toEqual([]);
  });
});

test("a notification this session sends itself, from a covered column, in one simple query", async () => {
  const s = await rawSession(proxyPort, { user: USER, password: API_KEY });
  s.send(Query("LISTEN own"));
  await s.untilReady();
  s.send(Query("SELECT pg_notify('own', email) IS NULL FROM vault WHERE id = 1"));
  const got = await s.untilReady();
  s.close();
  const notes = got.filter((m) => m.type === "A").map((m) => m.body.toString("latin1"));
  const errors = got.filter((m) => m.type === "E");
  // Refused (moving a covered value is a decision) or delivered: never raw
  expect(notes.length + errors.length).toBeGreaterThan(0);
  for (const n of notes) expect(n).toContain("own\0[REDACTED:payload]\0");
  expect(everywhere([EMAIL])).toEqual([]);
});

describe("binary data is never rewritten", () => {
  // Random bytes (never valid UTF-8 text) with secret-looking text inside
  const blob = Buffer.concat([Buffer.from([0xff, 0x00, 0xfe]), randomBytes(4000), Buffer.from(` password=${KV_SECRET} token: ${AWS} `), randomBytes(4000), Buffer.from([0x00, 0xc3])]);
  const md5 = (b: Buffer) => createHash("md5").update(b).digest("hex");

  test("a large object round trip through porsager's largeObject: same checksum, counted as unscanned binary", async () => {
    const sql = postgres(url(), { max: 1, onnotice: () => {} });
    try {
      const lo = await sql.largeObject();
      await lo.write(blob);
      await lo.seek(0);
      const [{ data }] = (await lo.read(blob.length)) as unknown as [{ data: Buffer }];
      await lo.close();
      expect(md5(data as Buffer)).toBe(md5(blob));
      // lo_from_bytea / lo_get, text format, and bytea read back
      const [{ oid }] = (await sql`SELECT lo_from_bytea(0, ${blob}) AS oid`) as unknown as [{ oid: number }];
      const [{ b }] = (await sql`SELECT lo_get(${oid}) AS b`) as unknown as [{ b: Buffer }];
      expect(md5(b as Buffer)).toBe(md5(blob));
      await sql`SELECT lo_unlink(${oid})`;
      // text kept as bytea is still read by the detectors
      const [{ t }] = (await sql`SELECT convert_to(${`password=${KV_SECRET}`}, 'UTF8') AS t`) as unknown as [{ t: Buffer }];
      expect((t as Buffer).toString()).not.toContain(KV_SECRET);
    } finally {
      await sql.end();
    }
    const rs = await eventually((r) => r.type === "outcome" && r.masked?.detectors?.["(unscanned binary)"] > 0);
    expect(rs.some((r) => r.type === "outcome" && r.masked?.detectors?.["(unscanned binary)"] > 0)).toBe(true);
  });

  test("psql reads the same bytes back as hex", async () => {
    const hex = blob.toString("hex");
    const made = await psql(url(), `SELECT lo_from_bytea(0, '\\x${hex}'::bytea)`);
    expect(made.stderr).toBe("");
    const oid = made.stdout.trim();
    const back = await psql(url(), `SELECT lo_get(${oid})`);
    expect(back.stdout.trim()).toBe(`\\x${hex}`);
    await psql(url(), `SELECT lo_unlink(${oid})`);
  });
});
