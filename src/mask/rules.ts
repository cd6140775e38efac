/**
 * A policy decision's `mask` ({columns, detectors}) compiled once into what
 * the protocols apply to responses and the guard applies to records.
 *
 * Syntax, one string per rule, an optional style after the last ":":
 *
 *   detectors  "email", "card:partial", "jwt:hmac", "*" (every detector)
 *   columns    "public.users.email"   schema.table.column
 *              "users.email"          table.column, any schema
 *              "ssn:partial"          a column name, any table (also a
 *                                     result column's own name, e.g. an alias)
 *              "*.*.password*"        `*` matches any run of characters
 *
 * Names compare case-insensitively (a rule for "email" also covers a column
 * created as "Email": masking more is the safe side). Styles: "redact" (the
 * default: `[REDACTED:email]`), "partial" (the last 4 characters stay) and
 * "hmac" (a keyed hash, stable within a deployment; needs `mask.hmac_key`).
 *
 * A rule that cannot be compiled (unknown detector or style, an empty name,
 * hmac without a key) throws AgateError MASK_INVALID: the guard refuses the
 * command rather than run it unmasked.
 */
import { AgateError } from "../core/errors.ts";
import { ALL_DETECTORS, DETECTORS, findAll } from "./detectors.ts";
import { TRIGGERS, triggers } from "./prefilter.ts";
import { maskValue } from "./styles.ts";
import type { MaskCounts, MaskStyle } from "./types.ts";

export interface ColumnRule {
  /** The rule as the policy wrote it. */
  rule: string;
  /** 1 (column), 2 (table.column) or 3 (schema.table.column) patterns, outermost first. */
  parts: RegExp[];
  style: MaskStyle;
}

export interface CompiledMask {
  /** Detector names to run (findAll order does not matter). */
  detectors: string[];
  /** The style per detector name. */
  styles: Record<string, MaskStyle>;
  columns: ColumnRule[];
  /** No detectors and no column rules: nothing to do. */
  empty: boolean;
  /** The detectors that can match text with these prefilter triggers (prefilter.ts); frozen, the same list for the same bits. */
  forTriggers(bits: number): readonly string[];
}

export interface MaskKeys {
  /** HMAC key for the "hmac" style; without it, a rule asking for hmac is refused. */
  hmac?: Uint8Array;
}

const NONE: readonly string[] = Object.freeze([]);
export const NO_MASK: CompiledMask = Object.freeze({ detectors: [], styles: {}, columns: [], empty: true, forTriggers: () => NONE });

/** forTriggers for a list of detectors: one frozen subset per distinct set of triggers. */
function subsets(detectors: readonly string[]): (bits: number) => readonly string[] {
  const memo = new Map<number, readonly string[]>();
  return (bits) => {
    let names = memo.get(bits);
    if (names === undefined) {
      names = Object.freeze(detectors.filter((d) => (TRIGGERS[d]! & bits) !== 0));
      memo.set(bits, names);
    }
    return names;
  };
}

const NAME = /^[^\s.:]+$/;

function invalid(message: string): AgateError {
  return new AgateError("MASK_INVALID", message);
}

function styleOf(name: string | undefined, rule: string, keys: MaskKeys): MaskStyle {
  if (name === undefined || name === "redact") return { kind: "redact" };
  if (name === "partial") return { kind: "partial", keep: 4 };
  if (name === "hmac") {
    if (!keys.hmac) throw invalid(`mask rule ${JSON.stringify(rule)} asks for the hmac style, but this gateway has no mask.hmac_key configured`);
    return { kind: "hmac", key: keys.hmac };
  }
  throw invalid(`mask rule ${JSON.stringify(rule)} has an unknown style ${JSON.stringify(name)}; styles: redact, partial, hmac`);
}

/** "name:style" → [name, style]: whatever follows the last ":" is the style (styleOf checks it). */
function splitStyle(rule: string): [string, string | undefined] {
  const at = rule.lastIndexOf(":");
  if (at < 0) return [rule, undefined];
  return [rule.slice(0, at), rule.slice(at + 1)];
}

function pattern(part: string, rule: string): RegExp {
  if (!NAME.test(part)) throw invalid(`mask column rule ${JSON.stringify(rule)}: ${JSON.stringify(part)} is not a name or a * pattern`);
  const source = part.split("*").map((s) => s.replace(/[\\^$+?.()|[\]{}]/g, "\\$&")).join(".*");
  return new RegExp(`^${source}$`, "i");
}

const cache = new Map<string, CompiledMask>();
const CACHE_MAX = 256;

/** Compile a decision's mask; the same rules give the same (cached) object. Throws MASK_INVALID. */
export function compileMask(mask: { columns: readonly string[]; detectors: readonly string[] }, keys: MaskKeys = {}): CompiledMask {
  if (mask.columns.length === 0 && mask.detectors.length === 0) return NO_MASK;
  const id = `${keys.hmac ? "k" : "-"}${JSON.stringify(mask.columns)}${JSON.stringify(mask.detectors)}`;
  const hit = cache.get(id);
  if (hit) return hit;
  const styles: Record<string, MaskStyle> = Object.create(null);
  for (const rule of mask.detectors) {
    const [name, style] = splitStyle(rule);
    const s = styleOf(style, rule, keys);
    if (name === "*") {
      for (const d of ALL_DETECTORS) styles[d] ??= s;
    } else if (Object.hasOwn(DETECTORS, name)) styles[name] = s;
    else throw invalid(`unknown mask detector ${JSON.stringify(name)}; known detectors: ${ALL_DETECTORS.join(", ")}, or * for all`);
  }
  const columns = mask.columns.map((rule): ColumnRule => {
    const [name, style] = splitStyle(rule);
    const parts = name.split(".");
    if (parts.length > 3) throw invalid(`mask column rule ${JSON.stringify(rule)} has more than schema.table.column`);
    return { rule, parts: parts.map((p) => pattern(p, rule)), style: styleOf(style, rule, keys) };
  });
  const detectors = Object.freeze(Object.keys(styles));
  const compiled: CompiledMask = Object.freeze({ detectors: detectors as string[], styles, columns, empty: false, forTriggers: subsets(detectors) });
  if (cache.size >= CACHE_MAX) cache.delete(cache.keys().next().value!);
  cache.set(id, compiled);
  return compiled;
}

/** The first column rule covering schema.table.column (a column of a table or view). */
export function ruleForColumn(m: CompiledMask, schema: string, table: string, column: string): ColumnRule | undefined {
  const names = [schema, table, column];
  for (const r of m.columns) {
    const offset = 3 - r.parts.length;
    if (r.parts.every((p, i) => p.test(names[offset + i]!))) return r;
  }
  return undefined;
}

/** The first one-part rule (a bare column name pattern) covering a result column's own name. */
export function ruleForName(m: CompiledMask, name: string): ColumnRule | undefined {
  for (const r of m.columns) if (r.parts.length === 1 && r.parts[0]!.test(name)) return r;
  return undefined;
}

/** The first rule whose column pattern covers `column`, whatever the table (for columns named in a statement). */
export function ruleForColumnName(m: CompiledMask, column: string): ColumnRule | undefined {
  for (const r of m.columns) if (r.parts[r.parts.length - 1]!.test(column)) return r;
  return undefined;
}

/**
 * `text` with what the mask's detectors find replaced, each in its rule's
 * style, and counts per detector. Nothing found: the same string back.
 *
 * Bytes written out in PostgreSQL's bytea hex form (`\x6164614065…`, as in
 * a record's or a COPY row's text, or a bytea parameter) are read too: a
 * run whose bytes hold a secret is replaced by the hex of the masked bytes,
 * so it stays valid bytea.
 */
export function maskWith(text: string, m: CompiledMask, counts?: MaskCounts, names?: readonly string[]): string {
  if (m.detectors.length === 0 || text.length === 0) return text;
  // Only the detectors the text's triggers allow (prefilter.ts); as Latin-1 bytes, a character beyond
  // Latin-1 becomes some byte, which can add triggers but never remove one.
  names ??= m.forTriggers(textTriggers(text));
  const matches = names.length === 0 ? [] : findAll(text, names);
  let out = text;
  if (matches.length > 0) {
    out = "";
    let pos = 0;
    for (const x of matches) {
      out += text.slice(pos, x.start) + maskValue(text.slice(x.start, x.end), x.detector, m.styles[x.detector]!);
      pos = x.end;
      if (counts) counts[x.detector] = (counts[x.detector] ?? 0) + 1;
    }
    out += text.slice(pos);
  }
  return out.includes("\\x") ? maskHexRuns(out, m, counts) : out;
}

function textTriggers(text: string): number {
  const bytes = Buffer.from(text, "latin1");
  return triggers(bytes, 0, bytes.length);
}

/** `\x` and at least 4 bytes of hex: a bytea value's text form. */
const HEX_RUN = /\\x((?:[0-9a-fA-F]{2}){4,})/g;

function maskHexRuns(text: string, m: CompiledMask, counts?: MaskCounts): string {
  return text.replace(HEX_RUN, (run: string, hex: string) => {
    const bytes = Buffer.from(hex, "hex").toString("latin1");
    const masked = maskWith(bytes, m, counts);
    return masked === bytes ? run : `\\x${Buffer.from(masked, "latin1").toString("hex")}`;
  });
}
