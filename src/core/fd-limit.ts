/**
 * How many connections a process can keep open before accept() would fail
 * with EMFILE. Bun's listener retries a failing accept at once, so reaching
 * the limit spins a core and accepts no one: listeners stay below it instead.
 */
import { readFileSync } from "node:fs";

/** File descriptors kept free for log segments, the catalog, the admin API and the like. */
const RESERVE = 64;
let cached = { at: -Infinity, limit: Infinity };

/** The soft RLIMIT_NOFILE (read from /proc, at most once a second; Infinity where unknown). */
export function openFileLimit(now = performance.now()): number {
  if (now - cached.at < 1000) return cached.limit;
  let limit = Infinity;
  try {
    const m = /^Max open files\s+(\d+)/m.exec(readFileSync("/proc/self/limits", "utf8"));
    if (m) limit = Number(m[1]);
  } catch {
    // Not Linux: no figure, no cap.
  }
  cached = { at: now, limit };
  return limit;
}

/** Client connections the process can hold when each also holds one to its target. */
export function connectionCap(): number {
  return Math.max(1, Math.floor((openFileLimit() - RESERVE) / 2));
}
