/**
 * binary.ts against real PostgreSQL: for each value, PostgreSQL's own *_send
 * gives the binary format and ::text the text format, and binaryAsText must
 * turn the one into the other exactly. Random values (float bit patterns,
 * IPv6 addresses with zero runs, numerics) are checked in bulk.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import postgres from "postgres";
import { binaryAsText, OPAQUE_SAFE, shapeAsText, textBytesOffset } from "../src/protocols/postgres/binary.ts";
import { ProtocolViolation } from "../src/protocols/postgres/wire.ts";
import { startPostgres, type TestPostgres } from "./helpers/postgres.ts";

let db: TestPostgres;
let sql: postgres.Sql;

beforeAll(async () => {
  db = await startPostgres();
  sql = postgres(db.url(), { max: 1, onnotice: () => {} });
  // bin(x): x in binary format, by its type's own send function
  await sql.unsafe(`CREATE FUNCTION bin(v anyelement) RETURNS bytea LANGUAGE plpgsql AS $$
    DECLARE b bytea;
    BEGIN
      EXECUTE format('SELECT %s($1)', (SELECT typsend::regproc FROM pg_type WHERE oid = pg_typeof(v))) INTO b USING v;
      RETURN b;
    END $$`);
});

afterAll(async () => {
  await sql?.end();
  await db?.stop();
});

interface Row {
  text: string;
  bytes: Buffer;
  oid: number;
}

/**
 * SELECT (text, binary, oid) of t FROM `from`, a FROM item with a column t. The text is
 * the type's output function's (format's %s), not ::text: inet's cast to text always adds /bits.
 */
function select(from: string): string {
  return `SELECT format('%s', t) AS text, bin(t) AS bytes, pg_typeof(t)::oid::int AS oid FROM ${from}`;
}

async function fetch(from: string): Promise<Row[]> {
  return sql.unsafe<Row[]>(select(from));
}

/** Every row's binary value decodes to its text value; the mismatches are listed on failure. */
function expectRoundTrip(rows: Row[], min = 1): void {
  expect(rows.length).toBeGreaterThanOrEqual(min);
  const wrong = rows
    .map((r) => ({ oid: r.oid, pg: r.text, agate: binaryAsText(r.oid, r.bytes), bytes: r.bytes.toString("hex") }))
    .filter((r) => r.agate !== r.pg);
  expect(wrong).toEqual([]);
}

/** Each SQL expression, checked. */
async function check(exprs: string[]): Promise<void> {
  const rows = await sql.unsafe<Row[]>(exprs.map((e) => select(`(SELECT (${e}) AS t) s`)).join(" UNION ALL "));
  expectRoundTrip(rows, exprs.length);
}

/** `values` as an array literal of `type`, one row each. */
function unnest(values: string[], type: string): string {
  return `unnest('{${values.map((v) => `"${v}"`).join(",")}}'::${type}[]) t`;
}

function randomBits(bytes: number): DataView {
  return new DataView(crypto.getRandomValues(new Uint8Array(bytes)).buffer);
}

describe("integers and money", () => {
  test("int2, int4, int8, oid, xid8", async () => {
    await check([
      "0::int2", "-1::int2", "32767::int2", "(-32768)::int2",
      "0::int4", "123456789", "2147483647", "(-2147483648)::int4",
      "0::int8", "4111111111111111::int8", "9223372036854775807::int8", "(-9223372036854775808)::int8",
      "0::oid", "12345::oid", "4294967295::oid",
      "'0'::xid8", "'4111111111111111'::xid8", "'18446744073709551615'::xid8",
    ]);
  });

  test("money prints as a plain number with two decimals", async () => {
    const values = ["0", "-12.34", "0.05", "-0.05", "1.00", "4111111111111111.00", "92233720368547758.07", "-92233720368547758.08"];
    const rows = await sql.unsafe<{ text: string; bytes: Buffer }[]>(
      `SELECT t::numeric::text AS text, cash_send(t) AS bytes FROM ${unnest(values, "money")}`,
    );
    expect(rows.map((r) => binaryAsText(790, r.bytes))).toEqual(rows.map((r) => r.text));
    expect(rows.map((r) => r.text)).toContain("-12.34");
  });
});

describe("floats", () => {
  // also ties between two shortest forms (1132128.25: ...2 not ...3) and a shortest form on the
  // rounding interval's bound, which PostgreSQL's Ryu does not accept (68954384: not 6.895438e+07)
  test("float4 and float8 edge cases print as PostgreSQL prints them", async () => {
    await check([
      "0::float4", "'-0'::float4", "1::float4", "-1.5::float4", "0.1::float4", "(1/3::float4)", "1e6::float4", "123456::float4",
      "999999::float4", "1e-4::float4", "1e-5::float4", "16777217::float4", "3.4028235e38::float4", "'1.4e-45'::float4",
      "'1.1754944e-38'::float4", "1132128.25::float4", "68954384::float4", "(2::float8 ^ -12)::float4", "'NaN'::float4", "'Infinity'::float4", "'-Infinity'::float4",
      "0::float8", "'-0'::float8", "0.1::float8", "(1/3::float8)", "1e14::float8", "1e15::float8", "378282246310005::float8",
      "4111111111111111::float8", "123456789012345678::float8", "1e-4::float8", "1.5e-5::float8", "'1.7976931348623157e308'::float8",
      "'5e-324'::float8", "'2.2250738585072014e-308'::float8", "-2.5e-300::float8", "'NaN'::float8", "'Infinity'::float8",
      "'-Infinity'::float8",
    ]);
  });

  test("every power of two", async () => {
    expectRoundTrip(await fetch("(SELECT (2::float8 ^ g)::float4 AS t FROM generate_series(-149, 127) g) s"), 277);
    expectRoundTrip(await fetch("(SELECT (2::numeric ^ g)::float8 AS t FROM generate_series(-1074, 1023) g) s"), 2098);
  });

  test("random bit patterns", async () => {
    const f4: string[] = [];
    const f8: string[] = [];
    while (f4.length < 3000) {
      const x = randomBits(4).getFloat32(0);
      if (Number.isFinite(x)) f4.push(x.toPrecision(9)); // 9 significant digits read back exactly
    }
    while (f8.length < 3000) {
      const x = randomBits(8).getFloat64(0);
      if (Number.isFinite(x)) f8.push(x.toPrecision(17));
    }
    expectRoundTrip(await fetch(unnest(f4, "float4")), 3000);
    expectRoundTrip(await fetch(unnest(f8, "float8")), 3000);
    // and numbers with few digits, where the shortest form matters most
    expectRoundTrip(await fetch("(SELECT round((random() - 0.5)::numeric * 10::numeric ^ (g % 30 - 12), g % 7)::float4 AS t FROM generate_series(1, 2000) g) s"));
    expectRoundTrip(await fetch("(SELECT round((random() - 0.5)::numeric * 10::numeric ^ (g % 40 - 15), g % 9)::float8 AS t FROM generate_series(1, 2000) g) s"));
  });
});

describe("numeric", () => {
  test("edge cases, with dscale's trailing zeros", async () => {
    await check([
      "0::numeric", "0.0::numeric", "'-0.000'::numeric", "1::numeric", "-1234.5600::numeric", "0.0001::numeric", "0.00001::numeric",
      "'1e-30'::numeric", "10000::numeric", "100000000::numeric", "9999.9999::numeric", "'1e100'::numeric", "'-1.5e131071'::numeric",
      "123456789012345678901234567890.000000001::numeric", "1.000000000000000000000::numeric", "round(1/3::numeric, 40)",
      "4111111111111111::numeric", "12345678.9::numeric", "0.5::numeric(10, 6)", "'NaN'::numeric", "'Infinity'::numeric",
      "'-Infinity'::numeric", "1e-16383::numeric",
    ]);
  });

  test("random values and scales", async () => {
    expectRoundTrip(
      await fetch("(SELECT round((random() - 0.5)::numeric * 10::numeric ^ (g % 50 - 25), g % 37) AS t FROM generate_series(1, 3000) g) s"),
      3000,
    );
  });
});

describe("inet and cidr", () => {
  test("IPv4 and IPv6 as PostgreSQL prints them", async () => {
    const inet = [
      "10.1.2.3", "10.1.2.3/8", "10.1.2.3/32", "0.0.0.0/0", "255.255.255.255", "::", "::1", "::2", "::1:2", "::ffff:1.2.3.4",
      "::ffff:0:1.2.3.4", "::1.2.3.4", "fe80::1/64", "2001:db8::", "2001:db8::1/128", "2001:db8:0:0:1:0:0:1", "1:0:0:2:0:0:0:3",
      "1::", "1:2:3:4:5:6:7:8", "0:0:1::", "1:0:2:0:3:0:4:0", "ffff::ffff:1.2.3.4", "0:1::",
    ];
    const cidr = ["10.0.0.0/8", "10.1.2.3/32", "0.0.0.0/0", "::/0", "2001:db8::/32", "::1/128", "::ffff:1.2.3.4/128", "fe80::/10"];
    await check([...inet.map((a) => `'${a}'::inet`), ...cidr.map((a) => `'${a}'::cidr`)]);
  });

  test("random IPv6 addresses with runs of zeros, as inet and cidr", async () => {
    const words = [0, 0, 0, 1, 0xffff, 0x1234];
    const addrs = Array.from({ length: 2000 }, () => {
      const w = Array.from({ length: 8 }, () => (Math.random() < 0.7 ? words[Math.floor(Math.random() * words.length)]! : Math.floor(Math.random() * 0x10000)));
      return `${w.map((x) => x.toString(16)).join(":")}/${Math.floor(Math.random() * 129)}`;
    });
    expectRoundTrip(await fetch(unnest(addrs, "inet")), 2000);
    expectRoundTrip(await fetch(`(SELECT network(i) AS t FROM ${unnest(addrs, "inet").replace(/ t$/, " i")}) s`), 2000);
  });
});

describe("text-like types", () => {
  test("text, varchar, bpchar, name, char, json, jsonb, xml", async () => {
    await check([
      "'hello'::text", "''::text", "'ünïcödé ✓ alice@example.com'::text", "E'line\\nbreak\\ttab'::text", "'x'::varchar(10)",
      "'abc'::char(6)", "'pg_class'::name", "'x'::\"char\"", "'é'::\"char\"", "''::\"char\"", "'{\"a\":  1, \"b\":[1,2]}'::json",
      "'{\"b\": [1, 2], \"a\": 1, \"card\": \"4111 1111 1111 1111\"}'::jsonb", "'\"x\"'::jsonb", "'<a>x@y.z</a>'::xml",
      "'<?xml version=\"1.0\"?><a/>'::xml",
    ]);
  });

  test("the text starts at textBytesOffset", async () => {
    for (const e of ["'a@b.c'::text", "'a'::varchar", "'a'::char(3)", "'a'::name", "'a'::\"char\"", `'{"a":  1}'::json`, `'{"a":  1}'::jsonb`, "'<a/>'::xml"]) {
      const [r] = await fetch(`(SELECT ${e} AS t) s`);
      expect(r!.bytes.subarray(textBytesOffset(r!.oid)!).toString("utf8")).toBe(r!.text);
    }
    expect([25, 1043, 1042, 19, 18, 705, 114, 142].map(textBytesOffset)).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
    expect(textBytesOffset(3802)).toBe(1);
    expect([17, 23, 1009, 3807, 2950].map(textBytesOffset)).toEqual([undefined, undefined, undefined, undefined, undefined]);
    expect(binaryAsText(705, Buffer.from("unknown literal"))).toBe("unknown literal");
  });
});

describe("other types", () => {
  test("geometric types and macaddr8", async () => {
    await check([
      "'(1,2)'::point", "point(378282246310005, -0.5)", "point('NaN', 'Infinity')", "'[(1,2),(3,4)]'::lseg", "'(1,2),(3,4)'::box",
      "'((1,2),(3,4))'::path", "'[(1,2),(3,4),(5.5,6)]'::path", "'((0,0),(1,1),(1,0))'::polygon", "'{1,-1,0}'::line",
      "'<(1,2),3>'::circle", "'08:00:2b:01:02:03:04:05'::macaddr8",
    ]);
  });
});

describe("arrays", () => {
  test("quoting, NULLs, dimensions and lower bounds", async () => {
    await check([
      "ARRAY[1,2,3]", "'{}'::int[]", "'{{1,2},{3,4}}'::int[]", "'{{{1},{2}},{{3},{4}}}'::int8[]", "'{{NULL,NULL}}'::int[]",
      "'[2:3]={1,2}'::int[]", "'[0:1][-2:-1]={{1,2},{3,4}}'::int[]", "'[-5:-5]={x}'::text[]",
      `ARRAY['a b', 'NULL', NULL, '', 'x"y', 'a\\b', '{', '}', ',', 'null', 'nullx', E'tab\\there', 'ü', 'plain']::text[]`,
      `ARRAY[['a','b'],['c d',NULL]]::varchar[]`, "ARRAY['ab'::char(3), NULL]", "ARRAY['pg_class'::name]", `ARRAY['x', 'é', '']::"char"[]`,
    ]);
  });

  test("arrays of every decodable element type", async () => {
    await check([
      "ARRAY[1, -32768]::int2[]", "ARRAY[4111111111111111, NULL]::int8[]", "ARRAY[1, 4294967295]::oid[]", "ARRAY['1']::xid8[]",
      "ARRAY[1.5, 'NaN', '-Infinity', 1e20]::float4[]", "ARRAY[0.1, 1e15, '-0']::float8[]", "ARRAY[1.50, -0.0001, 'NaN']::numeric[]",
      "ARRAY['10.1.2.3', '::ffff:1.2.3.4', 'fe80::1/64']::inet[]", "ARRAY['10.0.0.0/8', '::/0']::cidr[]",
      `ARRAY['{"a": [1, 2]}', 'null', '"s p"']::json[]`, `ARRAY['{"a": [1, 2]}', 'null', '"x"']::jsonb[]`, "ARRAY['<a>b c</a>']::xml[]",
      "ARRAY['(1,2)'::point, NULL]", "ARRAY['(1,2),(3,4)'::box, '(5,6),(7,8)']", "ARRAY['[(1,2),(3,4)]'::lseg]",
      "ARRAY['((1,2),(3,4))'::path]", "ARRAY['((0,0),(1,1),(1,0))'::polygon]", "ARRAY['{1,-1,0}'::line]", "ARRAY['<(1,2),3>'::circle]",
      "ARRAY['08:00:2b:01:02:03:04:05'::macaddr8]",
    ]);
    const money = await sql.unsafe<{ bytes: Buffer }[]>("SELECT array_send(ARRAY['-12.34', '5']::money[]) AS bytes");
    expect(binaryAsText(791, money[0]!.bytes)).toBe("{-12.34,5.00}");
  });
});

describe("tsvector", () => {
  test("lexemes, quoting, positions and weights print as tsvectorout", async () => {
    await check([
      "''::tsvector",
      "'fat cat'::tsvector",
      "$$cat:1A dog:2B,3C,4 'it''s':5$$::tsvector",
      "$$'ab\\c' 'x\\\\y'$$::tsvector",
      "to_tsvector('simple', 'token=ghp_0123456789abcdefghijklmnopqrstuvwxyz ada@example.com')",
      "ARRAY['a:1'::tsvector, 'b c'::tsvector]",
    ]);
  });
});

describe("records", () => {
  test("row values print as record_out, quoting, NULLs and nested arrays included", async () => {
    await check([
      "ROW(1, 'a b', NULL, 'x,y', 2.50::numeric)", "ROW('', '(', ')', 'q\"uote', 'back\\slash')", "ROW(ARRAY[1,2], 'ada@example.com'::text, '10.1.2.3'::inet)",
      "ROW(4111111111111111::int8)", "ROW()",
    ]);
  });

  test("a field of a type that cannot hold a detector's find prints as ?, one agate cannot read makes the record unreadable", async () => {
    const [safe] = await sql.unsafe<{ bytes: Buffer }[]>("SELECT record_send(ROW('2026-01-01'::date, 'x'::text)) AS bytes");
    expect(binaryAsText(2249, safe!.bytes)).toBe("(?,x)");
    const [unknown] = await sql.unsafe<{ bytes: Buffer }[]>("SELECT record_send(ROW('$.a'::jsonpath, 'x'::text)) AS bytes");
    expect(binaryAsText(2249, unknown!.bytes)).toBeUndefined();
  });
});

describe("ranges and multiranges of numbers", () => {
  test("print as range_out and multirange_out", async () => {
    await check([
      "'[1,5)'::int4range", "'(,10]'::int8range", "'empty'::numrange", "'[1.5,2.5]'::numrange", "'(-1e20,)'::numrange",
      "'{[1,2),[5,7)}'::int4multirange", "'{}'::int8multirange", "'{(,1.25], [3,4)}'::nummultirange",
    ]);
  });
});

describe("values read by their shape", () => {
  test("composites, nested composites and arrays of them, of types binary.ts has no table for", async () => {
    await sql.unsafe("CREATE TYPE shape_inner AS (a text, n int); CREATE TYPE shape_outer AS (i shape_inner, arr shape_inner[], note text)");
    const rows = await sql.unsafe<Row[]>(
      [
        "ROW('x', 1)::shape_inner",
        "ROW(ROW('ada@example.com', 2)::shape_inner, ARRAY[ROW('a b', 3)::shape_inner, NULL, ROW('', NULL)::shape_inner], 'q\"uote')::shape_outer",
        "ARRAY[ROW('y', 4)::shape_inner]",
      ]
        .map((e) => select(`(SELECT (${e}) AS t) s`))
        .join(" UNION ALL "),
    );
    expect(rows.length).toBe(3);
    for (const r of rows) {
      expect(binaryAsText(r.oid, r.bytes)).toBeUndefined();
      expect(shapeAsText(r.bytes)).toBe(r.text);
    }
  });

  test("bytes that are no record or array, or hold a field agate cannot read, have no shape", async () => {
    expect(shapeAsText(Buffer.from("hello world"))).toBeUndefined();
    const [range] = await sql.unsafe<{ bytes: Buffer }[]>("SELECT record_send(ROW('$.a'::jsonpath)) AS bytes");
    expect(shapeAsText(range!.bytes)).toBeUndefined();
  });

  test("bytea arrays print as hex elements", async () => {
    await check(["ARRAY['\\x0102'::bytea, NULL, ''::bytea]"]);
  });
});

describe("malformed values", () => {
  async function bytes(expr: string): Promise<Buffer> {
    return (await sql.unsafe<{ b: Buffer }[]>(`SELECT bin(${expr}) AS b`))[0]!.b;
  }
  function patched(b: Buffer, at: number, byte: number): Buffer {
    const c = Buffer.from(b);
    c[at] = byte;
    return c;
  }

  test("throw ProtocolViolation", async () => {
    const numeric = await bytes("-1234.5600::numeric");
    const jsonb = await bytes(`'{"a":1}'::jsonb`);
    const inet = await bytes("'10.1.2.3'::inet");
    const array = await bytes("ARRAY[1,2]");
    const path = await bytes("'((1,2),(3,4))'::path");
    const bad: [number, Buffer][] = [
      [1700, numeric.subarray(0, numeric.length - 1)], // truncated
      [1700, Buffer.concat([numeric, Buffer.alloc(2)])], // trailing bytes
      [1700, patched(numeric, 4, 0x80)], // sign 0x8000
      [1700, patched(patched(numeric, 8, 0x27), 9, 0x10)], // digit 10000
      [1700, Buffer.alloc(3)],
      [3802, patched(jsonb, 0, 2)], // jsonb version 2
      [3802, Buffer.alloc(0)],
      [23, Buffer.alloc(3)],
      [20, Buffer.alloc(4)],
      [701, Buffer.alloc(7)],
      [790, Buffer.alloc(4)],
      [18, Buffer.alloc(2)],
      [869, patched(inet, 0, 4)], // family 4
      [869, patched(inet, 1, 33)], // 33 bits
      [869, inet.subarray(0, 7)],
      [1007, patched(array, 11, 20)], // element type int8 in an int4 array
      [1007, array.subarray(0, array.length - 1)],
      [1007, Buffer.concat([array, Buffer.alloc(1)])],
      [1007, patched(array, 3, 7)], // 7 dimensions
      [1007, patched(array, 15, 0xff)], // dimension of 255 elements
      [602, patched(path, 0, 2)], // closed flag 2
      [602, path.subarray(0, path.length - 8)],
      [600, Buffer.alloc(15)],
    ];
    for (const [oid, b] of bad) expect(() => binaryAsText(oid, b), `oid ${oid}: ${b.toString("hex")}`).toThrow(ProtocolViolation);
  });
});

describe("OPAQUE_SAFE", () => {
  test("holds the types that cannot carry a secret, not those that can", () => {
    for (const oid of [16, 2950, 1184, 1114, 1082, 1186, 27, 28, 829, 1560, 3220, 1000, 2951, 1185]) expect(OPAQUE_SAFE.has(oid)).toBe(true);
    for (const oid of [701, 700, 20, 23, 25, 1043, 3802, 1700, 869, 600, 774, 5069, 1022, 1016, 17]) expect(OPAQUE_SAFE.has(oid)).toBe(false);
  });

  test("every entry is a type whose array (or element) type is an entry too, and none is decoded", async () => {
    const oids = [...OPAQUE_SAFE];
    const rows = await sql.unsafe<{ oid: number; typname: string; partner: number }[]>(
      `SELECT oid::int, typname, (CASE WHEN typarray <> 0 THEN typarray ELSE typelem END)::int AS partner
       FROM pg_type WHERE oid = ANY('{${oids.join(",")}}'::oid[])`,
    );
    expect(rows.map((r) => r.oid).sort()).toEqual(oids.sort());
    for (const r of rows) expect(OPAQUE_SAFE.has(r.partner), `${r.typname}'s partner ${r.partner}`).toBe(true);
    for (const oid of oids) expect(binaryAsText(oid, Buffer.alloc(8))).toBeUndefined();
  });

  test("unknown types are neither decoded nor safe", () => {
    for (const oid of [4072, 30, 0, 123456]) {
      expect(binaryAsText(oid, Buffer.from("x"))).toBeUndefined();
      expect(OPAQUE_SAFE.has(oid)).toBe(false);
    }
  });
});
