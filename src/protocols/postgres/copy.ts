/**
 * Masking of COPY … TO STDOUT: the rows of a COPY carry no column types or
 * origins, so agate has PostgreSQL describe what the COPY reads first
 * (copySource: the query, or a SELECT of the table's columns, described on
 * the client's own connection by session.ts) and masks each field with the
 * ResultMasker of that description (rows.ts), as it would a DataRow:
 *
 *   binary  a tuple of binary COPY is the body of a binary DataRow (Int16
 *           field count, then per field Int32 length and bytes): each one
 *           goes through ResultMasker.row as is. The 11-byte signature,
 *           flags and header extension before the first tuple, and the
 *           trailer (Int16 -1) pass unchanged.
 *   text,   (only under column rules; detectors alone scan the whole row,
 *   csv     rows.ts maskCopyData) each row is split into its fields, which
 *           are unescaped (text: backslash escapes, \N is NULL; CSV:
 *           quotes, an unquoted empty field is NULL) into a text DataRow;
 *           a field the masker changed is escaped again (CSV: quoted), the
 *           others keep their bytes.
 *
 * PostgreSQL sends one CopyData per row, which is the fast path (no copy of
 * an unchanged row); a row split over several CopyData messages, or several
 * rows in one, are handled too, with at most one incomplete row carried over
 * (MAX_CARRY bytes).
 */
import { type SqlToken, scanSql } from "./sql.ts";
import type { ResultMasker } from "./rows.ts";
import { ProtocolViolation } from "./wire.ts";

/** An incomplete row carried from one CopyData to the next is at most this large. */
const MAX_CARRY = 256 << 20;
const SIGNATURE = Buffer.from("PGCOPY\n\xff\r\n\0", "latin1");
const EMPTY = Buffer.alloc(0);
const COPY_DATA = 0x64;

/** COPY options that change the text or CSV syntax away from the defaults this file reads. */
const SYNTAX_OPTIONS = new Set(["delimiter", "null", "quote", "escape", "encoding", "default"]);
const WORD = /^(?:[A-Za-z_\u0080-\uffff][\w$\u0080-\uffff]*|"(?:[^"]|"")+")$/;

export interface CopySource {
  /** A query PostgreSQL can describe with the COPY's columns in order (undefined: the COPY's text is not understood). */
  describe?: string;
  /** Text or CSV in the default syntax (no DELIMITER, NULL, QUOTE, ESCAPE, ENCODING option). */
  plain: boolean;
  /** A header line comes first. */
  header: boolean;
}

/**
 * What a `COPY … TO` statement (its own text, as parsed) reads: `COPY
 * (query) TO` describes the query; `COPY t [(a, b)] TO` a SELECT of the
 * listed columns, or of all (`*`: PostgreSQL's column order; a table with
 * generated columns, which COPY leaves out, then has more columns than the
 * COPY, which the caller checks).
 */
export function copySource(text: string): CopySource {
  const bytes = Buffer.from(text, "utf8");
  let tokens: SqlToken[];
  try {
    tokens = scanSql(bytes).filter((t) => t.tokenName !== "SQL_COMMENT" && t.tokenName !== "C_COMMENT");
  } catch {
    return { plain: false, header: false };
  }
  const word = (t: SqlToken | undefined) => (t === undefined ? "" : bytes.toString("utf8", t.start, t.end));
  const lower = (t: SqlToken | undefined) => word(t).toLowerCase();
  if (lower(tokens[0]) !== "copy") return { plain: false, header: false };
  // the old syntax COPY BINARY t (BINARY is no column or table name unquoted)
  if (lower(tokens[1]) === "binary") tokens.splice(1, 1);
  let i = 1;
  let describe: string | undefined;
  if (word(tokens[1]) === "(") {
    let depth = 0;
    for (i = 1; i < tokens.length; i++) {
      const w = word(tokens[i]);
      if (w === "(") depth++;
      else if (w === ")" && --depth === 0) break;
    }
    if (i < tokens.length) describe = bytes.toString("utf8", tokens[1]!.end, tokens[i]!.start);
    i++;
  } else {
    const rel: string[] = [];
    for (; i < tokens.length && word(tokens[i]) !== "(" && lower(tokens[i]) !== "to"; i++) rel.push(word(tokens[i]));
    let cols: string[] | undefined;
    if (word(tokens[i]) === "(") {
      cols = [];
      for (i++; i < tokens.length && word(tokens[i]) !== ")"; i++) if (word(tokens[i]) !== ",") cols.push(word(tokens[i]));
      i++;
    }
    const relOk = rel.length > 0 && rel.every((w, k) => (k % 2 === 1 ? w === "." : WORD.test(w)));
    if (relOk && (cols === undefined || (cols.length > 0 && cols.every((c) => WORD.test(c))))) {
      describe = `SELECT ${cols ? cols.join(", ") : "*"} FROM ${rel.join("")}`;
    }
  }
  if (lower(tokens[i]) !== "to") return { plain: false, header: false };
  let plain = true;
  let header = false;
  for (let k = i + 2; k < tokens.length; k++) {
    const w = lower(tokens[k]);
    if (SYNTAX_OPTIONS.has(w)) plain = false;
    if (w === "header") header = !["false", "off", "0"].includes(lower(tokens[k + 1]));
  }
  return { ...(describe !== undefined ? { describe } : {}), plain, header };
}

/** Masks the CopyData messages of one COPY … TO STDOUT. */
export class CopyMasker {
  private carry = EMPTY;
  /** binary: 0 before the header, 1 in the tuples, 2 after the trailer; text: 0 before the header line, 1 after. */
  private stage = 0;

  constructor(
    private readonly masker: ResultMasker,
    private readonly format: "binary" | "text" | "csv",
    private readonly columns: number,
    header: boolean,
  ) {
    if (format !== "binary" && !header) this.stage = 1;
  }

  /** The CopyData message `raw` masked; undefined when it held no complete row (its bytes are carried to the next). */
  data(raw: Buffer): Buffer | undefined {
    if (this.carry.length === 0 && this.stage === 1 && this.format === "binary") {
      // one tuple per message, as PostgreSQL sends them: the message is a DataRow but for its type byte
      const end = tupleEnd(raw, 5);
      if (end === raw.length && raw.readInt16BE(5) === this.columns) return this.masker.row(raw);
    }
    const buf = this.carry.length === 0 ? raw.subarray(5) : Buffer.concat([this.carry, raw.subarray(5)]);
    const pieces: Buffer[] = [];
    const p = this.format === "binary" ? this.binary(buf, pieces) : this.text(buf, pieces);
    if (buf.length - p > MAX_CARRY) throw new ProtocolViolation(`a COPY row is larger than ${MAX_CARRY} bytes`);
    this.carry = p < buf.length ? Buffer.from(buf.subarray(p)) : EMPTY;
    if (pieces.length === 0) return undefined;
    const body = pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces);
    const out = Buffer.allocUnsafe(5 + body.length);
    out[0] = COPY_DATA;
    out.writeInt32BE(4 + body.length, 1);
    body.copy(out, 5);
    return out;
  }

  /** CopyDone: nothing may be left over. */
  done(): void {
    if (this.carry.length > 0) throw new ProtocolViolation("COPY data ended inside a row");
    if (this.format === "binary" && this.stage !== 2) throw new ProtocolViolation("binary COPY data ended without its trailer");
  }

  settle(): void {
    this.masker.settle();
  }

  /** Complete binary pieces of `buf` into `pieces`; returns where the incomplete rest starts. */
  private binary(buf: Buffer, pieces: Buffer[]): number {
    let p = 0;
    while (p < buf.length) {
      if (this.stage === 0) {
        if (buf.length - p < 19) return p;
        if (!buf.subarray(p, p + 11).equals(SIGNATURE)) throw new ProtocolViolation("binary COPY data does not start with its signature");
        const ext = buf.readUInt32BE(p + 15);
        if (buf.length - p - 19 < ext) return p;
        pieces.push(buf.subarray(p, p + 19 + ext));
        p += 19 + ext;
        this.stage = 1;
        continue;
      }
      if (this.stage === 2) throw new ProtocolViolation("binary COPY data continues after its trailer");
      if (buf.length - p < 2) return p;
      const n = buf.readInt16BE(p);
      if (n === -1) {
        pieces.push(buf.subarray(p, p + 2));
        p += 2;
        this.stage = 2;
        continue;
      }
      if (n !== this.columns) throw new ProtocolViolation(`a binary COPY tuple has ${n} fields, the COPY ${this.columns} columns`);
      const end = tupleEnd(buf, p);
      if (end === undefined) return p;
      const msg = withHeader(buf, p, end);
      const out = this.masker.row(msg);
      pieces.push(out === msg ? buf.subarray(p, end) : out.subarray(5));
      p = end;
    }
    return p;
  }

  /** Complete text or CSV rows of `buf` into `pieces`; returns where the incomplete rest starts. */
  private text(buf: Buffer, pieces: Buffer[]): number {
    const csv = this.format === "csv";
    let p = 0;
    while (p < buf.length) {
      const end = rowEnd(buf, p, csv);
      if (end < 0) return p;
      if (this.stage === 0) {
        pieces.push(buf.subarray(p, end));
        this.stage = 1;
      } else pieces.push(this.textRow(buf, p, end, csv));
      p = end;
    }
    return p;
  }

  /** One row [a, b) (its newline included), masked. */
  private textRow(buf: Buffer, a: number, b: number, csv: boolean): Buffer {
    const line = buf[b - 2] === 0x0d ? b - 2 : b - 1;
    const spans = splitFields(buf, a, line, csv);
    if (spans.length !== this.columns * 2) throw new ProtocolViolation(`a COPY row has ${spans.length / 2} fields, the COPY ${this.columns} columns`);
    const values = spans.map((_, k) => (k % 2 === 0 ? fieldValue(buf, spans[k]!, spans[k + 1]!, csv) : null)).filter((_, k) => k % 2 === 0);
    const msg = dataRow(values);
    const out = this.masker.row(msg);
    if (out === msg) return buf.subarray(a, b);
    const masked = readFields(out);
    const parts: Buffer[] = [];
    for (let k = 0; k < values.length; k++) {
      if (k > 0) parts.push(csv ? COMMA : TAB);
      const before = values[k]!;
      const after = masked[k]!;
      const same = before === null ? after === null : after !== null && before.equals(after);
      parts.push(same ? buf.subarray(spans[2 * k]!, spans[2 * k + 1]!) : escapeField(after, csv));
    }
    parts.push(buf.subarray(line, b));
    return Buffer.concat(parts);
  }
}

const TAB = Buffer.from("\t");
const COMMA = Buffer.from(",");

/** Where the binary tuple at `p` ends, or undefined when `buf` holds only part of it. */
function tupleEnd(buf: Buffer, p: number): number | undefined {
  if (buf.length - p < 2) return undefined;
  const n = buf.readInt16BE(p);
  let q = p + 2;
  for (let i = 0; i < n; i++) {
    if (q + 4 > buf.length) return undefined;
    const len = buf.readInt32BE(q);
    if (len < -1) throw new ProtocolViolation(`a binary COPY field has length ${len}`);
    q += 4 + Math.max(len, 0);
    if (q > buf.length) return undefined;
  }
  return q;
}

/** Bytes [a, b) as the body of a CopyData message (the masker reads a DataRow's layout). */
function withHeader(buf: Buffer, a: number, b: number): Buffer {
  const out = Buffer.allocUnsafe(5 + b - a);
  out[0] = COPY_DATA;
  out.writeInt32BE(4 + b - a, 1);
  buf.copy(out, 5, a, b);
  return out;
}

/** Where the row starting at `p` ends (after its newline), or -1 when it is incomplete. CSV newlines inside quotes belong to the field. */
function rowEnd(buf: Buffer, p: number, csv: boolean): number {
  if (!csv) {
    const nl = buf.indexOf(0x0a, p);
    return nl < 0 ? -1 : nl + 1;
  }
  let quoted = false;
  for (let i = p; i < buf.length; i++) {
    const c = buf[i]!;
    if (c === 0x22) quoted = !quoted;
    else if (c === 0x0a && !quoted) return i + 1;
  }
  return -1;
}

/** The fields of a row [a, b) without its newline, as start/end pairs. */
function splitFields(buf: Buffer, a: number, b: number, csv: boolean): number[] {
  const spans: number[] = [a];
  let quoted = false;
  for (let i = a; i < b; i++) {
    const c = buf[i]!;
    if (csv && c === 0x22) quoted = !quoted;
    else if (!quoted && c === (csv ? 0x2c : 0x09)) spans.push(i, i + 1);
  }
  spans.push(b);
  return spans;
}

const ESCAPES: Record<number, number> = { 0x62: 0x08, 0x66: 0x0c, 0x6e: 0x0a, 0x72: 0x0d, 0x74: 0x09, 0x76: 0x0b };

/** A field's value: null for NULL (text \N; CSV an unquoted empty field), else its bytes unescaped. */
function fieldValue(buf: Buffer, a: number, b: number, csv: boolean): Buffer | null {
  if (csv) {
    if (a === b) return null;
    if (buf[a] !== 0x22) return buf.subarray(a, b);
    return Buffer.from(buf.toString("latin1", a + 1, b - 1).replaceAll('""', '"'), "latin1");
  }
  if (b - a === 2 && buf[a] === 0x5c && buf[a + 1] === 0x4e) return null;
  if (buf.indexOf(0x5c, a) < 0 || buf.indexOf(0x5c, a) >= b) return buf.subarray(a, b);
  const out: number[] = [];
  for (let i = a; i < b; i++) {
    const c = buf[i]!;
    if (c !== 0x5c || i + 1 >= b) {
      out.push(c);
      continue;
    }
    const d = buf[++i]!;
    if (d >= 0x30 && d <= 0x37) {
      let v = d - 0x30;
      for (let k = 0; k < 2 && i + 1 < b && buf[i + 1]! >= 0x30 && buf[i + 1]! <= 0x37; k++) v = v * 8 + buf[++i]! - 0x30;
      out.push(v & 0xff);
    } else if (d === 0x78 && i + 1 < b && /[0-9a-fA-F]/.test(String.fromCharCode(buf[i + 1]!))) {
      let v = 0;
      for (let k = 0; k < 2 && i + 1 < b && /[0-9a-fA-F]/.test(String.fromCharCode(buf[i + 1]!)); k++) v = v * 16 + parseInt(String.fromCharCode(buf[++i]!), 16);
      out.push(v);
    } else out.push(ESCAPES[d] ?? d);
  }
  return Buffer.from(out);
}

/** A value written back into a row: text with \, tab, newline and carriage return escaped; CSV quoted. */
function escapeField(v: Buffer | null, csv: boolean): Buffer {
  if (v === null) return Buffer.from(csv ? "" : "\\N");
  const s = v.toString("latin1");
  if (csv) return Buffer.from(`"${s.replaceAll('"', '""')}"`, "latin1");
  return Buffer.from(s.replace(/[\\\t\n\r]/g, (c) => ({ "\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r" })[c]!), "latin1");
}

/** A DataRow-shaped message of these values. */
function dataRow(values: (Buffer | null)[]): Buffer {
  let size = 7;
  for (const v of values) size += 4 + (v?.length ?? 0);
  const out = Buffer.allocUnsafe(size);
  out[0] = COPY_DATA;
  out.writeInt32BE(size - 1, 1);
  out.writeInt16BE(values.length, 5);
  let o = 7;
  for (const v of values) {
    o = out.writeInt32BE(v === null ? -1 : v.length, o);
    if (v) o += v.copy(out, o);
  }
  return out;
}

/** The fields of a DataRow-shaped message. */
function readFields(raw: Buffer): (Buffer | null)[] {
  const n = raw.readInt16BE(5);
  const out: (Buffer | null)[] = [];
  let p = 7;
  for (let i = 0; i < n; i++) {
    const len = raw.readInt32BE(p);
    p += 4;
    out.push(len < 0 ? null : raw.subarray(p, p + len));
    p += Math.max(len, 0);
  }
  return out;
}
