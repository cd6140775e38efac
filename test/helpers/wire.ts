/**
 * A raw PostgreSQL wire client for tests that need exact control of what is
 * sent in one write (pipelining, batches without Sync): log in with the test
 * API key, send bytes, read the backend's messages.
 */
import net from "node:net";
import { message, startupPacket } from "../../src/protocols/postgres/wire.ts";

export interface BackendMessage {
  type: string;
  body: Buffer;
}

export interface RawSession {
  /** Write bytes as one write. */
  send(bytes: Buffer | Buffer[]): void;
  /** Messages received until `count` ReadyForQuery messages have arrived (or the connection closed). */
  untilReady(count?: number): Promise<BackendMessage[]>;
  /** Messages received up to and including the first of type `type` (or until the connection closed). */
  until(type: string): Promise<BackendMessage[]>;
  /** Whether the server closed the connection. */
  readonly closed: boolean;
  close(): void;
}

/** `localAddress`: the client's own address (any of 127.0.0.0/8 reaches a loopback listener). */
export async function rawSession(port: number, opts: { user: string; password: string; database?: string; localAddress?: string }): Promise<RawSession> {
  const s = net.connect({ port, host: "127.0.0.1", ...(opts.localAddress ? { localAddress: opts.localAddress } : {}) });
  let buf = Buffer.alloc(0);
  let closed = false;
  const queue: BackendMessage[] = [];
  let wake: (() => void) | undefined;
  s.on("data", (c: Buffer) => {
    buf = Buffer.concat([buf, c]);
    while (buf.length >= 5) {
      const len = buf.readInt32BE(1);
      if (buf.length < len + 1) break;
      queue.push({ type: String.fromCharCode(buf[0]!), body: Buffer.from(buf.subarray(5, len + 1)) });
      buf = buf.subarray(len + 1);
    }
    wake?.();
  });
  s.on("close", () => {
    closed = true;
    wake?.();
  });
  await new Promise<void>((resolve, reject) => {
    s.once("connect", resolve);
    s.once("error", reject);
  });
  const session: RawSession = {
    send(bytes) {
      s.write(Array.isArray(bytes) ? Buffer.concat(bytes) : bytes);
    },
    untilReady(count = 1) {
      let seen = 0;
      return read((m) => m.type === "Z" && ++seen === count);
    },
    until(type) {
      return read((m) => m.type === type);
    },
    get closed() {
      return closed;
    },
    close() {
      s.destroy();
    },
  };
  async function read(done: (m: BackendMessage) => boolean): Promise<BackendMessage[]> {
    const out: BackendMessage[] = [];
    for (;;) {
      while (queue.length > 0) {
        const m = queue.shift()!;
        out.push(m);
        if (done(m)) return out;
        if (m.type === "R" && m.body.readInt32BE(0) === 3) s.write(message(0x70, (w) => w.cstr(opts.password)));
      }
      if (closed) return out;
      await new Promise<void>((resolve) => (wake = resolve));
    }
  }
  s.write(startupPacket((w) => w.i32(196608).cstr("user").cstr(opts.user).cstr("database").cstr(opts.database ?? "app").u8(0)));
  const login = await session.untilReady();
  if (!login.some((m) => m.type === "Z")) throw Object.assign(new Error(`login failed: ${login.map((m) => m.body.toString()).join(" | ")}`), { messages: login });
  return session;
}

// ── frontend messages ───────────────────────────────────────────────────

export const Query = (sql: string | Buffer) => message(0x51, (w) => w.bytes(typeof sql === "string" ? Buffer.from(sql) : sql).u8(0));
export const Parse = (sql: string | Buffer, name = "") => message(0x50, (w) => w.cstr(name).bytes(typeof sql === "string" ? Buffer.from(sql) : sql).u8(0).i16(0));
export const Bind = (statement = "", portal = "") => message(0x42, (w) => w.cstr(portal).cstr(statement).i16(0).i16(0).i16(0));
export const Execute = (portal = "") => message(0x45, (w) => w.cstr(portal).i32(0));
export const Sync = message(0x53);
export const Flush = message(0x48);

/** Parse, Bind and Execute of one unnamed statement (no Sync). */
export const run = (sql: string | Buffer) => [Parse(sql), Bind(), Execute()];

/** SQLSTATE and message of an ErrorResponse body. */
export function errorOf(m: BackendMessage): { code: string; message: string } {
  const fields: Record<string, string> = {};
  let i = 0;
  while (i < m.body.length && m.body[i] !== 0) {
    const k = String.fromCharCode(m.body[i]!);
    const end = m.body.indexOf(0, i + 1);
    fields[k] = m.body.toString("utf8", i + 1, end);
    i = end + 1;
  }
  return { code: fields.C ?? "", message: fields.M ?? "" };
}

/** The fields of a DataRow body, as raw bytes (null for NULL). */
export function rowOf(m: BackendMessage): (Buffer | null)[] {
  const n = m.body.readInt16BE(0);
  const out: (Buffer | null)[] = [];
  let at = 2;
  for (let i = 0; i < n; i++) {
    const len = m.body.readInt32BE(at);
    at += 4;
    out.push(len < 0 ? null : m.body.subarray(at, at + len));
    if (len > 0) at += len;
  }
  return out;
}

/**
 * Try to log in: null when the gateway let the client in (the connection is
 * closed again), else its ErrorResponse (SQLSTATE and message). `password`
 * is sent only if asked for.
 */
export async function loginError(port: number, opts: { user: string; password: string; localAddress?: string }): Promise<{ code: string; message: string } | null> {
  let s: RawSession;
  try {
    s = await rawSession(port, opts);
  } catch (e) {
    const error = (e as { messages?: BackendMessage[] }).messages?.find((m) => m.type === "E");
    if (!error) throw e;
    return errorOf(error);
  }
  s.close();
  return null;
}
