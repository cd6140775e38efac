/**
 * mask/: find secrets and personal data in text and replace them before a
 * byte leaves the gateway or reaches the audit log. detectors.ts finds,
 * styles.ts replaces, maskText does both for one text.
 */
import { findAll } from "./detectors.ts";
import { maskValue } from "./styles.ts";
import type { MaskCounts, MaskStyle } from "./types.ts";

export type { Detector, Match, MaskCounts, MaskStyle } from "./types.ts";
export { ALL_DETECTORS, DETECTORS, checkDetectors, findAll } from "./detectors.ts";
export { maskValue } from "./styles.ts";

/**
 * `text` with every value the named detectors find replaced in `style`,
 * and how many of each were replaced. When nothing is found the very same
 * string comes back (and counts is empty). Unknown detector names throw
 * AgateError MASK_UNKNOWN_DETECTOR.
 */
export function maskText(text: string, names: readonly string[], style: MaskStyle): { text: string; counts: MaskCounts } {
  const matches = findAll(text, names);
  const counts: MaskCounts = {};
  if (matches.length === 0) return { text, counts };
  let out = "";
  let pos = 0;
  for (const m of matches) {
    out += text.slice(pos, m.start) + maskValue(text.slice(m.start, m.end), m.detector, style);
    pos = m.end;
    counts[m.detector] = (counts[m.detector] ?? 0) + 1;
  }
  return { text: out + text.slice(pos), counts };
}
