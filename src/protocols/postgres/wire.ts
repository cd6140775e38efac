/**
 * PostgreSQL wire protocol v3 primitives: a message writer that back-patches
 * the length (like porsager's bytes.js and pgproto3's beginMessage), a framer
 * that yields zero-copy views of complete messages, and small readers.
 *
 * Reference: https://www.postgresql.org/docs/current/protocol-message-formats.html
 */

/** Startup packet codes (protocol-message-formats, "StartupMessage" & co). */
export const PROTOCOL_3_0 = 196608; // 3 << 16
export const SSL_REQUEST_CODE = 80877103;
export const GSSENC_REQUEST_CODE = 80877104;
export const CANCEL_REQUEST_CODE = 80877102;

/**
 * PostgreSQL rejects startup packets over 10000 bytes
 * (MAX_STARTUP_PACKET_LENGTH in src/include/libpq/pqcomm.h).
 */
export const MAX_STARTUP_PACKET_BYTES = 10000;

const decoder = new TextDecoder();

/**
 * Build one typed message. `fill` writes the body.
 * Example: `message(0x5a, (w) => w.u8(0x49))` is ReadyForQuery(idle).
 */
export function message(type: number, fill?: (w: BodyWriter) => void): Buffer {
  const w = new BodyWriter();
  fill?.(w);
  const body = w.done();
  const out = Buffer.allocUnsafe(5 + body.length);
  out[0] = type;
  out.writeInt32BE(4 + body.length, 1);
  out.set(body, 5);
  return out;
}

/** Build an untyped startup-phase packet (StartupMessage, CancelRequest, SSLRequest). */
export function startupPacket(fill: (w: BodyWriter) => void): Buffer {
  const w = new BodyWriter();
  fill(w);
  const body = w.done();
  const out = Buffer.allocUnsafe(4 + body.length);
  out.writeInt32BE(4 + body.length, 0);
  out.set(body, 4);
  return out;
}

/** Appends message body fields to a growable buffer. */
export class BodyWriter {
  private buf = Buffer.allocUnsafe(128);
  private pos = 0;

  private ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }
  u8(v: number): this {
    this.ensure(1);
    this.buf[this.pos++] = v;
    return this;
  }
  i16(v: number): this {
    this.ensure(2);
    this.buf.writeInt16BE(v, this.pos);
    this.pos += 2;
    return this;
  }
  i32(v: number): this {
    this.ensure(4);
    this.buf.writeInt32BE(v, this.pos);
    this.pos += 4;
    return this;
  }
  /** A NUL-terminated string. */
  cstr(s: string): this {
    const n = Buffer.byteLength(s);
    this.ensure(n + 1);
    this.buf.write(s, this.pos);
    this.pos += n;
    this.buf[this.pos++] = 0;
    return this;
  }
  bytes(b: Uint8Array): this {
    this.ensure(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
    return this;
  }
  done(): Buffer {
    return this.buf.subarray(0, this.pos);
  }
}

/** Reads fields from one message body; every read checks bounds first. */
export class Reader {
  pos = 0;
  constructor(readonly buf: Buffer) {}

  get remaining(): number {
    return this.buf.length - this.pos;
  }

  private need(n: number): void {
    if (n < 0 || this.pos + n > this.buf.length) {
      throw new ProtocolViolation(`message too short: need ${n} bytes at offset ${this.pos}, have ${this.remaining}`);
    }
  }

  u8(): number {
    this.need(1);
    return this.buf[this.pos++]!;
  }

  i16(): number {
    this.need(2);
    const v = this.buf.readInt16BE(this.pos);
    this.pos += 2;
    return v;
  }

  i32(): number {
    this.need(4);
    const v = this.buf.readInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  /** A zero-terminated string, read as UTF-8 or by `decode`. */
  cstr(decode?: (bytes: Uint8Array) => string): string {
    const end = this.buf.indexOf(0, this.pos);
    if (end < 0) throw new ProtocolViolation(`unterminated string at offset ${this.pos}`);
    const bytes = this.buf.subarray(this.pos, end);
    const s = decode ? decode(bytes) : decoder.decode(bytes);
    this.pos = end + 1;
    return s;
  }

  bytes(n: number): Buffer {
    this.need(n);
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
}

/** A client or server broke the protocol; answered with SQLSTATE 08P01, then the connection closes. */
export class ProtocolViolation extends Error {
  override readonly name = "ProtocolViolation";
}
