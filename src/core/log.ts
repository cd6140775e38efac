/**
 * Structured JSON lines on stderr: {"t":…,"level":…,"msg":…, …facts}.
 *
 * Facts can quote what a client or a target sent (a refused user name, a
 * target's error about a startup parameter, why a session ended): every
 * string fact passes the masker with every detector but the address ones
 * (ipv4, ipv6: the log is where an operator finds the gateway's clients and
 * targets) before it is written, except the gateway's own names
 * (GATEWAY_FACTS). Messages are the gateway's own constant sentences.
 */
import { ALL_DETECTORS } from "../mask/detectors.ts";
import { compileMask, maskWith } from "../mask/rules.ts";

export type Level = "debug" | "info" | "warn" | "error";

export interface Logger {
  (level: Level, msg: string, facts?: Record<string, unknown>): void;
}

const order: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

/** Whether a line of `level` is written where `min` is the configured level. */
export function logs(level: Level, min: Level): boolean {
  return order[level] >= order[min];
}

/** Facts that name what the gateway itself configured, verified or made: not masked. */
const GATEWAY_FACTS = new Set(["connection", "session", "client", "address", "target", "subject", "dir", "key", "version", "previous", "bundle", "file", "segment", "request", "code", "type", "protocol", "signal"]);

const EVERY = compileMask({ columns: [], detectors: ALL_DETECTORS.filter((d) => d !== "ipv4" && d !== "ipv6") });

/** A fact as the log writes it: strings (also inside lists and objects) masked unless the gateway's own. */
function maskFact(v: unknown): unknown {
  if (typeof v === "string") return maskWith(v, EVERY, undefined, undefined, true);
  if (Array.isArray(v)) return v.map(maskFact);
  if (v !== null && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, maskFact(x)]));
  return v;
}

export function createLogger(min: Level = "info", write: (line: string) => void = (l) => process.stderr.write(l)): Logger {
  return (level, msg, facts = {}) => {
    if (order[level] < order[min]) return;
    const shown: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(facts)) shown[k] = GATEWAY_FACTS.has(k) ? v : maskFact(v);
    write(JSON.stringify({ t: new Date().toISOString(), level, msg, ...shown }) + "\n");
  };
}
