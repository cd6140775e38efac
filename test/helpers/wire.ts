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
  /** Whether the server closed the connection. */
  readonly closed: boolean;
  close(): void;
}

export async function rawSession(port: number, opts: { user: string; password: string; database?: string }): Promise<RawSession> {
  const s = net.connect(port, "127.0.0.1");
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
    async untilReady(count = 1) {
      const out: BackendMessage[] = [];
      let seen = 0;
      for (;;) {
        while (queue.length > 0) {
          const m = queue.shift()!;
          out.push(m);
          if (m.type === "Z" && ++seen === count) return out;
          if (m.type === "R" && m.body.readInt32BE(0) === 3) s.write(message(0x70, (w) => w.cstr(opts.password)));
        }
        if (closed) return out;
        await new Promise<void>((resolve) => (wake = resolve));
      }
    },
    get closed() {
      return closed;
    },
    close() {
      s.destroy();
    },
  };
  s.write(startupPacket((w) => w.i32(196608).cstr("user").cstr(opts.user).cstr("database").cstr(opts.database ?? "app").u8(0)));
  const login = await session.untilReady();
  if (!login.some((m) => m.type === "Z")) throw new Error(`login failed: ${login.map((m) => m.body.toString()).join(" | ")}`);
  return session;
}

// ── frontend messages ───────────────────────────────────────────────────

export const Query = (sql: string | Buffer) => message(0x51, (w) => w.bytes(typeof sql === "string" ? Buffer.from(sql) : sql).u8(0));
export const Parse = (sql: string | Buffer, name = "") => message(0x50, (w) => w.cstr(name).bytes(typeof sql === "string" ? Buffer.from(sql) : sql).u8(0).i16(0));
export const Bind = (statement = "", portal = "") => message(0x42, (w) => w.cstr(portal).cstr(statement).i16(0).i16(0).i16(0));
export const Execute = (portal = "") => message(0x45, (w) => w.cstr(portal).i32(0));
export const Sync = message(0x53);

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
