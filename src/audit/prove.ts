/**
 * Proving from outside: what an auditor runs (`agate proof`). It trusts
 * only the verifier key: it takes a signed checkpoint, a proof and the
 * record from a source (a gateway's admin API, or a log directory read
 * without writing) and checks them itself with RFC 9162's algorithms.
 */
import * as fs from "node:fs";
import { join } from "node:path";
import { AgateError } from "../core/errors.ts";
import { CHECKPOINT_FILE, readCheckpoints } from "./checkpoints.ts";
import { HASH_BYTES, checkConsistency, checkInclusion, consistencyProof, inclusionProof, leafHash, sizeForStoredCount, type HashReader } from "./merkle.ts";
import { openCheckpoint, type Checkpoint, type Verifier } from "./note.ts";
import { TREE_FILE, readStoredHash } from "./tree.ts";
import { readRecordFromFiles } from "./index.ts";

/** Where proofs come from. Nothing it returns is trusted. */
export interface ProofSource {
  checkpoint(): Promise<string>;
  inclusion(index: number, size: number): Promise<Uint8Array[]>;
  consistency(from: number, to: number): Promise<Uint8Array[]>;
  record(index: number): Promise<Uint8Array>;
}

const fromB64 = (hashes: unknown): Uint8Array[] => {
  if (!Array.isArray(hashes) || hashes.some((h) => typeof h !== "string")) throw new AgateError("PROOF_BAD", "The server's proof is not a list of base64 hashes.");
  return hashes.map((h: string) => {
    const b = Buffer.from(h, "base64");
    if (b.length !== HASH_BYTES) throw new AgateError("PROOF_BAD", "A hash in the server's proof is not 32 bytes.");
    return new Uint8Array(b);
  });
};

/** A gateway's admin API at `base` (http://host:port), with an API key. */
export function httpSource(base: string, apiKey: string): ProofSource {
  const get = async (path: string): Promise<Response> => {
    const res = await fetch(new URL(path, base), { headers: { Authorization: `Bearer ${apiKey}` }, signal: AbortSignal.timeout(30_000) });
    if (!res.ok) {
      let why = `HTTP ${res.status}`;
      try {
        why = ((await res.json()) as { error: { message: string } }).error.message;
      } catch {}
      throw new AgateError("PROOF_SOURCE", `${base}${path}: ${why}`);
    }
    return res;
  };
  return {
    checkpoint: async () => (await get("/v1/log/checkpoint")).text(),
    inclusion: async (index, size) => fromB64(((await (await get(`/v1/log/proof/inclusion?index=${index}&size=${size}`)).json()) as { hashes: unknown }).hashes),
    consistency: async (from, to) => fromB64(((await (await get(`/v1/log/proof/consistency?from=${from}&to=${to}`)).json()) as { hashes: unknown }).hashes),
    record: async (index) => new Uint8Array(await (await get(`/v1/log/records/${index}`)).arrayBuffer()),
  };
}

/** A log directory, read only (safe while a gateway writes to it). */
export function dirSource(dir: string): ProofSource {
  const reader = (): HashReader & { size: number; close(): void } => {
    const fd = fs.openSync(join(dir, TREE_FILE), "r");
    return {
      size: sizeForStoredCount(Math.floor(fs.fstatSync(fd).size / HASH_BYTES)),
      read: (positions) =>
        positions.map((p) => {
          const b = readStoredHash(fd, p);
          if (!b) throw new AgateError("PROOF_SOURCE", `${TREE_FILE} is shorter than the proof needs.`);
          return b;
        }),
      close: () => fs.closeSync(fd),
    };
  };
  const withReader = <T>(f: (r: HashReader, size: number) => T): T => {
    const r = reader();
    try {
      return f(r, r.size);
    } finally {
      r.close();
    }
  };
  return {
    checkpoint: async () => {
      let note: string | null = null;
      for await (const c of readCheckpoints(join(dir, CHECKPOINT_FILE))) if (!("damage" in c)) note = c.note;
      if (!note) throw new AgateError("PROOF_SOURCE", `${dir} has no checkpoint yet.`);
      return note;
    },
    inclusion: async (index, size) => withReader((r, have) => (size <= have ? inclusionProof(index, size, r) : outOfRange(size, have))),
    consistency: async (from, to) => withReader((r, have) => (to <= have ? consistencyProof(from, to, r) : outOfRange(to, have))),
    record: (index) => readRecordFromFiles(dir, index),
  };
}

function outOfRange(size: number, have: number): never {
  throw new AgateError("PROOF_SOURCE", `The tree files cover ${have} records, not ${size}.`);
}

export interface InclusionResult {
  checkpoint: Checkpoint;
  index: number;
  leafHash: Uint8Array;
  proof: Uint8Array[];
  record: Uint8Array;
}

/**
 * Prove record `index` is in the log: take the source's latest checkpoint
 * (or `checkpointNote`), check its signature, fetch the record and its
 * inclusion proof, and check the proof leads to the signed root.
 * Throws PROOF_FAILED (or NOTE_*) saying what did not hold.
 */
export async function proveInclusion(src: ProofSource, key: Verifier, index: number, checkpointNote?: string): Promise<InclusionResult> {
  const checkpoint = openCheckpoint(checkpointNote ?? (await src.checkpoint()), key);
  if (!(index >= 0 && index < checkpoint.size)) {
    throw new AgateError("PROOF_FAILED", `Record ${index} is not covered by the checkpoint, which signs ${checkpoint.size} records; wait for the next checkpoint.`);
  }
  const [record, proof] = await Promise.all([src.record(index), src.inclusion(index, checkpoint.size)]);
  const leaf = leafHash(record);
  const why = checkInclusion(index, checkpoint.size, leaf, proof, checkpoint.root);
  if (why) throw new AgateError("PROOF_FAILED", `Record ${index} is NOT proven in the log of ${checkpoint.size} records: ${why}.`);
  return { checkpoint, index, leafHash: leaf, proof, record };
}

/**
 * Prove the log at its latest checkpoint (or `newNote`) extends the one in
 * `oldNote`: both signatures checked, then the consistency proof.
 */
export async function proveConsistency(src: ProofSource, key: Verifier, oldNote: string, newNote?: string): Promise<{ from: Checkpoint; to: Checkpoint; note: string; proof: Uint8Array[] }> {
  const from = openCheckpoint(oldNote, key);
  const note = newNote ?? (await src.checkpoint());
  const to = openCheckpoint(note, key);
  if (to.size < from.size) throw new AgateError("PROOF_FAILED", `The newer checkpoint signs ${to.size} records, fewer than the older one's ${from.size}: the log was rolled back.`);
  const proof = await src.consistency(from.size, to.size);
  const why = checkConsistency(from.size, to.size, from.root, to.root, proof);
  if (why) throw new AgateError("PROOF_FAILED", `The log of ${to.size} records does NOT extend the one of ${from.size}: ${why}. History was rewritten.`);
  return { from, to, note, proof };
}
