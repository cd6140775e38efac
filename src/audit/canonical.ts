/**
 * Canonical JSON: the one byte form of a record that the log hashes.
 *
 * Same output as RFC 8785 (JCS) for the values a record holds: object keys
 * sorted by UTF-16 code units at every depth, no whitespace, strings and
 * numbers written as ECMAScript's JSON.stringify writes them.
 *
 * Follows JSON.stringify where it is unambiguous (`toJSON()` is honoured, so
 * a Date becomes its ISO string; an `undefined` property is left out; an
 * `undefined` array element or a hole becomes null) and refuses the rest: a
 * non-finite number, a bigint, a function or symbol value, or a cycle throw
 * AgateError "AUDIT_BAD_RECORD" instead of silently writing null or {}.
 *
 * Two implementations, one output. The fast path (every audit record goes
 * through it) copies the value into fresh plain objects whose keys are
 * inserted in sorted order, then lets one native JSON.stringify write it:
 * for such objects, JSON.stringify's key order is the insertion order and
 * its strings and numbers are exactly the canonical forms. Building the
 * text piece by piece in JavaScript costs several times more (mostly in
 * flattening the concatenated string). A value the fast path cannot be sure
 * of goes to the full canonicalizer, which produces the result or the
 * error with its path: a value to refuse, nesting deeper than FAST_DEPTH
 * (which is also how a cycle shows up), a key that is an array index (a
 * plain object lists those first, in numeric order) or "__proto__".
 * test/audit.test.ts checks that the two agree.
 */
import { AgateError } from "../core/errors.ts";

export function canonicalJson(value: unknown): string {
  if (!protosClean()) return canonicalFull(value);
  const c = copy(value, 0);
  if (c === BAIL) return canonicalFull(value);
  if (c === undefined) throw bad("$", "a record must be a JSON value");
  return JSON.stringify(c);
}

/**
 * Canonical JSON of `{ ...fields, v, i, prev, t }` without building that
 * object first: the reserved keys go in at their sorted places. The caller
 * has checked that `fields` is an object without those keys.
 */
export function canonicalRecord(fields: Record<string, unknown>, v: number, i: number, prev: string, t: string): string {
  const full = () => canonicalFull({ ...fields, v, i, prev, t });
  if (!protosClean() || i - i !== 0 || v - v !== 0) return full();
  const reserved = [i, prev, t, v];
  const keys = sortedKeys(fields);
  const out: Record<string, unknown> = {};
  let r = 0;
  for (let k = 0; k < keys.length; k++) {
    const key = keys[k]!;
    while (r < 4 && RESERVED_SORTED[r]! < key) out[RESERVED_SORTED[r]!] = reserved[r++];
    if (r < 4 && RESERVED_SORTED[r] === key) return full();
    if (!plainKey(key)) return full();
    const c = copy(fields[key], 1);
    if (c === BAIL) return full();
    if (c !== undefined) out[key] = c;
  }
  while (r < 4) out[RESERVED_SORTED[r]!] = reserved[r++];
  return JSON.stringify(out);
}

/**
 * The canonical JSON of a record's fields, split where the keys every record gets (i, prev, t, v) go: five runs
 * of `"key":value` members, comma-separated, each maybe empty. joinRecordParts() completes the record, with
 * the same text canonicalRecord() writes. A worker thread encodes its records this way (src/workers), and the
 * writer, which alone knows i and prev, only joins. The caller has checked that `fields` has none of those keys.
 */
export function canonicalParts(fields: Record<string, unknown>): string[] {
  const parts = ["", "", "", "", ""];
  // Object keys sort by UTF-16 code units, as the default sort compares strings.
  const keys = Object.keys(fields).sort();
  let r = 0;
  for (const key of keys) {
    const value = fields[key];
    if (value === undefined) continue;
    while (r < 4 && RESERVED_SORTED[r]! < key) r++;
    const member = `${JSON.stringify(key)}:${canonicalJson(value)}`;
    parts[r] = parts[r] ? `${parts[r]},${member}` : member;
  }
  return parts;
}

/** canonicalRecord()'s text from canonicalParts(fields) at `at` in `parts`. */
export function joinRecordParts(parts: readonly string[], at: number, v: number, i: number, prev: string, t: string): string {
  let out = "{";
  const add = (member: string) => {
    if (member) out += out.length > 1 ? `,${member}` : member;
  };
  add(parts[at]!);
  add(`"i":${i}`);
  add(parts[at + 1]!);
  add(`"prev":${JSON.stringify(prev)}`);
  add(parts[at + 2]!);
  add(`"t":${JSON.stringify(t)}`);
  add(parts[at + 3]!);
  add(`"v":${v}`);
  add(parts[at + 4]!);
  return `${out}}`;
}

/** The keys every record gets, in sorted order. */
const RESERVED_SORTED = ["i", "prev", "t", "v"];

/** Nesting the fast path follows before it hands over. */
const FAST_DEPTH = 64;

const BAIL = Symbol("bail");

/** JSON.stringify calls an inherited toJSON on our copies too; if someone has set one, take the full path. */
function protosClean(): boolean {
  return (Object.prototype as { toJSON?: unknown }).toJSON === undefined && (Array.prototype as { toJSON?: unknown }).toJSON === undefined;
}

/** A key a fresh object keeps in insertion order and stores as an own property: not an array index, not "__proto__". */
function plainKey(key: string): boolean {
  const c = key.charCodeAt(0);
  return !(c >= 48 && c <= 57) && key !== "__proto__";
}

/** Own enumerable keys sorted by UTF-16 code units; usually already in order. */
function sortedKeys(obj: object): string[] {
  const keys = Object.keys(obj);
  const n = keys.length;
  for (let k = 1; k < n; k++) {
    if (keys[k - 1]! > keys[k]!) {
      if (n > 16) return keys.sort();
      for (let a = k; a < n; a++) {
        const x = keys[a]!;
        let b = a - 1;
        while (b >= 0 && keys[b]! > x) {
          keys[b + 1] = keys[b]!;
          b--;
        }
        keys[b + 1] = x;
      }
      return keys;
    }
  }
  return keys;
}

/**
 * `v` as fresh plain arrays and objects (keys inserted in sorted order) of
 * strings, finite numbers, booleans and null, toJSON() applied, read once;
 * undefined for a value to leave out; BAIL for the full canonicalizer.
 */
function copy(v: unknown, depth: number): unknown {
  switch (typeof v) {
    case "string":
    case "boolean":
    case "undefined":
      return v;
    case "number":
      return v - v === 0 ? v : BAIL;
    case "object":
      break;
    default:
      return BAIL;
  }
  if (v === null) return null;
  if (depth > FAST_DEPTH) return BAIL;
  const toJSON = (v as { toJSON?: unknown }).toJSON;
  if (typeof toJSON === "function") return copy(toJSON.call(v), depth + 1);
  if (Array.isArray(v)) {
    const n = v.length;
    const out: unknown[] = new Array(n);
    for (let k = 0; k < n; k++) {
      const c = copy(v[k], depth + 1);
      if (c === BAIL) return BAIL;
      out[k] = c === undefined ? null : c;
    }
    return out;
  }
  const obj = v as Record<string, unknown>;
  const keys = sortedKeys(obj);
  const out: Record<string, unknown> = {};
  for (let k = 0; k < keys.length; k++) {
    const key = keys[k]!;
    if (!plainKey(key)) return BAIL;
    const c = copy(obj[key], depth + 1);
    if (c === BAIL) return BAIL;
    if (c !== undefined) out[key] = c;
  }
  return out;
}

/** The full canonicalizer: tracks the path for its errors and the stack for cycles. Exported for tests. */
export function canonicalFull(value: unknown): string {
  const out = writeFull(value, [], "$");
  if (out === undefined) throw bad("$", "a record must be a JSON value");
  return out;
}

function writeFull(v: unknown, stack: object[], path: string): string | undefined {
  switch (typeof v) {
    case "string":
      return JSON.stringify(v);
    case "boolean":
      return v ? "true" : "false";
    case "number":
      if (!Number.isFinite(v)) throw bad(path, `the number ${v} has no JSON form`);
      return JSON.stringify(v);
    case "undefined":
      return undefined;
    case "object":
      break;
    default:
      throw bad(path, `a ${typeof v} has no JSON form`);
  }
  if (v === null) return "null";
  const toJSON = (v as { toJSON?: unknown }).toJSON;
  if (typeof toJSON === "function") return writeFull(toJSON.call(v), stack, path);
  if (stack.includes(v)) throw bad(path, "the value contains a cycle");
  stack.push(v);
  let out: string;
  if (Array.isArray(v)) {
    const parts: string[] = [];
    for (let k = 0; k < v.length; k++) parts.push(writeFull(v[k], stack, `${path}[${k}]`) ?? "null");
    out = "[" + parts.join(",") + "]";
  } else {
    const obj = v as Record<string, unknown>;
    const parts: string[] = [];
    for (const key of Object.keys(obj).sort()) {
      const s = writeFull(obj[key], stack, `${path}.${key}`);
      if (s !== undefined) parts.push(JSON.stringify(key) + ":" + s);
    }
    out = "{" + parts.join(",") + "}";
  }
  stack.pop();
  return out;
}

function bad(path: string, why: string): AgateError {
  return new AgateError("AUDIT_BAD_RECORD", `Cannot write an audit record: at ${path}, ${why}.`, { path });
}
