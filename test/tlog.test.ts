/**
 * The audit log as a transparency log, checked against outside references
 * and real files:
 *
 * 1. merkle.ts against the RFC 6962 test vectors of transparency-dev/merkle;
 * 2. checkpoints and proofs against golang.org/x/mod/sumdb/note,
 *    transparency-dev/formats and transparency-dev/merkle (the Go helper in
 *    test/interop, built once below);
 * 3. tampering with the files of a multi-segment, multi-checkpoint log, each
 *    caught by verify with the right code and location;
 * 4. the admin API of a running gateway, its answers checked with the Go helper.
 *
 * Everything runs asynchronously (Bun.spawn): the gateway shares the event loop.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { CHECKPOINT_FILE } from "../src/audit/checkpoints.ts";
import { crc32c } from "../src/audit/crc32c.ts";
import { encodeFrame, encodeRecord, hashPayload } from "../src/audit/format.ts";
import { openLog, readRecords, verifyLog, type StoredCheckpoint, type TransparencyLog, type VerifyResult } from "../src/audit/index.ts";
import { EMPTY_ROOT, Frontier, checkConsistency, checkInclusion, consistencyProof, frontierAt, inclusionProof, leafHash, storedCount, storedIndex, type HashReader } from "../src/audit/merkle.ts";
import { formatCheckpoint, generateKey, openCheckpoint, openNote, parseSignerKey, parseVerifierKey, signCheckpoint, type Verifier } from "../src/audit/note.ts";
import { AgateError } from "../src/core/errors.ts";
import { hashApiKey } from "../src/identity/apikey.ts";
import { API_KEY, USER, psql, startTestGateway, type TestGateway } from "./helpers/gateway.ts";
import { startPostgres, type TestPostgres } from "./helpers/postgres.ts";

const ROOT = path.resolve(import.meta.dir, "..");
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "agate-tlog-"));
// scripts/test.sh builds the helper once and passes it in; otherwise it is built here.
const INTEROP = process.env.AGATE_INTEROP ?? path.join(scratch, "agate-interop");

const b64 = (h: Uint8Array) => Buffer.from(h).toString("base64");
const hex = (h: Uint8Array) => Buffer.from(h).toString("hex");
const unhex = (s: string) => new Uint8Array(Buffer.from(s, "hex"));

async function run(argv: string[], stdin?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const p = Bun.spawn(argv, { stdin: stdin !== undefined ? new TextEncoder().encode(stdin) : "ignore", stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, stdout, stderr };
}

/** The Go helper's answers and the API's error bodies: loosely typed JSON. */
type Json = any;

/** Run a Go helper subcommand; exit 2 (usage error) fails the test. */
async function go(cmd: string, req: object = {}): Promise<{ code: number; out: Json }> {
  const r = await run([INTEROP, cmd], JSON.stringify(req));
  let out: Json;
  try {
    out = JSON.parse(r.stdout);
  } catch {
    throw new Error(`agate-interop ${cmd} exited ${r.code} without JSON: ${r.stdout}${r.stderr}`);
  }
  if (r.code === 2 || (r.code !== 0 && r.code !== 1)) throw new Error(`agate-interop ${cmd} usage error (${r.code}): ${out.error}`);
  return { code: r.code, out };
}

/** `agate verify …` as a user runs it. */
function cli(...args: string[]) {
  return run([process.execPath, path.join(ROOT, "src/main.ts"), "verify", ...args]);
}

let copies = 0;
/** A copy of a log directory to damage. */
function copyOf(dir: string): string {
  const d = path.join(scratch, `copy-${++copies}`);
  fs.cpSync(dir, d, { recursive: true });
  return d;
}

beforeAll(async () => {
  if (process.env.AGATE_INTEROP) return;
  const r = await run(["go", "build", "-C", path.join(ROOT, "test/interop"), "-o", INTEROP, "."]);
  if (r.code !== 0) throw new Error(`go build of test/interop failed (${r.code}): ${r.stderr}`);
}, 120_000);

afterAll(() => {
  fs.rmSync(scratch, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------

describe("RFC 6962 vectors (transparency-dev/merkle testonly)", () => {
  test("leaf hashes, roots, inclusion and consistency proofs are byte-equal", async () => {
    const { code, out: v } = await go("vectors");
    expect(code).toBe(0);
    const leaves = (v.leaves as string[]).map(unhex);
    expect(leaves.length).toBeGreaterThanOrEqual(8);
    expect(hex(EMPTY_ROOT)).toBe(v.empty_root);
    expect(hex(new Frontier().root())).toBe(v.empty_root);

    // Build the tree with Frontier, keeping every stored hash it hands back.
    const stored: Uint8Array[] = [];
    const f = new Frontier();
    for (const [k, leaf] of leaves.entries()) {
      const lh = leafHash(leaf);
      expect(hex(lh)).toBe(v.leaf_hashes[k]);
      stored.push(...f.push(lh));
      expect(stored.length).toBe(storedCount(k + 1));
      expect(hex(f.root())).toBe(v.roots[k]);
    }
    // A reader limited to what a tree of `size` leaves has stored: a proof must not look past it.
    const reader = (size: number): HashReader => ({
      read: (ps) =>
        ps.map((p) => {
          if (p >= storedCount(size)) throw new Error(`read of stored hash ${p} beyond a tree of ${size}`);
          return stored[p]!;
        }),
    });
    const root = (size: number) => (size === 0 ? EMPTY_ROOT : unhex(v.roots[size - 1]));
    for (let size = 1; size <= leaves.length; size++) expect(hex(frontierAt(size, reader(size)).root())).toBe(v.roots[size - 1]);

    expect(v.inclusion.length).toBe((leaves.length * (leaves.length + 1)) / 2);
    for (const { index, size, proof } of v.inclusion as { index: number; size: number; proof: string[] }[]) {
      const mine = inclusionProof(index, size, reader(size));
      expect({ index, size, proof: mine.map(hex) }).toEqual({ index, size, proof });
      expect(checkInclusion(index, size, unhex(v.leaf_hashes[index]), mine, root(size))).toBeNull();
      // Another leaf, or a changed proof hash, does not verify.
      expect(checkInclusion(index, size, unhex(v.leaf_hashes[(index + 1) % leaves.length]), mine, root(size))).not.toBeNull();
      if (mine.length > 0) {
        const bad = mine.map((h) => h.slice());
        bad[bad.length - 1]![0]! ^= 1;
        expect(checkInclusion(index, size, unhex(v.leaf_hashes[index]), bad, root(size))).not.toBeNull();
      }
    }

    expect(v.consistency.length).toBe((leaves.length * (leaves.length + 1)) / 2);
    for (const { size1, size2, proof } of v.consistency as { size1: number; size2: number; proof: string[] }[]) {
      const mine = consistencyProof(size1, size2, reader(size2));
      expect({ size1, size2, proof: mine.map(hex) }).toEqual({ size1, size2, proof });
      expect(checkConsistency(size1, size2, root(size1), root(size2), mine)).toBeNull();
      if (size1 < size2) {
        expect(checkConsistency(size1, size2, root(size1), root(size2 - 1), mine)).not.toBeNull(); // the wrong second root
        const bad = mine.map((h) => h.slice());
        bad[0]![31]! ^= 0x80;
        expect(checkConsistency(size1, size2, root(size1), root(size2), bad)).not.toBeNull();
      }
    }
    // From the empty tree: an empty proof, as Go's VerifyConsistency has it.
    expect(consistencyProof(0, leaves.length, reader(leaves.length))).toEqual([]);
    expect(checkConsistency(0, leaves.length, EMPTY_ROOT, root(leaves.length), [])).toBeNull();
  });
});

// ---------------------------------------------------------------------------

describe("interop with Go's sumdb/note and transparency-dev", () => {
  const N = 1000;
  const key = generateKey("agate.test/interop");
  let log: TransparencyLog;
  let cp: StoredCheckpoint;

  beforeAll(async () => {
    log = await openLog(path.join(scratch, "interop"), {
      signer: parseSignerKey(key.signerKey),
      segmentBytes: 32 * 1024,
      checkpointEveryRecords: 1_000_000,
      checkpointEverySeconds: 3600,
    });
    await Promise.all(Array.from({ length: N }, (_, k) => log.append({ type: "command", k, text: `SELECT ${k}` })));
    cp = (await log.checkpoint())!;
  });
  afterAll(async () => {
    await log?.close();
  });

  test("Go verifies agate's checkpoint with the verifier key; same origin, size and root", async () => {
    expect(cp.size).toBe(N);
    const { code, out } = await go("verify-note", { vkey: key.verifierKey, note: cp.note });
    expect(code).toBe(0);
    expect(out).toEqual({ origin: "agate.test/interop", size: N, root: b64(log.rootAt(N)), extensions: [], signers: ["agate.test/interop"] });
    // A different key, or a changed text, is refused.
    const other = generateKey("agate.test/interop");
    const wrong = await go("verify-note", { vkey: other.verifierKey, note: cp.note });
    expect(wrong.code).toBe(1);
    const changed = await go("verify-note", { vkey: key.verifierKey, note: cp.note.replace(`\n${N}\n`, `\n${N + 1}\n`) });
    expect(changed.code).toBe(1);
  });

  test("a Go key signs byte-identically in agate; agate opens Go-signed notes", async () => {
    const { code, out } = await go("generate-key", { name: "agate.test/go" });
    expect(code).toBe(0);
    const signer = parseSignerKey(out.skey);
    expect(signer.verifierKey).toBe(out.vkey);
    const verifier = parseVerifierKey(out.vkey);
    for (const size of [0, 1, 500, N]) {
      const c = { origin: "agate.test/go", size, root: log.rootAt(size) };
      const text = formatCheckpoint(c);
      const goSigned = await go("sign-note", { skey: out.skey, text });
      expect(goSigned.code).toBe(0);
      // Ed25519 is deterministic: the same key and text give the same note.
      expect(signCheckpoint(c, signer)).toBe(goSigned.out.note);
      expect(openNote(goSigned.out.note, verifier)).toBe(text);
      const opened = openCheckpoint(goSigned.out.note, verifier);
      expect({ ...opened, root: b64(opened.root) }).toEqual({ origin: "agate.test/go", size, root: b64(c.root) });
    }
    // A note cosigned by both keys opens with either, in Go and in agate.
    const goNote = (await go("sign-note", { skey: out.skey, text: formatCheckpoint(cp) })).out.note as string;
    const cosigned = cp.note + goNote.slice(goNote.lastIndexOf("\n\n") + 2);
    expect(cosigned.split("\n— ")).toHaveLength(3);
    for (const vkey of [key.verifierKey, out.vkey]) {
      const r = await go("verify-note", { vkey, note: cosigned, origin: "agate.test/interop" });
      expect(r.code).toBe(0);
      expect(r.out.signers).toContain(vkey.split("+")[0]);
    }
    expect(openNote(cosigned, verifier)).toBe(formatCheckpoint(cp));
    expect(openNote(cosigned, parseVerifierKey(key.verifierKey))).toBe(formatCheckpoint(cp));
  });

  test("inclusion proofs verify in Go against rootAt(size); corrupted ones are refused", async () => {
    const pairs: [number, number][] = [
      [0, 1],
      [0, 2],
      [1, 2],
      [2, 3],
      [0, 256],
      [255, 256],
      [256, 257],
      [511, 512],
      [0, 512],
      [512, 513],
      [3, 7],
      [500, 999],
      [0, N],
      [511, N],
      [512, N],
      [N - 2, N],
      [N - 1, N],
    ];
    await Promise.all(
      pairs.map(async ([index, size]) => {
        const proof = log.inclusionProof(index, size);
        const leaf = log.leafHash(index);
        expect(b64(leaf)).toBe(b64(leafHash(await log.readRecord(index))));
        const root = log.rootAt(size);
        expect(checkInclusion(index, size, leaf, proof, root)).toBeNull();
        const req = { index, size, leaf_hash: b64(leaf), root: b64(root), proof: proof.map(b64) };
        const ok = await go("inclusion", req);
        expect({ index, size, ...ok }).toEqual({ index, size, code: 0, out: { ok: true } });
        const refusals: object[] = [];
        if (proof.length > 0) {
          const bad = proof.map((h) => h.slice());
          bad[Math.floor(bad.length / 2)]![7]! ^= 0x04;
          refusals.push({ ...req, proof: bad.map(b64) });
          refusals.push({ ...req, proof: req.proof.slice(1) }); // a hash short
          expect(checkInclusion(index, size, leaf, bad, root)).not.toBeNull();
        }
        refusals.push({ ...req, root: b64(log.rootAt(size - 1)) }); // the wrong tree
        if (size > 1) refusals.push({ ...req, index: (index + 1) % size }); // another position
        for (const r of refusals) {
          const res = await go("inclusion", r);
          expect({ index, size, code: res.code }).toEqual({ index, size, code: 1 });
          expect(typeof res.out.error).toBe("string");
        }
      }),
    );
  });

  test("consistency proofs verify in Go against rootAt(from) and rootAt(to); corrupted ones are refused", async () => {
    const pairs: [number, number][] = [
      [0, N],
      [1, 1],
      [1, 2],
      [1, N],
      [2, 3],
      [3, 7],
      [255, 256],
      [256, 257],
      [256, N],
      [511, 512],
      [512, 513],
      [512, N],
      [513, N],
      [777, 999],
      [N - 1, N],
      [N, N],
    ];
    await Promise.all(
      pairs.map(async ([from, to]) => {
        const proof = log.consistencyProof(from, to);
        const root1 = log.rootAt(from);
        const root2 = log.rootAt(to);
        expect(checkConsistency(from, to, root1, root2, proof)).toBeNull();
        const req = { size1: from, size2: to, root1: b64(root1), root2: b64(root2), proof: proof.map(b64) };
        const ok = await go("consistency", req);
        expect({ from, to, ...ok }).toEqual({ from, to, code: 0, out: { ok: true } });
        if (proof.length > 0) {
          const bad = proof.map((h) => h.slice());
          bad[bad.length - 1]![0]! ^= 0x01;
          expect(checkConsistency(from, to, root1, root2, bad)).not.toBeNull();
          for (const r of [{ ...req, proof: bad.map(b64) }, { ...req, root1: b64(log.rootAt(from - 1)) }, { ...req, root2: b64(log.rootAt(to - 1)) }]) {
            const res = await go("consistency", r);
            expect({ from, to, code: res.code }).toEqual({ from, to, code: 1 });
          }
        }
      }),
    );
  });

  test("out-of-range indexes and sizes are refused with AUDIT_NO_SUCH_RECORD / AUDIT_NO_SUCH_SIZE / AUDIT_BAD_RANGE", async () => {
    const code = async (f: () => unknown) => {
      try {
        await f();
      } catch (e) {
        return (e as AgateError).code ?? String(e);
      }
      return "returned";
    };
    expect(await code(() => log.leafHash(-1))).toBe("AUDIT_NO_SUCH_RECORD");
    expect(await code(() => log.leafHash(N))).toBe("AUDIT_NO_SUCH_RECORD");
    expect(await code(() => log.leafHash(0.5))).toBe("AUDIT_NO_SUCH_RECORD");
    expect(await code(() => log.readRecord(-1))).toBe("AUDIT_NO_SUCH_RECORD");
    expect(await code(() => log.readRecord(N))).toBe("AUDIT_NO_SUCH_RECORD");
    expect(await code(() => log.rootAt(N + 1))).toBe("AUDIT_NO_SUCH_SIZE");
    expect(await code(() => log.rootAt(-1))).toBe("AUDIT_NO_SUCH_SIZE");
    expect(await code(() => log.inclusionProof(N, N))).toBe("AUDIT_NO_SUCH_RECORD");
    expect(await code(() => log.inclusionProof(-1, N))).toBe("AUDIT_NO_SUCH_RECORD");
    expect(await code(() => log.inclusionProof(0, N + 1))).toBe("AUDIT_NO_SUCH_SIZE");
    expect(await code(() => log.consistencyProof(0, N + 1))).toBe("AUDIT_NO_SUCH_SIZE");
    expect(await code(() => log.consistencyProof(2, 1))).toBe("AUDIT_BAD_RANGE");
    expect(b64(log.rootAt(0))).toBe(b64(EMPTY_ROOT));
  });

  test("a reopened log (tree hashes from tree.hashes) gives the same roots and proofs", async () => {
    const dir = copyOf(log.dir);
    const again = await openLog(dir, { signer: parseSignerKey(key.signerKey), checkpointEverySeconds: 3600 });
    try {
      expect(again.latestCheckpoint?.note).toBe(cp.note);
      for (const size of [1, 7, 512, 999, N]) expect(b64(again.rootAt(size))).toBe(b64(log.rootAt(size)));
      expect(again.inclusionProof(123, N).map(b64)).toEqual(log.inclusionProof(123, N).map(b64));
      expect(again.consistencyProof(123, N).map(b64)).toEqual(log.consistencyProof(123, N).map(b64));
    } finally {
      await again.close();
    }
    // Without the cache, the tree is rebuilt from the records.
    fs.rmSync(path.join(dir, "tree.hashes"));
    const warnings: string[] = [];
    const rebuilt = await openLog(dir, { signer: parseSignerKey(key.signerKey), checkpointEverySeconds: 3600, onWarn: (m) => warnings.push(m) });
    try {
      expect(warnings).toContain("audit hash file is behind the log; hashing the missing records");
      expect(b64(rebuilt.rootAt(N))).toBe(b64(log.rootAt(N)));
      expect(rebuilt.inclusionProof(N - 1, N).map(b64)).toEqual(log.inclusionProof(N - 1, N).map(b64));
    } finally {
      await rebuilt.close();
    }
  });
});

// ---------------------------------------------------------------------------

interface FrameAt {
  /** File name inside the log directory. */
  name: string;
  offset: number;
  length: number;
  payload: Buffer;
}

/** The frames of a file of frames (a segment or checkpoints.agl), walking lengths from the header on. */
function framesOf(dir: string, name: string): FrameAt[] {
  const b = fs.readFileSync(path.join(dir, name));
  const out: FrameAt[] = [];
  for (let p = 8; p + 8 <= b.length; ) {
    const length = b.readUInt32BE(p);
    out.push({ name, offset: p, length, payload: b.subarray(p + 8, p + 8 + length) });
    p += 8 + length;
  }
  return out;
}

function segmentsOf(dir: string): string[] {
  return fs
    .readdirSync(dir)
    .filter((n) => /^seg-\d{20}\.agl$/.test(n))
    .sort();
}

type RecordAt = FrameAt & { index: number; segment: number };

/** Every record of a log with where it is. */
function recordsOf(dir: string): RecordAt[] {
  return segmentsOf(dir).flatMap((name, segment) => framesOf(dir, name).map((f) => ({ ...f, index: JSON.parse(f.payload.toString()).i as number, segment })));
}

function flip(file: string, at: number, mask: number): void {
  const b = fs.readFileSync(file);
  b[at]! ^= mask;
  fs.writeFileSync(file, b);
}

/** Rewrite the CRC of the frame at `offset` to match its (changed) payload. */
function fixCrc(file: string, offset: number): void {
  const b = fs.readFileSync(file);
  const length = b.readUInt32BE(offset);
  b.writeUInt32BE(crc32c(b.subarray(offset + 8, offset + 8 + length)), offset + 4);
  fs.writeFileSync(file, b);
}

/** File offset of the "S" of `"text":"SELECT …` in a record: flipping 0x20 there keeps valid JSON. */
function textAt(r: RecordAt): number {
  const k = r.payload.indexOf('"text":"SELECT');
  if (k < 0) throw new Error(`record ${r.index} has no text`);
  return r.offset + 8 + k + '"text":"'.length;
}

function expectFailure(res: VerifyResult, want: { code: string; index?: number; segment?: string; offset?: number; checkpoint?: number }, says?: string): void {
  expect(res.ok).toBe(false);
  if (res.ok) return;
  expect(res.error).toMatchObject(want);
  if (says) expect(res.error.message).toContain(says);
}

describe("tampering with the files is caught by verify, with code and location", () => {
  const key = generateKey("agate.test/tamper");
  const signer = parseSignerKey(key.signerKey);
  let verifier: Verifier;
  const SIZES = [30, 60, 90, 120];
  const fields = (k: number) => ({ type: "command", session: "tamper", k, text: `SELECT ${k} FROM t WHERE note = 'padding to fill segments'` });
  let base: string;
  let recs: RecordAt[];
  let cps: FrameAt[];

  beforeAll(async () => {
    verifier = parseVerifierKey(key.verifierKey);
    base = path.join(scratch, "tamper-base");
    const log = await openLog(base, { signer, segmentBytes: 4096, checkpointEveryRecords: 1_000_000, checkpointEverySeconds: 3600 });
    let k = 0;
    for (const size of SIZES) {
      const batch: Promise<number>[] = [];
      for (; k < size; k++) batch.push(log.append(fields(k)));
      await Promise.all(batch);
      expect((await log.checkpoint())?.size).toBe(size);
    }
    await log.close();
    recs = recordsOf(base);
    cps = framesOf(base, CHECKPOINT_FILE);
  });

  /** A record in the middle of a middle segment, whose next record is in the same segment and is not a checkpoint boundary. */
  function middleRecord(): RecordAt {
    const segs = segmentsOf(base);
    const inSeg = recs.filter((r) => r.segment === Math.floor(segs.length / 2));
    for (let k = Math.floor(inSeg.length / 2); k < inSeg.length - 1; k++) if (!SIZES.includes(inSeg[k]!.index + 1)) return inSeg[k]!;
    throw new Error("no middle record");
  }

  test("the intact log verifies: 4 checkpoints, several segments; the CLI warns when no key is given", async () => {
    expect(recs.map((r) => r.index)).toEqual(Array.from({ length: 120 }, (_, k) => k));
    expect(segmentsOf(base).length).toBeGreaterThanOrEqual(4);
    expect(cps).toHaveLength(4);
    const res = await verifyLog(base, { key: verifier });
    expect(res).toMatchObject({ ok: true, records: 120, segments: segmentsOf(base).length, checkpoints: 4, checkpointSize: 120, signaturesChecked: true });

    const withKey = await cli("--log", base, "--key", key.verifierKey, "-q");
    expect(withKey.code).toBe(0);
    expect(withKey.stdout).toContain("ok: 120 records");
    expect(withKey.stdout).toContain("signed by agate.test/tamper");
    expect(withKey.stdout).not.toContain("WARNING");

    const noKey = await cli("--log", base, "-q");
    expect(noKey.code).toBe(0);
    expect(noKey.stdout).toContain("ok: 120 records");
    expect(noKey.stdout).toContain("WARNING: signatures were NOT checked");
  });

  test("one flipped bit in a record payload: AUDIT_BAD_CRC at its segment and offset (also through the CLI)", async () => {
    const r = middleRecord();
    const dir = copyOf(base);
    flip(path.join(dir, r.name), textAt(r), 0x20);
    expectFailure(await verifyLog(dir, { key: verifier }), { code: "AUDIT_BAD_CRC", index: r.index, segment: r.name, offset: r.offset }, "CRC-32C");
    const out = await cli("--log", dir, "--key", key.verifierKey, "-q");
    expect(out.code).toBe(1);
    expect(out.stdout).toContain("FAILED AUDIT_BAD_CRC");
    expect(out.stdout).toContain(`record ${r.index}`);
    expect(out.stdout).toContain(`${r.name}, offset ${r.offset}`);
  });

  test("a changed record with its CRC fixed up: AUDIT_BAD_CHAIN at the next record, in the same or the next segment", async () => {
    const r = middleRecord();
    const next = recs[r.index + 1]!;
    const dir = copyOf(base);
    flip(path.join(dir, r.name), textAt(r), 0x20);
    fixCrc(path.join(dir, r.name), r.offset);
    expectFailure(await verifyLog(dir, { key: verifier }), { code: "AUDIT_BAD_CHAIN", index: next.index, segment: next.name, offset: next.offset }, `record ${r.index} was changed or removed`);

    // The last record of a segment: the break shows at the first record of the next one.
    const last = recs.find((x, k) => recs[k + 1] && recs[k + 1]!.segment !== x.segment && !SIZES.includes(x.index + 1))!;
    const first = recs[last.index + 1]!;
    expect(first.offset).toBe(8);
    const dir2 = copyOf(base);
    flip(path.join(dir2, last.name), textAt(last), 0x20);
    fixCrc(path.join(dir2, last.name), last.offset);
    expectFailure(await verifyLog(dir2), { code: "AUDIT_BAD_CHAIN", index: first.index, segment: first.name, offset: 8 });
  });

  test("a changed record the chain cannot show (the last, or the last a checkpoint covers): CHECKPOINT_BAD_ROOT naming the checkpoint", async () => {
    for (const [index, seq] of [
      [119, 3],
      [59, 1],
    ] as const) {
      const r = recs[index]!;
      const dir = copyOf(base);
      flip(path.join(dir, r.name), textAt(r), 0x20);
      fixCrc(path.join(dir, r.name), r.offset);
      // Even without the key: the root no longer matches what was signed.
      for (const opts of [{ key: verifier }, {}]) {
        expectFailure(await verifyLog(dir, opts), { code: "CHECKPOINT_BAD_ROOT", checkpoint: seq, segment: CHECKPOINT_FILE, offset: cps[seq]!.offset }, `for ${SIZES[seq]} records`);
      }
    }
  });

  test("a changed checkpoint text (frame CRC fixed up), or a changed signature: CHECKPOINT_BAD_SIGNATURE naming the checkpoint (also through the CLI)", async () => {
    const c = cps[1]!;
    const file = (dir: string) => path.join(dir, CHECKPOINT_FILE);
    // The size line: 60 -> 70.
    const sizeAt = c.payload.indexOf("\\n60\\n");
    expect(sizeAt).toBeGreaterThan(0);
    const dir = copyOf(base);
    flip(file(dir), c.offset + 8 + sizeAt + 2, 0x01);
    fixCrc(file(dir), c.offset);
    expect(framesOf(dir, CHECKPOINT_FILE)[1]!.payload.toString()).toContain("\\n70\\n");
    expectFailure(await verifyLog(dir, { key: verifier }), { code: "CHECKPOINT_BAD_SIGNATURE", checkpoint: 1, segment: CHECKPOINT_FILE, offset: c.offset }, "checkpoint 1");
    // Without the key, the forged size still fails against the records.
    expectFailure(await verifyLog(dir), { code: "CHECKPOINT_BAD_ROOT", checkpoint: 1 });

    // One bit of the signature (past the key id): a letter's case.
    const sigStart = c.payload.lastIndexOf(" ") + 1;
    let at = sigStart + 12;
    while (!/[A-Za-z]/.test(String.fromCharCode(c.payload[at]!))) at++;
    const dir2 = copyOf(base);
    flip(file(dir2), c.offset + 8 + at, 0x20);
    fixCrc(file(dir2), c.offset);
    expectFailure(await verifyLog(dir2, { key: verifier }), { code: "CHECKPOINT_BAD_SIGNATURE", checkpoint: 1, segment: CHECKPOINT_FILE, offset: c.offset }, "does not verify");
    // Only the signature changed: without the key the log verifies.
    expect((await verifyLog(dir2)).ok).toBe(true);
    const out = await cli("--log", dir2, "--key", key.verifierKey, "-q");
    expect(out.code).toBe(1);
    expect(out.stdout).toContain("FAILED CHECKPOINT_BAD_SIGNATURE");
    expect(out.stdout).toContain(`checkpoint 1 (${CHECKPOINT_FILE}, offset ${c.offset})`);

    // A bit flipped without fixing the frame CRC: CHECKPOINT_BAD at the frame.
    const dir3 = copyOf(base);
    flip(file(dir3), c.offset + 8 + at, 0x20);
    expectFailure(await verifyLog(dir3, { key: verifier }), { code: "CHECKPOINT_BAD", checkpoint: 1, segment: CHECKPOINT_FILE, offset: c.offset });
  });

  test("a record removed from the middle of a segment: AUDIT_BAD_INDEX where it was", async () => {
    const r = middleRecord();
    const dir = copyOf(base);
    const file = path.join(dir, r.name);
    const b = fs.readFileSync(file);
    fs.writeFileSync(file, Buffer.concat([b.subarray(0, r.offset), b.subarray(r.offset + 8 + r.length)]));
    expectFailure(await verifyLog(dir, { key: verifier }), { code: "AUDIT_BAD_INDEX", index: r.index, segment: r.name, offset: r.offset }, `index ${r.index + 1}, expected ${r.index}`);
  });

  test("two adjacent records swapped: AUDIT_BAD_INDEX at the first", async () => {
    const r = middleRecord();
    const s = recs[r.index + 1]!;
    expect(s.name).toBe(r.name);
    const dir = copyOf(base);
    const file = path.join(dir, r.name);
    const b = fs.readFileSync(file);
    const end = s.offset + 8 + s.length;
    fs.writeFileSync(file, Buffer.concat([b.subarray(0, r.offset), b.subarray(s.offset, end), b.subarray(r.offset, s.offset), b.subarray(end)]));
    expectFailure(await verifyLog(dir, { key: verifier }), { code: "AUDIT_BAD_INDEX", index: r.index, segment: r.name, offset: r.offset }, `index ${s.index}, expected ${r.index}`);
  });

  test("a segment before the last cut short: AUDIT_TRUNCATED inside a frame, AUDIT_BAD_INDEX at the next segment if cut between frames", async () => {
    const r = middleRecord();
    const segs = segmentsOf(base);
    expect(r.name).not.toBe(segs.at(-1));
    const dir = copyOf(base);
    fs.truncateSync(path.join(dir, r.name), r.offset + 8 + 10);
    expectFailure(await verifyLog(dir, { key: verifier }), { code: "AUDIT_TRUNCATED", index: r.index, segment: r.name, offset: r.offset }, "ends 18 bytes into a frame");

    const dir2 = copyOf(base);
    fs.truncateSync(path.join(dir2, r.name), r.offset);
    const nextSeg = segs[segs.indexOf(r.name) + 1]!;
    const nextFirst = recs.find((x) => x.name === nextSeg)!.index;
    expectFailure(await verifyLog(dir2, { key: verifier }), { code: "AUDIT_BAD_INDEX", index: r.index, segment: nextSeg, offset: 0 }, `records ${r.index}..${nextFirst - 1} are missing`);
  });

  test("the last segment cut short: AUDIT_TRUNCATED; openLog repairs the torn tail, then refuses with AUDIT_ROLLED_BACK", async () => {
    const segs = segmentsOf(base);
    const lastSeg = recs.filter((x) => x.name === segs.at(-1));
    const r = lastSeg[Math.floor(lastSeg.length / 2)]!;
    const dir = copyOf(base);
    fs.truncateSync(path.join(dir, r.name), r.offset + 8 + 20);
    expectFailure(await verifyLog(dir, { key: verifier }), { code: "AUDIT_TRUNCATED", index: r.index, segment: r.name, offset: r.offset });

    const warnings: { msg: string; facts: object }[] = [];
    let error: unknown;
    try {
      const log = await openLog(dir, { signer, segmentBytes: 4096, onWarn: (msg, facts) => warnings.push({ msg, facts }) });
      await log.close();
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(AgateError);
    expect((error as AgateError).code).toBe("AUDIT_ROLLED_BACK");
    expect((error as AgateError).details).toMatchObject({ checkpoint: 3, size: 120, records: r.index });
    expect(warnings).toEqual([{ msg: "audit log tail truncated", facts: expect.objectContaining({ segment: r.name, offset: r.offset, bytes: 28 }) }]);
    // The repair cut the torn frame; verify now names the checkpoint whose records are gone.
    expect(fs.statSync(path.join(dir, r.name)).size).toBe(r.offset);
    expectFailure(await verifyLog(dir, { key: verifier }), { code: "AUDIT_ROLLED_BACK", checkpoint: 3, segment: CHECKPOINT_FILE, offset: cps[3]!.offset }, `the log holds ${r.index}`);
  });

  test("a whole segment dropped: AUDIT_BAD_INDEX naming the missing records; the last one dropped: AUDIT_ROLLED_BACK", async () => {
    const segs = segmentsOf(base);
    const gone = segs[1]!;
    const missing = recs.filter((x) => x.name === gone).map((x) => x.index);
    const dir = copyOf(base);
    fs.rmSync(path.join(dir, gone));
    expectFailure(await verifyLog(dir, { key: verifier }), { code: "AUDIT_BAD_INDEX", index: missing[0], segment: segs[2], offset: 0 }, `records ${missing[0]}..${missing.at(-1)} are missing`);

    const dir2 = copyOf(base);
    const lastSeg = segs.at(-1)!;
    const firstOfLast = recs.find((x) => x.name === lastSeg)!.index;
    fs.rmSync(path.join(dir2, lastSeg));
    expectFailure(await verifyLog(dir2, { key: verifier }), { code: "AUDIT_ROLLED_BACK", checkpoint: 3 }, `the log holds ${firstOfLast}`);
  });

  test("a re-hashed forgery signed with another key: CHECKPOINT_BAD_SIGNATURE saying which key signed it (also through the CLI)", async () => {
    // The forger rewrites every record (one field changed), so CRCs, chain and
    // tree are all consistent, and signs fresh checkpoints with a key of the same name.
    const forger = generateKey("agate.test/tamper");
    const dir = path.join(scratch, "forged");
    const log = await openLog(dir, { signer: parseSignerKey(forger.signerKey), segmentBytes: 4096, checkpointEveryRecords: 1_000_000, checkpointEverySeconds: 3600 });
    let k = 0;
    for await (const rec of readRecords(base)) {
      const { v: _v, i: _i, prev: _prev, t: _t, ...rest } = rec;
      if (k === 50) rest.text = "SELECT 1 -- nothing to see here";
      await log.append(rest);
      if (SIZES.includes(++k)) await log.checkpoint();
    }
    await log.close();
    expect(framesOf(dir, CHECKPOINT_FILE)).toHaveLength(4);
    // Internally consistent: it verifies with the forger's key, and without any key.
    expect(await verifyLog(dir, { key: parseVerifierKey(forger.verifierKey) })).toMatchObject({ ok: true, records: 120, checkpoints: 4 });
    expect((await verifyLog(dir)).ok).toBe(true);

    const forgerId = forger.verifierKey.split("+")[1]!;
    expectFailure(await verifyLog(dir, { key: verifier }), { code: "CHECKPOINT_BAD_SIGNATURE", checkpoint: 0, segment: CHECKPOINT_FILE, offset: 8 }, `(it is signed by agate.test/tamper+${forgerId})`);
    const out = await cli("--log", dir, "--key", key.verifierKey, "-q");
    expect(out.code).toBe(1);
    expect(out.stdout).toContain("FAILED CHECKPOINT_BAD_SIGNATURE");
    expect(out.stdout).toContain(`it is signed by agate.test/tamper+${forgerId}`);
  });

  test("the checkpoint file deleted: AUDIT_UNSIGNED when a key is given (nothing proves who wrote the records)", async () => {
    const dir = copyOf(base);
    fs.rmSync(path.join(dir, CHECKPOINT_FILE));
    expectFailure(await verifyLog(dir, { key: verifier }), { code: "AUDIT_UNSIGNED" }, "no checkpoint signed by agate.test/tamper");
    const out = await cli("--log", dir, "--key", key.verifierKey, "-q");
    expect(out.code).toBe(1);
    expect(out.stdout).toContain("FAILED AUDIT_UNSIGNED");
  });

  test("checkpoints reordered in checkpoints.agl: CHECKPOINT_ORDER", async () => {
    const dir = copyOf(base);
    const file = path.join(dir, CHECKPOINT_FILE);
    const b = fs.readFileSync(file);
    const [c1, c2] = [cps[1]!, cps[2]!];
    const end2 = c2.offset + 8 + c2.length;
    fs.writeFileSync(file, Buffer.concat([b.subarray(0, c1.offset), b.subarray(c2.offset, end2), b.subarray(c1.offset, c2.offset), b.subarray(end2)]));
    const moved = c1.offset + (end2 - c2.offset); // where checkpoint 1's frame (size 60) is now: third in the file
    expectFailure(await verifyLog(dir, { key: verifier }), { code: "CHECKPOINT_ORDER", checkpoint: 2, segment: CHECKPOINT_FILE, offset: moved }, "fewer than checkpoint 1 (90)");
  });

  describe("rollback", () => {
    let early: string;
    let latest: StoredCheckpoint;
    let live: string;

    beforeAll(async () => {
      live = path.join(scratch, "rollback-live");
      const opts = { signer, segmentBytes: 4096, checkpointEveryRecords: 1_000_000, checkpointEverySeconds: 3600 };
      let log = await openLog(live, opts);
      await Promise.all(Array.from({ length: 40 }, (_, k) => log.append(fields(k))));
      expect((await log.checkpoint())?.size).toBe(40);
      await log.close();
      early = copyOf(live);
      log = await openLog(live, opts);
      await Promise.all(Array.from({ length: 50 }, (_, k) => log.append(fields(40 + k))));
      latest = (await log.checkpoint())!;
      expect(latest.size).toBe(90);
      await log.close();
    });

    test("a log rolled back whole, checkpoints included, verifies alone but not against a kept checkpoint: AUDIT_ROLLED_BACK (also through the CLI)", async () => {
      expect(await verifyLog(early, { key: verifier })).toMatchObject({ ok: true, records: 40, checkpoints: 1 });
      expectFailure(await verifyLog(early, { key: verifier, trusted: [latest.note] }), { code: "AUDIT_ROLLED_BACK", checkpoint: -1 }, "the trusted checkpoint of size 90: it signs 90 records but the log holds 40");
      // The live log meets the same kept checkpoint.
      expect(await verifyLog(live, { key: verifier, trusted: [latest.note] })).toMatchObject({ ok: true, records: 90, checkpoints: 3 });

      const kept = path.join(scratch, "kept-checkpoint.txt");
      fs.writeFileSync(kept, latest.note);
      const out = await cli("--log", early, "--key", key.verifierKey, "--checkpoint", kept, "-q");
      expect(out.code).toBe(1);
      expect(out.stdout).toContain("FAILED AUDIT_ROLLED_BACK");
      expect(out.stdout).toContain("signs 90 records but the log holds 40");
      const ok = await cli("--log", live, "--key", key.verifierKey, "--checkpoint", kept, "-q");
      expect(ok.code).toBe(0);

      // A kept checkpoint signed by another key is refused as such.
      const other = parseSignerKey(generateKey("agate.test/tamper").signerKey);
      const foreign = signCheckpoint({ origin: latest.origin, size: 40, root: latest.root }, other);
      expectFailure(await verifyLog(early, { key: verifier, trusted: [foreign] }), { code: "CHECKPOINT_BAD_SIGNATURE", checkpoint: -1 }, "trusted checkpoint 1");
    });

    test("a kept checkpoint of another history (a fork signed by the right key): CHECKPOINT_BAD_ROOT", async () => {
      const fork = signCheckpoint({ origin: latest.origin, size: 40, root: new Uint8Array(32).fill(7) }, signer);
      for (const dir of [early, live]) {
        expectFailure(await verifyLog(dir, { key: verifier, trusted: [fork] }), { code: "CHECKPOINT_BAD_ROOT", checkpoint: -1 }, "the trusted checkpoint of size 40");
      }
    });

    test("segments rolled back but checkpoints.agl kept: AUDIT_ROLLED_BACK without any kept checkpoint, and openLog refuses", async () => {
      const dir = copyOf(early);
      fs.copyFileSync(path.join(live, CHECKPOINT_FILE), path.join(dir, CHECKPOINT_FILE));
      const liveCps = framesOf(live, CHECKPOINT_FILE);
      expectFailure(await verifyLog(dir, { key: verifier }), { code: "AUDIT_ROLLED_BACK", checkpoint: liveCps.length - 1, segment: CHECKPOINT_FILE, offset: liveCps.at(-1)!.offset }, "signs 90 records but the log holds 40");
      let code = "opened";
      try {
        await (await openLog(dir, { signer })).close();
      } catch (e) {
        code = (e as AgateError).code;
      }
      expect(code).toBe("AUDIT_ROLLED_BACK");
    });
  });

  describe("start-up trusts no record its writer did not make, and no cache", () => {
    const opts = { signer, segmentBytes: 4096, checkpointEveryRecords: 1_000_000, checkpointEverySeconds: 3600 };

    /** Append a well-formed, chained record to the last segment, as someone with write access could while agate is stopped. */
    function forge(dir: string): number {
      const last = recordsOf(dir).at(-1)!;
      const payload = encodeRecord(last.index + 1, hashPayload(last.payload), new Date().toISOString(), { type: "command", session: "forged", text: "SELECT 'forged'" });
      fs.appendFileSync(path.join(dir, last.name), encodeFrame(payload));
      return last.index + 1;
    }

    async function openError(dir: string): Promise<AgateError | null> {
      try {
        await (await openLog(dir, opts)).close();
        return null;
      } catch (e) {
        return e as AgateError;
      }
    }

    const recover = (...args: string[]) => run([process.execPath, path.join(ROOT, "src/main.ts"), "recover", ...args]);

    test("a record appended after a clean shutdown: AUDIT_UNSIGNED_TAIL; agate recover shows it, then cuts or accepts it", async () => {
      const dir = copyOf(base);
      const forged = forge(dir);
      expect(forged).toBe(120);
      const error = await openError(dir);
      expect(error?.code).toBe("AUDIT_UNSIGNED_TAIL");
      expect(error?.message).toContain("the writer closed cleanly at 120 records");
      expect(error?.message).toContain("agate recover");
      expect(error?.details).toMatchObject({ size: 121, bound: 120, marker: "clean" });

      const shown = await recover("--log", dir);
      expect(shown.code).toBe(1);
      expect(shown.stdout).toContain("writer marker: clean at 120 records; latest checkpoint: 120");
      expect(shown.stdout).toContain("unsigned: record 120 command");

      const accepted = copyOf(dir);
      const cut = await recover("--log", dir, "--cut");
      expect(cut.code).toBe(0);
      expect(cut.stdout).toContain("cut 1 records: the log ends at 120");
      let log = await openLog(dir, opts);
      expect(log.size).toBe(120);
      await log.close();
      expect(await verifyLog(dir, { key: verifier })).toMatchObject({ ok: true, records: 120 });

      expect((await recover("--log", accepted, "--accept")).code).toBe(0);
      log = await openLog(accepted, opts);
      expect(log.size).toBe(121);
      expect((await log.checkpoint())?.size).toBe(121);
      await log.close();
      expect(await verifyLog(accepted, { key: verifier })).toMatchObject({ ok: true, records: 121 });
      expect((await recover("--log", accepted)).stdout).toContain("no unsigned records");
    });

    test("without the writer marker, the latest checkpoint bounds the log", async () => {
      const dir = copyOf(base);
      fs.rmSync(path.join(dir, "writer.state"));
      forge(dir);
      const error = await openError(dir);
      expect(error?.code).toBe("AUDIT_UNSIGNED_TAIL");
      expect(error?.details).toMatchObject({ size: 121, bound: 120, marker: null });
      fs.rmSync(path.join(dir, "writer.state"), { force: true });
    });

    test("kill -9 mid-load: the restart accepts the tail the writer made past the last checkpoint, and refuses a record added after", async () => {
      const dir = path.join(scratch, "killed");
      const script = path.join(scratch, "kill-child.ts");
      fs.writeFileSync(
        script,
        `import { openLog } from ${JSON.stringify(path.join(ROOT, "src/audit/index.ts"))};
import { parseSignerKey } from ${JSON.stringify(path.join(ROOT, "src/audit/note.ts"))};
const log = await openLog(process.argv[2], { signer: parseSignerKey(process.env.KEY), segmentBytes: 4096, checkpointEveryRecords: 1_000_000, checkpointEverySeconds: 3600 });
let acked = 0;
for (let w = 0; w < 8; w++) (async () => {
  for (let k = 0; ; k++) {
    await log.append({ type: "command", session: "load", w, k, text: "SELECT " + k });
    if (++acked === 100) log.checkpoint();
    if (acked === 400) { process.stdout.write(acked + "\\n"); process.kill(process.pid, "SIGKILL"); }
  }
})();
`,
      );
      const child = Bun.spawn([process.execPath, script, dir], { env: { ...process.env, KEY: key.signerKey }, stdout: "pipe", stderr: "pipe" });
      const [out, , exit] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
      expect(child.signalCode).toBe("SIGKILL");
      expect(exit).not.toBe(0);
      expect(out.trim()).toBe("400");
      expect(fs.readFileSync(path.join(dir, "writer.state"), "latin1")).toMatch(/^AGW1 open /);

      const warnings: string[] = [];
      const log = await openLog(dir, { ...opts, onWarn: (m) => warnings.push(m) });
      const size = log.size;
      expect(size).toBeGreaterThanOrEqual(400);
      const signed = log.latestCheckpoint!.size;
      expect(signed).toBeGreaterThanOrEqual(100);
      expect(signed).toBeLessThan(size);
      expect((await log.checkpoint())?.size).toBe(size);
      await log.close();
      expect(await verifyLog(dir, { key: verifier })).toMatchObject({ ok: true, records: size });

      // After that clean restart a forged record is refused again…
      forge(dir);
      expect((await openError(dir))?.code).toBe("AUDIT_UNSIGNED_TAIL");
      // …and so is one added after a crash (the marker says "open" at the size the writer reached).
      const crashed = copyOf(dir);
      fs.writeFileSync(path.join(crashed, "writer.state"), `AGW1 open  ${String(size).padStart(20, "0")}\n`);
      const error = await openError(crashed);
      expect(error?.code).toBe("AUDIT_UNSIGNED_TAIL");
      expect(error?.message).toContain(`the writer had reserved at most ${size} records when it stopped`);
    });

    test("a flipped byte in tree.hashes: start-up rebuilds the cache from the segments with a warning, and verify agrees", async () => {
      const dir = copyOf(base);
      // The root of records 0..63, a hash the checkpoint's root of 120 = 64 + 32 + 16 + 8 is made from.
      flip(path.join(dir, "tree.hashes"), storedIndex(6, 0) * 32 + 5, 0x01);
      expect(await verifyLog(dir, { key: verifier })).toMatchObject({ ok: true, records: 120 });
      const warnings: string[] = [];
      const log = await openLog(dir, { ...opts, onWarn: (m) => warnings.push(m) });
      try {
        expect(warnings).toContain("audit hash file disagrees with the latest checkpoint; rebuilding it from the segments");
        expect(b64(log.rootAt(120))).toBe(b64(log.latestCheckpoint!.root));
        expect(b64(log.leafHash(0))).toBe(b64(leafHash(recs[0]!.payload)));
        await log.append(fields(120));
        expect((await log.checkpoint())?.size).toBe(121);
      } finally {
        await log.close();
      }
      expect(await verifyLog(dir, { key: verifier })).toMatchObject({ ok: true, records: 121 });
      // The rebuilt cache is trusted again without a warning.
      const quiet: string[] = [];
      await (await openLog(dir, { ...opts, onWarn: (m) => quiet.push(m) })).close();
      expect(quiet).toEqual([]);
    });
  });
});

// ---------------------------------------------------------------------------

describe("admin API of a running gateway", () => {
  const OTHER_KEY = "agk_test_key_outside_the_admin_groups";
  let db: TestPostgres;
  let gw: TestGateway;
  let base: string;
  let vkey: string;

  beforeAll(async () => {
    db = await startPostgres();
    gw = await startTestGateway(db, {
      audit: { checkpoint: { every_records: 1, every_seconds: 0.2 } },
      config: {
        admin: { listen: "127.0.0.1:0", groups: ["ci"] },
        identity: {
          api_keys: [
            { id: USER, groups: ["ci"], kind: "service", sha256: hashApiKey(API_KEY) },
            { id: "outsider", groups: ["other"], kind: "service", sha256: hashApiKey(OTHER_KEY) },
          ],
        },
      },
    });
    expect(gw.gateway.admin?.port).toBeGreaterThan(0);
    base = `http://127.0.0.1:${gw.gateway.admin!.port}`;
    vkey = gw.verifierKey;
  }, 120_000);

  afterAll(async () => {
    await gw?.close();
    await db?.stop();
  });

  const get = (p: string, key: string | null = API_KEY) => fetch(base + p, key ? { headers: { Authorization: `Bearer ${key}` } } : {});

  async function metrics(): Promise<Record<string, number>> {
    const res = await fetch(`${base}/metrics`);
    expect(res.status).toBe(200);
    const out: Record<string, number> = {};
    for (const line of (await res.text()).split("\n")) {
      const m = /^(\w+) (-?[\d.e+]+)$/.exec(line);
      if (m) out[m[1]!] = Number(m[2]);
    }
    return out;
  }

  /** Wait until a checkpoint covers every record (three polls in a row), then fetch and check it with Go. */
  async function settledCheckpoint(above: number): Promise<{ note: string; size: number; root: string }> {
    let same = 0;
    let last = -1;
    while (same < 3) {
      const m = await metrics();
      const size = m.agate_audit_checkpoint_size!;
      if (size > above && size === m.agate_audit_records && size === m.agate_audit_durable_records) {
        same = size === last ? same + 1 : 1;
        last = size;
      } else same = 0;
      await Bun.sleep(50);
    }
    const res = await get("/v1/log/checkpoint");
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toStartWith("text/plain");
    const note = await res.text();
    const { code, out } = await go("verify-note", { vkey, note });
    expect(code).toBe(0);
    expect(out.size).toBe(last);
    expect(out.origin).toBe("agate.test/audit");
    const mine = openCheckpoint(note, parseVerifierKey(vkey));
    expect(b64(mine.root)).toBe(out.root);
    return { note, size: out.size, root: out.root };
  }

  test("checkpoints, records and proofs, each checked with the Go helper; /metrics", async () => {
    // Nothing recorded yet: no checkpoint, and no default size for a proof.
    for (const p of ["/v1/log/checkpoint", "/v1/log/proof/inclusion?index=0", "/v1/log/proof/consistency?from=0"]) {
      const res = await get(p);
      expect({ p, status: res.status, code: ((await res.json()) as Json).error.code }).toEqual({ p, status: 404, code: "NOT_FOUND" });
    }
    expect((await metrics()).agate_audit_checkpoint_size).toBe(-1);

    const first = await psql(gw.url(), "SELECT 1");
    expect(first.code).toBe(0);
    const c1 = await settledCheckpoint(0);
    expect(c1.size).toBeGreaterThanOrEqual(3); // session_start, command, outcome, …

    const more = await psql(gw.url(), "SELECT 2; SELECT 3");
    expect(more.code).toBe(0);
    expect((await psql(gw.url(), "DROP TABLE nothing")).code).not.toBe(0); // denied, and recorded
    const c2 = await settledCheckpoint(c1.size);
    expect(c2.size).toBeGreaterThan(c1.size);

    // Records: the body is the payload, the header its RFC 6962 leaf hash.
    for (const index of [0, c1.size - 1, c1.size, c2.size - 1]) {
      const res = await get(`/v1/log/records/${index}`);
      expect(res.status).toBe(200);
      expect(res.headers.get("content-type")).toStartWith("application/json");
      const body = new Uint8Array(await res.arrayBuffer());
      const leaf = createHash("sha256").update(Buffer.concat([Buffer.from([0]), body])).digest("base64");
      expect(res.headers.get("agate-leaf-hash")).toBe(leaf);
      expect((await go("leaf-hash", { data: b64(body) })).out.hash).toBe(leaf);
      const rec = JSON.parse(Buffer.from(body).toString("utf8"));
      expect(rec).toMatchObject({ v: 2, i: index });

      // Included in both checkpoints that cover it, the second by default.
      for (const c of index < c1.size ? [c1, c2] : [c2]) {
        const url = c === c2 && index % 2 === 0 ? `/v1/log/proof/inclusion?index=${index}` : `/v1/log/proof/inclusion?index=${index}&size=${c.size}`;
        const p = await get(url);
        expect(p.status).toBe(200);
        const proof = (await p.json()) as { index: number; size: number; leaf_hash: string; hashes: string[] };
        expect(proof).toMatchObject({ index, size: c.size, leaf_hash: leaf });
        const v = await go("inclusion", { index, size: c.size, leaf_hash: leaf, root: c.root, proof: proof.hashes });
        expect({ index, size: c.size, ...v }).toEqual({ index, size: c.size, code: 0, out: { ok: true } });
      }
    }

    // Consistency between the two signed checkpoints (to defaults to the latest).
    for (const url of [`/v1/log/proof/consistency?from=${c1.size}&to=${c2.size}`, `/v1/log/proof/consistency?from=${c1.size}`]) {
      const res = await get(url);
      expect(res.status).toBe(200);
      const proof = (await res.json()) as { from: number; to: number; hashes: string[] };
      expect(proof).toMatchObject({ from: c1.size, to: c2.size });
      const ok = await go("consistency", { size1: c1.size, size2: c2.size, root1: c1.root, root2: c2.root, proof: proof.hashes });
      expect(ok.code).toBe(0);
      // Not consistent with a root the log never had.
      const flipped = Buffer.from(c1.root, "base64");
      flipped[0]! ^= 1;
      expect((await go("consistency", { size1: c1.size, size2: c2.size, root1: flipped.toString("base64"), root2: c2.root, proof: proof.hashes })).code).toBe(1);
    }

    const m = await metrics();
    expect(m.agate_audit_records).toBe(c2.size);
    expect(m.agate_audit_checkpoint_size).toBe(c2.size);
    const text = await (await fetch(`${base}/metrics`)).text();
    expect(text).toContain("# TYPE agate_audit_records gauge");
    expect(text).toContain(`\nagate_audit_records ${c2.size}\n`);

    // The gateway's files verify with its key and meet the checkpoint fetched from it.
    expect(await verifyLog(gw.auditDir, { key: parseVerifierKey(vkey), trusted: [c2.note] })).toMatchObject({ ok: true, records: c2.size });
  });

  test("authentication and authorization: 401 without or with a bad key, 403 outside the groups; /metrics needs none", async () => {
    for (const p of ["/v1/log/checkpoint", "/v1/log/records/0", "/v1/log/proof/inclusion?index=0&size=1", "/v1/log/proof/consistency?from=1&to=1"]) {
      const none = await get(p, null);
      expect({ p, status: none.status }).toEqual({ p, status: 401 });
      expect(((await none.json()) as Json).error.code).toBe("UNAUTHENTICATED");
      const bad = await get(p, "agk_not_a_key");
      expect({ p, status: bad.status }).toEqual({ p, status: 401 });
      const basic = await fetch(base + p, { headers: { Authorization: `Basic ${btoa(`${USER}:${API_KEY}`)}` } });
      expect({ p, status: basic.status }).toEqual({ p, status: 401 });
      const outsider = await get(p, OTHER_KEY);
      expect({ p, status: outsider.status }).toEqual({ p, status: 403 });
      expect(((await outsider.json()) as Json).error).toMatchObject({ code: "FORBIDDEN", message: expect.stringContaining("ci") });
    }
    expect((await fetch(`${base}/metrics`)).status).toBe(200);
  });

  test("bad parameters: 400; records, sizes and routes that do not exist: 404", async () => {
    const size = (await metrics()).agate_audit_durable_records!;
    expect(size).toBeGreaterThan(0);
    const cases: [string, number, string][] = [
      ["/v1/log/proof/inclusion", 400, "BAD_REQUEST"],
      ["/v1/log/proof/inclusion?index=abc&size=1", 400, "BAD_REQUEST"],
      ["/v1/log/proof/inclusion?index=-1&size=1", 400, "BAD_REQUEST"],
      ["/v1/log/proof/inclusion?index=0.5&size=1", 400, "BAD_REQUEST"],
      ["/v1/log/proof/inclusion?index=0&size=1e3", 400, "BAD_REQUEST"],
      ["/v1/log/proof/inclusion?index=99999999999999999999&size=1", 400, "BAD_REQUEST"],
      ["/v1/log/proof/consistency", 400, "BAD_REQUEST"],
      ["/v1/log/proof/consistency?from=x&to=1", 400, "BAD_REQUEST"],
      ["/v1/log/records/abc", 400, "BAD_REQUEST"],
      ["/v1/log/records/-1", 400, "BAD_REQUEST"],
      [`/v1/log/records/${size}`, 404, "AUDIT_NO_SUCH_RECORD"],
      ["/v1/log/records/99999999", 404, "AUDIT_NO_SUCH_RECORD"],
      [`/v1/log/proof/inclusion?index=${size}&size=${size}`, 404, "AUDIT_NO_SUCH_RECORD"],
      [`/v1/log/proof/inclusion?index=0&size=${size + 1000}`, 404, "AUDIT_NO_SUCH_SIZE"],
      [`/v1/log/proof/inclusion?index=0&size=0`, 404, "AUDIT_NO_SUCH_RECORD"],
      [`/v1/log/proof/consistency?from=0&to=${size + 1000}`, 404, "AUDIT_NO_SUCH_SIZE"],
      [`/v1/log/proof/consistency?from=2&to=1`, 400, "AUDIT_BAD_RANGE"],
      ["/v1/log/nothing", 404, "NOT_FOUND"],
    ];
    for (const [p, status, code] of cases) {
      const res = await get(p);
      const body = (await res.json()) as Json;
      expect({ p, status: res.status, code: body.error?.code }).toEqual({ p, status, code });
      expect(typeof body.error.message).toBe("string");
    }
  });
});
