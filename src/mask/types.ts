/**
 * The masking vocabulary shared by the detectors (detectors.ts), the styles
 * (styles.ts) and the stream masker (stream.ts). A policy's decision names
 * detectors (`mask.detectors`) and columns (`mask.columns`); agate masks
 * what they find before a byte leaves the gateway or reaches the log.
 */

/** One secret found in a text: [start, end) in UTF-16 code units. */
export interface Match {
  start: number;
  end: number;
  /** The detector's name, e.g. "email", "card". */
  detector: string;
}

export interface Detector {
  /** Stable name the policy uses: "email", "card", "iban", "ssn", "phone", "ipv4", "ipv6", "aws_access_key", "aws_secret_key", "github_token", "gitlab_token", "slack_token", "jwt", "pem_private_key", "url_password", "kv_secret". */
  name: string;
  /**
   * The longest match this detector can produce, in UTF-16 code units; a
   * stream masker keeps at least this much text back so that a secret split
   * across two chunks is still seen whole. (PEM keys: see stream.ts.)
   */
  maxLength: number;
  /** Every match in `text`, validated (checksums where they exist), in order, not overlapping each other. */
  find(text: string): Match[];
}

/** How a found value is replaced. */
export type MaskStyle =
  /** `[REDACTED:email]` */
  | { kind: "redact" }
  /** keep the last `keep` characters of the value, the rest as `*` (so "•••• 4242" style) */
  | { kind: "partial"; keep: number }
  /** `[email:` + first 16 hex of HMAC-SHA-256(key, value) + `]`: stable within a deployment, so masked values can be joined and counted */
  | { kind: "hmac"; key: Uint8Array };

/** What masking did to one text or stream: counts per detector (never the values). */
export type MaskCounts = Record<string, number>;
