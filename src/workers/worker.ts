/**
 * A worker thread of the gateway (config `workers`): its own policy engine,
 * identity step, approvals, guard and listeners, bound with SO_REUSEPORT
 * to the ports the main thread got; the audit log, the limits, the lockout
 * and other threads' cancel keys are the main thread's (pool.ts), asked
 * over the port.
 */
import { parentPort } from "node:worker_threads";
import { type Logger, logs } from "../core/log.ts";
import { serveConnections, type Serving } from "../gateway.ts";
import { cancelHere, relayCancels } from "../protocols/postgres/server.ts";
import { initSql } from "../protocols/postgres/sql.ts";
import { RemoteAuditSink } from "./audit.ts";
import { Peer } from "./peer.ts";
import type { WorkerInit } from "./pool.ts";
import { RemoteLimits, RemoteLockout } from "./remote.ts";

let serving: Serving<RemoteLockout> | null = null;
let stopRelaying: (() => void) | undefined;
let sink: RemoteAuditSink | null = null;

const peer = new Peer(parentPort!, {
  async start(init: WorkerInit): Promise<number[]> {
    const { config } = init;
    const index = init.index!;
    await initSql();
    // Logged by the main thread's logger (it masks facts), tagged with this worker.
    const log: Logger = (level, msg, facts = {}) => {
      if (logs(level, config.log_level)) peer.note("log", level, msg, { ...facts, worker: index });
    };
    sink = new RemoteAuditSink(peer);
    const limits = new Map(config.connections.map((c) => [c.name, new RemoteLimits(peer, c.name, c.limits)]));
    serving = await serveConnections(config, log, {
      audit: sink,
      lockout: () => new RemoteLockout(peer),
      limits: (name) => limits.get(name)!,
      gateway: init.gateway,
      publicUrl: () => init.publicUrl,
      worker: index,
      reusePort: "join",
      ports: init.ports,
      shareDerived: () => peer.call("derived.share"),
    });
    stopRelaying = relayCancels((pid, secret, client) => peer.note("cancel", pid, secret, client));
    return serving.listeners.map((l) => l.port);
  },
  async close(): Promise<void> {
    stopRelaying?.();
    await serving?.end();
    // Every record of the sessions that just ended reaches the log before this thread goes.
    await sink?.drain();
    await serving?.release();
    serving = null;
  },
  cancel(pid: number, secret: number, client: Parameters<typeof cancelHere>[2]): void {
    cancelHere(pid, secret, client);
  },
  /** The main thread made a full collection (core/memory.ts): so does this thread, of its own heap. */
  gc(): void {
    Bun.gc(true);
  },
  "derived.reload"(): void {
    serving?.derived.reload();
  },
});
