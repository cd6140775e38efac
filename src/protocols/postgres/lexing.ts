/**
 * How the target will lex the next statement, known without a race.
 *
 * Two settings change how PostgreSQL reads SQL text: `client_encoding`
 * (which bytes make a character, see encoding.ts) and
 * `standard_conforming_strings` (whether a backslash in '…' escapes). The
 * target reports both in ParameterStatus, but only after the statement that
 * changed them has run: PostgreSQL 14 and later send the reports just before
 * ReadyForQuery. A client that pipelines `SET standard_conforming_strings =
 * off` and, in the same write, a statement whose quoting means something else
 * under the new setting would have that statement read under the old one.
 *
 * So a statement that can change either setting is a barrier: nothing after
 * it is parsed until the settings it leaves are known. PgSession waits for
 * the ReadyForQuery that ends it (the reports come before it) or, inside an
 * extended-protocol batch that has not reached its Sync, asks the target
 * with its own SHOW statements (`PROBE`), whose answers the client never
 * sees. Barriers (`isLexingBarrier`):
 *
 * * SET and RESET of anything (RESET ALL, SET NAMES, SET LOCAL included),
 *   DISCARD, DO and CALL;
 * * any function call: set_config() changes settings, and a user-defined
 *   function may call it. Built-in functions other than set_config are not
 *   barriers once the target's catalog says they are built in
 *   (`functionFacts`);
 * * EXECUTE of a prepared statement and FETCH from a cursor that agate did
 *   not see made (they stand for the statement behind them otherwise);
 * * transaction control, once the session ran a barrier since it was last
 *   idle: COMMIT ends SET LOCAL, ROLLBACK undoes SET.
 *
 * Not seen: a trigger function that calls set_config. The default policy
 * refuses CREATE FUNCTION and CREATE TRIGGER, and the command-tag check in
 * PgSession closes a session whose target ran other statements than were
 * decided.
 *
 * With standard_conforming_strings off, a '…' string reads backslash escapes
 * as an E'…' string does; agate's parser reads '…' as the SQL standard does.
 * So such a statement is rewritten before it is parsed (`withEscapeStrings`),
 * each plain string that holds a backslash becoming an E'…' string, with
 * PostgreSQL's own scanner finding the strings.
 */
import { AgateError } from "../../core/errors.ts";
import type { SqlStatement } from "../../core/types.ts";
import { decodeClientText, encodingName } from "./encoding.ts";

/** The settings the probe asks for, by the names ParameterStatus reports. */
export const PROBE = ["client_encoding", "standard_conforming_strings"] as const;

/** Whether the catalog says a function is built in (undefined: not known). */
export type BuiltIn = (st: SqlStatement, fn: string) => boolean | undefined;

export class LexingState {
  encoding = "UTF8";
  scsOff = false;

  /** A reported setting (ParameterStatus or the probe's answer). */
  report(name: string, value: string): void {
    if (name === "client_encoding") this.encoding = encodingName(value);
    else if (name === "standard_conforming_strings") this.scsOff = value.toLowerCase() === "off";
  }

  /** Read a message's SQL bytes as the target will (throws AgateError SQL_ENCODING). */
  readonly decode = (bytes: Uint8Array): string => decodeClientText(bytes, this.encoding);

  /**
   * The text agate's parser must read to see what the target sees in `text`
   * now (throws AgateError SQL_SETTINGS or SQL_PARSE, see withEscapeStrings).
   */
  standard(text: string, scan: Scan): string {
    return this.scsOff && text.includes("\\") ? withEscapeStrings(text, scan) : text;
  }
}

/** PostgreSQL's scanner with standard_conforming_strings on (sql.ts scanSql). */
export type Scan = (bytes: Uint8Array) => readonly { start: number; end: number; tokenName: string }[];
const QUOTE = 0x27;
const BACKSLASH = 0x5c;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * What `text` means with standard_conforming_strings off, written so that it
 * means the same with it on: every '…' string gets an E prefix (a continued
 * string once, at its start), N'…' becomes NCHAR E'…', and a type name
 * directly before the quote is kept apart (int4'1' becomes int4 E'1'). Other
 * string forms read the same either way (E'…', $$…$$, B'…', X'…') or are
 * refused by the target while the setting is off (U&'…').
 *
 * The strings are found by `scanOff`, a small scanner that reads as
 * PostgreSQL's scan.l does with the setting off. It is not trusted: the
 * rewritten text is scanned again by PostgreSQL's own scanner (with the
 * setting on), and it must find every inserted E starting a string, and no
 * plain '…' string holding a backslash. Then the rewritten text lexes the
 * same with the setting on and off, and, since each E stands where a string
 * starts, the same as the original does with it off.
 *
 * @throws AgateError SQL_PARSE when PostgreSQL's scanner rejects the
 *   rewritten text, SQL_SETTINGS when it does not confirm the rewrite.
 */
export function withEscapeStrings(text: string, scan: Scan): string {
  const bytes = encoder.encode(text);
  const starts = scanOff(bytes);
  const parts: Uint8Array[] = [];
  const inserted: number[] = []; // offsets of the inserted Es in the result
  let from = 0;
  let length = 0;
  for (const at of starts) {
    let cut = at;
    let insert = "E";
    if (at > 0 && (bytes[at - 1]! | 0x20) === 0x6e && (at < 2 || !isIdentByte(bytes[at - 2]!))) {
      cut = at - 1; // N'…' is the keyword NCHAR and a string
      insert = "NCHAR E";
    } else if (at > 0 && isIdentByte(bytes[at - 1]!)) {
      insert = " E";
    }
    parts.push(bytes.subarray(from, cut), encoder.encode(insert));
    length += cut - from + insert.length;
    inserted.push(length - 1);
    from = at;
  }
  parts.push(bytes.subarray(from));
  const out = new Uint8Array(length + bytes.length - from);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  const tokens = scan(out);
  const strings = new Set<number>();
  for (const t of tokens) {
    if (t.tokenName !== "SCONST") continue;
    strings.add(t.start);
    if (out[t.start] === QUOTE && out.subarray(t.start, t.end).includes(BACKSLASH)) throw unconfirmed();
  }
  for (const at of inserted) if (!strings.has(at)) throw unconfirmed();
  return decoder.decode(out);
}

function unconfirmed(): AgateError {
  return new AgateError("SQL_SETTINGS", "with standard_conforming_strings off, agate could not confirm where this statement's strings end; use E'…' strings, or SET standard_conforming_strings = on");
}

/**
 * Where the '…' strings start (their opening quote) in `b`, read as
 * PostgreSQL does with standard_conforming_strings off: comments, quoted
 * identifiers, dollar quotes and the other string forms are skipped, and a
 * '…' string reads backslash escapes as E'…' does.
 */
function scanOff(b: Uint8Array): number[] {
  const starts: number[] = [];
  const n = b.length;
  let i = 0;
  while (i < n) {
    const c = b[i]!;
    if (c === 0x2d && b[i + 1] === 0x2d) {
      while (i < n && b[i] !== 0x0a && b[i] !== 0x0d) i++; // -- comment
    } else if (c === 0x2f && b[i + 1] === 0x2a) {
      let depth = 0; // /* nested comments */
      do {
        if (b[i] === 0x2f && b[i + 1] === 0x2a) (depth++, (i += 2));
        else if (b[i] === 0x2a && b[i + 1] === 0x2f) (depth--, (i += 2));
        else i++;
      } while (depth > 0 && i < n);
    } else if (c === 0x22) {
      i = quoted(b, i + 1, 0x22, false); // "identifier"
    } else if (c === QUOTE) {
      starts.push(i);
      i = quoted(b, i + 1, QUOTE, true);
    } else if (c === 0x24 && (i === 0 || !isIdentByte(b[i - 1]!))) {
      i = dollar(b, i);
    } else if (isIdentStart(c)) {
      let j = i + 1;
      while (j < n && isIdentByte(b[j]!)) j++;
      const single = j === i + 1 ? c | 0x20 : 0;
      if (single && b[j] === QUOTE) {
        // E'…' escapes, B'…' and X'…' do not; N'…' is NCHAR and a '…' string.
        if (single === 0x6e) starts.push(j);
        i = quoted(b, j + 1, QUOTE, single === 0x65 || single === 0x6e);
      } else if (single === 0x75 && b[j] === 0x26 && (b[j + 1] === QUOTE || b[j + 1] === 0x22)) {
        i = quoted(b, j + 2, b[j + 1]!, false); // U&'…' and U&"…"
      } else {
        i = j;
      }
    } else {
      i++;
    }
  }
  return starts;
}

/**
 * The offset after a quoted run that began before `i`: a doubled quote
 * stands for one, a backslash escapes the next byte when `escapes`, and a
 * string continues across a newline (whitespace and -- comments between).
 */
function quoted(b: Uint8Array, i: number, q: number, escapes: boolean): number {
  for (;;) {
    while (i < b.length) {
      const c = b[i]!;
      if (escapes && c === BACKSLASH) i += 2;
      else if (c === q && b[i + 1] === q) i += 2;
      else if (c === q) break;
      else i++;
    }
    if (i >= b.length) return b.length;
    i++; // the closing quote
    if (q !== QUOTE) return i;
    let j = i;
    let newline = false;
    while (j < b.length) {
      const c = b[j]!;
      if (c === 0x0a || c === 0x0d) newline = true;
      else if (c === 0x2d && b[j + 1] === 0x2d && newline) {
        while (j < b.length && b[j] !== 0x0a && b[j] !== 0x0d) j++;
        continue;
      } else if (c !== 0x20 && c !== 0x09 && c !== 0x0c && c !== 0x0b) break;
      j++;
    }
    if (!newline || b[j] !== QUOTE) return i;
    i = j + 1; // the string goes on
  }
}

/** After a dollar-quoted string starting at `i` ($tag$…$tag$), or after the lone $ (a parameter, $1). */
function dollar(b: Uint8Array, i: number): number {
  let j = i + 1;
  if (j < b.length && isIdentStart(b[j]!)) {
    j++;
    while (j < b.length && isIdentByte(b[j]!) && b[j] !== 0x24) j++;
  }
  if (b[j] !== 0x24) return i + 1;
  const tag = b.subarray(i, j + 1);
  for (let k = j + 1; k + tag.length <= b.length; k++) {
    if (b[k] === 0x24 && tag.every((x, t) => b[k + t] === x)) return k + tag.length;
  }
  return b.length;
}

function isIdentStart(b: number): boolean {
  return (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || b === 0x5f || b >= 0x80;
}

/** Bytes that continue an identifier or keyword (scan.l ident_cont, with high-bit bytes). */
function isIdentByte(b: number): boolean {
  return isIdentStart(b) || (b >= 0x30 && b <= 0x39) || b === 0x24;
}

/**
 * Whether running `statements` can change how later text lexes.
 * `behind(st)` is the statement an EXECUTE or FETCH stands for, when agate
 * saw it made; `builtIn` what the catalog knows of a function.
 */
export function isLexingBarrier(statements: readonly SqlStatement[], touched: boolean, behind: (st: SqlStatement) => SqlStatement | undefined, builtIn?: BuiltIn): boolean {
  for (const st of statements) {
    if (st.kind === "set" || st.kind === "do" || st.kind === "call" || st.node === "DiscardStmt") return true;
    if (st.kind === "transaction" && touched) return true;
    for (const fn of st.functions) {
      const name = fn.slice(fn.lastIndexOf(".") + 1);
      if (name === "set_config" || builtIn?.(st, fn) !== true) return true;
    }
    if (st.node === "ExecuteStmt" || st.node === "FetchStmt") {
      const b = behind(st);
      if (b === undefined || isLexingBarrier([b], touched, () => undefined, builtIn)) return true;
    }
  }
  return false;
}
