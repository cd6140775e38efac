/**
 * Named detectors for secrets and personal data (see types.ts for Match and
 * Detector). Each one finds candidates cheaply and then validates them:
 * checksums where the format has one (Luhn for cards, ISO 7064 mod-97 for
 * IBANs), a parser where one exists (IPv6, JWT headers), ranges where the
 * format defines them (SSN areas, card IIN ranges, IPv4 octets), and context
 * (a keyword, a key name, a URL's userinfo) where the value alone is
 * ambiguous.
 *
 * Speed: this runs on every text field of every row the gateway streams.
 * Most text holds nothing, so each detector first asks something cheap: one
 * regex of the literals token-like values start with (TRIGGERS: "-----BEGIN ",
 * "ghp_", "AKIA", "://", "@"…), one case-insensitive pass for the words
 * context-dependent detectors need (KEYWORDS: "password", "token", "phone"…),
 * both run at most once per text and shared, and for numbers regexes that
 * start with a literal or have a fixed length (which JavaScriptCore's regex
 * engine skips through quickly). Candidates are then read outwards in plain
 * code. Quantifiers are bounded and unambiguous, and every scan moves
 * forward: no input makes a detector more than linear (the tests feed them
 * 100k-character pathological runs). Long texts with characters beyond
 * Latin-1 are scanned as a Latin-1 copy (see narrow()).
 *
 * Boundaries: a value must not be part of a longer word or number, but an
 * ANSI colour sequence ("\x1b[31m") or a written-out escape ("\n" inside a
 * JSON string) right before it counts as a boundary, so terminal output and
 * JSON-encoded logs are masked like plain text.
 *
 * Quotes: text nested in other text escapes its quotes once more at each
 * level (JSON in CSV, COPY's doubled backslashes, a record's doubled
 * quotes, SQL's ''), so where a detector reads the quotes around a key or
 * a value it takes any bounded run of quotes and backslashes as one quote
 * (see "Quote boundaries"), and masks only what is inside, so the output
 * stays valid in each of its encodings.
 *
 * maxLength: for detectors that look at context before the value (a keyword
 * or key name), maxLength covers that context too, so a stream masker that
 * keeps maxLength characters back still sees it.
 */
import { isIPv6 } from "node:net";
import { AgateError } from "../core/errors.ts";
import type { Detector, Match } from "./types.ts";

// ---------------------------------------------------------------------------
// Character classes (UTF-16 code units)

function isDigit(c: number): boolean {
  return c >= 48 && c <= 57;
}
function isAlpha(c: number): boolean {
  const l = c | 32;
  return l >= 97 && l <= 122;
}
function isUpper(c: number): boolean {
  return c >= 65 && c <= 90;
}
function isLower(c: number): boolean {
  return c >= 97 && c <= 122;
}
function isAlnum(c: number): boolean {
  return isDigit(c) || isAlpha(c);
}
function isHex(c: number): boolean {
  const l = c | 32;
  return isDigit(c) || (l >= 97 && l <= 102);
}
function isSpace(c: number): boolean {
  return c === 32 || (c >= 9 && c <= 13);
}
/** \n \t \r \b \f \v: the letter of a written-out escape. */
function isEscapeLetter(c: number): boolean {
  return c === 110 || c === 116 || c === 114 || c === 98 || c === 102 || c === 118;
}

/** Is the "[" at `bracket` the start of an ANSI CSI sequence: ESC, or ESC written out (\u001b, \x1b, \033, \e)? */
function isCsiBracket(text: string, bracket: number): boolean {
  if (bracket >= 1 && text.charCodeAt(bracket - 1) === 27) return true;
  if (bracket < 2) return false;
  const before = text.slice(Math.max(0, bracket - 6), bracket).toLowerCase();
  return before.endsWith("\\u001b") || before.endsWith("\\x1b") || before.endsWith("\\033") || before.endsWith("\\e");
}

/** Is the letter at `k` the end of an escape: "\n"-style, or the final byte of an ANSI CSI sequence ("\x1b[1;31m")? */
function endsEscape(text: string, k: number): boolean {
  const c = text.charCodeAt(k);
  if (k >= 1 && text.charCodeAt(k - 1) === 92 && isEscapeLetter(c)) return true;
  let j = k - 1;
  const stop = Math.max(0, k - 33);
  while (j >= stop && (isDigit(text.charCodeAt(j)) || text.charCodeAt(j) === 59)) j--;
  return j >= 0 && text.charCodeAt(j) === 91 && isCsiBracket(text, j);
}

/**
 * May a value start at `i`: is the character before it not part of a word
 * (letters, digits, and `_` when `underscore`), or the end of an escape?
 */
function boundaryBefore(text: string, i: number, underscore: boolean): boolean {
  if (i <= 0) return true;
  const c = text.charCodeAt(i - 1);
  if (!(isAlnum(c) || (underscore && c === 95))) return true;
  return isAlpha(c) && endsEscape(text, i - 1);
}

/** May a value end at `j`: is the character at `j` not part of a word? */
function boundaryAfter(text: string, j: number, underscore: boolean): boolean {
  if (j >= text.length) return true;
  const c = text.charCodeAt(j);
  return !(isAlnum(c) || (underscore && c === 95));
}

/** A digit run continues across `.` + digit (a decimal, a version, a longer dotted number). */
function dottedBefore(text: string, i: number): boolean {
  return i >= 2 && text.charCodeAt(i - 1) === 46 && isDigit(text.charCodeAt(i - 2));
}
function dottedAfter(text: string, j: number): boolean {
  return j + 1 < text.length && text.charCodeAt(j) === 46 && isDigit(text.charCodeAt(j + 1));
}

/**
 * A start found by scanning back over word characters may have swallowed
 * the tail of an escape ("\nbob@…", "\x1b[31mbob@…"): skip it.
 */
function skipEscapePrefix(text: string, s: number, limit: number): number {
  if (s === 0 || s >= limit) return s;
  const p = text.charCodeAt(s - 1);
  if (p === 92 && isEscapeLetter(text.charCodeAt(s))) return s + 1;
  if (p === 91 || p === 59) {
    let b = s - 1;
    while (b > 0 && s - b < 34 && (isDigit(text.charCodeAt(b)) || text.charCodeAt(b) === 59)) b--;
    if (text.charCodeAt(b) === 91 && isCsiBracket(text, b)) {
      let k = s;
      while (k < limit && (isDigit(text.charCodeAt(k)) || text.charCodeAt(k) === 59)) k++;
      if (k < limit && isAlpha(text.charCodeAt(k))) return k + 1;
    }
  }
  return s;
}

// ---------------------------------------------------------------------------
// Quote boundaries

/**
 * Text nested in other text escapes its quotes once more at each level, and
 * each encoding its own way: \" in a JSON string, "" in a CSV field or in a
 * record's text output, '' in an SQL literal, every backslash doubled in
 * COPY's text format, and any combination (\\"" is JSON's \" inside a
 * record field, """" is CSV's "" inside CSV). So detectors that read the
 * quotes around a key or a value read a run of quotes and backslashes as
 * one boundary, whatever it is made of, up to QUOTE_MAX characters (a
 * longer run is not a quote: 16 covers four levels of doubling), and a
 * quoted value ends where a run starting with its opening quote begins.
 */
const QUOTE_MAX = 16;

/** " ' \ */
function isQuoteRunChar(c: number): boolean {
  return c === 34 || c === 39 || c === 92;
}
function isQuote(c: number): boolean {
  return c === 34 || c === 39;
}

/** The start of the quote run that ends at `i` (its last QUOTE_MAX characters at most; `i` when there is none). */
function quoteRunBefore(text: string, i: number): number {
  let s = i;
  while (s > 0 && i - s < QUOTE_MAX && isQuoteRunChar(text.charCodeAt(s - 1))) s--;
  return s;
}

/** The end of the quote run that starts at `i` (`i` when there is none), or -1 when it is longer than QUOTE_MAX. */
function quoteRunAfter(text: string, i: number): number {
  const lim = Math.min(text.length, i + QUOTE_MAX + 1);
  let e = i;
  while (e < lim && isQuoteRunChar(text.charCodeAt(e))) e++;
  return e - i > QUOTE_MAX ? -1 : e;
}

/** Does text[a, b) hold a quote (not only backslashes)? */
function hasQuote(text: string, a: number, b: number): boolean {
  for (let i = a; i < b; i++) if (isQuote(text.charCodeAt(i))) return true;
  return false;
}

/** Raw line and field breaks: no quoted value runs across one (\n written out is fine). */
function isBreak(c: number): boolean {
  return c === 10 || c === 13 || c === 9;
}

/**
 * Where the value opened by `open` and starting at `vs` ends (where its
 * closing quote starts), or -1 if a break or `lim` comes first. One
 * character ("…", '…', `…`): the first one not escaped by a backslash.
 * Longer (\"…\", ""…"", \\""…\\"", ''…'''): the first quote run that starts
 * with `open`, so quotes escaped one level deeper (\\\" inside \"…\",
 * \"" inside ""…"") stay in the value, and a run that also closes the
 * enclosing string (''' after ''…) still closes it; or a run of the
 * value's own escaped backslashes and then `open`.
 */
function closeQuote(text: string, vs: number, open: string, lim: number): number {
  let e = vs;
  if (open.length === 1) {
    const q = open.charCodeAt(0);
    while (e < lim) {
      const x = text.charCodeAt(e);
      if (x === q) return e;
      if (isBreak(x)) return -1;
      e += x === 92 ? 2 : 1;
    }
    return -1;
  }
  let b = 0; // the backslashes `open` starts with
  while (open.charCodeAt(b) === 92) b++;
  while (e < lim) {
    const x = text.charCodeAt(e);
    if (isQuoteRunChar(x)) {
      if (text.startsWith(open, e)) return e;
      // the value ends in a backslash, written 2(b + 1) times at this level: \"abc\\\\\" is abc\
      let k = e;
      while (k < lim && text.charCodeAt(k) === 92) k++;
      const extra = k - e - b;
      if (extra > 0 && extra % (2 * (b + 1)) === 0 && text.startsWith(open, e + extra)) return e + extra;
      e = k;
      while (e < lim && isQuoteRunChar(text.charCodeAt(e))) e++;
    } else if (isBreak(x)) return -1;
    else e++;
  }
  return -1;
}

/** Does a value end at `i`: the end of the text, or a character that ends a bare value? */
function valueEndsAt(text: string, i: number): boolean {
  if (i >= text.length) return true;
  const c = text.charCodeAt(i);
  return c <= 32 || c === 44 || c === 59 || c === 38 || c === 125 || c === 93 || c === 41 || c === 127;
}

/** A value that holds "… password=" (a key naming a secret): its quotes were misread, it runs on into what follows. */
const NEXT_KEY = /[\s,;&]([A-Za-z_][A-Za-z0-9_.-]{0,63})=/g;

function holdsSecretKey(text: string, vs: number, ve: number): boolean {
  const v = text.slice(vs, ve);
  if (v.indexOf("=") === -1) return false;
  NEXT_KEY.lastIndex = 0;
  for (let m = NEXT_KEY.exec(v); m !== null; m = NEXT_KEY.exec(v)) if (keyClass(m[1]!) !== 0) return true;
  return false;
}

/**
 * The quoted value at `p`, [start, end) inside its quotes; "bare" when no
 * quote opens there; null when nothing that can be a value is there. The
 * key before it tells which quote to expect: `kr` is the quote run that
 * closed the key (\"password\": → \"), `kl` the one before the key. A value
 * quoted like its key uses the key's quote. Otherwise the run at `p`, up to
 * its last quote character (backslashes after it are the value's own
 * escapes), opens the value, except that
 *   - a doubled quote followed by the end of a value ("", '', \"\") is an
 *     empty string;
 *   - when the key has no closing quote but an opening one, a run equal to
 *     that opening one (the end of the run before the key) and followed by
 *     the end of a value closes the string the key began: in CSV
 *     `"password=",2024-01-15` the key has no value at all (but in
 *     PostgreSQL's `"db_password = "correct-horse-battery""`, which quotes
 *     without escaping, it has one).
 * A value must not run across a tab or line break, nor hold "… password="
 * (another key naming a secret).
 */
function quotedValue(text: string, p: number, kl: string, kr: string, lim: number): [number, number] | null | "bare" {
  const c = text.charCodeAt(p);
  if (c === 96) {
    const e = closeQuote(text, p + 1, "`", lim);
    return e < 0 ? null : [p + 1, e];
  }
  if (!isQuoteRunChar(c)) return "bare";
  const r = quoteRunAfter(text, p);
  if (r < 0) return null;
  let q = r;
  while (q > p && !isQuote(text.charCodeAt(q - 1))) q--;
  if (q === p) return "bare"; // backslashes only
  let open: string;
  if (kr.length > 0 && text.startsWith(kr, p)) open = kr;
  else {
    open = text.slice(p, q);
    if (valueEndsAt(text, q) && (open.length > 1 || (kr.length === 0 && kl.endsWith(open)))) return null;
  }
  let vs = p + open.length;
  let e = closeQuote(text, vs, open, lim);
  if (e < 0 && open.length > 1 && isQuote(c)) {
    // "\"quoted\"": a quote, then the value's own escaped quote
    vs = p + 1;
    e = closeQuote(text, vs, text[p]!, lim);
  }
  if (e < 0 || holdsSecretKey(text, vs, e)) return null;
  return [vs, e];
}

// ---------------------------------------------------------------------------
// Shared per-text facts for the prefilters

/**
 * One pass of a case-insensitive keyword regex serves four detectors that
 * need a word nearby: kv_secret (key names), aws_secret_key ("secret"),
 * phone ("tel", "phone"…) and ssn ("ssn", "social security"…). Scanning
 * once instead of four times is most of what keeps them cheap.
 */
const KEYWORDS = /(?<=to)ken|key|p(?:ass|wd|hone)|(?<=se)cret|(?<=a)uth|cred|(?<=te)l|(?<=ss)n|(?<=so)cial|(?<=mo)bile/gi;

interface KeywordHits {
  kv: number[];
  secret: number[];
  phone: number[];
  ssn: number[];
}
const NO_HITS: KeywordHits = { kv: [], secret: [], phone: [], ssn: [] };

/**
 * The literals every token-like value starts with, in one regex: when a
 * text has none of them (most text), eight detectors are done after one
 * pass. Bits say which literals were seen.
 */
const TRIGGERS =
  /-----BEGIN |y[JA]|gh[pousr]_|github_pat_|gl(?:pat|dt|rt|ptt|ft|soat|oas|cbt|imt|agent|ffct)-|xox|xapp-|\.slack\.com\/|A(?:KIA|SIA|GPA|IDA|ROA|NPA|NVA|IPA)|:\/\/|@/g;
const T_PEM = 1;
const T_JWT = 2;
const T_GITHUB = 4;
const T_GITLAB = 8;
const T_SLACK = 16;
const T_AWS = 32;
const T_URL = 64;
const T_EMAIL = 128;
const T_ALL = 255;

/** At least seven / nine digits anywhere (the keyword forms of phone and ssn need them). */
const DIGITS7 = /\d(?:\D*\d){6}/;
const DIGITS9 = /\d(?:\D*\d){8}/;
/** aws_secret_key asks for the keyword pass only if this is in the text (when nothing else has asked yet). */
const SECRET_WORD = /secret/i;

/** Facts about one text that several detectors share; each computed at most once per findAll. */
class Scan {
  private kw: KeywordHits | null = null;
  private trig = -1;
  constructor(readonly text: string) {}
  /** Which TRIGGERS literals the text has (T_* bits). */
  triggers(): number {
    if (this.trig >= 0) return this.trig;
    let bits = 0;
    TRIGGERS.lastIndex = 0;
    let m: RegExpExecArray | null;
    while (bits !== T_ALL && (m = TRIGGERS.exec(this.text)) !== null) {
      switch (m[0].charCodeAt(0)) {
        case 45: bits |= T_PEM; break; // -
        case 121: bits |= T_JWT; break; // y (of eyJ…, eyA…)
        case 103: bits |= m[0].charCodeAt(1) === 108 ? T_GITLAB : T_GITHUB; break; // gl… / gh… github_pat_
        case 120: case 46: bits |= T_SLACK; break; // xox, xapp-, .slack.com/
        case 65: bits |= T_AWS; break; // A
        case 58: bits |= T_URL; break; // ://
        default: bits |= T_EMAIL; // @
      }
    }
    this.trig = bits;
    return bits;
  }
  /** Has the keyword pass run already? */
  get keywordsDone(): boolean {
    return this.kw !== null;
  }
  /** Where the keywords are, by the detector that wants them. */
  keywords(): KeywordHits {
    if (this.kw !== null) return this.kw;
    const text = this.text;
    let hits: KeywordHits = NO_HITS;
    KEYWORDS.lastIndex = 0;
    let m: RegExpExecArray | null;
    while ((m = KEYWORDS.exec(text)) !== null) {
      if (hits === NO_HITS) hits = { kv: [], secret: [], phone: [], ssn: [] };
      // the regex starts each word at a rarer letter (a lookbehind checks the ones before): put the start back
      const w = m[0];
      const c0 = w.charCodeAt(0) | 32;
      const c1 = w.charCodeAt(1) | 32;
      switch (c0) {
        case 107: // ken (token) / key
          hits.kv.push((w.charCodeAt(2) | 32) === 110 ? m.index - 2 : m.index);
          break;
        case 112: // pass, pwd / phone
          (c1 === 104 ? hits.phone : hits.kv).push(m.index);
          break;
        case 99: // cret (secret), cred / cial (social)
          if (c1 === 105) hits.ssn.push(m.index - 2);
          else if ((w.charCodeAt(3) | 32) === 116) {
            hits.kv.push(m.index - 2);
            hits.secret.push(m.index - 2);
          } else hits.kv.push(m.index);
          break;
        case 117: // uth (auth)
          hits.kv.push(m.index - 1);
          break;
        case 110: // n (ssn)
          hits.ssn.push(m.index - 2);
          break;
        default: // l (tel), bile (mobile)
          hits.phone.push(m.index - 2);
      }
    }
    this.kw = hits;
    return hits;
  }
}

type ScanFn = (text: string, scan: Scan, out: Match[]) => void;

/**
 * JavaScriptCore matches regular expressions against 8-bit (Latin-1)
 * strings several times faster than against 16-bit ones, and one emoji or
 * CJK character makes a whole string 16-bit. No detector looks for anything
 * beyond Latin-1, so a long text with such characters is scanned as a copy
 * in which each of them is "¤" (U+00A4: not a letter, digit, quote or
 * space, so boundaries and value ends stay where they were); offsets are
 * unchanged (one code unit each, surrogates included).
 */
const BEYOND_LATIN1 = /[^\x00-\xff]/;
const BEYOND_LATIN1_G = /[^\x00-\xff]/g;

function narrow(text: string): string {
  if (text.length < 256 || Buffer.byteLength(text, "utf8") === text.length || !BEYOND_LATIN1.test(text)) return text;
  return Buffer.from(text.replace(BEYOND_LATIN1_G, "\xa4"), "latin1").toString("latin1");
}

/** Sort and merge one detector's own matches (for detectors that combine several scans). */
function normalize(ms: Match[]): Match[] {
  if (ms.length < 2) return ms;
  ms.sort((a, b) => a.start - b.start || b.end - a.end);
  const out: Match[] = [];
  let cur = ms[0]!;
  for (let i = 1; i < ms.length; i++) {
    const m = ms[i]!;
    if (m.start < cur.end) {
      if (m.end > cur.end) cur = { start: cur.start, end: m.end, detector: cur.detector };
    } else {
      out.push(cur);
      cur = m;
    }
  }
  out.push(cur);
  return out;
}

/** Sort and merge out[base…] (one detector's matches from several scans), leaving earlier entries alone. */
function normalizeInPlace(out: Match[], base: number): void {
  if (out.length - base < 2) return;
  const merged = normalize(out.splice(base));
  for (const m of merged) out.push(m);
}

// ---------------------------------------------------------------------------
// email

/** The practical local-part alphabet (not every RFC 5322 atext: `'`, `=`, `/`, `{`… would swallow `user='bob@x.com`). */
function isLocalChar(c: number): boolean {
  return isAlnum(c) || c === 46 || c === 95 || c === 37 || c === 43 || c === 45;
}
function isDomainChar(c: number): boolean {
  return isAlnum(c) || c === 45 || c === 46;
}

/** Is the local part starting at `s` the userinfo of a URL (`scheme://user@host`), not an address? */
function inUrlUserinfo(text: string, s: number): boolean {
  for (let k = s - 1; k >= 0 && k >= s - 512; k--) {
    const c = text.charCodeAt(k);
    if (c === 47) return k >= 2 && text.charCodeAt(k - 1) === 47 && text.charCodeAt(k - 2) === 58;
    if (c <= 32 || c === 34 || c === 39 || c === 60 || c === 62 || c === 63 || c === 35 || c === 64) return false;
  }
  return false;
}

function allAlpha(text: string, a: number, b: number): boolean {
  for (let i = a; i < b; i++) if (!isAlpha(text.charCodeAt(i))) return false;
  return true;
}

/** The email whose "@" is at `at`, or -1; returns the end of the match. */
function emailAt(text: string, at: number, floor: number, out: Match[]): number {
  const lo = Math.max(floor, at - 64);
  let s = at;
  while (s > lo && isLocalChar(text.charCodeAt(s - 1))) s--;
  if (s === at) return -1;
  // more than 64 local characters: part of something longer, not an address
  if (s === at - 64 && s > floor && isLocalChar(text.charCodeAt(s - 1))) return -1;
  s = skipEscapePrefix(text, s, at);
  for (let k = at - 2; k >= s; k--)
    if (text.charCodeAt(k) === 46 && text.charCodeAt(k + 1) === 46) {
      s = k + 2; // "a..b@x.com": the address is "b@x.com"
      break;
    }
  while (s < at && text.charCodeAt(s) === 46) s++;
  if (s >= at || text.charCodeAt(at - 1) === 46) return -1;

  const hi = Math.min(text.length, at + 254);
  let e = at + 1;
  while (e < hi && isDomainChar(text.charCodeAt(e))) e++;
  if (e === hi && e < text.length && isDomainChar(text.charCodeAt(e))) return -1;
  // labels: 1–63 characters, no leading/trailing "-"; the last kept one (the TLD) letters only, ≥ 2
  let end = -1;
  let labels = 0;
  let ls = at + 1;
  for (let k = at + 1; k <= e; k++) {
    if (k < e && text.charCodeAt(k) !== 46) continue;
    const len = k - ls;
    if (len < 1 || len > 63 || text.charCodeAt(ls) === 45 || text.charCodeAt(k - 1) === 45) break;
    labels++;
    if (labels >= 2 && len >= 2 && allAlpha(text, ls, k)) end = k;
    ls = k + 1;
  }
  if (end < 0) return -1;
  if (end < text.length) {
    const n = text.charCodeAt(end);
    if (n === 95 || n === 64) return -1;
    // git@github.com:org/repo (scp-like syntax), not an address
    if (n === 58 && end + 1 < text.length) {
      const n2 = text.charCodeAt(end + 1);
      if (isAlnum(n2) || n2 === 126 || n2 === 47 || n2 === 95) return -1;
    }
  }
  if (inUrlUserinfo(text, s)) return -1;
  out.push({ start: s, end, detector: "email" });
  return end;
}

const scanEmail: ScanFn = (text, scan, out) => {
  if (!(scan.triggers() & T_EMAIL)) return;
  let at = text.indexOf("@");
  let floor = 0;
  while (at !== -1) {
    const end = emailAt(text, at, floor, out);
    if (end > 0) floor = end;
    at = text.indexOf("@", Math.max(at + 1, floor));
  }
};

// ---------------------------------------------------------------------------
// card

function luhn(d: string): boolean {
  let sum = 0;
  let alt = false;
  for (let i = d.length - 1; i >= 0; i--) {
    let x = d.charCodeAt(i) - 48;
    if (alt) {
      x *= 2;
      if (x > 9) x -= 9;
    }
    sum += x;
    alt = !alt;
  }
  return sum % 10 === 0;
}

/** Is `d` (digits only) in a known issuer range with a length that issuer uses? */
function cardIssuerOk(d: string): boolean {
  const n = d.length;
  const p1 = d.charCodeAt(0) - 48;
  const p2 = p1 * 10 + d.charCodeAt(1) - 48;
  const p3 = p2 * 10 + d.charCodeAt(2) - 48;
  const p4 = p3 * 10 + d.charCodeAt(3) - 48;
  const p6 = p4 * 100 + (d.charCodeAt(4) - 48) * 10 + d.charCodeAt(5) - 48;
  const long = n >= 16 && n <= 19;
  if (p1 === 4) return n === 13 || n === 16 || n === 19; // Visa
  if ((p2 >= 51 && p2 <= 55) || (p4 >= 2221 && p4 <= 2720)) return n === 16; // Mastercard
  if (p2 === 34 || p2 === 37) return n === 15; // American Express
  if (p4 === 6011 || p2 === 65 || (p3 >= 644 && p3 <= 649) || (p6 >= 622126 && p6 <= 622925)) return long; // Discover
  if (p4 >= 3528 && p4 <= 3589) return long; // JCB
  if (p2 === 36 || p2 === 38 || p2 === 39 || (p3 >= 300 && p3 <= 305) || p4 === 3095) return n >= 14 && n <= 19; // Diners Club
  if (p2 === 62) return long; // UnionPay
  if (p4 >= 2200 && p4 <= 2204) return long; // Mir
  if (p4 === 5018 || p4 === 5020 || p4 === 5038 || p4 === 5893 || p4 === 6304 || p4 === 6759 || (p4 >= 6761 && p4 <= 6763))
    return n >= 13 && n <= 19; // Maestro
  return false;
}

/**
 * Where cards can be, as fixed-length patterns (which the regex engine skips
 * through quickly, unlike a digit-led pattern of variable length): 13 digits
 * in a row, or the first 16 characters of the grouped layouts 4-4-4-k and
 * 4-6-k merged position by position. Around each hit the maximal run of
 * digits joined by single spaces or dashes is taken and searched.
 */
const CARD_COMPACT = /\d{13}/g;
const CARD_GROUPED = /\d{4}[ -]\d{4}[\d -]\d[\d -]{2}\d[\d -]\d/g;

/** The maximal run of digits joined by single spaces or dashes around [a, b). */
function digitRun(text: string, a: number, b: number): [number, number] {
  while (a > 0) {
    const p = text.charCodeAt(a - 1);
    if (isDigit(p)) a--;
    else if ((p === 32 || p === 45) && a >= 2 && isDigit(text.charCodeAt(a - 2))) a -= 2;
    else break;
  }
  const n = text.length;
  while (b < n) {
    const c = text.charCodeAt(b);
    if (isDigit(c)) b++;
    else if ((c === 32 || c === 45) && b + 1 < n && isDigit(text.charCodeAt(b + 1))) b += 2;
    else break;
  }
  return [a, b];
}

/**
 * Cards inside one run. Layouts: 13–19 digits in one group; groups of four
 * (4-4-4-k with k 1–7, 4-4-4-4-k with k 1–3); 4-6-4 / 4-6-5 (Diners,
 * Amex). One separator kind throughout. The longest layout that passes
 * Luhn and the issuer ranges wins; a run may hold a card followed by more
 * digits ("… 1111 12/25") and vice versa.
 */
function cardsInRun(text: string, rs: number, re: number, out: Match[]): void {
  const gs: number[] = [];
  const ge: number[] = [];
  for (let k = rs; k < re; ) {
    const s = k;
    while (k < re && isDigit(text.charCodeAt(k))) k++;
    gs.push(s);
    ge.push(k);
    k++;
  }
  const n = gs.length;
  const len = (g: number) => (g < n ? ge[g]! - gs[g]! : 0);
  const leftOk = boundaryBefore(text, rs, false) && !dottedBefore(text, rs);
  const rightOk = boundaryAfter(text, re, false) && !dottedAfter(text, re);
  const valid = (i: number, j: number): boolean => {
    if (j === n - 1 && !rightOk) return false;
    let d = "";
    for (let g = i; g <= j; g++) d += text.slice(gs[g]!, ge[g]!);
    return d.length >= 13 && d.length <= 19 && cardIssuerOk(d) && luhn(d);
  };
  for (let i = 0; i < n; ) {
    let best = -1;
    if (i > 0 || leftOk) {
      const l0 = len(i);
      if (l0 >= 13) {
        if (valid(i, i)) best = i;
      } else if (l0 === 4 && i + 2 < n) {
        const sep = text.charCodeAt(ge[i]!);
        let same = 1; // groups after i joined by `sep`
        while (i + same < n - 1 && same < 5 && text.charCodeAt(ge[i + same]!) === sep) same++;
        const l1 = len(i + 1);
        const l2 = len(i + 2);
        const l3 = same >= 3 ? len(i + 3) : 0;
        const l4 = same >= 4 ? len(i + 4) : 0;
        const tries: number[] = [];
        if (l1 === 4 && l2 === 4 && l3 === 4 && l4 >= 1 && l4 <= 3) tries.push(i + 4);
        if (l1 === 4 && l2 === 4 && l3 >= 1 && l3 <= 7) tries.push(i + 3);
        if (l1 === 6 && (l2 === 4 || l2 === 5)) tries.push(i + 2);
        for (const j of tries)
          if (valid(i, j)) {
            best = j;
            break;
          }
      }
    }
    if (best >= 0) {
      out.push({ start: gs[i]!, end: ge[best]!, detector: "card" });
      i = best + 1;
    } else i++;
  }
}

const scanCard: ScanFn = (text, _scan, out) => {
  if (text.length < 13) return;
  // runs found by either pattern, each searched once, in order
  const runs: number[] = [];
  for (const re of [CARD_COMPACT, CARD_GROUPED]) {
    re.lastIndex = 0;
    for (let m = re.exec(text); m !== null; m = re.exec(text)) {
      const [a, b] = digitRun(text, m.index, m.index + m[0].length);
      runs.push(a, b);
      re.lastIndex = b;
    }
  }
  if (runs.length === 0) return;
  const order = Array.from({ length: runs.length / 2 }, (_, i) => i).sort((x, y) => runs[2 * x]! - runs[2 * y]!);
  let done = -1;
  for (const i of order) {
    const a = runs[2 * i]!;
    if (a < done) continue;
    done = runs[2 * i + 1]!;
    cardsInRun(text, a, done, out);
  }
};

// ---------------------------------------------------------------------------
// iban

/** IBAN lengths of the SWIFT IBAN registry (and the French overseas territories that use FR's format). */
const IBAN_LENGTHS: Record<string, number> = {
  AD: 24, AE: 23, AL: 28, AT: 20, AZ: 28, BA: 20, BE: 16, BG: 22, BH: 22, BI: 27, BR: 29, BY: 28, CH: 21, CR: 22,
  CY: 28, CZ: 24, DE: 22, DJ: 27, DK: 18, DO: 28, EE: 20, EG: 29, ES: 24, FI: 18, FK: 18, FO: 18, FR: 27, GB: 22,
  GE: 22, GI: 23, GL: 18, GR: 27, GT: 28, HR: 21, HU: 28, IE: 22, IL: 23, IQ: 23, IS: 26, IT: 27, JO: 30, KW: 30,
  KZ: 20, LB: 28, LC: 32, LI: 21, LT: 20, LU: 20, LV: 21, LY: 25, MC: 27, MD: 24, ME: 22, MK: 19, MN: 20, MR: 27,
  MT: 31, MU: 30, NI: 28, NL: 18, NO: 15, OM: 23, PK: 24, PL: 28, PS: 29, PT: 25, QA: 29, RO: 24, RS: 22, RU: 33,
  SA: 24, SC: 31, SD: 18, SE: 24, SI: 19, SK: 24, SM: 27, SO: 23, ST: 25, SV: 28, TL: 23, TN: 24, TR: 26, UA: 29,
  VA: 22, VG: 24, XK: 20, YE: 30,
  GF: 27, GP: 27, MQ: 27, RE: 27, PF: 27, TF: 27, YT: 27, NC: 27, PM: 27, WF: 27, BL: 27, MF: 27,
};

/** Country + check digits + BBAN, either compact or in groups of four separated by single spaces. */
const IBAN_RE = /[A-Z]{2}\d{2}(?:(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?|[A-Z0-9]{11,30})/g;

/** ISO 13616: check digits 02–98, BBAN mostly digits (every national format is), mod-97 of the rearranged number is 1. */
function ibanValid(c: string): boolean {
  const check = (c.charCodeAt(2) - 48) * 10 + c.charCodeAt(3) - 48;
  if (check < 2 || check > 98) return false;
  let digits = 0;
  for (let i = 4; i < c.length; i++) if (isDigit(c.charCodeAt(i))) digits++;
  if (digits * 2 < c.length - 4) return false;
  let r = 0;
  for (let i = 0; i < c.length; i++) {
    const ch = c.charCodeAt((i + 4) % c.length);
    r = isDigit(ch) ? (r * 10 + ch - 48) % 97 : (r * 100 + ch - 55) % 97;
  }
  return r === 1;
}

const scanIban: ScanFn = (text, _scan, out) => {
  if (text.length < 15) return;
  IBAN_RE.lastIndex = 0;
  for (let m = IBAN_RE.exec(text); m !== null; m = IBAN_RE.exec(text)) {
    const s = m.index;
    const raw = m[0];
    if (!boundaryBefore(text, s, true)) continue;
    const want = IBAN_LENGTHS[raw.slice(0, 2)];
    if (raw.charCodeAt(4) !== 32) {
      const e = s + raw.length;
      if (!boundaryAfter(text, e, true)) continue;
      if (want !== undefined ? raw.length !== want : raw.length < 15 || raw.length > 34) continue;
      if (ibanValid(raw)) out.push({ start: s, end: e, detector: "iban" });
      continue;
    }
    // spaced: a candidate ends at a group end; the regex may have taken a trailing word ("… 00 EUR")
    const ends: number[] = [];
    let compact = raw.slice(0, 4);
    const lens: number[] = [];
    for (let k = 5; k <= raw.length; ) {
      const g = raw.indexOf(" ", k);
      const ge = g === -1 ? raw.length : g;
      compact += raw.slice(k, ge);
      ends.push(ge);
      lens.push(compact.length);
      k = ge + 1;
    }
    for (let x = ends.length - 1; x >= 0; x--) {
      const len = lens[x]!;
      const e = s + ends[x]!;
      if (want !== undefined ? len !== want : len < 15 || len > 34) continue;
      if (x === ends.length - 1 && !boundaryAfter(text, e, true)) continue;
      if (ibanValid(compact.slice(0, len))) {
        out.push({ start: s, end: e, detector: "iban" });
        break;
      }
    }
  }
};

// ---------------------------------------------------------------------------
// ssn

/**
 * 123-45-6789 stands alone (found by its "-45-6789", led by a literal the
 * regex engine finds fast; the area is read backwards); "123 45 6789" and
 * "123456789" only after a keyword (SSN_KEYWORD) within 48 characters.
 */
const SSN_DASH = /-\d{2}-\d{4}/g;
const SSN_OTHER = /\d{3}( ?)\d{2}\1\d{4}/g;
const SSN_KEYWORD = /(?:ssn|social[ _-]?security)/iy;

function ssnValid(text: string, s: number, sep: boolean): boolean {
  const area = +text.slice(s, s + 3);
  const group = +text.slice(s + (sep ? 4 : 3), s + (sep ? 6 : 5));
  const serial = +text.slice(s + (sep ? 7 : 5), s + (sep ? 11 : 9));
  return area !== 0 && area !== 666 && area < 900 && group !== 0 && serial !== 0;
}

/** Not glued to a longer number: "+", or "-", "." or "/" with a digit beyond, on either side (`s` < 0: the end only). */
function numberAlone(text: string, s: number, e: number): boolean {
  if ((s >= 0 && !boundaryBefore(text, s, false)) || !boundaryAfter(text, e, false)) return false;
  if (s >= 1) {
    const p = text.charCodeAt(s - 1);
    if (p === 43) return false;
    if ((p === 45 || p === 46 || p === 47) && s >= 2 && isDigit(text.charCodeAt(s - 2))) return false;
  }
  if (e + 1 < text.length) {
    const n = text.charCodeAt(e);
    if ((n === 45 || n === 46 || n === 47) && isDigit(text.charCodeAt(e + 1))) return false;
  }
  return true;
}

/** The keyword hits that really are SSN keywords (not "social media"). */
function ssnKeywords(text: string, hits: number[]): number[] {
  const real: number[] = [];
  for (const h of hits) {
    if (h > 0 && isAlpha(text.charCodeAt(h - 1)) && !endsEscape(text, h - 1)) continue;
    SSN_KEYWORD.lastIndex = h;
    if (SSN_KEYWORD.test(text)) real.push(h);
  }
  return real;
}

const scanSsn: ScanFn = (text, scan, out) => {
  if (text.length < 9) return;
  const base = out.length;
  if (text.length >= 11) {
    SSN_DASH.lastIndex = 0;
    for (let m = SSN_DASH.exec(text); m !== null; m = SSN_DASH.exec(text)) {
      const s = m.index - 3;
      if (s < 0 || !isDigit(text.charCodeAt(s)) || !isDigit(text.charCodeAt(s + 1)) || !isDigit(text.charCodeAt(s + 2))) continue;
      if (numberAlone(text, s, s + 11) && ssnValid(text, s, true)) out.push({ start: s, end: s + 11, detector: "ssn" });
    }
  }
  if (!scan.keywordsDone && !DIGITS9.test(text)) return;
  const hits = scan.keywords().ssn;
  if (hits.length === 0 || !DIGITS9.test(text)) return;
  const kws = ssnKeywords(text, hits);
  if (kws.length === 0) return;
  let k = 0;
  SSN_OTHER.lastIndex = kws[0]!;
  for (let m = SSN_OTHER.exec(text); m !== null; m = SSN_OTHER.exec(text)) {
    const s = m.index;
    const e = s + m[0].length;
    if (!numberAlone(text, s, e)) {
      SSN_OTHER.lastIndex = s + 1;
      continue;
    }
    while (k < kws.length && kws[k]! < s - 48) k++;
    if (k >= kws.length || kws[k]! >= s) continue;
    if (ssnValid(text, s, m[1] === " ")) out.push({ start: s, end: e, detector: "ssn" });
  }
  normalizeInPlace(out, base);
};

// ---------------------------------------------------------------------------
// phone

/** "+" and a country code: E.164 written with optional single separators and one parenthesised group. */
const PHONE_INTL = /\+[1-9]/g;
/**
 * North American forms: (555) 123-4567, 555-123-4567, 555.123.4567. All
 * spaces ("555 123 4567") only after a keyword: too many other numbers
 * look like that.
 */
const PHONE_NANP = /[-.)] ?\d{3}[ .-]\d{4}/g; // led by the separator after the area code; the area is read backwards
/**
 * Any other national form only after a keyword: "tel: 020 7946 0958", "phone_number": "0301234567". The
 * quotes around the keyword and the number may be any quote run (\"mobile\": \"…\", \\""mobile\\"": \\""…,
 * """"mobile"""": …); from the keyword to the end of the number is at most PHONE_KEYWORD_MAX characters
 * (the detector's maxLength).
 */
const PHONE_KEYWORD =
  /(?:telephone|phone|mobile|tel)(?:[ _.-]?(?:no|number|num|nr))?\.?[\\"']{0,16}[ \t]{0,3}[:=#]?[ \t]{0,3}[\\"']{0,16}(\+?\(?\d[\d ().-]{5,24}\d)/iy;
const PHONE_KEYWORD_MAX = 64;

const DATE_LIKE = /^\d{4}[-./]\d{1,2}[-./]\d{1,2}/;
const IPV4_LIKE = /^\d{1,3}(?:\.\d{1,3}){3}$/;

function phoneIntl(text: string, s: number, out: Match[]): number {
  if (!boundaryBefore(text, s, false)) return s + 1;
  if (s >= 1 && text.charCodeAt(s - 1) === 43) return s + 1;
  const lim = Math.min(text.length, s + 40);
  let digits = 0;
  let end = -1;
  let lastSep = false;
  let paren = 0; // 0 none yet, 1 open, 2 closed
  let parenDigits = 0;
  let trunk = 0;
  let beforeParen = -1;
  let digitsBeforeParen = 0;
  const cutEnd: number[] = [];
  const cutDigits: number[] = [];
  let k = s + 1;
  for (; k < lim; k++) {
    const c = text.charCodeAt(k);
    if (isDigit(c)) {
      digits++;
      end = k + 1;
      lastSep = false;
      if (paren === 1) parenDigits++;
    } else if (c === 32 || c === 45 || c === 46) {
      if (lastSep || paren === 1) break;
      if (c === 32) {
        cutEnd.push(end);
        cutDigits.push(digits);
      }
      lastSep = true;
    } else if (c === 40 && paren === 0) {
      paren = 1;
      beforeParen = end;
      digitsBeforeParen = digits;
      lastSep = true;
    } else if (c === 41 && paren === 1 && !lastSep) {
      if (parenDigits < 1 || parenDigits > 4) break;
      if (parenDigits === 1 && text.charCodeAt(k - 1) === 48) trunk = 1;
      paren = 2;
      lastSep = false;
    } else break;
  }
  if (paren === 1) {
    end = beforeParen;
    digits = digitsBeforeParen;
  }
  if (end < 0) return s + 1;
  if (digits - trunk > 15) {
    // ran on into the next number ("+1 555 123 4567 2024"): stop at the last space-separated group that fits
    let x = cutEnd.length - 1;
    while (x >= 0 && (cutDigits[x]! - trunk > 15 || cutEnd[x]! > end)) x--;
    if (x < 0) return end;
    end = cutEnd[x]!;
    digits = cutDigits[x]!;
  } else if (!boundaryAfter(text, end, false) || dottedAfter(text, end)) return end;
  if (digits - trunk < 8) return end;
  out.push({ start: s, end, detector: "phone" });
  return end;
}

const scanPhone: ScanFn = (text, scan, out) => {
  if (text.length < 8) return;
  const base = out.length;
  if (text.indexOf("+") !== -1) {
    PHONE_INTL.lastIndex = 0;
    for (let m = PHONE_INTL.exec(text); m !== null; m = PHONE_INTL.exec(text)) {
      PHONE_INTL.lastIndex = Math.max(m.index + 1, phoneIntl(text, m.index, out));
    }
  }
  if (text.length >= 12) {
    PHONE_NANP.lastIndex = 0;
    for (let m = PHONE_NANP.exec(text); m !== null; m = PHONE_NANP.exec(text)) {
      const k = m.index;
      const sep1 = text.charCodeAt(k);
      const paren = sep1 === 41;
      let s = paren ? k - 4 : k - 3;
      if (s < 0 || (paren && text.charCodeAt(s) !== 40)) continue;
      const a = paren ? s + 1 : s;
      if (!isDigit(text.charCodeAt(a)) || !isDigit(text.charCodeAt(a + 1)) || !isDigit(text.charCodeAt(a + 2))) continue;
      if (text.charCodeAt(a) < 50) continue; // area codes start with 2–9
      const sp = text.charCodeAt(k + 1) === 32;
      if (sp && !paren) continue;
      const sep2 = text.charCodeAt(k + (sp ? 5 : 4));
      if (!paren && sep2 !== sep1) continue;
      const e = k + m[0].length;
      // a leading "1-" / "1 " / "1." country code belongs to the number
      if (s >= 2) {
        const p = text.charCodeAt(s - 1);
        if ((p === 32 || p === 45 || p === 46) && text.charCodeAt(s - 2) === 49 && boundaryBefore(text, s - 2, false)) {
          const pp = s >= 3 ? text.charCodeAt(s - 3) : 32;
          if (pp !== 43 && pp !== 45 && pp !== 46 && pp !== 47) s -= 2;
        }
      }
      if (paren ? !boundaryBefore(text, s, false) || !numberAlone(text, -1, e) : !numberAlone(text, s, e)) continue;
      out.push({ start: s, end: e, detector: "phone" });
    }
  }
  // the keyword form needs a keyword and seven digits: look at whichever is already known first
  let phoneHits = NO_HITS.phone;
  if (scan.keywordsDone) {
    phoneHits = scan.keywords().phone;
    if (phoneHits.length > 0 && !DIGITS7.test(text)) phoneHits = NO_HITS.phone;
  } else if (DIGITS7.test(text)) phoneHits = scan.keywords().phone;
  for (const h of phoneHits) {
    if (h > 0 && isAlpha(text.charCodeAt(h - 1)) && !endsEscape(text, h - 1)) continue;
    PHONE_KEYWORD.lastIndex = h;
    const m = PHONE_KEYWORD.exec(text);
    if (m === null) continue;
    const num = m[1]!;
    if (m[0].length > PHONE_KEYWORD_MAX) continue;
    const e = h + m[0].length;
    const s = e - num.length;
    let digits = 0;
    for (let i = 0; i < num.length; i++) if (isDigit(num.charCodeAt(i))) digits++;
    if (digits < 7 || digits > 15) continue;
    if (DATE_LIKE.test(num) || IPV4_LIKE.test(num)) continue;
    if (!boundaryAfter(text, e, false) || dottedAfter(text, e)) continue;
    out.push({ start: s, end: e, detector: "phone" });
  }
  normalizeInPlace(out, base);
};

// ---------------------------------------------------------------------------
// ipv4 / ipv6

/** The last three octets, led by a literal "." (which the regex engine finds fast); the first is read backwards. */
const IPV4_TAIL = /\.\d{1,3}\.\d{1,3}\.\d{1,3}/g;
/** Four dotted numbers right after "version"/"v"/"build" or "Product/" are a version, not an address. */
const VERSION_BEFORE = /(?:\bv|\bver|version|release|build|\brev)[ \t]*[:=]?[ \t]*$/i;

function octetsOk(text: string, s: number, e: number): boolean {
  let v = 0;
  let len = 0;
  for (let i = s; i <= e; i++) {
    const c = i < e ? text.charCodeAt(i) : 46;
    if (c === 46) {
      if (v > 255 || (len > 1 && text.charCodeAt(i - len) === 48)) return false;
      v = 0;
      len = 0;
    } else {
      v = v * 10 + c - 48;
      len++;
    }
  }
  return true;
}

/** Skip the rest of a dotted number so "1.2.3.4.5" yields nothing. */
function skipDotted(text: string, i: number): number {
  while (i < text.length && (isDigit(text.charCodeAt(i)) || text.charCodeAt(i) === 46)) i++;
  return i;
}

const scanIpv4: ScanFn = (text, _scan, out) => {
  if (text.length < 7) return;
  IPV4_TAIL.lastIndex = 0;
  for (let m = IPV4_TAIL.exec(text); m !== null; m = IPV4_TAIL.exec(text)) {
    const dot = m.index;
    let s = dot;
    while (s > 0 && dot - s < 4 && isDigit(text.charCodeAt(s - 1))) s--;
    const e = dot + m[0].length;
    if (s === dot || dot - s > 3 || !boundaryBefore(text, s, true) || dottedBefore(text, s) || !boundaryAfter(text, e, true) || dottedAfter(text, e)) {
      IPV4_TAIL.lastIndex = skipDotted(text, e);
      continue;
    }
    if (!octetsOk(text, s, e)) continue;
    if (s >= 2 && text.charCodeAt(s - 1) === 47 && isAlpha(text.charCodeAt(s - 2))) continue; // Chrome/120.0.0.0
    if (VERSION_BEFORE.test(text.slice(Math.max(0, s - 12), s))) continue;
    out.push({ start: s, end: e, detector: "ipv4" });
  }
};

function isV6Char(c: number): boolean {
  return isHex(c) || c === 58 || c === 46;
}

function ipv6Candidate(text: string, a: number, b: number, out: Match[]): void {
  while (a < b && text.charCodeAt(a) === 46) a++;
  while (b > a && text.charCodeAt(b - 1) === 46) b--;
  // a single trailing ":" is punctuation ("at fe80::1: …"), "::" is part of the address
  if (b - a > 2 && text.charCodeAt(b - 1) === 58 && text.charCodeAt(b - 2) !== 58) b--;
  let colons = 0;
  let dbl = false;
  let digit = false;
  for (let i = a; i < b; i++) {
    const c = text.charCodeAt(i);
    if (c === 58) {
      colons++;
      if (i + 1 < b && text.charCodeAt(i + 1) === 58) dbl = true;
    } else if (isDigit(c)) digit = true;
  }
  if (colons < 2 || (!dbl && colons < 6)) return;
  // hex-only words around "::" are code ("Abc::Def"): want a digit or a longer address
  if (!digit && colons < 4) return;
  if (!boundaryBefore(text, a, true) || !boundaryAfter(text, b, true)) return;
  if (!isIPv6(text.slice(a, b))) return;
  out.push({ start: a, end: b, detector: "ipv6" });
}

/** An address has "::" or all eight groups; either way this or "::" is in it. */
const IPV6_PRE = /:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:/;

const scanIpv6: ScanFn = (text, _scan, out) => {
  let p = text.indexOf(":");
  if (p === -1 || (text.indexOf("::", p) === -1 && !IPV6_PRE.test(text))) return;
  const n = text.length;
  while (p !== -1) {
    let a = p;
    while (a > 0 && p - a < 45 && isV6Char(text.charCodeAt(a - 1))) a--;
    let b = p + 1;
    while (b < n && b - a < 46 && isV6Char(text.charCodeAt(b))) b++;
    if (b - a >= 3) ipv6Candidate(text, a, b, out);
    p = text.indexOf(":", b);
  }
};

// ---------------------------------------------------------------------------
// cloud and service tokens

const AWS_ACCESS_RE = /A(?:KIA|SIA|GPA|IDA|ROA|NPA|NVA|IPA)[A-Z2-7]{16}/g;

/** Push every match of `re` that stands alone (not inside a longer word). */
function tokens(re: RegExp, detector: string, underscore: boolean): ScanFn {
  return (text, _scan, out) => {
    re.lastIndex = 0;
    for (let m = re.exec(text); m !== null; m = re.exec(text)) {
      const s = m.index;
      const e = s + m[0].length;
      if (boundaryBefore(text, s, underscore) && boundaryAfter(text, e, underscore)) out.push({ start: s, end: e, detector });
    }
  };
}

const scanAwsAccessBody = tokens(AWS_ACCESS_RE, "aws_access_key", true);
const scanAwsAccess: ScanFn = (text, scan, out) => {
  if (scan.triggers() & T_AWS) scanAwsAccessBody(text, scan, out);
};

/**
 * "secret" (aws_secret_access_key, SecretAccessKey, --aws-secret-key, secret: …; found by KEYWORDS) then, on the
 * same line within 64 characters, exactly 40 base64 characters; or, with no keyword, a bare 40 that reads as random.
 */
const AWS_SECRET_VAL = /[^\n]{0,64}?(?:(?<![A-Za-z0-9/+])|(?<=\x1b\[[0-9;]{0,16}m))([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])/y;

function awsSecretShape(v: string): boolean {
  let upper = false;
  let lower = false;
  let other = false;
  let hexOnly = true;
  for (let i = 0; i < v.length; i++) {
    const c = v.charCodeAt(i);
    if (isUpper(c)) upper = true;
    else if (isLower(c)) lower = true;
    else other = true;
    if (!isHex(c)) hexOnly = false;
  }
  return upper && lower && other && !hexOnly;
}

const scanAwsSecret: ScanFn = (text, scan, out) => {
  if (text.length < 40) return;
  const keyed: Match[] = [];
  if (text.length >= 46 && (scan.keywordsDone || SECRET_WORD.test(text))) {
    let done = 0;
    for (const h of scan.keywords().secret) {
      if (h < done) continue;
      AWS_SECRET_VAL.lastIndex = h + 6;
      const v = AWS_SECRET_VAL.exec(text);
      if (v === null || !awsSecretShape(v[1]!)) continue;
      done = AWS_SECRET_VAL.lastIndex;
      keyed.push({ start: done - 40, end: done, detector: "aws_secret_key" });
    }
  }
  // A bare key, no keyword near: a run of exactly 40 that reads as random (bareAwsSecret). A keyed match is such a run too.
  let k = 0;
  AWS_BARE_RUN.lastIndex = 0;
  for (let m = AWS_BARE_RUN.exec(text); m !== null; m = AWS_BARE_RUN.exec(text)) {
    const s = m.index;
    while (k < keyed.length && keyed[k]!.end <= s) out.push(keyed[k++]!);
    if (k < keyed.length && keyed[k]!.start < s + m[0].length) continue;
    // A longer run may be an escape's last letters and the key: "\nKEY" (COPY text, JSON), "ESC[1;31mKEY" (a terminal colour).
    const a = s + m[0].length - 40;
    if (a > s ? !endsEscape(text, a - 1) : !bareEdge(text.charCodeAt(s - 1), false)) continue;
    if (!bareEdge(text.charCodeAt(a + 40), true) || !bareAwsSecret(a > s ? m[0].slice(a - s) : m[0])) continue;
    out.push({ start: a, end: a + 40, detector: "aws_secret_key" });
  }
  while (k < keyed.length) out.push(keyed[k++]!);
};

/** Maximal runs of the characters of an AWS secret key (base64 without padding). */
const AWS_BARE_RUN = /[A-Za-z0-9/+]{40,}/g;

/** What may stand next to a bare key: not a character that continues a token (base64url, a path, a name, padding after it); NaN is the text's edge. */
function bareEdge(c: number, after: boolean): boolean {
  return !(c === 95 || c === 45 || c === 46 || c === 126 || c === 37 || (after && c === 61));
}

/**
 * 40 characters that read as a random key: upper, lower and another class
 * (awsSecretShape), at least 4.2 bits of entropy per character (random keys
 * fall below that about once in 10^4), not mostly words (camel-case
 * identifiers, paths: runs of letters with a vowel covering 3/4 of it, which
 * random keys reach about once in 10^4), not base64 of printable text, and
 * not one of AWS's documentation examples (…EXAMPLE…).
 */
function bareAwsSecret(v: string): boolean {
  if (!awsSecretShape(v) || v.includes("EXAMPLE")) return false;
  const freq = FREQ.fill(0);
  for (let i = 0; i < 40; i++) freq[v.charCodeAt(i)]!++;
  let bits = 0;
  for (let c = 0; c < 128; c++) if (freq[c]! > 0) bits -= (freq[c]! / 40) * Math.log2(freq[c]! / 40);
  if (bits < 4.2 || wordCover(v) >= 30) return false;
  const bytes = Buffer.from(v, "base64");
  for (let i = 0; i < bytes.length; i++) {
    const c = bytes[i]!;
    if ((c < 0x20 && c !== 0x09 && c !== 0x0a && c !== 0x0d) || c > 0x7e) return true;
  }
  return false;
}
const FREQ = new Uint8Array(128);

/** Characters of `v` in word-like runs that hold a vowel: "Word" or "word" (3+ lower letters, one capital before), or 2+ capitals not starting a word. */
function wordCover(v: string): number {
  let cover = 0;
  let i = 0;
  const n = v.length;
  while (i < n) {
    const c = v.charCodeAt(i);
    if (!isAlpha(c)) {
      i++;
      continue;
    }
    let j = i;
    let vowel = false;
    if (isUpper(c)) {
      // capitals: a run of them (an acronym), or one before lower letters (a capitalised word)
      while (j < n && isUpper(v.charCodeAt(j))) vowel = isVowel(v.charCodeAt(j++)) || vowel;
      if (j < n && isLower(v.charCodeAt(j))) {
        if (j - i >= 3) {
          // the last capital starts the next word: the acronym ends before it
          if (vowelIn(v, i, j - 1)) cover += j - 1 - i;
        }
        i = j - 1;
      } else {
        if (j - i >= 2 && vowel) cover += j - i;
        i = j;
      }
      if (i === j) continue;
    }
    // an optional capital at i, then lower letters
    let k = isUpper(v.charCodeAt(i)) ? i + 1 : i;
    const lowStart = k;
    while (k < n && isLower(v.charCodeAt(k))) k++;
    if (k - lowStart >= 3 && vowelIn(v, i, k)) cover += k - i;
    i = k > i ? k : i + 1;
  }
  return cover;
}
function isVowel(c: number): boolean {
  const l = c | 32;
  return l === 97 || l === 101 || l === 105 || l === 111 || l === 117 || l === 121;
}
function vowelIn(v: string, a: number, b: number): boolean {
  for (let i = a; i < b; i++) if (isVowel(v.charCodeAt(i))) return true;
  return false;
}

/** Classic (36) and fine-grained (github_pat_, 82) tokens; GitHub may lengthen them, so longer bodies are accepted. */
const GITHUB_RE = /gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{82,244}/g;
const scanGithubBody = tokens(GITHUB_RE, "github_token", true);
const scanGithub: ScanFn = (text, scan, out) => {
  if (scan.triggers() & T_GITHUB) scanGithubBody(text, scan, out);
};

/** Personal (glpat-, 20+), deploy, runner, trigger, feed, OAuth… tokens; newer routable tokens carry dotted suffixes. */
const GITLAB_RE = /gl(?:pat|dt|rt|ptt|ft|soat|oas|cbt|imt|agent|ffct)-[0-9A-Za-z_-]{20,255}(?:\.[0-9A-Za-z_-]{2,64}){0,2}/g;
const scanGitlabBody = tokens(GITLAB_RE, "gitlab_token", true);
const scanGitlab: ScanFn = (text, scan, out) => {
  if (scan.triggers() & T_GITLAB) scanGitlabBody(text, scan, out);
};

/** Bot, user, app, refresh and config tokens, and incoming-webhook / workflow URLs. */
const SLACK_RE =
  /xox(?:[abposer]|e\.xox[bp])-[0-9A-Za-z-]{10,250}|xapp-\d-[0-9A-Za-z-]{10,250}|(?:https?:\/\/)?hooks\.slack\.com\/(?:services|workflows|triggers)\/[A-Za-z0-9_/-]{16,250}/g;
const scanSlackBody = tokens(SLACK_RE, "slack_token", true);
const scanSlack: ScanFn = (text, scan, out) => {
  if (scan.triggers() & T_SLACK) scanSlackBody(text, scan, out);
};

// ---------------------------------------------------------------------------
// jwt

/**
 * header.payload.signature (and JWE's five parts); the header must decode
 * to a JSON object with "alg". A header starts '{"' (eyJ) or '{ "' (eyA);
 * pretty-printed headers ('{' + newline) are not looked for.
 */
const JWT_START = /ey[JA]/g;

function isB64url(c: number): boolean {
  return isAlnum(c) || c === 45 || c === 95;
}
/** The end of the base64url run at `i`, looking at most `max` + 1 characters (so a longer run shows as longer than `max`). */
function b64urlRun(text: string, i: number, max: number): number {
  const lim = Math.min(text.length, i + max + 1);
  while (i < lim && isB64url(text.charCodeAt(i))) i++;
  return i;
}

function jwtHeaderOk(seg: string): boolean {
  try {
    const h: unknown = JSON.parse(Buffer.from(seg, "base64url").toString("utf8"));
    return typeof h === "object" && h !== null && typeof (h as { alg?: unknown }).alg === "string";
  } catch {
    return false;
  }
}

/** The longest JWT looked for (stream maskers hold back maxLength; 16 KiB is their window cap). */
const JWT_MAX = 16384;

/**
 * The JWT starting at `s`, or -1: segments are scanned once each (no regex
 * backtracking over long runs). Header ≤ 2048, payload ≤ 12288, signature
 * ≤ 2040 characters; a JWE's two further parts only while the whole stays
 * within JWT_MAX.
 */
function jwtAt(text: string, s: number): number {
  const h = b64urlRun(text, s, 2048);
  if (h - s < 9 || h - s > 2048 || text.charCodeAt(h) !== 46) return -1;
  const p = b64urlRun(text, h + 1, 12288);
  if (p - h - 1 < 2 || p - h - 1 > 12288 || text.charCodeAt(p) !== 46) return -1;
  const g = b64urlRun(text, p + 1, 2040);
  if (g - p - 1 > 2040) return -1;
  let end = g;
  // JWE: header.key.iv.ciphertext.tag
  if (text.charCodeAt(g) === 46) {
    const a = b64urlRun(text, g + 1, JWT_MAX);
    if (text.charCodeAt(a) === 46) {
      const b = b64urlRun(text, a + 1, JWT_MAX);
      if (b > a + 1 && b - s <= JWT_MAX) end = b;
    }
  }
  if (!boundaryAfter(text, end, true)) return -1;
  return jwtHeaderOk(text.slice(s, h)) ? end : -1;
}

const scanJwt: ScanFn = (text, scan, out) => {
  if (!(scan.triggers() & T_JWT)) return;
  JWT_START.lastIndex = 0;
  for (let m = JWT_START.exec(text); m !== null; m = JWT_START.exec(text)) {
    const s = m.index;
    const end = boundaryBefore(text, s, true) ? jwtAt(text, s) : -1;
    if (end > 0) {
      out.push({ start: s, end, detector: "jwt" });
      JWT_START.lastIndex = end;
    } else JWT_START.lastIndex = b64urlRun(text, s, JWT_MAX); // nothing starts inside this run
  }
};

// ---------------------------------------------------------------------------
// pem_private_key

const PEM_MAX = 16384;
const PEM_LABEL = /^[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?$/;

function isPemBodyChar(c: number): boolean {
  // base64, whitespace, written-out "\n", and the "Proc-Type: 4,ENCRYPTED" / "DEK-Info: AES-…,IV" headers
  return isAlnum(c) || c === 43 || c === 47 || c === 61 || isSpace(c) || c === 92 || c === 58 || c === 44 || c === 45;
}

const scanPem: ScanFn = (text, scan, out) => {
  if (!(scan.triggers() & T_PEM)) return;
  let b = text.indexOf("-----BEGIN ");
  let nextEnd = -2; // the next "-----END " at or after the current key's header (-1: none left); kept, so many BEGINs cost one search
  while (b !== -1) {
    const hdrEnd = text.indexOf("-----", b + 11);
    if (hdrEnd === -1 || hdrEnd - b > 80 || !PEM_LABEL.test(text.slice(b + 11, hdrEnd))) {
      b = text.indexOf("-----BEGIN ", b + 11);
      continue;
    }
    const limit = Math.min(text.length, b + PEM_MAX);
    let end = -1;
    if (nextEnd === -2 || (nextEnd !== -1 && nextEnd < hdrEnd + 5)) nextEnd = text.indexOf("-----END ", hdrEnd + 5);
    let f = nextEnd;
    while (f !== -1 && f < limit) {
      const close = text.indexOf("-----", f + 9);
      if (close !== -1 && close + 5 <= limit && close - f < 80 && PEM_LABEL.test(text.slice(f + 9, close))) {
        end = close + 5;
        break;
      }
      f = text.indexOf("-----END ", f + 9);
      nextEnd = f;
    }
    if (end < 0) {
      // unterminated (cut off, or longer than PEM_MAX): everything that still looks like the key's body
      end = hdrEnd + 5;
      while (end < limit && isPemBodyChar(text.charCodeAt(end))) {
        if (text.startsWith("-----", end)) break;
        end++;
      }
      while (end > hdrEnd + 5 && isSpace(text.charCodeAt(end - 1))) end--;
    }
    out.push({ start: b, end, detector: "pem_private_key" });
    b = text.indexOf("-----BEGIN ", end);
  }
};

// ---------------------------------------------------------------------------
// url_password

/** What styles.ts writes ("[REDACTED:url_password]", "[url_password:0123…]", "****word"): masking twice must not count twice. */
const OWN_MASK = /^\[(?:REDACTED:[a-z0-9_]+|[a-z0-9_]+:[0-9a-f]{16})\]$/;
function isOwnMask(v: string): boolean {
  return OWN_MASK.test(v) || v.includes("***");
}

function isSchemeChar(c: number): boolean {
  return isAlnum(c) || c === 43 || c === 45 || c === 46;
}

/** Where the authority of a URL stops: "/", "?", "#", whitespace, quotes, brackets of markup, a backslash (escaped JSON). */
function endsAuthority(c: number): boolean {
  return c <= 32 || c === 47 || c === 63 || c === 35 || c === 34 || c === 39 || c === 60 || c === 62 || c === 96 || c === 92 || c === 127;
}

function urlPasswords(text: string, out: Match[]): void {
  let i = text.indexOf("://");
  while (i !== -1) {
    let s = i;
    while (s > 0 && i - s < 32 && isSchemeChar(text.charCodeAt(s - 1))) s--;
    s = skipEscapePrefix(text, s, i);
    let e = i + 3;
    if (s < i && isAlpha(text.charCodeAt(s))) {
      const lim = Math.min(text.length, i + 3 + 512);
      let at = -1;
      while (e < lim && !endsAuthority(text.charCodeAt(e))) {
        if (text.charCodeAt(e) === 64) at = e;
        e++;
      }
      if (at > i + 3 && at + 1 < e && (e < lim || e === text.length)) {
        const colon = text.indexOf(":", i + 3);
        if (colon !== -1 && colon + 1 < at && !isOwnMask(text.slice(colon + 1, at)))
          out.push({ start: colon + 1, end: at, detector: "url_password" });
      }
    }
    i = text.indexOf("://", Math.max(e, i + 3));
  }
}

/** libpq keyword/value strings: password=… is a password when another libpq keyword is on the same line. */
const LIBPQ_PW = /password[ \t]*=[ \t]*/g;
const LIBPQ_CONTEXT =
  /(?:^|[\s"'\\]|\\[nrt])(?:host|hostaddr|port|dbname|user|sslmode|sslrootcert|sslcert|sslkey|connect_timeout|application_name|service|options|target_session_attrs)[ \t]*=/;

/** Where a bare libpq value ends: whitespace, a double quote or backslash (of an enclosing string), a ' that closes one. */
function endsLibpqBare(text: string, i: number): boolean {
  const c = text.charCodeAt(i);
  if (c <= 32 || c === 34 || c === 92 || c === 127) return true;
  return c === 39 && (valueEndsAt(text, i + 1) || isQuoteRunChar(text.charCodeAt(i + 1)));
}

function libpqPasswords(text: string, out: Match[]): void {
  if (text.indexOf("password") === -1) return;
  LIBPQ_PW.lastIndex = 0;
  for (let m = LIBPQ_PW.exec(text); m !== null; m = LIBPQ_PW.exec(text)) {
    const s = m.index;
    if (s > 0) {
      const p = text.charCodeAt(s - 1);
      if (!(isSpace(p) || isQuoteRunChar(p) || (isAlpha(p) && endsEscape(text, s - 1)))) continue;
    }
    let ls = s;
    while (ls > 0 && s - ls < 300 && text.charCodeAt(ls - 1) !== 10) ls--;
    let le = s;
    while (le < text.length && le - s < 300 && text.charCodeAt(le) !== 10) le++;
    if (!LIBPQ_CONTEXT.test(text.slice(ls, s)) && !LIBPQ_CONTEXT.test(text.slice(s + 8, le))) continue;
    const v = s + m[0].length;
    // quoted: 'with space', and nested: ''with space'' in an SQL literal, \'…\' in an E'' string
    const q = quotedValue(text, v, text.slice(quoteRunBefore(text, s), s), "", Math.min(text.length, v + QUOTE_MAX + 1024));
    if (q === null) continue;
    let vs = v;
    let ve = v;
    if (q !== "bare") [vs, ve] = q;
    else {
      const lim = Math.min(text.length, v + 1024);
      while (ve < lim && !endsLibpqBare(text, ve)) ve++;
    }
    if (ve > vs && !isOwnMask(text.slice(vs, ve))) {
      out.push({ start: vs, end: ve, detector: "url_password" });
      LIBPQ_PW.lastIndex = ve;
    }
  }
}

const scanUrlPassword: ScanFn = (text, scan, out) => {
  const base = out.length;
  if (scan.triggers() & T_URL) urlPasswords(text, out);
  libpqPasswords(text, out);
  normalizeInPlace(out, base);
};

// ---------------------------------------------------------------------------
// kv_secret

const VALUE_MAX = 4096;

function isKeyChar(c: number): boolean {
  return isAlnum(c) || c === 95 || c === 45 || c === 46;
}

/** Words that qualify a trailing "key" as a secret: api_key, accessKey, private-key, … */
const KEY_QUALIFIERS = new Set([
  "api", "access", "secret", "private", "signing", "encryption", "enc", "master", "client", "app", "auth", "service",
  "account", "session", "hmac", "ssh", "gpg", "pgp", "license", "admin", "root", "consumer", "webhook", "subscription",
  "shared", "storage", "sas", "crypt", "cipher", "decryption", "jwt", "oauth", "bot",
]);
const SECRET_WORDS = new Set([
  "apikey", "accesskey", "secretkey", "privatekey", "credential", "credentials", "cred", "creds", "auth", "oauth",
  "authorization", "authkey", "sessionkey", "masterkey", "signingkey", "encryptionkey",
]);
/** A last word that says "a form of the thing before": password_confirmation, token_b64, client_secret_value. */
const WEAK_SUFFIX = new Set([
  "confirmation", "confirm", "hash", "value", "val", "b64", "base64", "enc", "encrypted", "raw", "str", "string",
  "text", "plain", "plaintext", "data", "old", "new", "current", "hex",
]);

const keyClasses = new Map<string, 0 | 1 | 2>();

/** 1: names a password, 2: names another secret, 0: neither (memoised: the same keys come by in every row). */
function keyClass(key: string): 0 | 1 | 2 {
  let c = keyClasses.get(key);
  if (c === undefined) {
    if (keyClasses.size >= 4096) keyClasses.clear();
    c = classifyKey(key);
    keyClasses.set(key, c);
  }
  return c;
}

function classifyKey(key: string): 0 | 1 | 2 {
  const words = key
    .replace(/([a-z0-9])([A-Z])/g, "$1 $2")
    .toLowerCase()
    .split(/[^a-z0-9]+/)
    .filter((w) => w.length > 0);
  let w = words.pop();
  if (w !== undefined && WEAK_SUFFIX.has(w) && words.length > 0) w = words.pop();
  if (w === undefined) return 0;
  if (w.endsWith("password") || w.endsWith("passwd") || w.endsWith("passphrase") || w === "pwd" || w === "pass" || w === "pw") return 1;
  if (w.endsWith("secret") || w.endsWith("token") || SECRET_WORDS.has(w)) return 2;
  if (w === "key") {
    const q = words[words.length - 1];
    if (q !== undefined && KEY_QUALIFIERS.has(q)) return 2;
  }
  return 0;
}

/** Values that are never the secret itself: booleans, empty-ish words, references, templates, our own masks. */
const KV_LITERALS = new Set([
  "true", "false", "null", "nil", "none", "undefined", "yes", "no", "on", "off", "enabled", "disabled", "required",
  "optional", "redacted", "hidden", "masked", "empty", "unset", "notset", "string", "boolean", "object", "number",
]);
const KV_PLACEHOLDER =
  /^(?:\$\{[^}]*\}?|\$\(?[A-Za-z_][A-Za-z0-9_]*\)?|\{\{.*\}\}|<[^>]*>|%\(?[A-Za-z_]*\)?s|\[(?:REDACTED:[a-z0-9_]+|[a-z0-9_]+:[0-9a-f]{16})\]?|(?:process\.env|os\.environ|ENV)\b.*)$/;

const OWN_HMAC = /^[a-z0-9_]+:[0-9a-f]{16}\]$/;

const entropyCounts = new Uint16Array(256);

/** Shannon entropy in bits per character (code units folded to 8 bits, which only lowers it for non-Latin text). */
function shannonEntropy(text: string, a = 0, b = text.length): number {
  const n = b - a;
  if (n <= 0) return 0;
  for (let i = a; i < b; i++) entropyCounts[text.charCodeAt(i) & 255]!++;
  let h = 0;
  for (let i = a; i < b; i++) {
    const k = text.charCodeAt(i) & 255;
    const c = entropyCounts[k]!;
    if (c === 0) continue;
    const p = c / n;
    h -= p * Math.log2(p);
    entropyCounts[k] = 0;
  }
  return h;
}

/**
 * Thresholds: a key naming a password (password, passwd, pwd, passphrase)
 * takes any value of ≥ 6 characters with ≥ 2.0 bits/char (a weak password
 * like "changeme" is still a password); any other secret name (token,
 * secret, api_key, auth, credential…) needs ≥ 8 characters and ≥ 3.0
 * bits/char, which random tokens clear (hex ≈ 3.5–4, base64 ≈ 4.5–5.5)
 * and words like "required", "anonymous" or "bearer" do not.
 */
function kvValueIsSecret(text: string, vs: number, ve: number, cls: 1 | 2): boolean {
  const len = ve - vs;
  if (len < (cls === 1 ? 6 : 8)) return false;
  const v = text.slice(vs, ve);
  const c0 = v.charCodeAt(0);
  // an object ("password": {"type": "string"}), a reference or template, or a mask we wrote
  if (c0 === 123 || KV_PLACEHOLDER.test(v)) return false;
  if (KV_LITERALS.has(v.toLowerCase()) || v.includes("***") || v.includes("•••")) return false;
  return shannonEntropy(text, vs, ve) >= (cls === 1 ? 2.0 : 3.0);
}

/** Characters that end an unquoted value. */
function endsBareValue(c: number): boolean {
  return (
    c <= 32 || c === 34 || c === 39 || c === 96 || c === 44 || c === 59 || c === 38 || c === 125 || c === 93 || c === 41 ||
    c === 60 || c === 62 || c === 92 || c === 127
  );
}

/**
 * The value at `p`: quoted (see quotedValue; `kl` and `kr` are the quote
 * runs before and after its key) or bare. [start, end), or null when there
 * is none (an unterminated quote, an empty string, the end of the key's
 * own string).
 */
function kvValue(text: string, p: number, kl: string, kr: string): [number, number] | null {
  const lim = Math.min(text.length, p + QUOTE_MAX + VALUE_MAX);
  const q = quotedValue(text, p, kl, kr, lim);
  if (q !== "bare") return q;
  const blim = Math.min(text.length, p + VALUE_MAX);
  let e = p;
  while (e < blim && !endsBareValue(text.charCodeAt(e))) e++;
  return [p, e];
}

/** "Bearer abc…", "Basic dXNl…", "Token abc…": the credential is the part after the scheme word. */
const AUTH_SCHEME = /^(?:bearer|basic|token|digest|negotiate|apikey)[ \t]+/i;

function kvAt(text: string, ks: number, ke: number, out: Match[]): number {
  // the key: strip leading/trailing punctuation, note a CLI flag ("--password value")
  while (ks < ke && (text.charCodeAt(ks) === 45 || text.charCodeAt(ks) === 46)) ks++;
  const cli = ks >= 2 && text.charCodeAt(ks - 1) === 45 && text.charCodeAt(ks - 2) === 45;
  while (ke > ks && (text.charCodeAt(ke - 1) === 45 || text.charCodeAt(ke - 1) === 46)) ke--;
  if (ke <= ks) return -1;
  // "[aws_access_key:3c1d…]" is an hmac mask we wrote, not a key and a value
  if (ks > 0 && text.charCodeAt(ks - 1) === 91 && OWN_HMAC.test(text.slice(ks, ke + 18))) return -1;
  const cls = keyClass(text.slice(ks, ke));
  if (cls === 0) return -1;
  const n = text.length;
  // the key's quotes, whatever nesting made of them: "password", \"password\" (JSON in a string), ""password"" (JSON
  // in CSV), \\""password\\"" (that in a record's text output)…; the closing one may be missing when the key is only the
  // start of a quoted string ("client_secret: abc…")
  const kl = text.slice(quoteRunBefore(text, ks), ks);
  let p = quoteRunAfter(text, ke);
  if (p < 0) return -1;
  if (!hasQuote(text, ke, p)) p = ke;
  const kr = text.slice(ke, p);
  let sp = 0;
  while (p < n && sp < 4 && (text.charCodeAt(p) === 32 || text.charCodeAt(p) === 9)) p++, sp++;
  const spacedKey = sp > 0;
  const c = text.charCodeAt(p);
  if (c === 61) {
    p++;
    if (text.charCodeAt(p) === 62) p++; // =>
  } else if (c === 58) {
    p++;
    if (text.charCodeAt(p) === 61) p++; // :=
  } else if (!(cli && sp === 1 && kr.length === 0)) return -1;
  sp = 0;
  while (p < n && sp < 4 && (text.charCodeAt(p) === 32 || text.charCodeAt(p) === 9)) p++, sp++;
  if (p >= n) return -1;
  // "password= next" (env, CLI, libpq): an empty value; "key = value" (TOML, INI) and quoted values may have spaces
  if (c === 61 && sp > 0 && !spacedKey) {
    const r = quoteRunAfter(text, p);
    if (!(text.charCodeAt(p) === 96 || (r > p && hasQuote(text, p, r)))) return -1;
  }
  const v = kvValue(text, p, kl, kr);
  if (v === null) return -1;
  let [vs, ve] = v;
  if (cli && c !== 61 && text.charCodeAt(vs) === 45) return -1; // "--password --next-flag": no value
  const head = AUTH_SCHEME.exec(text.slice(vs, Math.min(ve, vs + 16)));
  if (head !== null && vs + head[0].length < ve) vs += head[0].length;
  else if (head === null && /^(?:bearer|basic|token)$/i.test(text.slice(vs, ve)) && text.charCodeAt(ve) === 32) {
    const next = kvValue(text, ve + 1, "", "");
    if (next === null) return -1;
    [vs, ve] = next;
  }
  if (!kvValueIsSecret(text, vs, ve, cls)) return ve;
  out.push({ start: vs, end: ve, detector: "kv_secret" });
  return ve;
}

/** From each KEYWORDS hit (pass, pwd, secret, token, key, auth, cred), the whole identifier around it is classified. */
const scanKv: ScanFn = (text, scan, out) => {
  const n = text.length;
  // every form has "=", ":" or a "--flag"
  if (n < 8 || (text.indexOf("=") === -1 && text.indexOf(":") === -1 && text.indexOf("--") === -1)) return;
  let done = 0;
  for (const h of scan.keywords().kv) {
    if (h < done) continue;
    let ks = h;
    while (ks > 0 && h - ks < 64 && isKeyChar(text.charCodeAt(ks - 1))) ks--;
    let ke = h + 3;
    while (ke < n && ke - ks < 96 && isKeyChar(text.charCodeAt(ke))) ke++;
    ks = skipEscapePrefix(text, ks, ke);
    done = Math.max(ke, kvAt(text, ks, ke, out));
  }
};

// ---------------------------------------------------------------------------
// The registry

interface Impl extends Detector {
  /** Lower wins when two detectors claim the same span. */
  readonly priority: number;
  /** Append this detector's matches (sorted, not overlapping each other) to `out`. */
  scan(text: string, scan: Scan, out: Match[]): void;
}

const defs: Array<[name: string, maxLength: number, scan: ScanFn]> = [
  ["pem_private_key", PEM_MAX, scanPem],
  // header (≤ 2048) . payload (≤ 12288) . signature (≤ 2040); a JWE's five parts within the same total
  ["jwt", JWT_MAX, scanJwt],
  ["github_token", 256, scanGithub],
  ["gitlab_token", 400, scanGitlab],
  ["slack_token", 300, scanSlack],
  ["aws_access_key", 20, scanAwsAccess],
  // keyword + up to 64 characters + the 40-character value (a bare key: the 40 alone)
  ["aws_secret_key", 120, scanAwsSecret],
  // scheme (32) + "://" + authority (512); libpq: 300 characters of context either side of a 1 KiB value
  ["url_password", 1700, scanUrlPassword],
  ["iban", 42, scanIban],
  ["card", 37, scanCard],
  // "ssn" keyword up to 48 characters before a bare number
  ["ssn", 64, scanSsn],
  ["email", 320, scanEmail],
  // keyword form: keyword, quotes, separator and number within PHONE_KEYWORD_MAX
  ["phone", PHONE_KEYWORD_MAX, scanPhone],
  ["ipv6", 45, scanIpv6],
  // "version " before an address is context
  ["ipv4", 32, scanIpv4],
  // quotes (≤ 16) + key (≤ 96) + quotes (≤ 16) and separator + quotes (≤ 16) + value (≤ 4096) + quotes (≤ 16)
  ["kv_secret", 4288, scanKv],
];

const IMPLS: Record<string, Impl> = Object.create(null) as Record<string, Impl>;
defs.forEach(([name, maxLength, fn], priority) => {
  const impl: Impl = {
    name,
    maxLength,
    priority,
    scan: fn,
    find(text: string): Match[] {
      const out: Match[] = [];
      if (text.length > 0) {
        const subject = narrow(text);
        fn(subject, new Scan(subject), out);
      }
      return out;
    },
  };
  IMPLS[name] = Object.freeze(impl);
});
Object.freeze(IMPLS);

/** Every detector by its policy name. */
export const DETECTORS: Record<string, Detector> = IMPLS;
/** The detectors of secrets (credentials, keys, tokens), as opposed to personal data: the default policy's set (policies/agate/mask.rego). */
export const SECRET_DETECTORS: readonly string[] = Object.freeze(["aws_access_key", "aws_secret_key", "github_token", "gitlab_token", "slack_token", "jwt", "pem_private_key", "url_password", "kv_secret"]);

/** Every detector name, most specific first (the order ties between overlapping matches are broken in). */
export const ALL_DETECTORS: string[] = Object.freeze(defs.map(([name]) => name)) as string[];

function unknownDetector(name: string): AgateError {
  return new AgateError(
    "MASK_UNKNOWN_DETECTOR",
    `unknown mask detector ${JSON.stringify(name)}; known detectors: ${ALL_DETECTORS.join(", ")}`,
    { detector: name, known: ALL_DETECTORS },
  );
}

/** The last names list resolved, and what it resolved to (callers pass the same list for every row). */
let lastNames: readonly string[] | null = null;
let lastCopy: string[] = [];
let lastImpls: Impl[] = [];

/** Frozen lists (a compiled mask's) resolved once each. */
const frozenLists = new WeakMap<readonly string[], Impl[]>();

/** The named detectors, each once, in the order given. */
function resolve(names: readonly string[]): Impl[] {
  const known = frozenLists.get(names);
  if (known !== undefined) return known;
  if (Object.isFrozen(names)) {
    const impls = resolveNames(names);
    frozenLists.set(names, impls);
    return impls;
  }
  if (names === lastNames && names.length === lastCopy.length) {
    let same = true;
    for (let i = 0; i < names.length; i++) if (names[i] !== lastCopy[i]) same = false;
    if (same) return lastImpls;
  }
  const impls = resolveNames(names);
  lastNames = names;
  lastCopy = names.slice();
  lastImpls = impls;
  return impls;
}

function resolveNames(names: readonly string[]): Impl[] {
  const impls: Impl[] = [];
  let seen = 0;
  for (let i = 0; i < names.length; i++) {
    const name = names[i]!;
    const impl = Object.hasOwn(IMPLS, name) ? IMPLS[name] : undefined;
    if (impl === undefined) throw unknownDetector(name);
    const bit = 1 << impl.priority;
    if (seen & bit) continue;
    seen |= bit;
    impls.push(impl);
  }
  // kv_secret first: it needs the keyword pass for most text anyway, and phone and ssn can then read it for free
  return impls.sort((a, b) => (a.name === "kv_secret" ? -1 : 0) - (b.name === "kv_secret" ? -1 : 0) || a.priority - b.priority);
}

/** Check detector names up front (a policy decision's mask.detectors); throws MASK_UNKNOWN_DETECTOR. */
export function checkDetectors(names: readonly string[]): void {
  resolve(names);
}

/**
 * Every match of the named detectors, sorted and not overlapping. Where
 * matches overlap, the masked span is their union (so nothing any of them
 * found is left showing), attributed to the longest of them, ties going to
 * the more specific detector (ALL_DETECTORS order).
 */
export function findAll(text: string, names: readonly string[]): Match[] {
  const impls = resolve(names);
  if (text.length === 0 || impls.length === 0) return [];
  const subject = narrow(text);
  const scan = new Scan(subject);
  const all: Match[] = [];
  let sources = 0;
  for (let i = 0; i < impls.length; i++) {
    const before = all.length;
    impls[i]!.scan(subject, scan, all);
    if (all.length > before) sources++;
  }
  if (sources < 2) return all;
  const pri = (m: Match) => IMPLS[m.detector]!.priority;
  all.sort((a, b) => a.start - b.start || b.end - a.end || pri(a) - pri(b));
  const out: Match[] = [];
  let cur = all[0]!;
  let best = cur;
  for (let i = 1; i < all.length; i++) {
    const m = all[i]!;
    if (m.start < cur.end) {
      const ml = m.end - m.start;
      const bl = best.end - best.start;
      if (ml > bl || (ml === bl && pri(m) < pri(best))) best = m;
      if (m.end > cur.end) cur = { start: cur.start, end: m.end, detector: cur.detector };
      continue;
    }
    out.push(cur === best ? cur : { start: cur.start, end: cur.end, detector: best.detector });
    cur = m;
    best = m;
  }
  out.push(cur === best ? cur : { start: cur.start, end: cur.end, detector: best.detector });
  return out;
}
