/**
 * The planted-secret corpus (helpers/mask-corpus.ts) end to end: real
 * PostgreSQL, a gateway whose policy data runs every detector ("*", style
 * redact) and no column rule, and three real clients reading through it:
 *
 *   psql          simple protocol, text format: plain, with FETCH_COUNT (a
 *                 cursor), --csv, COPY TO STDOUT (text and CSV), notices
 *   porsager      extended protocol, text format: unnamed and prepared
 *                 statements, a cursor, errors, notices, notifications
 *   node-postgres binary result format (binary: true, and the extended
 *                 protocol: without it node-postgres sends a simple Query,
 *                 whose results are text)
 *
 * The corpus is loaded straight into PostgreSQL (not through agate), as
 * narrow varchar/char columns holding the value itself, text in every
 * wrapper (plain, log line, JSON, CSV, ANSI terminal output, asciicast),
 * jsonb and json documents, text[] arrays, bytea, numeric/bigint (card
 * numbers), inet (addresses), and wide text values of tens to hundreds of
 * KB (over 100 KB for one) whose planted values sit at many offsets. Between the gateway and
 * PostgreSQL sits a proxy that hands the server's bytes on in pieces of
 * 1 byte to 4 KB, so messages (and the values in them) are split at many
 * chunk boundaries when the gateway reads them.
 *
 * Everything each client received (rows flattened to their strings, bytes
 * as Latin-1, psql's output and stderr) must hold none of the raw values,
 * nor may the bytea hex values in it, decoded; neither may any file of the
 * audit directory (read as Latin-1), after statements with planted values
 * in their text and parameters went through agate. Look-alikes (numbers
 * failing Luhn, bad IBANs …) come back through agate exactly as PostgreSQL
 * sends them, to each client. A failure lists each value found (by
 * detector and plant number) with a short excerpt around it.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readdirSync, readFileSync, statSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import pg from "pg";
import postgres from "postgres";
import { readRecords } from "../src/audit/index.ts";
import { ALL_DETECTORS } from "../src/mask/index.ts";
import { sh, startTestGateway, type TestGateway } from "./helpers/gateway.ts";
import { json as jsonText, lookalikes, type Plant, plants, prng, wrappers } from "./helpers/mask-corpus.ts";
import { startPostgres, type TestPostgres } from "./helpers/postgres.ts";

let db: TestPostgres;
let gw: TestGateway;
let proxy: ChunkingProxy;
/** The superuser, straight to PostgreSQL (loading, and the reference for look-alikes). */
let su: postgres.Sql;

const MASK = { policy: { data: { agate: { config: { mask: { detectors: ["*"], columns: [] } } } } } };

// ---------------------------------------------------------------------------
// what must never come out

interface Needle {
  text: string;
  /** Which plant it belongs to, for the failure message. */
  of: string;
}
const needles: Needle[] = [];
const needleSet = new Set<string>();
function forbid(text: string, of: string): void {
  if (text.length === 0 || needleSet.has(text)) return;
  needleSet.add(text);
  needles.push({ text, of });
}
plants.forEach((p, i) => {
  const of = `${p.detector}#${i}`;
  // the value, its other parts (a card's bare digits, a key's body lines), and each as a JSON string writes it
  for (const s of [p.raw, ...(p.also ?? []), ...(p.detector === "card" ? [p.raw.replace(/\D/g, "")] : [])]) {
    forbid(s, of);
    forbid(jsonText(s), of);
  }
});

/** Each needle found in `text`, with a short excerpt around it; at most 20 listed. */
function leaks(text: string): string[] {
  const found: string[] = [];
  for (const n of needles) {
    const at = text.indexOf(n.text);
    if (at < 0) continue;
    const excerpt = text.slice(Math.max(0, at - 50), Math.min(text.length, at + n.text.length + 30));
    found.push(`${n.of} ${JSON.stringify(n.text.length > 60 ? n.text.slice(0, 60) + "…" : n.text)} in …${JSON.stringify(excerpt)}…`);
  }
  return found.length > 20 ? [...found.slice(0, 20), `… and ${found.length - 20} more`] : found;
}

/** Every bytea hex value in `text` (`\x…`; `\\x…` in COPY), decoded: agate masks bytea by its content. */
function hexDecoded(text: string): string {
  let out = "";
  for (const m of text.matchAll(/\\x((?:[0-9a-fA-F]{2})+)/g)) out += Buffer.from(m[1]!, "hex").toString("latin1") + "\n";
  return out;
}

/** The leaks one test finds, by what was scanned; asserted empty at the end so one run lists them all. */
class Scan {
  private readonly found: Record<string, string[]> = {};
  /** Scan what `label` received, and the bytea hex values in it decoded. */
  add(label: string, text: string): void {
    const l = leaks(text);
    if (l.length > 0) this.found[label] = l;
    const h = leaks(hexDecoded(text));
    if (h.length > 0) this.found[`${label}, in bytea hex`] = h;
  }
  clean(): void {
    expect(this.found).toEqual({});
  }
}

/** Every string a driver handed back, in order: strings as they are, bytes as Latin-1, numbers and dates as text, keys too. */
function flatten(v: unknown, out: string[] = []): string[] {
  if (v === null || v === undefined) return out;
  if (typeof v === "string") out.push(v);
  else if (typeof v === "number" || typeof v === "bigint" || typeof v === "boolean") out.push(String(v));
  else if (v instanceof Uint8Array) out.push(Buffer.from(v).toString("latin1"));
  else if (v instanceof Date) out.push(Number.isNaN(v.getTime()) ? String(v) : v.toISOString());
  else if (Array.isArray(v)) for (const x of v) flatten(x, out);
  else if (typeof v === "object")
    for (const [k, x] of Object.entries(v)) {
      out.push(k);
      flatten(x, out);
    }
  else out.push(String(v));
  return out;
}
const flat = (v: unknown) => flatten(v).join("\n");

/** How many `[REDACTED:<detector>]` there are per detector. */
function redactions(text: string): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const m of text.matchAll(/\[REDACTED:([a-z0-9_]+)\]/g)) counts[m[1]!] = (counts[m[1]!] ?? 0) + 1;
  return counts;
}
/** Detectors with no replacement in `text`. */
function unseen(text: string): string[] {
  const c = redactions(text);
  return ALL_DETECTORS.filter((d) => !c[d]);
}

// ---------------------------------------------------------------------------
// the corpus as rows

const sqlLit = (s: string) => `'${s.replaceAll("'", "''")}'`;
const byName = (name: string) => wrappers.find((w) => w.name === name)!;
/** Detectors whose values are secrets on their own (the others need their context: "ssn=", "password=", a URL …). */
const STANDALONE = new Set(["email", "card", "iban", "ipv4", "ipv6", "aws_access_key", "github_token", "gitlab_token", "slack_token", "jwt", "pem_private_key"]);
/** The narrowest text that is still a secret: the value itself, or its snippet when the value needs context. */
const narrow = (p: Plant) => (STANDALONE.has(p.detector) || p.snippet === p.raw ? p.raw : p.snippet);

const PLANTED_COLUMNS =
  "id int, detector text, v varchar(4000), c char(24), snippet text, doc jsonb, doc_json json, line text, term text, arr text[], b bytea, n numeric, bi bigint, ip inet";
const plantedRows = plants.map((p, i) => {
  const v = narrow(p);
  const digits = p.detector === "card" ? p.raw.replace(/\D/g, "") : null;
  return {
    id: i,
    detector: p.detector,
    v,
    c: v.length <= 24 ? v : null,
    snippet: p.snippet,
    doc: JSON.stringify({ k: v, snippet: p.snippet, nested: { list: [p.snippet, i], at: "2024-01-15" } }),
    doc_json: byName("json").wrap(p.snippet),
    line: byName("csv").wrap(p.snippet),
    term: byName("ansi").wrap(p.snippet),
    arr: [v, p.snippet, byName("log").wrap(p.snippet)],
    b: Buffer.from(p.snippet).toString("hex"),
    n: digits,
    bi: digits,
    ip: p.detector === "ipv4" || p.detector === "ipv6" ? p.raw : null,
  };
});
const wrappedRows = plants.flatMap((p, i) =>
  wrappers.map((w, k) => {
    const t = w.wrap(p.snippet);
    let j: string;
    try {
      JSON.parse(t);
      j = t;
    } catch {
      j = JSON.stringify({ k: t });
    }
    return { id: i * wrappers.length + k, plant: i, wrapper: w.name, t, j };
  }),
);

/**
 * Wide values: every plant, each in a wrapper that rotates with the row,
 * after a filler whose length varies, so the planted values fall at many
 * offsets of the stream; and one value with every plant in every wrapper.
 */
const WIDE_ROWS = 24;
const filler = (n: number) => "lorem ipsum dolor sit amet, ".repeat(Math.ceil(n / 28)).slice(0, n);
const wideRows = Array.from({ length: WIDE_ROWS }, (_, k) => ({
  id: k,
  body: filler((k * 977) % 4096) + "\n" + plants.map((p, i) => wrappers[(i + k) % wrappers.length]!.wrap(p.snippet)).join("\n") + "\n" + filler(k * 13),
}));
wideRows.push({ id: WIDE_ROWS, body: wrappers.map((w) => plants.map((p) => w.wrap(p.snippet)).join("\n")).join("\n") });

/** Look-alikes in the wrappers mask-detectors checks them in (plain, log, JSON, CSV). */
const LOOK_WRAPPERS = wrappers.slice(0, 4);
const LOOK_COLUMNS = "id int, w text, t text, v varchar(200), j jsonb, arr text[], b bytea, n numeric, bi bigint";
const lookRows = lookalikes.flatMap((l, i) =>
  LOOK_WRAPPERS.map((w, k) => {
    const t = w.wrap(l);
    const num = /(?<![\d.])\d{9,18}(?![\d.])/.exec(l)?.[0] ?? null;
    return { id: i * LOOK_WRAPPERS.length + k, w: w.name, t, v: l, j: JSON.stringify({ k: l, t }), arr: [l, t], b: Buffer.from(t).toString("hex"), n: num, bi: num };
  }),
);
const lookWideRows = Array.from({ length: 8 }, (_, k) => ({
  id: k,
  body: filler((k * 1231) % 4096) + "\n" + Array.from({ length: 40 }, (_, r) => lookalikes.map((l) => LOOK_WRAPPERS[(r + k) % 4]!.wrap(l)).join("\n")).join("\n"),
}));

/** INSERT … SELECT from one jsonb parameter: the rows in one round trip, each column cast from text. */
async function load(table: string, columns: string, rows: Record<string, unknown>[]): Promise<void> {
  const defs = columns.split(", ").map((c) => c.split(" ") as [string, string]);
  const asText = defs.map(([n, t]) => `${n} ${t.endsWith("[]") ? "text[]" : t === "int" ? "int" : "text"}`).join(", ");
  const select = defs.map(([n, t]) => (t === "bytea" ? `decode(${n}, 'hex')` : t === "int" || t.endsWith("[]") ? n : `${n}::${t}`)).join(", ");
  await su.unsafe(`CREATE TABLE ${table} (${columns}, PRIMARY KEY (id))`);
  await su.unsafe(`INSERT INTO ${table} SELECT ${select} FROM jsonb_to_recordset($1::text::jsonb) AS x(${asText})`, [JSON.stringify(rows)]);
  const [count] = await su.unsafe(`SELECT count(*)::int AS n FROM ${table}`);
  expect(count?.n).toBe(rows.length);
}

// ---------------------------------------------------------------------------
// a proxy that splits what PostgreSQL sends into small pieces

interface ChunkingProxy {
  port: number;
  /** Pieces handed on so far. */
  pieces(): number;
  close(): Promise<void>;
}

/**
 * Between the gateway and PostgreSQL: what the client side sends passes
 * as it comes; what the server sends is handed on in pieces of 1 to 64
 * bytes half the time and up to 4 KB otherwise (from a seeded PRNG), one
 * piece per turn of the event loop, so the gateway mostly reads them one
 * by one.
 */
async function chunkingProxy(target: { host: string; port: number }, seed: number): Promise<ChunkingProxy> {
  const r = prng(seed);
  const size = () => (r() < 0.5 ? 1 + Math.floor(r() * 64) : 64 + Math.floor(r() * 4033));
  const sockets = new Set<net.Socket>();
  let pieces = 0;
  const server = net.createServer((down) => {
    const up = net.connect(target.port, target.host);
    for (const s of [down, up]) {
      sockets.add(s);
      s.setNoDelay(true);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {
        down.destroy();
        up.destroy();
      });
    }
    down.pipe(up);
    let chain = Promise.resolve();
    up.on("data", (d: Buffer) => {
      up.pause();
      chain = chain.then(async () => {
        for (let i = 0; i < d.length && !down.destroyed; ) {
          const n = size();
          pieces++;
          if (!down.write(d.subarray(i, i + n))) await new Promise((ok) => down.once("drain", ok));
          else await new Promise((ok) => setImmediate(ok));
          i += n;
        }
        up.resume();
      });
    });
    up.on("end", () => void chain.then(() => down.end()));
  });
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  return {
    port: (server.address() as net.AddressInfo).port,
    pieces: () => pieces,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((ok) => server.close(ok));
    },
  };
}

// ---------------------------------------------------------------------------

beforeAll(async () => {
  db = await startPostgres();
  su = postgres(db.url("postgres"), { max: 1, onnotice: () => {} });
  await load("planted", PLANTED_COLUMNS, plantedRows);
  await load("wrapped", "id int, plant int, wrapper text, t text, j jsonb", wrappedRows);
  await load("wide", "id int, body text", wideRows);
  await load("look", LOOK_COLUMNS, lookRows);
  await load("look_wide", "id int, body text", lookWideRows);
  await su.unsafe(`
    CREATE FUNCTION shout(i int) RETURNS int LANGUAGE plpgsql AS $$
      DECLARE s text; BEGIN SELECT snippet INTO s FROM planted WHERE id = i; RAISE NOTICE 'about %', s USING DETAIL = 'detail ' || s; RETURN i; END $$;
    CREATE FUNCTION fail(i int) RETURNS int LANGUAGE plpgsql AS $$
      DECLARE s text; BEGIN SELECT snippet INTO s FROM planted WHERE id = i; RAISE EXCEPTION 'failed on %', s USING DETAIL = 'detail ' || s, HINT = 'hint ' || s; END $$;
    CREATE TABLE sink (id serial PRIMARY KEY, v text, b bytea);
    GRANT SELECT ON ALL TABLES IN SCHEMA public TO app_scram;
    GRANT ALL ON sink, sink_id_seq TO app_scram;
  `);
  // the inet column prints addresses in PostgreSQL's own spelling ("2001:db8:85a3::8a2e:370:7334"): those are secrets too
  for (const { ip, id } of await su`SELECT host(ip) AS ip, id FROM planted WHERE ip IS NOT NULL`) forbid(ip, `${plants[id]!.detector}#${id} (inet)`);
  proxy = await chunkingProxy({ host: db.host, port: db.port }, 4242);
  gw = await startTestGateway({ ...db, port: proxy.port }, { config: MASK });
}, 120_000);

afterAll(async () => {
  await su?.end();
  await gw?.close();
  await proxy?.close();
  await db?.stop();
});

/** The queries every client reads the corpus with. */
const READS = [
  "SELECT * FROM planted ORDER BY id",
  "SELECT * FROM wrapped ORDER BY id",
  "SELECT * FROM wide ORDER BY id",
  // a whole row (a record), one computed value of ~120 KB, one jsonb array of every document
  "SELECT p AS whole FROM planted p ORDER BY id",
  "SELECT string_agg(t, E'\\n' ORDER BY id) AS everything FROM wrapped",
  "SELECT jsonb_agg(doc ORDER BY id) AS docs, json_agg(arr ORDER BY id) AS arrs FROM planted",
];

function psqlRun(url: string, queries: string[], flags: string[] = []) {
  return sh(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", url, ...flags, ...queries.flatMap((q) => ["-c", q])]);
}

/** The first line where `got` differs from `want`, both sides, shortened; "" when they are equal. */
function firstDiff(want: string, got: string): string {
  if (want === got) return "";
  const a = want.split("\n");
  const b = got.split("\n");
  const i = a.findIndex((l, k) => l !== b[k]);
  const at = i < 0 ? a.length : i;
  const short = (l: string | undefined) => JSON.stringify(l === undefined ? "(none)" : l.length > 300 ? l.slice(0, 300) + "…" : l);
  return `line ${at}: PostgreSQL ${short(a[at])}, through agate ${short(b[at])}`;
}

describe("the corpus is what it should be", () => {
  test("every detector is planted, and read straight from PostgreSQL every value is there", async () => {
    expect(new Set(plants.map((p) => p.detector))).toEqual(new Set(ALL_DETECTORS));
    let all = "";
    for (const q of READS.slice(0, 3)) all += flat(await su.unsafe(q)) + "\n";
    // without agate the scan finds every needle: it is not blind
    const missing = needles.filter((n) => !all.includes(n.text) && !n.of.endsWith("(inet)"));
    expect(missing.map((n) => `${n.of} ${JSON.stringify(n.text.slice(0, 60))}`)).toEqual([]);
    expect(wideRows.every((r) => r.body.length > 20_000)).toBe(true);
    expect(wideRows.at(-1)!.body.length).toBeGreaterThan(100_000);
  });
});

describe("nothing planted reaches a client", () => {
  test("psql: plain, with FETCH_COUNT (a cursor), --csv, COPY TO STDOUT, notices and errors", async () => {
    const scan = new Scan();
    const runs: Record<string, { code: number; stdout: string; stderr: string }> = {
      plain: await psqlRun(gw.url(), READS),
      "FETCH_COUNT=7": await psqlRun(gw.url(), READS.slice(0, 4), ["-v", "FETCH_COUNT=7"]),
      "--csv": await psqlRun(gw.url(), READS.slice(0, 3), ["--csv"]),
      "COPY TO STDOUT": await psqlRun(gw.url(), ["COPY planted TO STDOUT", "COPY wrapped TO STDOUT (FORMAT csv)", "COPY (SELECT * FROM wide ORDER BY id) TO STDOUT"]),
      notices: await psqlRun(gw.url(), ["SELECT count(shout(id)) FROM planted"]),
      // one error per plant, in one session (no ON_ERROR_STOP)
      errors: await sh(["psql", "-X", "-At", gw.url(), ...plants.flatMap((_, i) => ["-c", `SELECT fail(${i})`])]),
    };
    for (const [name, out] of Object.entries(runs)) {
      if (name !== "errors") expect({ name, code: out.code }).toEqual({ name, code: 0 });
      scan.add(`psql ${name}`, out.stdout + "\n" + out.stderr);
    }
    // the rows are there, masked, not dropped: every detector replaced something, and the text around it stayed
    expect(runs.plain!.stdout.split("\n").filter((l) => /^\d+\|/.test(l)).length).toBeGreaterThanOrEqual(plants.length + wrappedRows.length);
    expect(runs.plain!.stdout).toContain("status=200 dur=12ms");
    for (const name of ["plain", "COPY TO STDOUT"]) expect({ name, unseen: unseen(runs[name]!.stdout) }).toEqual({ name, unseen: [] });
    for (const name of ["notices", "errors"]) expect({ name, unseen: unseen(runs[name]!.stderr) }).toEqual({ name, unseen: [] });
    expect((runs.notices!.stderr.match(/NOTICE: {2}about /g) ?? []).length).toBe(plants.length);
    expect((runs.errors!.stderr.match(/ERROR: {2}failed on /g) ?? []).length).toBe(plants.length);
    expect(proxy.pieces()).toBeGreaterThan(1000);
    scan.clean();
  });

  test("porsager (extended protocol): unnamed and prepared statements, a cursor, errors, notices, notifications", async () => {
    const scan = new Scan();
    const notices: unknown[] = [];
    const s = postgres(gw.url(), { max: 1, onnotice: (n) => notices.push(n) });
    try {
      let rows = "";
      for (const q of READS) rows += flat(await s.unsafe(q)) + "\n";
      // prepared (named) statements, reused with parameters
      for (let i = 0; i < plants.length; i += 17) rows += flat(await s`SELECT * FROM planted WHERE id >= ${i} AND id < ${i + 17} ORDER BY id`) + "\n";
      // cursors, a few rows at a time
      await s.unsafe("SELECT * FROM wrapped ORDER BY id").cursor(13, (r) => {
        rows += flat(r) + "\n";
      });
      await s.unsafe("SELECT * FROM wide ORDER BY id").cursor(2, (r) => {
        rows += flat(r) + "\n";
      });
      scan.add("porsager rows", rows);
      expect(unseen(rows)).toEqual([]);
      expect(rows).toContain("status=200 dur=12ms");

      let errors = "";
      for (let i = 0; i < plants.length; i++) {
        const e = await s`SELECT fail(${i})`.catch((e) => e);
        expect(e).toBeInstanceOf(Error);
        errors += flat({ message: e.message, detail: e.detail, hint: e.hint, where: e.where }) + "\n";
      }
      scan.add("porsager errors", errors);
      expect(unseen(errors)).toEqual([]);

      await s`SELECT count(shout(id)) FROM planted`;
      expect(notices.length).toBe(plants.length);
      scan.add("porsager notices", flat(notices));
      expect(unseen(flat(notices))).toEqual([]);

      // notifications: the payloads come from PostgreSQL itself (pg_notify in a direct session)
      const payloads: string[] = [];
      await s.listen("corpus", (x) => payloads.push(x));
      await su`SELECT count(pg_notify('corpus', snippet)) FROM planted`;
      for (let k = 0; k < 400 && payloads.length < plants.length; k++) await Bun.sleep(25);
      expect(payloads.length).toBe(plants.length);
      scan.add("porsager notifications", payloads.join("\n"));
      expect(unseen(payloads.join("\n"))).toEqual([]);
    } finally {
      await s.end();
    }
    scan.clean();
  });

  test("node-postgres, binary result format", async () => {
    const scan = new Scan();
    const c = new pg.Client({ connectionString: gw.url(), binary: true } as pg.ClientConfig);
    await c.connect();
    try {
      let got = "";
      let rows = 0;
      for (const q of READS) {
        // the extended protocol: without it node-postgres sends a simple Query, whose results are text
        const r = await c.query({ text: q, queryMode: "extended" } as pg.QueryConfig);
        expect(r.fields.map((f) => f.format)).toEqual(r.fields.map(() => "binary"));
        rows += r.rows.length;
        got += flat(r.rows) + "\n";
      }
      // rows as arrays, and a prepared (named) statement
      got += flat((await c.query({ text: "SELECT * FROM planted ORDER BY id", rowMode: "array", queryMode: "extended" } as pg.QueryArrayConfig)).rows) + "\n";
      got += flat((await c.query({ name: "wrapped", text: "SELECT * FROM wrapped WHERE plant = ANY($1::int[]) ORDER BY id", values: [[1, 2, 3, 50, 100]] })).rows) + "\n";
      expect(rows).toBe(plants.length * 2 + wrappedRows.length + wideRows.length + 2);
      scan.add("node-postgres binary", got);
      expect(unseen(got)).toEqual([]);
      expect(got).toContain("status=200 dur=12ms");
    } finally {
      await c.end();
    }
    scan.clean();
  });
});

describe("look-alikes come back unchanged", () => {
  const LOOK_READS = [
    "SELECT * FROM look ORDER BY id",
    "SELECT * FROM look_wide ORDER BY id",
    "SELECT l AS whole FROM look l ORDER BY id",
    "SELECT string_agg(t, E'\\n' ORDER BY id) AS everything FROM look",
  ];

  test("psql: byte for byte what PostgreSQL prints (plain, FETCH_COUNT, --csv, COPY)", async () => {
    const diffs: Record<string, string> = {};
    const runs: Array<[string, string[], string[]]> = [
      ["plain", LOOK_READS, []],
      ["FETCH_COUNT=5", LOOK_READS, ["-v", "FETCH_COUNT=5"]],
      ["--csv", LOOK_READS, ["--csv"]],
      ["COPY TO STDOUT", ["COPY look TO STDOUT", "COPY look TO STDOUT (FORMAT csv)", "COPY look_wide TO STDOUT"], []],
    ];
    for (const [name, queries, flags] of runs) {
      const direct = await psqlRun(db.url(), queries, flags);
      const via = await psqlRun(gw.url(), queries, flags);
      expect({ name, direct: direct.code, via: via.code }).toEqual({ name, direct: 0, via: 0 });
      const d = firstDiff(direct.stdout, via.stdout);
      if (d) diffs[name] = d;
    }
    expect(diffs).toEqual({});
  });

  test("porsager: what PostgreSQL sends, and the values planted", async () => {
    const s = postgres(gw.url(), { max: 1 });
    try {
      for (const q of LOOK_READS) expect(await s.unsafe(q)).toEqual(await su.unsafe(q));
      const rows = await s`SELECT * FROM look ORDER BY id`;
      const number = (n: string | null) => (n === null ? null : String(BigInt(n)));
      expect(rows.map((r) => [r.t, r.v, r.j, r.arr, r.b.toString("hex"), r.n, r.bi])).toEqual(
        lookRows.map((r) => [r.t, r.v, JSON.parse(r.j), r.arr, r.b, number(r.n), number(r.bi)]),
      );
      expect((await s`SELECT body FROM look_wide ORDER BY id`).map((r) => r.body)).toEqual(lookWideRows.map((r) => r.body));
    } finally {
      await s.end();
    }
  });

  test("node-postgres binary: what PostgreSQL sends, field by field", async () => {
    const direct = new pg.Client({ connectionString: db.url(), binary: true } as pg.ClientConfig);
    const via = new pg.Client({ connectionString: gw.url(), binary: true } as pg.ClientConfig);
    await direct.connect();
    await via.connect();
    try {
      // (not the whole-row query: a composite in binary format is a type agate cannot read, so with detectors on it is NULL by design)
      for (const q of LOOK_READS.filter((q) => !q.includes(" AS whole "))) {
        // each field as the driver received it, unparsed, so no type's parsing can hide a difference
        const raw = { text: q, rowMode: "array", queryMode: "extended", types: { getTypeParser: () => (v: unknown) => v } } as pg.QueryArrayConfig;
        const [a, b] = [await direct.query(raw), await via.query(raw)];
        expect(b.fields.every((f) => f.format === "binary")).toBe(true);
        expect(b.rows.length).toBe(a.rows.length);
        expect(b.rows).toEqual(a.rows);
      }
    } finally {
      await direct.end();
      await via.end();
    }
  });
});

describe("the audit directory holds none of the planted values", () => {
  /** Every file under `dir`, as Latin-1. */
  function readAll(dir: string): string {
    let out = "";
    for (const name of readdirSync(dir)) {
      const p = join(dir, name);
      out += statSync(p).isDirectory() ? readAll(p) : readFileSync(p).toString("latin1") + "\n";
    }
    return out;
  }

  /** The records, once every session that started has ended and nothing more arrives. */
  async function settled(): Promise<Record<string, unknown>[]> {
    let last = -1;
    for (let k = 0; k < 400; k++) {
      const records: Record<string, unknown>[] = [];
      try {
        for await (const r of readRecords(gw.auditDir)) records.push(r);
      } catch {
        records.length = 0;
      }
      const ended = new Set(records.filter((r) => r.type === "session_end").map((r) => r.session));
      const open = records.filter((r) => r.type === "session_start" && !ended.has(r.session));
      if (records.length > 0 && open.length === 0 && records.length === last) return records;
      last = records.length;
      await Bun.sleep(50);
    }
    throw new Error("the audit log did not settle (a session without session_end)");
  }

  test("statements with planted values in their text and parameters, through all three clients", async () => {
    const scan = new Scan();
    const s = postgres(gw.url(), { max: 1, onnotice: () => {} });
    const c = new pg.Client({ connectionString: gw.url(), binary: true } as pg.ClientConfig);
    await c.connect();
    let got = "";
    try {
      const texts = plants.map((p, i) => wrappers[i % wrappers.length]!.wrap(p.snippet));
      for (let i = 0; i < texts.length; i += 20) {
        const batch = texts.slice(i, i + 20);
        // parameters (text format), and literals in the SQL text
        got += flat(await s.unsafe(`SELECT ${batch.map((_, j) => `$${j + 1}::text AS p${j}`).join(", ")}`, batch)) + "\n";
        got += flat(await s.unsafe(`/* literals ${i} */ SELECT ${batch.map((t, j) => `${sqlLit(t)} AS l${j}`).join(", ")}`)) + "\n";
      }
      for (const [i, t] of texts.entries()) {
        // a write with the value as a parameter, a failing cast that quotes it back, node-postgres's parameters
        await s`INSERT INTO sink (v) VALUES (${t})`;
        const e = await s.unsafe(`SELECT ${sqlLit(plants[i]!.snippet)}::int`).catch((e) => e);
        got += flat({ message: e.message, detail: e.detail }) + "\n";
        got += flat((await c.query("SELECT $1::text AS v, length($1::text) AS n", [t])).rows) + "\n";
      }
      got += flat(await s`SELECT * FROM sink ORDER BY id`) + "\n";
      const lits = await sh(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", gw.url(), ...plants.flatMap((p) => ["-c", `SELECT ${sqlLit(p.snippet)} AS v`])]);
      expect(lits.code).toBe(0);
      got += lits.stdout + lits.stderr;
    } finally {
      await s.end();
      await c.end();
    }
    scan.add("statement results", got);
    expect(unseen(got)).toEqual([]);

    const records = await settled();
    scan.add("audit directory", readAll(gw.auditDir));
    // the statements were recorded, masked: counts of what was masked, not the values
    const commands = records.filter((r) => r.type === "command");
    expect(commands.length).toBeGreaterThan(plants.length * 4);
    const masked: Record<string, number> = {};
    for (const r of commands) for (const [d, n] of Object.entries((r.masked ?? {}) as Record<string, number>)) masked[d] = (masked[d] ?? 0) + n;
    expect(ALL_DETECTORS.filter((d) => !masked[d])).toEqual([]);
    expect(records.some((r) => r.type === "outcome" && r.masked)).toBe(true);
    scan.clean();
  });

  test("bytea parameters (hex text from porsager, binary format from node-postgres) are not recorded in a decodable form", async () => {
    const scan = new Scan();
    const s = postgres(gw.url(), { max: 1, onnotice: () => {} });
    const c = new pg.Client({ connectionString: gw.url() });
    await c.connect();
    try {
      for (const [i, p] of plants.entries()) {
        if (i % 3 !== 0) continue;
        await s`INSERT INTO sink (b) VALUES (${Buffer.from(p.snippet)})`;
        await c.query("INSERT INTO sink (b) VALUES ($1)", [Buffer.from(p.snippet)]);
      }
    } finally {
      await s.end();
      await c.end();
    }
    await settled();
    const all = readAll(gw.auditDir);
    // what agate writes for a binary-format parameter ("base64:…"), decoded; Scan decodes bytea hex ("\\x…")
    let decoded = "";
    for (const m of all.matchAll(/base64:([A-Za-z0-9+/]+=*)/g)) decoded += Buffer.from(m[1]!, "base64").toString("latin1") + "\n";
    scan.add("audit directory", all);
    scan.add("audit directory, base64 parameters decoded", decoded);
    scan.clean();
  });
});
