/**
 * COPY … TO STDOUT under masks, end to end (real PostgreSQL, psql, porsager,
 * psycopg): binary COPY is masked field by field, not refused; text and CSV
 * COPY under column rules mask the covered columns by position. With nothing
 * to mask the bytes are exactly PostgreSQL's; masked binary output still
 * loads with COPY … FROM STDIN (FORMAT binary), holding the masked values.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { API_KEY, psql, sh, startTestGateway, USER, type TestGateway } from "./helpers/gateway.ts";
import { startPostgres, type TestPostgres } from "./helpers/postgres.ts";
import { PSYCOPG_PYTHON } from "./helpers/psycopg.ts";
import { Bind, errorOf, Execute, Flush, Parse, Query, rawSession, Sync, type BackendMessage } from "./helpers/wire.ts";

let db: TestPostgres;
let gw: TestGateway;
const dir = mkdtempSync(join(tmpdir(), "agate-copy-"));

const EMAIL = "ada.lovelace@example.org";
const CARD = "4111 1111 1111 1111";
const TOKEN = "ghp_" + "x7Kq2mZ9pL4vR8sT1wY6uE3oI5aD0fGhJkLz";
const RAW = [EMAIL, CARD, TOKEN, "4111111111111111", "grace.hopper@example.com"];

function noRaw(bytes: Buffer | string): void {
  const text = typeof bytes === "string" ? bytes : bytes.toString("latin1");
  expect(RAW.filter((r) => text.includes(r))).toEqual([]);
}

beforeAll(async () => {
  db = await startPostgres();
  await db.psql(`
    CREATE TABLE people (id int, name text, email text, card text, note text, total numeric, tags text[], profile jsonb);
    INSERT INTO people VALUES
      (1, 'Ada', '${EMAIL}', '${CARD}', 'token ${TOKEN} here', 12.5, ARRAY['x', 'mail grace.hopper@example.com'], '{"k": "${TOKEN}"}'),
      (2, 'Bob', 'bob@example.net', '5500 0000 0000 0004', E'tab\\there, "quoted", back\\\\slash', NULL, '{}', '{"n": 2}');
    CREATE TABLE people_copy (LIKE people);
    CREATE TABLE clean (id int, name text, at timestamptz, v float8, j jsonb, b bytea, n numeric, arr int[]);
    INSERT INTO clean SELECT i, 'name ' || i, '2026-01-01'::timestamptz + i * interval '1 hour', i / 3.0, jsonb_build_object('i', i), decode(lpad(to_hex(i), 8, '0'), 'hex'), i * 1.25, ARRAY[i, i + 1]
      FROM generate_series(1, 500) i;
    GRANT ALL ON ALL TABLES IN SCHEMA public TO app_scram;
  `);
  gw = await startTestGateway(db, {
    config: { policy: { data: { agate: { config: { mask: { columns: ["public.people.email", "people.card:partial"], detectors: ["*"] } } } } } },
  });
}, 120_000);

afterAll(async () => {
  await gw?.close();
  await db?.stop();
});

/** `\copy … to` a file through `url`; the file's bytes. */
async function copyOut(url: string, what: string, options: string): Promise<Buffer> {
  const file = join(dir, `out-${Math.random().toString(36).slice(2)}`);
  const out = await psql(url, `\\copy ${what} to '${file}' with (${options})`);
  expect(out.stderr).toBe("");
  expect(out.code).toBe(0);
  return readFileSync(file);
}

/** Load binary COPY data into people_copy directly on PostgreSQL; its rows. */
async function loadBinary(data: Buffer): Promise<string> {
  const file = join(dir, `in-${Math.random().toString(36).slice(2)}`);
  await Bun.write(file, data);
  await db.psql("TRUNCATE people_copy");
  const load = await psql(db.url(), `\\copy people_copy from '${file}' with (format binary)`);
  expect(load.stderr).toBe("");
  return db.psql("SELECT id, name, email, card, note, total, tags, profile FROM people_copy ORDER BY id");
}

/** A COPY … TO STDOUT read through porsager's .readable(): its bytes. */
async function readCopy(s: postgres.Sql | postgres.TransactionSql, text: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of await s.unsafe(text).readable()) chunks.push(Buffer.from(c));
  return Buffer.concat(chunks);
}

describe("binary COPY … TO is masked, not refused", () => {
  test("psql \\copy in binary with nothing to mask is byte for byte PostgreSQL's", async () => {
    const direct = await copyOut(db.url("app_scram"), "clean", "format binary");
    const through = await copyOut(gw.url(), "clean", "format binary");
    expect(through.length).toBeGreaterThan(500 * 20);
    expect(through.equals(direct)).toBe(true);
    const query = "(SELECT id, name, at, v, j, b, n, arr FROM clean WHERE id % 7 = 0)";
    expect((await copyOut(gw.url(), query, "format binary")).equals(await copyOut(db.url("app_scram"), query, "format binary"))).toBe(true);
  });

  test("psql \\copy in binary masks covered columns and planted secrets, and the output loads into a table of the same shape", async () => {
    for (const what of ["people", "(SELECT * FROM people)", "people (id, name, email, card, note, total, tags, profile)"]) {
      const data = await copyOut(gw.url(), what, "format binary");
      noRaw(data);
      const rows = await loadBinary(data);
      noRaw(rows);
      const [ada, bob] = rows.trim().split("\n");
      expect(ada).toContain("1|Ada|[REDACTED:email]|");
      expect(ada).toContain("|**** **** **** 1111|");
      expect(ada).toContain("[REDACTED:github_token]");
      expect(ada).toContain("|12.5|");
      // the elements of a text[] are masked in place, in its binary form
      expect(ada).toContain(`|12.5|{x,"mail [REDACTED:email]"}|{"k": "[REDACTED:github_token]"}`);
      expect(bob).toBe(`2|Bob|[REDACTED:email]|**** **** **** 0004|tab\there, "quoted", back\\slash||{}|{"n": 2}`);
    }
  });

  test("porsager reads binary COPY of a query through .readable(): unmasked bytes are PostgreSQL's, masked ones loadable", async () => {
    const read = async (url: string, text: string) => {
      const s = postgres(url, { max: 1 });
      try {
        return await readCopy(s, text);
      } finally {
        await s.end();
      }
    };
    const q = "COPY (SELECT * FROM clean ORDER BY id) TO STDOUT (FORMAT binary)";
    expect((await read(gw.url(), q)).equals(await read(db.url("app_scram"), q))).toBe(true);
    const masked = await read(gw.url(), "COPY people TO STDOUT (FORMAT binary)");
    noRaw(masked);
    expect(await loadBinary(masked)).toContain("1|Ada|[REDACTED:email]|");
  });

  // psycopg comes from scripts/setup.sh (a venv in $AGATE_TOOLS/py), as everywhere in the suite
  test("psycopg copies out in binary through agate", async () => {
    const script = `
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    with conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE scratch (id int, note text, at date)")
        cur.execute("INSERT INTO scratch VALUES (1, 'plain', '2026-02-03'), (2, 'key ${TOKEN}', NULL)")
        with cur.copy("COPY scratch TO STDOUT (FORMAT binary)") as copy:
            copy.set_types(["int4", "text", "date"])
            for row in copy.rows():
                print(repr(row))
        with cur.copy("COPY (SELECT id, email FROM people ORDER BY id) TO STDOUT (FORMAT binary)") as copy:
            copy.set_types(["int4", "text"])
            for row in copy.rows():
                print(repr(row))
`;
    const out = await sh([PSYCOPG_PYTHON, "-c", script, gw.url()]);
    expect(out.stderr).toBe("");
    expect(out.stdout).toBe(
      ["(1, 'plain', datetime.date(2026, 2, 3))", "(2, 'key [REDACTED:github_token]', None)", "(1, '[REDACTED:email]')", "(2, '[REDACTED:email]')", ""].join("\n"),
    );
  });

  test("psycopg, in its usual way (a table made in the open transaction), under the default policy's detectors", async () => {
    const plain = await startTestGateway(db);
    try {
      const script = `
import sys, psycopg
with psycopg.connect(sys.argv[1]) as conn:
    cur = conn.cursor()
    cur.execute("CREATE TEMP TABLE copy_tx (id int, data text, n numeric, at timestamptz)")
    cur.execute("INSERT INTO copy_tx VALUES (1, 'hello', 1.5, '2026-01-01 00:00+00'), (2, 'ghp_x7Kq2mZ9pL4vR8sT1wY6uE3oI5aD0fGhJkLz', NULL, NULL)")
    with cur.copy("COPY copy_tx TO STDOUT (FORMAT binary)") as copy:
        copy.set_types(["int4", "text", "numeric", "timestamptz"])
        for row in copy.rows():
            print(repr(row))
    conn.rollback()
`;
      const out = await sh([PSYCOPG_PYTHON, "-c", script, plain.url()]);
      expect(out.stderr).toBe("");
      expect(out.stdout).toBe(
        ["(1, 'hello', Decimal('1.5'), datetime.datetime(2026, 1, 1, 0, 0, tzinfo=zoneinfo.ZoneInfo(key='Etc/UTC')))", "(2, '[REDACTED:github_token]', None, None)", ""].join("\n"),
      );
    } finally {
      await plain.close();
    }
  });
});

describe("COPY … TO through every protocol path", () => {
  // Every COPY here is described first and masked field by field (binary, or text and CSV under the column rules).
  // Control characters in a literal: libpg-query's scanner wrote them raw into its JSON, so such a COPY could not be split.
  const COPIES = [
    "COPY people TO STDOUT (FORMAT binary)",
    "COPY people (id, email) TO STDOUT (FORMAT binary)",
    "COPY people (id, email) TO STDOUT",
    "COPY people (id, email, card) TO STDOUT (FORMAT csv, HEADER)",
    "COPY (SELECT id, email FROM people ORDER BY id) TO STDOUT (FORMAT binary)",
    "COPY (SELECT id, email FROM people ORDER BY id) TO STDOUT (FORMAT csv)",
    "COPY (SELECT id, E'\x01' || email AS email, '\x02\x1f' AS c FROM people ORDER BY id) TO STDOUT (FORMAT binary)",
    "COPY (SELECT id, '\x01' || email AS email FROM people ORDER BY id) TO STDOUT",
    "COPY (VALUES (1, 'x'), (2, NULL)) TO STDOUT (FORMAT binary)",
  ];

  /** One COPY's answer: CopyOutResponse, its CopyData, CopyDone, CommandComplete COPY 2; the data, masked. */
  function expectCopied(messages: BackendMessage[], text: string): Buffer {
    expect(messages.map((m) => m.type).join("")).toMatch(/^(?:1|2)*Hd+cC/);
    expect(messages.find((m) => m.type === "C")!.body.toString("latin1")).toBe("COPY 2\0");
    const data = Buffer.concat(messages.filter((m) => m.type === "d").map((m) => m.body));
    noRaw(data);
    if (text.includes("email")) expect(data.toString("latin1")).toContain("[REDACTED:email]");
    return data;
  }

  test("simple, extended, pipelined and after Sync, Flush: every COPY is masked and the session goes on", async () => {
    const s = await rawSession(gw.port, { user: USER, password: API_KEY });
    try {
      for (const text of COPIES) {
        s.send(Query(text));
        const expected = expectCopied(await s.untilReady(), text);
        // the extended protocol, the COPY in a batch of its own: the same bytes
        s.send([Parse(text), Bind(), Execute(), Sync]);
        expect(expectCopied(await s.untilReady(), text).equals(expected)).toBe(true);
        // libpq's pipelines end in Sync, Flush: the Query after them stands in no batch
        s.send([Parse("SELECT 1"), Bind(), Execute(), Sync, Flush, Query(text)]);
        const after = await s.untilReady(2);
        expect(expectCopied(after.slice(after.findIndex((m) => m.type === "Z") + 1), text).equals(expected)).toBe(true);
      }
      // two COPYs pipelined in one batch
      s.send([Parse(COPIES[1]!), Bind(), Execute(), Parse(COPIES[4]!), Bind(), Execute(), Sync]);
      const both = await s.untilReady();
      const second = both.findIndex((m) => m.type === "C") + 1;
      expectCopied(both.slice(0, second), COPIES[1]!);
      expectCopied(both.slice(second), COPIES[4]!);
      expect(s.closed).toBe(false);
    } finally {
      s.close();
    }
  });

  test("a COPY agate cannot describe is refused before it runs, and the session goes on", async () => {
    const s = await rawSession(gw.port, { user: USER, password: API_KEY });
    try {
      // a Unicode-escaped name, which PostgreSQL reads and agate does not split
      s.send(Query(`COPY U&"peopl\\0065" TO STDOUT (FORMAT binary)`));
      const refused = await s.untilReady();
      expect(refused.map((m) => m.type).join("")).toBe("EZ");
      expect(errorOf(refused[0]!).code).toBe("42501");
      s.send([Parse(`COPY U&"peopl\\0065" (id) TO STDOUT (FORMAT binary)`), Bind(), Execute(), Sync]);
      const inBatch = await s.untilReady();
      expect(inBatch.map((m) => m.type).join("")).toBe("12EZ");
      expect(errorOf(inBatch[2]!).code).toBe("42501");
      // a Query inside an open extended batch cannot be described first (agate's Sync would end the batch)
      s.send([Parse("SELECT 1"), Query(COPIES[0]!)]);
      const open = await s.untilReady();
      expect(open.map((m) => m.type).join("")).toBe("1EZ");
      expect(errorOf(open[1]!).message).toContain("unfinished extended-protocol batch");
      s.send(Query("SELECT 1"));
      expect((await s.untilReady()).map((m) => m.type).join("")).toBe("TDCZ");
    } finally {
      s.close();
    }
  });

  test.skipIf(!existsSync(PSYCOPG_PYTHON))("psycopg: binary and text COPY of a query holding every character, and COPY after executemany's pipeline, as direct", async () => {
    const script = `
import sys, psycopg
from psycopg import sql
with psycopg.connect(sys.argv[1]) as conn:
    chars = list(map(chr, range(1, 256)))
    conn.execute("set client_encoding to utf8")
    for fmt in ("binary", "text"):
        query = sql.SQL("copy (select unnest({}::text[])) to stdout (format {})").format(chars, sql.SQL(fmt))
        with conn.cursor().copy(query) as copy:
            copy.set_types(["text"])
            rows = [r[0] for r in copy.rows()]
        print(fmt, rows == chars)
    conn.commit()
    conn.cursor().executemany("insert into across values (%s, %s)", [(1, "a"), (2, "${TOKEN}")])
    with conn.cursor().copy("copy across to stdout (format binary)") as copy:
        copy.set_types(["int4", "text"])
        print(list(copy.rows()))
    conn.rollback()
`;
    // made beforehand (DDL is held for approval under the default policy), so that agate's catalog sees its columns' origins
    await db.psql("CREATE TABLE across (id int, note text); GRANT ALL ON across TO app_scram");
    const direct = await sh([PSYCOPG_PYTHON, "-c", script, db.url("app_scram")]);
    expect(direct.stderr).toBe("");
    const out = await sh([PSYCOPG_PYTHON, "-c", script, gw.url()]);
    expect(out.stderr).toBe("");
    expect(out.stdout).toBe(direct.stdout.replace(TOKEN, "[REDACTED:github_token]"));
    expect(out.stdout).toBe("binary True\ntext True\n[(1, 'a'), (2, '[REDACTED:github_token]')]\n");
  });
});

describe("a COPY whose source cannot be described", () => {
  test("fails as PostgreSQL fails it, in a simple query and in the extended protocol, and the session goes on; unknown origins mask whole", async () => {
    const simple = await psql(gw.url(), "COPY missing TO STDOUT (FORMAT binary)");
    expect(simple.stderr).toContain('relation "missing" does not exist');
    const s = postgres(gw.url(), { max: 1 });
    try {
      await s.begin(async (tx) => {
        await tx`CREATE TEMP TABLE t_in_tx (id int, note text)`;
        await tx`INSERT INTO t_in_tx VALUES (1, ${"key " + TOKEN})`;
        const data = await readCopy(tx, "COPY t_in_tx TO STDOUT (FORMAT binary)");
        noRaw(data);
        // a table created in the open transaction is described, but agate's catalog cannot see its columns' origins yet: under column rules it is masked whole
        expect(data.toString("latin1")).toContain("[REDACTED:note]");
      });
      const err = await s.unsafe("COPY missing TO STDOUT (FORMAT binary)").readable().then(
        () => undefined,
        (e: Error) => e,
      );
      expect(String(err)).toContain('relation "missing" does not exist');
      // a COPY of what an earlier statement of the same query creates cannot be described first: refused, nothing of the query runs
      const multi = await psql(gw.url(), "CREATE TEMP TABLE made_here (note text); COPY made_here TO STDOUT (FORMAT binary)");
      expect(multi.stderr).toContain("could not describe before the query ran");
      expect(multi.stdout).toBe("");
      expect(await s`SELECT 1 AS one`).toEqual([{ one: 1 }] as never);
    } finally {
      await s.end();
    }
  });
});

describe("text and CSV COPY … TO under column rules", () => {
  test("text format: covered columns masked by position, escapes kept, detectors on the rest", async () => {
    const out = await psql(gw.url(), "COPY people (id, email, card, note) TO STDOUT");
    expect(out.stderr).toBe("");
    noRaw(out.stdout);
    expect(out.stdout.split("\n")).toEqual([
      "1\t[REDACTED:email]\t**** **** **** 1111\ttoken [REDACTED:github_token] here",
      '2\t[REDACTED:email]\t**** **** **** 0004\ttab\\there, "quoted", back\\\\slash',
      "",
    ]);
  });

  test("CSV with a header: covered columns masked and quoted, the header passes", async () => {
    const out = await psql(gw.url(), "COPY (SELECT id, email, note, total FROM people ORDER BY id) TO STDOUT (FORMAT csv, HEADER)");
    expect(out.stderr).toBe("");
    expect(out.stdout.split("\n")).toEqual(["id,email,note,total", '1,"[REDACTED:email]","token [REDACTED:github_token] here",12.5', '2,"[REDACTED:email]","tab\there, ""quoted"", back\\slash",', ""]);
  });

  test("a COPY whose syntax agate does not split (DELIMITER, NULL …) is refused under column rules", async () => {
    const out = await psql(gw.url(), "COPY people TO STDOUT (DELIMITER '|')");
    expect(out.code).not.toBe(0);
    expect(out.stderr).toContain("cannot be masked by column");
    // nothing of it ran
    expect(out.stdout).toBe("");
  });

  test("a table with generated columns needs a column list; with one, its COPY is masked", async () => {
    await db.psql("CREATE TABLE gen (id int, email text, twice int GENERATED ALWAYS AS (id * 2) STORED); INSERT INTO gen VALUES (1, 'x@example.com'); GRANT ALL ON gen TO app_scram");
    const listed = await psql(gw.url(), "COPY gen (id, email) TO STDOUT");
    expect(listed.stdout).toBe("1\t[REDACTED:email]\n");
  });
});

describe("binary values of types read through the catalog", () => {
  const COLUMNS = "id, moods, dmoods, h, r, fr, mr, dr";
  beforeAll(async () => {
    await db.psql(`
      CREATE EXTENSION hstore;
      CREATE TYPE mood AS ENUM ('ok', 'meh', 'key ${TOKEN}');
      CREATE DOMAIN moods AS mood[];
      CREATE TYPE textrange AS RANGE (subtype = text);
      CREATE TYPE floatrange AS RANGE (subtype = float8);
      CREATE DOMAIN label AS text;
      CREATE TABLE kinds (id int, moods mood[], dmoods moods, h hstore, r textrange, fr floatrange, mr textmultirange, dr label[]);
      INSERT INTO kinds VALUES
        (1, '{ok,meh,NULL}', '{meh}', 'a=>1, "b c"=>NULL', '[apple,"pear tree")', '[1.5,2.25)', '{[a,b),[x,z]}', '{one,two}'),
        (2, ARRAY['ok', 'key ${TOKEN}']::mood[], ARRAY['key ${TOKEN}']::moods, hstore('k', 'token ${TOKEN}'), textrange('a', 'mail ${EMAIL}'), '[0,1)', textmultirange(textrange('${EMAIL}', NULL)), ARRAY['${EMAIL}']::label[]);
      GRANT ALL ON kinds TO app_scram;
    `);
  });

  /** The rows of `kinds` in binary through node-postgres: each value's raw bytes (null for NULL). */
  async function binaryRows(url: string): Promise<(Buffer | null)[][]> {
    const pg = (await import("pg")).default;
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      const r = await client.query({ text: `SELECT ${COLUMNS} FROM kinds ORDER BY id`, queryMode: "extended", binary: true, rowMode: "array", types: { getTypeParser: () => (v: unknown) => v } } as never) as unknown as { fields: { format: string }[]; rows: unknown[][] };
      expect(r.fields.every((f) => f.format === "binary")).toBe(true);
      return r.rows.map((row) => row.map((v) => (v === null ? null : Buffer.from(v as Buffer))));
    } finally {
      await client.end();
    }
  }

  test("enum arrays, domains over arrays, hstore, user-defined ranges and multiranges: clean values intact, planted secrets masked", async () => {
    const direct = await binaryRows(db.url("app_scram"));
    const through = await binaryRows(gw.url());
    // every clean value is PostgreSQL's own bytes, not NULL
    expect(direct[0]!.every((v) => v !== null)).toBe(true);
    expect(through[0]).toEqual(direct[0]!);
    expect(through[1]![0]).toEqual(direct[1]![0]!);
    expect(through[1]![5]).toEqual(direct[1]![5]!);
    // an hstore is masked inside, in its binary form
    expect(through[1]![3]!.toString("latin1")).toContain("token [REDACTED:github_token]");
    // a value holding a secret that cannot be written back into its type (an enum label, a range bound, a domain's element) is NULL
    expect([1, 2, 4, 6, 7].map((i) => through[1]![i])).toEqual([null, null, null, null, null]);
    for (const v of through.flat()) if (v) noRaw(v);
  });

  test("the same in binary COPY, which loads back", async () => {
    const direct = await copyOut(db.url("app_scram"), `(SELECT ${COLUMNS} FROM kinds WHERE id = 1)`, "format binary");
    expect((await copyOut(gw.url(), `(SELECT ${COLUMNS} FROM kinds WHERE id = 1)`, "format binary")).equals(direct)).toBe(true);
    const masked = await copyOut(gw.url(), "kinds", "format binary");
    noRaw(masked);
    await db.psql("CREATE TABLE kinds_copy (LIKE kinds)");
    const file = join(dir, "kinds");
    await Bun.write(file, masked);
    expect((await psql(db.url(), `\\copy kinds_copy from '${file}' with (format binary)`)).stderr).toBe("");
    expect(await db.psql("SELECT id, moods, h, fr, mr FROM kinds_copy ORDER BY id")).toBe('1|{ok,meh,NULL}|"a"=>"1", "b c"=>NULL|[1.5,2.25)|{[a,b),[x,z]}\n2||"k"=>"token [REDACTED:github_token]"|[0,1)|\n');
  });
});
