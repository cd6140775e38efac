import { afterEach, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { AgateError } from "../src/core/errors.ts";
import { canonicalFull, canonicalJson } from "../src/audit/canonical.ts";
import { crc32c } from "../src/audit/crc32c.ts";
import { ZERO_HASH, EncodedFields, encodeFields, encodeFileHeader, encodeFrame, encodePayload, encodeRecord, hashPayload, segmentName } from "../src/audit/format.ts";
import { openLog, readRecords, verifyLog, type AuditLog } from "../src/audit/index.ts";
import { openNote, parseSignerKey, parseVerifierKey } from "../src/audit/note.ts";
import { VECTORS_DIR, makeVectors } from "../scripts/vectors.ts";

const dirs: string[] = [];
function tempDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), "agate-audit-"));
  dirs.push(d);
  return path.join(d, "log"); // openLog creates it
}
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

type Warning = { msg: string; facts: Record<string, unknown> };
function collect(): { warnings: Warning[]; onWarn: (msg: string, facts: object) => void } {
  const warnings: Warning[] = [];
  return { warnings, onWarn: (msg, facts) => warnings.push({ msg, facts: facts as Record<string, unknown> }) };
}

async function writeLog(dir: string, n: number, opts: Parameters<typeof openLog>[1] = {}): Promise<void> {
  const log = await openLog(dir, opts);
  await Promise.all(Array.from({ length: n }, (_, k) => log.append({ type: "command", k, text: `SELECT ${k}` })));
  await log.close();
}

/** Frame offsets of a segment file, walking lengths from the header on. */
function frameOffsets(file: string): { offset: number; length: number }[] {
  const b = fs.readFileSync(file);
  const out: { offset: number; length: number }[] = [];
  for (let p = 8; p + 8 <= b.length; ) {
    const length = b.readUInt32BE(p);
    out.push({ offset: p, length });
    p += 8 + length;
  }
  return out;
}

function seg(dir: string, first = 0): string {
  return path.join(dir, segmentName(first));
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return e instanceof AgateError ? e.code : `not an AgateError: ${e}`;
  }
  return "resolved";
}

describe("crc32c", () => {
  test("check value and RFC 3720 B.4 vector", () => {
    expect(crc32c("123456789")).toBe(0xe3069283);
    expect(crc32c(new Uint8Array(32))).toBe(0x8a9136aa); // 32 bytes of zeros
    expect(crc32c(new Uint8Array(32).fill(0xff))).toBe(0x62a8ab43); // 32 bytes of 0xff
    expect(crc32c("")).toBe(0);
  });
  test("continues over pieces", () => {
    expect(crc32c("56789", crc32c("1234"))).toBe(0xe3069283);
  });
});

describe("canonicalJson", () => {
  test("sorts keys at every depth, no whitespace", () => {
    expect(canonicalJson({ b: 1, a: { d: [3, { z: 1, y: 2 }], c: "x" } })).toBe('{"a":{"c":"x","d":[3,{"y":2,"z":1}]},"b":1}');
  });
  test("sorts by UTF-16 code units, writes numbers and strings like JSON.stringify", () => {
    expect(canonicalJson({ "\u20ac": 1, "\ud83d\ude00": 2, a: 1e21, B: -0, c: "\u2028\n" })).toBe('{"B":0,"a":1e+21,"c":"\u2028\\n","\u20ac":1,"\ud83d\ude00":2}');
  });
  test("drops undefined properties, honours toJSON", () => {
    expect(canonicalJson({ a: undefined, d: new Date(0), l: [undefined] })).toBe('{"d":"1970-01-01T00:00:00.000Z","l":[null]}');
  });
  test("refuses what JSON cannot hold", () => {
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    for (const v of [{ n: NaN }, { n: Infinity }, { n: 1n }, { f: () => 1 }, cyclic]) {
      expect(() => canonicalJson(v)).toThrow(AgateError);
    }
  });
});

describe("canonicalJson fast path", () => {
  // A small deterministic PRNG so a failure can be reproduced.
  function rng(seed: number): () => number {
    return () => {
      seed = (seed + 0x6d2b79f5) | 0;
      let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }
  const keyPool = ["a", "b", "B", "i", "prev", "t", "v", "type", "session", "seq", "0", "1", "10", "9", "-1", "__proto__", "toJSON", "", "\u20ac", "\ud83d\ude00", "\ud800", "a\"b", "\n", "zz", "é"];
  const strPool = ["", "x", "SELECT 1", 'q"uote', "back\\slash", "\u0000\u001f\u007f", "\u2028\u2029", "\ud83d\ude00", "\udc00 lone", "é€", "base64:AAEC"];
  const numPool = [0, -0, 1, -1, 17, 0.1, 1e21, 1e-7, 123456789012345680000, Number.MAX_SAFE_INTEGER, 2 ** 53 + 2, -1.5e-300];
  function value(r: () => number, depth: number): unknown {
    const pick = <T,>(xs: T[]) => xs[Math.floor(r() * xs.length)]!;
    const k = Math.floor(r() * (depth > 3 ? 6 : 10));
    switch (k) {
      case 0: return pick(strPool);
      case 1: return pick(numPool);
      case 2: return r() < 0.5;
      case 3: return null;
      case 4: return r() < 0.7 ? pick(strPool) + pick(keyPool) : undefined;
      case 5: {
        const s = pick(strPool);
        return r() < 0.5 ? new Date(Math.floor(r() * 2e12)) : { toJSON: () => s };
      }
      case 6:
      case 7: {
        const o: Record<string, unknown> = {};
        const n = Math.floor(r() * 6);
        for (let j = 0; j < n; j++) Object.defineProperty(o, pick(keyPool), { value: value(r, depth + 1), enumerable: true, configurable: true, writable: true });
        return o;
      }
      default: {
        const a = Array.from({ length: Math.floor(r() * 4) }, () => value(r, depth + 1));
        if (r() < 0.1) a.length += 2; // holes
        return a;
      }
    }
  }
  function outcome(f: () => string): string {
    try {
      return f();
    } catch (e) {
      return `throws ${(e as AgateError).code}: ${(e as Error).message}`;
    }
  }
  test("agrees with the full canonicalizer on random values", () => {
    const r = rng(8785);
    for (let n = 0; n < 5000; n++) {
      const v = value(r, 0);
      const want = outcome(() => canonicalFull(v));
      expect(outcome(() => canonicalJson(v))).toBe(want);
      if (!want.startsWith("throws")) expect(JSON.parse(want)).toEqual(JSON.parse(JSON.stringify(v) ?? "null"));
    }
  });
  test("records: reserved keys spliced in at their sorted places", () => {
    const r = rng(3720);
    for (let n = 0; n < 5000; n++) {
      const f = value(r, 1);
      if (typeof f !== "object" || f === null || Array.isArray(f) || ["i", "prev", "t", "v"].some((k) => Object.hasOwn(f, k))) continue;
      const fields = f as Record<string, unknown>;
      // Fields with a toJSON() of their own are refused: the record would not be an object with the log's keys.
      const own = typeof (fields as { toJSON?: unknown }).toJSON === "function";
      const want = own ? "throws AUDIT_BAD_RECORD: Cannot write an audit record: fields must be a JSON object." : outcome(() => canonicalFull({ ...fields, v: 2, i: n, prev: ZERO_HASH, t: "2025-01-01T00:00:00.000Z" }));
      expect(outcome(() => encodePayload(n, ZERO_HASH, "2025-01-01T00:00:00.000Z", fields))).toBe(want);
      // As a worker thread encodes it (canonical parts, joined by the writer): the same text; a refusal may name another path.
      const parts = outcome(() => encodePayload(n, ZERO_HASH, "2025-01-01T00:00:00.000Z", new EncodedFields(encodeFields(fields), 0)));
      if (want.startsWith("throws")) expect(parts.split(":")[0]).toBe(want.split(":")[0]);
      else expect(parts).toBe(want);
    }
    expect(() => encodeFields({ i: 1 })).toThrow('the log sets "i" itself');
  });
  test("the hard cases: refusals, cycles, deep nesting, index keys, boxed values, holes", () => {
    const cyclic: Record<string, unknown> = { a: [1] };
    (cyclic.a as unknown[]).push({ back: cyclic });
    let deep: unknown = "end";
    for (let d = 0; d < 200; d++) deep = { d: [deep] };
    const cases: unknown[] = [
      { n: NaN }, { n: [1, -Infinity] }, { b: 1n }, { f: () => 1 }, { s: Symbol("s") }, cyclic, deep,
      { 10: "a", 9: "b", x: { 2: 1, 10: 2 } }, { ["__proto__"]: 1 } , JSON.parse('{"__proto__":{"x":1},"a":2}'),
      { s: new String("ab"), n: new Number(3), b: new Boolean(false) }, { m: new Map([[1, 2]]) }, [1, , 3], { u: undefined, l: [undefined] },
      { toJSON: () => ({ z: 1, a: 2 }) }, { d: { toJSON: () => undefined } }, { nested: { toJSON: () => ({ toJSON: () => [3] }) } },
      new (class { y = 1; x = 2; get z() { return 3; } })(),
    ];
    for (const v of cases) expect(outcome(() => canonicalJson(v))).toBe(outcome(() => canonicalFull(v)));
    expect(canonicalJson([1, , 3])).toBe("[1,null,3]");
    expect(canonicalJson({ 10: "a", 9: "b", x: { 2: 1, 10: 2 } })).toBe('{"10":"a","9":"b","x":{"10":2,"2":1}}');
    expect(() => canonicalJson(cyclic)).toThrow("cycle");
  });
});

describe("format", () => {
  test("example in format.ts", () => {
    const payload = encodeRecord(0, ZERO_HASH, "2025-01-01T00:00:00.000Z", { type: "command", text: "SELECT 1" });
    expect(payload.toString()).toBe(`{"i":0,"prev":"${ZERO_HASH}","t":"2025-01-01T00:00:00.000Z","text":"SELECT 1","type":"command","v":2}`);
    const frame = encodeFrame(payload);
    expect(Buffer.concat([encodeFileHeader(), frame.subarray(0, 8)]).toString("hex")).toBe("41474c3100000002" + "00000099416b4d38");
    // { printf '\0'; printf '%s' '<payload>'; } | sha256sum
    expect(hashPayload(payload)).toBe("c04adfcbf93ed5782ea4f7f19fe4fc290fa9a8297b843d8d6da46748fa107af6");
  });
  test("segment names are 20-digit first indexes", () => {
    expect(segmentName(0)).toBe("seg-00000000000000000000.agl");
    expect(segmentName(1234)).toBe("seg-00000000000000001234.agl");
  });
  test("reserved keys and oversize records are refused", async () => {
    const log = await openLog(tempDir());
    expect(await codeOf(log.append({ i: 5 }))).toBe("AUDIT_BAD_RECORD");
    expect(await codeOf(log.append({ body: "x".repeat(16 * 1024 * 1024) }))).toBe("AUDIT_RECORD_TOO_LARGE");
    expect(log.size).toBe(0); // refused records take no index
    expect(await log.append({ ok: true })).toBe(0);
    await log.close();
  });
});

describe("test vectors (test/vectors, written by scripts/vectors.ts)", () => {
  const files = fs.readdirSync(VECTORS_DIR).filter((n) => n.endsWith(".json"));
  const made = makeVectors();
  /** SHA-256 from node:crypto, and the RFC 6962 tree hash written out from its definition, not from merkle.ts. */
  const sha = (...parts: Uint8Array[]) => createHash("sha256").update(Buffer.concat(parts)).digest();
  const mth = (leaves: Buffer[]): Buffer => {
    if (leaves.length === 0) return sha();
    if (leaves.length === 1) return leaves[0]!;
    let k = 1;
    while (k * 2 < leaves.length) k *= 2;
    return sha(Buffer.from([1]), mth(leaves.slice(0, k)), mth(leaves.slice(k)));
  };
  /** The payloads of a file of frames, checking header, lengths and CRCs as the spec says. */
  const frames = (b: Buffer): Buffer[] => {
    expect(b.subarray(0, 8).toString("hex")).toBe("41474c3100000002");
    const out: Buffer[] = [];
    for (let p = 8; p < b.length; ) {
      const length = b.readUInt32BE(p);
      const payload = b.subarray(p + 8, p + 8 + length);
      expect(payload.length).toBe(length);
      expect(crc32c(payload)).toBe(b.readUInt32BE(p + 4));
      out.push(payload);
      p += 8 + length;
    }
    return out;
  };

  test("every case is there, and is exactly what the script makes", () => {
    expect(files.sort()).toEqual([...made.keys()].sort());
    for (const name of files) expect(fs.readFileSync(path.join(VECTORS_DIR, name), "utf8")).toBe(made.get(name)!);
  });

  for (const name of files) {
    test(`${name}: payloads, chain, leaf hashes, roots and checkpoints recomputed from the spec; verify accepts the files`, async () => {
      const v = JSON.parse(fs.readFileSync(path.join(VECTORS_DIR, name), "utf8"));
      expect(typeof v.desc).toBe("string");
      const segs = Object.keys(v.files).filter((f) => f !== "checkpoints.agl").sort();
      const payloads = segs.flatMap((f) => frames(Buffer.from(v.files[f], "hex")));
      expect(payloads.map((p) => p.toString("utf8"))).toEqual(v.payloads);
      // Segment names: the index of the first record, 20 digits.
      let first = 0;
      for (const f of segs) {
        expect(f).toBe(`seg-${String(first).padStart(20, "0")}.agl`);
        first += frames(Buffer.from(v.files[f], "hex")).length;
      }
      const leaves = payloads.map((p) => sha(Buffer.from([0]), p));
      expect(leaves.map((l) => l.toString("hex"))).toEqual(v.leaf_hashes);
      payloads.forEach((p, i) => {
        const rec = JSON.parse(p.toString("utf8"));
        expect(rec).toMatchObject({ v: 2, i, prev: i === 0 ? "0".repeat(64) : v.leaf_hashes[i - 1], t: v.records[i].t, ...v.records[i].fields });
        expect(canonicalFull(rec)).toBe(p.toString("utf8"));
      });
      expect(v.roots).toEqual(Array.from({ length: leaves.length + 1 }, (_, n) => mth(leaves.slice(0, n)).toString("hex")));
      // checkpoints.agl: each frame's payload is canonical JSON {"note": <the signed note's text>}.
      const cps = frames(Buffer.from(v.files["checkpoints.agl"], "hex")).map((p) => JSON.parse(p.toString("utf8")));
      expect(cps.map((c) => Object.keys(c))).toEqual(v.checkpoints.map(() => ["note"]));
      const verifier = parseVerifierKey(v.verifier_key);
      cps.forEach((c, k) => {
        const want = v.checkpoints[k];
        expect(c.note).toBe(want.note);
        expect(openNote(c.note, verifier)).toBe(`${v.origin}\n${want.size}\n${Buffer.from(v.roots[want.size], "hex").toString("base64")}\n`);
        expect(want.root).toBe(Buffer.from(v.roots[want.size], "hex").toString("base64"));
      });
      // The files as a log directory: agate verify accepts them, and a writer opens them.
      const dir = tempDir();
      fs.mkdirSync(dir, { recursive: true });
      for (const [f, h] of Object.entries(v.files)) fs.writeFileSync(path.join(dir, f), Buffer.from(h as string, "hex"));
      expect(await verifyLog(dir, { key: verifier })).toMatchObject({ ok: true, records: leaves.length, checkpoints: cps.length });
      const log = await openLog(dir, { signer: parseSignerKey(v.signer_key) });
      expect(log.size).toBe(leaves.length);
      expect(log.latestCheckpoint?.note).toBe(v.checkpoints.at(-1).note);
      await log.close();
    });
  }
});

describe("append and reopen", () => {
  test("2000 concurrent appends get indexes in call order; reopen continues the chain", async () => {
    const dir = tempDir();
    const log = await openLog(dir);
    const N = 2000;
    const results = await Promise.all(Array.from({ length: N }, (_, k) => log.append({ type: "command", k })));
    expect(results).toEqual(Array.from({ length: N }, (_, k) => k));
    expect(log.size).toBe(N);
    await log.close();

    const first = await verifyLog(dir);
    expect(first).toMatchObject({ ok: true, records: N, segments: 1 });

    const again = await openLog(dir);
    expect(again.size).toBe(N);
    expect(await again.append({ type: "command", k: N })).toBe(N);
    await again.close();

    const second = await verifyLog(dir);
    expect(second).toMatchObject({ ok: true, records: N + 1 });
    let k = 0;
    for await (const rec of readRecords(dir)) {
      expect(rec.i).toBe(k);
      expect(rec.k).toBe(k);
      expect(rec.v).toBe(2);
      expect(rec.t).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
      k++;
    }
    expect(k).toBe(N + 1);
  });

  test("group commit: appends made together go out in one write and one fdatasync", async () => {
    const dir = tempDir();
    const calls = { write: 0, datasync: 0 };
    const log = await openLog(dir, {
      __faultFs: {
        write: async (fh, data, position) => {
          calls.write++;
          await fh.write(data, 0, data.length, position);
        },
        datasync: async (fh) => {
          calls.datasync++;
          await fh.datasync();
        },
      },
    });
    await Promise.all(Array.from({ length: 500 }, (_, k) => log.append({ k })));
    expect(calls).toEqual({ write: 1, datasync: 1 });
    await log.close();
  });

  test("records are chained by the RFC 6962 leaf hash of the previous payload", async () => {
    const dir = tempDir();
    await writeLog(dir, 3);
    const b = fs.readFileSync(seg(dir));
    const [f0, f1] = frameOffsets(seg(dir));
    const p0 = b.subarray(f0!.offset + 8, f0!.offset + 8 + f0!.length);
    const p1 = JSON.parse(b.subarray(f1!.offset + 8, f1!.offset + 8 + f1!.length).toString());
    expect(JSON.parse(p0.toString()).prev).toBe(ZERO_HASH);
    expect(p1.prev).toBe(new Bun.CryptoHasher("sha256").update(new Uint8Array([0])).update(p0).digest("hex"));
  });

  test("appendLater orders with append and is made durable by the next group", async () => {
    const dir = tempDir();
    const log = await openLog(dir);
    const a = log.append({ type: "command" });
    const b = log.appendLater({ type: "outcome", of: 0 });
    const c = log.append({ type: "command" });
    expect(b).toBe(1);
    expect(await Promise.all([a, c])).toEqual([0, 2]);
    log.appendLater({ type: "outcome", of: 2 });
    await log.flush();
    await log.close();
    const types: unknown[] = [];
    for await (const rec of readRecords(dir)) types.push(rec.type);
    expect(types).toEqual(["command", "outcome", "command", "outcome"]);
  });

  test("interval mode writes, and flush makes durable", async () => {
    const dir = tempDir();
    const log = await openLog(dir, { durability: { mode: "interval", interval_ms: 5 } });
    const idx = await Promise.all(Array.from({ length: 100 }, (_, k) => log.append({ k })));
    expect(idx[99]).toBe(99);
    await log.flush();
    await log.close();
    expect(await verifyLog(dir)).toMatchObject({ ok: true, records: 100 });
  });

  test("closed log refuses appends", async () => {
    const log = await openLog(tempDir());
    await log.close();
    expect(await codeOf(log.append({}))).toBe("AUDIT_CLOSED");
  });

  test("creates the directory with mode 0700", async () => {
    const dir = tempDir();
    await (await openLog(dir)).close();
    expect(fs.statSync(dir).mode & 0o777).toBe(0o700);
  });
});

describe("batch buffer", () => {
  test("multi-byte text, a record larger than the queue buffer, and a refused one in the same batch", async () => {
    const dir = tempDir();
    const log = await openLog(dir);
    const text = "é€😀\u2028\ud800".repeat(1000);
    const big = "x".repeat(600 * 1024); // larger than a fresh queue buffer
    const wide = "é".repeat(9 * 1024 * 1024); // 9 Mi UTF-16 units, 18 MiB of UTF-8: over the limit
    const appends = [log.append({ k: 0, text }), log.append({ k: 1, big }), log.append({ k: 2, wide }), log.append({ k: 3, text })];
    expect(await codeOf(appends[2]!)).toBe("AUDIT_RECORD_TOO_LARGE");
    expect(await Promise.all([appends[0], appends[1], appends[3]])).toEqual([0, 1, 2]);
    await log.close();
    expect(await verifyLog(dir)).toMatchObject({ ok: true, records: 3 });
    const recs: Record<string, unknown>[] = [];
    for await (const rec of readRecords(dir)) recs.push(rec);
    expect(recs.map((r) => r.k)).toEqual([0, 1, 3]);
    expect(recs[0]!.text).toBe(text); // a lone surrogate is written escaped, so it reads back as it was
    expect(recs[1]!.big).toBe(big);
  });

  test("rotation through a replaced write and datasync (the asynchronous path), with appends arriving meanwhile", async () => {
    const dir = tempDir();
    const calls = { write: 0, datasync: 0 };
    const log = await openLog(dir, {
      segmentBytes: 1500,
      __faultFs: {
        write: async (fh, data, position) => {
          calls.write++;
          await Bun.sleep(1);
          await fh.write(data, 0, data.length, position);
        },
        datasync: async (fh) => {
          calls.datasync++;
          await fh.datasync();
        },
      },
    });
    const pending: Promise<number>[] = [];
    for (let round = 0; round < 4; round++) {
      for (let k = 0; k < 15; k++) pending.push(log.append({ round, k, pad: "y".repeat(80) }));
      await Bun.sleep(0);
    }
    expect(await Promise.all(pending)).toEqual(Array.from({ length: 60 }, (_, k) => k));
    await log.close();
    expect(calls.write).toBeGreaterThan(4);
    const v = await verifyLog(dir);
    expect(v).toMatchObject({ ok: true, records: 60 });
    if (v.ok) expect(v.segments).toBeGreaterThan(3);
  });
});

describe("segments", () => {
  test("rotation across several segments; names match first indexes; verify ok; reopen continues", async () => {
    const dir = tempDir();
    const log = await openLog(dir, { segmentBytes: 2000 });
    for (let round = 0; round < 5; round++) {
      await Promise.all(Array.from({ length: 20 }, (_, k) => log.append({ round, k, pad: "x".repeat(100) })));
    }
    await log.close();
    const names = fs.readdirSync(dir).filter((n) => n.startsWith("seg-")).sort();
    expect(names.length).toBeGreaterThan(3);
    let next = 0;
    for (const name of names) {
      expect(name).toBe(segmentName(next));
      const file = path.join(dir, name);
      expect(fs.statSync(file).size).toBeLessThanOrEqual(2000);
      next += frameOffsets(file).length;
    }
    expect(next).toBe(100);
    const v = await verifyLog(dir);
    expect(v).toMatchObject({ ok: true, records: 100, segments: names.length });

    const again = await openLog(dir, { segmentBytes: 2000 });
    expect(again.size).toBe(100);
    await again.append({ after: true });
    await again.close();
    expect(await verifyLog(dir)).toMatchObject({ ok: true, records: 101 });
  });

  test("a record larger than segmentBytes gets a segment of its own", async () => {
    const dir = tempDir();
    const log = await openLog(dir, { segmentBytes: 300 });
    await log.append({ pad: "x".repeat(1000) });
    await log.append({ pad: "y".repeat(1000) });
    await log.close();
    expect(fs.readdirSync(dir).filter((n) => n.startsWith("seg-")).sort()).toEqual([segmentName(0), segmentName(1)]);
    expect(await verifyLog(dir)).toMatchObject({ ok: true, records: 2, segments: 2 });
  });

  test("reopening with an empty last segment takes the chain from the segment before", async () => {
    const dir = tempDir();
    await writeLog(dir, 5);
    fs.writeFileSync(seg(dir, 5), encodeFileHeader()); // as if a crash followed rotation
    const log = await openLog(dir);
    expect(log.size).toBe(5);
    expect(await log.append({ k: 5 })).toBe(5);
    await log.close();
    expect(await verifyLog(dir)).toMatchObject({ ok: true, records: 6, segments: 2 });
  });

  test("verify reports a missing segment as AUDIT_BAD_INDEX", async () => {
    const dir = tempDir();
    await writeLog(dir, 60, { segmentBytes: 1000 });
    const names = fs.readdirSync(dir).filter((n) => n.startsWith("seg-")).sort();
    expect(names.length).toBeGreaterThan(2);
    fs.rmSync(path.join(dir, names[1]!));
    const v = await verifyLog(dir);
    expect(v.ok).toBe(false);
    if (!v.ok) expect(v.error).toMatchObject({ code: "AUDIT_BAD_INDEX", segment: names[2], offset: 0 });
  });

  test("verify of a directory that does not exist: AUDIT_NO_LOG", async () => {
    expect(await verifyLog(tempDir())).toMatchObject({ ok: false, records: 0, error: { code: "AUDIT_NO_LOG" } });
  });

  test("verify streams and reports progress", async () => {
    const dir = tempDir();
    await writeLog(dir, 50, { segmentBytes: 1500 });
    const seen: [number, number, number][] = [];
    const v = await verifyLog(dir, { onProgress: (r, b, t) => seen.push([r, b, t]) });
    expect(v.ok).toBe(true);
    const last = seen[seen.length - 1]!;
    expect(last[0]).toBe(50);
    expect(last[1]).toBe(last[2]);
  });
});

describe("tamper evidence", () => {
  async function logOf(n: number): Promise<{ dir: string; file: string; frames: { offset: number; length: number }[] }> {
    const dir = tempDir();
    await writeLog(dir, n);
    return { dir, file: seg(dir), frames: frameOffsets(seg(dir)) };
  }

  test("a flipped byte in a middle record: AUDIT_BAD_CRC naming the record", async () => {
    const { dir, file, frames } = await logOf(10);
    const b = fs.readFileSync(file);
    b[frames[4]!.offset + 8 + 20]! ^= 0x01;
    fs.writeFileSync(file, b);
    const v = await verifyLog(dir);
    expect(v).toMatchObject({ ok: false, records: 4, error: { code: "AUDIT_BAD_CRC", index: 4, segment: segmentName(0), offset: frames[4]!.offset } });
  });

  test("a record rewritten with a valid CRC: AUDIT_BAD_CHAIN at the next record", async () => {
    const { dir, file, frames } = await logOf(10);
    const b = fs.readFileSync(file);
    const f = frames[4]!;
    const payload = Buffer.from(b.subarray(f.offset + 8, f.offset + 8 + f.length));
    const changed = Buffer.from(payload.toString().replace('"k":4', '"k":9'));
    expect(changed.length).toBe(payload.length);
    encodeFrame(changed).copy(b, f.offset);
    fs.writeFileSync(file, b);
    const v = await verifyLog(dir);
    expect(v).toMatchObject({ ok: false, records: 5, error: { code: "AUDIT_BAD_CHAIN", index: 5, offset: frames[5]!.offset } });
  });

  test("a removed frame: AUDIT_BAD_INDEX where it was", async () => {
    const { dir, file, frames } = await logOf(10);
    const b = fs.readFileSync(file);
    const f = frames[4]!;
    fs.writeFileSync(file, Buffer.concat([b.subarray(0, f.offset), b.subarray(f.offset + 8 + f.length)]));
    const v = await verifyLog(dir);
    expect(v).toMatchObject({ ok: false, records: 4, error: { code: "AUDIT_BAD_INDEX", index: 4, offset: f.offset } });
  });

  test("a bad header: AUDIT_BAD_HEADER", async () => {
    const { dir, file } = await logOf(3);
    const b = fs.readFileSync(file);
    b[7] = 1; // version 1
    fs.writeFileSync(file, b);
    expect(await verifyLog(dir)).toMatchObject({ ok: false, error: { code: "AUDIT_BAD_HEADER", offset: 0 } });
  });

  test("a valid frame that is not JSON: AUDIT_BAD_JSON", async () => {
    const { dir, file, frames } = await logOf(3);
    const b = fs.readFileSync(file);
    const f = frames[1]!;
    const junk = Buffer.alloc(f.length, 0x7b); // "{{{{..."
    encodeFrame(junk).copy(b, f.offset);
    fs.writeFileSync(file, b);
    expect(await verifyLog(dir)).toMatchObject({ ok: false, error: { code: "AUDIT_BAD_JSON", index: 1 } });
  });

  test("readRecords yields the good records, then throws the failure", async () => {
    const { dir, file, frames } = await logOf(10);
    fs.truncateSync(file, frames[6]!.offset + 3);
    const got: unknown[] = [];
    let code = "";
    try {
      for await (const rec of readRecords(dir)) got.push(rec.i);
    } catch (e) {
      code = (e as AgateError).code;
    }
    expect(got).toEqual([0, 1, 2, 3, 4, 5]);
    expect(code).toBe("AUDIT_TRUNCATED");
  });
});

describe("recovery at open", () => {
  test("a tail cut mid-frame: verify says AUDIT_TRUNCATED; openLog truncates, warns, continues", async () => {
    const dir = tempDir();
    await writeLog(dir, 10);
    const file = seg(dir);
    const frames = frameOffsets(file);
    const cut = frames[9]!.offset + 8 + 10;
    fs.truncateSync(file, cut);
    expect(await verifyLog(dir)).toMatchObject({ ok: false, records: 9, error: { code: "AUDIT_TRUNCATED", index: 9, offset: frames[9]!.offset } });

    const { warnings, onWarn } = collect();
    const log = await openLog(dir, { onWarn });
    expect(warnings).toEqual([{ msg: "audit log tail truncated", facts: expect.objectContaining({ segment: segmentName(0), offset: frames[9]!.offset, bytes: 18 }) }]);
    expect(log.size).toBe(9);
    expect(await log.append({ k: "again" })).toBe(9);
    await log.close();
    expect(await verifyLog(dir)).toMatchObject({ ok: true, records: 10 });
  });

  test("a cut inside the frame header, and zeros or garbage after the last frame, are torn tails", async () => {
    for (const tail of [Buffer.from([0, 0, 0]), Buffer.alloc(4096), Buffer.from("garbage after the end")]) {
      const dir = tempDir();
      await writeLog(dir, 4);
      const before = fs.statSync(seg(dir)).size;
      fs.appendFileSync(seg(dir), tail);
      const { warnings, onWarn } = collect();
      const log = await openLog(dir, { onWarn });
      expect(warnings[0]?.facts).toMatchObject({ offset: before, bytes: tail.length });
      expect(fs.statSync(seg(dir)).size).toBe(before);
      expect(await log.append({})).toBe(4);
      await log.close();
      expect(await verifyLog(dir)).toMatchObject({ ok: true, records: 5 });
    }
  });

  test("a bad CRC in the last frame is a torn tail", async () => {
    const dir = tempDir();
    await writeLog(dir, 5);
    const file = seg(dir);
    const last = frameOffsets(file)[4]!;
    const b = fs.readFileSync(file);
    b[last.offset + 8 + 5]! ^= 0xff;
    fs.writeFileSync(file, b);
    const { warnings, onWarn } = collect();
    const log = await openLog(dir, { onWarn });
    expect(warnings[0]?.facts).toMatchObject({ offset: last.offset });
    expect(log.size).toBe(4);
    await log.close();
  });

  test("a segment torn before its header was complete is rewritten", async () => {
    const dir = tempDir();
    await writeLog(dir, 3);
    fs.writeFileSync(seg(dir, 3), encodeFileHeader().subarray(0, 5));
    const { warnings, onWarn } = collect();
    const log = await openLog(dir, { onWarn });
    expect(warnings).toHaveLength(1);
    expect(await log.append({})).toBe(3);
    await log.close();
    expect(await verifyLog(dir)).toMatchObject({ ok: true, records: 4, segments: 2 });
  });

  test("corruption in the middle of the last segment: openLog refuses with AUDIT_CORRUPT and changes nothing", async () => {
    const dir = tempDir();
    await writeLog(dir, 10);
    const file = seg(dir);
    const f = frameOffsets(file)[3]!;
    const b = fs.readFileSync(file);
    b[f.offset + 8 + 7]! ^= 0x40;
    fs.writeFileSync(file, b);
    let err: unknown;
    try {
      await openLog(dir);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(AgateError);
    expect((err as AgateError).code).toBe("AUDIT_CORRUPT");
    expect((err as AgateError).details).toMatchObject({ segment: segmentName(0), offset: f.offset });
    expect(fs.readFileSync(file).equals(b)).toBe(true);
  });

  test("a corrupted length in the middle is not mistaken for a torn tail", async () => {
    const dir = tempDir();
    await writeLog(dir, 10);
    const file = seg(dir);
    const f = frameOffsets(file)[2]!;
    const b = fs.readFileSync(file);
    b.writeUInt32BE(0xffffffff, f.offset);
    fs.writeFileSync(file, b);
    expect(await codeOf(openLog(dir))).toBe("AUDIT_CORRUPT");
    expect(await verifyLog(dir)).toMatchObject({ ok: false, error: { code: "AUDIT_BAD_CRC", index: 2, offset: f.offset } });
  });
});

describe("fail closed", () => {
  test("a failed write rejects that append and every later one", async () => {
    const dir = tempDir();
    let broken = false;
    const enospc = () => Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC" });
    const { warnings, onWarn } = collect();
    let log: AuditLog | undefined = await openLog(dir, {
      onWarn,
      __faultFs: {
        write: async (fh, data, position) => {
          if (broken) throw enospc();
          await fh.write(data, 0, data.length, position);
        },
      },
    });
    expect(await log.append({ k: 0 })).toBe(0);
    broken = true;
    const inFlight = [log.append({ k: 1 }), log.append({ k: 2 })];
    for (const p of inFlight) expect(await codeOf(p)).toBe("AUDIT_WRITE_FAILED");
    expect(await codeOf(log.append({ k: 3 }))).toBe("AUDIT_WRITE_FAILED");
    broken = false; // even once the disk recovers, the log stays closed
    expect(await codeOf(log.append({ k: 4 }))).toBe("AUDIT_WRITE_FAILED");
    expect(() => log!.appendLater({ k: 5 })).toThrow(AgateError);
    expect(await codeOf(log.flush())).toBe("AUDIT_WRITE_FAILED");
    expect(warnings[0]).toMatchObject({ msg: "audit log write failed", facts: { errno: "ENOSPC" } });
    expect(await codeOf(log.close())).toBe("AUDIT_WRITE_FAILED");
    log = undefined;

    // A restart reads what made it to disk.
    expect(await verifyLog(dir)).toMatchObject({ ok: true, records: 1 });
  });

  test("a failed fdatasync fails closed too, including records appended with appendLater", async () => {
    const dir = tempDir();
    let broken = false;
    const log = await openLog(dir, {
      onWarn: () => {},
      __faultFs: {
        datasync: async (fh) => {
          if (broken) throw Object.assign(new Error("EIO: i/o error, fdatasync"), { code: "EIO" });
          await fh.datasync();
        },
      },
    });
    await log.append({ k: 0 });
    broken = true;
    log.appendLater({ k: 1 });
    expect(await codeOf(log.flush())).toBe("AUDIT_WRITE_FAILED");
    expect(await codeOf(log.append({ k: 2 }))).toBe("AUDIT_WRITE_FAILED");
    expect(await codeOf(log.close())).toBe("AUDIT_WRITE_FAILED");
  });
});
