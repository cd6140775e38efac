/**
 * Writes the audit log test vectors, test/vectors/*.json: small logs, byte
 * for byte, with what a reader written from the spec in src/audit/format.ts
 * alone must compute from them: each record's leaf hash, the tree root at
 * every size, and the signed checkpoints. test/audit.test.ts recomputes
 * them and verifies the files with `verifyLog`.
 *
 * Each file: {desc, origin, verifier_key, signer_key (a published test key:
 * never use it), records: [{t, fields}], segment_records (records per
 * segment file), files: {name: hex of its bytes}, payloads, leaf_hashes,
 * roots (index = tree size), checkpoints: [{size, root (base64), note}]}.
 *
 *   bun scripts/vectors.ts            write them
 *   bun scripts/vectors.ts --check    exit 1 if the files differ from what this makes
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { canonicalJson } from "../src/audit/canonical.ts";
import { ZERO_HASH, encodeFileHeader, encodeFrame, encodeRecord, hashPayload, segmentName } from "../src/audit/format.ts";
import { Frontier, leafHash } from "../src/audit/merkle.ts";
import { keyFromSeed, parseSignerKey, signCheckpoint } from "../src/audit/note.ts";

export const VECTORS_DIR = path.resolve(import.meta.dir, "../test/vectors");

interface Case {
  name: string;
  desc: string;
  records: { t: string; fields: Record<string, unknown> }[];
  /** Start a new segment after this many records. */
  segmentRecords: number;
  /** Tree sizes to sign, in order. */
  checkpoints: number[];
}

const t = (k: number) => new Date(Date.UTC(2025, 0, 1, 0, 0, k)).toISOString();

const CASES: Case[] = [
  {
    name: "empty",
    desc: "A log with no record: one segment holding only the file header, and a checkpoint of the empty tree (root SHA-256 of the empty string).",
    records: [],
    segmentRecords: 1,
    checkpoints: [0],
  },
  {
    name: "one-record",
    desc: "The example of format.ts: one record, its leaf hash (the root of a tree of one), and a checkpoint of it.",
    records: [{ t: t(0), fields: { type: "command", text: "SELECT 1" } }],
    segmentRecords: 10,
    checkpoints: [1],
  },
  {
    name: "seven-records",
    desc: "Seven records (a tree that is not a power of two), non-ASCII text, nested fields whose keys must be sorted, numbers; checkpoints at sizes 1, 4 and 7.",
    records: [
      { t: t(0), fields: { type: "session", user: "alice", groups: ["dba", "ops"] } },
      { t: t(1), fields: { type: "command", seq: 1, text: "SELECT 'é€😀'", decision: { allow: true, reasons: [] } } },
      { t: t(2), fields: { type: "outcome", of: 1, rows: 1, tags: ["SELECT 1"] } },
      { t: t(3), fields: { type: "command", seq: 2, text: "UPDATE t SET n = n + 1", params: [1.5, -0, 1e21, null] } },
      { t: t(4), fields: { type: "outcome", of: 3, rows: 2, z: { b: 1, a: 2, A: 3 } } },
      { t: t(5), fields: { type: "command", seq: 3, text: "line\nbreak\t\"quoted\" \\ \u0001" } },
      { t: t(6), fields: { type: "end", session: "s-1" } },
    ],
    segmentRecords: 100,
    checkpoints: [1, 4, 7],
  },
  {
    name: "three-segments",
    desc: "Five records over three segment files (2 + 2 + 1): segment names are the index of their first record; the chain and the tree run across them.",
    records: Array.from({ length: 5 }, (_, k) => ({ t: t(k), fields: { type: "command", seq: k, text: `SELECT ${k}` } })),
    segmentRecords: 2,
    checkpoints: [3, 5],
  },
];

const ORIGIN = "vectors.agate.test/audit";
/** A fixed, published key: the vectors' signatures are reproducible (Ed25519 is deterministic). Never use it. */
const KEY = keyFromSeed(ORIGIN, new Uint8Array(32).map((_, k) => k));

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

/** The vector of one case, as a JSON-ready object. */
function make(c: Case): object {
  const signer = parseSignerKey(KEY.signerKey);
  const files: Record<string, string> = {};
  const payloads: string[] = [];
  const leaves: string[] = [];
  const roots: string[] = [];
  const frontier = new Frontier();
  roots.push(hex(frontier.root()));
  let prev = ZERO_HASH;
  let segment: Buffer[] = [];
  let first = 0;
  const close = (next: number) => {
    files[segmentName(first)] = hex(Buffer.concat([encodeFileHeader(), ...segment]));
    segment = [];
    first = next;
  };
  c.records.forEach((r, i) => {
    if (i > 0 && i % c.segmentRecords === 0) close(i);
    const payload = encodeRecord(i, prev, r.t, r.fields);
    segment.push(encodeFrame(payload));
    payloads.push(payload.toString("utf8"));
    prev = hashPayload(payload);
    leaves.push(prev);
    frontier.push(leafHash(payload));
    roots.push(hex(frontier.root()));
  });
  close(c.records.length);
  const checkpoints = c.checkpoints.map((size) => {
    const root = Buffer.from(roots[size]!, "hex");
    return { size, root: root.toString("base64"), note: signCheckpoint({ origin: ORIGIN, size, root }, signer) };
  });
  files["checkpoints.agl"] = hex(Buffer.concat([encodeFileHeader(), ...checkpoints.map((k) => encodeFrame(Buffer.from(canonicalJson({ note: k.note }), "utf8")))]));
  return {
    desc: c.desc,
    origin: ORIGIN,
    verifier_key: KEY.verifierKey,
    signer_key: KEY.signerKey,
    records: c.records,
    segment_records: c.segmentRecords,
    files,
    payloads,
    leaf_hashes: leaves,
    roots,
    checkpoints,
  };
}

/** Every vector file's name and text. */
export function makeVectors(): Map<string, string> {
  return new Map(CASES.map((c) => [`${c.name}.json`, `${JSON.stringify(make(c), null, 2)}\n`]));
}

if (import.meta.main) {
  const check = process.argv.includes("--check");
  let stale = 0;
  fs.mkdirSync(VECTORS_DIR, { recursive: true });
  for (const [name, text] of makeVectors()) {
    const file = path.join(VECTORS_DIR, name);
    if (check) {
      if (!fs.existsSync(file) || fs.readFileSync(file, "utf8") !== text) {
        console.error(`${file} differs from what scripts/vectors.ts makes`);
        stale++;
      }
    } else fs.writeFileSync(file, text);
  }
  process.exit(stale ? 1 : 0);
}
