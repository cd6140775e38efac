/**
 * A throwaway S3-compatible server for tests and benchmarks: the Versity S3
 * Gateway (versitygw, pinned and built by scripts/s3.sh) with its posix
 * backend, on a free loopback port, with a fixed root access key, storing
 * buckets as directories under a temp dir. One bucket is created up front.
 *
 * stop() kills the server and keeps port and data; start() brings it back on
 * the same port with the same data, to simulate an outage (clients see
 * ConnectionRefused at once). pause()/resume() freeze and thaw it instead
 * (clients hang). close() stops it and deletes the temp dir.
 *
 * Talk to it with Bun's S3 client: `new S3Client(s3.options)` or
 * `s3.client()`. Two things Bun needs spelled out for a non-AWS endpoint:
 *   - region: Bun signs with region "auto" when an endpoint is given, and
 *     versitygw rejects that ("the region "auto" is wrong; expecting
 *     "us-east-1""), so `options` carries region "us-east-1".
 *   - path-style addressing is Bun's default (virtualHostedStyle: false), and
 *     is what versitygw serves without --virtual-domain.
 *
 * Everything here is asynchronous (Bun.spawn, never spawnSync): tests run an
 * in-process gateway that shares the event loop.
 */
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { S3Client, type S3Options, type Subprocess } from "bun";
import { freePort } from "./postgres.ts";

export interface S3Server {
  /** http://127.0.0.1:PORT */
  endpoint: string;
  port: number;
  region: string;
  /** The bucket created at start. */
  bucket: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** Temp dir: data/ (the posix backend root, one directory per bucket) and server.log. */
  dir: string;
  dataDir: string;
  /** Options for `new S3Client(...)`: endpoint, region, credentials and the bucket. */
  options: S3Options;
  /** A Bun S3 client for `bucket` (or another bucket). */
  client(bucket?: string): S3Client;
  /** Create another bucket (S3 CreateBucket). */
  createBucket(name: string): Promise<void>;
  /** Kill the server (SIGTERM, then SIGKILL); port and data are kept. */
  stop(): Promise<void>;
  /** Start it again after stop(), on the same port with the same data. */
  start(): Promise<void>;
  /**
   * Freeze the server (SIGSTOP): connections are accepted by the kernel but
   * never answered, so requests hang; Bun.S3Client has no timeout of its own
   * (a write to a frozen server was still pending after 150 s).
   */
  pause(): void;
  /** Thaw a paused server (SIGCONT); pending requests then complete. */
  resume(): void;
  /** Whether the server process is running (paused counts as running). */
  readonly running: boolean;
  /** stop() and delete the temp dir. */
  close(): Promise<void>;
}

export const S3_ACCESS_KEY_ID = "agatetestaccesskey";
export const S3_SECRET_ACCESS_KEY = "agate-test-secret-key-not-a-real-one";
export const S3_REGION = "us-east-1";

const REPO_ROOT = resolve(import.meta.dir, "../..");

let binary: Promise<string> | undefined;

/**
 * The versitygw binary: $AGATE_VERSITYGW if set, else whatever
 * `bash scripts/s3.sh` prints (it builds the pinned version on first use,
 * about a minute and a half cold). Resolved once per process.
 */
export function versitygwPath(): Promise<string> {
  binary ??= (async () => {
    if (process.env.AGATE_VERSITYGW) return process.env.AGATE_VERSITYGW;
    const p = Bun.spawn(["bash", join(REPO_ROOT, "scripts/s3.sh")], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
    const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
    const path = out.trim().split("\n").pop() ?? "";
    if (code !== 0 || !path) throw new Error(`scripts/s3.sh could not provide versitygw (exit ${code}):\n${err}`);
    return path;
  })();
  binary.catch(() => (binary = undefined));
  return binary;
}

// Servers still running when the test process exits (a crash, a forgotten
// close()) are killed rather than left behind holding their ports.
const live = new Set<Subprocess>();
process.on("exit", () => {
  for (const p of live) p.kill("SIGKILL");
});

export async function startS3(opts: { bucket?: string } = {}): Promise<S3Server> {
  const bin = await versitygwPath();
  const dir = mkdtempSync(join(tmpdir(), "agate-s3-"));
  const dataDir = join(dir, "data");
  mkdirSync(dataDir);
  const logFile = join(dir, "server.log");
  const port = await freePort();
  const endpoint = `http://127.0.0.1:${port}`;
  const bucket = opts.bucket ?? "agate-test";
  const creds = { endpoint, region: S3_REGION, accessKeyId: S3_ACCESS_KEY_ID, secretAccessKey: S3_SECRET_ACCESS_KEY };
  let proc: Subprocess | undefined;

  const argv = [
    bin,
    "--port", `127.0.0.1:${port}`,
    "--access", S3_ACCESS_KEY_ID,
    "--secret", S3_SECRET_ACCESS_KEY,
    "--region", S3_REGION,
    "--health", "/health",
    // versitygw answers every request with "Connection: close" unless told otherwise.
    "--keep-alive",
    "--quiet",
    "posix",
    dataDir,
  ];

  const spawnOnce = async (): Promise<boolean> => {
    // Append, so the log of a run before stop() survives start().
    const fd = openSync(logFile, "a");
    let p: Subprocess;
    try {
      p = Bun.spawn(argv, { stdin: "ignore", stdout: fd, stderr: fd });
    } finally {
      closeSync(fd);
    }
    live.add(p);
    p.exited.then(() => live.delete(p));
    proc = p;
    for (let attempt = 0; attempt < 200; attempt++) {
      if (p.exitCode !== null || p.signalCode !== null) return false;
      try {
        const res = await fetch(`${endpoint}/health`, { signal: AbortSignal.timeout(1000) });
        await res.arrayBuffer();
        if (res.ok) return true;
      } catch {
        // not listening yet
      }
      await Bun.sleep(50);
    }
    return false;
  };

  const start = async () => {
    if (proc && proc.exitCode === null && proc.signalCode === null) return;
    // A restart on the same port can race the old socket's release; try a few times.
    for (let attempt = 0; attempt < 5; attempt++) {
      if (await spawnOnce()) return;
      proc?.kill("SIGKILL");
      await proc?.exited;
      await Bun.sleep(200);
    }
    throw new Error(`versitygw did not start on ${endpoint}; its log (${logFile}):\n${await Bun.file(logFile).text().catch(() => "")}`);
  };

  const stop = async () => {
    const p = proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    p.kill("SIGCONT"); // in case it was paused
    p.kill("SIGTERM");
    const timer = setTimeout(() => p.kill("SIGKILL"), 5000);
    await p.exited;
    clearTimeout(timer);
  };

  const client = (b = bucket) => new S3Client({ ...creds, bucket: b });

  const createBucket = async (name: string) => {
    // Bun's S3Client has no CreateBucket. A presigned PUT of the path "/<name>"
    // is one: with virtualHostedStyle the endpoint is used as is and the
    // "key" becomes the whole path.
    const url = new S3Client({ ...creds, virtualHostedStyle: true }).presign(name, { method: "PUT", expiresIn: 300 });
    const res = await fetch(url, { method: "PUT" });
    const body = await res.text();
    if (!res.ok && !/BucketAlreadyOwnedByYou/.test(body)) throw new Error(`CreateBucket ${name} failed: HTTP ${res.status} ${body}`);
  };

  const server: S3Server = {
    endpoint,
    port,
    region: S3_REGION,
    bucket,
    accessKeyId: S3_ACCESS_KEY_ID,
    secretAccessKey: S3_SECRET_ACCESS_KEY,
    dir,
    dataDir,
    options: { ...creds, bucket },
    client,
    createBucket,
    stop,
    start,
    pause: () => proc?.kill("SIGSTOP"),
    resume: () => proc?.kill("SIGCONT"),
    get running() {
      return !!proc && proc.exitCode === null && proc.signalCode === null;
    },
    close: async () => {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };

  try {
    await start();
    await createBucket(bucket);
  } catch (e) {
    await server.close();
    throw e;
  }
  return server;
}
