/**
 * protocols/postgres/rows.ts on hand-made DataRows: what each column type
 * and format becomes under column rules and detectors, and that a row with
 * nothing to mask is relayed as the very same buffer. (End to end, with real
 * PostgreSQL and clients: test/mask-postgres.test.ts, test/mask-corpus.test.ts.)
 */
import { describe, expect, test } from "bun:test";
import { compileMask } from "../src/mask/rules.ts";
import { maskValue } from "../src/mask/styles.ts";
import type { ColumnOrigin } from "../src/protocols/postgres/catalog.ts";
import { Outbox } from "../src/protocols/postgres/framer.ts";
import { type Field, newTally, readRowDescription, ResultMasker, RowSlabs } from "../src/protocols/postgres/rows.ts";
import { prng } from "./helpers/mask-corpus.ts";

const SECRETS = ["aws_access_key", "aws_secret_key", "github_token", "gitlab_token", "slack_token", "jwt", "pem_private_key", "url_password", "kv_secret"];
const CARD = "4111111111111111";

function dataRow(values: (Buffer | string | null)[]): Buffer {
  const parts = values.map((v) => {
    if (v === null) return Buffer.from([0xff, 0xff, 0xff, 0xff]);
    const b = typeof v === "string" ? Buffer.from(v) : v;
    const len = Buffer.alloc(4);
    len.writeInt32BE(b.length);
    return Buffer.concat([len, b]);
  });
  const count = Buffer.alloc(2);
  count.writeUInt16BE(values.length);
  const body = Buffer.concat([count, ...parts]);
  const head = Buffer.alloc(5);
  head[0] = 0x44;
  head.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}

/** The fields of a DataRow message: null for SQL NULL. */
function fieldsOf(row: Buffer): (Buffer | null)[] {
  const out: (Buffer | null)[] = [];
  let p = 7;
  for (let i = 0; i < row.readUInt16BE(5); i++) {
    const len = row.readInt32BE(p);
    p += 4;
    out.push(len < 0 ? null : row.subarray(p, p + len));
    if (len > 0) p += len;
  }
  expect(p).toBe(row.length);
  expect(row.readInt32BE(1)).toBe(row.length - 1);
  return out;
}

function field(name: string, type: number, format = 0, table = 0, attnum = 0): Field {
  return { name, table, attnum, type, format };
}

const origin = (table: number, attnum: number): ColumnOrigin => ({ schema: "public", table: `t${table}`, column: `c${attnum}`, via: [] });

function masker(fields: Field[], mask: { columns: string[]; detectors: string[] }) {
  const tally = newTally();
  const m = new ResultMasker(fields, compileMask(mask), undefined, origin, tally);
  return { m, tally };
}

function int8(n: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigInt64BE(n);
  return b;
}

describe("ResultMasker", () => {
  test("a row with nothing to mask is the same buffer", () => {
    const { m } = masker([field("id", 23), field("name", 25), field("at", 1184)], { columns: [], detectors: ["*"] });
    const row = dataRow(["42", "Ada Lovelace", "2026-01-01 00:00:00+00"]);
    expect(m.row(row)).toBe(row);
  });

  test("a column rule per type: text masked, json a JSON string, bytea bytes, numbers NULL; binary too", () => {
    const fields = [field("s", 25, 0, 1, 1), field("j", 3802, 0, 1, 2), field("b", 17, 0, 1, 3), field("n", 20, 0, 1, 4), field("jb", 3802, 1, 1, 5), field("nb", 20, 1, 1, 6)];
    const { m, tally } = masker(fields, { columns: ["public.t1.*"], detectors: [] });
    const jsonb = Buffer.concat([Buffer.of(1), Buffer.from('{"a": 1}')]);
    const out = fieldsOf(m.row(dataRow(["secret", '{"a": 1}', "\\x0102", "12", jsonb, int8(12n)])));
    expect(out[0]!.toString()).toBe("[REDACTED:c1]");
    expect(JSON.parse(out[1]!.toString())).toBe("[REDACTED:c2]");
    expect(out[2]!.toString()).toBe(`\\x${Buffer.from("[REDACTED:c3]").toString("hex")}`);
    expect(out[3]).toBeNull();
    expect(out[4]![0]).toBe(1);
    expect(JSON.parse(out[4]!.subarray(1).toString())).toBe("[REDACTED:c5]");
    expect(out[5]).toBeNull();
    m.settle();
    expect(tally.rows).toBe(1);
    expect(tally.columns["public.t1.*"]).toBe(6);
  });

  test("detectors: inside text and json (staying valid JSON), a number holding a card becomes NULL", () => {
    const { m, tally } = masker([field("note", 25), field("doc", 114), field("n", 20), field("nb", 20, 1)], { columns: [], detectors: ["*"] });
    const out = fieldsOf(m.row(dataRow([`mail ada@example.com`, `{"to": "ada@example.com", "card": "${CARD}"}`, CARD, int8(BigInt(CARD))])));
    expect(out[0]!.toString()).toBe("mail [REDACTED:email]");
    expect(JSON.parse(out[1]!.toString())).toEqual({ to: "[REDACTED:email]", card: "[REDACTED:card]" });
    expect(out[2]).toBeNull();
    expect(out[3]).toBeNull();
    expect(tally.detectors).toEqual({ email: 2, card: 3 });
  });

  test("under the secret detectors (the default), numbers and ranges pass unread, even in binary", () => {
    const int4range = Buffer.from([0x02, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 9]);
    const fields = [field("n", 20), field("r", 3904, 1), field("a", 1007, 1), field("note", 25)];
    const row = dataRow([CARD, int4range, Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 23]), "token=ghp_0123456789abcdefghijklmnopqrstuvwxyzAB"]);
    const secrets = masker(fields, { columns: [], detectors: SECRETS }).m.row(row);
    const out = fieldsOf(secrets);
    expect(out[0]!.toString()).toBe(CARD);
    expect(out[1]!.equals(int4range)).toBe(true);
    expect(out[3]!.toString()).not.toContain("ghp_");
    // with the card detector in force, the binary range is read (binary.ts), and holds no card
    const all = fieldsOf(masker(fields, { columns: [], detectors: ["*"] }).m.row(row));
    expect(all[0]).toBeNull();
    expect(all[1]!.equals(int4range)).toBe(true);
  });

  test("a binary type agate cannot read is NULL under detectors; a safe one (uuid) passes", () => {
    const { m } = masker([field("hstore", 99999, 1), field("u", 2950, 1)], { columns: [], detectors: ["*"] });
    const uuid = Buffer.alloc(16, 7);
    // bytes that are no record or array either (those are read by their shape)
    const out = fieldsOf(m.row(dataRow([Buffer.from("\x00\x01xyz"), uuid])));
    expect(out[0]).toBeNull();
    expect(out[1]!.equals(uuid)).toBe(true);
  });

  test("masked rows grow and shrink across slabs: 10,000 rows, each well-formed", () => {
    const { m } = masker([field("a", 25, 0, 1, 1), field("b", 25, 0, 2, 1)], { columns: ["t1.c1"], detectors: ["email"] });
    for (let i = 0; i < 10_000; i++) {
      const long = "x".repeat(i % 3000);
      const out = fieldsOf(m.row(dataRow([`v${i}`, `${long} user${i}@example.com`])));
      expect(out[0]!.toString()).toBe("[REDACTED:c1]");
      expect(out[1]!.toString()).toBe(`${long} [REDACTED:email]`);
    }
  });

  test("partial: ASCII starred in place, anything else through the text (the same as maskValue), the rest of the row intact, across slabs", () => {
    const { m } = masker([field("card", 25, 0, 1, 1), field("after", 25, 0, 2, 1)], { columns: ["t1.c1:partial"], detectors: [] });
    const values = ["4111 1111 1111 1111", "ünïcode card 4242", "ab", "ßßßßßßßßßßßßßßßßßßßß 9876", "x".repeat(5000), "é".repeat(40000)];
    for (let i = 0; i < 200; i++) {
      const v = values[i % values.length]!;
      const out = fieldsOf(m.row(dataRow([v, `after ${i}`])));
      expect(out[0]!.toString()).toBe(maskValue(v, "c1", { kind: "partial", keep: 4 }));
      expect(out[1]!.toString()).toBe(`after ${i}`);
    }
  });

  test("rows masked from one received chunk into the session's slabs (copies joined across rows, sealed per write) are the bytes row() makes of each", () => {
    const fields = [field("id", 25), field("email", 25, 0, 1, 1), field("card", 25, 0, 1, 2), field("note", 25), field("tail", 25)];
    const mask = { columns: ["t1.c1", "t1.c2:partial"], detectors: ["email", "phone"] };
    const rand = prng(5);
    const pick = (xs: (string | null)[]) => xs[Math.floor(rand() * xs.length)]!;
    const rows: Buffer[] = [];
    for (let i = 0; i < 20_000; i++) {
      rows.push(
        dataRow([
          pick([String(i), "x".repeat(40), null]),
          pick([`u${i}@example.com`, null, "", "é@é"]),
          pick(["4111 1111 1111 1111", "12", "ünïcode card 4242", null]),
          pick(["plain words", `call +44 20 7946 ${String(i % 10000).padStart(4, "0")} now`, "y".repeat(i % 700), null]),
          pick(["", "t", "0123456789abcdef0123", "z".repeat(100), null]),
        ]),
      );
    }
    const chunk = Buffer.concat(rows);
    const expected = (() => {
      const { m } = masker(fields, mask);
      return Buffer.concat(rows.map((r) => Buffer.from(m.row(r))));
    })();
    const slabs = new RowSlabs(true);
    const m = new ResultMasker(fields, compileMask(mask), undefined, origin, newTally(), undefined, undefined, slabs);
    const out = new Outbox();
    const sent: Buffer[] = [];
    let at = 0;
    for (let i = 0; i < rows.length; i++) {
      m.rowInto(chunk, at, at + rows[i]!.length, out);
      at += rows[i]!.length;
      // a write to the client now and then, as the session makes one per chunk read: seal, copy out (the socket), release
      if (i % 97 === 96 || i === rows.length - 1) {
        const parts = out.takeParts();
        const sealed = slabs.seal();
        sent.push(Buffer.concat(parts));
        if (sealed) slabs.release(sealed);
      }
    }
    expect(Buffer.concat(sent).equals(expected)).toBe(true);
  });

  test("a DataRow with more or fewer fields than its RowDescription is a protocol violation, never relayed with a field unmasked", () => {
    const { m } = masker([field("note", 25)], { columns: [], detectors: SECRETS });
    expect(() => m.row(dataRow(["plain", `key ghp_${"x7Kq2mZ9pL4vR8sT1wY6uE3oI5aD0fGhJkLz"}`]))).toThrow("2 fields, its RowDescription 1 columns");
    expect(() => m.row(dataRow([]))).toThrow("0 fields");
    expect(m.row(dataRow(["plain"]))).toEqual(dataRow(["plain"]));
  });

  test("RowDescription is read field by field; a truncated one is a protocol violation", () => {
    const name = Buffer.from("email\0");
    const rest = Buffer.alloc(18);
    rest.writeUInt32BE(16384, 0);
    rest.writeInt16BE(3, 4);
    rest.writeUInt32BE(25, 6);
    rest.writeInt16BE(-1, 10);
    rest.writeInt32BE(-1, 12);
    rest.writeInt16BE(0, 16);
    const body = Buffer.concat([Buffer.from([0, 1]), name, rest]);
    expect(readRowDescription(body)).toEqual([{ name: "email", table: 16384, attnum: 3, type: 25, format: 0 }]);
    expect(() => readRowDescription(body.subarray(0, body.length - 1))).toThrow("truncated");
  });
});
