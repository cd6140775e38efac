/**
 * The policy engine: load a compiled bundle once, decide many times.
 *
 *   const engine = await createPolicyEngine({ file: "wasm/policy.wasm", watch: true });
 *   const d = engine.decide({ stage: "command", ... });   // synchronous, never throws
 *
 * A bundle is either a bare policy.wasm or the bundle.tar.gz `opa build`
 * writes (its /policy.wasm and /data.json are used). Every load is checked
 * (ABI, the agate/decision entrypoint, a probe evaluation per stage that
 * must return a well-formed decision), so a bad bundle fails when it is
 * loaded or reloaded, never on a live command.
 *
 * With the manifest `agate policy build` writes beside policy.wasm (or
 * `manifest` for bytes), decisions are cached on exactly what the policy
 * reads (cache.ts); each load has its own cache, so a reload starts afresh.
 */
import { type FSWatcher, statSync, watch } from "node:fs";
import { basename, dirname, join } from "node:path";
import { loadPolicy as loadOpaPolicy, type LoadedPolicy as OpaPolicy } from "@open-policy-agent/opa-wasm";
import { AgateError, asError } from "../core/errors.ts";
import type { Decision } from "../core/types.ts";
import type { PolicyInputs, PolicyManifest } from "./build.ts";
import { DecisionCache, uncacheable } from "./cache.ts";
import { deny, ENTRYPOINT, normalizeDecision, parseDecision, POLICY_ERROR } from "./decision.ts";
import { readTarGz } from "./tar.ts";

export type LogLevel = "info" | "warn" | "error";
export type PolicyLog = (level: LogLevel, msg: string, facts: Record<string, unknown>) => void;

/** One loaded, validated bundle. */
export interface LoadedPolicy {
  /** First 12 hex digits of SHA-256 over the policy.wasm bytes. */
  readonly version: string;
  /** Evaluates agate/decision (or answers from the cache); throws only if the wasm itself fails (PolicyEngine.decide catches that). */
  decide(input: object): Decision;
  /** Why decisions are not cached, or null when they are. */
  readonly uncached: string | null;
  /** Evaluations of the wasm, and decisions answered from the cache, since the load. */
  readonly stats: { evaluated: number; cached: number };
}

export interface PolicyEngine {
  /** Synchronous and fast; never throws: any failure is a deny with a reason "agate.policy.error: ...". */
  decide(input: object): Decision;
  /** Version of the bundle in use now (changes on reload). */
  readonly version: string;
  /** Whether decisions of the bundle in use are cached (cache.ts): the policy reads neither input.now nor anything nondeterministic. */
  readonly caching: boolean;
  /** The bundle in use now. */
  readonly current: LoadedPolicy;
  /** Stops watching; decide() denies afterwards. */
  close(): void;
}

export interface PolicyEngineOptions {
  /** A policy.wasm or bundle.tar.gz on disk; a sibling data.json is merged into the data of a bare policy.wasm. */
  file?: string;
  /** The bundle's bytes, when it does not come from a file (e.g. embedded in the binary). */
  bytes?: Uint8Array;
  /** The manifest.json of `bytes` (a `file`'s is read from beside it). */
  manifest?: PolicyManifest;
  /** The data document (e.g. {"agate": {"config": {...}}}); merged over the bundle's own data. */
  data?: object;
  /** Reload `file` when it changes. */
  watch?: boolean;
  onLog?: PolicyLog;
  /** Fallback poll period for watch, in milliseconds (default 1000). */
  pollMs?: number;
}

/** Inputs every well-formed policy must answer with a decision at load time. */
const PROBES: object[] = [
  {
    stage: "session",
    now: "1970-01-01T00:00:00Z",
    identity: { subject: "agate-probe", issuer: "agate", groups: [], kind: "service" },
    connection: { name: "agate-probe", protocol: "postgres", target: "" },
    session: { id: "agate-probe", started_at: "1970-01-01T00:00:00Z" },
  },
  {
    stage: "command",
    now: "1970-01-01T00:00:00Z",
    identity: { subject: "agate-probe", issuer: "agate", groups: [], kind: "service" },
    connection: { name: "agate-probe", protocol: "postgres", target: "" },
    session: { id: "agate-probe", started_at: "1970-01-01T00:00:00Z" },
    command: {
      text: "SELECT 1",
      sql: {
        statements: [
          { kind: "select", node: "SelectStmt", tag: "SELECT", reads: [], writes: [], functions: [], columns: [], whole_row: false, text: "SELECT 1" },
        ],
        multi: false,
      },
    },
  },
];

/**
 * Loads and validates a compiled policy (bare wasm or bundle.tar.gz).
 * Throws AgateError("POLICY_INVALID") when the module does not load, lacks
 * the agate/decision entrypoint, or answers a probe with a malformed decision.
 */
export async function loadPolicy(bundle: Uint8Array, data?: object, inputs?: PolicyInputs): Promise<LoadedPolicy> {
  const { wasm, bundleData } = unpack(bundle);
  const sha256 = new Bun.CryptoHasher("sha256").update(wasm).digest("hex");
  const version = sha256.slice(0, 12);
  const invalid = (message: string, reason: unknown) =>
    new AgateError("POLICY_INVALID", message, { version, reason: asError(reason).message });

  let module: WebAssembly.Module;
  let opa: OpaPolicy;
  try {
    module = new WebAssembly.Module(wasm);
    opa = await loadOpaPolicy(module);
  } catch (e) {
    throw invalid("The policy bundle is not a loadable OPA WebAssembly module; rebuild it with `agate policy build`.", e);
  }
  const entrypoints = (opa.entrypoints ?? {}) as Record<string, number>;
  const entrypoint = entrypoints[ENTRYPOINT];
  if (typeof entrypoint !== "number") {
    throw new AgateError(
      "POLICY_INVALID",
      `The policy bundle has no ${ENTRYPOINT} entrypoint; build it with \`opa build -t wasm -e ${ENTRYPOINT}\`.`,
      { version, want: ENTRYPOINT, got: Object.keys(entrypoints) },
    );
  }
  const merged = mergeData(bundleData, data);
  if (merged !== undefined) {
    try {
      opa.setData(merged);
    } catch (e) {
      throw invalid("The policy data could not be loaded into the bundle.", e);
    }
  }

  let renewing = false;
  const renew = () => {
    if (renewing) return;
    renewing = true;
    loadOpaPolicy(module)
      .then((fresh) => {
        if (merged !== undefined) fresh.setData(merged);
        opa = fresh;
      })
      .catch(() => {}) // the old instance keeps serving; the next failure tries again
      .finally(() => (renewing = false));
  };
  const evaluate = (input: object): Decision => {
    let rs: unknown;
    try {
      rs = opa.evaluate(input, entrypoint);
    } catch (e) {
      // An aborted evaluation (a rule conflict, a builtin error) unwinds the
      // module's own stack without restoring it; a few hundred of them leave
      // the instance unusable. Swap in a fresh one from the compiled module
      // (about a millisecond) so repeated bad inputs cannot deny every later command.
      renew();
      throw e;
    }
    return normalizeDecision(Array.isArray(rs) ? (rs[0] as { result?: unknown } | undefined)?.result : rs);
  };
  const uncached = uncacheable(inputs, sha256);
  const cache = uncached === null ? new DecisionCache(inputs!.reads!) : undefined;
  const stats = { evaluated: 0, cached: 0 };
  const policy: LoadedPolicy = {
    version,
    uncached,
    stats,
    decide(input: object): Decision {
      const key = cache?.key(input);
      if (key !== undefined) {
        const hit = cache!.get(key);
        if (hit !== undefined) {
          stats.cached++;
          return hit;
        }
      }
      stats.evaluated++;
      const decision = evaluate(input); // an evaluation that throws is not cached: the next one tries again
      if (key !== undefined) cache!.set(key, decision);
      return decision;
    },
  };

  for (const probe of PROBES) {
    let raw: unknown;
    try {
      const rs: unknown = opa.evaluate(probe, entrypoint);
      raw = Array.isArray(rs) ? (rs[0] as { result?: unknown } | undefined)?.result : rs;
    } catch (e) {
      throw invalid(`The policy failed to evaluate a ${(probe as { stage: string }).stage} probe input.`, e);
    }
    const parsed = parseDecision(raw);
    if (typeof parsed === "string") {
      throw new AgateError(
        "POLICY_INVALID",
        `The policy answers a ${(probe as { stage: string }).stage} probe input with a malformed decision: ${parsed}.`,
        { version, reason: parsed },
      );
    }
  }
  return policy;
}

/**
 * An engine over one bundle (from `file` or `bytes`), optionally reloading
 * `file` when it changes. A reload that fails keeps the last good bundle and
 * logs "policy reload failed; keeping the last good bundle"; sessions never
 * notice a reload other than through the decisions they get.
 */
export async function createPolicyEngine(opts: PolicyEngineOptions): Promise<PolicyEngine> {
  const log: PolicyLog = opts.onLog ?? (() => {});
  const { file } = opts;
  if (!file && !opts.bytes) {
    throw new AgateError("POLICY_INVALID", "createPolicyEngine needs a policy `file` or `bytes`.", {});
  }

  const readBundle = async (path: string): Promise<{ bytes: Uint8Array; data?: object; inputs?: PolicyInputs }> => {
    const bytes = new Uint8Array(await Bun.file(path).arrayBuffer());
    if (isGzip(bytes)) return { bytes, data: opts.data };
    const inputs = await readInputs(join(dirname(path), "manifest.json"));
    const sibling = Bun.file(join(dirname(path), "data.json"));
    if (!(await sibling.exists())) return { bytes, data: opts.data, inputs };
    return { bytes, data: mergeData((await sibling.json()) as object, opts.data), inputs };
  };

  let current: LoadedPolicy;
  if (file) {
    const first = await readBundle(file);
    current = await loadPolicy(first.bytes, first.data, first.inputs);
  } else {
    current = await loadPolicy(opts.bytes!, opts.data, opts.manifest?.inputs);
  }
  if (current.uncached) log("info", "policy decisions are not cached", { version: current.version, reason: current.uncached });

  let closed = false;
  const stopWatching = file && opts.watch ? watchFile(file, opts.pollMs ?? 1000, reload) : () => {};

  // Reloads run one at a time; a change during a reload schedules one more.
  let reloading = false;
  let again = false;
  async function reload(): Promise<void> {
    if (reloading) {
      again = true;
      return;
    }
    reloading = true;
    try {
      do {
        again = false;
        if (closed) return;
        try {
          const next = await readBundle(file!);
          const loaded = await loadPolicy(next.bytes, next.data, next.inputs);
          if (closed) return;
          if (loaded.version !== current.version || loaded.uncached !== current.uncached) {
            const previous = current.version;
            current = loaded;
            log("info", "policy reloaded", { version: loaded.version, previous, file });
          }
        } catch (e) {
          const err = asError(e);
          log("error", "policy reload failed; keeping the last good bundle", {
            reason: err.message,
            code: err instanceof AgateError ? err.code : undefined,
            details: err instanceof AgateError ? err.details : undefined,
            version: current.version,
            file,
          });
        }
      } while (again);
    } finally {
      reloading = false;
    }
  }

  return {
    decide(input: object): Decision {
      if (closed) return deny(`${POLICY_ERROR}: the policy engine is closed`);
      try {
        return current.decide(input);
      } catch (e) {
        return deny(`${POLICY_ERROR}: ${asError(e).message} (policy ${current.version})`);
      }
    },
    get version() {
      return current.version;
    },
    get caching() {
      return current.uncached === null;
    },
    get current() {
      return current;
    },
    close() {
      closed = true;
      stopWatching();
    },
  };
}

/**
 * Calls onChange when `file` (or a data.json beside it) may have changed:
 * fs.watch on the directory (catches rename-into-place), plus a stat poll
 * every pollMs for filesystems where watch events do not arrive.
 */
function watchFile(file: string, pollMs: number, onChange: () => void): () => void {
  const dir = dirname(file);
  const names = new Set([basename(file), "data.json"]);
  const signature = () => {
    const parts: string[] = [];
    for (const name of names) {
      try {
        const s = statSync(join(dir, name));
        parts.push(`${s.ino}:${s.size}:${s.mtimeMs}`);
      } catch {
        parts.push("-");
      }
    }
    return parts.join("|");
  };

  let seen = signature();
  let debounce: ReturnType<typeof setTimeout> | undefined;
  const check = () => {
    const now = signature();
    if (now === seen) return;
    seen = now;
    onChange();
  };
  // Writers rarely replace a file in one event: wait for them to settle.
  const soon = () => {
    if (debounce) clearTimeout(debounce);
    debounce = setTimeout(check, 50);
  };

  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(dir, { persistent: false }, (_event, name) => {
      if (!name || names.has(basename(name.toString()))) soon();
    });
    watcher.on("error", () => {});
  } catch {
    watcher = undefined; // the poll below still notices changes
  }
  const poll = setInterval(check, pollMs);
  poll.unref?.();

  return () => {
    watcher?.close();
    clearInterval(poll);
    if (debounce) clearTimeout(debounce);
  };
}

/** The `inputs` of a manifest.json beside a policy.wasm; undefined when there is none or it cannot be read (nothing is cached then). */
async function readInputs(path: string): Promise<PolicyInputs | undefined> {
  try {
    const m = (await Bun.file(path).json()) as Partial<PolicyManifest> | null;
    return m?.inputs ?? undefined;
  } catch {
    return undefined;
  }
}

function isGzip(b: Uint8Array): boolean {
  return b[0] === 0x1f && b[1] === 0x8b;
}

/** Takes policy.wasm (and data.json) out of a bundle.tar.gz; a bare wasm module passes through. */
function unpack(bundle: Uint8Array): { wasm: Uint8Array; bundleData?: object } {
  if (!isGzip(bundle)) return { wasm: bundle };
  let files: Map<string, Uint8Array>;
  try {
    files = readTarGz(bundle);
  } catch (e) {
    throw new AgateError("POLICY_INVALID", "The policy bundle.tar.gz could not be read.", { reason: asError(e).message });
  }
  const wasm = files.get("policy.wasm");
  if (!wasm) {
    throw new AgateError("POLICY_INVALID", "The policy bundle.tar.gz has no /policy.wasm; build it with `opa build -t wasm`.", {
      got: [...files.keys()],
    });
  }
  const data = files.get("data.json");
  if (!data) return { wasm };
  try {
    return { wasm, bundleData: JSON.parse(new TextDecoder().decode(data)) as object };
  } catch (e) {
    throw new AgateError("POLICY_INVALID", "The policy bundle's /data.json is not valid JSON.", {
      reason: asError(e).message,
    });
  }
}

/** Deep-merges objects, `over` winning; undefined when there is no data at all. */
function mergeData(base: object | undefined, over: object | undefined): object | undefined {
  if (base === undefined || isEmpty(base)) return over;
  if (over === undefined) return base;
  const out: Record<string, unknown> = { ...(base as Record<string, unknown>) };
  for (const [k, v] of Object.entries(over)) {
    const b = out[k];
    out[k] = isPlainObject(b) && isPlainObject(v) ? mergeData(b, v) : v;
  }
  return out;
}

function isPlainObject(v: unknown): v is object {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isEmpty(v: object): boolean {
  return isPlainObject(v) && Object.keys(v).length === 0;
}
