/**
 * A bound on garbage: a full collection whenever the process has grown by
 * GROWTH_BYTES since the last one.
 *
 * What a session leaves behind (its sockets' native buffers, the chunks it
 * read and relayed) is freed only by a full collection, and JavaScriptCore
 * does not count that memory as pressure: neither its own heuristics nor an
 * asynchronous `Bun.gc(false)` reclaim it in time. Measured under the soak's
 * pipelining clients (scripts/bench/soak.ts --only pipeline-flood), RSS grew
 * by about 1 MB per closed session, past 1.3 GB in 20 s, while a full
 * collection brought it back under 150 MB. So the process checks its RSS
 * every CHECK_MS and collects once it has grown by GROWTH_BYTES: live memory
 * plus at most that much garbage (and what one interval adds), at the cost of
 * a pause of a few tens of ms, only when that much was allocated.
 *
 * RSS is the process's, and a full collection collects one thread's heap:
 * with worker threads (src/workers) only the main thread checks, and asks
 * the others to collect with it (onFullCollection), instead of each thread
 * collecting whenever the process as a whole is over its own floor.
 */
import type { Logger } from "./log.ts";

/** Growth of RSS since the last full collection that triggers the next. */
export const GROWTH_BYTES = 64 << 20;
const CHECK_MS = 250;

let holders = 0;
let timer: ReturnType<typeof setInterval> | undefined;
/** RSS right after the last collection (or the lowest seen since). */
let floor = 0;
let log: Logger | undefined;
/** Told of each full collection here (the worker threads collect too). */
const alsoCollect = new Set<() => void>();

/** Call `f` whenever this thread makes a full collection, until the returned function is called. */
export function onFullCollection(f: () => void): () => void {
  alsoCollect.add(f);
  return () => alsoCollect.delete(f);
}

/** One check: collect if RSS is GROWTH_BYTES over the floor. Exported for tests. */
export function checkMemory(rss = process.memoryUsage.rss()): boolean {
  if (rss < floor || floor === 0) floor = rss;
  if (rss - floor < GROWTH_BYTES) return false;
  const started = performance.now();
  for (const f of alsoCollect) f();
  Bun.gc(true);
  const after = process.memoryUsage.rss();
  log?.("debug", "garbage collected", { rss_before_mb: Math.round(rss / 2 ** 20), rss_after_mb: Math.round(after / 2 ** 20), ms: Math.round(performance.now() - started) });
  floor = after;
  return true;
}

/**
 * Keep the bound while the returned function has not been called (once per
 * gateway; several gateways in one process share one timer).
 */
export function boundGarbage(logger?: Logger): () => void {
  holders++;
  log ??= logger;
  if (timer === undefined) {
    floor = 0;
    timer = setInterval(() => checkMemory(), CHECK_MS);
    timer.unref?.();
  }
  let released = false;
  return () => {
    if (released) return;
    released = true;
    if (--holders === 0 && timer !== undefined) {
      clearInterval(timer);
      timer = undefined;
      log = undefined;
    }
  };
}
