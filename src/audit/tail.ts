/**
 * `agate recover`: inspect the records a log holds past what its writer
 * can account for (marker.ts), and deliberately accept or cut them. Run it
 * with the gateway stopped; it never signs anything itself: an accepted
 * tail is signed by the next checkpoint the gateway makes.
 */
import { open } from "node:fs/promises";
import { join } from "node:path";
import { AgateError } from "../core/errors.ts";
import { latestCheckpointSize } from "./checkpoints.ts";
import { FRAME_HEADER_BYTES } from "./format.ts";
import { readMarker, recordBound, writeMarker, type Marker } from "./marker.ts";
import { listSegments, scanSegment, type SegmentFile } from "./segments.ts";

export interface TailRecord {
  index: number;
  segment: string;
  offset: number;
  bytes: number;
  t: unknown;
  type: unknown;
}

export interface TailReport {
  /** Valid records in the segments (a torn end is not counted). */
  size: number;
  marker: Marker | null;
  /** Size signed by the latest checkpoint, null if none. */
  checkpoint: number | null;
  /** What the writer can account for (null: nothing bounds this log). */
  bound: number | null;
  /** The records past `bound`. */
  unsigned: TailRecord[];
}

/** Read-only look at the log's end. */
export async function inspectTail(dir: string): Promise<TailReport> {
  const segments = await listSegments(dir);
  if (segments.length === 0) throw new AgateError("AUDIT_NO_LOG", `There is no audit log (no seg-*.agl file) in ${dir}.`, { dir });
  let marker: Marker | null;
  try {
    marker = readMarker(dir);
  } catch (e) {
    // A damaged marker bounds nothing; --accept or --cut writes a new one.
    if ((e as AgateError).code !== "AUDIT_CORRUPT") throw e;
    marker = null;
  }
  const checkpoint = await latestCheckpointSize(dir);
  const bound = recordBound(marker, checkpoint);
  const unsigned: TailRecord[] = [];
  let size = 0;
  for (const seg of segments) size = seg.first + (await collect(seg, bound ?? Infinity, unsigned));
  return { size, marker, checkpoint, bound, unsigned };
}

/** Count the valid records of `seg`, collecting those at or past `from`. */
async function collect(seg: SegmentFile, from: number, out: TailRecord[]): Promise<number> {
  let n = 0;
  for await (const chunk of scanSegment(seg.path)) {
    for (const { offset, payload } of chunk.frames) {
      const index = seg.first + n++;
      if (index < from) continue;
      let rec: Record<string, unknown> = {};
      try {
        rec = JSON.parse(payload.toString("utf8"));
      } catch {}
      out.push({ index, segment: seg.name, offset, bytes: FRAME_HEADER_BYTES + payload.length, t: rec.t, type: rec.type });
    }
  }
  return n;
}

/** Accept the tail: the writer marker now vouches for every record; the gateway's next checkpoint signs them. */
export async function acceptTail(dir: string): Promise<TailReport> {
  const r = await inspectTail(dir);
  writeMarker(dir, { state: "open", size: r.size });
  return r;
}

/** Cut the tail: truncate the log back to what the writer can account for (only within its last segment). */
export async function cutTail(dir: string): Promise<TailReport> {
  const r = await inspectTail(dir);
  const first = r.unsigned[0];
  if (r.bound === null) throw new AgateError("AUDIT_NO_BOUND", `Nothing bounds the log in ${dir} (no writer marker, no checkpoint): there is no tail to cut.`, { dir });
  if (first) {
    const segments = await listSegments(dir);
    if (first.segment !== segments.at(-1)!.name) {
      throw new AgateError("AUDIT_TAIL_SPANS_SEGMENTS", `The unsigned records start in ${first.segment}, before the last segment; cut them by hand (keep a copy), or accept them.`, {
        segment: first.segment,
      });
    }
    const fh = await open(join(dir, first.segment), "r+");
    try {
      await fh.truncate(first.offset);
      await fh.sync();
    } finally {
      await fh.close();
    }
  }
  writeMarker(dir, { state: "open", size: Math.min(r.bound, r.size) });
  return r;
}
