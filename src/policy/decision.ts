/**
 * The decision shape of the policy contract (DESIGN.md), and the one
 * function that turns whatever a policy returned into it. Anything that is
 * not exactly a decision is a deny: the gateway fails closed.
 */
import type { Decision } from "../core/types.ts";

/** The rule every bundle must be built with (`opa build -e agate/decision`). */
export const ENTRYPOINT = "agate/decision";

/** Reason prefix when the policy returned no decision or a malformed one. */
export const MALFORMED = "agate.policy.malformed";
/** Reason prefix when the policy could not be evaluated at all. */
export const POLICY_ERROR = "agate.policy.error";

/** A deny carrying the given reasons, with the contract's empty approval and mask. */
export function deny(...reasons: string[]): Decision {
  return {
    allow: false,
    reasons,
    approval: { required: false, approvers: [], timeout_s: 0 },
    mask: { columns: [], detectors: [] },
  };
}

/**
 * Checks `raw` against the decision contract. Returns the decision (a fresh
 * object holding only the contract's fields) or a sentence naming the first
 * field that is wrong.
 */
export function parseDecision(raw: unknown): Decision | string {
  if (raw === undefined) return "the policy returned no decision (agate/decision is undefined for this input)";
  if (!isObject(raw)) return `the decision is ${describe(raw)}, not an object`;
  const { allow, reasons, approval, mask } = raw;
  if (typeof allow !== "boolean") return `decision.allow is ${describe(allow)}, not a boolean`;
  if (!isStrings(reasons)) return `decision.reasons is ${describe(reasons)}, not a list of strings`;
  if (!isObject(approval)) return `decision.approval is ${describe(approval)}, not an object`;
  const { required, approvers, timeout_s, min_approvers } = approval;
  if (typeof required !== "boolean") return `decision.approval.required is ${describe(required)}, not a boolean`;
  if (!isStrings(approvers)) return `decision.approval.approvers is ${describe(approvers)}, not a list of strings`;
  if (typeof timeout_s !== "number" || !Number.isFinite(timeout_s) || timeout_s < 0) {
    return `decision.approval.timeout_s is ${describe(timeout_s)}, not a number of seconds >= 0`;
  }
  if (min_approvers !== undefined && (typeof min_approvers !== "number" || !Number.isInteger(min_approvers) || min_approvers < 1 || min_approvers > 10)) {
    return `decision.approval.min_approvers is ${describe(min_approvers)}, not a whole number from 1 to 10`;
  }
  if (!isObject(mask)) return `decision.mask is ${describe(mask)}, not an object`;
  const { columns, detectors } = mask;
  if (!isStrings(columns)) return `decision.mask.columns is ${describe(columns)}, not a list of strings`;
  if (!isStrings(detectors)) return `decision.mask.detectors is ${describe(detectors)}, not a list of strings`;
  return { allow, reasons, approval: { required, approvers, timeout_s, ...(min_approvers !== undefined ? { min_approvers } : {}) }, mask: { columns, detectors } };
}

/**
 * The decision `raw` stands for, or a deny whose reason starts with
 * "agate.policy.malformed: " when it is missing or does not match the
 * contract. Never throws.
 */
export function normalizeDecision(raw: unknown): Decision {
  const parsed = parseDecision(raw);
  return typeof parsed === "string" ? deny(`${MALFORMED}: ${parsed}`) : parsed;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isStrings(v: unknown): v is string[] {
  return Array.isArray(v) && v.every((s) => typeof s === "string");
}

/** A short rendering of a wrong value for a reason: `missing`, `"yes"`, `a list`. */
function describe(v: unknown): string {
  if (v === undefined) return "missing";
  if (Array.isArray(v)) return "a list";
  if (typeof v === "object" && v !== null) return "an object";
  const s = JSON.stringify(v);
  return s.length > 40 ? `${s.slice(0, 40)}…` : s;
}
