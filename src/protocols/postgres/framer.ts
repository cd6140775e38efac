import { ProtocolViolation } from "./wire.ts";

/** One complete message: views into the received bytes, valid until the next push(). */
export interface Frame {
  /** Type byte (e.g. 0x51 'Q'); 0 for untyped startup-phase packets. */
  type: number;
  /** Body without type and length. */
  body: Buffer;
  /** The whole message as received, for forwarding unchanged. */
  raw: Buffer;
}

/** A frame whose body view is made only when asked for (most relayed messages never need it). */
class RawFrame implements Frame {
  constructor(
    readonly type: number,
    readonly raw: Buffer,
    private readonly head: number,
  ) {}
  get body(): Buffer {
    return this.raw.subarray(this.head);
  }
}

/**
 * Splits a byte stream into PostgreSQL messages without copying when a
 * message lies inside one chunk. Lengths are checked against `maxBytes`
 * before anything is buffered, so a hostile peer cannot make us allocate.
 */
export class Framer {
  private chunks: Buffer[] = [];
  private size = 0;
  /** When true the next packet has no type byte (startup phase). */
  untyped: boolean;

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
    const head = this.untyped ? 4 : 5;
    if (this.size < head) return null;
    let first = this.chunks[0]!;
    if (first.length < head) first = this.flatten();
    const lenAt = this.untyped ? 0 : 1;
    const len = first.readInt32BE(lenAt);
    if (len < 4) throw new ProtocolViolation(`invalid message length ${len}`);
    if (len > this.maxBytes) {
      throw new ProtocolViolation(`message of ${len} bytes exceeds the limit of ${this.maxBytes} bytes`);
    }
    const total = lenAt + len;
    if (this.size < total) return null; // wait without copying partial bodies
    if (first.length < total) first = this.flatten();
    const raw = first.subarray(0, total);
    if (total === first.length) this.chunks.shift();
    else this.chunks[0] = first.subarray(total);
    this.size -= total;
    return new RawFrame(this.untyped ? 0 : raw[0]!, raw, head);
  }

  private flatten(): Buffer {
    const all = Buffer.concat(this.chunks, this.size);
    this.chunks = [all];
    return all;
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

  add(b: Buffer): void {
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

  get empty(): boolean {
    return this.first === null && this.parts.length === 0;
  }

  /** Everything added, as one buffer (a copy only when the parts were not adjacent). */
  take(): Buffer {
    this.close();
    const parts = this.parts;
    this.parts = [];
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }

  private close(): void {
    const first = this.first;
    if (first === null) return;
    this.parts.push(this.size === first.length ? first : Buffer.from(first.buffer, first.byteOffset, this.size));
    this.first = null;
  }
}
