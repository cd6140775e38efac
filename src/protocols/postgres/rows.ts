/**
 * Masking of what the target sends back: the fields of DataRow messages
 * (by column rule and by detector), CopyData rows, and the text of
 * ErrorResponse, NoticeResponse and NotificationResponse.
 *
 * A result is planned once, at its RowDescription: each column either
 * passes untouched, is masked whole by a column rule, or is scanned by the
 * decision's detectors. DataRows are then rewritten one by one as they pass
 * (nothing is buffered); a row in which nothing changed is relayed as the
 * very same bytes.
 *
 * A masked value must keep the row valid for the client, in the column's
 * type and format:
 *
 *   string types (text, varchar, char, name, unknown, xml; any user-defined
 *   type in text format, e.g. an enum or citext, which clients read as a
 *   string)      the masked text ([REDACTED:email], ****4242, [email:3fa2…])
 *   json, jsonb  a detector's replacement inside the document when it stays
 *                valid JSON, otherwise (and for a column rule) the masked
 *                text as one JSON string
 *   bytea        the masked text's bytes (hex-encoded in text format); the
 *                detectors read only bytes that read as text, binary data
 *                passes unchanged (counted as unscanned binary)
 *   any other type (numbers, dates, arrays, composites …)  NULL: the one
 *                value valid for every type. A number a detector flags (a
 *                card number kept in a bigint) becomes NULL too.
 *
 * Binary-format fields are read through binary.ts: text-like types are
 * their UTF-8 bytes; numbers and inet are decoded to their text for the
 * detectors; types that cannot hold text a detector finds (bool, uuid,
 * timestamps …) pass; anything else agate cannot read is NULL when the
 * decision has detectors (fail closed: it is never passed unread).
 *
 * Column origins: see catalog.ts. Taint by reference: a statement is
 * tainted by a column rule when a base column the rule covers is among its
 * sources (SqlStatement.sources: the base columns whose values may flow
 * into its outputs, resolved by facts.ts through aliases, views and
 * partitions; all columns of what it reads when it renames columns, uses a
 * star or a whole row; anything when it calls a function that runs a query).
 * In a tainted statement every computed result column (no origin:
 * `upper(e)`, `row_to_json(u)`) is masked whole under that rule, and so is
 * every column of one that writes covered values (RETURNING: its origin is
 * the written table). Errors and notices of a tainted statement lose their
 * echoed values (maskNotice). An untainted statement's computed columns get
 * only their own name's rule and the detectors: `count(*)`, `length(name)`
 * of a statement that merely filters on a covered column pass.
 */
import { isUtf8 } from "node:buffer";
import type { SqlFacts, SqlStatement } from "../../core/types.ts";
import { binaryScannable, type ColumnRule, type CompiledMask, maskWith, ruleForColumn, ruleForColumnName, ruleForName, strictest } from "../../mask/rules.ts";
import { triggers } from "../../mask/prefilter.ts";
import { isPersonal, keptChars, maskValue, starPartial } from "../../mask/styles.ts";
import type { MaskCounts } from "../../mask/types.ts";
import { FIRST_USER_OID, fieldText, maskInside, OPAQUE_SAFE, textBytesOffset, type UserTypes } from "./binary.ts";
import type { ColumnOrigin } from "./catalog.ts";
import type { Outbox } from "./framer.ts";
import { ProtocolViolation } from "./wire.ts";

export interface Field {
  name: string;
  /** Origin relation OID (0: none) and attribute number. */
  table: number;
  attnum: number;
  type: number;
  /** 0 text, 1 binary. */
  format: number;
}

/** The fields of a RowDescription body. */
export function readRowDescription(body: Buffer): Field[] {
  if (body.length < 2) throw new ProtocolViolation("RowDescription is truncated");
  const n = body.readUInt16BE(0);
  const fields: Field[] = new Array(n);
  let p = 2;
  for (let i = 0; i < n; i++) {
    const end = body.indexOf(0, p);
    if (end < 0 || end + 19 > body.length) throw new ProtocolViolation("RowDescription is truncated");
    fields[i] = {
      name: body.toString("utf8", p, end),
      table: body.readUInt32BE(end + 1),
      attnum: body.readInt16BE(end + 5),
      type: body.readUInt32BE(end + 7),
      format: body.readInt16BE(end + 17),
    };
    p = end + 19;
  }
  return fields;
}

/** What masking did to a response: values masked per column rule and per detector (never the values). */
export interface MaskTally {
  rows: number;
  columns: MaskCounts;
  detectors: MaskCounts;
}

export function newTally(): MaskTally {
  return { rows: 0, columns: {}, detectors: {} };
}


const KEEP = 0;
const RULE = 1;
const DETECT = 2;

type Shape = "string" | "json" | "bytea" | "other";

interface Column {
  action: typeof KEEP | typeof RULE | typeof DETECT;
  rule?: ColumnRule;
  /** The name a rule's replacement carries: the column's own name. */
  label: string;
  shape: Shape;
  binary: boolean;
  type: number;
  /** Binary text-like: where the text starts (jsonb has a version byte). */
  offset: number;
  /** A rule whose replacement does not depend on the value (redact): the replacement, made once. */
  constant?: Buffer | null;
  /** The partial style: whether its label is personal data (styles.ts), and how many characters it keeps. */
  personal: boolean;
  keep: number;
  /** Detected as text from `offset` (not bytea, not a binary value decoded first): the row loop runs the prefilter itself. */
  text: boolean;
}

/**
 * As large as the chunks a socket read delivers (Bun's are up to 512 KB): the
 * masked rows of one chunk then leave in one write, not in one per 64 KB.
 */
const SLAB_BYTES = 512 * 1024;
/** Free slabs a session keeps for reuse at most (2 MB). */
const FREE_SLABS = 4;

/**
 * Where masked rows are written: slabs of SLAB_BYTES; consecutive masked
 * rows leave as one buffer. A session has one, shared by its results' maskers,
 * that recycles: before each write to the client it seals the slabs
 * written since the last one (seal(): the next row starts a new slab), and
 * gives them back once that write has been flushed (release()), so a result
 * of any size cycles through the same few slabs instead of leaving garbage
 * behind at the rate rows pass. One that does not recycle (the default)
 * leaves full slabs to the socket and the collector.
 */
export class RowSlabs {
  slab: Buffer = EMPTY;
  used = 0;
  private readonly free: Buffer[] = [];
  /** Slabs holding rows not yet handed to a write. */
  private sealed: Buffer[] = [];

  constructor(private readonly recycle = false) {}

  /**
   * Room for `need` more bytes of a row being written at `row` (-1: not
   * started), `written` bytes of it so far; returns where the row starts.
   * A slab that is full is never written to again: the row moves to a new one.
   */
  reserve(row: number, written: number, need: number): number {
    const from = row < 0 ? this.used : row;
    if (from + written + need <= this.slab.length) return from;
    this.flush();
    const size = written + need;
    const slab = size <= SLAB_BYTES ? (this.free.pop() ?? Buffer.allocUnsafeSlow(SLAB_BYTES)) : Buffer.allocUnsafeSlow(Math.max(SLAB_BYTES, 2 * size));
    if (written > 0) this.slab.copy(slab, 0, from, from + written);
    // rows before `from` are on their way out; a slab without any is free again at once
    if (this.recycle && from > 0) this.sealed.push(this.slab);
    else if (this.recycle) this.release([this.slab]);
    this.slab = slab;
    this.used = 0;
    return 0;
  }

  /** The slabs holding rows written since the last call (to be released once the write carrying them is flushed); the next row starts a new slab. */
  seal(): Buffer[] | undefined {
    this.flush();
    if (this.used > 0) this.sealed.push(this.slab);
    this.slab = EMPTY;
    this.used = 0;
    if (this.sealed.length === 0) return undefined;
    const out = this.sealed;
    this.sealed = [];
    return out;
  }

  /**
   * Bytes [a, b) of `src` into the slab at `o` (the caller has made room);
   * returns the offset after them. Short runs are copied at once, without a
   * native call; a longer one waits (flush()), so that the next run of the
   * same bytes of `src` that lands right after it joins it: the end of one
   * masked row and the start of the next, adjacent in what the target sent,
   * go in one copy. (`src` is never written to: received bytes.)
   */
  copy(src: Buffer, a: number, b: number, o: number): number {
    if (src === this.pendingSrc && a === this.pendingTo && o === this.pendingAt + (a - this.pendingFrom)) {
      this.pendingTo = b;
      return o + (b - a);
    }
    if (b - a <= 16) {
      while (a < b) this.slab[o++] = src[a++]!;
      return o;
    }
    this.flush();
    this.pendingSrc = src;
    this.pendingFrom = a;
    this.pendingTo = b;
    this.pendingAt = o;
    return o + (b - a);
  }

  /** The copy copy() holds back, done (before the slab is read or changed). */
  flush(): void {
    if (this.pendingSrc === null) return;
    this.pendingSrc.copy(this.slab, this.pendingAt, this.pendingFrom, this.pendingTo);
    this.pendingSrc = null;
  }

  /** flush() if the copy held back writes slab byte `at` (or any before it). */
  flushOver(at: number): void {
    if (this.pendingSrc !== null && this.pendingAt <= at) this.flush();
  }

  private pendingSrc: Buffer | null = null;
  private pendingFrom = 0;
  private pendingTo = 0;
  private pendingAt = 0;

  /** Slabs sealed before, whose write has been flushed: free for new rows. */
  release(slabs: readonly Buffer[]): void {
    for (const s of slabs) if (s.length === SLAB_BYTES && this.free.length < FREE_SLABS) this.free.push(s);
  }
}
const NONE: readonly string[] = [];
const EMPTY = Buffer.alloc(0);

/**
 * Types whose text is digits and punctuation: numbers, ranges and
 * multiranges of numbers and dates, and their arrays. Only the detectors in
 * NUMERIC_DETECTORS can find anything there; under the others (the secret
 * detectors, which need letters) such a column passes unread, in either
 * format.
 */
const NUMERIC_TEXT = new Set([
  21, 23, 20, 26, 700, 701, 1700, 790, 22, 30, 5069, // int2 int4 int8 oid float4 float8 numeric money int2vector oidvector xid8
  1005, 1007, 1016, 1028, 1021, 1022, 1231, 791, // their arrays
  3904, 3906, 3908, 3910, 3912, 3926, 4451, 4532, 4533, 4534, 4535, 4536, // ranges, multiranges
  3905, 3907, 3909, 3911, 3913, 3927, 6150, 6151, 6152, 6153, 6155, 6157, // their arrays
]);
const NUMERIC_DETECTORS = new Set(["card", "ssn", "phone", "ipv4", "ipv6"]);

const TEXT_STRING = new Set([25, 1043, 1042, 19, 18, 705, 142]);
const JSON_TYPES = new Set([114, 3802]);
const BYTEA = 17;

/** `origin` answers: the origin, undefined when the catalog has no such column, or "unknown" when it could not be looked up. */
export type OriginOf = (table: number, attnum: number) => ColumnOrigin | undefined | "unknown";

/** A result whose columns' origins could not be looked up is masked whole, under this rule. */
const UNRESOLVED: ColumnRule = { rule: "(origin unknown)", parts: [], style: { kind: "redact" } };

/** Masks the DataRows of one result. */
export class ResultMasker {
  private readonly columns: Column[];
  /** Some detector in force can match text of digits and punctuation alone. */
  private readonly numeric: boolean;
  /** A tainted statement that writes covered values: its RETURNING columns carry the written table as origin, and are masked too. */
  private readonly writes: boolean;

  constructor(
    fields: Field[],
    private readonly mask: CompiledMask,
    facts: SqlFacts | undefined,
    origin: OriginOf,
    private readonly tally: MaskTally,
    /** The built-in type a (user-defined) type is read as (catalog.ts cachedType). */
    typeAs: (oid: number) => number = (oid) => oid,
    /** What user-defined types inside binary values are (catalog.ts userType). */
    private readonly user?: UserTypes,
    /** Where masked rows are written (the session's, reused; by default this result's own). */
    private readonly out: RowSlabs = new RowSlabs(),
  ) {
    this.numeric = mask.detectors.some((d) => NUMERIC_DETECTORS.has(d));
    const computed = taintRule(mask, facts);
    this.writes = computed !== undefined && writesCovered(mask, facts);
    this.columns = fields.map((f) => this.plan(f.type >= FIRST_USER_OID ? { ...f, type: typeAs(f.type) } : f, origin, computed));
    this.ruleCounts = new Float64Array(fields.length);
  }

  private plan(f: Field, origin: OriginOf, computed: ColumnRule | undefined): Column {
    const binary = f.format === 1;
    const shape: Shape = JSON_TYPES.has(f.type)
      ? "json"
      : f.type === BYTEA
        ? "bytea"
        : binary
          ? textBytesOffset(f.type) === 0 ? "string" : "other"
          : TEXT_STRING.has(f.type) || f.type >= FIRST_USER_OID ? "string" : "other";
    const base = { label: f.name, shape, binary, type: f.type, offset: binary ? (textBytesOffset(f.type) ?? 0) : 0, personal: false, keep: 0, text: false };
    const m = this.mask;
    let rule: ColumnRule | undefined;
    if (m.columns.length > 0 || computed !== undefined) {
      if (f.table !== 0) {
        const o = origin(f.table, f.attnum);
        if (o === "unknown") rule = UNRESOLVED;
        else if (o) {
          // A view's column may show several covered base columns (`card || api_secret`): the strictest of
          // their rules applies, and the replacement (and the outcome's tally) names that rule's column.
          const named = [o, ...o.via];
          const rules = named.map((c) => ruleForColumn(m, c.schema, c.table, c.column));
          const hit = strictest(rules);
          base.label = named[Math.max(0, hit)]!.column;
          if (hit >= 0) rule = rules[hit];
        }
      }
      rule ??= ruleForName(m, f.name) ?? (f.table === 0 || this.writes ? computed : undefined);
    }
    if (rule) {
      const col: Column = { action: RULE, rule, ...base };
      if (rule.style.kind === "redact") col.constant = encode(col, maskValue("", col.label, rule.style));
      if (rule.style.kind === "partial") {
        col.personal = isPersonal(col.label);
        col.keep = keptChars(rule.style.keep);
      }
      return col;
    }
    if (m.detectors.length === 0) return { action: KEEP, ...base };
    // A type that cannot hold text a detector finds passes, in either format.
    if (OPAQUE_SAFE.has(f.type)) return { action: KEEP, ...base };
    if (!this.numeric && NUMERIC_TEXT.has(f.type)) return { action: KEEP, ...base };
    return { action: DETECT, ...base, text: shape !== "bytea" && !(shape === "other" && binary) };
  }

  /** The DataRow message `raw` (type byte and length included), masked; the same buffer when nothing changed. */
  row(raw: Buffer): Buffer {
    if (!this.write(raw, 0, raw.length)) return raw;
    this.out.flush();
    return this.out.slab.subarray(this.at, this.out.used);
  }

  /**
   * The DataRow message at bytes [start, end) of `buf` masked into `out`
   * (no view of the row is made when it extends the run `out` collects);
   * returns its length. The bytes of a masked row are in place once the
   * slabs are sealed (RowSlabs.seal, before the write that sends them).
   */
  rowInto(buf: Buffer, start: number, end: number, out: Outbox): number {
    if (!this.write(buf, start, end)) {
      out.addRange(buf, start, end);
      return end - start;
    }
    out.addRange(this.out.slab, this.at, this.out.used);
    return this.out.used - this.at;
  }

  /** Where the last masked row starts in the slab (it ends at out.used). */
  private at = 0;

  /** Mask the DataRow at [s, e) of `raw` into the slab: false when nothing changed, else the row is slab [at, used). */
  private write(raw: Buffer, s: number, e: number): boolean {
    if (e - s < 7) throw new ProtocolViolation("DataRow is truncated");
    const n = (raw[s + 5]! << 8) | raw[s + 6]!;
    const cols = this.columns;
    // A field beyond the columns planned would pass unmasked (fail closed: PostgreSQL never sends one).
    if (n !== cols.length) throw new ProtocolViolation(`a DataRow has ${n} fields, its RowDescription ${cols.length} columns`);
    let p = s + 7;
    // Once a field changes, the row is written into the slab from `row`: raw bytes [s, copied) are there, up to `o`.
    let row = -1;
    let o = 0;
    let copied = s;
    for (let i = 0; i < n; i++) {
      if (p + 4 > e) throw new ProtocolViolation("DataRow is truncated");
      const len = (raw[p]! << 24) | (raw[p + 1]! << 16) | (raw[p + 2]! << 8) | raw[p + 3]!;
      const start = p;
      p += 4;
      if (len > 0 && p + len > e) throw new ProtocolViolation("DataRow is truncated");
      const col = cols[i];
      if (len < 0 || col === undefined || col.action === KEEP) {
        if (len > 0) p += len;
        continue;
      }
      const a = p;
      const b = p + len;
      p = b;
      let v: Value;
      if (col.action === RULE) v = this.ruleValue(col, i, raw, a, b);
      else if (col.text) {
        // Most text is ruled out by the prefilter alone: nothing more is read, called or made for it.
        const found = triggers(raw, a + col.offset, b);
        if (found === 0) continue;
        const names = this.mask.forTriggers(found);
        if (names.length === 0) continue;
        v = this.detectText(col, raw, a, b, names);
      } else v = this.detectValue(col, raw, a, b);
      if (v === undefined) continue;
      // room for the raw bytes before the field, the field and the rest of the row
      const size = v === null ? 0 : v === TEXT ? this.text.length * 3 + (b - a) : v === STARRED ? b - a : v.length;
      const need = start - copied + 4 + size + e - b;
      const slabs = this.out;
      if (row < 0) {
        row = slabs.reserve(-1, 0, need);
        o = row;
      } else if (o + need > slabs.slab.length) {
        const written = o - row;
        row = slabs.reserve(row, written, need);
        o = row + written;
      }
      const out = slabs.slab;
      o = slabs.copy(raw, copied, start, o);
      copied = b;
      if (v === null) {
        o = int32(out, o, -1);
        continue;
      }
      const at = o;
      o += 4;
      if (v === STARRED) {
        const end = starPartial(raw, a, b, out, o, col.personal, col.keep);
        if (end < 0) {
          // not ASCII (rare): the partial style on the text, over what starPartial wrote
          const w = encode(col, maskValue(raw.toString("utf8", a, b), col.label, col.rule!.style))!;
          if (o + w.length + e - b > slabs.slab.length) {
            const written = o - row;
            row = slabs.reserve(row, written, w.length + e - b);
            o = row + written;
          }
          o = slabs.copy(w, 0, w.length, o);
          int32(slabs.slab, o - w.length - 4, w.length);
          continue;
        }
        o = end;
      } else if (v === TEXT) {
        if (this.prefix) o = slabs.copy(raw, a, a + this.prefix, o);
        o += out.write(this.text, o, this.latin1 ? "latin1" : "utf8");
      } else o = slabs.copy(v, 0, v.length, o);
      int32(out, at, o - at - 4);
    }
    if (row < 0) return false;
    // (the rest of the row is copied with the next row's first bytes when they follow it in `raw`, see RowSlabs.copy)
    o = this.out.copy(raw, copied, e, o);
    // the row's new length goes over the raw one, which copy() may still hold back
    this.out.flushOver(row + 1);
    int32(this.out.slab, row + 1, o - row - 1);
    this.out.used = o;
    this.at = row;
    this.rowsMasked++;
    return true;
  }

  /** A TEXT value: the text, its encoding, and how many raw bytes go before it (jsonb's version byte). */
  private text = "";
  private latin1 = false;
  private prefix = 0;
  /** Values masked per column by its rule, and rows changed, since the last settle(). */
  private readonly ruleCounts: Float64Array;
  private rowsMasked = 0;

  /** Add what was masked since the last call to the tally (the session calls it before it records an outcome). */
  settle(): void {
    const t = this.tally;
    t.rows += this.rowsMasked;
    this.rowsMasked = 0;
    for (let i = 0; i < this.ruleCounts.length; i++) {
      const c = this.ruleCounts[i]!;
      if (c === 0) continue;
      const name = this.columns[i]!.rule!.rule;
      t.columns[name] = (t.columns[name] ?? 0) + c;
      this.ruleCounts[i] = 0;
    }
  }

  /** A column rule: the whole value, in the column's style and type. */
  private ruleValue(col: Column, i: number, raw: Buffer, a: number, b: number): Value {
    this.ruleCounts[i]!++;
    if (col.constant !== undefined) return col.constant;
    if (col.shape === "other") return null;
    const style = col.rule!.style;
    // starred as the bytes are copied, if they are ASCII (see write)
    if (col.shape === "string" && style.kind === "partial" && b - a >= col.keep + 4) return STARRED;
    const value = col.shape === "bytea" ? raw.toString("latin1", a, b) : raw.toString("utf8", a + col.offset, b);
    return encode(col, maskValue(value, col.label, style));
  }

  /** The detectors: undefined when nothing was found. */
  private detectValue(col: Column, raw: Buffer, a: number, b: number): Value {
    const m = this.mask;
    const counts = this.tally.detectors;
    if (col.shape === "bytea") {
      const found = triggers(raw, a, b);
      if (found === 0) return undefined;
      const hex = !col.binary && b - a >= 2 && raw[a] === 0x5c && raw[a + 1] === 0x78; // \x
      const bytes = hex ? Buffer.from(raw.toString("latin1", a + 2, b), "hex") : raw.subarray(a, b);
      // Binary data (a file, an image) is never rewritten: only bytes that read as text are scanned (rules.ts).
      if (!binaryScannable(bytes, 0, bytes.length, m, counts)) return undefined;
      const text = bytes.toString("latin1");
      // hex digits are no guide to what the bytes hold: all detectors on the decoded bytes
      const out = maskWith(text, m, counts, hex ? undefined : m.forTriggers(found));
      if (out === text) return undefined;
      return this.setText(hex ? `\\x${Buffer.from(out, "latin1").toString("hex")}` : out, true, 0);
    }
    if (col.shape === "other" && col.binary) {
      const bytes = raw.subarray(a, b);
      const text = fieldText(col.type, bytes, this.user);
      if (text === undefined) {
        counts["(unreadable binary)"] = (counts["(unreadable binary)"] ?? 0) + 1;
        return null;
      }
      const found: MaskCounts = {};
      if (maskWith(text, m, found) === text) return undefined;
      // Text leaves (a text array's elements, an hstore's keys and values) are masked in place, if then nothing is found in the whole.
      // (a value's detections are counted once, on its whole text)
      const inside = maskInside(col.type, bytes, (t) => maskWith(t, m, {}), this.user);
      const again = inside && fieldText(col.type, inside, this.user);
      const masked = inside !== undefined && again !== undefined && maskWith(again, m, {}) === again;
      for (const [k, v] of Object.entries(found)) counts[k] = (counts[k] ?? 0) + v;
      return masked ? inside : null;
    }
    return this.detectText(col, raw, a, b);
  }

  /** The detectors on a column read as text from `col.offset` (`names`: those its triggers allow, if known). */
  private detectText(col: Column, raw: Buffer, a: number, b: number, names?: readonly string[]): Value {
    const masked = maskSpan(raw, a + col.offset, b, this.mask, this.tally.detectors, names);
    if (masked === undefined) return undefined;
    if (col.shape === "other") return null;
    if (col.shape === "json" && !isJson(masked.text)) return encode(col, masked.text);
    return this.setText(masked.text, masked.latin1, col.offset);
  }

  private setText(text: string, latin1: boolean, prefix: number): typeof TEXT {
    this.text = text;
    this.latin1 = latin1;
    this.prefix = prefix;
    return TEXT;
  }
}

/** What a field becomes: unchanged (undefined), NULL, bytes, this.text (TEXT), or its own bytes partly starred (STARRED: when they are ASCII; see write). */
const TEXT = 1;
const STARRED = 2;
type Value = Buffer | null | undefined | typeof TEXT | typeof STARRED;

/** `v` as a big-endian int32 at `at` (the caller has made room); returns the offset after it. */
function int32(buf: Buffer, at: number, v: number): number {
  buf[at] = v >>> 24;
  buf[at + 1] = v >>> 16;
  buf[at + 2] = v >>> 8;
  buf[at + 3] = v;
  return at + 4;
}

/** A replacement text as a value of the column's shape and format. */
function encode(col: Column, text: string): Buffer | null {
  switch (col.shape) {
    case "string":
      return Buffer.from(text, "utf8");
    case "json": {
      const doc = Buffer.from(JSON.stringify(text), "utf8");
      return col.binary && col.offset === 1 ? Buffer.concat([Buffer.of(1), doc]) : doc;
    }
    case "bytea":
      return col.binary ? Buffer.from(text, "utf8") : Buffer.from(`\\x${Buffer.from(text, "utf8").toString("hex")}`, "latin1");
    default:
      return null;
  }
}

function isJson(text: string): boolean {
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}

/** A statement is tainted while agate cannot see which statement it is (a FETCH or EXECUTE agate did not see declared). */
const UNSEEN: ColumnRule = { rule: "(statement unknown)", parts: [], style: { kind: "redact" } };

const taintCache = new WeakMap<SqlStatement, { mask: CompiledMask; rule: ColumnRule | undefined }>();

/**
 * The column rule that taints a result's statement(s), if any: the
 * strictest rule covering one of its sources (or any rule when its sources
 * are opaque). Facts without catalog sources (not completed) fall back to the
 * names the statement uses outside conditions.
 */
export function taintRule(m: CompiledMask, facts: SqlFacts | undefined): ColumnRule | undefined {
  if (m.columns.length === 0 && m.settings === undefined) return undefined;
  if (!facts) return m.columns[0];
  for (const s of facts.statements) {
    const r = statementTaint(m, s);
    if (r) return r;
  }
  return undefined;
}

/** The rule that taints statement `s` under mask `m` (cached per statement and mask). */
export function statementTaint(m: CompiledMask, s: SqlStatement): ColumnRule | undefined {
  if (m.columns.length === 0 && m.settings === undefined) return undefined;
  const hit = taintCache.get(s);
  if (hit !== undefined && hit.mask === m) return hit.rule;
  const rule = computeTaint(m, s);
  taintCache.set(s, { mask: m, rule });
  return rule;
}

function computeTaint(m: CompiledMask, s: SqlStatement): ColumnRule | undefined {
  // FETCH from a cursor and EXECUTE of a prepared statement agate did not see: their query is elsewhere.
  if (s.node === "FetchStmt" || s.node === "ExecuteStmt") return m.columns[0] ?? UNSEEN;
  // EXPLAIN prints plans, not values (what it would move is decided by deny_covered_copy).
  if (s.node === "ExplainStmt") return undefined;
  if (m.settings !== undefined) {
    const r = settingTaint(m.settings, s);
    if (r) return r;
  }
  if (m.columns.length === 0) return undefined;
  if (s.sources_opaque === true) return m.columns[0];
  if (s.sources !== undefined) {
    // Several covered sources may flow into one computed column: the strictest rule applies.
    const rules = s.sources.map((c) => ruleForColumn(m, c.schema, c.table, c.column));
    const hit = strictest(rules);
    if (hit >= 0) return rules[hit];
  } else {
    // Facts the catalog did not complete: by the names alone, conservatively.
    for (const c of s.outputs ?? s.columns) {
      const r = ruleForColumnName(m, c);
      if (r) return r;
    }
    if (s.opaque === true || s.whole_row) return m.columns[0];
  }
  // A bare-name rule covers a name wherever the relation is (one agate could not resolve).
  for (const c of s.outputs ?? []) {
    const r = ruleForName(m, c);
    if (r) return r;
  }
  return undefined;
}

/**
 * A statement that reads a setting a derived rule covers (SHOW,
 * current_setting): its rule. SHOW ALL, a name that is not a constant and
 * pg_settings may read any setting: the first such rule.
 */
function settingTaint(rules: ReadonlyMap<string, ColumnRule>, s: SqlStatement): ColumnRule | undefined {
  const any = () => rules.values().next().value;
  for (const x of s.settings) {
    if (x.action !== "show") continue;
    if (x.name === null || x.name === "all") return any();
    const r = rules.get(x.name);
    if (r) return r;
  }
  if (s.reads.some((r) => /(^|\.)pg_settings$/.test(r)) || s.functions.some((f) => /(^|\.)pg_show_all_settings$/.test(f))) return any();
  return undefined;
}

/**
 * Whether a statement writes covered values (its `copies`; opaque sources;
 * or facts the catalog did not complete): its RETURNING columns take the
 * written table as origin, so they cannot be trusted. Without facts only the
 * origins are known: computed columns are masked, columns with an origin
 * follow it.
 */
function writesCovered(m: CompiledMask, facts: SqlFacts | undefined): boolean {
  if (facts === undefined) return false;
  return facts.statements.some(
    (s) => s.writes.length > 0 && (s.copies === undefined || s.sources_opaque === true || s.copies.some((c) => ruleForColumn(m, c.schema, c.table, c.column) !== undefined)),
  );
}

/**
 * A buffer of text (a CopyData row, a notification payload) masked by the
 * detectors; undefined when nothing was found. UTF-8 when it is, otherwise
 * read and written back as Latin-1 so that other bytes pass unchanged.
 */
export function maskBytes(buf: Buffer, a: number, b: number, m: CompiledMask, counts: MaskCounts): Buffer | undefined {
  const masked = maskSpan(buf, a, b, m, counts);
  return masked && Buffer.from(masked.text, masked.latin1 ? "latin1" : "utf8");
}

/**
 * Bytes [a, b) masked by the detectors their triggers allow: the masked
 * text and whether it is Latin-1 (the bytes were not UTF-8), or undefined
 * when nothing was found (most text is not even decoded).
 */
function maskSpan(buf: Buffer, a: number, b: number, m: CompiledMask, counts: MaskCounts, names?: readonly string[]): { text: string; latin1: boolean } | undefined {
  if (m.detectors.length === 0 || a >= b) return undefined;
  if (names === undefined) {
    const found = triggers(buf, a, b);
    names = found === 0 ? NONE : m.forTriggers(found);
  }
  if (names.length === 0) return undefined;
  let text = buf.toString("utf8", a, b);
  const latin1 = text.includes("\uFFFD") && !isUtf8(buf.subarray(a, b));
  if (latin1) text = buf.toString("latin1", a, b);
  const out = maskWith(text, m, counts, names);
  return out === text ? undefined : { text: out, latin1 };
}

/** ErrorResponse/NoticeResponse fields that carry no data: severity, code, file, line, routine. */
const PLAIN_FIELDS = new Set([0x53, 0x56, 0x43, 0x46, 0x4c, 0x52]);
/** Fields that name objects, kept in a tainted statement's errors: schema, table, column, data type, constraint; positions. */
const NAME_FIELDS = new Set([0x73, 0x74, 0x63, 0x64, 0x6e, 0x50, 0x70]);
const M = 0x4d;
const D = 0x44;
const H = 0x48;
const C = 0x43;

/**
 * An ErrorResponse or NoticeResponse (whole message) with its text fields
 * masked; the same buffer when nothing changed. The detectors run on every
 * text field. When the statement is tainted (`taint`: the rule, see
 * taintRule), values it may echo go too, whatever their shape: in the
 * message and hint every quoted run that is not an object's name (the
 * schema, table, column, type and constraint fields are kept) and every
 * 0x… byte run; a message raised by code (SQLSTATE class P0, notices) whole;
 * the detail whole but for a key's column list (`Key (v)=…`); the context
 * and internal query whole. `counts` gets one per masked message under
 * "(error text)".
 */
export function maskNotice(raw: Buffer, m: CompiledMask, counts: MaskCounts, taint?: ColumnRule): Buffer {
  if (m.detectors.length === 0 && taint === undefined) return raw;
  const fields: [number, Buffer][] = [];
  let p = 5;
  while (p < raw.length && raw[p] !== 0) {
    const code = raw[p]!;
    const end = raw.indexOf(0, p + 1);
    if (end < 0) throw new ProtocolViolation("ErrorResponse field is not terminated");
    fields.push([code, raw.subarray(p + 1, end)]);
    p = end + 1;
  }
  let changed = false;
  if (taint !== undefined) {
    const names = new Set(fields.filter(([c]) => NAME_FIELDS.has(c)).map(([, v]) => v.toString("utf8")));
    const sqlstate = fields.find(([c]) => c === C)?.[1].toString("latin1") ?? "";
    const raised = raw[0] === 0x4e || sqlstate.startsWith("P0");
    const label = `[masked: ${taint.rule}]`;
    for (const f of fields) {
      const [code, v] = f;
      if (PLAIN_FIELDS.has(code) || NAME_FIELDS.has(code)) continue;
      const text = v.toString("utf8");
      let out: string;
      if (code === M || code === H) out = code === M && raised ? label : unechoed(text, names, label);
      else if (code === D) {
        const key = /^Key \(([^)]*)\)=/.exec(text);
        out = key && key[1]!.split(", ").every((n) => /^[A-Za-z_][A-Za-z0-9_$]*$/.test(n)) ? `Key (${key[1]})=${label}` : label;
      } else out = label;
      if (out !== text) {
        f[1] = Buffer.from(out, "utf8");
        changed = true;
      }
    }
    if (changed) counts["(error text)"] = (counts["(error text)"] ?? 0) + 1;
  }
  const parts: Buffer[] = [];
  for (const [code, v] of fields) {
    const masked = PLAIN_FIELDS.has(code) ? undefined : maskBytes(v, 0, v.length, m, counts);
    if (masked) changed = true;
    const value = masked ?? v;
    parts.push(Buffer.of(code), value.includes(0) ? Buffer.from(value.toString("latin1").replaceAll("\0", ""), "latin1") : value, Buffer.of(0));
  }
  if (!changed) return raw;
  return message(raw[0]!, [...parts, Buffer.of(0)]);
}

/** `text` with its quoted runs (but object names) and 0x… byte runs replaced by `label`. */
function unechoed(text: string, names: ReadonlySet<string>, label: string): string {
  return text
    .replace(/"((?:[^"]|"")*)"/g, (all, inner: string) => (names.has(inner.replaceAll('""', '"')) ? all : `"${label}"`))
    .replace(/'((?:[^']|'')*)'/g, () => `'${label}'`)
    .replace(/\b0x[0-9a-fA-F]+(?:\s+0x[0-9a-fA-F]+)*/g, label);
}

/** A NotificationResponse with its payload masked. */
export function maskNotification(raw: Buffer, m: CompiledMask, counts: MaskCounts): Buffer {
  if (m.detectors.length === 0) return raw;
  const channelEnd = raw.indexOf(0, 9);
  const payloadEnd = channelEnd < 0 ? -1 : raw.indexOf(0, channelEnd + 1);
  if (payloadEnd < 0) throw new ProtocolViolation("NotificationResponse is truncated");
  const masked = maskBytes(raw, channelEnd + 1, payloadEnd, m, counts);
  return masked ? message(raw[0]!, [raw.subarray(5, channelEnd + 1), masked, Buffer.of(0)]) : raw;
}

/** A CopyData message with its row masked. */
export function maskCopyData(raw: Buffer, m: CompiledMask, counts: MaskCounts): Buffer {
  const masked = maskBytes(raw, 5, raw.length, m, counts);
  return masked ? message(raw[0]!, [masked]) : raw;
}

function message(type: number, parts: Buffer[]): Buffer {
  const body = Buffer.concat(parts);
  const out = Buffer.allocUnsafe(5 + body.length);
  out[0] = type;
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}
