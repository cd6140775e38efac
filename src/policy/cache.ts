/**
 * Decisions cached on exactly what the policy reads of its input.
 *
 * The manifest (build.ts) carries the read tree the plan analysis found
 * (reads.ts). The cache key of an input is its projection on that tree: the
 * parts read whole in canonical JSON, the parts only looked into as their
 * type (booleans with their value), the keys where keys are read, and the
 * fields looked at. Two inputs with one projection are indistinguishable to
 * the policy, so they get one decision: a cached decision is the one the
 * policy would make, by construction. Grants, identity, connection and
 * statement facts are in the key as far as the policy reads them, so a
 * changed grant or identity is a different key; a reload makes a new cache.
 *
 * No cache is made (every input is evaluated) when the policy reads
 * `input.now`, calls a nondeterministic builtin, could not be analysed, or
 * the manifest does not describe this very policy.wasm.
 */
import { GenerationalCache } from "../core/generational-cache.ts";
import type { Decision } from "../core/types.ts";
import type { PolicyInputs } from "./build.ts";
import type { ReadNode } from "./reads.ts";

/** Decisions kept, and key characters kept (the keys are the projections: a few hundred characters each). */
const MAX_ENTRIES = 16_384;
const MAX_KEY_CHARS = 16_000_000;

export class DecisionCache {
  private readonly cache = new GenerationalCache<Decision>(MAX_ENTRIES, MAX_KEY_CHARS);
  private readonly project: (v: unknown) => string;

  constructor(reads: ReadNode) {
    this.project = projector(reads);
  }

  /** The key of an input; undefined when it holds a value JSON does not carry (the input is then evaluated). */
  key(input: object): string | undefined {
    try {
      return this.project(input);
    } catch {
      return undefined;
    }
  }

  get(key: string): Decision | undefined {
    return this.cache.get(key);
  }

  /** After a miss: a decision is shared by every input with this key, so it is frozen. */
  set(key: string, decision: Decision): void {
    this.cache.set(key, deepFreeze(decision));
  }
}

/**
 * Why decisions of this policy cannot be cached, or null when they can.
 * `wasmSha256` is the policy.wasm being loaded: a manifest for another module says nothing about it.
 */
export function uncacheable(inputs: PolicyInputs | undefined, wasmSha256: string): string | null {
  if (!inputs) return "the bundle has no manifest saying what the policy reads (build it with `agate policy build`)";
  if (inputs.wasm_sha256 !== wasmSha256) return "the manifest describes another policy.wasm";
  if (!inputs.reads) return `the policy could not be analysed: ${inputs.unanalysed ?? "unknown reason"}`;
  if (inputs.now) return "the policy reads input.now";
  if (inputs.nondeterministic.length > 0) return `the policy calls ${inputs.nondeterministic.join(", ")}`;
  return null;
}

type Project = (v: unknown) => string;

/** Compiles a read tree into a function from a value to its projection. */
export function projector(node: ReadNode): Project {
  if (node.whole) return canonical;
  const keys = node.keys === true;
  const fields = Object.keys(node.fields ?? {}).sort();
  const any = node.any ? projector(node.any) : undefined;
  // A field also covered by `any` is read as both: merge the two trees.
  const fieldProject = new Map(fields.map((f) => [f, projector(node.any ? merge(node.fields![f]!, node.any) : node.fields![f]!)]));
  const memo = new WeakMap<object, string>();
  return (v) => {
    if (v === null || typeof v !== "object") return tag(v);
    if (Object.isFrozen(v)) {
      const hit = memo.get(v);
      if (hit !== undefined) return hit;
    }
    let out: string;
    if (Array.isArray(v)) {
      // OPA looks into an array by number only: named fields of an array are undefined whatever it holds.
      out = `a${keys || any ? v.length : ""}`;
      if (any) for (const x of v) out += `,${any(x === undefined ? null : x)}`;
    } else {
      if (Object.getPrototypeOf(v) !== Object.prototype && Object.getPrototypeOf(v) !== null) throw new TypeError("not a JSON object");
      const o = v as Record<string, unknown>;
      out = "o";
      if (keys || any) {
        const present = Object.keys(o).filter((k) => o[k] !== undefined).sort();
        if (keys) out += JSON.stringify(present);
        if (any) for (const k of present) out += `,${JSON.stringify(k)}:${(fieldProject.get(k) ?? any)(o[k])}`;
      }
      if (!any) for (const f of fields) out += `,${fieldProject.get(f)!(Object.hasOwn(o, f) ? o[f] : undefined)}`;
    }
    out += ";";
    if (Object.isFrozen(v)) memo.set(v, out);
    return out;
  };
}

/** A value looked into but not read whole: its type, and a boolean's value (`x`, `not x` test it). */
function tag(v: unknown): string {
  switch (typeof v) {
    case "undefined":
      return "u";
    case "string":
      return "s";
    case "number":
      return "n";
    case "boolean":
      return v ? "t" : "f";
    default:
      if (v === null) return "z";
      throw new TypeError(`a ${typeof v} is not JSON`);
  }
}

const canonicalMemo = new WeakMap<object, string>();

/** JSON with sorted keys, as the policy sees the value (undefined fields absent, as JSON.stringify drops them); "u" for no value. */
function canonical(v: unknown): string {
  if (v === undefined) return "u";
  if (v === null) return "null";
  if (typeof v !== "object") {
    if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") return JSON.stringify(v);
    throw new TypeError(`a ${typeof v} is not JSON`);
  }
  const frozen = Object.isFrozen(v);
  if (frozen) {
    const hit = canonicalMemo.get(v);
    if (hit !== undefined) return hit;
  }
  let out: string;
  if (Array.isArray(v)) out = `[${v.map((x) => (x === undefined ? "null" : canonical(x))).join(",")}]`;
  else {
    if (Object.getPrototypeOf(v) !== Object.prototype && Object.getPrototypeOf(v) !== null) throw new TypeError("not a JSON object");
    const o = v as Record<string, unknown>;
    const parts: string[] = [];
    for (const k of Object.keys(o).sort()) if (o[k] !== undefined) parts.push(`${JSON.stringify(k)}:${canonical(o[k])}`);
    out = `{${parts.join(",")}}`;
  }
  if (frozen) canonicalMemo.set(v, out);
  return out;
}

function merge(a: ReadNode, b: ReadNode): ReadNode {
  if (a.whole || b.whole) return { whole: true };
  const out: ReadNode = {};
  if (a.keys || b.keys) out.keys = true;
  const names = new Set([...Object.keys(a.fields ?? {}), ...Object.keys(b.fields ?? {})]);
  if (names.size > 0) {
    out.fields = {};
    for (const n of names) {
      const x = a.fields?.[n];
      const y = b.fields?.[n];
      out.fields[n] = x && y ? merge(x, y) : (x ?? y)!;
    }
  }
  if (a.any || b.any) out.any = a.any && b.any ? merge(a.any, b.any) : (a.any ?? b.any);
  return out;
}

function deepFreeze<T>(v: T): T {
  if (v !== null && typeof v === "object" && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const x of Object.values(v)) deepFreeze(x);
  }
  return v;
}
