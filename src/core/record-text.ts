/**
 * Which fields of an audit record may carry text from outside the gateway,
 * and masking them. The guard appends every record through maskRecord()
 * (guard.ts `append`, `later`), so whatever a client or a target can put
 * into a record passes the masker first:
 *
 *   the client's   SQL text, Bind parameters, decision reasons (a parse
 *                  error quotes the text: `at or near "…"`), startup
 *                  parameters (application_name, the settings asked
 *                  for at connect), the user name of a
 *                  refused session and the reason that quotes it
 *   the target's   error messages copied into outcomes, and the reason a
 *                  session ended (a target's refusal of a startup
 *                  parameter quotes its value)
 *
 * Everything else in a record is the gateway's own: ids, verified
 * identities, configured names and addresses, counts, policy versions.
 * A new record field that can carry outside text belongs in OUTSIDE_TEXT.
 */
import { type CompiledMask, maskWith } from "../mask/rules.ts";
import type { MaskCounts } from "../mask/types.ts";

/** Paths of outside text, by record type. */
const OUTSIDE_TEXT: Readonly<Record<string, readonly (readonly string[])[]>> = {
  session_start: [["client", "application"], ["settings"]],
  session_refused: [["client", "application"], ["user"], ["reason"]],
  cancel: [["client", "application"]],
  session_end: [["reason"]],
  command: [["text"], ["params"], ["decision", "reasons"], ["exec"]],
  outcome: [["error", "message"], ["exit", "message"]],
  lockout: [["client", "application"], ["user"]],
};

/**
 * `fields` with its outside text masked by `m` (strings, and lists of
 * strings such as parameters and reasons), counts per detector added to
 * `counts`; the objects on the way to a masked field are copied, never
 * changed. A record type not in OUTSIDE_TEXT comes back as it is.
 */
export function maskRecord<T extends Record<string, unknown>>(fields: T, m: CompiledMask, counts: MaskCounts = {}): T {
  const paths = OUTSIDE_TEXT[fields.type as string];
  if (!paths || m.detectors.length === 0) return fields;
  let out = fields;
  for (const path of paths) out = maskAt(out, path, 0, m, counts) as T;
  return out;
}

function maskAt(obj: Record<string, unknown>, path: readonly string[], i: number, m: CompiledMask, counts: MaskCounts): Record<string, unknown> {
  const key = path[i]!;
  if (!Object.hasOwn(obj, key)) return obj;
  const v = obj[key];
  const masked = i + 1 < path.length ? (v !== null && typeof v === "object" && !Array.isArray(v) ? maskAt(v as Record<string, unknown>, path, i + 1, m, counts) : v) : maskOutside(v, m, counts);
  return masked === v ? obj : { ...obj, [key]: masked };
}

/**
 * A string, or a list of strings and NULLs (parameters, reasons), masked; and every string inside the
 * lists and objects of a structure of facts taken from outside text (SSH exec facts); anything else unchanged.
 */
function maskOutside(v: unknown, m: CompiledMask, counts: MaskCounts): unknown {
  if (typeof v === "string") return maskText(v, m, counts);
  if (v === null || typeof v !== "object") return v;
  if (!Array.isArray(v)) {
    let out: Record<string, unknown> | undefined;
    for (const [k, x] of Object.entries(v)) {
      const y = maskOutside(x, m, counts);
      if (y !== x) (out ??= { ...(v as Record<string, unknown>) })[k] = y;
    }
    return out ?? v;
  }
  let out: unknown[] | undefined;
  v.forEach((x, i) => {
    const y = maskOutside(x, m, counts);
    if (y !== x) (out ??= [...v])[i] = y;
  });
  return out ?? v;
}

/**
 * Text for a record. A binary parameter agate could not read as text
 * ("base64:…", see params.ts) is read as bytes, masked and written back the
 * same way. Bytes are scanned even where they do not read as text: a
 * record is not data a client reads back, so masking more is the safe side.
 */
function maskText(s: string, m: CompiledMask, counts: MaskCounts): string {
  if (!s.startsWith("base64:")) return maskWith(s, m, counts, undefined, true);
  const bytes = Buffer.from(s.slice(7), "base64").toString("latin1");
  const masked = maskWith(bytes, m, counts, undefined, true);
  return masked === bytes ? s : `base64:${Buffer.from(masked, "latin1").toString("base64")}`;
}
