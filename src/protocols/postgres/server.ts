/**
 * The PostgreSQL listener: start-up (SSLRequest, GSSENCRequest,
 * CancelRequest, StartupMessage), the client's authentication, the
 * gateway's own connection to the target, then the query phase
 * (session.ts). https://www.postgresql.org/docs/current/protocol-flow.html
 */
import { randomBytes, timingSafeEqual } from "node:crypto";
import net from "node:net";
import tls from "node:tls";
import { AgateError } from "../../core/errors.ts";
import { connectionCap } from "../../core/fd-limit.ts";
import { DEFAULT_LIMITS, type Limits, ListenerLimits, type Release } from "../../core/limits.ts";
import type { ClientInfo, Guard, StartupSetting } from "../../core/guard.ts";
import type { Logger } from "../../core/log.ts";
import type { ConnectionRef, Session } from "../../core/types.ts";
import { encodingName } from "./encoding.ts";
import { Framer } from "./framer.ts";
import { AuthenticationCleartextPassword, AuthenticationOk, BackendKeyData, ErrorResponse, inClientEncoding, ReadyForQuery, readStartupParams, T } from "./messages.ts";
import { PgSession } from "./session.ts";
import { capRecordSize } from "./tls-records.ts";
import { Catalog } from "./catalog.ts";
import { startupSettings, targetParameters } from "./startup.ts";
import { cancelUpstream, connectUpstream, type PgTarget } from "./upstream.ts";
import { CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, MAX_STARTUP_PACKET_BYTES, message, PROTOCOL_3_0, ProtocolViolation, Reader, SSL_REQUEST_CODE } from "./wire.ts";

export interface PgListenerOptions {
  connection: ConnectionRef;
  host: string;
  port: number;
  target: PgTarget;
  guard: Guard;
  log: Logger;
  /** TLS for clients (PEM). With `required`, a client that does not ask for TLS is refused. */
  tls?: { cert: string; key: string; required: boolean };
  /**
   * Ask for the password (an API key or a token) without TLS. Only for a
   * loopback listener (the config refuses it elsewhere); otherwise a client
   * that did not negotiate TLS is refused before it sends a credential.
   */
  allowPlaintextAuth: boolean;
  /** Largest frontend message accepted after authentication. */
  maxMessageBytes: number;
  /** Like PostgreSQL's authentication_timeout: a client not logged in by then is dropped. */
  startupTimeoutMs: number;
  /** Connections, sessions, idle timeouts and lifetime (core/limits.ts); PostgreSQL's defaults when absent. */
  limits?: Limits;
  /**
   * Bind with SO_REUSEPORT, so that several worker threads (src/workers) accept on the same port: "first"
   * for the thread that binds it first (a fixed port must be free: another process with SO_REUSEPORT on
   * it would otherwise silently share its connections), "join" for the others.
   */
  reusePort?: "first" | "join";
}

/**
 * SQLSTATEs of refusals and expiries, as PostgreSQL uses them: too_many_connections
 * for every count (as for max_connections and a role's CONNECTION LIMIT);
 * invalid_authorization_specification for a blocked address or a locked user
 * (as pg_hba.conf's reject: refused before any credential is read, so the
 * answer says nothing of a password); idle_session_timeout and
 * idle_in_transaction_session_timeout (PostgreSQL 14); admin_shutdown for
 * the lifetime, as pg_terminate_backend ends a session.
 * https://www.postgresql.org/docs/current/errcodes-appendix.html
 */
const LIMIT_SQLSTATE: Record<string, string> = {
  LIMIT_CONNECTIONS: "53300",
  LIMIT_CONNECTIONS_PER_ADDRESS: "53300",
  LIMIT_SESSIONS_PER_IDENTITY: "53300",
  LOCKOUT_ADDRESS: "28000",
  LOCKOUT_USER: "28000",
  IDLE_SESSION_TIMEOUT: "57P05",
  IDLE_IN_TRANSACTION_TIMEOUT: "25P03",
  SESSION_LIFETIME: "57P01",
};

export interface PgListener {
  port: number;
  /** Stop accepting; with `sessions`, also end the open sessions. */
  close(opts?: { sessions?: boolean }): Promise<void>;
}

/** The password message is small; PostgreSQL itself caps it at 1000 bytes for cleartext, tokens need more. */
const MAX_PASSWORD_MESSAGE_BYTES = 64 * 1024;

/**
 * After a refusal, the client gets this long to read it and hang up, and at
 * most this many more bytes are read (and dropped, never buffered) before
 * the connection is cut.
 */
const LINGER_MS = 1000;
const LINGER_BYTES = 64 * 1024;

/** Client connections open across every PostgreSQL listener of the process (each holds a file descriptor). */
let openConnections = 0;
/** When the last "connection limit reached" warning was logged, so a burst logs once. */
let lastCapWarning = -Infinity;

/**
 * The sessions' cancel keys, by the pid the client got: the target backend's
 * own (several targets may have a backend of the same pid), with a secret
 * agate drew for the session; a CancelRequest must match both.
 */
interface CancelKey {
  secret: Buffer;
  target: PgTarget;
  upstreamSecret: number;
  session: Session;
  guard: Guard;
}
const cancelKeys = new Map<number, Set<CancelKey>>();

/**
 * Where a CancelRequest goes whose key no session of this thread holds: with
 * several worker threads (src/workers), the session may be another's (a
 * cancel arrives on a new connection, which any of them may accept).
 */
type CancelRelay = (pid: number, secret: number, client: ClientInfo) => void;
const cancelRelays = new Set<CancelRelay>();

/** Send CancelRequests for sessions this thread does not hold to `relay` too, until the returned function is called. */
export function relayCancels(relay: CancelRelay): () => void {
  cancelRelays.add(relay);
  return () => cancelRelays.delete(relay);
}

/** Cancel what the session of key (pid, secret) runs, if one of this thread's sessions holds it; whether one did. */
export function cancelHere(pid: number, secret: number, client: ClientInfo): boolean {
  const key = cancelKeyFor(pid, secret);
  if (!key) return false;
  key.guard.cancelRequested(key.session, client);
  void cancelUpstream(key.target, pid, key.upstreamSecret).catch(() => {});
  return true;
}

/** The session a CancelRequest's (pid, secret) stands for, the secret compared in constant time. */
function cancelKeyFor(pid: number, secret: number): CancelKey | undefined {
  const given = Buffer.alloc(4);
  given.writeInt32BE(secret);
  let found: CancelKey | undefined;
  for (const k of cancelKeys.get(pid) ?? []) if (timingSafeEqual(k.secret, given)) found = k;
  return found;
}

/** Whether `host:port` can be bound without SO_REUSEPORT right now (nothing else listens there). */
function portFree(host: string, port: number): Promise<Error | null> {
  return new Promise((done) => {
    const probe = net.createServer();
    probe.once("error", (e) => done(e));
    probe.listen({ port, host, exclusive: true }, () => probe.close(() => done(null)));
  });
}

export async function listenPostgres(opts: PgListenerOptions): Promise<PgListener> {
  if (opts.reusePort === "first" && opts.port !== 0) {
    const taken = await portFree(opts.host, opts.port);
    if (taken) throw new AgateError("LISTEN_FAILED", `cannot listen on ${opts.host}:${opts.port} for connection "${opts.connection.name}": ${taken.message}`);
  }
  const secureContext = opts.tls ? tls.createSecureContext({ cert: opts.tls.cert, key: opts.tls.key }) : undefined;
  const sockets = new Set<net.Socket>();
  // Column origins for masking, looked up with the gateway's own target credentials; shared by the sessions.
  const catalog = new Catalog(opts.target);
  const limits = opts.limits ?? new ListenerLimits(opts.connection.name, DEFAULT_LIMITS);
  const server = net.createServer((socket) => {
    // Past the file-descriptor budget the next accept() would fail (EMFILE) and Bun would retry it in a busy loop:
    // cut this one at once instead, so the descriptors never run out.
    if (openConnections >= connectionCap()) {
      socket.destroy();
      const now = performance.now();
      if (now - lastCapWarning > 10_000) {
        lastCapWarning = now;
        opts.log("warn", "connection refused: open file limit nearly reached", { connection: opts.connection.name, open: openConnections, cap: connectionCap(), hint: "raise the open file limit (ulimit -n / LimitNOFILE)" });
      }
      return;
    }
    openConnections++;
    socket.once("close", () => openConnections--);
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    socket.setNoDelay(true);
    // Counted from accept; over a limit, refused (53300) once the startup packet is read, as PostgreSQL does,
    // so that the client gets the error over TLS if it asked for TLS, and a CancelRequest still works.
    const admitted = limits.admitConnection(socket.remoteAddress ?? "unknown");
    const start = (a: Release | AgateError) => {
      if (typeof a === "function") socket.once("close", a);
      new Startup(socket, opts, secureContext, catalog, limits, a instanceof AgateError ? a : undefined).start();
    };
    if (!(admitted instanceof Promise)) return start(admitted);
    // A worker thread asks the main thread (src/workers); nothing is read meanwhile, and a reset is no crash.
    socket.pause();
    socket.on("error", () => socket.destroy());
    admitted.then(
      (a) => {
        if (socket.destroyed) {
          if (typeof a === "function") a();
          return;
        }
        start(a);
        socket.resume();
      },
      () => socket.destroy(),
    );
  });
  return new Promise((resolve, reject) => {
    server.once("error", (e) =>
      reject(new AgateError("LISTEN_FAILED", `cannot listen on ${opts.host}:${opts.port} for connection "${opts.connection.name}": ${e.message}`)),
    );
    server.listen({ port: opts.port, host: opts.host, ...(opts.reusePort ? { reusePort: true } : {}) }, () => {
      const addr = server.address() as net.AddressInfo;
      resolve({
        port: addr.port,
        close: async (o = {}) => {
          const closed = new Promise<void>((done) => server.close(() => done()));
          if (o.sessions) {
            // Wait for every session to end, so its last records reach the log before the log closes.
            // (A socket leaves `sockets` when it closes, so each one here will still emit "close".)
            await Promise.all([...sockets].map((s) => new Promise<void>((done) => s.once("close", () => done()).destroy())));
            await Bun.sleep(0);
          }
          await closed;
          await catalog.close();
        },
      });
    });
  });
}

/** One connection from accept to the start of the query phase. */
class Startup {
  private framer = new Framer(MAX_STARTUP_PACKET_BYTES, { untyped: true });
  private sock: net.Socket;
  private isTls = false;
  private params: Record<string, string> = {};
  /** The settings the startup packet asks for (startup.ts). */
  private settings: StartupSetting[] = [];
  private readonly onData = (chunk: Buffer) => {
    // Before login only one bounded message is read at a time: once refused, nothing more is kept
    // (while authenticating the socket is paused; what arrived before that is the session's).
    if (this.stage === "closing") return;
    this.framer.push(chunk);
    this.step();
  };

  constructor(
    raw: net.Socket,
    private readonly opts: PgListenerOptions,
    private readonly secureContext: tls.SecureContext | undefined,
    private readonly catalog: Catalog,
    private readonly limits: Limits,
    /** Why the connection is over a limit (core/limits.ts), refused at the startup packet. */
    private readonly overLimit: AgateError | undefined,
  ) {
    this.sock = raw;
  }

  private timer: ReturnType<typeof setTimeout> | undefined;

  start(): void {
    // Absolute from accept: a client dripping bytes does not extend it.
    this.timer = setTimeout(() => {
      if (this.stage === "startup" || this.stage === "password") this.reject("08006", "AUTH_TIMEOUT", "agate: authentication timed out");
      else if (this.stage === "busy") this.refuse("08006", "agate: authentication timed out");
    }, this.opts.startupTimeoutMs);
    this.sock.on("data", this.onData);
    this.sock.on("error", () => this.sock.destroy());
    this.sock.once("close", () => clearTimeout(this.timer));
  }

  /** `busy`: authenticating (the socket is paused); `closing`: refused, the connection is being cut. */
  private stage: "startup" | "password" | "busy" | "closing" | "done" = "startup";

  private step(): void {
    try {
      while (this.stage === "startup" || this.stage === "password") {
        const f = this.nextFrame();
        if (!f) return;
        if (this.stage === "startup") this.onStartupPacket(f.body);
        else if (f.type === T.PasswordMessage) {
          this.stage = "busy";
          // Nothing more is read until the session starts (PgSession reads on): a client cannot make us buffer meanwhile.
          this.sock.pause();
          void this.authenticate(new Reader(f.body).cstr());
        } else if (f.type === T.Terminate) {
          // The client leaves before logging in (node-postgres does on a quick end()): close quietly, as for EOF.
          this.cut();
        } else throw new ProtocolViolation(`expected a password message, got '${String.fromCharCode(f.type)}'`);
      }
    } catch (e) {
      // The reason names the message and the broken rule, never the message's bytes (a password message carries the credential).
      const what = this.stage === "password" ? "the password message" : "the startup packet";
      const violation = e instanceof ProtocolViolation;
      this.reject(violation ? "08P01" : "XX000", violation ? "PROTOCOL_VIOLATION" : "STARTUP_FAILED", `agate: ${(e as Error).message}`, what);
    }
  }

  /**
   * The next frame. A startup packet of invalid length is dropped without a
   * reply, as PostgreSQL does ("invalid length of startup packet"), and
   * recorded; null then too.
   */
  private nextFrame() {
    if (this.stage !== "startup") return this.framer.next();
    let f;
    try {
      f = this.framer.next();
    } catch (e) {
      if (!(e instanceof ProtocolViolation)) throw e;
      this.reject("08P01", "PROTOCOL_VIOLATION", `agate: ${e.message}`, "the startup packet", { silent: true });
      return null;
    }
    if (f && f.body.length < 4) {
      this.reject("08P01", "PROTOCOL_VIOLATION", `agate: invalid length of startup packet`, "the startup packet", { silent: true });
      return null;
    }
    return f;
  }

  private onStartupPacket(body: Buffer): void {
    const r = new Reader(body);
    const code = r.i32();
    if (code === SSL_REQUEST_CODE) {
      if (this.isTls) throw new ProtocolViolation("SSLRequest received twice");
      if (!this.secureContext) {
        this.sock.write("N");
        return;
      }
      // Bytes sent after SSLRequest but before the handshake would be read as if protected (CVE-2021-23214).
      if (this.framer.buffered > 0) throw new ProtocolViolation("data received after SSLRequest before the TLS handshake");
      this.sock.write("S");
      this.sock.off("data", this.onData);
      const secured = new tls.TLSSocket(this.sock, { isServer: true, secureContext: this.secureContext });
      capRecordSize(secured);
      secured.on("error", () => secured.destroy());
      this.sock = secured;
      this.isTls = true;
      this.sock.on("data", this.onData);
      return;
    }
    if (code === GSSENC_REQUEST_CODE) {
      this.sock.write("N");
      return;
    }
    if (code === CANCEL_REQUEST_CODE) {
      const pid = r.i32();
      const secret = r.i32();
      // As PostgreSQL does: no answer either way, and a wrong secret is silently ignored.
      if (!cancelHere(pid, secret, this.client()) && cancelRelays.size > 0) {
        this.opts.log("debug", "cancel request relayed to the other workers", { connection: this.opts.connection.name });
        for (const relay of cancelRelays) relay(pid, secret, this.client());
      }
      this.stage = "closing";
      this.sock.destroy();
      return;
    }
    if (code >> 16 !== 3) {
      this.reject("0A000", "PROTOCOL_UNSUPPORTED", `unsupported frontend protocol ${code >> 16}.${code & 0xffff}: agate speaks 3.0`);
      return;
    }
    this.params = readStartupParams(r);
    if (this.overLimit) {
      this.reject(LIMIT_SQLSTATE[this.overLimit.code]!, this.overLimit.code, `agate: ${this.overLimit.message}`);
      return;
    }
    if (this.params.replication && this.params.replication !== "false" && this.params.replication !== "0") {
      this.reject("42501", "REPLICATION_REFUSED", "agate: replication connections are not allowed through the gateway");
      return;
    }
    if (!this.isTls && (this.opts.tls?.required || !this.opts.allowPlaintextAuth)) {
      this.reject("28000", "TLS_REQUIRED", `agate: connection "${this.opts.connection.name}" requires TLS: credentials are never sent in the clear (use sslmode=require)`);
      return;
    }
    if (!this.params.user) {
      this.reject("28000", "AUTH_NO_USER", "agate: no user name in the startup packet");
      return;
    }
    // A connection serves its target's database; an absent (or empty) name means that one.
    const database = this.params.database;
    if (database && database !== this.opts.target.database) {
      this.reject("3D000", "DATABASE_UNKNOWN", `database "${database}" does not exist`);
      return;
    }
    try {
      this.settings = startupSettings(this.params);
    } catch (e) {
      if (!(e instanceof AgateError)) throw e;
      this.reject(String(e.details.sqlstate ?? "42601"), e.code, `agate: ${e.message}`);
      return;
    }
    // A blocked address, a locked user: refused before a password is asked for.
    const barred = this.opts.guard.admission(this.client(), this.params.user);
    if (!(barred instanceof Promise)) return this.askPassword(code, barred);
    // A worker thread asks the main thread (src/workers); nothing is read meanwhile.
    this.stage = "busy";
    this.sock.pause();
    barred.then(
      (b) => {
        if (this.stage !== "busy") return;
        this.stage = "startup";
        this.askPassword(code, b);
        this.sock.resume();
        this.step();
      },
      () => this.sock.destroy(),
    );
  }

  /** Ask for the password, unless `barred` says why not. */
  private askPassword(code: number, barred: AgateError | null): void {
    if (barred) {
      this.reject(LIMIT_SQLSTATE[barred.code] ?? "28000", barred.code, `agate: ${barred.message}`);
      return;
    }
    const minor = code & 0xffff;
    const unknownOptions = Object.keys(this.params).filter((k) => k.startsWith("_pq_."));
    if (minor > 0 || unknownOptions.length > 0) {
      // NegotiateProtocolVersion: we speak 3.0 and none of the _pq_ options.
      this.sock.write(message(0x76, (w) => {
        w.i32(PROTOCOL_3_0).i32(unknownOptions.length);
        for (const o of unknownOptions) w.cstr(o);
      }));
    }
    this.sock.write(AuthenticationCleartextPassword);
    this.framer.untyped = false;
    this.framer.maxBytes = MAX_PASSWORD_MESSAGE_BYTES;
    this.stage = "password";
  }

  private async authenticate(password: string): Promise<void> {
    const { opts } = this;
    const remote = this.sock.remoteAddress ?? "unknown";
    let session: Session;
    try {
      session = await opts.guard.openSession(opts.connection, this.client(), { user: this.params.user!, secret: password }, this.limits, this.settings);
    } catch (e) {
      const err = e instanceof AgateError ? e : new AgateError("AUTH_FAILED", "authentication failed");
      opts.log("info", "session refused", { connection: opts.connection.name, client: remote, user: this.params.user, code: err.code });
      const sqlstate = err.code === "SESSION_DENIED" ? "42501" : err.code.startsWith("AUTH") ? "28P01" : (LIMIT_SQLSTATE[err.code] ?? "58000");
      this.refuse(sqlstate, err.code.startsWith("AUTH") || err.code === "SESSION_DENIED" ? err.message : `agate: ${err.message}`);
      return;
    }

    let upstream;
    try {
      upstream = await connectUpstream(opts.target, targetParameters(this.settings));
    } catch (e) {
      const err = e as AgateError;
      opts.log("error", "target connection failed", { connection: opts.connection.name, session: session.id, code: err.code, error: err.message });
      opts.guard.closeSession(session, `target connection failed: ${err.message}`, 0);
      // The target refusing a setting the client asked for (22023 invalid value, 42704 unknown name, 42501 not
      // permitted, …) is the client's to read as the target said it.
      const sqlstate = err.code === "UPSTREAM_REFUSED" ? String(err.details.sqlstate ?? "") : "";
      if (this.settings.length > 0 && /^(22|42)/.test(sqlstate)) this.refuse(sqlstate, err.message.replace(/^the target refused the gateway's connection: /, ""));
      else this.refuse("08001", `agate: could not connect to the target of "${opts.connection.name}": ${err.message}`);
      return;
    }
    if (this.sock.destroyed || this.stage === "closing") {
      upstream.socket.destroy();
      opts.guard.closeSession(session, "client left during start-up", 0);
      return;
    }

    // The client gets the target backend's pid (pg_backend_pid(), notifications and pg_terminate_backend agree with it)
    // and a secret of agate's own: the target's secret never leaves the gateway, so only agate can cancel there.
    const pid = upstream.pid;
    const key: CancelKey = { secret: randomBytes(4), target: opts.target, upstreamSecret: upstream.secret, session, guard: opts.guard };
    const keys = cancelKeys.get(pid) ?? new Set();
    cancelKeys.set(pid, keys.add(key));
    const hello = [AuthenticationOk, ...upstream.parameterStatus, BackendKeyData(pid, key.secret.readInt32BE()), ReadyForQuery(upstream.txStatus)];
    this.sock.off("data", this.onData);
    this.stage = "done";
    clearTimeout(this.timer);
    this.sock.write(Buffer.concat(hello));
    this.framer.maxBytes = opts.maxMessageBytes;
    this.sock.resume();
    opts.log("info", "session started", { connection: opts.connection.name, session: session.id, subject: session.identity.subject, client: remote, tls: this.isTls });
    const clock = this.limits.clock((why) => {
      pg.terminate(LIMIT_SQLSTATE[why.code]!, why);
      // A backend running a statement does not notice its client is gone until it writes: cancel it, so the slot is free now.
      void cancelUpstream(opts.target, upstream.pid, upstream.secret).catch(() => {});
    });
    const pg = new PgSession(session, this.sock, this.framer, upstream, opts.guard, this.catalog, opts.log, (end) => {
      keys.delete(key);
      if (keys.size === 0 && cancelKeys.get(pid) === keys) cancelKeys.delete(pid);
      opts.guard.closeSession(session, end.reason, end.commands, end.code);
      opts.log("info", "session ended", { connection: opts.connection.name, session: session.id, reason: end.reason, commands: end.commands });
    }, clock);
  }

  private client(): ClientInfo {
    const application = this.settings.find((s) => s.name.toLowerCase() === "application_name")?.value ?? this.params.application_name;
    return { address: this.sock.remoteAddress ?? "unknown", port: this.sock.remotePort, tls: this.isTls, ...(application !== undefined ? { application } : {}) };
  }

  /**
   * Refuse a client before it presented a credential, and record it as
   * session_refused (refusals after that are the guard's to record).
   * `text` is what the client reads; the record's reason is the same
   * sentence, prefixed with `what` was refused when given.
   */
  private reject(sqlstate: string, code: string, text: string, what?: string, o: { silent?: boolean } = {}): void {
    const reason = text.replace(/^agate: /, "");
    const client = this.client();
    this.opts.guard.sessionRefused(this.opts.connection, client, new AgateError(code, what ? `${what}: ${reason}` : reason), { ...(this.params.user !== undefined ? { user: this.params.user } : {}), sqlstate });
    this.opts.log("info", "session refused", { connection: this.opts.connection.name, client: client.address, code });
    if (o.silent) this.cut();
    else this.refuse(sqlstate, text);
  }

  private refuse(code: string, text: string): void {
    // In the client encoding it asked for, as the target would answer once it had read the startup packet.
    const encoding = this.settings.findLast((s) => s.name.toLowerCase() === "client_encoding")?.value;
    const error = ErrorResponse({ severity: "FATAL", code, message: text });
    this.cut(encoding ? inClientEncoding(error, encodingName(encoding)) : error);
  }

  /**
   * End the connection before login, after `last` is written: nothing more
   * is buffered; the client has LINGER_MS to read it and hang up, and what
   * it still sends is dropped, up to LINGER_BYTES, before the connection is
   * cut.
   */
  private cut(last?: Buffer): void {
    if (this.stage === "closing" || this.stage === "done") return;
    this.stage = "closing";
    clearTimeout(this.timer);
    const s = this.sock;
    s.off("data", this.onData);
    let budget = LINGER_BYTES;
    s.on("data", (c: Buffer) => {
      budget -= c.length;
      if (budget < 0) s.destroy();
    });
    const linger = setTimeout(() => s.destroy(), LINGER_MS);
    s.once("close", () => clearTimeout(linger));
    s.resume();
    if (last) s.end(last);
    else s.end();
  }
}
