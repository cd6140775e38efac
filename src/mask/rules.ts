/**
 * A policy decision's `mask` ({columns, detectors}) compiled once into what
 * the protocols apply to responses and the guard applies to records.
 *
 * Syntax, one string per rule, an optional style after the last ":":
 *
 *   detectors  "email", "card:partial", "jwt:hmac", "*" (every detector)
 *   binary     "binary:strict"        bytea values whose bytes do not read
 *                                     as text are refused rather than passed
 *                                     unscanned (see maskWith)
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
import { isUtf8 } from "node:buffer";
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
  /** "binary:strict": bytes that do not read as text cannot pass unscanned; the response is refused instead. */
  strictBinary?: boolean;
  /** The detectors that can match text with these prefilter triggers (prefilter.ts); frozen, the same list for the same bits. */
  forTriggers(bits: number): readonly string[];
  /** Derived rules on settings (derived.ts): a setting's name → the rule its values are masked whole under. */
  settings?: ReadonlyMap<string, ColumnRule>;
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
export function compileMask(mask: { columns: readonly string[]; detectors: readonly string[]; settings?: Readonly<Record<string, MaskStyle["kind"]>> }, keys: MaskKeys = {}): CompiledMask {
  const derivedSettings = Object.entries(mask.settings ?? {});
  if (mask.columns.length === 0 && mask.detectors.length === 0 && derivedSettings.length === 0) return NO_MASK;
  const id = `${keys.hmac ? "k" : "-"}${JSON.stringify(mask.columns)}${JSON.stringify(mask.detectors)}${derivedSettings.length ? JSON.stringify(derivedSettings) : ""}`;
  const hit = cache.get(id);
  if (hit) return hit;
  const styles: Record<string, MaskStyle> = Object.create(null);
  let strictBinary = false;
  for (const rule of mask.detectors) {
    const [name, style] = splitStyle(rule);
    if (name === "binary") {
      if (style !== "strict" && style !== "pass") throw invalid(`mask rule ${JSON.stringify(rule)}: binary takes "binary:strict" or "binary:pass"`);
      strictBinary = style === "strict";
      continue;
    }
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
  const settings = new Map(derivedSettings.map(([name, kind]): [string, ColumnRule] => [name, { rule: `(setting ${name})`, parts: [], style: styleOf(kind, name, keys) }]));
  const compiled: CompiledMask = Object.freeze({
    detectors: detectors as string[],
    styles,
    columns,
    empty: detectors.length === 0 && columns.length === 0 && settings.size === 0,
    strictBinary,
    forTriggers: subsets(detectors),
    ...(settings.size > 0 ? { settings } : {}),
  });
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

/** Styles from the strictest: a value several rules cover is masked in the strictest of their styles. */
export const STRICTNESS: Readonly<Record<MaskStyle["kind"], number>> = { redact: 0, hmac: 1, partial: 2 };

/** The index in `rules` of the strictest rule (the first of equals); -1 when there is none. */
export function strictest(rules: readonly (ColumnRule | undefined)[]): number {
  let best = -1;
  for (let i = 0; i < rules.length; i++) {
    const r = rules[i];
    if (r !== undefined && (best < 0 || STRICTNESS[r.style.kind] < STRICTNESS[rules[best]!.style.kind])) best = i;
  }
  return best;
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
 * so it stays valid bytea. Only a run whose bytes read as text (readsAsText)
 * is scanned, so that binary data (a file, an image) is never rewritten;
 * any other run passes unchanged and is counted as UNSCANNED_BINARY (with
 * "binary:strict", throws BinaryUnscanned instead). `scanBinary` scans
 * every run, for text no client reads back (an audit record).
 */
export function maskWith(text: string, m: CompiledMask, counts?: MaskCounts, names?: readonly string[], scanBinary = false): string {
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
  return out.includes("\\x") ? maskHexRuns(out, m, counts, scanBinary) : out;
}

function textTriggers(text: string): number {
  const bytes = Buffer.from(text, "latin1");
  return triggers(bytes, 0, bytes.length);
}

/** `\x` and at least 4 bytes of hex: a bytea value's text form. */
const HEX_RUN = /\\x((?:[0-9a-fA-F]{2}){4,})/g;

function maskHexRuns(text: string, m: CompiledMask, counts: MaskCounts | undefined, scanBinary: boolean): string {
  return text.replace(HEX_RUN, (run: string, hex: string) => {
    const raw = Buffer.from(hex, "hex");
    if (!scanBinary && !binaryScannable(raw, 0, raw.length, m, counts)) return run;
    const bytes = raw.toString("latin1");
    const masked = maskWith(bytes, m, counts, undefined, scanBinary);
    return masked === bytes ? run : `\\x${Buffer.from(masked, "latin1").toString("hex")}`;
  });
}

/** What the outcome record counts, among the detectors' counts, for bytea values passed unscanned. */
export const UNSCANNED_BINARY = "(unscanned binary)";

/** A bytea value could not be scanned, and the mask says binary must be ("binary:strict"). */
export class BinaryUnscanned extends AgateError {
  constructor() {
    super("MASK_BINARY_UNSCANNED", "a bytea value holds binary data the detectors cannot read, and this statement's policy masks with binary:strict, so its response is refused; read it with encode(…, 'base64') or lift binary:strict");
  }
}

/**
 * Bytes a text detector may read: valid UTF-8 with no control characters
 * but tab, line feed and carriage return. Binary data (a file, an image, a
 * compressed blob) fails this; text stored as bytea passes.
 */
export function readsAsText(buf: Uint8Array, a: number, b: number): boolean {
  let ascii = true;
  for (let i = a; i < b; i++) {
    const c = buf[i]!;
    if (c < 0x20 ? c !== 0x09 && c !== 0x0a && c !== 0x0d : c === 0x7f) return false;
    if (c >= 0x80) ascii = false;
  }
  return ascii || isUtf8(buf.subarray(a, b));
}

/** Whether the detectors may read bytes [a, b): they read as text. If not, counted as unscanned, or (binary:strict) BinaryUnscanned. */
export function binaryScannable(buf: Uint8Array, a: number, b: number, m: CompiledMask, counts: MaskCounts | undefined): boolean {
  if (readsAsText(buf, a, b)) return true;
  if (m.strictBinary) throw new BinaryUnscanned();
  if (counts) counts[UNSCANNED_BINARY] = (counts[UNSCANNED_BINARY] ?? 0) + 1;
  return false;
}
