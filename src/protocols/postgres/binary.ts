/**
 * Text forms of binary-format PostgreSQL values, so that masking can run its
 * text detectors on result columns a driver asked for in binary (format code
 * 1 in Bind).
 *
 *   binaryAsText(oid, bytes)  exactly what PostgreSQL's output function would
 *                             print, for the types that can carry something a
 *                             detector finds: integers, floats, numeric,
 *                             money, inet/cidr, macaddr8, the geometric types
 *                             (float8 coordinates), the text-likes, and arrays
 *                             of these. undefined for any other type.
 *   OPAQUE_SAFE               types whose every value prints as text no
 *                             detector can match (dates, uuids, bits…), and
 *                             arrays of them: nothing to decode. A type in
 *                             neither is unknown, and the caller must treat
 *                             it as such.
 *   textBytesOffset(oid)      where the UTF-8 text starts inside a text-like
 *                             binary value, so it can be masked in place.
 *
 * The formats are those of the types' *_send functions (src/backend/utils/
 * adt/ in PostgreSQL); the text is their *_out as of PostgreSQL 15, with
 * floats in the shortest exact form (extra_float_digits > 0, the default
 * since 12) and money without locale symbols ("-12.34"). A malformed value
 * of a decoded type throws ProtocolViolation.
 */
import { Buffer } from "node:buffer";
import { ProtocolViolation, Reader } from "./wire.ts";

const INT8 = 20, INT2 = 21, INT4 = 23, OID = 26, XID8 = 5069, FLOAT4 = 700, FLOAT8 = 701, NUMERIC = 1700, MONEY = 790;
const INET = 869, CIDR = 650, MACADDR8 = 774, CHAR = 18, JSONB = 3802, RECORD = 2249, TSVECTOR = 3614, BYTEA = 17;
const POINT = 600, LSEG = 601, PATH = 602, BOX = 603, POLYGON = 604, LINE = 628, CIRCLE = 718;
const GEOMETRIC: ReadonlyMap<number, string> = new Map([
  [POINT, "point"], [LSEG, "lseg"], [PATH, "path"], [BOX, "box"], [POLYGON, "polygon"], [LINE, "line"], [CIRCLE, "circle"],
]);

/** text, varchar, bpchar, name, unknown, json, xml: the binary form is the text ("char" is too, but prints non-ASCII as octal). */
const TEXT_LIKE: ReadonlySet<number> = new Set([25, 1043, 1042, 19, 705, 114, 142]);

/** Array type → element type, for the arrays binaryAsText decodes (pg_type.typarray). */
const ARRAY_OF: ReadonlyMap<number, number> = new Map([
  [1005, INT2], [1007, INT4], [1016, INT8], [1028, OID], [271, XID8], [1021, FLOAT4], [1022, FLOAT8], [1231, NUMERIC],
  [791, MONEY], [1041, INET], [651, CIDR], [775, MACADDR8], [1002, CHAR], [3807, JSONB],
  [1009, 25], [1015, 1043], [1014, 1042], [1003, 19], [199, 114], [143, 142],
  [1017, POINT], [1018, LSEG], [1019, PATH], [1020, BOX], [1027, POLYGON], [629, LINE], [719, CIRCLE],
  [2287, RECORD], [3643, TSVECTOR], [1001, BYTEA],
]);

/**
 * Each of these prints as text no detector (card, ssn, phone, ip, email,
 * tokens…) can match: numbers of at most 10 digits (12 in a uuid's last
 * group; cards need 13), bit strings of 0s and 1s (no card issuer starts
 * so), lowercase or short hex, fixed punctuation and words. They are: bool,
 * tid, xid, cid, the reg* types (whose binary form is the bare oid: only
 * their text form holds a name), date, time, timetz, timestamp,
 * timestamptz, interval, uuid, macaddr (six 2-hex groups, not an IPv6
 * shape), bit, varbit, pg_lsn, the date and time ranges and multiranges;
 * and the arrays of all of these. Not here, though they look harmless:
 * float8-based geometric types ("(378282246310005,0)" holds a card
 * number), macaddr8 (eight colon-separated hex groups parse as IPv6), xid8
 * (20 digits), oidvector ("4111 1111 1111 1111").
 */
export const OPAQUE_SAFE: ReadonlySet<number> = new Set([
  16, 27, 28, 29, 24, 2202, 2203, 2204, 2205, 2206, 3734, 3769, 4089, 4096, 4191,
  1082, 1083, 1266, 1114, 1184, 1186, 2950, 829, 1560, 1562, 3220, 3908, 3910, 3912, 4533, 4534, 4535,
  // their arrays
  1000, 1010, 1011, 1012, 1008, 2207, 2208, 2209, 2210, 2211, 3735, 3770, 4090, 4097, 4192,
  1182, 1183, 1270, 1115, 1185, 1187, 2951, 1040, 1561, 1563, 3221, 3909, 3911, 3913, 6152, 6153, 6155,
]);

/** Where the UTF-8 text starts in a binary value of a text-like type: 0, or 1 for jsonb (after its version byte); undefined for other types. */
export function textBytesOffset(oid: number): number | undefined {
  if (TEXT_LIKE.has(oid) || oid === CHAR) return 0;
  return oid === JSONB ? 1 : undefined;
}

/**
 * What a user-defined type is, as the target's catalog says (catalog.ts
 * loadTypes): read as another type (an enum or citext as text, a composite
 * as record, a domain as its base type), an array, range or multirange of
 * an element or subtype, or hstore.
 */
export type UserType = { as: number } | { array: number } | { range: number } | { multirange: number } | { hstore: true };
/** The catalog's answer for a user-defined type; undefined when it is not known. */
export type UserTypes = (oid: number) => UserType | undefined;

/** Built-in range and multirange types → their subtype (pg_range). */
/** Built-in range and multirange types of numbers → their subtype (pg_range; those of dates and times are OPAQUE_SAFE). */
const RANGE_OF: ReadonlyMap<number, number> = new Map([[3904, INT4], [3926, INT8], [3906, NUMERIC]]);
const MULTIRANGE_OF: ReadonlyMap<number, number> = new Map([[4451, INT4], [4536, INT8], [4532, NUMERIC]]);

/** The text PostgreSQL would print for a binary-format value of type `oid`, or undefined when agate cannot decode that type. Throws ProtocolViolation on a malformed value of a type it does decode. */
export function binaryAsText(oid: number, value: Buffer, user?: UserTypes): string | undefined {
  if (TEXT_LIKE.has(oid)) return value.toString("utf8");
  switch (oid) {
    case INT2:
      return String(sized(value, 2, "int2").readInt16BE(0));
    case INT4:
      return String(sized(value, 4, "int4").readInt32BE(0));
    case OID:
      return String(sized(value, 4, "oid").readUInt32BE(0));
    case INT8:
      return String(sized(value, 8, "int8").readBigInt64BE(0));
    case XID8:
      return String(sized(value, 8, "xid8").readBigUInt64BE(0));
    case FLOAT4:
      return floatText(sized(value, 4, "float4").readFloatBE(0), true);
    case FLOAT8:
      return floatText(sized(value, 8, "float8").readDoubleBE(0), false);
    case MONEY: {
      const cents = sized(value, 8, "money").readBigInt64BE(0);
      const abs = String(cents < 0n ? -cents : cents).padStart(3, "0");
      return `${cents < 0n ? "-" : ""}${abs.slice(0, -2)}.${abs.slice(-2)}`;
    }
    case NUMERIC:
      return numericText(value);
    case INET:
    case CIDR:
      return inetText(value, oid === CIDR);
    case MACADDR8:
      return [...sized(value, 8, "macaddr8")].map((b) => b.toString(16).padStart(2, "0")).join(":");
    case CHAR: {
      // charout (PostgreSQL 15+): NUL prints as nothing, non-ASCII as \ooo
      const b = sized(value, 1, '"char"')[0]!;
      return b === 0 ? "" : b < 0x80 ? String.fromCharCode(b) : `\\${b.toString(8).padStart(3, "0")}`;
    }
    case JSONB:
      if (value[0] !== 1) throw new ProtocolViolation(`malformed binary jsonb: ${value.length === 0 ? "empty" : `version ${value[0]}`}, want 1`);
      return value.toString("utf8", 1);
  }
  if (GEOMETRIC.has(oid)) return geometricText(oid, value);
  if (oid === RECORD) return recordText(value, user);
  if (oid === BYTEA) return `\\x${value.toString("hex")}`;
  if (oid === TSVECTOR) return tsvectorText(value);
  const sub = RANGE_OF.get(oid);
  if (sub !== undefined) return rangeText(value, sub, user);
  const msub = MULTIRANGE_OF.get(oid);
  if (msub !== undefined) return multirangeText(value, msub, user);
  const elem = ARRAY_OF.get(oid);
  return elem === undefined ? undefined : arrayText(value, elem, user);
}

/** User-defined types start here (FirstNormalObjectId). */
export const FIRST_USER_OID = 16384;

/**
 * A binary value of a type agate has no table for (a composite or an array
 * of composites created where agate's catalog lookups cannot see it, such
 * as in the client's open transaction), read by its shape: the text of a
 * record, or of an array, when the bytes parse exactly as one whose every
 * field or element agate can read; otherwise undefined.
 */
export function shapeAsText(value: Buffer, user?: UserTypes): string | undefined {
  for (const read of [(v: Buffer) => recordText(v, user), (v: Buffer) => arrayText(v, undefined, user)]) {
    try {
      const text = read(value);
      if (text !== undefined) return text;
    } catch (e) {
      if (!(e instanceof ProtocolViolation)) throw e;
    }
  }
  return undefined;
}

/**
 * A value of type `oid`: decoded, a place holder for a type that cannot
 * hold a detector's find, a user-defined type as the catalog describes it
 * (`user`), or read by its shape; undefined when unreadable.
 */
export function fieldText(oid: number, value: Buffer, user?: UserTypes): string | undefined {
  const text = binaryAsText(oid, value, user);
  if (text !== undefined) return text;
  if (OPAQUE_SAFE.has(oid)) return "?";
  if (oid < FIRST_USER_OID) return undefined;
  const u = user?.(oid);
  if (u === undefined) return shapeAsText(value, user);
  if ("as" in u) return u.as === oid ? undefined : fieldText(u.as, value, user);
  if ("array" in u) return arrayText(value, u.array, user);
  if ("range" in u) return rangeText(value, u.range, user);
  if ("multirange" in u) return multirangeText(value, u.multirange, user);
  return hstoreText(value);
}

function sized(value: Buffer, n: number, type: string): Buffer {
  if (value.length !== n) throw new ProtocolViolation(`malformed binary ${type}: ${value.length} bytes, want ${n}`);
  return value;
}

/** Every byte read: a value has no trailing bytes. */
function ended(r: Reader, type: string): void {
  if (r.remaining !== 0) throw new ProtocolViolation(`malformed binary ${type}: ${r.remaining} trailing bytes`);
}

// ---------------------------------------------------------------------------
// floats

/**
 * float4out/float8out with extra_float_digits > 0 (the default since
 * PostgreSQL 12): Ryu's shortest digits, fixed notation for decimal
 * exponents -4 ≤ e < 6 (float4) or < 15 (float8), else "d.ddde±XX".
 */
function floatText(x: number, single: boolean): string {
  if (Number.isNaN(x)) return "NaN";
  if (x === Infinity) return "Infinity";
  if (x === -Infinity) return "-Infinity";
  if (x === 0) return Object.is(x, -0) ? "-0" : "0";
  const sign = x < 0 ? "-" : "";
  const [digits, exp] = shortestDigits(Math.abs(x), single);
  if (exp < -4 || exp >= (single ? 6 : 15)) {
    const e = Math.abs(exp);
    return `${sign}${digits[0]}${digits.length > 1 ? `.${digits.slice(1)}` : ""}e${exp < 0 ? "-" : "+"}${e < 10 ? "0" : ""}${e}`;
  }
  if (exp < 0) return `${sign}0.${"0".repeat(-exp - 1)}${digits}`;
  if (digits.length <= exp + 1) return sign + digits.padEnd(exp + 1, "0");
  return `${sign}${digits.slice(0, exp + 1)}.${digits.slice(exp + 1)}`;
}

const floatBits = new DataView(new ArrayBuffer(8));
const pow = (b: bigint, n: number): bigint => (n === 0 ? 1n : b ** BigInt(n));

/**
 * The digits and decimal exponent (of the first digit) of finite `x` > 0 as
 * PostgreSQL's Ryu prints it: the fewest digits strictly inside the interval
 * of reals that round to `x` (PostgreSQL builds Ryu without accepting the
 * interval's bounds), of those the nearest to `x`, ties to even. Exact, in
 * BigInt: x = m·2^e, the interval's ends (4m - 1 - shift)·2^(e-2) and
 * (4m + 2)·2^(e-2), the lower gap halved just above a power of two.
 */
function shortestDigits(x: number, single: boolean): [string, number] {
  let m: bigint, e2: number, shift: bigint;
  if (single) {
    floatBits.setFloat32(0, x);
    const bits = floatBits.getUint32(0);
    const ie = bits >>> 23, im = bits & 0x7fffff;
    [m, e2, shift] = [BigInt(ie === 0 ? im : im | 0x800000), (ie === 0 ? 1 : ie) - 150, im !== 0 || ie <= 1 ? 1n : 0n];
  } else {
    floatBits.setFloat64(0, x);
    const bits = floatBits.getBigUint64(0);
    const ie = Number(bits >> 52n), im = bits & 0xfffffffffffffn;
    [m, e2, shift] = [ie === 0 ? im : im | 0x10000000000000n, (ie === 0 ? 1 : ie) - 1075, im !== 0n || ie <= 1 ? 1n : 0n];
  }
  const e = e2 - 2;
  const v = 4n * m, lo = v - 1n - shift, hi = v + 2n;
  // Digits at 10^k: the multiples of 10^k strictly between lo and hi (values ·2^e), if any.
  // Whether there are any only gets likelier as k falls; JavaScript's own shortest form
  // (which accepts the bounds) is where to start looking.
  const at = (k: number) => {
    const num = pow(2n, Math.max(e, 0)) * pow(10n, Math.max(-k, 0)); // value·2^e / 10^k = value·num / den
    const den = pow(2n, Math.max(-e, 0)) * pow(10n, Math.max(k, 0));
    const first = (lo * num) / den + 1n;
    return first * den < hi * num ? { num, den, first, last: (hi * num - 1n) / den } : undefined;
  };
  const [mant, exp] = x.toExponential().split("e") as [string, string];
  let k = Number(exp) - (mant.length > 1 ? mant.length - 2 : 0);
  let fit = at(k);
  for (; fit === undefined; fit = at(k)) k--;
  for (let up = at(k + 1); up !== undefined; up = at(k + 1)) [k, fit] = [k + 1, up];
  const { num, den, first, last } = fit;
  let d = (v * num) / den;
  const twice = 2n * ((v * num) % den);
  if (twice > den || (twice === den && d % 2n === 1n)) d++;
  d = d < first ? first : d > last ? last : d;
  const digits = d.toString();
  return [digits, digits.length - 1 + k];
}

// ---------------------------------------------------------------------------
// numeric

const NUMERIC_POS = 0x0000, NUMERIC_NEG = 0x4000, NUMERIC_NAN = 0xc000, NUMERIC_PINF = 0xd000, NUMERIC_NINF = 0xf000;

/** numeric_send: ndigits, weight, sign, dscale (int16 each), then ndigits base-10000 digits; printed as get_str_from_var does. */
function numericText(value: Buffer): string {
  const r = new Reader(value);
  const ndigits = r.i16() & 0xffff;
  const weight = r.i16();
  const sign = r.i16() & 0xffff;
  const dscale = r.i16() & 0xffff;
  const digits: number[] = [];
  for (let i = 0; i < ndigits; i++) {
    const d = r.i16();
    if (d < 0 || d > 9999) throw new ProtocolViolation(`malformed binary numeric: digit ${d}`);
    digits.push(d);
  }
  ended(r, "numeric");
  if (sign === NUMERIC_NAN) return "NaN";
  if (sign === NUMERIC_PINF) return "Infinity";
  if (sign === NUMERIC_NINF) return "-Infinity";
  if (sign !== NUMERIC_POS && sign !== NUMERIC_NEG) throw new ProtocolViolation(`malformed binary numeric: sign 0x${sign.toString(16)}`);
  if (dscale > 0x3fff) throw new ProtocolViolation(`malformed binary numeric: dscale ${dscale}`);
  const group = (d: number) => String(d >= 0 && d < ndigits ? digits[d]! : 0).padStart(4, "0");
  let s = sign === NUMERIC_NEG ? "-" : "";
  if (weight < 0) s += "0";
  else {
    s += String(ndigits > 0 ? digits[0]! : 0); // the first group without leading zeros
    for (let d = 1; d <= weight; d++) s += group(d);
  }
  if (dscale > 0) {
    let frac = "";
    for (let d = weight + 1; frac.length < dscale; d++) frac += group(d);
    s += `.${frac.slice(0, dscale)}`;
  }
  return s;
}

// ---------------------------------------------------------------------------
// inet, cidr

/** inet_send: family (2 IPv4, 3 IPv6), bits, is_cidr, address length, address; printed as network_out. */
function inetText(value: Buffer, cidr: boolean): string {
  const type = cidr ? "cidr" : "inet";
  const r = new Reader(value);
  const family = r.u8();
  const bits = r.u8();
  const isCidr = r.u8();
  const nb = r.u8();
  const size = family === 2 ? 4 : family === 3 ? 16 : 0;
  if (size === 0 || nb !== size || bits > size * 8 || isCidr > 1) {
    throw new ProtocolViolation(`malformed binary ${type}: family ${family}, ${bits} bits, ${nb} address bytes`);
  }
  const addr = r.bytes(nb);
  ended(r, type);
  const text = size === 4 ? addr.join(".") : ipv6Text(addr);
  return bits !== size * 8 || cidr ? `${text}/${bits}` : text;
}

/** inet_net_ntop_ipv6: the first longest run (≥ 2) of zero words as "::", embedded IPv4 for ::a.b.c.d and ::ffff:a.b.c.d. */
function ipv6Text(a: Buffer): string {
  const words = Array.from({ length: 8 }, (_, i) => a.readUInt16BE(2 * i));
  let best = -1, bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j;
  }
  if (bestLen < 2) best = -1;
  let s = "";
  for (let i = 0; i < 8; i++) {
    if (best >= 0 && i >= best && i < best + bestLen) {
      if (i === best) s += ":";
      continue;
    }
    if (i !== 0) s += ":";
    if (i === 6 && best === 0 && (bestLen === 6 || (bestLen === 5 && words[5] === 0xffff))) {
      return s + a.subarray(12).join(".");
    }
    s += words[i]!.toString(16);
  }
  return best >= 0 && best + bestLen === 8 ? `${s}:` : s;
}

// ---------------------------------------------------------------------------
// geometric types: float8 coordinates, printed with float8's text form

function geometricText(oid: number, value: Buffer): string {
  const type = GEOMETRIC.get(oid)!;
  const r = new Reader(value);
  const f = () => floatText(r.bytes(8).readDoubleBE(0), false);
  const pt = () => `(${f()},${f()})`;
  const points = () => {
    const n = r.i32();
    if (n <= 0 || n * 16 !== r.remaining) throw new ProtocolViolation(`malformed binary ${type}: ${n} points in ${r.remaining} bytes`);
    return Array.from({ length: n }, pt).join(",");
  };
  let s: string;
  if (oid === POINT) s = pt();
  else if (oid === LSEG) s = `[${pt()},${pt()}]`;
  else if (oid === BOX) s = `${pt()},${pt()}`;
  else if (oid === LINE) s = `{${f()},${f()},${f()}}`;
  else if (oid === CIRCLE) s = `<${pt()},${f()}>`;
  else if (oid === POLYGON) s = `(${points()})`;
  else {
    const closed = r.u8();
    if (closed > 1) throw new ProtocolViolation(`malformed binary path: closed flag ${closed}`);
    s = closed ? `(${points()})` : `[${points()}]`;
  }
  ended(r, type);
  return s;
}

// ---------------------------------------------------------------------------
// arrays

const MAXDIM = 6;

/**
 * array_send: ndim, has-nulls flag, element oid, per dimension its size and
 * lower bound, then each element as int32 length (-1: NULL) and bytes.
 * Printed as array_out: "[lb:ub]…=" when a lower bound is not 1, nested
 * braces, elements quoted when empty, "NULL"-like or holding a delimiter,
 * brace, quote, backslash or space.
 */
function arrayText(value: Buffer, elem?: number, user?: UserTypes): string | undefined {
  const r = new Reader(value);
  const ndim = r.i32();
  const flags = r.i32();
  const elemOid = r.i32() >>> 0;
  if (ndim < 0 || ndim > MAXDIM || (flags !== 0 && flags !== 1) || (elem !== undefined && elemOid !== elem)) {
    throw new ProtocolViolation(`malformed binary array: ${ndim} dimensions, flags ${flags}, element type ${elemOid} (want ${elem})`);
  }
  const dims: number[] = [];
  const lbounds: number[] = [];
  let count = ndim === 0 ? 0 : 1;
  for (let i = 0; i < ndim; i++) {
    const dim = r.i32();
    const lb = r.i32();
    if (dim < 0 || lb + dim - 1 > 0x7fffffff) throw new ProtocolViolation(`malformed binary array: dimension ${dim} from ${lb}`);
    dims.push(dim);
    lbounds.push(lb);
    count *= dim;
  }
  if (count * 4 > r.remaining) throw new ProtocolViolation(`malformed binary array: ${count} elements in ${r.remaining} bytes`);
  const delim = elemOid === BOX ? ";" : ",";
  const items: string[] = [];
  for (let i = 0; i < count; i++) {
    const len = r.i32();
    if (len < -1) throw new ProtocolViolation(`malformed binary array: element length ${len}`);
    if (len === -1) {
      items.push("NULL");
      continue;
    }
    const text = elem === undefined || elem >= FIRST_USER_OID ? fieldText(elemOid, r.bytes(len), user) : binaryAsText(elem, r.bytes(len), user);
    if (text === undefined) return undefined;
    items.push(quoteElement(text, delim));
  }
  ended(r, "array");
  if (count === 0) return "{}";
  let next = 0;
  const nest = (d: number): string => {
    const parts: string[] = [];
    for (let i = 0; i < dims[d]!; i++) parts.push(d === ndim - 1 ? items[next++]! : nest(d + 1));
    return `{${parts.join(delim)}}`;
  };
  const bounds = lbounds.some((lb) => lb !== 1) ? `${dims.map((dim, i) => `[${lbounds[i]}:${lbounds[i]! + dim - 1}]`).join("")}=` : "";
  return bounds + nest(0);
}

/**
 * record_send (a row value, and every composite type): the field count,
 * then each field as its type oid, int32 length (-1: NULL) and bytes.
 * Printed as record_out: "(a,,\"b c\")", a field quoted when empty or
 * holding a parenthesis, comma, quote, backslash or space. A field of a type
 * that cannot hold what a detector finds prints as its type's place holder
 * ("?"); one of a type agate cannot read makes the whole record unreadable.
 */
function recordText(value: Buffer, user?: UserTypes): string | undefined {
  const r = new Reader(value);
  const n = r.i32();
  if (n < 0 || n * 8 > r.remaining) throw new ProtocolViolation(`malformed binary record: ${n} fields in ${r.remaining} bytes`);
  const fields: string[] = [];
  for (let i = 0; i < n; i++) {
    const oid = r.i32() >>> 0;
    const len = r.i32();
    if (len < -1) throw new ProtocolViolation(`malformed binary record: field length ${len}`);
    if (len === -1) {
      fields.push("");
      continue;
    }
    const t = fieldText(oid, r.bytes(len), user);
    if (t === undefined) return undefined;
    fields.push(t !== "" && !RECORD_QUOTES.test(t) ? t : `"${t.replace(/["\\]/g, "$&$&")}"`);
  }
  ended(r, "record");
  return `(${fields.join(",")})`;
}

/**
 * tsvectorsend: the lexeme count, then each lexeme as a NUL-terminated
 * string, its position count and positions (14 bits of position, 2 of
 * weight). Printed as tsvectorout: 'lexeme' with ' and \ doubled, then
 * :pos,pos… with weights A, B, C (D is not written), lexemes space-separated.
 */
function tsvectorText(value: Buffer): string {
  const r = new Reader(value);
  const n = r.i32();
  if (n < 0 || n > r.remaining) throw new ProtocolViolation(`malformed binary tsvector: ${n} lexemes in ${r.remaining} bytes`);
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    let lexeme = `'${r.cstr().replace(/['\\]/g, "$&$&")}'`;
    const npos = r.i16() & 0xffff;
    const pos: string[] = [];
    for (let j = 0; j < npos; j++) {
      const p = r.i16() & 0xffff;
      pos.push(`${p & 0x3fff}${["", "C", "B", "A"][p >> 14]}`);
    }
    if (npos > 0) lexeme += `:${pos.join(",")}`;
    out.push(lexeme);
  }
  ended(r, "tsvector");
  return out.join(" ");
}

/**
 * range_send: a flags byte (empty 0x01, lower inclusive 0x02, upper
 * inclusive 0x04, lower infinite 0x08, upper infinite 0x10), then each
 * finite bound as int32 length and bytes of the subtype. Printed as
 * range_out: "empty", or "[lo,hi)" with an infinite bound left empty and a
 * bound quoted as a record field is.
 */
function rangeText(value: Buffer, sub: number, user?: UserTypes): string | undefined {
  const r = new Reader(value);
  const flags = r.u8();
  if (flags & 0x01) {
    ended(r, "range");
    return "empty";
  }
  const bound = (infinite: boolean): string | undefined => {
    if (infinite) return "";
    const len = r.i32();
    if (len < 0) throw new ProtocolViolation(`malformed binary range: bound length ${len}`);
    const t = fieldText(sub, r.bytes(len), user);
    return t === undefined || (t !== "" && !RANGE_QUOTES.test(t)) ? t : `"${t.replace(/["\\]/g, "$&$&")}"`;
  };
  const lo = bound((flags & 0x08) !== 0);
  const hi = bound((flags & 0x10) !== 0);
  ended(r, "range");
  if (lo === undefined || hi === undefined) return undefined;
  return `${flags & 0x02 ? "[" : "("}${lo},${hi}${flags & 0x04 ? "]" : ")"}`;
}

/** multirange_send: the range count, then each range as int32 length and range_send bytes. Printed as "{[1,2),[5,6)}". */
function multirangeText(value: Buffer, sub: number, user?: UserTypes): string | undefined {
  const r = new Reader(value);
  const n = r.i32();
  if (n < 0 || n * 5 > r.remaining) throw new ProtocolViolation(`malformed binary multirange: ${n} ranges in ${r.remaining} bytes`);
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const len = r.i32();
    if (len < 1) throw new ProtocolViolation(`malformed binary multirange: range length ${len}`);
    const t = rangeText(r.bytes(len), sub, user);
    if (t === undefined) return undefined;
    out.push(t);
  }
  ended(r, "multirange");
  return `{${out.join(",")}}`;
}

/**
 * hstore_send (contrib/hstore): the pair count, then each key as int32
 * length and text, each value as int32 length (-1: NULL) and text. Printed
 * as hstore_out: "k"=>"v", "n"=>NULL, with " and \ backslash-escaped.
 */
function hstoreText(value: Buffer): string {
  const r = new Reader(value);
  const n = r.i32();
  if (n < 0 || n * 8 > r.remaining) throw new ProtocolViolation(`malformed binary hstore: ${n} pairs in ${r.remaining} bytes`);
  const quote = (b: Buffer) => `"${b.toString("utf8").replace(/["\\]/g, "\\$&")}"`;
  const pairs: string[] = [];
  for (let i = 0; i < n; i++) {
    const klen = r.i32();
    if (klen < 0) throw new ProtocolViolation(`malformed binary hstore: key length ${klen}`);
    const key = quote(r.bytes(klen));
    const vlen = r.i32();
    if (vlen < -1) throw new ProtocolViolation(`malformed binary hstore: value length ${vlen}`);
    pairs.push(`${key}=>${vlen === -1 ? "NULL" : quote(r.bytes(vlen))}`);
  }
  ended(r, "hstore");
  return pairs.join(", ");
}

const RANGE_QUOTES = /[()[\],"\\ \t\n\r\v\f]/;

const RECORD_QUOTES = /[(),"\\ \t\n\r\v\f]/;

const NEEDS_QUOTES = /[{}"\\ \t\n\r\v\f]/;

function quoteElement(s: string, delim: string): string {
  if (s !== "" && !NEEDS_QUOTES.test(s) && !s.includes(delim) && !/^null$/i.test(s)) return s;
  return `"${s.replace(/["\\]/g, "\\$&")}"`;
}

// ---------------------------------------------------------------------------
// masking inside a binary value

/** Arrays whose elements are text in their binary form, and can hold any text: text[], varchar[], bpchar[]. */
const TEXT_ARRAYS: ReadonlySet<number> = new Set([1009, 1015, 1014]);

/**
 * A binary value whose text leaves (the elements of a text array, the keys
 * and values of an hstore) are each passed through `mask` and written back
 * in the same binary format; the same buffer when nothing changed,
 * undefined for a type whose values cannot be rewritten so (an enum label,
 * a range bound, a number).
 */
export function maskInside(oid: number, value: Buffer, mask: (text: string) => string, user?: UserTypes): Buffer | undefined {
  const hstore = oid >= FIRST_USER_OID && (user?.(oid) as { hstore?: true } | undefined)?.hstore === true;
  if (!hstore && !TEXT_ARRAYS.has(oid)) return undefined;
  const r = new Reader(value);
  const parts: Buffer[] = [];
  let changed = false;
  const leaf = (nullable: boolean) => {
    const len = r.i32();
    if (len < (nullable ? -1 : 0)) throw new ProtocolViolation(`malformed binary ${hstore ? "hstore" : "array"}: length ${len}`);
    if (len === -1) {
      parts.push(Buffer.from([0xff, 0xff, 0xff, 0xff]));
      return;
    }
    const bytes = r.bytes(len);
    const text = bytes.toString("utf8");
    const out = mask(text);
    const b = out === text ? bytes : Buffer.from(out, "utf8");
    changed ||= b !== bytes;
    const head = Buffer.allocUnsafe(4);
    head.writeInt32BE(b.length);
    parts.push(head, b);
  };
  if (hstore) {
    const n = r.i32();
    if (n < 0 || n * 8 > r.remaining) throw new ProtocolViolation(`malformed binary hstore: ${n} pairs in ${r.remaining} bytes`);
    parts.push(value.subarray(0, 4));
    for (let i = 0; i < n; i++) {
      leaf(false);
      leaf(true);
    }
  } else {
    const ndim = r.i32();
    r.i32();
    r.i32();
    if (ndim < 0 || ndim > MAXDIM) throw new ProtocolViolation(`malformed binary array: ${ndim} dimensions`);
    let count = ndim === 0 ? 0 : 1;
    for (let i = 0; i < ndim; i++) {
      count *= r.i32();
      r.i32();
    }
    parts.push(value.subarray(0, 12 + 8 * ndim));
    if (count < 0 || count * 4 > r.remaining) throw new ProtocolViolation(`malformed binary array: ${count} elements in ${r.remaining} bytes`);
    for (let i = 0; i < count; i++) leaf(true);
  }
  ended(r, hstore ? "hstore" : "array");
  return changed ? Buffer.concat(parts) : value;
}
