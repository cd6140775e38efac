/**
 * TLS records from agate carry at most 8 KiB of plaintext, as PostgreSQL's
 * do (tls-records.ts): an asynchronous libpq 15 client reading large COPY
 * results over TLS never stalls, and every application-data record on the
 * wire, read by a plain TCP proxy between them, is no longer than that.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MAX_RECORD_PLAINTEXT } from "../src/protocols/postgres/tls-records.ts";
import { API_KEY, sh, startTestGateway, type TestGateway, USER } from "./helpers/gateway.ts";
import { startPostgres, type TestPostgres } from "./helpers/postgres.ts";

/** TLS content type application_data (RFC 8446 §5.1). */
const APPLICATION_DATA = 23;
/**
 * What a record adds to its plaintext: 1 byte of inner content type and a
 * 16-byte AEAD tag in TLS 1.3, an 8-byte explicit nonce and the tag with
 * AES-GCM in TLS 1.2. OpenSSL adds no padding unless asked.
 */
const RECORD_OVERHEAD = 24;

let db: TestPostgres;
let gw: TestGateway;
let dir: string;

beforeAll(async () => {
  db = await startPostgres();
  dir = mkdtempSync(join(tmpdir(), "agate-tls-records-"));
  const key = join(dir, "tls.key");
  const cert = join(dir, "tls.crt");
  const made = await sh(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost"]);
  expect(made.code).toBe(0);
  gw = await startTestGateway(db, { connection: { tls: { cert, key, required: true } } });
});

afterAll(async () => {
  await gw?.close();
  await db?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/**
 * A TCP proxy in front of the gateway that reads the TLS record headers of
 * what the gateway sends (after its one-byte answer 'S' to SSLRequest):
 * the length of every application-data record.
 */
async function recordProxy(target: number): Promise<{ port: number; lengths: number[]; close(): Promise<void> }> {
  const lengths: number[] = [];
  const server = net.createServer((client) => {
    const up = net.connect(target, "127.0.0.1");
    // Piped both ways, so the gateway feels the client's backpressure as it would without the proxy.
    client.pipe(up);
    up.pipe(client);
    let pending = Buffer.alloc(0);
    let answeredSslRequest = false;
    up.on("data", (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      if (!answeredSslRequest && pending.length > 0) {
        expect(String.fromCharCode(pending[0]!)).toBe("S");
        pending = pending.subarray(1);
        answeredSslRequest = true;
      }
      while (pending.length >= 5) {
        const len = pending.readUInt16BE(3);
        if (pending.length < 5 + len) break;
        if (pending[0] === APPLICATION_DATA) lengths.push(len);
        pending = pending.subarray(5 + len);
      }
    });
    client.on("error", () => up.destroy());
    up.on("error", () => client.destroy());
  });
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  return { port: (server.address() as net.AddressInfo).port, lengths, close: () => new Promise((done) => server.close(() => done())) };
}

test("an asynchronous libpq 15 client reads 100 COPY results of rows of 6,000 bytes over TLS; no record carries more than 8 KiB", async () => {
  const includes = (await sh(["pg_config", "--includedir"])).stdout.trim();
  const bin = join(dir, "libpq_async_copy");
  const built = await sh(["cc", "-o", bin, join(import.meta.dir, "clients/libpq_async_copy.c"), `-I${includes}`, "-lpq"]);
  expect(built.stderr).toBe("");
  expect(built.code).toBe(0);

  const proxy = await recordProxy(gw.port);
  try {
    const conninfo = `host=127.0.0.1 port=${proxy.port} dbname=app user=${USER} password=${API_KEY} sslmode=require`;
    // Rows of 6,000 bytes: a partial message left in libpq's 16 KiB buffer leaves less than a 16 KiB record's room,
    // so with such records the last one of a result is often read in part, and the client waits for the rest (STALL).
    const r = await sh([bin, conninfo, "100", "50", "6000"]);
    expect(r.stderr).toBe("");
    expect(r.stdout).toMatch(/^libpq 15\d{4} ssl on$/m);
    expect(r.stdout).toContain("OK 100 rounds");
    expect(r.code).toBe(0);
  } finally {
    await proxy.close();
  }
  // Each round's COPY is 300 to 600 KiB: there were full records, and none was larger than PostgreSQL's.
  const largest = Math.max(...proxy.lengths);
  expect(largest).toBeGreaterThan(MAX_RECORD_PLAINTEXT);
  expect(largest).toBeLessThanOrEqual(MAX_RECORD_PLAINTEXT + RECORD_OVERHEAD);
});
