/**
 * Shipping: sealed segments and checkpoints go to S3-compatible object
 * storage, in log order, off the data path.
 *
 * Objects: `<prefix>/seg-<first index>.agl` (the segment file as is) and
 * `<prefix>/checkpoints/<tree size, 20 digits>` (the signed note). A
 * checkpoint is uploaded only after every segment it covers, so a bucket
 * never holds a checkpoint it cannot back up with records. Uploads create
 * only (If-None-Match: *): an object that already exists with the same
 * bytes counts as uploaded (a retry after a lost answer), one with other
 * bytes is an error that stops shipping; nothing is overwritten.
 *
 * The backlog is the local files themselves: what is shipped is recorded in
 * `ship.json` (the record count the shipped segments cover and the last
 * shipped checkpoint), written atomically after each confirmed upload. When
 * the bucket is unreachable the shipper retries with exponential backoff
 * (1 s doubling to 60 s) and the gateway keeps serving. Local segments are
 * deleted only when shipped and older than `keep_local_s` (if set).
 */
import * as fs from "node:fs";
import { readdir, rename, stat, unlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { S3Client } from "bun";
import type { ShipConfig } from "../config/index.ts";
import { AgateError } from "../core/errors.ts";
import { canonicalJson } from "./canonical.ts";
import { CHECKPOINT_FILE, readCheckpoints, type StoredCheckpoint } from "./checkpoints.ts";
import { encodeFileHeader, encodeFrame, parseSegmentName } from "./format.ts";
import { listSegments } from "./segments.ts";
import { syncDir, type AuditLog } from "./writer.ts";

export const SHIP_STATE_FILE = "ship.json";
const UPLOAD_TIMEOUT_MS = 120_000;
const BACKOFF_MIN_MS = 1000;
const BACKOFF_MAX_MS = 60_000;

export interface ShipStatus {
  /** Sealed segments not yet uploaded, and their bytes. */
  backlogSegments: number;
  backlogBytes: number;
  /** Checkpoints not yet uploaded. */
  backlogCheckpoints: number;
  /** Records covered by uploaded segments. */
  shippedRecords: number;
  uploads: number;
  errors: number;
  /** Unix ms of the last confirmed upload (0: none yet). */
  lastSuccessAt: number;
  /** The last failure's message while it persists (null once an upload succeeds). */
  lastError: string | null;
}

interface State {
  /** Records in the uploaded segments: the first index of the next segment to upload. */
  records: number;
  /** Sequence number of the last uploaded checkpoint (-1: none). */
  checkpoint: number;
}

export type ShipLog = (level: "info" | "warn" | "error", msg: string, facts: Record<string, unknown>) => void;

/** An S3 client for `cfg`, and the key of an object under its prefix. */
export function s3For(cfg: Pick<ShipConfig, "bucket" | "prefix" | "endpoint" | "region" | "access_key_id" | "secret_access_key">): { client: S3Client; key: (name: string) => string } {
  const client = new S3Client({
    bucket: cfg.bucket,
    region: cfg.region,
    ...(cfg.endpoint ? { endpoint: cfg.endpoint } : {}),
    ...(cfg.access_key_id ? { accessKeyId: cfg.access_key_id } : {}),
    ...(cfg.secret_access_key ? { secretAccessKey: cfg.secret_access_key } : {}),
  });
  return { client, key: (name) => (cfg.prefix ? `${cfg.prefix}/${name}` : name) };
}

/** What the shipper needs of the log: its size, sealing, and checkpoints at a size. */
export type ShippedLog = Pick<AuditLog, "size" | "seal"> & { checkpoint(size?: number): Promise<unknown> };

export const checkpointObject = (size: number) => `checkpoints/${String(size).padStart(20, "0")}`;

export class Shipper {
  readonly #dir: string;
  readonly #cfg: ShipConfig;
  readonly #log: ShipLog;
  readonly #audit: ShippedLog;
  readonly #s3: ReturnType<typeof s3For>;
  #state: State;
  #pending: StoredCheckpoint[] = [];
  #status: ShipStatus;
  #wake: (() => void) | null = null;
  #kicked = false; // notified while not sleeping: skip the next sleep
  #closed = false;
  readonly #stop = new AbortController(); // aborts an upload in flight at close
  #loop: Promise<void> | null = null;
  #sealTimer: ReturnType<typeof setInterval> | null = null;
  #sealedSize = 0;

  private constructor(dir: string, cfg: ShipConfig, audit: ShippedLog, log: ShipLog, state: State, pending: StoredCheckpoint[]) {
    this.#dir = dir;
    this.#cfg = cfg;
    this.#audit = audit;
    this.#log = log;
    this.#s3 = s3For(cfg);
    this.#state = state;
    this.#pending = pending;
    this.#status = { backlogSegments: 0, backlogBytes: 0, backlogCheckpoints: pending.length, shippedRecords: state.records, uploads: 0, errors: 0, lastSuccessAt: 0, lastError: null };
  }

  /** Read what was shipped before and what is left; call start() to begin. */
  static async open(dir: string, cfg: ShipConfig, audit: ShippedLog, log: ShipLog): Promise<Shipper> {
    let state: State = { records: 0, checkpoint: -1 };
    try {
      const s = JSON.parse(fs.readFileSync(join(dir, SHIP_STATE_FILE), "utf8"));
      if (Number.isSafeInteger(s.records) && Number.isSafeInteger(s.checkpoint)) state = { records: s.records, checkpoint: s.checkpoint };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw new AgateError("SHIP_STATE", `Cannot read ${join(dir, SHIP_STATE_FILE)}: ${(e as Error).message}`, {});
    }
    const pending: StoredCheckpoint[] = [];
    const path = join(dir, CHECKPOINT_FILE);
    if (fs.existsSync(path)) {
      for await (const c of readCheckpoints(path)) {
        if ("damage" in c) break;
        if (c.seq > state.checkpoint) pending.push(c);
      }
    }
    return new Shipper(dir, cfg, audit, log, state, pending);
  }

  /**
   * Begin shipping; every `sealAfterS` seconds seal the open segment if it
   * gained records (then checkpoint at the seal), so it ships.
   */
  start(sealAfterS: number): void {
    this.#sealTimer = setInterval(() => void this.sealNow(), sealAfterS * 1000);
    this.#sealTimer.unref?.();
    this.#loop = this.#run();
  }

  /** Seal the open segment if it gained records, and checkpoint exactly at the seal. */
  async sealNow(): Promise<void> {
    if (this.#audit.size <= this.#sealedSize) return;
    try {
      const boundary = await this.#audit.seal();
      this.#sealedSize = boundary;
      await this.#audit.checkpoint(boundary);
    } catch (e) {
      this.#log("warn", "audit segment seal failed", { error: (e as Error).message });
    }
    this.notify();
  }

  /** A checkpoint was made (the log's onCheckpoint). */
  addCheckpoint(c: StoredCheckpoint): void {
    this.#pending.push(c);
    this.#status.backlogCheckpoints = this.#pending.length;
    this.notify();
  }

  /** Something may be ready to upload (also cuts a retry backoff short). */
  notify(): void {
    if (this.#wake) this.#wake();
    else this.#kicked = true;
  }

  status(): ShipStatus {
    return { ...this.#status };
  }

  /**
   * Stop: wait up to `drainMs` for the backlog to drain (after a final seal
   * by the caller), then give up, leaving the rest for the next start.
   */
  async close(drainMs: number): Promise<void> {
    if (this.#sealTimer) clearInterval(this.#sealTimer);
    const deadline = Date.now() + drainMs;
    while (Date.now() < deadline && !this.#closed) {
      await this.#refresh();
      if (this.#status.backlogSegments === 0 && this.#status.backlogCheckpoints === 0) break;
      this.notify();
      await Bun.sleep(50);
    }
    this.#closed = true;
    this.#stop.abort(new AgateError("SHIP_STOPPED", "The gateway is shutting down; the rest of the backlog ships at the next start."));
    this.notify();
    await this.#loop;
  }

  async #run(): Promise<void> {
    let backoff = BACKOFF_MIN_MS;
    while (!this.#closed) {
      let didWork = false;
      try {
        didWork = await this.#step();
        if (didWork && this.#status.lastError) {
          this.#log("info", "audit shipping resumed", { after_errors: this.#status.errors });
          this.#status.lastError = null;
        }
        backoff = BACKOFF_MIN_MS;
      } catch (e) {
        const message = (e as Error).message;
        this.#status.errors++;
        if (this.#status.lastError === null) this.#log("warn", "audit shipping failed; keeping a local backlog and retrying", { error: message, backlog_segments: this.#status.backlogSegments, backlog_checkpoints: this.#status.backlogCheckpoints });
        this.#status.lastError = message;
        await this.#sleep(backoff);
        backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
        continue;
      }
      if (!didWork) await this.#sleep(5000);
    }
  }

  #sleep(ms: number): Promise<void> {
    if (this.#kicked || this.#closed) {
      this.#kicked = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      function done() {
        clearTimeout(t);
        resolve();
      }
      this.#wake = () => {
        this.#wake = null;
        done();
      };
    });
  }

  /** Sealed segments not yet shipped, in order. */
  async #refresh(): Promise<{ name: string; path: string; first: number; next: number }[]> {
    const segments = await listSegments(this.#dir);
    const out: { name: string; path: string; first: number; next: number }[] = [];
    let bytes = 0;
    for (let k = 0; k + 1 < segments.length; k++) {
      const s = segments[k]!;
      if (s.first < this.#state.records) continue;
      out.push({ ...s, next: segments[k + 1]!.first });
      bytes += (await stat(s.path)).size;
    }
    this.#status.backlogSegments = out.length;
    this.#status.backlogBytes = bytes;
    this.#status.backlogCheckpoints = this.#pending.length;
    return out;
  }

  /** Upload the next thing in order. Returns false when nothing is ready. */
  async #step(): Promise<boolean> {
    const segments = await this.#refresh();
    const c = this.#pending[0];
    if (c && c.size <= this.#state.records) {
      await this.#put(checkpointObject(c.size), Buffer.from(c.note, "utf8"), "text/plain; charset=utf-8");
      this.#pending.shift();
      await this.#save({ ...this.#state, checkpoint: c.seq });
      return true;
    }
    const s = segments[0];
    if (s) {
      if (s.first !== this.#state.records) {
        throw new AgateError("SHIP_GAP", `The next segment to ship starts at record ${s.first}, but ${this.#state.records} records were shipped: a local segment is missing.`, {});
      }
      await this.#put(s.name, await Bun.file(s.path).bytes(), "application/octet-stream");
      await this.#save({ ...this.#state, records: s.next });
      await this.#prune();
      return true;
    }
    return false;
  }

  /** Create `name` with `body`; an existing object with the same bytes counts as done. */
  async #put(name: string, body: Uint8Array, type: string): Promise<void> {
    const key = this.#s3.key(name);
    const url = this.#s3.client.presign(key, { method: "PUT", expiresIn: 3600 });
    const res = await fetch(url, { method: "PUT", body, headers: { "If-None-Match": "*", "Content-Type": type }, signal: this.#signal() });
    if (res.status === 412) {
      await res.arrayBuffer();
      const get = await fetch(this.#s3.client.presign(key, { method: "GET", expiresIn: 3600 }), { signal: this.#signal() });
      const existing = new Uint8Array(await get.arrayBuffer());
      if (!get.ok || Buffer.compare(existing, body) !== 0) {
        throw new AgateError("SHIP_CONFLICT", `s3://${this.#cfg.bucket}/${key} already exists with other content; refusing to overwrite it. Check that no other gateway ships to this prefix.`, { key });
      }
    } else if (!res.ok) {
      const text = await res.text();
      throw new AgateError("SHIP_FAILED", `Uploading s3://${this.#cfg.bucket}/${key} failed: HTTP ${res.status} ${/<Code>([^<]*)<\/Code>/.exec(text)?.[1] ?? text.slice(0, 200)}`, { key, status: res.status });
    } else {
      await res.arrayBuffer();
    }
    this.#status.uploads++;
    this.#status.lastSuccessAt = Date.now();
  }

  /** An upload's signal: its timeout, or the shutdown. */
  #signal(): AbortSignal {
    return AbortSignal.any([AbortSignal.timeout(UPLOAD_TIMEOUT_MS), this.#stop.signal]);
  }

  async #save(state: State): Promise<void> {
    const path = join(this.#dir, SHIP_STATE_FILE);
    await writeFile(`${path}.tmp`, `${JSON.stringify(state)}\n`, { mode: 0o600 });
    const fd = fs.openSync(`${path}.tmp`, "r");
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    await rename(`${path}.tmp`, path);
    await syncDir(this.#dir);
    this.#state = state;
    this.#status.shippedRecords = state.records;
  }

  /**
   * Delete shipped local segments older than keep_local_s. The open segment
   * and the sealed one before it are always kept: start-up recovery chains
   * an empty open segment (as a seal leaves it) to the last record of the
   * segment before it, so without that segment the log would not reopen.
   */
  async #prune(): Promise<void> {
    const keep = this.#cfg.keep_local_s;
    if (keep === undefined) return;
    const names = (await readdir(this.#dir)).filter((n) => parseSegmentName(n) !== null).sort();
    for (let k = 0; k + 2 < names.length; k++) {
      const next = parseSegmentName(names[k + 1]!)!;
      if (next > this.#state.records) break;
      const path = join(this.#dir, names[k]!);
      if (Date.now() - (await stat(path)).mtimeMs < keep * 1000) break;
      await unlink(path);
      this.#log("info", "audit segment deleted locally after upload", { segment: names[k], keep_local_s: keep });
    }
  }
}

/**
 * Download what was shipped under `url` (s3://bucket/prefix) into a temp
 * directory laid out like a local log (segments and a checkpoint file), for
 * `agate verify --from`. Credentials and endpoint come from the environment
 * (S3_ENDPOINT or AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
 * AWS_SECRET_ACCESS_KEY).
 */
export async function fetchShipped(url: string, opts: { quiet: boolean; env?: Record<string, string | undefined> }): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const env = opts.env ?? process.env;
  const m = /^s3:\/\/([^/]+)\/?(.*)$/.exec(url);
  if (!m) throw new AgateError("USAGE", `--from must be s3://bucket or s3://bucket/prefix; got ${url}`);
  const endpoint = env.S3_ENDPOINT ?? env.AWS_ENDPOINT_URL;
  const { client, key } = s3For({
    bucket: m[1]!,
    prefix: m[2]!.replace(/\/+$/, ""),
    region: env.AWS_REGION ?? env.S3_REGION ?? "us-east-1",
    ...(endpoint ? { endpoint } : {}),
    ...(env.AWS_ACCESS_KEY_ID ? { access_key_id: env.AWS_ACCESS_KEY_ID } : {}),
    ...(env.AWS_SECRET_ACCESS_KEY ? { secret_access_key: env.AWS_SECRET_ACCESS_KEY } : {}),
  });
  const dir = fs.mkdtempSync(join(fs.realpathSync(process.env.TMPDIR ?? "/tmp"), "agate-verify-"));
  const cleanup = async () => fs.rmSync(dir, { recursive: true, force: true });
  try {
    const prefix = key("");
    const objects: { key: string; size: number }[] = [];
    let token: string | undefined;
    do {
      const page = await client.list({ prefix, ...(token ? { continuationToken: token } : {}) });
      for (const o of page.contents ?? []) objects.push({ key: o.key, size: o.size ?? 0 });
      token = page.isTruncated ? page.nextContinuationToken : undefined;
    } while (token);
    const segments = objects.filter((o) => parseSegmentName(o.key.slice(prefix.length)) !== null);
    const checkpoints = objects.filter((o) => /^checkpoints\/\d{20}$/.test(o.key.slice(prefix.length))).sort((a, b) => a.key.localeCompare(b.key));
    if (segments.length === 0) throw new AgateError("VERIFY_NO_LOG", `No segments under ${url}.`);
    const total = segments.reduce((a, o) => a + o.size, 0);
    let done = 0;
    for (const o of segments) {
      const name = o.key.slice(prefix.length);
      await Bun.write(join(dir, name), client.file(o.key));
      done += o.size;
      if (!opts.quiet) process.stderr.write(`fetch: ${name} (${(done / 1e6).toFixed(1)} of ${(total / 1e6).toFixed(1)} MB)\n`);
    }
    // The checkpoints, in size order, as a local checkpoint file.
    const frames: Buffer[] = [encodeFileHeader()];
    for (const o of checkpoints) frames.push(encodeFrame(Buffer.from(canonicalJson({ note: await client.file(o.key).text() }))));
    fs.writeFileSync(join(dir, CHECKPOINT_FILE), Buffer.concat(frames));
    if (!opts.quiet) process.stderr.write(`fetch: ${segments.length} segment(s), ${checkpoints.length} checkpoint(s) from ${url}\n`);
    return { dir, cleanup };
  } catch (e) {
    await cleanup();
    throw e;
  }
}
