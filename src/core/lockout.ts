/**
 * Brute-force protection for logins, protocol-neutral. Failed logins are
 * counted in a sliding window per client address and per user name (as the
 * client gave it, whether or not such a user exists, so a lock reveals
 * nothing about which names are real):
 *
 *   address, past delay_after failures   its failure answers are delayed,
 *                                        delay_ms doubling to max_delay_ms
 *   address, at block_after failures     blocked for block_s: refused before
 *                                        any credential is read
 *   user, at lock_user_after failures    locked (from any address) until an
 *                                        operator runs `agate accounts unlock`;
 *                                        the lock is kept in the accounts
 *                                        store, so it survives a restart
 *
 * A delay holds only a timer and the connection that is already open (its
 * reads paused); at most MAX_DELAYED answers wait at once, past that the
 * failure is answered at once (the address still gets blocked). Delays only
 * slow an attacker who waits for each answer: with many parallel
 * connections it is limits.max_connections_per_address, and the block, that
 * bound the rate.
 *
 * Memory is bounded: at most MAX_TRACKED addresses and as many user names
 * are tracked, the least recently failing forgotten first, and each keeps at
 * most as many failure times as its largest threshold.
 */
import { AgateError } from "./errors.ts";

export interface LockoutConfig {
  /** Failures older than this (seconds) no longer count. */
  window_s: number;
  /** Failures from one address in the window after which its failure answers are delayed (0: never). */
  delay_after: number;
  /** The first delay (ms); each further failure doubles it, up to max_delay_ms. */
  delay_ms: number;
  max_delay_ms: number;
  /** Failures from one address in the window at which it is blocked (0: never). */
  block_after: number;
  /** How long a block lasts (seconds). */
  block_s: number;
  /** Failures for one user name in the window, from any address, at which it is locked (0: never). */
  lock_user_after: number;
}

export const DEFAULT_LOCKOUT: LockoutConfig = {
  window_s: 300,
  delay_after: 3,
  delay_ms: 250,
  max_delay_ms: 4000,
  block_after: 20,
  block_s: 600,
  // A lock is a denial of service anyone who knows a user name can cause: off unless asked for.
  lock_user_after: 0,
};

/** Where user locks are kept across restarts (the accounts store). */
export interface UserLocks {
  /** When `user` was locked, or undefined. Cheap: called for every login. */
  lockedAt(user: string): string | undefined;
  lockUser(user: string, failures: number): void;
  /** Users locked now. */
  lockedCount(): number;
}

/** What a failure led to, for the audit log. */
export type LockoutEvent = { action: "address_blocked"; address: string; failures: number; until: string } | { action: "user_locked"; user: string; failures: number };

/** Counters and gauges for /metrics. */
export interface LockoutStatus {
  failures: number;
  delayed: number;
  addressBlocks: number;
  userLocks: number;
  refusedBlocked: number;
  refusedLocked: number;
  blockedAddresses: number;
  lockedUsers: number;
}

const MAX_TRACKED = 100_000;
const MAX_DELAYED = 1024;

/** What one failed login leads to (Lockout.failed). */
export interface FailedLogin {
  delayMs: number;
  events: LockoutEvent[];
}

/**
 * What the guard asks of the lockout: a Lockout in this thread, or a worker
 * thread's view of the main thread's one (src/workers: failures count across
 * every worker), whose answers come later.
 */
export interface LoginLockout {
  check(address: string, user: string | undefined): AgateError | null | Promise<AgateError | null>;
  failed(address: string, user: string | undefined): FailedLogin | Promise<FailedLogin>;
  succeeded(user: string): void;
  delay(ms: number): Promise<void>;
}

export class Lockout implements LoginLockout {
  readonly #byAddress = new Map<string, number[]>();
  readonly #byUser = new Map<string, number[]>();
  /** Address → when its block ends (ms). */
  readonly #blocked = new Map<string, number>();
  #waiting = 0;
  readonly #counts = { failures: 0, delayed: 0, addressBlocks: 0, userLocks: 0, refusedBlocked: 0, refusedLocked: 0 };

  constructor(
    readonly config: LockoutConfig,
    private readonly locks: UserLocks | undefined,
    private readonly now: () => number = Date.now,
  ) {
    if (config.lock_user_after > 0 && !locks) throw new AgateError("CONFIG_INVALID", "lockout.lock_user_after needs identity.accounts: user locks are kept in the accounts store so they survive a restart");
  }

  /** Why a login from `address` as `user` is refused before any credential is read, or null. */
  check(address: string, user: string | undefined): AgateError | null {
    const until = this.#blocked.get(address);
    if (until !== undefined) {
      if (until > this.now()) {
        this.#counts.refusedBlocked++;
        return new AgateError("LOCKOUT_ADDRESS", `too many failed logins from ${address}: logins from it are refused until ${new Date(until).toISOString()}`);
      }
      this.#blocked.delete(address);
    }
    const at = user !== undefined ? this.locks?.lockedAt(user) : undefined;
    if (at !== undefined) {
      this.#counts.refusedLocked++;
      return new AgateError("LOCKOUT_USER", `logins as "${user}" are locked after repeated failed logins (since ${at}); an operator can unlock them with \`agate accounts unlock ${user}\``);
    }
    return null;
  }

  /** A login from `address` as `user` failed: how long to delay its answer (ms), and what it led to. */
  failed(address: string, user: string | undefined): FailedLogin {
    const c = this.config;
    const now = this.now();
    this.#counts.failures++;
    const events: LockoutEvent[] = [];
    const n = this.#count(this.#byAddress, address, now, Math.max(c.block_after, c.delay_after + 32));
    if (c.block_after > 0 && n >= c.block_after) {
      const until = now + c.block_s * 1000;
      this.#blocked.set(address, until);
      if (this.#blocked.size > MAX_TRACKED) this.#blocked.delete(this.#blocked.keys().next().value!);
      this.#byAddress.delete(address);
      this.#counts.addressBlocks++;
      events.push({ action: "address_blocked", address, failures: n, until: new Date(until).toISOString() });
    }
    if (user !== undefined && c.lock_user_after > 0 && this.locks) {
      const u = this.#count(this.#byUser, user, now, c.lock_user_after);
      if (u >= c.lock_user_after && this.locks.lockedAt(user) === undefined) {
        this.locks.lockUser(user, u);
        this.#byUser.delete(user);
        this.#counts.userLocks++;
        events.push({ action: "user_locked", user, failures: u });
      }
    }
    const over = n - c.delay_after;
    const delayMs = c.delay_after > 0 && over > 0 ? Math.min(c.max_delay_ms, c.delay_ms * 2 ** Math.min(over - 1, 30)) : 0;
    return { delayMs, events };
  }

  /** A login as `user` succeeded: its failures are forgotten (an address's are not: one good account must not reset them). */
  succeeded(user: string): void {
    this.#byUser.delete(user);
  }

  /** Wait `ms` before a failure answer; at once when MAX_DELAYED answers are waiting already. */
  async delay(ms: number): Promise<void> {
    if (ms <= 0 || this.#waiting >= MAX_DELAYED) return;
    this.#waiting++;
    this.#counts.delayed++;
    try {
      await Bun.sleep(ms);
    } finally {
      this.#waiting--;
    }
  }

  status(): LockoutStatus {
    const now = this.now();
    for (const [a, until] of this.#blocked) if (until <= now) this.#blocked.delete(a);
    return { ...this.#counts, blockedAddresses: this.#blocked.size, lockedUsers: this.locks?.lockedCount() ?? 0 };
  }

  /** Add a failure at `now` for `key`, forget those out of the window; how many are in it. */
  #count(m: Map<string, number[]>, key: string, now: number, keep: number): number {
    const since = now - this.config.window_s * 1000;
    const times = (m.get(key) ?? []).filter((t) => t > since);
    times.push(now);
    if (times.length > keep) times.splice(0, times.length - keep);
    // Re-inserted, so the map's order is least recently failing first.
    m.delete(key);
    m.set(key, times);
    if (m.size > MAX_TRACKED) m.delete(m.keys().next().value!);
    return times.length;
  }
}
