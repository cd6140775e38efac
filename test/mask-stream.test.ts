/**
 * StreamMasker (src/mask/stream.ts) against one-shot masking of the same
 * text: a corpus with planted secrets (terminal output with ANSI sequences,
 * JSON, CSV, multi-byte UTF-8, PEM keys) is cut into chunks at every
 * possible byte boundary (short samples) and at random boundaries, 1 byte to
 * 4 KiB (long ones); the concatenated output must equal the one-shot result
 * byte for byte, the counts must agree, no raw secret may leave, and the
 * held-back text must stay within the window (+ the span cap for PEM).
 *
 * Local test detectors (a token regex, a Luhn-checked card number with a
 * look-behind, a PEM block) keep these tests independent of detectors.ts;
 * the last block repeats the checks with the real detectors when they exist.
 */
import { describe, expect, test } from "bun:test";
import { isUtf8 } from "node:buffer";
import * as fs from "node:fs";
import * as path from "node:path";
import { ESC_MAX, SPAN_CAP, StreamMasker, WINDOW_CAP, mergeMatches, type StreamMaskerOptions } from "../src/mask/stream.ts";
import type { Detector, Match, MaskCounts, MaskStyle } from "../src/mask/types.ts";

const ENC = new TextEncoder();
const DEC = new TextDecoder("utf-8", { ignoreBOM: true });
const REDACT: MaskStyle = { kind: "redact" };

// ---- local detectors ----

function regexDetector(name: string, re: RegExp, maxLength: number, valid: (v: string) => boolean = () => true): Detector {
  return {
    name,
    maxLength,
    find(text) {
      const out: Match[] = [];
      for (const m of text.matchAll(re)) {
        if (valid(m[0])) out.push({ start: m.index!, end: m.index! + m[0].length, detector: name });
      }
      return out;
    },
  };
}

function luhn(digits: string): boolean {
  let sum = 0;
  for (let i = 0; i < digits.length; i++) {
    let d = digits.charCodeAt(digits.length - 1 - i) - 48;
    if (i % 2 === 1) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
  }
  return sum % 10 === 0;
}

const TOKEN = regexDetector("token", /SECRET-[0-9]{8}/g, 15);
/** Look-behind and look-ahead: a card is not part of a longer digit run. */
const CARD = regexDetector("card", /(?<![0-9])[0-9]{13,19}(?![0-9])/g, 19, luhn);
const PEM = regexDetector("pem_private_key", /-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----[\s\S]*?-----END \1PRIVATE KEY-----/g, 1 << 20);
const LOCAL = [TOKEN, CARD];
const LOCAL_PEM = [TOKEN, CARD, PEM];

const redact = (_v: string, d: Detector) => `[REDACTED:${d.name}]`;
/** A mask that depends on the whole value: proves the masker hands over the value intact. */
const digest = (v: string, d: Detector) => `[${d.name}#${fnv(v)}]`;

function fnv(s: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h.toString(16).padStart(8, "0");
}

/** One-shot masking of a whole text: the reference. */
function maskAll(text: string, detectors: Detector[], mask = redact): { text: string; counts: MaskCounts } {
  const matches = mergeMatches(detectors.flatMap((d) => d.find(text)));
  const counts: MaskCounts = {};
  let out = "";
  let p = 0;
  for (const m of matches) {
    out += text.slice(p, m.start) + mask(text.slice(m.start, m.end), detectors.find((d) => d.name === m.detector)!);
    counts[m.detector] = (counts[m.detector] ?? 0) + 1;
    p = m.end;
  }
  return { text: out + text.slice(p), counts };
}

// ---- running a stream ----

interface Run {
  out: Uint8Array;
  /** Output chunks emitted from write() (not from flush/end). */
  writeChunks: Uint8Array[];
  counts: MaskCounts;
  maxHeld: number;
  masker: StreamMasker;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Writes `bytes` cut at `cuts` (sorted byte offsets), then end(). */
function run(bytes: Uint8Array, cuts: Iterable<number>, opts: Partial<StreamMaskerOptions> = {}): Run {
  const all: Uint8Array[] = [];
  const writeChunks: Uint8Array[] = [];
  let inWrite = false;
  const masker = new StreamMasker({
    detectors: LOCAL,
    style: REDACT,
    mask: redact,
    idleMs: 0,
    ...opts,
    onData: (c) => {
      all.push(c.slice());
      if (inWrite) writeChunks.push(c.slice());
    },
  });
  let maxHeld = 0;
  let p = 0;
  const write = (q: number) => {
    inWrite = true;
    masker.write(bytes.subarray(p, q));
    inWrite = false;
    maxHeld = Math.max(maxHeld, masker.held);
    p = q;
  };
  for (const q of cuts) if (q > p && q < bytes.length) write(q);
  write(bytes.length);
  masker.end();
  return { out: concat(all), writeChunks, counts: { ...masker.counts }, maxHeld, masker };
}

function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Random cut points: chunk sizes log-uniform in 1..max bytes. */
function randomCuts(n: number, seed: number, max = 4096): number[] {
  const rnd = prng(seed);
  const cuts: number[] = [];
  for (let p = 0; p < n; ) {
    p += Math.max(1, Math.floor(Math.exp(rnd() * Math.log(max + 1))));
    cuts.push(p);
  }
  return cuts;
}

const range = (a: number, b: number) => Array.from({ length: b - a }, (_, i) => a + i);

/** The largest held-back text allowed by the cut rules. */
function bound(m: StreamMasker, spans = false): number {
  return m.window + ESC_MAX + 1 + (spans ? m.spanCap : 0);
}

/** Escape sequences in the output, as byte ranges. */
function escapeRanges(bytes: Uint8Array): [number, number][] {
  const s = Buffer.from(bytes).toString("latin1");
  const re = /\x1b\[[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[\x20-\x2f]*[\x30-\x7e]/g;
  return [...s.matchAll(re)].map((m) => [m.index!, m.index! + m[0].length]);
}

/** The first of `planted` that occurs in `text`: one pass, looking values up by their first 8 characters. */
function findPlanted(text: string, planted: string[]): string | undefined {
  const byPrefix = new Map<string, string[]>();
  for (const v of planted) {
    if (v.length < 8) {
      if (text.includes(v)) return v;
      continue;
    }
    const k = v.slice(0, 8);
    const list = byPrefix.get(k);
    if (list) list.push(v);
    else byPrefix.set(k, [v]);
  }
  for (let i = 0; i + 8 <= text.length; i++) {
    const list = byPrefix.get(text.slice(i, i + 8));
    if (list) for (const v of list) if (text.startsWith(v, i)) return v;
  }
  return undefined;
}

/** Checks the properties every run must have; `planted` are raw secrets that must not appear. */
function check(r: Run, expected: { text: string; counts: MaskCounts }, planted: string[], spans = false): void {
  const got = DEC.decode(r.out);
  if (got !== expected.text) {
    // a readable diff: the first difference and its surroundings
    let i = 0;
    while (i < got.length && got[i] === expected.text[i]) i++;
    expect(JSON.stringify(got.slice(Math.max(0, i - 40), i + 40))).toBe(JSON.stringify(expected.text.slice(Math.max(0, i - 40), i + 40)));
  }
  expect(Buffer.from(r.out).equals(Buffer.from(ENC.encode(expected.text)))).toBe(true);
  expect(r.counts).toEqual(expected.counts);
  const leak = findPlanted(got, planted);
  if (leak !== undefined) throw new Error(`raw secret emitted: ${JSON.stringify(leak)}`);
  expect(r.maxHeld).toBeLessThanOrEqual(bound(r.masker, spans));
}

// ---- corpora ----

const SHORT =
  "$ cat creds\r\n\x1b[01;34mnotes\x1b[0m café SECRET-12345678 ok\r\n" +
  '{"user":"zoë","token":"SECRET-87654321","card":"4111111111111111","n":"日本😀"}\n' +
  "id,name,card\n1,Zoë,4012888888881881\n2,Ånne,4111 no\n" +
  "é4242424242424242é 😀SECRET-00000001😀 \x1b]0;user@host: ~\x07x\x1b[2K\x1b[1G$ ";
const SHORT_SECRETS = ["SECRET-12345678", "SECRET-87654321", "4111111111111111", "4012888888881881", "4242424242424242", "SECRET-00000001"];

/** Shorter still, for every pair of cut points. */
const TINY = "a é\x1b[31mSECRET-11112222\x1b[0m😀,5555555555554444\r\n";
const TINY_SECRETS = ["SECRET-11112222", "5555555555554444"];

function cardNumber(rnd: () => number): string {
  let s = "4";
  while (s.length < 15) s += Math.floor(rnd() * 10);
  for (let c = 0; c < 10; c++) if (luhn(s + c)) return s + c;
  throw new Error("unreachable");
}

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
function pemBlock(rnd: () => number, lines = 26, type = "RSA ", eol = "\n"): string {
  let body = "";
  for (let i = 0; i < lines; i++) {
    let line = "";
    for (let j = 0; j < 64; j++) line += B64[Math.floor(rnd() * 64)];
    body += line + eol;
  }
  return `-----BEGIN ${type}PRIVATE KEY-----${eol}${body}-----END ${type}PRIVATE KEY-----`;
}

/** A long mixed corpus with planted secrets; returns the text and the secrets. */
function corpus(seed: number, targetChars: number, withPem = false): { text: string; secrets: string[] } {
  const rnd = prng(seed);
  const pick = <T,>(xs: T[]) => xs[Math.floor(rnd() * xs.length)]!;
  const secrets: string[] = [];
  const token = () => {
    const t = "SECRET-" + String(Math.floor(rnd() * 1e8)).padStart(8, "0");
    secrets.push(t);
    return t;
  };
  const card = () => {
    const c = cardNumber(rnd);
    secrets.push(c);
    return c;
  };
  const notCard = () => {
    let s = cardNumber(rnd);
    s = s.slice(0, -1) + ((Number(s.at(-1)) + 1) % 10); // fails Luhn: must pass through
    return s;
  };
  const words = ["alpha", "naïve", "Straße", "東京", "😀", "👩‍💻", "e\u0301", "Ωmega", "deploy", "SECRET-", "SECRET-123", "-----", "-----BEGIN", "\t"];
  const lines: string[] = [];
  let n = 0;
  while (n < targetChars) {
    let line: string;
    switch (Math.floor(rnd() * (withPem ? 9 : 8))) {
      case 0:
        line = `\x1b[0${Math.floor(rnd() * 2)};3${Math.floor(rnd() * 8)}m${pick(words)}\x1b[0m ${pick(words)} ${token()}\x1b[K\r\n`;
        break;
      case 1:
        line = JSON.stringify({ id: Math.floor(rnd() * 1e6), name: pick(words), token: token(), card: card(), order: notCard() }) + "\n";
        break;
      case 2:
        line = `${Math.floor(rnd() * 1000)},${pick(words)},${card()},${notCard()},"${pick(words)}, ${token()}"\r\n`;
        break;
      case 3:
        line = `${pick(words)}${token()}${pick(words)}é${card()}${pick(words)}\n`; // secrets flush against multi-byte text
        break;
      case 4:
        line = `\x1b]0;${pick(words)}@host: ~\x07\x1b[?2004h$ ls -la\r\n\x1b[01;34m${pick(words)}\x1b[0m  ${pick(words)}\x1b]8;;file:///x\x1b\\link\x1b]8;;\x1b\\\r\n`;
        break;
      case 5:
        line = `${pick(words)} ${notCard()} ${String(Math.floor(rnd() * 1e12))}${cardNumber(rnd)}9 SECRET-1234567 ${pick(words)}\n`; // near misses: no secret
        break;
      case 6:
        line = Array.from({ length: 1 + Math.floor(rnd() * 30) }, () => pick(words)).join(" ") + "\n";
        break;
      case 7:
        line = `${token()}x${card()}${token()}\n`;
        break;
      default: {
        const block = rnd() < 0.5 ? pemBlock(rnd, 5 + Math.floor(rnd() * 30)) : JSON.stringify({ key: pemBlock(rnd, 10, "") }).slice(1, -1);
        const body = block.split(/\n|\\n/)[3]!;
        secrets.push(body);
        line = `key: ${block}\n`;
      }
    }
    lines.push(line);
    n += line.length;
  }
  return { text: lines.join(""), secrets };
}

// ---- the tests ----

describe("split at every boundary", () => {
  const bytes = ENC.encode(SHORT);
  for (const [label, detectors] of [["token+card", LOCAL], ["token+card+pem", LOCAL_PEM]] as const) {
    for (const window of [undefined, 19, 64]) {
      test(`${label}, window ${window ?? "default"}: two chunks, cut at each of ${bytes.length + 1} offsets`, () => {
        const expected = maskAll(SHORT, [...detectors]);
        expect(expected.counts).toEqual({ token: 3, card: 3 });
        for (const i of range(0, bytes.length + 1)) {
          const r = run(bytes, [i], { detectors: [...detectors], window });
          check(r, expected, SHORT_SECRETS, true);
        }
      });
    }
  }

  test("one byte at a time, and every chunk emitted by write() is whole UTF-8 and splits no escape sequence", () => {
    for (const window of [undefined, 15, 19, 40]) {
      const r = run(bytes, range(1, bytes.length), { window });
      check(r, maskAll(SHORT, LOCAL), SHORT_SECRETS);
      const escapes = escapeRanges(r.out);
      let o = 0;
      for (const c of r.writeChunks) {
        expect(isUtf8(c)).toBe(true);
        o += c.length;
        for (const [a, b] of escapes) if (a < o && o < b) throw new Error(`cut at ${o} inside escape ${a}..${b}`);
      }
    }
  });

  test("every pair of cut points (three chunks) of a tiny sample", () => {
    const tiny = ENC.encode(TINY);
    const expected = maskAll(TINY, LOCAL);
    expect(expected.counts).toEqual({ token: 1, card: 1 });
    for (const window of [undefined, 16]) {
      for (const i of range(0, tiny.length + 1)) {
        for (const j of range(i, tiny.length + 1)) check(run(tiny, [i, j], { window }), expected, TINY_SECRETS);
      }
    }
  });

  test("a mask that depends on the value gets each value whole", () => {
    const expected = maskAll(SHORT, LOCAL, digest);
    for (const i of range(0, bytes.length + 1)) check(run(bytes, [i], { mask: digest }), expected, SHORT_SECRETS);
  });
});

describe("random chunks, 1 byte to 4 KiB", () => {
  test("a 400 KB mixed corpus, 8 chunkings x 3 windows", () => {
    const { text, secrets } = corpus(1, 400_000);
    const bytes = ENC.encode(text);
    const expected = maskAll(text, LOCAL);
    expect(expected.counts.token!).toBeGreaterThan(1000);
    expect(findPlanted(expected.text, secrets)).toBeUndefined();
    for (const window of [undefined, 19, 4096]) {
      for (let seed = 1; seed <= 8; seed++) check(run(bytes, randomCuts(bytes.length, seed * 7 + (window ?? 0), seed % 2 ? 4096 : 64), { window }), expected, secrets);
    }
  });

  test("a window larger than the lookbehind: fewer scans, same output, held within the window", () => {
    const { text, secrets } = corpus(4, 100_000);
    const bytes = ENC.encode(text);
    const expected = maskAll(text, LOCAL);
    const scans: Record<string, number> = {};
    for (const window of [undefined, 38, 190]) {
      let n = 0;
      const find = (t: string) => (n++, LOCAL.flatMap((d) => d.find(t)));
      const r = run(bytes, range(1, bytes.length), { window, find });
      expect(r.masker.lookbehind).toBe(19);
      check(r, expected, secrets);
      scans[String(window)] = n;
    }
    // one byte per write: a scan per write with the default window; one per (window - lookbehind) units otherwise
    expect(scans["undefined"]!).toBeGreaterThan(text.length * 0.5);
    expect(scans["38"]!).toBeLessThan(text.length / 15);
    expect(scans["190"]!).toBeLessThan(text.length / 150);
  });

  test("one byte at a time over 60 KB", () => {
    const { text, secrets } = corpus(2, 60_000);
    const bytes = ENC.encode(text);
    check(run(bytes, range(1, bytes.length)), maskAll(text, LOCAL), secrets);
  });

  test("with PEM blocks (plain and JSON-escaped): held under the span cap, masked whole", () => {
    const { text, secrets } = corpus(3, 300_000, true);
    const bytes = ENC.encode(text);
    const expected = maskAll(text, LOCAL_PEM, digest);
    expect(expected.counts.pem_private_key!).toBeGreaterThan(20);
    for (let seed = 1; seed <= 16; seed++) {
      const r = run(bytes, randomCuts(bytes.length, seed, seed % 2 ? 4096 : 64), { detectors: LOCAL_PEM, mask: digest });
      check(r, expected, secrets, true);
    }
  });
});

describe("cut rules", () => {
  test("a match that ends inside an escape sequence: the cut moves back out of both", () => {
    // A contrived detector whose match takes the ESC [ of the sequence after it.
    const odd = regexDetector("odd", /KEY=[a-z]{4}\x1b\[/g, 10);
    const text = "xx KEY=abcd\x1b[0m yy KEY=wxyz\x1b[1;31m zz é\x1b[0m\r\n";
    const bytes = ENC.encode(text);
    const expected = maskAll(text, [odd]);
    expect(expected.counts).toEqual({ odd: 2 });
    for (const window of [undefined, 12]) {
      for (const i of range(0, bytes.length + 1)) {
        for (const j of range(i, bytes.length + 1)) {
          check(run(bytes, [i, j], { detectors: [odd], window }), expected, ["KEY=abcd", "KEY=wxyz"]);
        }
      }
    }
  });

  test("a detector that reads context far before the value (a long key name) still sees it", () => {
    // The match is the value only; its key, up to 100 characters before it, is
    // context (maxLength covers key + value, as in detectors.ts kv_secret).
    const kv = regexDetector("kv", /(?<=secret_[a-z_]{0,90}=)[A-Za-z0-9]{8,20}(?![A-Za-z0-9])/g, 120);
    const key = "secret_" + "very_long_key_name_".repeat(4) + "x";
    const text = `a: ${key}=Val0123456789 b: ${key}=Another99999 and text after it that is long enough to push the cut\n`.repeat(3);
    const bytes = ENC.encode(text);
    const expected = maskAll(text, [kv]);
    expect(expected.counts).toEqual({ kv: 6 });
    for (const i of range(0, bytes.length + 1)) check(run(bytes, [i], { detectors: [kv] }), expected, ["Val0123456789", "Another99999"]);
    check(run(bytes, range(1, bytes.length), { detectors: [kv] }), expected, ["Val0123456789", "Another99999"]);
    for (let seed = 1; seed <= 50; seed++) check(run(bytes, randomCuts(bytes.length, seed, 64), { detectors: [kv] }), expected, ["Val0123456789", "Another99999"]);
  });

  test("onData may write again: state is settled before the callback", () => {
    const out: string[] = [];
    let echoed = false;
    const m: StreamMasker = new StreamMasker({
      detectors: LOCAL,
      style: REDACT,
      idleMs: 0,
      onData: (c) => {
        out.push(DEC.decode(c));
        if (!echoed) {
          echoed = true;
          m.write(ENC.encode(" SECRET-87654321 and more text after it"));
        }
      },
    });
    m.write(ENC.encode("first part SECRET-12345678 padding padding padding"));
    m.end();
    expect(out.join("")).toBe("first part [REDACTED:token] padding padding padding [REDACTED:token] and more text after it");
  });
});

describe("bytes", () => {
  test("multi-byte characters split at every byte come out whole", () => {
    const text = "é😀日👩‍💻SECRET-12345678\u0301ß";
    const bytes = ENC.encode(text);
    const expected = maskAll(text, LOCAL);
    for (const i of range(0, bytes.length + 1)) for (const j of range(i, bytes.length + 1)) check(run(bytes, [i, j]), expected, ["SECRET-12345678"]);
  });

  test("invalid UTF-8 and a BOM pass through byte for byte; secrets next to them are masked", () => {
    const parts = [[0xef, 0xbb, 0xbf], "abc", [0xff, 0xfe, 0xc3], "SECRET-12345678", [0xed, 0xa0, 0x80, 0xc0, 0xaf], "é", [0x80], "4111111111111111", [0xf0, 0x9f, 0x98]];
    const build = (secret: (s: string) => string) => concat(parts.map((p) => (typeof p === "string" ? ENC.encode(secret(p)) : Uint8Array.from(p))));
    const input = build((s) => s);
    const want = build((s) => (s === "SECRET-12345678" ? "[REDACTED:token]" : s === "4111111111111111" ? "[REDACTED:card]" : s));
    for (const window of [undefined, 19, 40]) {
      for (const i of range(0, input.length + 1)) {
        for (const j of range(i, input.length + 1)) {
          const r = run(input, [i, j], { window });
          expect(Buffer.from(r.out).equals(Buffer.from(want))).toBe(true);
          expect(r.counts).toEqual({ token: 1, card: 1 });
        }
      }
    }
  });

  test("no detectors: a byte-exact pass-through that emits at once (only a partial escape or character waits)", () => {
    const out: Uint8Array[] = [];
    const m = new StreamMasker({ detectors: [], style: REDACT, idleMs: 0, onData: (c) => out.push(c) });
    expect(m.window).toBe(0);
    m.write(ENC.encode("hello SECRET-12345678 "));
    expect(DEC.decode(concat(out))).toBe("hello SECRET-12345678 ");
    m.write(ENC.encode("\x1b[3"));
    expect(m.held).toBe(3);
    m.write(Uint8Array.of(0x31, 0x6d, 0xe2, 0x82));
    expect(DEC.decode(concat(out))).toBe("hello SECRET-12345678 \x1b[31m");
    m.write(Uint8Array.of(0xac));
    m.end();
    expect(DEC.decode(concat(out))).toBe("hello SECRET-12345678 \x1b[31m€");
  });
});

describe("PEM private keys: opener and closer", () => {
  const rnd = prng(42);
  const key = pemBlock(rnd, 30); // ~2 KB, longer than the window
  const body = key.split("\n").slice(1, -1);
  const before = "login ok \x1b[32m✓\x1b[0m\n$ cat id_rsa\n";
  const after = "\n$ echo SECRET-12345678 done\n";
  const text = before + key + after;
  const bytes = ENC.encode(text);

  test("a key longer than the window, split at every byte, is held and masked whole", () => {
    const expected = maskAll(text, LOCAL_PEM);
    expect(expected.counts).toEqual({ pem_private_key: 1, token: 1 });
    for (const i of range(0, bytes.length + 1)) check(run(bytes, [i], { detectors: LOCAL_PEM }), expected, body, true);
    const r = run(bytes, range(1, bytes.length), { detectors: LOCAL_PEM });
    check(r, expected, body, true);
    expect(r.maxHeld).toBeGreaterThan(key.length - 200); // it really was held
  });

  test("while held, text before the opener has left and the key has not", () => {
    const out: Uint8Array[] = [];
    const m = new StreamMasker({ detectors: LOCAL_PEM, style: REDACT, idleMs: 0, onData: (c) => out.push(c) });
    const half = ENC.encode(before + "x".repeat(200) + key.slice(0, 1000));
    m.write(half);
    expect(m.spanOpen).toBe(true);
    const so_far = DEC.decode(concat(out));
    expect(so_far.startsWith(before)).toBe(true);
    expect(so_far.includes("BEGIN")).toBe(false);
    m.write(ENC.encode(key.slice(1000) + after));
    expect(m.spanOpen).toBe(false);
    m.end();
    expect(DEC.decode(concat(out))).toBe(before + "x".repeat(200) + "[REDACTED:pem_private_key]" + after.replace("SECRET-12345678", "[REDACTED:token]"));
  });

  test("over the cap: fails closed, redacts from BEGIN, swallows until END", () => {
    const want = before + "[REDACTED:pem_private_key]" + after.replace("SECRET-12345678", "[REDACTED:token]");
    for (let seed = 1; seed <= 200; seed++) {
      const r = run(bytes, randomCuts(bytes.length, seed, seed % 3 ? 300 : 20), { detectors: LOCAL_PEM, spanCap: 512 });
      const got = DEC.decode(r.out);
      expect(got).toBe(want);
      expect(r.counts).toEqual({ pem_private_key: 1, token: 1 });
      expect(r.maxHeld).toBeLessThanOrEqual(r.masker.window + ESC_MAX + 1 + 512);
    }
    // and split at every byte (two chunks) too: either masked whole or redacted, never raw
    for (const i of range(0, bytes.length + 1)) expect(DEC.decode(run(bytes, [i], { detectors: LOCAL_PEM, spanCap: 512 }).out)).toBe(want);
  });

  test("a flush or an end while the key is open fails closed", () => {
    const out: Uint8Array[] = [];
    const m = new StreamMasker({ detectors: LOCAL_PEM, style: REDACT, idleMs: 0, onData: (c) => out.push(c) });
    m.write(ENC.encode(before + key.slice(0, 700)));
    m.flush();
    expect(DEC.decode(concat(out))).toBe(before + "[REDACTED:pem_private_key]");
    m.write(ENC.encode(key.slice(700, 1500)));
    expect(m.held).toBe(0);
    m.write(ENC.encode(key.slice(1500) + after));
    m.end();
    expect(DEC.decode(concat(out))).toBe(before + "[REDACTED:pem_private_key]" + after.replace("SECRET-12345678", "[REDACTED:token]"));

    const out2: Uint8Array[] = [];
    const m2 = new StreamMasker({ detectors: LOCAL_PEM, style: REDACT, idleMs: 0, onData: (c) => out2.push(c) });
    m2.write(ENC.encode("truncated:\n" + key.slice(0, 900)));
    m2.end();
    expect(DEC.decode(concat(out2))).toBe("truncated:\n[REDACTED:pem_private_key]");
    expect(m2.counts).toEqual({ pem_private_key: 1 });
  });

  test("an idle flush does not release an open key", async () => {
    const out: Uint8Array[] = [];
    const m = new StreamMasker({ detectors: LOCAL_PEM, style: REDACT, idleMs: 5, onData: (c) => out.push(c) });
    m.write(ENC.encode(before + key.slice(0, 1200)));
    await Bun.sleep(40);
    expect(DEC.decode(concat(out))).toBe(before);
    m.write(ENC.encode(key.slice(1200) + after));
    await Bun.sleep(40);
    expect(DEC.decode(concat(out))).toBe(before + "[REDACTED:pem_private_key]" + after.replace("SECRET-12345678", "[REDACTED:token]"));
    m.end();
  });

  test("the window is at least 128 when a span rule is on; uncovered detectors are named", () => {
    const m = new StreamMasker({ detectors: LOCAL_PEM, style: REDACT, onData: () => {} });
    expect(m.window).toBe(128);
    expect(m.uncovered).toEqual([]);
    expect(m.spanCap).toBe(SPAN_CAP);
    const long = regexDetector("long", /x{100,40000}/g, 40000);
    const m2 = new StreamMasker({ detectors: [TOKEN, long], style: REDACT, onData: () => {} });
    expect(m2.window).toBe(WINDOW_CAP);
    expect(m2.uncovered).toEqual(["long"]);
    expect(new StreamMasker({ detectors: [TOKEN, long], style: REDACT, window: 40000, onData: () => {} }).uncovered).toEqual([]);
    // the span cap follows the span detector's maxLength, at most SPAN_CAP
    const pem16k = { ...PEM, maxLength: 16384 };
    expect(new StreamMasker({ detectors: [pem16k], style: REDACT, onData: () => {} }).spanCap).toBe(16384);
    expect(() => new StreamMasker({ detectors: LOCAL, style: { kind: "partial", keep: 4 }, onData: () => {} })).toThrow(/mask function/);
  });
});

describe("idle flush (real time, no fake timers)", () => {
  function masker(idleMs: number) {
    const out: Uint8Array[] = [];
    const m = new StreamMasker({ detectors: LOCAL, style: REDACT, idleMs, onData: (c) => out.push(c) });
    return { m, text: () => DEC.decode(concat(out)) };
  }

  test("a prompt shorter than the window appears after idleMs without another write", async () => {
    const { m, text } = masker(10);
    m.write(ENC.encode("user@host:~$ "));
    expect(text()).toBe(""); // held: shorter than the window
    await Bun.sleep(60);
    expect(text()).toBe("user@host:~$ ");
    m.end();
  });

  test("a secret split by a pause shorter than idleMs is still caught", async () => {
    const { m, text } = masker(200);
    m.write(ENC.encode("$ echo SECRET-1234"));
    await Bun.sleep(10);
    m.write(ENC.encode("5678\r\n"));
    await Bun.sleep(400);
    expect(text()).toBe("$ echo [REDACTED:token]\r\n");
    expect(m.counts).toEqual({ token: 1 });
    m.end();
  });

  test("writes keep re-arming the timer: nothing leaves until the stream goes quiet", async () => {
    const { m, text } = masker(150);
    for (const ch of "SECRET-12") {
      m.write(ENC.encode(ch));
      await Bun.sleep(2);
    }
    expect(text()).toBe("");
    m.write(ENC.encode("345678"));
    await Bun.sleep(400);
    expect(text()).toBe("[REDACTED:token]");
    m.end();
  });

  test("the documented trade-off: a pause longer than idleMs splits a secret in two", async () => {
    const { m, text } = masker(10);
    m.write(ENC.encode("SECRET-1234"));
    await Bun.sleep(60);
    expect(text()).toBe("SECRET-1234"); // alone, no secret: it has left
    m.write(ENC.encode("5678"));
    await Bun.sleep(60);
    // The left context (text already sent) shows the rest belongs to a secret:
    // what had not left yet is masked; what had, cannot be called back.
    expect(text()).toBe("SECRET-1234[REDACTED:token]");
    expect(m.counts).toEqual({ token: 1 });
    m.end();
  });

  test("idleMs 0: nothing leaves until flush()", async () => {
    const { m, text } = masker(0);
    m.write(ENC.encode("hello world, SECRET-12345678"));
    await Bun.sleep(40);
    expect(text()).toBe("hello wor"); // 28 units, window 19
    m.flush();
    expect(text()).toBe("hello world, [REDACTED:token]");
    m.end();
    expect(() => m.write(ENC.encode("x"))).toThrow(/after end/);
  });
});

describe("memory", () => {
  test("without escape sequences or astral characters, held text never exceeds the window itself", () => {
    const rnd = prng(77);
    let text = "";
    while (text.length < 200_000) {
      const r = rnd();
      text += r < 0.3 ? "SECRET-" + String(Math.floor(rnd() * 1e8)).padStart(8, "0") : r < 0.5 ? cardNumber(rnd) : r < 0.6 ? "SECRET-" : r < 0.8 ? String(Math.floor(rnd() * 1e9)) : " café, ";
    }
    const bytes = ENC.encode(text);
    const expected = maskAll(text, LOCAL);
    for (const window of [undefined, 19, 25]) {
      for (let seed = 1; seed <= 3; seed++) {
        const r = run(bytes, randomCuts(bytes.length, seed, seed === 1 ? 8 : 512), { window });
        check(r, expected, []);
        expect(r.maxHeld).toBeLessThanOrEqual(r.masker.window);
      }
    }
  });


  test("held text stays within the window over a 20 MB stream", () => {
    const { text } = corpus(9, 1_000_000);
    const bytes = ENC.encode(text);
    const m = new StreamMasker({ detectors: LOCAL_PEM, style: REDACT, idleMs: 0, onData: () => {} });
    const cuts = randomCuts(bytes.length, 5);
    let maxHeld = 0;
    for (let rep = 0; rep < 20; rep++) {
      let p = 0;
      for (const q of [...cuts, bytes.length]) {
        if (q <= p || q > bytes.length) continue;
        m.write(bytes.subarray(p, q));
        maxHeld = Math.max(maxHeld, m.held);
        p = q;
      }
    }
    m.end();
    expect(maxHeld).toBeLessThanOrEqual(m.window + ESC_MAX + 1);
    expect(m.counts.token!).toBeGreaterThan(20 * 1000);
  });
});

// ---- with the real detectors, when detectors.ts, styles.ts and index.ts exist ----

const MASK_DIR = path.join(import.meta.dir, "../src/mask");
const HAVE_REAL = ["detectors.ts", "styles.ts", "index.ts"].every((f) => fs.existsSync(path.join(MASK_DIR, f)));

/** What this file uses of detectors.ts, styles.ts and index.ts (imported by path, so this file loads without them). */
interface RealApi {
  DETECTORS: Record<string, Detector>;
  ALL_DETECTORS: string[];
  findAll: (text: string, names: readonly string[]) => Match[];
  maskValue: (value: string, detector: string, style: MaskStyle) => string;
  maskText: (text: string, names: readonly string[], style: MaskStyle) => { text: string; counts: MaskCounts };
}

async function loadReal(): Promise<RealApi> {
  const [d, s, i] = await Promise.all(["detectors.ts", "styles.ts", "index.ts"].map((f) => import(path.join(MASK_DIR, f))));
  return { DETECTORS: d.DETECTORS, ALL_DETECTORS: d.ALL_DETECTORS, findAll: d.findAll, maskValue: s.maskValue, maskText: i.maskText };
}

/** Masker options wired the way the gateway wires them: findAll and maskValue for the named detectors. */
function realOptions(real: RealApi, names: readonly string[], style: MaskStyle): Pick<StreamMaskerOptions, "detectors" | "style" | "find" | "mask"> {
  return {
    detectors: names.map((n) => real.DETECTORS[n]!),
    style,
    find: (text) => real.findAll(text, names),
    mask: (value, d) => real.maskValue(value, d.name, style),
  };
}

function b64url(s: string): string {
  return Buffer.from(s).toString("base64url");
}

/** Terminal output, logs, JSON and CSV with values for every detector; `planted` are the secret values. */
function realCorpus(seed: number, targetChars: number, plainShare = 0): { text: string; planted: string[] } {
  const rnd = prng(seed);
  const int = (n: number) => Math.floor(rnd() * n);
  const pick = <T,>(xs: T[]) => xs[int(xs.length)]!;
  const alnum = (n: number, set = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789") => Array.from({ length: n }, () => set[int(set.length)]).join("");
  const planted: string[] = [];
  const plant = (v: string) => (planted.push(v), v);
  const words = ["deploy", "naïve", "Straße", "東京", "😀", "👩‍💻", "ok", "done", "status", "e\u0301"];
  const jwt = (payloadChars: number) =>
    plant(`${b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${b64url(JSON.stringify({ sub: alnum(8), groups: alnum(payloadChars) }))}.${alnum(43, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}`);
  const gen: (() => string)[] = [
    () => `\x1b[01;32m${pick(words)}@host\x1b[0m:\x1b[01;34m~\x1b[0m$ git push\r\nremote: token ${plant("ghp_" + alnum(36))} ${pick(words)}\r\n`,
    () => JSON.stringify({ id: int(1e6), email: plant(`${alnum(6).toLowerCase()}.${pick(["smith", "o-brien"])}@example.com`), name: pick(["Zoë", "Ånne", "東京"]), card: plant(cardNumber(rnd)), note: pick(words) }) + "\n",
    () => `${int(1000)},${pick(words)},${plant(pick(["GB82WEST12345698765432", "DE89370400440532013000", "NL91ABNA0417164300"]))},${plant(cardNumber(rnd).replace(/(\d{4})(?=\d)/g, "$1 "))}\r\n`,
    () => `2024-05-01T12:00:00Z INFO conn=${int(1e4)} from ${int(200) + 10}.${int(255)}.${int(255)}.${int(254) + 1} user=${pick(words)} took=${int(999)}ms\n`,
    () => `export AWS_ACCESS_KEY_ID=${plant("AKIA" + alnum(16, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"))}\nexport aws_secret_access_key=${plant(alnum(40, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/+"))}\n`,
    () => `Authorization: Bearer ${jwt(20 + int(200))}\r\n`,
    () => `DATABASE_URL=postgres://app:${plant(alnum(12) + "x9")}@db${int(9)}.internal:5432/app ${pick(words)}\n`,
    () => `{"api_key": "${plant("sk_live_" + alnum(24))}", "${pick(["password", "client_secret"])}": "${plant(alnum(16) + "!Q")}"}\n`,
    () => `slack ${plant("xoxb-" + alnum(12, "0123456789") + "-" + alnum(13, "0123456789") + "-" + alnum(24))} gitlab ${plant("glpat-" + alnum(20))} ${pick(words)}\n`,
    () => `${pick(words)} `.repeat(1 + int(40)) + "\n",
    () => `key:\n${pemBlock(rnd, 8 + int(30), pick(["RSA ", "", "EC ", "OPENSSH "]))}\n`.replace(/\n([A-Za-z0-9+/]{64})\n/, (m, l: string) => (plant(l), m)),
    () => `id_token=${jwt(4000 + int(9000))} ${pick(words)}\n`, // a JWT of 5.5 to 17.5 K characters
  ];
  const parts: string[] = [];
  let n = 0;
  const plain = () =>
    rnd() < 0.5
      ? `2024-05-01T12:${String(int(60)).padStart(2, "0")}:00Z INFO GET /api/v1/items/${int(1e6)} status=200 bytes=${int(1e5)} took=${int(999)}ms ${pick(words)}\n`
      : `\x1b[01;34m${pick(words)}\x1b[0m  -rw-r--r-- 1 app app ${int(1e6)} May  1 12:00 report-${int(1e4)}.csv\r\n`;
  while (n < targetChars) {
    const line = rnd() < plainShare ? plain() : pick(gen)();
    parts.push(line);
    n += line.length;
  }
  return { text: parts.join(""), planted };
}

describe.if(HAVE_REAL)("with the real detectors", () => {
  const STYLES: [string, MaskStyle][] = [
    ["redact", { kind: "redact" }],
    ["partial", { kind: "partial", keep: 4 }],
    ["hmac", { kind: "hmac", key: ENC.encode("k") }],
  ];

  test("defaults: every detector but pem_private_key is covered by the lookbehind; PEM is a span", async () => {
    const real = await loadReal();
    const m = new StreamMasker({ ...realOptions(real, real.ALL_DETECTORS, REDACT), onData: () => {} });
    const longest = Math.max(...real.ALL_DETECTORS.filter((n) => n !== "pem_private_key").map((n) => real.DETECTORS[n]!.maxLength));
    expect(m.lookbehind).toBe(Math.min(WINDOW_CAP, longest));
    expect(m.uncovered).toEqual([]);
    expect(m.spanCap).toBe(Math.min(SPAN_CAP, real.DETECTORS.pem_private_key!.maxLength));
  });

  test("short detectors, every cut point: equal to maskText", async () => {
    const real = await loadReal();
    const names = ["card", "iban", "ssn", "phone", "ipv4", "ipv6", "aws_access_key"];
    const text =
      "\x1b[32mok\x1b[0m card 4111 1111 1111 1111, iban GB82 WEST 1234 5698 7654 32 é\r\n" +
      '{"ssn": "078-05-1120", "tel": "+1 415 555 2671", "ip": "10.0.0.1"}\n' +
      "v6 2001:db8::1 😀 key AKIAIOSFODNN7EXAMPLE,4012888888881881\n";
    const bytes = ENC.encode(text);
    for (const [, style] of STYLES) {
      const expected = real.maskText(text, names, style);
      expect(Object.keys(expected.counts).sort()).toEqual([...names].sort());
      const planted = ["4111 1111 1111 1111", "GB82 WEST 1234 5698 7654 32", "078-05-1120", "415 555 2671", "10.0.0.1", "2001:db8::1", "AKIAIOSFODNN7EXAMPLE", "4012888888881881"];
      expect(findPlanted(expected.text, planted)).toBeUndefined();
      for (const i of range(0, bytes.length + 1)) {
        const r = run(bytes, [i], realOptions(real, names, style));
        expect(r.masker.lookbehind).toBe(64);
        check(r, expected, planted);
      }
      check(run(bytes, range(1, bytes.length), realOptions(real, names, style)), expected, planted);
    }
  });

  for (const [label, style] of STYLES) {
    test(`all detectors, a 250 KB corpus in random chunks: equal to maskText, ${label}`, async () => {
      const real = await loadReal();
      const names = real.ALL_DETECTORS;
      const { text, planted } = realCorpus(21, 250_000);
      const bytes = ENC.encode(text);
      const expected = real.maskText(text, names, style);
      expect(planted.filter((v) => expected.text.includes(v)).slice(0, 5)).toEqual([]); // every planted value is one maskText finds
      // (seed, largest chunk, window); small chunks with a larger window: with the default one, each write rescans ~32 K units
      const chunkings = [[1, 4096, undefined], [2, 16384, undefined], [3, 2048, undefined], [4, 64, 40_000], [5, 300, 40_000], [6, 8192, 24_000], [7, 1, 21_000]] as const;
      for (const [seed, max, window] of chunkings) {
        const r = run(bytes, randomCuts(bytes.length, seed, max), { ...realOptions(real, names, style), window });
        check(r, expected, planted, true);
      }
    });
  }

  test("a PEM key whose END is past the span cap fails closed", async () => {
    const real = await loadReal();
    const names = real.ALL_DETECTORS;
    const rnd = prng(5);
    const key = pemBlock(rnd, 300); // ~19.5 KB: longer than PEM_MAX
    const body = key.split("\n").slice(1, -1);
    const before = "$ cat big.pem\r\n";
    const after = "\n$ echo done\r\n";
    const bytes = ENC.encode(before + key + after);
    for (let seed = 1; seed <= 20; seed++) {
      const r = run(bytes, randomCuts(bytes.length, seed, 4096), realOptions(real, names, REDACT));
      expect(DEC.decode(r.out)).toBe(before + "[REDACTED:pem_private_key]" + after);
      expect(findPlanted(DEC.decode(r.out), body)).toBeUndefined();
      expect(r.maxHeld).toBeLessThanOrEqual(bound(r.masker, true));
    }
  });
});

// ---- throughput ----

describe("throughput", () => {
  function measure(label: string, opts: Omit<StreamMaskerOptions, "onData">, data: Uint8Array, totalMB = 50, chunk = 16 * 1024): number {
    let bytesOut = 0;
    const m = new StreamMasker({ ...opts, idleMs: 0, onData: (c) => (bytesOut += c.length) });
    const reps = Math.ceil((totalMB * 1024 * 1024) / data.length);
    const t0 = performance.now();
    for (let r = 0; r < reps; r++) for (let p = 0; p < data.length; p += chunk) m.write(data.subarray(p, p + chunk));
    m.end();
    const s = (performance.now() - t0) / 1000;
    const mb = (reps * data.length) / 1024 / 1024;
    const rate = mb / s;
    console.log(`  ${label}: ${mb.toFixed(0)} MB in ${chunk / 1024} KiB chunks, ${s.toFixed(2)} s, ${rate.toFixed(1)} MB/s (out ${(bytesOut / 1024 / 1024).toFixed(0)} MB)`);
    return rate;
  }

  test("50 MB through the masker: no detectors (overhead floor) and local detectors", () => {
    const data = ENC.encode(corpus(11, 1 << 20).text);
    expect(measure("no detectors", { detectors: [], style: REDACT }, data)).toBeGreaterThan(5);
    expect(measure("local token+card+pem", { detectors: LOCAL_PEM, style: REDACT }, data)).toBeGreaterThan(5);
  });

  test.if(HAVE_REAL)("50 MB through the masker with the real detectors (all of them)", async () => {
    const real = await loadReal();
    const data = ENC.encode(realCorpus(12, 1 << 20, 0.9).text); // one line in ten holds a secret
    const opts = realOptions(real, real.ALL_DETECTORS, REDACT);
    const t0 = performance.now();
    real.maskText(DEC.decode(data), real.ALL_DETECTORS, REDACT);
    console.log(`  (one-shot maskText over 1 MB of the same text: ${(data.length / 1048576 / ((performance.now() - t0) / 1000)).toFixed(0)} MB/s)`);
    expect(measure("real, default window", opts, data)).toBeGreaterThan(1);
    const lookbehind = new StreamMasker({ ...opts, onData: () => {} }).lookbehind;
    expect(measure("real, window = 2 x lookbehind", { ...opts, window: 2 * lookbehind }, data)).toBeGreaterThan(1);
    expect(measure("real, default window, 4 KiB chunks", opts, data, 10, 4096)).toBeGreaterThan(0.5);
    expect(measure("real, window = 2 x lookbehind, 4 KiB chunks", { ...opts, window: 2 * lookbehind }, data, 10, 4096)).toBeGreaterThan(0.5);
  });
});
