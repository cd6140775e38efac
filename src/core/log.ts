/** Structured JSON lines on stderr: {"t":…,"level":…,"msg":…, …facts}. */
export type Level = "debug" | "info" | "warn" | "error";

export interface Logger {
  (level: Level, msg: string, facts?: Record<string, unknown>): void;
}

const order: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export function createLogger(min: Level = "info", write: (line: string) => void = (l) => process.stderr.write(l)): Logger {
  return (level, msg, facts = {}) => {
    if (order[level] < order[min]) return;
    write(JSON.stringify({ t: new Date().toISOString(), level, msg, ...facts }) + "\n");
  };
}
