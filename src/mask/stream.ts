/**
 * StreamMasker: masks a UTF-8 byte stream (SSH terminal output, an HTTP
 * body) chunk by chunk, so that a secret split across chunks is still seen
 * whole, with memory bounded by a look-behind window rather than by the
 * stream, and low latency for interactive sessions.
 *
 * Two lengths (UTF-16 code units):
 *   lookbehind  what detection needs: the longest maxLength of the detectors
 *               (without a span rule), at most WINDOW_CAP.
 *   window      the hold-back: held text never exceeds it (+ ESC_MAX). The
 *               default is the lookbehind. A larger window makes the masker
 *               scan less often (once per window - lookbehind of new text
 *               instead of on every write): more memory and latency, less
 *               CPU when chunks are small (see test/mask-stream.test.ts).
 *
 * How a write is handled
 *
 *   buf = ctx | held | new text
 *
 * * Bytes are decoded incrementally: an incomplete UTF-8 sequence at the end
 *   of a chunk waits for the next one. Valid UTF-8 goes through TextDecoder;
 *   bytes that are not valid UTF-8 (binary output, Latin-1 files) are kept as
 *   lone surrogates U+DC80..U+DCFF ("surrogateescape") and written back as
 *   the same bytes, so what is not a secret leaves byte for byte.
 * * While held <= window nothing is scanned. Then the detectors run over
 *   ctx + held + new. `ctx` is the last `lookbehind` units (at least
 *   CONTEXT) of text already emitted, as left context only: detectors read
 *   context before a value (a key name before a password, a keyword before an
 *   SSN, a boundary character) and maxLength covers it, so a value still held
 *   may have its key already emitted; with that much ctx, every held value
 *   is judged as in the whole text. Matches wholly inside ctx were dealt with
 *   before and are ignored; one that began in ctx is masked from the cut on.
 * * Cut point: everything before `cut` is masked and emitted, the rest held.
 *     1. cut = len - lookbehind. A match that is not yet complete must
 *        contain a character still to come, so (maxLength <= lookbehind) it
 *        starts after the cut: nothing before the cut can become part of one.
 *     2. A match found across the cut starts before len - lookbehind, so its
 *        whole possible extent (maxLength, plus a character of look-ahead) is
 *        already here: it is final. The cut moves forward to its end and it
 *        is emitted masked; held text thus stays <= lookbehind.
 *     3. An unclosed "opener" (see spans) caps the cut at its start.
 *     4. Never inside an ANSI escape sequence (CSI `ESC [ … final`, OSC
 *        `ESC ] … BEL|ESC \`, `ESC (B`-like; at most ESC_MAX units), never
 *        between the halves of a surrogate pair, never inside a match: each
 *        of these moves the cut back (repeated until stable), which is always
 *        safe — it only holds more. Held text <= window + ESC_MAX.
 * * Spans, for detectors whose match can be longer than any sensible window
 *   (PEM private keys: `-----BEGIN … PRIVATE KEY-----` … `-----END …`): an
 *   opener in the held text without its closer holds everything from the
 *   opener on, up to `spanCap` (the detector's maxLength, at most 64 KiB).
 *   While it is held, new chunks are only searched for the closer (no
 *   detector runs), so a slow trickle costs O(chunk). When the closer
 *   arrives, the detector sees the whole block. If the cap is hit, or the
 *   stream is flushed explicitly or ends while the block is open, the masker
 *   fails closed: it emits `[REDACTED:<name>]` in place of everything from
 *   the opener on and swallows the stream until the closer has gone by. An
 *   idle flush does not release an open block. A closed block longer than
 *   the cap (both ends arrived in one write) is masked whole as well, so the
 *   outcome does not depend on how the stream was cut.
 * * Idle flush: when no write arrives for `idleMs`, the held text is emitted
 *   (masked as it stands). Trade-off: a secret split by a pause longer than
 *   idleMs is seen as two pieces. What had left cannot be called back; if
 *   the first piece is still in ctx the detector may see the whole and the
 *   rest is masked, but a piece that matches nothing on its own has left
 *   raw. That is the interactive case (a person typing, a prompt waiting for
 *   input), where holding text back is not an option. For bulk bodies, pass
 *   idleMs: 0; then text leaves only by the cut rules, flush() or end().
 *
 * Memory: held <= window + ESC_MAX (+ spanCap while a span is open), ctx <=
 * lookbehind + one match, a few decoder bytes: independent of stream length.
 * CPU: a scan covers ctx + held + new, about 2 * lookbehind + what is new.
 *
 * Counts are per detector, added when a masked value is emitted (a value
 * held back and seen again is counted once). Where findAll would merge two
 * overlapping matches into one, and one of them was emitted before the other
 * was complete, the stream masks both parts separately (and counts two).
 */
import { isUtf8 } from "node:buffer";
import { AgateError } from "../core/errors.ts";
import type { Detector, Match, MaskCounts, MaskStyle } from "./types.ts";

/**
 * Largest default lookbehind: a detector (without a span rule) whose
 * maxLength is longer is listed in `uncovered`. 32 Ki covers every detector
 * of detectors.ts (the longest, jwt, 20484) but pem_private_key, which is a
 * span. Memory per stream is about 2 * lookbehind UTF-16 units.
 */
export const WINDOW_CAP = 32 * 1024;
/** Largest default hard cap for an open span (a PEM block without its END yet). */
export const SPAN_CAP = 64 * 1024;
/** Least already-emitted text kept as left context for the detectors (the window, if larger). */
export const CONTEXT = 64;
/** Longest escape sequence the cut will not split. */
export const ESC_MAX = 64;
/** Longest opener or closer a span rule may match; also the least window when spans are on. */
const SPAN_MARK_MAX = 128;

/** An opener/closer pair for a detector whose matches outgrow the window. */
export interface SpanRule {
  open: RegExp;
  close: RegExp;
}

/** The labels detectors.ts accepts: "[A-Z0-9 ]*PRIVATE KEY( BLOCK)?", header at most 80 characters. */
const PEM_TYPE = String.raw`[A-Z0-9 ]{0,58}PRIVATE KEY(?: BLOCK)?-----`;
/** Default span rules, applied to the detectors of these names when present. */
export const SPANS: Readonly<Record<string, SpanRule>> = {
  pem_private_key: {
    open: new RegExp(`-----BEGIN ${PEM_TYPE}`),
    close: new RegExp(`-----END ${PEM_TYPE}`),
  },
};

export interface StreamMaskerOptions {
  /** The named detectors to apply. */
  detectors: Detector[];
  style: MaskStyle;
  /**
   * How to replace a found value: the caller passes styles.maskValue bound to
   * the style. Optional only for `{kind: "redact"}` (`[REDACTED:<name>]`).
   */
  mask?: (value: string, detector: Detector) => string;
  /**
   * All matches in a text, sorted, not overlapping (e.g. detectors.findAll
   * bound to the names), so the stream agrees with one-shot masking. Default:
   * every detector's find, merged: earlier start wins, then the longer match.
   */
  find?: (text: string) => Match[];
  /**
   * Hold-back in UTF-16 units; default: the lookbehind, i.e. the longest
   * maxLength of the detectors without a span rule, at most WINDOW_CAP. A
   * window given here also bounds the lookbehind instead of WINDOW_CAP
   * (smaller: see `uncovered`; larger than the longest maxLength: fewer scans).
   */
  window?: number;
  /** Flush held-back text after this much quiet, in ms (default 20); 0 = only on flush()/end(). */
  idleMs?: number;
  /** Opener/closer rules by detector name (default SPANS). */
  spans?: Readonly<Record<string, SpanRule>>;
  /** Hard cap on an open span, in UTF-16 units; default: the longest maxLength of the span detectors, at most SPAN_CAP. */
  spanCap?: number;
  /** Receives the masked output; called synchronously from write/flush/end and from the idle timer. */
  onData: (chunk: Uint8Array) => void;
}

interface ActiveSpan {
  detector: string;
  open: RegExp;
  close: RegExp;
}

interface Pending {
  /** Position of the opener in buf. */
  at: number;
  /** Where the search for its closer goes on from. */
  scan: number;
  span: ActiveSpan;
}

const EMPTY = new Uint8Array(0);
const UTF8 = new TextDecoder("utf-8", { ignoreBOM: true });
const ENCODER = new TextEncoder();
/** A lone low surrogate U+DC80..U+DCFF: an undecodable byte kept as is. */
const ESCAPED_BYTE = /(?<![\uD800-\uDBFF])[\uDC80-\uDCFF]/;
const ESCAPED_BYTES = new RegExp(ESCAPED_BYTE.source, "g");

export class StreamMasker {
  /** Masked values emitted so far, per detector name. */
  readonly counts: MaskCounts = {};
  /** The hold-back in UTF-16 units: held text stays within window + ESC_MAX. */
  readonly window: number;
  /** How far back a match may start, in UTF-16 units (<= window). */
  readonly lookbehind: number;
  readonly idleMs: number;
  readonly spanCap: number;
  /** Detectors without a span rule whose maxLength exceeds the lookbehind: a match of theirs split across chunks may be missed. */
  readonly uncovered: readonly string[];

  readonly #detectors = new Map<string, Detector>();
  readonly #find: (text: string) => Match[];
  /** Whether there is anything to detect (no detectors: a pass-through with the cut rules). */
  readonly #detect: boolean;
  readonly #mask: (value: string, detector: Detector) => string;
  readonly #spans: ActiveSpan[] = [];
  /** How much emitted text is kept as ctx. */
  readonly #context: number;
  readonly #onData: (chunk: Uint8Array) => void;

  /** ctx + held text; buf[0, base) is ctx (emitted), buf[base, …) is held. */
  #buf = "";
  #base = 0;
  #pending: Pending | null = null;
  /** Inside a fail-closed span: everything is dropped until this span's closer. */
  #swallow: ActiveSpan | null = null;
  #swallowTail = "";
  /** Bytes of an incomplete UTF-8 sequence at the end of the last chunk. */
  #tail: Uint8Array = EMPTY;
  /** Whether any undecodable byte was seen (then output is checked for escapes). */
  #escapes = false;
  #ended = false;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #lastWrite = 0;

  constructor(options: StreamMaskerOptions) {
    const rules = options.spans ?? SPANS;
    let longest = 0;
    let longestSpan = 0;
    for (const d of options.detectors) {
      this.#detectors.set(d.name, d);
      const rule = rules[d.name];
      if (rule) {
        this.#spans.push({ detector: d.name, open: globalRegExp(rule.open), close: globalRegExp(rule.close) });
        longestSpan = Math.max(longestSpan, d.maxLength);
      } else longest = Math.max(longest, d.maxLength);
    }
    const given = options.window;
    if (given !== undefined && (!Number.isInteger(given) || given < 0)) throw new AgateError("MASK_CONFIG", `StreamMasker: window must be a whole number >= 0, got ${given}`);
    let lookbehind = Math.min(longest, given ?? WINDOW_CAP);
    let window = given ?? lookbehind;
    if (this.#spans.length > 0) {
      window = Math.max(window, SPAN_MARK_MAX);
      lookbehind = Math.max(lookbehind, SPAN_MARK_MAX);
    }
    this.window = window;
    this.lookbehind = lookbehind;
    this.#context = Math.max(CONTEXT, lookbehind);
    this.idleMs = options.idleMs ?? 20;
    // Holding a span longer than its detector's maxLength gains nothing: the
    // detector would not match it whole anyway.
    this.spanCap = Math.max(options.spanCap ?? Math.min(SPAN_CAP, longestSpan), SPAN_MARK_MAX);
    this.uncovered = options.detectors.filter((d) => !rules[d.name] && d.maxLength > lookbehind).map((d) => d.name);
    this.#onData = options.onData;

    const detectors = options.detectors;
    this.#find = options.find ?? ((text) => detectors.flatMap((d) => d.find(text)));
    this.#detect = options.find !== undefined || detectors.length > 0;
    if (options.mask) this.#mask = options.mask;
    else if (options.style.kind === "redact") this.#mask = (_value, d) => `[REDACTED:${d.name}]`;
    else throw new AgateError("MASK_CONFIG", `StreamMasker: style "${options.style.kind}" needs a mask function (styles.maskValue)`);
  }

  /** Held-back text not yet emitted, in UTF-16 units (ctx and decoder bytes not included). */
  get held(): number {
    return this.#buf.length - this.#base;
  }

  /** Whether an opener is held without its closer (a PEM block in transit). */
  get spanOpen(): boolean {
    return this.#pending !== null;
  }

  /** Masks and emits what is safe; holds the rest. Synchronous. */
  write(chunk: Uint8Array): void {
    if (this.#ended) throw new AgateError("MASK_ENDED", "StreamMasker: write after end");
    const text = this.#decode(chunk, false);
    if (text.length > 0) this.#push(text);
    this.#armIdle();
  }

  /** Emits everything held, masked. An open span fails closed (redacted until its closer). */
  flush(): void {
    if (this.#ended) return;
    this.#process("flush");
  }

  /** End of stream: decodes the last bytes, flushes, and stops. */
  end(): void {
    if (this.#ended) return;
    const text = this.#decode(EMPTY, true);
    if (text.length > 0) this.#push(text);
    this.#process("flush");
    this.#ended = true;
    this.#swallow = null;
    this.#swallowTail = "";
    this.#buf = "";
    this.#base = 0;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  // ---- decoding and encoding ----

  #decode(chunk: Uint8Array, final: boolean): string {
    let bytes = chunk;
    if (this.#tail.length > 0) {
      bytes = new Uint8Array(this.#tail.length + chunk.length);
      bytes.set(this.#tail);
      bytes.set(chunk, this.#tail.length);
    }
    const end = final ? bytes.length : completeEnd(bytes);
    this.#tail = end < bytes.length ? bytes.slice(end) : EMPTY;
    const body = end < bytes.length ? bytes.subarray(0, end) : bytes;
    if (body.length === 0) return "";
    if (isUtf8(body)) return UTF8.decode(body);
    this.#escapes = true;
    return decodeEscaped(body);
  }

  #emit(text: string): void {
    if (text.length === 0) return;
    this.#onData(this.#escapes ? encodeEscaped(text) : ENCODER.encode(text));
  }

  // ---- the masking ----

  #push(text: string): void {
    if (this.#swallow) {
      text = this.#swallowUntilClose(text);
      if (text.length === 0) return;
    }
    const before = this.#buf.length;
    this.#buf += text;
    const p = this.#pending;
    if (p) {
      // An open span: only look for its closer in what is new.
      const from = Math.max(p.scan, before - SPAN_MARK_MAX);
      p.span.close.lastIndex = from;
      const closed = p.span.close.test(this.#buf);
      p.scan = Math.max(p.scan, this.#buf.length - SPAN_MARK_MAX);
      if (!closed && this.#buf.length - p.at <= this.spanCap) return;
    } else if (this.#buf.length - this.#base <= this.window) {
      return; // nothing could be emitted yet
    }
    this.#process("write");
  }

  /**
   * One pass over buf. "write": emit what is safe by the cut rules. "idle":
   * emit everything but an open span. "flush": emit everything; an open span
   * fails closed.
   */
  #process(mode: "write" | "idle" | "flush"): void {
    if (this.#swallow) return;
    const buf = this.#buf;
    const base = this.#base;
    const len = buf.length;
    if (len === base && !this.#pending) return;
    const { pending, oversize } = this.#scanSpans(buf, base);
    const found = this.#detect ? this.#find(buf) : [];
    const all = mergeMatches(oversize.length > 0 ? [...oversize, ...found] : found);
    // Live matches: those reaching into held text; one that began in ctx is
    // clipped to base (its start was emitted before: mask what is left).
    const live: Match[] = [];
    for (const m of all) {
      if (m.end <= base) continue;
      live.push(m.start < base ? { start: base, end: m.end, detector: m.detector } : m);
    }
    const failClosed = pending !== null && (mode === "flush" || len - pending.at > this.spanCap);

    let cut: number;
    if (mode === "write" && !failClosed) {
      cut = Math.max(base, len - this.lookbehind);
      for (const m of live) {
        if (m.start >= cut) break;
        if (cut < m.end) cut = m.end; // final: emit it whole (rule 2)
      }
      if (pending) cut = Math.min(cut, pending.at);
      cut = this.#settle(buf, base, cut, live, true);
    } else {
      cut = pending ? pending.at : len;
      cut = this.#settle(buf, base, cut, live, false);
    }

    let out = this.#masked(buf, base, cut, live);
    if (pending && failClosed) {
      // Fail closed: redact from the opener (or the match it sits in) on, and
      // drop everything until the closer has gone by.
      this.#count(pending.span.detector);
      out += `[REDACTED:${pending.span.detector}]`;
      this.#swallow = pending.span;
      this.#swallowTail = buf.slice(Math.max(cut, len - SPAN_MARK_MAX));
      this.#pending = null;
      this.#keepContext(buf, cut, all, cut); // nothing held
    } else {
      const shift = this.#keepContext(buf, cut, all, len);
      this.#pending = pending ? { at: pending.at - shift, scan: pending.scan - shift, span: pending.span } : null;
    }
    // State is settled before the callback runs: onData may write again.
    this.#emit(out);
  }

  /** buf[base, cut) with the live matches inside it masked (and counted). */
  #masked(buf: string, base: number, cut: number, live: Match[]): string {
    if (cut <= base) return "";
    let out = "";
    let p = base;
    for (const m of live) {
      if (m.start >= cut) break;
      if (m.end > cut) break; // cannot happen: the cut is settled outside matches
      const detector = this.#detectors.get(m.detector) ?? { name: m.detector, maxLength: 0, find: () => [] };
      out += buf.slice(p, m.start) + this.#mask(buf.slice(m.start, m.end), detector);
      this.#count(m.detector);
      p = m.end;
    }
    return out + buf.slice(p, cut);
  }

  #count(detector: string): void {
    this.counts[detector] = (this.counts[detector] ?? 0) + 1;
  }

  /**
   * Makes buf[cut, end) the held text, keeping #context units before the
   * cut as ctx (more if that would start inside a match or a surrogate pair).
   * Returns how far buf positions moved.
   */
  #keepContext(buf: string, cut: number, all: Match[], end: number): number {
    let s = Math.max(0, cut - this.#context);
    for (const m of all) {
      if (m.start >= s) break;
      if (s < m.end) {
        // Keep the whole match: a later match of another detector that
        // overlaps it is then seen whole and its part past the cut masked.
        s = m.start;
        break;
      }
    }
    if (s > 0 && isLow(buf.charCodeAt(s)) && isHigh(buf.charCodeAt(s - 1))) s--;
    this.#buf = buf.slice(s, end);
    this.#base = cut - s;
    return s;
  }

  /** Moves the cut back until it is outside escape sequences, surrogate pairs and matches (rule 4). */
  #settle(buf: string, base: number, cut: number, live: Match[], escapes: boolean): number {
    for (;;) {
      const before = cut;
      if (escapes) cut = escapeStart(buf, base, cut);
      if (cut > base && cut < buf.length && isLow(buf.charCodeAt(cut)) && isHigh(buf.charCodeAt(cut - 1))) cut--;
      for (const m of live) {
        if (m.start >= cut) break;
        if (cut < m.end) {
          cut = m.start;
          break;
        }
      }
      if (cut === before) return cut;
    }
  }

  /**
   * The spans in held text: the first opener whose closer is not in buf, and
   * closed blocks longer than the cap (whole blocks to redact, whatever the
   * detector makes of them: it would not match them whole).
   */
  #scanSpans(buf: string, base: number): { pending: Pending | null; oversize: Match[] } {
    let pending: Pending | null = null;
    const oversize: Match[] = [];
    for (const span of this.#spans) {
      let pos = base;
      for (;;) {
        span.open.lastIndex = pos;
        const o = span.open.exec(buf);
        if (!o || (pending && o.index >= pending.at)) break;
        const openEnd = o.index + o[0].length;
        span.close.lastIndex = openEnd;
        const c = span.close.exec(buf);
        if (!c) {
          pending = { at: o.index, scan: Math.max(openEnd, buf.length - SPAN_MARK_MAX), span };
          break;
        }
        pos = c.index + c[0].length;
        if (pos - o.index > this.spanCap) oversize.push({ start: o.index, end: pos, detector: span.detector });
      }
    }
    return { pending, oversize };
  }


  /** Drops text until the swallowed span's closer; returns what follows it. */
  #swallowUntilClose(text: string): string {
    const span = this.#swallow!;
    const s = this.#swallowTail + text;
    span.close.lastIndex = 0;
    const c = span.close.exec(s);
    if (!c) {
      this.#swallowTail = s.slice(-SPAN_MARK_MAX);
      return "";
    }
    this.#swallow = null;
    this.#swallowTail = "";
    this.#buf = ""; // what came before the span is no context for what follows it
    this.#base = 0;
    return s.slice(c.index + c[0].length);
  }

  // ---- idle flush ----

  #armIdle(): void {
    if (this.idleMs <= 0 || this.#buf.length === this.#base) return;
    this.#lastWrite = performance.now();
    if (this.#timer === undefined) this.#timer = setTimeout(this.#onIdle, this.idleMs);
  }

  readonly #onIdle = (): void => {
    this.#timer = undefined;
    if (this.#ended) return;
    const quiet = performance.now() - this.#lastWrite;
    if (quiet + 1 < this.idleMs) {
      this.#timer = setTimeout(this.#onIdle, this.idleMs - quiet);
      return;
    }
    this.#process("idle");
  };
}

// ---- helpers ----

function globalRegExp(re: RegExp): RegExp {
  return new RegExp(re.source, re.flags.includes("g") ? re.flags : re.flags + "g");
}

/** Sorts matches and drops overlaps: the earlier start wins, then the longer match. */
export function mergeMatches(matches: Match[]): Match[] {
  if (matches.length < 2) return matches;
  const sorted = [...matches].sort((a, b) => a.start - b.start || b.end - a.end);
  const out: Match[] = [];
  let end = -1;
  for (const m of sorted) {
    if (m.end <= m.start || m.start < end) continue;
    out.push(m);
    end = m.end;
  }
  return out;
}

function isHigh(c: number): boolean {
  return c >= 0xd800 && c <= 0xdbff;
}

function isLow(c: number): boolean {
  return c >= 0xdc00 && c <= 0xdfff;
}

/**
 * If `cut` falls inside an escape sequence that starts at or after `base`,
 * the sequence's start; else `cut`. A sequence still incomplete at the end of
 * buf counts as running on.
 */
function escapeStart(buf: string, base: number, cut: number): number {
  const stop = Math.max(base, cut - ESC_MAX);
  for (let e = Math.min(cut, buf.length) - 1; e >= stop; e--) {
    if (buf.charCodeAt(e) !== 0x1b) continue;
    return cut < escapeEnd(buf, e) ? e : cut;
  }
  return cut;
}

/** End (exclusive) of the escape sequence at `e`; Infinity if buf ends inside it. */
function escapeEnd(buf: string, e: number): number {
  const len = buf.length;
  const limit = Math.min(len, e + ESC_MAX);
  if (e + 1 >= len) return Infinity;
  const kind = buf.charCodeAt(e + 1);
  let j = e + 2;
  if (kind === 0x5b) {
    // CSI: parameters and intermediates 0x20..0x3f, final 0x40..0x7e
    for (; j < limit; j++) {
      const c = buf.charCodeAt(j);
      if (c >= 0x40 && c <= 0x7e) return j + 1;
      if (c < 0x20 || c > 0x3f) return j; // malformed: ends here
    }
  } else if (kind === 0x5d || kind === 0x50 || kind === 0x5f || kind === 0x5e || kind === 0x58) {
    // OSC, DCS, APC, PM, SOS: up to BEL or ESC \
    for (; j < limit; j++) {
      const c = buf.charCodeAt(j);
      if (c === 0x07) return j + 1;
      if (c === 0x1b) return j + 1 >= len ? Infinity : buf.charCodeAt(j + 1) === 0x5c ? j + 2 : j;
    }
  } else {
    // ESC, intermediates 0x20..0x2f, one final character
    for (j = e + 1; j < limit; j++) {
      const c = buf.charCodeAt(j);
      if (c < 0x20 || c > 0x2f) return j + 1;
    }
  }
  return j >= len ? Infinity : j; // buf ends inside it, or too long to be one
}

/** Length of the prefix of `bytes` that holds no incomplete UTF-8 sequence at its end. */
function completeEnd(bytes: Uint8Array): number {
  const n = bytes.length;
  for (let k = 1; k <= 3 && k <= n; k++) {
    const b = bytes[n - k]!;
    if ((b & 0xc0) === 0x80) continue; // continuation byte: look further back
    if (b < 0xc0 || b >= 0xf8) return n;
    const need = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : 2;
    return need > k ? n - k : n;
  }
  return n;
}

/** Length of the valid UTF-8 sequence at `i`, or 0 if the byte there starts none. */
function sequenceLength(b: Uint8Array, i: number): number {
  const c = b[i]!;
  if (c < 0x80) return 1;
  const n = b.length;
  const cont = (k: number, lo = 0x80, hi = 0xbf) => i + k < n && b[i + k]! >= lo && b[i + k]! <= hi;
  if (c >= 0xc2 && c <= 0xdf) return cont(1) ? 2 : 0;
  if (c >= 0xe0 && c <= 0xef) {
    const ok1 = c === 0xe0 ? cont(1, 0xa0) : c === 0xed ? cont(1, 0x80, 0x9f) : cont(1);
    return ok1 && cont(2) ? 3 : 0;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    const ok1 = c === 0xf0 ? cont(1, 0x90) : c === 0xf4 ? cont(1, 0x80, 0x8f) : cont(1);
    return ok1 && cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}

/** Decodes bytes that are not all valid UTF-8: each bad byte becomes U+DC00 + byte. */
function decodeEscaped(body: Uint8Array): string {
  let out = "";
  let run = 0;
  let i = 0;
  while (i < body.length) {
    const k = sequenceLength(body, i);
    if (k > 0) {
      i += k;
      continue;
    }
    if (i > run) out += UTF8.decode(body.subarray(run, i));
    out += String.fromCharCode(0xdc00 | body[i]!);
    i++;
    run = i;
  }
  if (run < body.length) out += UTF8.decode(body.subarray(run));
  return out;
}

/** Encodes text to UTF-8, turning escaped bytes (lone U+DC80..U+DCFF) back into themselves. */
function encodeEscaped(text: string): Uint8Array {
  if (!ESCAPED_BYTE.test(text)) return ENCODER.encode(text);
  const parts: Uint8Array[] = [];
  let total = 0;
  let p = 0;
  ESCAPED_BYTES.lastIndex = 0;
  for (let m = ESCAPED_BYTES.exec(text); m; m = ESCAPED_BYTES.exec(text)) {
    if (m.index > p) {
      const part = ENCODER.encode(text.slice(p, m.index));
      parts.push(part);
      total += part.length;
    }
    parts.push(Uint8Array.of(text.charCodeAt(m.index) & 0xff));
    total++;
    p = m.index + 1;
  }
  if (p < text.length) {
    const part = ENCODER.encode(text.slice(p));
    parts.push(part);
    total += part.length;
  }
  const out = new Uint8Array(total);
  let o = 0;
  for (const part of parts) {
    out.set(part, o);
    o += part.length;
  }
  return out;
}
