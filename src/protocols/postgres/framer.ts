import { ProtocolViolation } from "./wire.ts";

/** One complete message: views into the received bytes, valid until the next push(). */
export interface Frame {
  /** Type byte (e.g. 0x51 'Q'); 0 for untyped startup-phase packets. */
  type: number;
  /** Body without type and length. */
  body: Buffer;
  /** The whole message as received, for forwarding unchanged. */
  raw: Buffer;
  /** Where `raw` is: bytes [at, end) of `chunk` (to read or forward it without making the view). */
  chunk: Buffer;
  at: number;
  end: number;
}

/** A frame whose views are made only when asked for (most relayed messages never need a body, rows not even `raw`). */
class RawFrame implements Frame {
  constructor(
    readonly type: number,
    readonly chunk: Buffer,
    readonly at: number,
    readonly end: number,
    private readonly head: number,
  ) {}
  private view: Buffer | undefined;
  get raw(): Buffer {
    this.view ??= this.at === 0 && this.end === this.chunk.length ? this.chunk : this.chunk.subarray(this.at, this.end);
    return this.view;
  }
  get body(): Buffer {
    return this.chunk.subarray(this.at + this.head, this.end);
  }
}

/** CopyData ('d'). */
const COPY_DATA = 0x64;
/** PostgreSQL's own ceiling for one message, CopyData included (PQ_LARGE_MESSAGE_LIMIT). */
const LARGE_MESSAGE_LIMIT = 0x3fffffff;
/** A CopyData message longer than this that has not arrived whole is passed on in pieces. */
const COPY_PIECE_ABOVE = 64 * 1024;

/**
 * Splits a byte stream into PostgreSQL messages without copying when a
 * message lies inside one chunk. Lengths are checked against `maxBytes`
 * before anything is buffered, so a hostile peer cannot make us allocate.
 *
 * With `streamCopyData`, CopyData is exempt from `maxBytes` (up to
 * PostgreSQL's 1 GB) and never buffered whole: a long one that has not
 * arrived whole is returned in pieces as its bytes arrive, each a frame of
 * type 'd' whose `raw` is the next part of the message (the first starts
 * with its header), to be relayed unchanged.
 */
export class Framer {
  private chunks: Buffer[] = [];
  /** Where the bytes not yet returned start in chunks[0] (the rest of a chunk is not re-sliced per message). */
  private pos = 0;
  private size = 0;
  /** When true the next packet has no type byte (startup phase). */
  untyped: boolean;
  /** Pass CopyData on in pieces (the query phase; see above). */
  streamCopyData = false;
  /** Bytes of the CopyData message being passed on in pieces not yet returned. */
  private copyLeft = 0;

  constructor(
    public maxBytes: number,
    opts: { untyped?: boolean } = {},
  ) {
    this.untyped = opts.untyped ?? false;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.size += chunk.length;
  }

  /** Bytes received but not yet returned as frames. */
  get buffered(): number {
    return this.size;
  }

  /** Next complete message, or null when more bytes are needed. */
  next(): Frame | null {
    if (this.copyLeft > 0) return this.copyPiece();
    const head = this.untyped ? 4 : 5;
    if (this.size < head) return null;
    let first = this.chunks[0]!;
    if (first.length - this.pos < head) first = this.joinFirst(head);
    const at = this.pos;
    const lenAt = this.untyped ? 0 : 1;
    const len = first.readInt32BE(at + lenAt);
    if (len < 4) throw new ProtocolViolation(`invalid message length ${len}`);
    const total = lenAt + len;
    const copy = this.streamCopyData && !this.untyped && first[at] === COPY_DATA;
    if (copy && len > LARGE_MESSAGE_LIMIT) throw new ProtocolViolation(`CopyData message of ${len} bytes exceeds PostgreSQL's limit of ${LARGE_MESSAGE_LIMIT} bytes`);
    if (len > this.maxBytes && !copy) {
      throw new ProtocolViolation(`message of ${len} bytes exceeds the limit of ${this.maxBytes} bytes`);
    }
    if (copy && this.size < total && (len > COPY_PIECE_ABOVE || len > this.maxBytes)) {
      this.copyLeft = total;
      return this.copyPiece();
    }
    if (this.size < total) return null; // wait without copying partial bodies
    if (first.length - this.pos < total) first = this.joinFirst(total);
    const from = this.take(first, total);
    return new RawFrame(this.untyped ? 0 : first[from]!, first, from, from + total, head);
  }

  /** Take the next `n` bytes of `first` (chunks[0], which holds them); returns where they start in it. The chunk is dropped once all of it is taken. */
  private take(first: Buffer, n: number): number {
    const at = this.pos;
    if (at + n === first.length) {
      this.chunks.shift();
      this.pos = 0;
    } else this.pos = at + n;
    this.size -= n;
    return at;
  }

  /** The next part of the CopyData message being passed on: what has arrived of it, one chunk at most. */
  private copyPiece(): Frame | null {
    if (this.size === 0) return null;
    const first = this.chunks[0]!;
    const n = Math.min(first.length - this.pos, this.copyLeft);
    const from = this.take(first, n);
    this.copyLeft -= n;
    return new RawFrame(COPY_DATA, first, from, from + n, 0);
  }

  /**
   * The first `n` bytes (which have arrived) joined into one first chunk:
   * only the message that spans chunks is copied, the rest of the last
   * chunk it takes from stays where it is (so the bytes after it are not
   * copied, and stay one run with what follows them in that chunk).
   */
  private joinFirst(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    let o = 0;
    while (o < n) {
      const c = this.chunks[0]!;
      const take = Math.min(c.length - this.pos, n - o);
      o += c.copy(out, o, this.pos, this.pos + take);
      if (this.pos + take === c.length) {
        this.chunks.shift();
        this.pos = 0;
      } else this.pos += take;
    }
    // the chunk it ended in keeps its rest; `pos` is for chunks[0] only
    if (this.pos > 0) this.chunks[0] = this.chunks[0]!.subarray(this.pos);
    this.chunks.unshift(out);
    this.pos = 0;
    return out;
  }
}

/**
 * Collects buffers to send and joins neighbours that are adjacent views of
 * the same memory, so relaying a chunk's messages unchanged sends the chunk
 * itself instead of a copy.
 */
export class Outbox {
  private parts: Buffer[] = [];
  // The run of adjacent views being collected: its first buffer, and where it ends in that memory.
  private first: Buffer | null = null;
  private end = 0;
  private size = 0;
  // When the run ends with bytes added by addRange: that buffer and where they end in it (so the next range
  // of the same buffer extends the run without reading `.buffer`, which costs a call per row).
  private src: Buffer | null = null;
  private srcEnd = 0;

  add(b: Buffer): void {
    this.src = null;
    const first = this.first;
    if (first !== null && b.byteOffset === this.end && b.buffer === first.buffer) {
      this.end += b.length;
      this.size += b.length;
      return;
    }
    this.close();
    this.first = b;
    this.end = b.byteOffset + b.length;
    this.size = b.length;
  }

  /** Bytes [a, b) of `buf`, as add(buf.subarray(a, b)), without making that view when they extend the run being collected. */
  addRange(buf: Buffer, a: number, b: number): void {
    if (buf === this.src && a === this.srcEnd) {
      this.end += b - a;
      this.size += b - a;
      this.srcEnd = b;
      return;
    }
    const first = this.first;
    if (first !== null && buf.byteOffset + a === this.end && buf.buffer === first.buffer) {
      this.end += b - a;
      this.size += b - a;
    } else this.add(buf.subarray(a, b));
    this.src = buf;
    this.srcEnd = b;
  }

  get empty(): boolean {
    return this.first === null && this.parts.length === 0;
  }

  /** Everything added, as runs of adjacent views (nothing is copied). */
  takeParts(): Buffer[] {
    this.close();
    const parts = this.parts;
    this.parts = [];
    return parts;
  }

  /** Everything added, as one buffer (a copy only when the parts were not adjacent). */
  take(): Buffer {
    this.close();
    const parts = this.parts;
    this.parts = [];
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }

  private close(): void {
    this.src = null;
    const first = this.first;
    if (first === null) return;
    this.parts.push(this.size === first.length ? first : Buffer.from(first.buffer, first.byteOffset, this.size));
    this.first = null;
  }
}
