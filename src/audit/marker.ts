/**
 * The writer's marker, `writer.state`: how many records the writer has
 * made, so that start-up can tell them from records added while it was
 * stopped (a forged tail).
 *
 * The file is 32 bytes, `AGW1 ` || state || ` ` || size as 20 decimal
 * digits || `\n`, where state is `open ` while a writer has the log open and
 * `clean` after it closed cleanly (everything durable, the final checkpoint
 * signed). While open, the size is a durable reservation: the writer makes
 * sure, before it writes a batch, that an fdatasynced marker covers the
 * batch's records, reserving RESERVE_RECORDS ahead so that it rarely has to
 * wait; at a clean close it writes `clean` with the exact size.
 *
 * At start-up, records past the marker's size are refused with
 * AUDIT_UNSIGNED_TAIL: after a clean close the log must end exactly where
 * the writer left it; after a crash (kill -9 or power loss) it may end short
 * of the reservation (a torn or unsynced tail, truncated) but not past it.
 * So a forger has no room after a clean shutdown, and at most
 * RESERVE_RECORDS records after a crash. (The marker is not signed: it
 * stops records added beside agate, not someone who also rewrites it; the
 * signed checkpoints and `agate verify` against kept ones are the defence
 * against that.) Without a marker (a log
 * from an older agate, or a deleted marker) the bound is the latest
 * checkpoint. `agate recover` inspects such a tail and accepts or cuts it.
 */
import * as fs from "node:fs";
import { join } from "node:path";
import { AgateError } from "../core/errors.ts";

export const MARKER_FILE = "writer.state";
const MARKER_BYTES = 32;

export interface Marker {
  state: "open" | "clean";
  size: number;
}

export function encodeMarker(m: Marker): Buffer {
  const b = Buffer.from(`AGW1 ${m.state === "open" ? "open " : "clean"} ${String(m.size).padStart(20, "0")}\n`, "latin1");
  if (b.length !== MARKER_BYTES) throw new Error("marker encoding is not 32 bytes");
  return b;
}

/** The marker of the log in `dir`: null if there is none; throws AUDIT_CORRUPT if it is not one. */
export function readMarker(dir: string): Marker | null {
  const path = join(dir, MARKER_FILE);
  if (!fs.existsSync(path)) return null;
  const text = fs.readFileSync(path, "latin1");
  const m = /^AGW1 (open |clean) (\d{20})\n$/.exec(text);
  if (!m) {
    throw new AgateError("AUDIT_CORRUPT", `${path} is not a writer marker (expected 32 bytes "AGW1 open|clean <20 digits>"). Run \`agate recover --log ${dir}\` to inspect the log's tail and write a new one.`, {
      file: MARKER_FILE,
    });
  }
  return { state: m[1] === "clean" ? "clean" : "open", size: Number(m[2]) };
}

/** Write the marker and make it durable (used at start-up and by `agate recover`). */
export function writeMarker(dir: string, m: Marker): void {
  const fd = fs.openSync(join(dir, MARKER_FILE), fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
  try {
    fs.writeSync(fd, encodeMarker(m), 0, MARKER_BYTES, 0);
    fs.ftruncateSync(fd, MARKER_BYTES);
    fs.fdatasyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * How many records of a log may exist: the marker's size, or without a
 * marker the latest checkpoint's (null if nothing bounds the log: no marker
 * and no signer, a log that was never signed).
 */
export function recordBound(marker: Marker | null, checkpointSize: number | null): number | null {
  if (marker) return marker.size;
  return checkpointSize;
}

/** Refuse a log of `size` records that runs past what its writer can account for. */
export function checkTail(dir: string, marker: Marker | null, checkpointSize: number | null, size: number): void {
  const bound = recordBound(marker, checkpointSize);
  if (bound === null || size <= bound) return;
  const since = !marker
    ? `there is no writer marker (${MARKER_FILE}) and the latest checkpoint signs ${bound}`
    : marker.state === "clean"
      ? `the writer closed cleanly at ${bound} records`
      : `the writer had reserved at most ${bound} records when it stopped (a crash)`;
  throw new AgateError(
    "AUDIT_UNSIGNED_TAIL",
    `Refusing to open the audit log in ${dir}: it holds ${size} records, but ${since}, so records ${bound} to ${size - 1} were added while agate was not running. Inspect them with \`agate recover --log ${dir}\`, then deliberately accept (--accept) or cut (--cut) them.`,
    { size, bound, marker: marker?.state ?? null },
  );
}

/**
 * Records a writer reserves ahead: after a crash, at most this many
 * records past the last one it wrote can pass for its own. Renewed when
 * half is used, with an fdatasync on the thread pool that no append waits
 * for (one per 512 records), so group commit pays nothing per batch.
 */
export const RESERVE_RECORDS = 1024;

/**
 * The writer's handle on the marker: a durable reservation `open N` that
 * is always at least the records written, renewed ahead of need, and
 * `clean <size>` at a clean close.
 */
export class MarkerFile {
  readonly #fd: number;
  readonly #ahead: number;
  #reserved: number; // durable reservation
  #renewing: Promise<void> | null = null;

  private constructor(fd: number, reserved: number, ahead: number) {
    this.#fd = fd;
    this.#reserved = reserved;
    this.#ahead = ahead;
  }

  /** Reserve `size + ahead` durably (the file is created if needed; the caller fsyncs the directory). */
  static open(dir: string, size: number, ahead = RESERVE_RECORDS): MarkerFile {
    writeMarker(dir, { state: "open", size: size + ahead });
    return new MarkerFile(fs.openSync(join(dir, MARKER_FILE), fs.constants.O_RDWR), size + ahead, ahead);
  }

  /**
   * The log is about to hold `upTo` records: make sure the durable
   * reservation covers them (synchronously only if the renewal ahead has
   * not made it in time), and renew ahead once half of it is used.
   */
  reserve(upTo: number): void {
    if (upTo > this.#reserved) {
      this.#put(upTo + this.#ahead);
      fs.fdatasyncSync(this.#fd);
      this.#reserved = upTo + this.#ahead;
      return;
    }
    if (this.#renewing || upTo <= this.#reserved - this.#ahead / 2) return;
    const next = upTo + this.#ahead;
    this.#put(next);
    this.#renewing = new Promise<void>((resolve) =>
      fs.fdatasync(this.#fd, (e) => {
        // A failed renewal leaves the old reservation; the next reserve past it syncs itself, and throws.
        if (!e) this.#reserved = Math.max(this.#reserved, next);
        this.#renewing = null;
        resolve();
      }),
    );
  }

  #put(size: number): void {
    fs.writeSync(this.#fd, encodeMarker({ state: "open", size }), 0, MARKER_BYTES, 0);
  }

  /** Mark a clean close at `size` records (durably), and close. */
  async closeClean(size: number): Promise<void> {
    await this.#renewing;
    try {
      fs.writeSync(this.#fd, encodeMarker({ state: "clean", size }), 0, MARKER_BYTES, 0);
      fs.fdatasyncSync(this.#fd);
    } finally {
      fs.closeSync(this.#fd);
    }
  }

  async close(): Promise<void> {
    await this.#renewing;
    fs.closeSync(this.#fd);
  }
}
