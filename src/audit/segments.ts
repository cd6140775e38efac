/**
 * Reading segment files: list them in order, and stream a segment's frames
 * in chunks, checking the header, each length and each CRC. Shared by the
 * writer's start-up recovery and by the verifier; never writes.
 */
import { open, readdir, stat } from "node:fs/promises";
import { join } from "node:path";
import { AgateError } from "../core/errors.ts";
import { crc32c } from "./crc32c.ts";
import { FILE_HEADER_BYTES, FRAME_HEADER_BYTES, MAX_PAYLOAD_BYTES, checkFileHeader, parseSegmentName } from "./format.ts";

export interface SegmentFile {
  name: string;
  path: string;
  /** Index of its first record, from the name. */
  first: number;
}

/** Segment files of `dir`, in record order. Other files are ignored. */
export async function listSegments(dir: string): Promise<SegmentFile[]> {
  const out: SegmentFile[] = [];
  for (const name of await readdir(dir)) {
    const first = parseSegmentName(name);
    if (first === null) continue;
    if (!Number.isSafeInteger(first)) {
      throw new AgateError("AUDIT_BAD_INDEX", `Segment ${name} names a first index past 2^53; it was not written by agate.`, { segment: name });
    }
    out.push({ name, path: join(dir, name), first });
  }
  return out.sort((a, b) => a.first - b.first);
}

/** A frame whose length and CRC check out. `payload` is a view, valid until the scan continues. */
export interface Frame {
  offset: number;
  payload: Buffer;
}

/**
 * Where a segment stops being readable:
 * - "header": the file header is missing, short or not AGL1 of this format version;
 * - "length": a frame length is 0 or over MAX_PAYLOAD_BYTES;
 * - "crc": a frame's payload does not match its CRC-32C;
 * - "short": the file ends inside a frame (a cut or torn write).
 */
export interface Damage {
  kind: "header" | "length" | "crc" | "short";
  offset: number;
  message: string;
}

export interface FrameChunk {
  frames: Frame[];
  /** File offset just past the last good frame so far. */
  end: number;
  /** File size when the scan began. */
  size: number;
  /** Set on the last chunk if the segment does not end cleanly. */
  damage?: Damage;
}

const CHUNK_BYTES = 1 << 20;

/**
 * Stream the frames of one segment, a chunk at a time (about 1 MiB, more
 * only for a frame that is larger). Stops at the first damage, which the
 * last chunk carries. Frame payloads are views into a buffer the next
 * iteration reuses: use them before asking for more.
 */
export async function* scanSegment(path: string): AsyncGenerator<FrameChunk> {
  const fh = await open(path, "r");
  try {
    const size = (await fh.stat()).size;
    const header = Buffer.alloc(FILE_HEADER_BYTES);
    const { bytesRead } = await fh.read(header, 0, FILE_HEADER_BYTES, 0);
    const why = checkFileHeader(header.subarray(0, bytesRead));
    if (why) {
      yield { frames: [], end: 0, size, damage: { kind: "header", offset: 0, message: `bad segment header: ${why}` } };
      return;
    }
    let buf = Buffer.allocUnsafe(CHUNK_BYTES);
    let bufStart = FILE_HEADER_BYTES; // file offset of buf[0]
    let bufLen = 0;
    let eof = size <= FILE_HEADER_BYTES;
    for (;;) {
      if (!eof) {
        const { bytesRead: n } = await fh.read(buf, bufLen, buf.length - bufLen, bufStart + bufLen);
        bufLen += n;
        if (n === 0 || bufStart + bufLen >= size) eof = true;
      }
      const frames: Frame[] = [];
      let p = 0;
      let damage: Damage | undefined;
      let need = 0; // bytes a frame at p needs, when it does not fit
      while (bufLen - p >= FRAME_HEADER_BYTES) {
        const length = buf.readUInt32BE(p);
        const at = bufStart + p;
        if (length === 0 || length > MAX_PAYLOAD_BYTES) {
          damage = { kind: "length", offset: at, message: `frame length ${length} is outside 1..${MAX_PAYLOAD_BYTES}` };
          break;
        }
        if (bufLen - p < FRAME_HEADER_BYTES + length) {
          need = FRAME_HEADER_BYTES + length;
          break;
        }
        const payload = buf.subarray(p + FRAME_HEADER_BYTES, p + FRAME_HEADER_BYTES + length);
        if (crc32c(payload) !== buf.readUInt32BE(p + 4)) {
          damage = { kind: "crc", offset: at, message: `frame CRC-32C 0x${buf.readUInt32BE(p + 4).toString(16)} does not match its payload (0x${crc32c(payload).toString(16)})` };
          break;
        }
        frames.push({ offset: at, payload });
        p += FRAME_HEADER_BYTES + length;
      }
      if (!damage && eof && p < bufLen) {
        damage = { kind: "short", offset: bufStart + p, message: `segment ends ${bufLen - p} bytes into a frame${need ? ` of ${need} bytes` : ""}` };
      }
      yield { frames, end: bufStart + p, size, ...(damage ? { damage } : {}) };
      if (damage || (eof && p === bufLen)) return;
      // Keep the partial frame; grow the buffer if one frame is larger than it.
      const rest = bufLen - p;
      if (need > buf.length) {
        const bigger = Buffer.allocUnsafe(need);
        buf.copy(bigger, 0, p, bufLen);
        buf = bigger;
      } else {
        buf.copyWithin(0, p, bufLen);
      }
      bufStart += p;
      bufLen = rest;
    }
  } finally {
    await fh.close();
  }
}

/**
 * Offset of the first position in [from, size) of `path` where a frame with
 * a valid length and CRC starts, or -1. Used after damage to tell a torn
 * tail (nothing valid follows) from corruption in the middle.
 */
export async function findFrameAfter(path: string, from: number, size: number): Promise<number> {
  const fh = await open(path, "r");
  try {
    const buf = Buffer.allocUnsafe(CHUNK_BYTES + FRAME_HEADER_BYTES);
    for (let start = from; start + FRAME_HEADER_BYTES <= size; start += CHUNK_BYTES) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, start);
      for (let p = 0; p + FRAME_HEADER_BYTES <= bytesRead && p < CHUNK_BYTES; p++) {
        const length = buf.readUInt32BE(p);
        if (length === 0 || length > MAX_PAYLOAD_BYTES || start + p + FRAME_HEADER_BYTES + length > size) continue;
        const payload = Buffer.allocUnsafe(length);
        await fh.read(payload, 0, length, start + p + FRAME_HEADER_BYTES);
        if (payload[0] === 0x7b /* { */ && crc32c(payload) === buf.readUInt32BE(p + 4)) return start + p;
      }
    }
    return -1;
  } finally {
    await fh.close();
  }
}

/** Total bytes of the given segments. */
export async function totalBytes(segments: SegmentFile[]): Promise<number> {
  let sum = 0;
  for (const s of segments) sum += (await stat(s.path)).size;
  return sum;
}
