/**
 * What one listener may hold: connections (from accept to close), connections
 * per client address, sessions per identity, and how long a session may sit
 * idle or live at all. Each logged-in session holds a target backend, so these
 * are what keep one client, one address or one identity from taking the
 * target's connection slots.
 *
 * Protocol-neutral: an adapter asks admitConnection() at accept, the guard
 * asks admitSession() once the identity is verified, and the adapter drives a
 * SessionClock (idle() when it waits for its client, active() when the client
 * speaks). Each refusal and each expiry is an AgateError with a stable code;
 * the adapter answers it in its own protocol (PostgreSQL: 53300, 57P05,
 * 25P03, 57P01) and the guard records it.
 *
 * Idle, as PostgreSQL counts it: a session is idle from the moment it answered
 * everything its client sent (PostgreSQL: ReadyForQuery) until the client
 * sends again. Outside a transaction block that is idle_session_timeout;
 * inside one (open or failed) idle_in_transaction_session_timeout, which
 * matters more: an idle transaction holds locks and snapshots. A statement
 * running, or a command held for approval, is not idle.
 */
import { AgateError } from "./errors.ts";

export interface LimitsConfig {
  /** Connections open at once on the listener, logged in or not (0: no limit). */
  max_connections: number;
  /** Connections open at once from one client address (0: no limit). */
  max_connections_per_address: number;
  /** Sessions open at once for one identity (subject) (0: no limit). */
  max_sessions_per_identity: number;
  /** End a session idle outside a transaction block this long, in seconds (0: never). */
  idle_session_timeout_s: number;
  /** End a session idle inside a transaction block this long, in seconds (0: never). */
  idle_in_transaction_timeout_s: number;
  /** End any session this long after it started, in seconds (0: never). */
  max_session_lifetime_s: number;
}

/**
 * The defaults. max_connections is PostgreSQL's own default (each session
 * holds one of the target's slots); the others are off by default, as in
 * PostgreSQL, because what is right depends on the clients: a pool keeps idle
 * sessions open on purpose, and many clients may share one address (NAT).
 */
export const DEFAULT_LIMITS: LimitsConfig = {
  max_connections: 100,
  max_connections_per_address: 0,
  max_sessions_per_identity: 0,
  idle_session_timeout_s: 0,
  idle_in_transaction_timeout_s: 0,
  max_session_lifetime_s: 0,
};

/** Why a session was ended by a limit. */
export type ExpiryCode = "IDLE_SESSION_TIMEOUT" | "IDLE_IN_TRANSACTION_TIMEOUT" | "SESSION_LIFETIME";

/** Refusals and expiries so far, by code: what /metrics shows. */
export type LimitCounts = Record<"LIMIT_CONNECTIONS" | "LIMIT_CONNECTIONS_PER_ADDRESS" | "LIMIT_SESSIONS_PER_IDENTITY" | ExpiryCode, number>;

/** Give back what an admission took; calling it again does nothing. */
export type Release = () => void;

/**
 * What an adapter and the guard ask of a listener's limits: a ListenerLimits
 * in this thread, or a worker thread's view of the main thread's one
 * (src/workers: the limits hold across every worker, not per worker). The
 * admissions of the latter answer later.
 */
export interface Limits {
  readonly connection: string;
  readonly config: LimitsConfig;
  admitConnection(address: string): Release | AgateError | Promise<Release | AgateError>;
  admitSession(subject: string): Release | AgateError | Promise<Release | AgateError>;
  clock(expire: (why: AgateError) => void): SessionClock;
}

export class ListenerLimits implements Limits {
  #connections = 0;
  readonly #byAddress = new Map<string, number>();
  readonly #bySubject = new Map<string, number>();
  readonly counts: LimitCounts = {
    LIMIT_CONNECTIONS: 0,
    LIMIT_CONNECTIONS_PER_ADDRESS: 0,
    LIMIT_SESSIONS_PER_IDENTITY: 0,
    IDLE_SESSION_TIMEOUT: 0,
    IDLE_IN_TRANSACTION_TIMEOUT: 0,
    SESSION_LIFETIME: 0,
  };

  /** `connection`: the listener's configured name, for messages. */
  constructor(
    readonly connection: string,
    readonly config: LimitsConfig,
  ) {}

  /** Connections open now. */
  get connections(): number {
    return this.#connections;
  }

  /** Sessions open now. */
  get sessions(): number {
    let n = 0;
    for (const v of this.#bySubject.values()) n += v;
    return n;
  }

  /** A new connection from `address`: a release to call when it closes, or why it is refused. */
  admitConnection(address: string): Release | AgateError {
    const c = this.config;
    if (c.max_connections > 0 && this.#connections >= c.max_connections) {
      return this.#refuse("LIMIT_CONNECTIONS", `sorry, too many clients already: connection "${this.connection}" allows ${c.max_connections} at once (limits.max_connections)`);
    }
    const fromAddress = this.#byAddress.get(address) ?? 0;
    if (c.max_connections_per_address > 0 && fromAddress >= c.max_connections_per_address) {
      return this.#refuse("LIMIT_CONNECTIONS_PER_ADDRESS", `too many connections from ${address}: connection "${this.connection}" allows ${c.max_connections_per_address} from one address (limits.max_connections_per_address)`);
    }
    this.#connections++;
    this.#byAddress.set(address, fromAddress + 1);
    return once(() => {
      this.#connections--;
      decrement(this.#byAddress, address);
    });
  }

  /** A session for `subject` is about to start: a release to call when it ends, or why it is refused. */
  admitSession(subject: string): Release | AgateError {
    const max = this.config.max_sessions_per_identity;
    const open = this.#bySubject.get(subject) ?? 0;
    if (max > 0 && open >= max) {
      return this.#refuse("LIMIT_SESSIONS_PER_IDENTITY", `too many sessions for "${subject}": connection "${this.connection}" allows ${max} at once for one identity (limits.max_sessions_per_identity)`);
    }
    this.#bySubject.set(subject, open + 1);
    return once(() => decrement(this.#bySubject, subject));
  }

  /** The clock of a session that just started; `expire` is called at most once, with why it must end. */
  clock(expire: (why: AgateError) => void): SessionClock {
    return new SessionClock(this.config, (why) => {
      this.counts[why.code as ExpiryCode]++;
      expire(why);
    });
  }

  #refuse(code: keyof LimitCounts, message: string): AgateError {
    this.counts[code]++;
    return new AgateError(code, message);
  }
}

/**
 * One session's idle and lifetime timers. The lifetime runs from creation;
 * an idle timeout runs from idle() to the next active(). Calling idle()
 * again in the same state keeps the timer running from the first call, so
 * an adapter may call it whenever it finds the session idle.
 */
export class SessionClock {
  #idle: { inTransaction: boolean; timer: ReturnType<typeof setTimeout> } | undefined;
  #lifetime: ReturnType<typeof setTimeout> | undefined;
  #over = false;

  constructor(
    private readonly config: LimitsConfig,
    private readonly expire: (why: AgateError) => void,
  ) {
    const s = config.max_session_lifetime_s;
    if (s > 0) {
      this.#lifetime = setTimeout(() => this.#end(new AgateError("SESSION_LIFETIME", `terminating connection: the session reached its maximum lifetime of ${s} s (limits.max_session_lifetime_s); reconnect`)), s * 1000);
      this.#lifetime.unref?.();
    }
  }

  /** The session has answered everything its client sent and waits for it, in a transaction block or not. */
  idle(inTransaction: boolean): void {
    if (this.#over || this.#idle?.inTransaction === inTransaction) return;
    this.active();
    const s = inTransaction ? this.config.idle_in_transaction_timeout_s : this.config.idle_session_timeout_s;
    if (!(s > 0)) return;
    const why = inTransaction
      ? new AgateError("IDLE_IN_TRANSACTION_TIMEOUT", `terminating connection due to idle-in-transaction timeout (limits.idle_in_transaction_timeout_s: ${s})`)
      : new AgateError("IDLE_SESSION_TIMEOUT", `terminating connection due to idle-session timeout (limits.idle_session_timeout_s: ${s})`);
    const timer = setTimeout(() => this.#end(why), s * 1000);
    timer.unref?.();
    this.#idle = { inTransaction, timer };
  }

  /** The client sent something: the session is no longer idle. */
  active(): void {
    if (!this.#idle) return;
    clearTimeout(this.#idle.timer);
    this.#idle = undefined;
  }

  /** The session ended: no timer fires any more. */
  stop(): void {
    this.#over = true;
    this.active();
    clearTimeout(this.#lifetime);
  }

  #end(why: AgateError): void {
    if (this.#over) return;
    this.stop();
    this.expire(why);
  }
}

function once(f: () => void): Release {
  let done = false;
  return () => {
    if (done) return;
    done = true;
    f();
  };
}

function decrement(m: Map<string, number>, key: string): void {
  const n = (m.get(key) ?? 1) - 1;
  if (n > 0) m.set(key, n);
  else m.delete(key);
}
