/**
 * The hash file: every stored hash of the log's Merkle tree (merkle.ts,
 * stored order), 32 bytes each, in `tree.hashes` beside the segments.
 *
 * It is derived data: kept in memory and written out a few MiB at a time
 * (and at close), never fsynced, and never trusted by `agate verify`, which recomputes the tree from the
 * records. It exists so that start-up does not rehash history and a proof
 * costs a few positioned reads. At start-up it is reconciled with the
 * segments: cut back if it runs ahead of the log (a torn tail was
 * truncated), extended from the records if it lags (a crash between the
 * two writes), and rebuilt from all records if it disagrees with them: the
 * last segment's leaves here, the latest checkpoint's root in
 * checkpoints.ts (a warning, never a refusal, since the cache is not
 * evidence).
 */
import * as fs from "node:fs";
import { join } from "node:path";
import { AgateError } from "../core/errors.ts";
import { HASH_BYTES, Frontier, equal, frontierAt, leafHash, sizeForStoredCount, storedCount, storedIndex, type HashReader } from "./merkle.ts";
import { scanSegment, type SegmentFile } from "./segments.ts";
import type { Warn } from "./recover.ts";

export const TREE_FILE = "tree.hashes";

/**
 * Hashes held in memory before they are written out. Writing the file with
 * every batch would cost more than the hashes: on ext4 (data=ordered) each
 * fdatasync of a segment also flushes the other file's freshly appended
 * blocks. 65,536 hashes (2 MiB) is about 32,000 records.
 */
const MEMORY_HASHES = 65_536;

export class TreeFile implements HashReader {
  readonly #fd: number;
  #count: number; // hashes in the file
  #mem: Uint8Array[] = []; // the hashes after them, not yet written
  /** The tree as appended so far; the writer pushes to it before the file catches up. */
  frontier: Frontier;

  private constructor(fd: number, count: number, frontier: Frontier) {
    this.#fd = fd;
    this.#count = count;
    this.frontier = frontier;
  }

  /**
   * Open the hash file of a log of `size` records whose last segment is
   * `last` with leaf hashes `lastLeaves` (from start-up recovery), making it
   * agree with the segments.
   */
  static async open(dir: string, segments: SegmentFile[], size: number, last: { first: number; leaves: Uint8Array[] }, warn: Warn): Promise<TreeFile> {
    const path = join(dir, TREE_FILE);
    const fd = fs.openSync(path, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    try {
      let n = Math.min(sizeForStoredCount(Math.floor(fs.fstatSync(fd).size / HASH_BYTES)), size);
      const tree = new TreeFile(fd, storedCount(n), new Frontier());
      // The records of the last segment were just read: their leaves must match.
      for (let i = last.first; i < n; i++) {
        if (!equal(tree.read([storedIndex(0, i)])[0]!, last.leaves[i - last.first]!)) {
          warn("audit hash file disagrees with the records; rebuilding it", { index: i });
          n = 0;
          break;
        }
      }
      fs.ftruncateSync(fd, storedCount(n) * HASH_BYTES);
      const t = new TreeFile(fd, storedCount(n), frontierAt(n, tree));
      if (n < size) {
        if (size - n > last.leaves.length) warn("audit hash file is behind the log; hashing the missing records", { from: n, to: size });
        await t.#extend(segments, n, size, last);
      }
      return t;
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  /**
   * Throw the hash file away and hash all `size` records again from the
   * segments (before any append: the cache disagreed with a signed root).
   */
  async rebuild(segments: SegmentFile[], size: number, last: { first: number; leaves: Uint8Array[] }): Promise<void> {
    fs.ftruncateSync(this.#fd, 0);
    this.#count = 0;
    this.#mem = [];
    this.frontier = new Frontier();
    await this.#extend(segments, 0, size, last);
  }

  /** Hash records [from, to) into the tree and the file: earlier segments are read, the last one's leaves are known. */
  async #extend(segments: SegmentFile[], from: number, to: number, last: { first: number; leaves: Uint8Array[] }): Promise<void> {
    if (from < segments[0]!.first) {
      throw new AgateError(
        "AUDIT_CORRUPT",
        `The tree hash file covers ${from} records, but the local segments start at record ${segments[0]!.first} (shipped and pruned?), so the tree cannot be rebuilt here. Restore the missing segments from object storage, then start again.`,
        { from, first: segments[0]!.first },
      );
    }
    let i = from;
    for (const [k, seg] of segments.entries()) {
      if (i >= to) return;
      if (seg.first >= last.first) {
        for (; i < to; i++) this.write(this.frontier.push(last.leaves[i - last.first]!));
        return;
      }
      if ((segments[k + 1]?.first ?? Infinity) <= i) continue;
      let index = seg.first;
      for await (const chunk of scanSegment(seg.path)) {
        for (const { payload } of chunk.frames) {
          if (index++ === i && i < to) {
            this.write(this.frontier.push(leafHash(payload)));
            i++;
          }
        }
        if (chunk.damage) throw new Error(`${seg.name}: ${chunk.damage.message}`);
      }
    }
  }

  /** Hashes stored (in the file or in memory). */
  get count(): number {
    return this.#count + this.#mem.length;
  }

  /** Tree size the stored hashes fully cover. */
  get size(): number {
    return sizeForStoredCount(this.count);
  }

  /** Append stored hashes, in order. Written out once enough have gathered. */
  write(hashes: Uint8Array[]): void {
    for (const h of hashes) this.#mem.push(h);
    if (this.#mem.length >= MEMORY_HASHES) this.flush();
  }

  /** Write the hashes held in memory to the file (a page-cache write). */
  flush(): void {
    if (this.#mem.length === 0) return;
    const data = Buffer.concat(this.#mem);
    const at = this.#count * HASH_BYTES;
    for (let done = 0; done < data.length; ) {
      const n = fs.writeSync(this.#fd, data, done, data.length - done, at + done);
      if (n <= 0) throw new Error(`write returned ${n}`);
      done += n;
    }
    this.#count += this.#mem.length;
    this.#mem = [];
  }

  read(positions: number[]): Uint8Array[] {
    return positions.map((p) => {
      if (p >= this.#count) {
        const h = this.#mem[p - this.#count];
        if (!h) throw new RangeError(`stored hash ${p} is not written yet (${this.count} are)`);
        return new Uint8Array(h); // a copy: the caller may keep or change it, the tree must not change
      }
      const b = readStoredHash(this.#fd, p);
      if (!b) throw new Error(`short read of stored hash ${p}`);
      return b;
    });
  }

  /** Write out what is in memory and close. */
  close(): void {
    try {
      this.flush();
    } finally {
      fs.closeSync(this.#fd);
    }
  }
}

/** Stored hash `p` of the hash file open as `fd`, or null if the file is shorter than that. */
export function readStoredHash(fd: number, p: number): Uint8Array | null {
  const b = new Uint8Array(HASH_BYTES);
  return fs.readSync(fd, b, 0, HASH_BYTES, p * HASH_BYTES) === HASH_BYTES ? b : null;
}
