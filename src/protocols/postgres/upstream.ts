/**
 * The gateway's own connection to the target PostgreSQL server. agate holds
 * the target's credentials and authenticates itself (SCRAM-SHA-256, md5 or
 * cleartext); the client never sees them.
 */
import net from "node:net";
import tls from "node:tls";
import postgres from "postgres";
import { AgateError } from "../../core/errors.ts";
import { Framer } from "./framer.ts";
import { Auth, readErrorFields, T } from "./messages.ts";
import { md5Password, ScramClient } from "./scram.ts";
import { CANCEL_REQUEST_CODE, message, PROTOCOL_3_0, Reader, SSL_REQUEST_CODE, startupPacket } from "./wire.ts";

export interface PgTarget {
  host: string;
  port: number;
  database: string;
  user: string;
  password?: string;
  /** "require": TLS to the target (certificate not verified: use verify-full for that); "disable": plain. */
  sslmode: "disable" | "require" | "verify-full";
  connect_timeout_ms: number;
}

export interface Upstream {
  socket: net.Socket;
  /** Carries any bytes that arrived after ReadyForQuery. */
  framer: Framer;
  /** ParameterStatus messages, raw, to relay to the client. */
  parameterStatus: Buffer[];
  pid: number;
  secret: number;
  txStatus: number;
  /** The client's startup parameters the connection was started with (the settings of startup.ts). */
  params: Readonly<Record<string, string>>;
}

/**
 * A porsager client for the gateway's own queries on the target (the
 * catalog, `agate doctor`): the same host, port, database, credentials and
 * sslmode the sessions' connections use. `connection` are startup
 * parameters (application_name, search_path, …).
 */
export function targetSql(target: PgTarget, connection: Record<string, string>, opts: { max?: number; idle_timeout?: number; prepare?: boolean; fetch_types?: boolean } = {}): postgres.Sql {
  const t = target;
  return postgres({
    host: t.host,
    port: t.port,
    database: t.database,
    username: t.user,
    ...(t.password !== undefined ? { password: t.password } : {}),
    ssl: t.sslmode === "disable" ? false : t.sslmode === "require" ? "require" : "verify-full",
    max: opts.max ?? 1,
    ...(opts.idle_timeout !== undefined ? { idle_timeout: opts.idle_timeout } : {}),
    ...(opts.prepare !== undefined ? { prepare: opts.prepare } : {}),
    ...(opts.fetch_types !== undefined ? { fetch_types: opts.fetch_types } : {}),
    connect_timeout: Math.ceil(t.connect_timeout_ms / 1000),
    onnotice: () => {},
    connection,
  });
}

/** Largest message accepted from the target: PostgreSQL's own 1 GB field limit. */
export const MAX_BACKEND_MESSAGE_BYTES = 1 << 30;

/**
 * Connect, authenticate and wait for ReadyForQuery.
 * `params` are the client's startup parameters to pass along (application_name, options, …).
 */
export async function connectUpstream(target: PgTarget, params: Record<string, string>): Promise<Upstream> {
  let socket = await openSocket(target);
  try {
    if (target.sslmode !== "disable") socket = await startTls(socket, target);
    socket.setNoDelay(true);
    const startup = startupPacket((w) => {
      w.i32(PROTOCOL_3_0);
      for (const [k, v] of Object.entries({ ...params, user: target.user, database: target.database })) w.cstr(k).cstr(v);
      w.u8(0);
    });
    socket.write(startup);
    return { ...(await handshake(socket, target)), params };
  } catch (e) {
    socket.destroy();
    throw e;
  }
}

/** Send a CancelRequest for the given backend to the target (fire and forget). */
export async function cancelUpstream(target: PgTarget, pid: number, secret: number): Promise<void> {
  const socket = await openSocket(target);
  socket.end(startupPacket((w) => w.i32(CANCEL_REQUEST_CODE).i32(pid).i32(secret)));
}

function openSocket(target: PgTarget): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: target.host, port: target.port });
    const timer = setTimeout(() => {
      s.destroy();
      reject(new AgateError("UPSTREAM_UNREACHABLE", `the target ${target.host}:${target.port} did not answer within ${target.connect_timeout_ms} ms`));
    }, target.connect_timeout_ms);
    s.once("connect", () => {
      clearTimeout(timer);
      resolve(s);
    });
    s.once("error", (e) => {
      clearTimeout(timer);
      reject(new AgateError("UPSTREAM_UNREACHABLE", `cannot reach the target ${target.host}:${target.port}: ${e.message}`));
    });
  });
}

function startTls(socket: net.Socket, target: PgTarget): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    socket.write(startupPacket((w) => w.i32(SSL_REQUEST_CODE)));
    socket.once("data", (d: Buffer) => {
      if (d[0] !== 0x53) {
        reject(new AgateError("UPSTREAM_TLS", `the target ${target.host}:${target.port} does not support TLS (sslmode=${target.sslmode})`));
        return;
      }
      const t = tls.connect({ socket, servername: net.isIP(target.host) ? undefined : target.host, rejectUnauthorized: target.sslmode === "verify-full" });
      t.once("secureConnect", () => resolve(t));
      t.once("error", (e) => reject(new AgateError("UPSTREAM_TLS", `TLS to the target failed: ${e.message}`)));
    });
  });
}

function handshake(socket: net.Socket, target: PgTarget): Promise<Omit<Upstream, "params">> {
  return new Promise((resolve, reject) => {
    const framer = new Framer(MAX_BACKEND_MESSAGE_BYTES);
    const parameterStatus: Buffer[] = [];
    let pid = 0;
    let secret = 0;
    let scram: ScramClient | null = null;
    const fail = (e: unknown) => {
      cleanup();
      reject(e);
    };
    const cleanup = () => {
      socket.off("data", onData);
      socket.off("error", fail);
      socket.off("close", onClose);
    };
    const onClose = () => fail(new AgateError("UPSTREAM_CLOSED", "the target closed the connection during start-up"));
    const password = () => {
      if (target.password === undefined) throw new AgateError("UPSTREAM_AUTH", "the target asks for a password but none is configured for it");
      return target.password;
    };
    const onData = (chunk: Buffer) => {
      try {
        framer.push(chunk);
        for (let f = framer.next(); f; f = framer.next()) {
          switch (f.type) {
            case T.Authentication: {
              const r = new Reader(f.body);
              const code = r.i32();
              if (code === Auth.Ok) break;
              if (code === Auth.CleartextPassword) socket.write(message(T.PasswordMessage, (w) => w.cstr(password())));
              else if (code === Auth.MD5Password) socket.write(message(T.PasswordMessage, (w) => w.cstr(md5Password(target.user, password(), r.bytes(4)))));
              else if (code === Auth.SASL) {
                const mechanisms: string[] = [];
                for (let m = r.cstr(); m !== ""; m = r.cstr()) mechanisms.push(m);
                if (!mechanisms.includes("SCRAM-SHA-256")) throw new AgateError("UPSTREAM_AUTH", `the target offers only ${mechanisms.join(", ")}; agate speaks SCRAM-SHA-256`);
                scram = new ScramClient(password());
                const first = Buffer.from(scram.first());
                socket.write(message(T.PasswordMessage, (w) => w.cstr("SCRAM-SHA-256").i32(first.length).bytes(first)));
              } else if (code === Auth.SASLContinue && scram) {
                const final = Buffer.from(scram.final(r.bytes(r.remaining).toString()));
                socket.write(message(T.PasswordMessage, (w) => w.bytes(final)));
              } else if (code === Auth.SASLFinal && scram) scram.verify(r.bytes(r.remaining).toString());
              else throw new AgateError("UPSTREAM_AUTH", `the target asks for an authentication method agate does not support (code ${code})`);
              break;
            }
            case T.ParameterStatus:
              parameterStatus.push(Buffer.from(f.raw));
              break;
            case T.BackendKeyData: {
              const r = new Reader(f.body);
              pid = r.i32();
              secret = r.i32();
              break;
            }
            case T.ErrorResponse: {
              const e = readErrorFields(f.body);
              throw new AgateError(e.code.startsWith("28") ? "UPSTREAM_AUTH" : "UPSTREAM_REFUSED", `the target refused the gateway's connection: ${e.message}`, { sqlstate: e.code });
            }
            case T.NoticeResponse:
              break;
            case T.ReadyForQuery:
              cleanup();
              resolve({ socket, framer, parameterStatus, pid, secret, txStatus: f.body[0] ?? 0x49 });
              return;
            default:
              throw new AgateError("UPSTREAM_PROTOCOL", `unexpected message '${String.fromCharCode(f.type)}' from the target during start-up`);
          }
        }
      } catch (e) {
        fail(e);
      }
    };
    socket.on("data", onData);
    socket.once("error", fail);
    socket.once("close", onClose);
  });
}
