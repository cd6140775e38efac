/**
 * protocols/postgres/copy.ts on hand-made CopyData streams: however the
 * stream is cut into CopyData messages, the masked bytes are the same as
 * with one row per message; the statement text tells what to describe.
 * (End to end with PostgreSQL: test/mask-copy.test.ts.)
 */
import { describe, expect, test } from "bun:test";
import { compileMask } from "../src/mask/rules.ts";
import { initSql } from "../src/protocols/postgres/sql.ts";
import { CopyMasker, copySource } from "../src/protocols/postgres/copy.ts";
import { type Field, newTally, ResultMasker } from "../src/protocols/postgres/rows.ts";

await initSql();

const TOKEN = "ghp_" + "x7Kq2mZ9pL4vR8sT1wY6uE3oI5aD0fGhJkLz";
const origin = (_table: number, attnum: number) => ({ schema: "public", table: "t", column: attnum === 2 ? "email" : "id", via: [] });

function copyData(body: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head[0] = 0x64;
  head.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}

function tuple(values: (string | null)[]): Buffer {
  const parts = [Buffer.alloc(2)];
  parts[0]!.writeInt16BE(values.length);
  for (const v of values) {
    const len = Buffer.alloc(4);
    len.writeInt32BE(v === null ? -1 : Buffer.byteLength(v));
    parts.push(len);
    if (v !== null) parts.push(Buffer.from(v));
  }
  return Buffer.concat(parts);
}

const HEADER = Buffer.concat([Buffer.from("PGCOPY\n\xff\r\n\0", "latin1"), Buffer.alloc(8)]);
const TRAILER = Buffer.from([0xff, 0xff]);

function masker(format: "binary" | "text" | "csv", header = false) {
  const fields: Field[] = [
    { name: "id", table: 1, attnum: 1, type: 25, format: format === "binary" ? 1 : 0 },
    { name: "email", table: 1, attnum: 2, type: 25, format: format === "binary" ? 1 : 0 },
  ];
  const tally = newTally();
  const m = new ResultMasker(fields, compileMask({ columns: ["public.t.email"], detectors: ["*"] }), undefined, origin, tally);
  return { copy: new CopyMasker(m, format, 2, header), tally };
}

/** The stream cut into messages at `cuts` (byte offsets), masked; the bodies joined. */
function run(format: "binary" | "text" | "csv", stream: Buffer, cuts: number[], header = false): Buffer {
  const { copy } = masker(format, header);
  const out: Buffer[] = [];
  let at = 0;
  for (const c of [...cuts, stream.length]) {
    const m = copy.data(copyData(stream.subarray(at, c)));
    if (m) {
      expect(m.readInt32BE(1)).toBe(m.length - 1);
      out.push(m.subarray(5));
    }
    at = c;
  }
  copy.done();
  return Buffer.concat(out);
}

describe("binary COPY streams", () => {
  const rows = [tuple(["1", "ada@example.org"]), tuple([`key ${TOKEN}`, null]), tuple(["3", "x"])];
  const stream = Buffer.concat([HEADER, ...rows, TRAILER]);
  const whole = run("binary", stream, [HEADER.length, HEADER.length + rows[0]!.length, HEADER.length + rows[0]!.length + rows[1]!.length, stream.length - 2]);

  test("rows are masked in place, the header and trailer pass", () => {
    expect(whole.subarray(0, HEADER.length).equals(HEADER)).toBe(true);
    expect(whole.subarray(-2).equals(TRAILER)).toBe(true);
    const text = whole.toString("latin1");
    expect(text).toContain("[REDACTED:email]");
    expect(text).toContain("[REDACTED:github_token]");
    expect(text).not.toContain("ada@example.org");
    expect(text).not.toContain(TOKEN);
  });

  test("any cut of the stream into messages gives the same bytes", () => {
    for (let cut = 1; cut < stream.length; cut += 3) expect(run("binary", stream, [cut]).equals(whole)).toBe(true);
    expect(run("binary", stream, []).equals(whole)).toBe(true);
    expect(run("binary", stream, Array.from({ length: stream.length - 1 }, (_, i) => i + 1)).equals(whole)).toBe(true);
  });

  test("a stream that ends inside a row, or a tuple of the wrong width, is a protocol violation", () => {
    const { copy } = masker("binary");
    copy.data(copyData(Buffer.concat([HEADER, rows[0]!.subarray(0, 5)])));
    expect(() => copy.done()).toThrow("inside a row");
    expect(() => run("binary", Buffer.concat([HEADER, tuple(["1"]), TRAILER]), [])).toThrow("1 fields");
  });
});

describe("text and CSV COPY streams", () => {
  test("text rows split anywhere mask the same", () => {
    const stream = Buffer.from(`1\tada@example.org\nback\\\\slash\\t${TOKEN}\t\\N\n`);
    const whole = run("text", stream, []);
    expect(whole.toString()).toBe(`1\t[REDACTED:email]\nback\\\\slash\\t[REDACTED:github_token]\t\\N\n`);
    for (let cut = 1; cut < stream.length; cut++) expect(run("text", stream, [cut]).equals(whole)).toBe(true);
  });

  test("CSV: quoted newlines stay in their field; the header line passes", () => {
    const stream = Buffer.from(`id,email\n"a\nb","x@example.com"\n2,\n`);
    const whole = run("csv", stream, [], true);
    expect(whole.toString()).toBe(`id,email\n"a\nb","[REDACTED:email]"\n2,\n`);
    for (let cut = 1; cut < stream.length; cut++) expect(run("csv", stream, [cut], true).equals(whole)).toBe(true);
  });
});

describe("copySource", () => {
  test("the query of COPY (query), a SELECT of a table's listed columns, or of all", () => {
    expect(copySource(`COPY (SELECT ')' AS "x)" FROM t) TO STDOUT (FORMAT binary)`).describe).toBe(`SELECT ')' AS "x)" FROM t`);
    expect(copySource(`copy s."T" (a, "B") to stdout`).describe).toBe(`SELECT a, "B" FROM s."T"`);
    expect(copySource(`COPY BINARY t TO STDOUT`).describe).toBe("SELECT * FROM t");
    expect(copySource(`COPY t TO STDOUT WITH CSV HEADER`)).toEqual({ describe: "SELECT * FROM t", plain: true, header: true });
    expect(copySource(`COPY t TO STDOUT (FORMAT csv, HEADER false)`).header).toBe(false);
    expect(copySource(`COPY t TO STDOUT (DELIMITER '|')`).plain).toBe(false);
    expect(copySource(`COPY t TO STDOUT WITH NULL 'x'`).plain).toBe(false);
  });

  test("a query whose literals or names hold control characters (the scanner's JSON has them raw)", () => {
    const every = Array.from({ length: 255 }, (_, i) => String.fromCharCode(i + 1)).join("").replaceAll("'", "''");
    for (const query of [`SELECT E'\x01'`, `SELECT '${every}'::text`, `SELECT 1 AS "a\x1fb"`, `SELECT U&'\\0001' || $$\x02$$`]) {
      expect(copySource(`COPY (${query}) TO STDOUT (FORMAT binary)`)).toEqual({ describe: query, plain: true, header: false });
    }
  });
});
