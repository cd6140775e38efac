/**
 * A worker thread's limits and lockout: the main thread's, asked over the
 * port (peer.ts), so that a limit holds across every worker instead of once
 * per worker, and failed logins count wherever they land. Idle and lifetime
 * timers run here (they concern one session); their expiries are counted there.
 */
import { AgateError } from "../core/errors.ts";
import { type Limits, type LimitsConfig, type Release, SessionClock } from "../core/limits.ts";
import type { FailedLogin, LoginLockout } from "../core/lockout.ts";
import type { Peer } from "./peer.ts";

/** An admission as it crosses: a token to give back, or the refusal. */
export type Admission = { token: number } | { error: { code: string; message: string } };

export class RemoteLimits implements Limits {
  constructor(
    private readonly peer: Peer,
    readonly connection: string,
    readonly config: LimitsConfig,
  ) {}

  admitConnection(address: string): Promise<Release | AgateError> {
    return this.#admit("limits.connection", address);
  }

  admitSession(subject: string): Promise<Release | AgateError> {
    return this.#admit("limits.session", subject);
  }

  clock(expire: (why: AgateError) => void): SessionClock {
    return new SessionClock(this.config, (why) => {
      this.peer.note("limits.expired", this.connection, why.code);
      expire(why);
    });
  }

  async #admit(op: string, key: string): Promise<Release | AgateError> {
    const a = await this.peer.call<Admission>(op, this.connection, key);
    if ("error" in a) return new AgateError(a.error.code, a.error.message);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.peer.note("release", a.token);
    };
  }
}

export class RemoteLockout implements LoginLockout {
  constructor(private readonly peer: Peer) {}

  async check(address: string, user: string | undefined): Promise<AgateError | null> {
    const e = await this.peer.call<{ code: string; message: string } | null>("lockout.check", address, user);
    return e ? new AgateError(e.code, e.message) : null;
  }

  failed(address: string, user: string | undefined): Promise<FailedLogin> {
    return this.peer.call<FailedLogin>("lockout.failed", address, user);
  }

  succeeded(user: string): void {
    this.peer.note("lockout.succeeded", user);
  }

  /** Waits in the main thread, so that the bound on answers delayed at once holds for the gateway. */
  async delay(ms: number): Promise<void> {
    if (ms > 0) await this.peer.call("lockout.delay", ms);
  }
}
