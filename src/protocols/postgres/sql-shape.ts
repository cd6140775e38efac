/**
 * A cache key that is the same for two query strings that differ only in
 * their numeric and string literals ("… WHERE aid = 48213" and "… = 7"),
 * so that statements with inlined values reuse one parse.
 *
 * Sound only because literal values never change the facts the analyser
 * reports (kinds, tags, relations, functions, COPY mode); the statement text
 * is re-sliced from the real query. To stay sound the scanner is deliberately
 * narrow: anything whose lexing could depend on session settings or on rules
 * this scanner does not implement returns `undefined`, and the caller parses
 * the text as it is:
 *   - non-ASCII characters, backslashes (standard_conforming_strings),
 *     dollar signs (dollar quoting, parameters), double quotes;
 *   - comments (`--`, `/*`);
 *   - a quote right after a word or digit (E'…', B'…', X'…', U&'…', N'…');
 *   - a digit run followed by a letter (`1e`, `0x1`: lexer corner cases);
 *   - a semicolon anywhere but at the very end (multi-statement strings).
 */
const LITERAL = "\u0001"; // never allowed in the scanned text itself

export function literalShape(text: string): string | undefined {
  let out = "";
  let i = 0;
  const n = text.length;
  let copiedTo = 0; // text[copiedTo, i) is still to be copied verbatim
  let prevWord = false; // previous character ended a word or number
  while (i < n) {
    const c = text.charCodeAt(i);
    if (c >= 0x80 || c === 0x5c /* \ */ || c === 0x24 /* $ */ || c === 0x22 /* " */ || c < 0x09 || c === 0x01) return undefined;
    if (c === 0x27 /* ' */) {
      if (prevWord) return undefined;
      // '…' with '' as an escaped quote; no backslashes (checked inside too).
      let j = i + 1;
      for (;;) {
        if (j >= n) return undefined; // unterminated
        const d = text.charCodeAt(j);
        if (d >= 0x80 || d === 0x5c) return undefined;
        if (d === 0x27) {
          if (text.charCodeAt(j + 1) === 0x27) {
            j += 2;
            continue;
          }
          break;
        }
        j++;
      }
      out += text.slice(copiedTo, i) + LITERAL;
      i = j + 1;
      copiedTo = i;
      prevWord = false;
      continue;
    }
    if (isDigit(c) && !prevWord) {
      let j = i;
      while (j < n && isDigit(text.charCodeAt(j))) j++;
      if (text.charCodeAt(j) === 0x2e /* . */ && isDigit(text.charCodeAt(j + 1))) {
        j++;
        while (j < n && isDigit(text.charCodeAt(j))) j++;
      }
      const after = text.charCodeAt(j);
      if (isWordChar(after) || after === 0x2e || after === 0x27) return undefined;
      out += text.slice(copiedTo, i) + LITERAL;
      i = j;
      copiedTo = i;
      prevWord = false;
      continue;
    }
    if (c === 0x2d /* - */ && text.charCodeAt(i + 1) === 0x2d) return undefined;
    if (c === 0x2f /* / */ && text.charCodeAt(i + 1) === 0x2a) return undefined;
    if (c === 0x3b /* ; */ && text.slice(i + 1).trim() !== "") return undefined;
    prevWord = isWordChar(c);
    i++;
  }
  return out + text.slice(copiedTo);
}

function isDigit(c: number): boolean {
  return c >= 0x30 && c <= 0x39;
}

function isWordChar(c: number): boolean {
  return (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || isDigit(c) || c === 0x5f;
}

/** The statement text the parser would slice for a single-statement string: trimmed, without the final `;`. */
export function singleStatementText(text: string): string {
  const t = text.trim();
  return (t.endsWith(";") ? t.slice(0, -1) : t).trim();
}
