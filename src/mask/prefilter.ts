/**
 * One pass over raw bytes that rules out most text before any detector
 * runs (a row's name, an id, a sentence of prose), and for the rest says
 * which detectors can possibly match, so only those run. It must never rule
 * out a detector that would find something: test/mask-prefilter.test.ts
 * checks findAll with the detectors it allows against findAll with all of
 * them, on every planted secret in every wrapping, the look-alikes and
 * random text near its edges.
 *
 * Every match of every detector holds at least one of its triggers:
 *
 *   AT      "@"               email; a URL's user:password@
 *   PUNCT   ":" or "="        ipv6, url_password (://, password=), kv_secret
 *                             (key=v, key: v), Slack webhook URLs
 *   DASHES  "--"              kv_secret's --flag form, PEM's -----BEGIN
 *   NUMBER  7+ digits, counted across the separators numbers are written
 *           with (space, "-", ".", "(", ")", "+", "/")
 *                             card (12+), ssn (9), phone (7+), an IBAN's
 *                             account number
 *   DOTTED  4+ digits and 3+ dots in one such number
 *                             ipv4
 *   IBAN    two capitals then two digits ("GB82")
 *                             an IBAN's country code and check digits
 *   RUN     16+ token characters [A-Za-z0-9_+/.~-] in a row
 *                             aws_access_key (20), github (40+), gitlab
 *                             (glpat- + 20), Slack tokens, jwt (its header
 *                             alone is longer), an IBAN written without
 *                             spaces
 *   LONG_RUN  40+ of them     aws_secret_key (its 40 characters, keyword
 *                             or not)
 *
 * Bytes beyond ASCII count as none of these (no detector reads a digit or a
 * letter outside ASCII), so UTF-8 text needs no decoding first.
 */

export const AT = 1;
export const PUNCT = 2;
export const DASHES = 4;
export const NUMBER = 8;
export const DOTTED = 16;
export const IBAN = 32;
export const RUN = 64;
export const LONG_RUN = 128;
const ALL = 255;

/** The triggers without which a detector cannot match. */
export const TRIGGERS: Readonly<Record<string, number>> = {
  email: AT,
  url_password: PUNCT,
  kv_secret: PUNCT | DASHES,
  ipv6: PUNCT,
  pem_private_key: DASHES,
  card: NUMBER,
  ssn: NUMBER,
  phone: NUMBER,
  iban: NUMBER | IBAN | RUN,
  ipv4: DOTTED,
  slack_token: PUNCT | RUN,
  aws_access_key: RUN,
  aws_secret_key: LONG_RUN,
  github_token: RUN,
  gitlab_token: RUN,
  jwt: RUN,
};

// Byte classes. Lower-case letters and spaces, most of any text, have classes of their own.
const K_LOWER = 1; // a-z
const K_SPACE = 2; // " "
const K_DIGIT = 3;
const K_UPPER = 4; // A-Z
const K_TOKEN = 5; // _ ~
const K_NUMTOKEN = 6; // + / . - (in tokens and in written numbers)
const K_NUMSEP = 7; // ( )
const K_AT = 8;
const K_PUNCT = 9; // : =
const K_OTHER = 0;

const CLASS = new Uint8Array(256);
for (let c = 0x61; c <= 0x7a; c++) CLASS[c] = K_LOWER;
for (let c = 0x41; c <= 0x5a; c++) CLASS[c] = K_UPPER;
for (let c = 0x30; c <= 0x39; c++) CLASS[c] = K_DIGIT;
CLASS[0x20] = K_SPACE;
for (const c of "_~") CLASS[c.charCodeAt(0)] = K_TOKEN;
for (const c of "+/.-") CLASS[c.charCodeAt(0)] = K_NUMTOKEN;
for (const c of "()") CLASS[c.charCodeAt(0)] = K_NUMSEP;
CLASS[0x40] = K_AT;
CLASS[0x3a] = K_PUNCT;
CLASS[0x3d] = K_PUNCT;

const RUN_LENGTH = 16;
const LONG_RUN_LENGTH = 40;
const NUMBER_DIGITS = 7;

/** The triggers present in bytes [start, end) of `buf`: 0 when no detector can match there. */
export function triggers(buf: Uint8Array, start: number, end: number): number {
  let found = 0;
  // The token run being read started at `runFrom` (16+ token characters in a row: RUN; 40+: LONG_RUN).
  let runFrom = start;
  let digits = 0; // digits of the number being read
  let dots = 0; // its dots
  let i = start;
  while (i < end) {
    let c = buf[i]!;
    // Lower-case letters and spaces, most of any text, in a loop of their own: a letter only moves `i`.
    if (c >= 0x61 && c <= 0x7a) {
      digits = 0;
      dots = 0;
      while (++i < end) {
        c = buf[i]!;
        if (c > 0x7a || c < 0x61) break;
      }
      if (i >= end) break;
    }
    if (c === 0x20) {
      if (i - runFrom >= RUN_LENGTH) found |= i - runFrom >= LONG_RUN_LENGTH ? RUN | LONG_RUN : RUN;
      runFrom = ++i;
      continue;
    }
    const k = CLASS[c]!;
    switch (k) {
      case K_DIGIT:
        if (++digits >= NUMBER_DIGITS) found |= NUMBER;
        // two capitals and two digits, "GB82": the second digit after capitals (they reset `digits`)
        else if (digits === 2 && i - start >= 3 && CLASS[buf[i - 1]!] === K_DIGIT && CLASS[buf[i - 2]!] === K_UPPER && CLASS[buf[i - 3]!] === K_UPPER) found |= IBAN;
        if (dots >= 3 && digits >= 4) found |= DOTTED;
        break;
      case K_UPPER:
      case K_TOKEN:
        digits = 0;
        dots = 0;
        break;
      case K_NUMTOKEN:
        if (c === 0x2e) dots++;
        else if (c === 0x2d && i > start && buf[i - 1] === 0x2d) found |= DASHES;
        break;
      case K_NUMSEP:
        if (i - runFrom >= RUN_LENGTH) found |= i - runFrom >= LONG_RUN_LENGTH ? RUN | LONG_RUN : RUN;
        runFrom = i + 1;
        break;
      default:
        if (i - runFrom >= RUN_LENGTH) found |= i - runFrom >= LONG_RUN_LENGTH ? RUN | LONG_RUN : RUN;
        runFrom = i + 1;
        digits = 0;
        dots = 0;
        if (k === K_AT) found |= AT;
        else if (k === K_PUNCT) found |= PUNCT;
        if (found === ALL) return found;
    }
    i++;
  }
  if (end - runFrom >= RUN_LENGTH) found |= end - runFrom >= LONG_RUN_LENGTH ? RUN | LONG_RUN : RUN;
  return found;
}
