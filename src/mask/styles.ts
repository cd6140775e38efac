/**
 * How a found value is replaced (MaskStyle in types.ts):
 *
 *   redact   [REDACTED:email]
 *   partial  the last `keep` characters stay, the rest become "*":
 *            "4111 1111 1111 1111" → "**** **** **** 1111". For personal
 *            data (email, card, iban, ssn, phone, ipv4, ipv6) separators and
 *            punctuation stay and only letters and digits count and are
 *            starred; for secrets (tokens, keys, passwords) every character
 *            but whitespace is starred, so a password's punctuation does not
 *            show through. A value shorter than keep + 4 is redacted whole.
 *   hmac     [email:<first 16 hex of HMAC-SHA-256(key, value)>]: the same
 *            value under the same key always gives the same text, so masked
 *            values can still be joined and counted; the value is hashed as
 *            found (UTF-8), not normalised.
 */
import { createHmac, createSecretKey, type KeyObject } from "node:crypto";
import type { MaskStyle } from "./types.ts";

/** Detectors whose values are personal data with meaningful separators. */
const PERSONAL = new Set(["email", "card", "iban", "ssn", "phone", "ipv4", "ipv6"]);

/** One KeyObject per key array (a deployment has one key; the bytes are not expected to change in place). */
const keys = new WeakMap<Uint8Array, KeyObject>();

function hmacHex16(key: Uint8Array, value: string): string {
  let k = keys.get(key);
  if (k === undefined) {
    // an empty key is a valid (if pointless) HMAC key, which createSecretKey refuses
    if (key.length === 0) return createHmac("sha256", Buffer.alloc(0)).update(value, "utf8").digest("hex").slice(0, 16);
    k = createSecretKey(key);
    keys.set(key, k);
  }
  return createHmac("sha256", k).update(value, "utf8").digest("hex").slice(0, 16);
}

const LETTER_OR_DIGIT = /[\p{L}\p{N}]/u;
const WHITESPACE = /\s/u;

function partial(value: string, detector: string, keep: number): string {
  const k = keptChars(keep);
  if (value.length < k + 4) return `[REDACTED:${detector}]`;
  const personal = PERSONAL.has(detector);
  if (ASCII.test(value)) return partialAscii(value, personal, k);
  const chars = Array.from(value);
  let kept = 0;
  for (let i = chars.length - 1; i >= 0; i--) {
    const ch = chars[i]!;
    const maskable = personal ? LETTER_OR_DIGIT.test(ch) : !WHITESPACE.test(ch);
    if (!maskable) continue;
    if (kept < k) kept++;
    else chars[i] = "*";
  }
  return chars.join("");
}

const ASCII = /^[\x00-\x7f]*$/;

/** partial() for ASCII text (most values), without the Unicode regexes: the same result. */
function partialAscii(value: string, personal: boolean, k: number): string {
  // everything maskable before `cut` is starred; the last k maskable characters are after it
  let cut = value.length;
  for (let kept = 0; cut > 0 && kept < k; ) {
    const c = value.charCodeAt(--cut);
    if (personal ? (c >= 48 && c <= 57) || ((c | 32) >= 97 && (c | 32) <= 122) : !(c === 32 || (c >= 9 && c <= 13))) kept++;
  }
  return value.slice(0, cut).replace(personal ? ASCII_ALNUM : ASCII_NON_SPACE, "*") + value.slice(cut);
}
const ASCII_ALNUM = /[0-9A-Za-z]/g;
const ASCII_NON_SPACE = /[^\t-\r ]/g;

/** The replacement for one found `value` of `detector`. */
export function maskValue(value: string, detector: string, style: MaskStyle): string {
  switch (style.kind) {
    case "redact":
      return `[REDACTED:${detector}]`;
    case "partial":
      return partial(value, detector, style.keep);
    case "hmac":
      return `[${detector}:${hmacHex16(style.key, value)}]`;
  }
}

/** Whether partial keeps `detector`'s separators and punctuation (personal data) or stars all but whitespace (secrets). */
export function isPersonal(detector: string): boolean {
  return PERSONAL.has(detector);
}

/** How many characters the partial style keeps for a rule's `keep`. */
export function keptChars(keep: number): number {
  return Number.isFinite(keep) && keep > 0 ? Math.floor(keep) : 0;
}

/**
 * The partial style on bytes [a, b) of `src`, written to `dst` at `o`: the
 * same characters starred as maskValue would star (`personal`: isPersonal
 * of the detector; `keep`: keptChars of the style's; the caller checks
 * there are at least keep + 4 bytes). Returns the offset after them, or -1
 * when a byte is not ASCII (what it wrote is then no value: use maskValue).
 */
export function starPartial(src: Uint8Array, a: number, b: number, dst: Uint8Array, o: number, personal: boolean, keep: number): number {
  const end = o + (b - a);
  let kept = 0;
  let bits = 0;
  for (let i = b - 1, j = end - 1; i >= a; i--, j--) {
    const c = src[i]!;
    bits |= c;
    const maskable = personal ? (c >= 48 && c <= 57) || ((c | 32) >= 97 && (c | 32) <= 122) : !(c === 32 || (c >= 9 && c <= 13));
    if (maskable && kept >= keep) dst[j] = 0x2a; // *
    else {
      if (maskable) kept++;
      dst[j] = c;
    }
  }
  return bits < 0x80 ? end : -1;
}
