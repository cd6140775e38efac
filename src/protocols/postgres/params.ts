/**
 * Bind parameters as the audit record keeps them. A binary-format value
 * ("base64:…" from readBind) whose type the Parse declared, and which
 * binary.ts can read, is written as the text PostgreSQL would print for it
 * (an int8 card number as its digits, a text value as its text), so the
 * detectors see what it says (core/record-text.ts) rather than its bytes.
 * A value of an undeclared type (0), of a type binary.ts cannot read, or
 * malformed stays bytes ("base64:…"), which the record masks as bytes.
 */
import { binaryAsText } from "./binary.ts";
import { ProtocolViolation } from "./wire.ts";

export function paramsAsText(params: readonly (string | null)[], types: readonly number[] | undefined): (string | null)[] {
  if (!types?.some((t) => t !== 0)) return params as (string | null)[];
  return params.map((p, i) => {
    const type = types[i] ?? 0;
    if (p === null || type === 0 || !p.startsWith("base64:")) return p;
    try {
      return binaryAsText(type, Buffer.from(p.slice(7), "base64")) ?? p;
    } catch (e) {
      if (e instanceof ProtocolViolation) return p;
      throw e;
    }
  });
}
