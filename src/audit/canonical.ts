/**
 * Canonical JSON: the one byte form of a record that the log hashes.
 *
 * Same output as RFC 8785 (JCS) for the values a record holds: object keys
 * sorted by UTF-16 code units at every depth, no whitespace, strings and
 * numbers written as ECMAScript's JSON.stringify writes them.
 *
 * Follows JSON.stringify where it is unambiguous (`toJSON()` is honoured, so
 * a Date becomes its ISO string; an `undefined` property is left out; an
 * `undefined` array element becomes null) and refuses the rest: a
 * non-finite number, a bigint, a function or symbol value, or a cycle throw
 * AgateError "AUDIT_BAD_RECORD" instead of silently writing null or {}.
 */
import { AgateError } from "../core/errors.ts";

export function canonicalJson(value: unknown): string {
  const out = write(value, [], "$");
  if (out === undefined) throw bad("$", "a record must be a JSON value");
  return out;
}

function write(v: unknown, stack: object[], path: string): string | undefined {
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
  if (typeof toJSON === "function") return write(toJSON.call(v), stack, path);
  if (stack.includes(v)) throw bad(path, "the value contains a cycle");
  stack.push(v);
  let out: string;
  if (Array.isArray(v)) {
    out = "[" + v.map((x, i) => write(x, stack, `${path}[${i}]`) ?? "null").join(",") + "]";
  } else {
    const obj = v as Record<string, unknown>;
    const parts: string[] = [];
    for (const key of Object.keys(obj).sort()) {
      const s = write(obj[key], stack, `${path}.${key}`);
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
