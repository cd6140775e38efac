/**
 * Query text in the session's client encoding, read the way the target reads
 * it. PostgreSQL converts a Query's or Parse's text from the client encoding
 * to the server encoding before its lexer sees it (pg_client_to_server in
 * exec_simple_query and exec_parse_message), so agate decodes the same bytes
 * to a string and parses that: the two lexers then see the same characters.
 *
 * What has to agree exactly is where the ASCII characters are: quotes,
 * backslashes, semicolons and dollars decide how SQL lexes, and every other
 * character lexes the same (a letter inside an identifier or a string). In
 * the client-only encodings (SJIS, BIG5, GBK, UHC, GB18030, …) the second
 * byte of a character can be an ASCII byte such as 0x5C, a backslash: read as
 * UTF-8, `E'\x95\'` ends differently than the target reads it. So the bytes
 * are split into characters by PostgreSQL's own rules for the encoding
 * (pg_wchar.c: the *_mblen functions), and the text the decoder produced must
 * have ASCII exactly where those characters are single ASCII bytes, with the
 * runs of other characters in between in the same places. A text that does
 * not agree, or that the decoder refuses, is refused (fail closed); so is
 * non-ASCII text in an encoding agate has no decoder for.
 *
 * Decoders are the WHATWG ones in TextDecoder (Bun implements them all);
 * where a WHATWG label stands for a superset (iso-8859-1 is decoded as
 * windows-1252, euc-kr as UHC), the characters PostgreSQL maps differently
 * are non-ASCII on both sides and lex the same.
 */
import { AgateError } from "../../core/errors.ts";

/** How PostgreSQL splits bytes into characters in an encoding whose trailing bytes may be ASCII. */
type CharLength = (bytes: Uint8Array, i: number) => number;

interface ClientEncoding {
  /** The WHATWG label, or undefined when agate has no decoder (ASCII-only text still passes). */
  label?: string;
  /** For encodings whose multi-byte characters may contain ASCII bytes: PostgreSQL's mblen. */
  mblen?: CharLength;
}

const high = (c: number) => c >= 0x80;
/** pg_sjis_mblen: half-width katakana (0xA1–0xDF) is one byte, any other high byte leads two. */
const sjis: CharLength = (b, i) => (b[i]! >= 0xa1 && b[i]! <= 0xdf ? 1 : high(b[i]!) ? 2 : 1);
/** pg_big5_mblen, pg_gbk_mblen, pg_uhc_mblen, pg_johab_mblen (for its lead bytes): a high byte leads two. */
const twoByte: CharLength = (b, i) => (high(b[i]!) ? 2 : 1);
/** pg_gb18030_mblen: a high byte leads four when a digit follows it, else two. */
const gb18030: CharLength = (b, i) => (!high(b[i]!) ? 1 : b[i + 1]! >= 0x30 && b[i + 1]! <= 0x39 ? 4 : 2);

/**
 * PostgreSQL's client encodings (pg_enc2name_tbl, by the names ParameterStatus
 * reports) and how to read them. Encodings not listed are read as UTF-8 is
 * (ASCII-safe: every byte of a multi-byte character has the high bit set).
 */
const ENCODINGS: Record<string, ClientEncoding> = {
  UTF8: { label: "utf-8" },
  SQL_ASCII: { label: "utf-8" }, // not converted, but validated as the server encoding (UTF8 for agate's targets)
  LATIN1: { label: "latin1" },
  LATIN2: { label: "iso-8859-2" },
  LATIN3: { label: "iso-8859-3" },
  LATIN4: { label: "iso-8859-4" },
  LATIN5: { label: "iso-8859-9" },
  LATIN6: { label: "iso-8859-10" },
  LATIN7: { label: "iso-8859-13" },
  LATIN8: { label: "iso-8859-14" },
  LATIN9: { label: "iso-8859-15" },
  LATIN10: { label: "iso-8859-16" },
  ISO_8859_5: { label: "iso-8859-5" },
  ISO_8859_6: { label: "iso-8859-6" },
  ISO_8859_7: { label: "iso-8859-7" },
  ISO_8859_8: { label: "iso-8859-8" },
  WIN866: { label: "ibm866" },
  WIN874: { label: "windows-874" },
  WIN1250: { label: "windows-1250" },
  WIN1251: { label: "windows-1251" },
  WIN1252: { label: "windows-1252" },
  WIN1253: { label: "windows-1253" },
  WIN1254: { label: "windows-1254" },
  WIN1255: { label: "windows-1255" },
  WIN1256: { label: "windows-1256" },
  WIN1257: { label: "windows-1257" },
  WIN1258: { label: "windows-1258" },
  KOI8R: { label: "koi8-r" },
  KOI8U: { label: "koi8-u" },
  EUC_JP: { label: "euc-jp" },
  EUC_CN: { label: "gbk" },
  EUC_KR: { label: "euc-kr" },
  EUC_TW: {},
  EUC_JIS_2004: {},
  MULE_INTERNAL: {},
  SJIS: { label: "shift_jis", mblen: sjis },
  SHIFT_JIS_2004: { label: "shift_jis", mblen: sjis },
  BIG5: { label: "big5", mblen: twoByte },
  GBK: { label: "gbk", mblen: twoByte },
  UHC: { label: "euc-kr", mblen: twoByte },
  GB18030: { label: "gb18030", mblen: gb18030 },
  JOHAB: { mblen: twoByte },
};

/** PostgreSQL's aliases for the names above, as a client may spell them in SET client_encoding (pg_encname_tbl). */
const ALIASES: Record<string, string> = {
  UNICODE: "UTF8",
  "UTF-8": "UTF8",
  SHIFTJIS: "SJIS",
  MSKANJI: "SJIS",
  WIN932: "SJIS",
  WINDOWS932: "SJIS",
  WIN936: "GBK",
  WINDOWS936: "GBK",
  WIN949: "UHC",
  WINDOWS949: "UHC",
  WIN950: "BIG5",
  WINDOWS950: "BIG5",
  KOI8: "KOI8R",
  ALT: "WIN866",
  WIN: "WIN1251",
  TCVN: "WIN1258",
  TCVN5712: "WIN1258",
  VSCII: "WIN1258",
  ABC: "WIN1258",
};

const decoders = new Map<string, TextDecoder>();
const utf8 = new TextDecoder();

/** The canonical name of a client encoding as reported or as written ("sjis", "Shift_JIS" → "SJIS"). */
export function encodingName(name: string): string {
  const upper = name.toUpperCase();
  if (ENCODINGS[upper]) return upper;
  const squashed = upper.replace(/[-_]/g, "");
  for (const key of Object.keys(ENCODINGS)) if (key.replace(/_/g, "") === squashed) return key;
  return ALIASES[upper] ?? ALIASES[squashed] ?? upper;
}

/**
 * The text of a Query or Parse message (`bytes`, without its terminating
 * zero) as the target will read it under client encoding `encoding`.
 *
 * @throws AgateError SQL_ENCODING when the bytes are not valid in the
 *   encoding, when agate has no decoder for non-ASCII text in it, or when the
 *   decoder's characters do not fall where PostgreSQL's do.
 */
export function decodeClientText(bytes: Uint8Array, encoding: string): string {
  // Invalid UTF-8 becomes U+FFFD, which lexes as any other letter; the target refuses the bytes.
  if (encoding === "UTF8" || encoding === "SQL_ASCII") return utf8.decode(bytes);
  if (isAscii(bytes)) return utf8.decode(bytes); // every encoding agrees on ASCII (all are ASCII supersets)
  const name = encodingName(encoding);
  const enc = ENCODINGS[name];
  if (enc === undefined || enc.label === undefined) {
    throw new AgateError("SQL_ENCODING", `agate cannot read non-ASCII text in client encoding ${encoding}; use UTF8, or write the statement in ASCII`, { encoding });
  }
  if (enc.label === "utf-8") return utf8.decode(bytes);
  let decoder = decoders.get(enc.label);
  if (!decoder) {
    decoder = new TextDecoder(enc.label as ConstructorParameters<typeof TextDecoder>[0], { fatal: true }); // bun-types lists only a few labels; Bun implements every WHATWG one
    decoders.set(enc.label, decoder);
  }
  let text: string;
  try {
    text = decoder.decode(bytes);
  } catch {
    throw new AgateError("SQL_ENCODING", `the statement is not valid ${name} text (the session's client encoding)`, { encoding: name });
  }
  if (enc.mblen && skeleton(text) !== byteSkeleton(bytes, enc.mblen)) {
    throw new AgateError("SQL_ENCODING", `agate cannot read this ${name} text the way the target splits its characters; write it in ASCII or use client_encoding UTF8`, { encoding: name });
  }
  return text;
}

function isAscii(bytes: Uint8Array): boolean {
  for (let i = 0; i < bytes.length; i++) if (bytes[i]! >= 0x80) return false;
  return true;
}

/** Where the ASCII characters are: ASCII kept, every run of other characters one U+0080. */
function skeleton(text: string): string {
  return text.replace(/[^\x00-\x7f]+/g, "\x80");
}

/** The same for bytes split into characters by PostgreSQL's rule for the encoding. */
function byteSkeleton(bytes: Uint8Array, mblen: CharLength): string {
  let out = "";
  let run = false;
  for (let i = 0; i < bytes.length; ) {
    const n = mblen(bytes, i);
    if (n === 1 && bytes[i]! < 0x80) {
      out += String.fromCharCode(bytes[i]!);
      run = false;
    } else if (!run) {
      out += "\x80";
      run = true;
    }
    i += n;
  }
  return out;
}

// ── agate's own messages, in the client's encoding ──────────────────────

/**
 * The bytes of `text` in client encoding `encoding`, for the messages agate
 * writes itself (its errors and notices, which it builds in UTF-8): the
 * target converts its own messages to the client encoding, and so does agate.
 *
 * The tables are the WHATWG decoders' (the same as above) read backwards,
 * built on first use: every single byte, and for the multi-byte encodings
 * every two-byte character (within the EUC ranges for EUC_*). LATIN1 is
 * ISO 8859-1 itself, not windows-1252. A character the encoding cannot
 * represent, or one of the three- and four-byte characters of EUC_JP and
 * GB18030, becomes "?": PostgreSQL would fail the whole message ("character
 * … has no equivalent in encoding"), but a refusal must still be read.
 * UTF8 and SQL_ASCII are sent as they are (PostgreSQL does not convert for
 * SQL_ASCII: the client gets the server's bytes, UTF-8 for agate's
 * targets); so is text in an encoding PostgreSQL does not know, which the
 * target refuses anyway. Encodings without a decoder here (EUC_TW, JOHAB,
 * MULE_INTERNAL, EUC_JIS_2004) keep ASCII and get "?" for the rest.
 */
export function encodeClientText(text: string, encoding: string): Buffer {
  const name = encodingName(encoding);
  if (name === "UTF8" || name === "SQL_ASCII" || ENCODINGS[name] === undefined || isAsciiText(text)) return Buffer.from(text, "utf8");
  const table = encoderTable(name);
  const out: number[] = [];
  for (const ch of text) {
    const c = ch.codePointAt(0)!;
    if (c < 0x80) out.push(c);
    else {
      const bytes = table.get(ch);
      if (bytes === undefined) out.push(0x3f);
      else for (let i = 0; i < bytes.length; i++) out.push(bytes.charCodeAt(i));
    }
  }
  return Buffer.from(out);
}

function isAsciiText(text: string): boolean {
  for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) >= 0x80) return false;
  return true;
}

/** Encodings with two-byte characters, and the byte ranges to look for them in ([lead from, lead to, trail from, trail to]). */
const TWO_BYTE: Record<string, readonly [number, number, number, number]> = {
  EUC_JP: [0x8e, 0xfe, 0xa1, 0xfe],
  EUC_CN: [0xa1, 0xfe, 0xa1, 0xfe],
  EUC_KR: [0xa1, 0xfe, 0xa1, 0xfe],
  SJIS: [0x81, 0xfc, 0x40, 0xfc],
  SHIFT_JIS_2004: [0x81, 0xfc, 0x40, 0xfc],
  BIG5: [0x81, 0xfe, 0x40, 0xfe],
  GBK: [0x81, 0xfe, 0x40, 0xfe],
  UHC: [0x81, 0xfe, 0x41, 0xfe],
  GB18030: [0x81, 0xfe, 0x40, 0xfe],
};

/** character → its bytes (as a binary string), per encoding. */
const encoderTables = new Map<string, Map<string, string>>();

function encoderTable(name: string): Map<string, string> {
  let table = encoderTables.get(name);
  if (table) return table;
  table = new Map();
  encoderTables.set(name, table);
  const label = ENCODINGS[name]?.label;
  if (name === "LATIN1") {
    for (let b = 0x80; b <= 0xff; b++) table.set(String.fromCharCode(b), String.fromCharCode(b));
    return table;
  }
  if (label === undefined) return table;
  const decoder = new TextDecoder(label as ConstructorParameters<typeof TextDecoder>[0], { fatal: true });
  const learn = (bytes: number[]) => {
    let ch: string;
    try {
      ch = decoder.decode(Uint8Array.from(bytes));
    } catch {
      return;
    }
    // One character, not already known (a decoder may map several byte sequences to one character: keep the first).
    if (ch.length > 0 && [...ch].length === 1 && ch !== "\ufffd" && !table.has(ch)) table.set(ch, String.fromCharCode(...bytes));
  };
  const range = TWO_BYTE[name];
  const singleBytes = !range || name === "SJIS" || name === "SHIFT_JIS_2004"; // SJIS: half-width katakana
  if (singleBytes) for (let b = 0x80; b <= 0xff; b++) learn([b]);
  if (range) for (let lead = range[0]; lead <= range[1]; lead++) for (let trail = range[2]; trail <= range[3]; trail++) learn([lead, trail]);
  return table;
}
