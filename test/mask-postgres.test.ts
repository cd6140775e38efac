/**
 * Masking of PostgreSQL results end to end: real PostgreSQL, psql, porsager
 * (text format, extended protocol) and node-postgres (binary format), through
 * a gateway whose policy data masks:
 *
 *   columns    public.customers.email (redact), customers.card:partial,
 *              *.ssn:hmac, and the name pattern *secret*
 *   detectors  every one ("*")
 *
 * Column rules must hold whatever the query looks like (aliases, joins,
 * views, SELECT *, CTEs, subqueries, cursors, the extended protocol, binary
 * results), computed columns over a masked column are masked whole, and the
 * detectors catch what no rule names, in rows, errors, notices and COPY. The
 * audit directory must hold none of the raw values.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import pg from "pg";
import postgres from "postgres";
import { readRecords } from "../src/audit/index.ts";
import { psql, startTestGateway, type TestGateway } from "./helpers/gateway.ts";
import { startPostgres, type TestPostgres } from "./helpers/postgres.ts";

let db: TestPostgres;
let gw: TestGateway;
let sql: postgres.Sql;

const EMAIL = "ada.lovelace@example.org";
const CARD = "4111 1111 1111 1111";
const SSN = "078-05-1120";
const TOKEN = "ghp_" + "x7Kq2mZ9pL4vR8sT1wY6uE3oI5aD0fGhJkLz";
const PHONE_NOTE = `call me at +44 20 7946 0958 or mail ${"grace.hopper@example.com"}`;
const RAW = [EMAIL, CARD, SSN, TOKEN, "grace.hopper@example.com", "+44 20 7946 0958", "4111111111111111", "sup3r-s3cret-value"];
const HMAC_KEY = "k".repeat(40);

beforeAll(async () => {
  db = await startPostgres();
  await db.psql(`
    CREATE TABLE customers (id int PRIMARY KEY, name text, email text UNIQUE, card text, ssn text, note text, api_secret text, profile jsonb, card_number bigint, blob bytea);
    INSERT INTO customers VALUES
      (1, 'Ada', '${EMAIL}', '${CARD}', '${SSN}', '${PHONE_NOTE}', 'sup3r-s3cret-value', '{"contact": "${EMAIL}", "n": 1}', 4111111111111111, convert_to('token ${TOKEN}', 'UTF8')),
      (2, 'Bob', 'bob@example.net', '5500 0000 0000 0004', '219-09-9999', 'nothing to see', 'another-secret', '{"n": 2}', 42, '\\x00ff');
    CREATE TABLE orders (id int, customer int, total numeric);
    INSERT INTO orders VALUES (10, 1, 9.99), (11, 2, 5);
    CREATE VIEW customer_contacts AS SELECT c.id, c.email AS contact, upper(c.name) AS shout, lower(c.email) AS lowered FROM customers c;
    CREATE VIEW contacts_again AS SELECT contact AS e FROM customer_contacts;
    CREATE VIEW card_and_secret AS SELECT id, c.card || ' ' || c.api_secret AS mix FROM customers c;
    CREATE TABLE events (id int, at date, contact_email text) PARTITION BY RANGE (at);
    CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
    INSERT INTO events VALUES (1, '2026-05-01', 'eve@example.com');
    CREATE TYPE contact_kind AS ENUM ('none', 'ops@example.com');
    CREATE DOMAIN email_address AS text;
    CREATE DOMAIN small_number AS int;
    CREATE TYPE postal AS (street text, city text);
    CREATE TABLE contacts (kind contact_kind, address email_address, n small_number, home postal, work postal);
    INSERT INTO contacts VALUES ('ops@example.com', 'grace.hopper@example.com', 7, ROW('1 Main St', 'Springfield'), ROW('ops@example.com', 'x'));
    CREATE FUNCTION shout_email() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RAISE NOTICE 'about %', '${EMAIL}'; RETURN 1; END $$;
    GRANT ALL ON ALL TABLES IN SCHEMA public TO app_scram;
  `);
  gw = await startTestGateway(db, {
    config: {
      mask: { hmac_key_env: "AGATE_TEST_MASK_KEY" },
      policy: {
        data: { agate: { config: { mask: { columns: ["public.customers.email", "customers.card:partial", "*.ssn:hmac", "*secret*", "public.events.contact_email"], detectors: ["*"] } } } },
      },
    },
    env: { AGATE_TEST_MASK_KEY: HMAC_KEY },
  });
  sql = postgres(gw.url(), { max: 1, onnotice: () => {} });
}, 120_000);

afterAll(async () => {
  await sql?.end();
  await gw?.close();
  await db?.stop();
});

/** None of the planted values appears in `text` (the failure names which, not the whole text). */
function noRaw(text: string): void {
  expect(RAW.filter((raw) => text.includes(raw)).map((raw) => `${raw} in …${text.slice(Math.max(0, text.indexOf(raw) - 60), text.indexOf(raw) + raw.length + 20)}…`)).toEqual([]);
}

/** The outcome record of the (last) command whose text includes `text`, once it is on disk. */
async function outcomeOf(text: string): Promise<Record<string, any>> {
  for (;;) {
    const records: Record<string, any>[] = [];
    for await (const r of readRecords(gw.auditDir)) records.push(r);
    const command = records.findLast((r) => r.type === "command" && String(r.text).includes(text));
    const outcome = command && records.find((r) => r.type === "outcome" && r.session === command.session && r.seqs.includes(command.seq));
    if (outcome) return outcome;
    await Bun.sleep(50);
  }
}

describe("column rules follow the column's origin", () => {
  test("plain, aliased, SELECT *, joins, subqueries and CTEs", async () => {
    const queries = [
      "SELECT email, card, ssn, api_secret FROM customers ORDER BY id",
      "SELECT c.email AS x, c.card AS y, c.ssn AS z, c.api_secret AS w FROM customers c ORDER BY c.id",
      "SELECT * FROM customers ORDER BY id",
      "SELECT o.id, c.email, c.card FROM orders o JOIN customers c ON c.id = o.customer ORDER BY o.id",
      "SELECT * FROM (SELECT email AS a, card AS b FROM customers) s ORDER BY a",
      "WITH x AS (SELECT email, card, ssn FROM customers) SELECT * FROM x",
      "WITH RECURSIVE x AS (SELECT email FROM customers) SELECT email AS mail FROM x",
    ];
    for (const q of queries) {
      const rows = await sql.unsafe(q);
      const text = JSON.stringify(rows);
      noRaw(text);
      expect(text).toContain("[REDACTED:email]");
    }
  });

  test("each rule's style: redact, partial, hmac (stable), and a name pattern", async () => {
    const [a, b] = await sql`SELECT email, card, ssn, api_secret FROM customers ORDER BY id`;
    expect(a!.email).toBe("[REDACTED:email]");
    expect(a!.card).toBe("**** **** **** 1111");
    expect(a!.ssn).toMatch(/^\[ssn:[0-9a-f]{16}\]$/);
    expect(a!.api_secret).toBe("[REDACTED:api_secret]");
    const [again] = await sql`SELECT ssn FROM customers WHERE id = 1`;
    expect(again!.ssn).toBe(a!.ssn);
    expect(b!.ssn).not.toBe(a!.ssn);
  });

  test("views: a view's column is masked as the base column it shows, through views on views", async () => {
    const rows = await sql`SELECT * FROM customer_contacts ORDER BY id`;
    expect(rows[0]!.contact).toBe("[REDACTED:email]");
    // a computed view column over a masked column is masked whole; one over an unmasked column too, since the view reads a masked column
    expect(rows[0]!.lowered).not.toContain("@");
    const again = await sql`SELECT e FROM contacts_again`;
    expect(again.map((r) => r.e)).toEqual(["[REDACTED:email]", "[REDACTED:email]"]);
  });

  test("a view column built from several covered base columns is masked by the strictest of their rules, and names it", async () => {
    // card:partial would keep the last 4 characters, those of the api_secret behind it: *secret* (redact) applies
    const rows = await sql`SELECT mix FROM card_and_secret ORDER BY id`;
    expect(rows.map((r) => r.mix)).toEqual(["[REDACTED:api_secret]", "[REDACTED:api_secret]"]);
    // so does a computed column over both in a query
    const [q] = await sql`SELECT card || api_secret AS both_cols FROM customers WHERE id = 1`;
    expect(q!.both_cols).toBe("[REDACTED:both_cols]");
    // the outcome names the rule that applied
    const outcome = await outcomeOf("FROM card_and_secret");
    expect(outcome.masked.columns).toEqual({ "*secret*": 2 });
  });

  test("a partition read directly is masked by its parent's rule", async () => {
    const [direct] = await sql`SELECT contact_email FROM events_2026`;
    const [parent] = await sql`SELECT contact_email FROM events`;
    expect(direct!.contact_email).toBe("[REDACTED:contact_email]");
    expect(parent!.contact_email).toBe("[REDACTED:contact_email]");
  });

  test("a computed column over a masked column is masked whole", async () => {
    for (const q of [
      "SELECT upper(email) AS u FROM customers",
      "SELECT email || '' AS u FROM customers",
      "SELECT string_agg(email, ',') AS u FROM customers",
      "SELECT row_to_json(c)::text AS u FROM customers c",
      "SELECT c::text AS u FROM customers c",
    ]) {
      const rows = await sql.unsafe(q);
      noRaw(JSON.stringify(rows));
    }
    // a computed column over nothing masked stays
    const [r] = await sql`SELECT upper(name) AS n, count(*) OVER () AS k FROM customers WHERE id = 1`;
    expect(r!.n).toBe("ADA");
  });

  test("FETCH from a cursor and EXECUTE of a prepared statement are judged by the query behind them", async () => {
    // psql with FETCH_COUNT reads through DECLARE … CURSOR and FETCH
    const fetchCount = ["--set=FETCH_COUNT=1"];
    const plain = await psql(gw.url(), "SELECT upper(name) AS n FROM customers ORDER BY id", fetchCount);
    expect(plain.stdout.trim().split("\n")).toEqual(["ADA", "BOB"]);
    const covered = await psql(gw.url(), "SELECT upper(email) AS e FROM customers ORDER BY id", fetchCount);
    expect(covered.code).toBe(0);
    noRaw(covered.stdout.toLowerCase());
    expect(covered.stdout.trim().split("\n")).toEqual(["[REDACTED:e]", "[REDACTED:e]"]);
    // several statements in one query string: each result is judged by its own statement
    const prepared = await psql(gw.url(), "PREPARE a AS SELECT upper(name) AS n FROM customers ORDER BY id; PREPARE b AS SELECT lower(email) AS e FROM customers; EXECUTE a; EXECUTE b;", ["-q"]);
    expect(prepared.code).toBe(0);
    expect(prepared.stdout.trim().split("\n")).toEqual(["ADA", "BOB", "[REDACTED:e]", "[REDACTED:e]"]);
  });

  test("extended protocol, prepared and reused, with parameters", async () => {
    for (let i = 0; i < 3; i++) {
      const rows = await sql`SELECT email, card FROM customers WHERE id = ${1}`;
      expect(rows[0]!.email).toBe("[REDACTED:email]");
    }
  });

  test("a cursor read in pieces", async () => {
    const seen: string[] = [];
    await sql`SELECT email FROM customers ORDER BY id`.cursor(1, ([row]) => {
      seen.push(row!.email);
    });
    expect(seen).toEqual(["[REDACTED:email]", "[REDACTED:email]"]);
    const out = await psql(gw.url(), "BEGIN; DECLARE c CURSOR FOR SELECT email FROM customers ORDER BY id; FETCH 1 FROM c; FETCH 1 FROM c; COMMIT;");
    expect(out.code).toBe(0);
    noRaw(out.stdout);
    expect(out.stdout).toContain("[REDACTED:email]");
  });

  test("binary-format results (node-postgres binary mode) are masked type-correctly", async () => {
    const client = new pg.Client({ connectionString: gw.url(), binary: true } as pg.ClientConfig);
    await client.connect();
    try {
      // queryMode "extended": without it node-postgres sends a simple query, whose results are always text
      const r = await client.query({ text: "SELECT id, email, card, profile, card_number, blob, note FROM customers ORDER BY id", queryMode: "extended" } as pg.QueryConfig);
      expect(r.fields.every((f) => f.format === "binary")).toBe(true);
      const text = JSON.stringify(r.rows, (_k, v) => (typeof v === "bigint" ? v.toString() : v));
      noRaw(text);
      expect(r.rows[0].id).toBe(1);
      // a bigint holding a card number cannot hold "[REDACTED:card]": it is NULL
      expect(r.rows[0].card_number).toBeNull();
      expect(String(r.rows[1].card_number)).toBe("42");
    } finally {
      await client.end();
    }
  });

  test("binary enums (sent as text) and composites are read, not nulled; domains come as their base type", async () => {
    const client = new pg.Client({ connectionString: gw.url() });
    await client.connect();
    try {
      const r = await client.query({ text: "SELECT kind, address, n, home, work FROM contacts", queryMode: "extended", binary: true } as pg.QueryConfig);
      expect(r.fields.every((f) => f.format === "binary")).toBe(true);
      const row = r.rows[0];
      expect(Buffer.from(row.kind).toString()).toBe("[REDACTED:email]");
      expect(Buffer.from(row.address).toString()).toBe("[REDACTED:email]");
      // PostgreSQL reports a domain's column as its base type, which node-postgres then parses
      expect(row.n).toBe(7);
      // a composite is read as a record: passed as is when nothing is found, NULL when something is (it cannot be masked inside)
      expect(Buffer.from(row.home).includes(Buffer.from("Springfield"))).toBe(true);
      expect(row.work).toBeNull();
    } finally {
      await client.end();
    }
  });

  test("psql sees the same", async () => {
    const out = await psql(gw.url(), "SELECT * FROM customers ORDER BY id");
    expect(out.code).toBe(0);
    noRaw(out.stdout);
    expect(out.stdout.trim().split("\n").length).toBe(2);
  });
});

describe("detectors catch what no rule names", () => {
  test("free text, JSON, numbers and bytea", async () => {
    const [r] = await sql`SELECT note, profile, card_number, blob, 'key ' || ${TOKEN}::text AS t FROM customers WHERE id = 1`;
    expect(r!.note).toContain("[REDACTED:phone]");
    expect(r!.note).toContain("[REDACTED:email]");
    expect(r!.profile).toEqual({ contact: "[REDACTED:email]", n: 1 });
    expect(r!.card_number).toBeNull();
    noRaw(JSON.stringify(r) + Buffer.from(r!.blob).toString("latin1"));
  });

  test("error messages and notices are masked", async () => {
    const notices: string[] = [];
    const s = postgres(gw.url(), { max: 1, onnotice: (n) => notices.push(JSON.stringify(n)) });
    try {
      const err = await s`INSERT INTO customers (id, email) VALUES (3, ${EMAIL})`.catch((e) => e);
      expect(err.code).toBe("23505");
      noRaw(JSON.stringify({ message: err.message, detail: err.detail }));
      expect(err.detail).toContain("[REDACTED:email]");
      await s`SELECT shout_email()`;
      expect(notices.length).toBe(1);
      noRaw(notices[0]!);
    } finally {
      await s.end();
    }
  });

  test("COPY TO under column rules masks the covered columns by position, in text and in binary (more: mask-copy.test.ts)", async () => {
    const out = await psql(gw.url(), "COPY (SELECT id, email, note FROM customers ORDER BY id) TO STDOUT");
    expect(out.stderr).toBe("");
    noRaw(out.stdout);
    expect(out.stdout.split("\n")[0]).toBe("1\t[REDACTED:email]\tcall me at [REDACTED:phone] or mail [REDACTED:email]");
    const binary = await psql(gw.url(), "COPY (SELECT note FROM customers) TO STDOUT WITH (FORMAT binary)");
    expect(binary.code).toBe(0);
    noRaw(binary.stdout);
    expect(binary.stdout).toContain("[REDACTED:email]");
  });
});

describe("the audit log holds none of the raw values", () => {
  test("statements with secrets in their text and parameters are recorded masked", async () => {
    await sql`SELECT ${EMAIL}::text AS a, ${"card " + CARD}::text AS b`;
    await sql.unsafe(`SELECT '${TOKEN}' AS t`);
    // let the group commit reach the disk
    await Bun.sleep(300);
    let all = "";
    for (const f of readdirSync(gw.auditDir)) all += readFileSync(join(gw.auditDir, f)).toString("latin1");
    noRaw(all);
    const records: Record<string, any>[] = [];
    for await (const r of readRecords(gw.auditDir)) records.push(r);
    const outcomes = records.filter((r) => r.type === "outcome" && r.masked);
    expect(outcomes.length).toBeGreaterThan(0);
    expect(outcomes.some((o) => o.masked.columns["public.customers.email"] > 0)).toBe(true);
    expect(outcomes.some((o) => o.masked.detectors.email > 0)).toBe(true);
    // rows changed, and the bytes the client was sent
    expect(outcomes.filter((o) => !(o.masked.rows <= o.rows && (o.rows === 0 || o.bytes > 0))).map((o) => JSON.stringify(o))).toEqual([]);
    expect(outcomes.some((o) => o.masked.rows > 0 && o.bytes > 0)).toBe(true);
    const commands = records.filter((r) => r.type === "command" && r.masked);
    expect(commands.length).toBeGreaterThan(0);
  });
});

describe("a mask the gateway cannot apply refuses the statement", () => {
  test("hmac without mask.hmac_key: refused with the reason, nothing runs unmasked", async () => {
    const other = await startTestGateway(db, {
      config: { policy: { data: { agate: { config: { mask: { columns: ["customers.email:hmac"], detectors: [] } } } } } },
    });
    try {
      const out = await psql(other.url(), "SELECT email FROM customers");
      expect(out.code).not.toBe(0);
      expect(out.stdout).toBe("");
      expect(out.stderr).toContain("agate.mask.invalid");
      expect(out.stderr).toContain("no mask.hmac_key configured");
    } finally {
      await other.close();
    }
  });
});
