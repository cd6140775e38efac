/**
 * mask/: find secrets and personal data in text and replace them before a
 * byte leaves the gateway or reaches the audit log. detectors.ts finds,
 * styles.ts replaces, rules.ts compiles a policy decision's mask rules,
 * maskText does both for one text.
 */
import { checkDetectors } from "./detectors.ts";
import { maskWith } from "./rules.ts";
import type { MaskCounts, MaskStyle } from "./types.ts";

export type { Detector, Match, MaskCounts, MaskStyle } from "./types.ts";
export { ALL_DETECTORS, DETECTORS, SECRET_DETECTORS, checkDetectors, findAll } from "./detectors.ts";
export { maskValue } from "./styles.ts";
export { type ColumnRule, type CompiledMask, compileMask, type MaskKeys, maskWith, NO_MASK, ruleForColumn, ruleForColumnName, ruleForName } from "./rules.ts";

/**
 * `text` with every value the named detectors find replaced in `style`,
 * and how many of each were replaced. When nothing is found the very same
 * string comes back (and counts is empty). Unknown detector names throw
 * AgateError MASK_UNKNOWN_DETECTOR.
 */
export function maskText(text: string, names: readonly string[], style: MaskStyle): { text: string; counts: MaskCounts } {
  checkDetectors(names);
  const counts: MaskCounts = {};
  const styles: Record<string, MaskStyle> = Object.create(null);
  for (const n of names) styles[n] = style;
  const detectors = [...names];
  return { text: maskWith(text, { detectors, styles, columns: [], empty: names.length === 0, forTriggers: () => detectors }, counts), counts };
}
