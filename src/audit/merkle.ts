/**
 * The log's Merkle tree, as RFC 6962 §2.1 / RFC 9162 §2.1 define it:
 * SHA-256, leaf hash H(0x00 || record), interior node H(0x01 || left || right),
 * and a tree of n leaves split at the largest power of two below n.
 *
 * Two pieces:
 * - `Frontier`: the roots of the perfect subtrees that make up a tree of
 *   size n (one per set bit of n, largest first). Appending a leaf is
 *   O(log n) and yields the interior nodes it completes; the root is a fold
 *   over at most log2(n) hashes. The writer and the verifier each keep one.
 * - Stored-hash order (as in Go's golang.org/x/mod/sumdb/tlog): every leaf
 *   hash and every completed interior node, in the order they complete, so
 *   node (level L, index k) sits at a computable position. The writer
 *   appends them to a hash file; any subtree hash, and so any proof, is then
 *   a handful of positioned reads instead of a rehash of history.
 *
 * Proofs (RFC 9162 §2.1.3, §2.1.4) are computed over a `HashReader` and
 * verified with the same section's algorithms.
 */

export const HASH_BYTES = 32;

/** H(0x00 || data): the hash of a leaf. */
export function leafHash(data: Uint8Array): Uint8Array {
  const b = new Uint8Array(1 + data.length);
  b.set(data, 1);
  return Bun.SHA256.hash(b) as Uint8Array;
}

const nodeBuf = new Uint8Array(1 + 2 * HASH_BYTES);
nodeBuf[0] = 0x01;

/** H(0x01 || left || right): the hash of an interior node. */
export function nodeHash(left: Uint8Array, right: Uint8Array): Uint8Array {
  nodeBuf.set(left, 1);
  nodeBuf.set(right, 1 + HASH_BYTES);
  return Bun.SHA256.hash(nodeBuf) as Uint8Array;
}

/** The root of the empty tree: SHA-256 of nothing. */
export const EMPTY_ROOT: Uint8Array = Bun.SHA256.hash(new Uint8Array(0)) as Uint8Array;

/** The largest power of two strictly below n (n >= 2). */
function split(n: number): number {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

/** Number of trailing one bits of n (n a safe integer). */
function trailingOnes(n: number): number {
  let c = 0;
  while (n % 2 === 1) {
    c++;
    n = (n - 1) / 2;
  }
  return c;
}

/** The right edge of a growing tree: its perfect subtree roots, largest first. */
export class Frontier {
  #size: number;
  #roots: Uint8Array[];

  constructor(size = 0, roots: Uint8Array[] = []) {
    if (roots.length !== popcount(size)) throw new Error(`a tree of ${size} leaves has ${popcount(size)} perfect subtrees, got ${roots.length}`);
    this.#size = size;
    this.#roots = roots;
  }

  get size(): number {
    return this.#size;
  }

  /**
   * Add a leaf by its hash. Returns the hashes this completes in stored
   * order: the leaf hash, then each interior node it closes, lowest first.
   */
  push(leaf: Uint8Array): Uint8Array[] {
    const stored = [leaf];
    let h = leaf;
    for (let k = trailingOnes(this.#size); k > 0; k--) {
      h = nodeHash(this.#roots.pop()!, h);
      stored.push(h);
    }
    this.#roots.push(h);
    this.#size++;
    return stored;
  }

  /** The tree head: MTH of all leaves so far. */
  root(): Uint8Array {
    const r = this.#roots;
    if (r.length === 0) return EMPTY_ROOT;
    let h = r[r.length - 1]!;
    for (let k = r.length - 2; k >= 0; k--) h = nodeHash(r[k]!, h);
    return h;
  }

  /** A copy that can grow independently. */
  clone(): Frontier {
    return new Frontier(this.#size, [...this.#roots]);
  }
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}

function popcount(n: number): number {
  let c = 0;
  for (; n > 0; n = Math.floor(n / 2)) c += n % 2;
  return c;
}

// ---- stored-hash order -------------------------------------------------

/**
 * Number of hashes stored for a tree of n leaves: n leaf hashes plus one
 * per completed interior node, sum over levels L >= 1 of floor(n / 2^L),
 * which is n - popcount(n).
 */
export function storedCount(n: number): number {
  return 2 * n - popcount(n);
}

/**
 * Position, in stored order, of the node at `level` (0 = leaves) and index
 * `n` within that level. The last leaf of its subtree, m, is stored after
 * the hashes of leaves 0..m-1; pushing m then completes the nodes of levels
 * 1, 2, … in turn, so this node comes `level` places after m's hash.
 */
export function storedIndex(level: number, n: number): number {
  const m = (n + 1) * 2 ** level - 1;
  return storedCount(m) + level;
}

/** The largest tree size whose stored hashes fit in `count` hashes. */
export function sizeForStoredCount(count: number): number {
  // storedCount is increasing; n is about count / 2.
  let lo = 0;
  let hi = Math.ceil(count / 2) + 64;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (storedCount(mid) <= count) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/** Reads stored hashes by position (see storedIndex). */
export interface HashReader {
  read(positions: number[]): Uint8Array[];
}

/** The frontier of a tree of `size` leaves, from stored hashes: O(log n) reads. */
export function frontierAt(size: number, r: HashReader): Frontier {
  const positions: number[] = [];
  let start = 0;
  for (let level = 52; level >= 0; level--) {
    const width = 2 ** level;
    if (size - start >= width) {
      positions.push(storedIndex(level, start / width));
      start += width;
    }
  }
  return new Frontier(size, positions.length ? r.read(positions) : []);
}

/** MTH(D[lo:hi]) for hi <= the stored size, from stored hashes. */
export function subtreeHash(lo: number, hi: number, r: HashReader): Uint8Array {
  const n = hi - lo;
  if (n <= 0) return EMPTY_ROOT;
  // A perfect, aligned subtree is stored as one node.
  if (isPowerOfTwo(n) && lo % n === 0) return r.read([storedIndex(Math.round(Math.log2(n)), lo / n)])[0]!;
  const k = split(n);
  return nodeHash(subtreeHash(lo, lo + k, r), subtreeHash(lo + k, hi, r));
}

/** RFC 9162 §2.1.3.1: the inclusion proof of leaf `index` in the tree of `size` leaves, leaf level first. */
export function inclusionProof(index: number, size: number, r: HashReader): Uint8Array[] {
  if (!(index >= 0 && index < size)) throw new RangeError(`leaf ${index} is not in a tree of ${size} leaves`);
  const proof: Uint8Array[] = [];
  const path = (m: number, lo: number, hi: number): void => {
    if (hi - lo === 1) return;
    const k = split(hi - lo);
    if (m < k) {
      path(m, lo, lo + k);
      proof.push(subtreeHash(lo + k, hi, r));
    } else {
      path(m - k, lo + k, hi);
      proof.push(subtreeHash(lo, lo + k, r));
    }
  };
  path(index, 0, size);
  return proof;
}

/** RFC 9162 §2.1.4.1: the consistency proof from the tree of `from` leaves to the tree of `to` leaves. */
export function consistencyProof(from: number, to: number, r: HashReader): Uint8Array[] {
  if (!(from >= 0 && from <= to)) throw new RangeError(`cannot prove size ${from} consistent with size ${to}`);
  const proof: Uint8Array[] = [];
  if (from === 0 || from === to) return proof;
  const sub = (m: number, lo: number, hi: number, whole: boolean): void => {
    if (m === hi - lo) {
      if (!whole) proof.push(subtreeHash(lo, hi, r));
      return;
    }
    const k = split(hi - lo);
    if (m <= k) {
      sub(m, lo, lo + k, whole);
      proof.push(subtreeHash(lo + k, hi, r));
    } else {
      sub(m - k, lo + k, hi, false);
      proof.push(subtreeHash(lo, lo + k, r));
    }
  };
  sub(from, 0, to, true);
  return proof;
}

/** Whether two hashes are the same bytes. */
export function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let k = 0; k < a.length; k++) if (a[k] !== b[k]) return false;
  return true;
}

/** RFC 9162 §2.1.3.2. Returns why the proof fails, or null if it proves `leaf` at `index` under `root`. */
export function checkInclusion(index: number, size: number, leaf: Uint8Array, proof: Uint8Array[], root: Uint8Array): string | null {
  if (!(index >= 0 && index < size)) return `index ${index} is not below tree size ${size}`;
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const p of proof) {
    if (sn === 0) return "the proof is longer than the tree is deep";
    if (fn % 2 === 1 || fn === sn) {
      r = nodeHash(p, r);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) {
          fn /= 2;
          sn = Math.floor(sn / 2);
        }
      }
    } else {
      r = nodeHash(r, p);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  if (sn !== 0) return "the proof is shorter than the tree is deep";
  return equal(r, root) ? null : "the proof leads to a different root";
}

/** RFC 9162 §2.1.4.2. Returns why the proof fails, or null if root2's tree extends root1's. */
export function checkConsistency(size1: number, size2: number, root1: Uint8Array, root2: Uint8Array, proof: Uint8Array[]): string | null {
  if (!(size1 >= 0 && size1 <= size2)) return `size ${size1} is not at most size ${size2}`;
  if (size1 === size2) return proof.length === 0 ? (equal(root1, root2) ? null : "same size, different roots") : "a proof between equal sizes must be empty";
  if (size1 === 0) return proof.length === 0 ? null : "a proof from the empty tree must be empty";
  if (proof.length === 0) return "the proof is empty";
  let path = proof;
  // If size1 is a power of two, its root is the first node of the path.
  if (isPowerOfTwo(size1)) path = [root1, ...proof];
  let fn = size1 - 1;
  let sn = size2 - 1;
  while (fn % 2 === 1) {
    fn = (fn - 1) / 2;
    sn = Math.floor(sn / 2);
  }
  let fr = path[0]!;
  let sr = path[0]!;
  for (const c of path.slice(1)) {
    if (sn === 0) return "the proof is longer than expected";
    if (fn % 2 === 1 || fn === sn) {
      fr = nodeHash(c, fr);
      sr = nodeHash(c, sr);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) {
          fn /= 2;
          sn = Math.floor(sn / 2);
        }
      }
    } else {
      sr = nodeHash(sr, c);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  if (sn !== 0) return "the proof is shorter than expected";
  if (!equal(fr, root1)) return `the proof does not lead to the root of size ${size1}`;
  if (!equal(sr, root2)) return `the proof does not lead to the root of size ${size2}`;
  return null;
}
