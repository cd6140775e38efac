/**
 * The main thread's side of the worker threads: starts them, and answers
 * what each asks of what the gateway keeps once (peer.ts calls): appending
 * to the audit log, admitting connections and sessions under the
 * listeners' limits, the lockout's counts, CancelRequests for sessions
 * another thread holds, and derived mask rules that every thread must hold
 * before the statement that derived them runs.
 */
import { Worker } from "node:worker_threads";
import type { AuditLog } from "../audit/writer.ts";
import type { Config } from "../config/index.ts";
import { AgateError } from "../core/errors.ts";
import type { ClientInfo } from "../core/guard.ts";
import type { ExpiryCode, ListenerLimits, Release } from "../core/limits.ts";
import type { Lockout } from "../core/lockout.ts";
import type { Level, Logger } from "../core/log.ts";
import type { DerivedRuleStore } from "../mask/derived.ts";
import { cancelHere, relayCancels } from "../protocols/postgres/server.ts";
import { onFullCollection } from "../core/memory.ts";
import { appendBatch } from "./audit.ts";
import { Peer } from "./peer.ts";
import type { Admission } from "./remote.ts";

/** What a worker thread is started with. */
export interface WorkerInit {
  config: Config;
  /** The port of each connection, as this thread bound it: every worker binds the same. */
  ports: number[];
  /** The approvals' gateway name; worker i holds its requests as `${gateway}#${i}`. */
  gateway: string;
  publicUrl?: string;
  /** This worker's number (1…N-1; the main thread is 0). */
  index?: number;
}

export interface WorkerDeps {
  audit: AuditLog;
  limits: Map<string, ListenerLimits>;
  lockout: Lockout;
  derived: DerivedRuleStore;
  log: Logger;
}

export interface WorkerPool {
  /** Every worker re-reads the derived mask rules; resolves once all have. */
  reloadDerived(): Promise<void>;
  /** End every worker's sessions (their records appended), then the workers. */
  close(): Promise<void>;
}

interface Thread {
  index: number;
  worker: Worker;
  peer: Peer;
  /** What the worker's connections and sessions hold of the limits, by token. */
  held: Map<number, Release>;
  exited: Promise<void>;
}

/**
 * worker.ts beside this file; in the executable (scripts/build.ts makes it an entry point of its own) every
 * module's import.meta.url is the executable's, at the root of the sources (src/).
 */
const WORKER_ENTRY = import.meta.url.includes("/$bunfs/") ? new URL("./workers/worker.ts", import.meta.url) : new URL("./worker.ts", import.meta.url);

export async function startWorkers(count: number, init: WorkerInit, deps: WorkerDeps): Promise<WorkerPool> {
  const threads: Thread[] = [];
  let tokens = 0;
  let closing = false;
  const reloadDerived = async () => {
    await Promise.all(threads.map((t) => t.peer.call("derived.reload")));
  };
  const relay = (pid: number, secret: number, client: ClientInfo, from: number) => {
    for (const t of threads) if (t.index !== from) t.peer.note("cancel", pid, secret, client);
  };
  // A CancelRequest this thread accepted for a session it does not hold goes to the workers.
  const stopRelaying = relayCancels((pid, secret, client) => relay(pid, secret, client, 0));
  // The main thread watches the process's RSS; the workers collect their heaps when it collects its own.
  const stopCollecting = onFullCollection(() => {
    for (const t of threads) t.peer.note("gc");
  });

  const spawn = (index: number): Thread => {
    const worker = new Worker(WORKER_ENTRY);
    const held = new Map<number, Release>();
    const admitted = (r: Release | AgateError): Admission => {
      if (r instanceof AgateError) return { error: { code: r.code, message: r.message } };
      const token = ++tokens;
      held.set(token, r);
      return { token };
    };
    const listenerLimits = (name: string) => {
      const l = deps.limits.get(name);
      if (!l) throw new AgateError("WORKER_UNKNOWN_CONNECTION", `no connection named "${name}"`);
      return l;
    };
    const peer = new Peer(worker, {
      audit: (parts: string[]) => appendBatch(deps.audit, parts),
      "limits.connection": (name: string, address: string) => admitted(listenerLimits(name).admitConnection(address)),
      "limits.session": (name: string, subject: string) => admitted(listenerLimits(name).admitSession(subject)),
      release: (token: number) => {
        held.get(token)?.();
        held.delete(token);
      },
      "limits.expired": (name: string, code: ExpiryCode) => {
        const l = deps.limits.get(name);
        if (l && code in l.counts) l.counts[code]++;
      },
      "lockout.check": (address: string, user: string | undefined) => {
        const e = deps.lockout.check(address, user);
        return e ? { code: e.code, message: e.message } : null;
      },
      "lockout.failed": (address: string, user: string | undefined) => deps.lockout.failed(address, user),
      "lockout.succeeded": (user: string) => deps.lockout.succeeded(user),
      "lockout.delay": (ms: number) => deps.lockout.delay(ms),
      cancel: (pid: number, secret: number, client: ClientInfo) => {
        if (!cancelHere(pid, secret, client)) relay(pid, secret, client, index);
      },
      "derived.share": () => {
        deps.derived.reload();
        return reloadDerived();
      },
      log: (level: Level, msg: string, facts: Record<string, unknown>) => deps.log(level, msg, facts),
    });
    const exited = new Promise<void>((done) =>
      worker.once("exit", (code) => {
        peer.gone(`worker ${index} exited`);
        // Its connections are gone with it: what they held of the limits is free again.
        for (const r of held.values()) r();
        held.clear();
        const i = threads.findIndex((t) => t.worker === worker);
        if (i >= 0) threads.splice(i, 1);
        if (!closing) deps.log("error", "worker exited", { worker: index, code });
        done();
      }),
    );
    worker.on("error", (e: Error) => deps.log("error", "worker failed", { worker: index, error: e.message }));
    return { index, worker, peer, held, exited };
  };

  const close = async () => {
    closing = true;
    stopRelaying();
    stopCollecting();
    await Promise.all(
      [...threads].map(async (t) => {
        try {
          await t.peer.call("close");
        } catch {
          // gone already
        }
        await t.worker.terminate();
        await t.exited;
      }),
    );
  };

  try {
    for (let i = 1; i <= count; i++) threads.push(spawn(i));
    await Promise.all(
      threads.map(async (t) => {
        const ports = await t.peer.call<number[]>("start", { ...init, index: t.index } satisfies WorkerInit);
        if (ports.some((p, k) => p !== init.ports[k])) throw new AgateError("WORKER_PORT_MISMATCH", `worker ${t.index} listens on ${ports.join(", ")}, not ${init.ports.join(", ")}`);
      }),
    );
  } catch (e) {
    await close();
    throw e;
  }
  return { reloadDerived, close };
}
