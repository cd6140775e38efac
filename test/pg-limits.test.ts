/**
 * Limits of the query phase: a statement the analyser cannot take is an
 * ordinary error that keeps the session (as PostgreSQL's 54001), and a
 * frontend message too large to be recorded or over `max_message_bytes` is
 * refused from its length header, before its body is read.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import type { Subprocess } from "bun";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MAX_PAYLOAD_BYTES } from "../src/audit/format.ts";
import { readRecords } from "../src/audit/index.ts";
import { generateKey } from "../src/audit/note.ts";
import { parseConfig } from "../src/config/index.ts";
import { Framer } from "../src/protocols/postgres/framer.ts";
import { message } from "../src/protocols/postgres/wire.ts";
import { API_KEY, psql, sh, spawnGateway, startTestGateway, type TestGateway, USER, writeServeConfig } from "./helpers/gateway.ts";
import { startPostgres, type TestPostgres } from "./helpers/postgres.ts";
import { type BackendMessage, errorOf, Query, rawSession, rowOf, run, Sync } from "./helpers/wire.ts";

let db: TestPostgres;
let gw: TestGateway;

beforeAll(async () => {
  db = await startPostgres();
  gw = await startTestGateway(db);
});

afterAll(async () => {
  await gw?.close();
  await db?.stop();
});

async function records(dir: string): Promise<Record<string, unknown>[]> {
  const out: Record<string, unknown>[] = [];
  for await (const r of readRecords(dir)) out.push(r);
  return out;
}

/** `select 1+1+…+1` with 10,000 terms: deeper than agate's analyser takes (and than PostgreSQL's stack). */
const TOO_DEEP = `select ${Array(10_000).fill("1").join("+")}`;

describe("a statement too deep to analyse", () => {
  test("psql: ERROR 54001, and the same connection runs the next statement", async () => {
    const dir = mkdtempSync(join(tmpdir(), "agate-deep-"));
    try {
      writeFileSync(join(dir, "deep.sql"), `${TOO_DEEP};\n`);
      const r = await sh(["psql", "-X", "-At", gw.url(), "-c", "select 'before', pg_backend_pid()", "-f", join(dir, "deep.sql"), "-c", "select 'after', pg_backend_pid()"]);
      expect(r.stderr).toContain("ERROR:  agate: The statement is nested too deeply");
      expect(r.stderr).not.toContain("FATAL");
      const lines = r.stdout.trim().split("\n");
      expect(lines.length).toBe(2);
      expect(lines[0]!.startsWith("before|")).toBe(true);
      expect(lines[1]!.startsWith("after|")).toBe(true);
      // psql runs every -c and -f on one connection: the backend is the same.
      expect(lines[0]!.split("|")[1]).toBe(lines[1]!.split("|")[1]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("raw client, simple and extended protocol: 54001, then SELECT 1 on the same connection", async () => {
    const s = await rawSession(gw.port, { user: USER, password: API_KEY });
    try {
      s.send(Query(TOO_DEEP));
      const simple = await s.untilReady();
      const e1 = simple.find((m) => m.type === "E")!;
      expect(errorOf(e1).code).toBe("54001");
      expect(simple.at(-1)!.body.toString()).toBe("I");
      s.send([...run(TOO_DEEP), Sync]);
      const extended = await s.untilReady();
      expect(errorOf(extended.find((m) => m.type === "E")!).code).toBe("54001");
      s.send(Query("SELECT 1"));
      const after = await s.untilReady();
      expect(after.filter((m) => m.type === "D").map((m) => rowOf(m)[0]!.toString())).toEqual(["1"]);
      expect(s.closed).toBe(false);
    } finally {
      s.close();
    }
    // Refused and recorded with its reason, as any refusal.
    const denied = (await records(gw.auditDir)).filter((r) => r.type === "command" && String((r.decision as { reasons?: string[] } | undefined)?.reasons ?? "").includes("agate.sql_too_deep"));
    expect(denied.length).toBeGreaterThanOrEqual(2);
  });
});

/** Resident and peak resident set size of a process, in bytes (Linux /proc). */
function memoryOf(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)![1]) * 1024;
  return { rss: kb("VmRSS"), peak: kb("VmHWM") };
}

/** Write `bytes` of a message after its header, in pieces, until the gateway closes; resolves with what it answered. */
async function sendLarge(port: number, type: number, bytes: number): Promise<{ messages: BackendMessage[]; closed: boolean }> {
  const s = await rawSession(port, { user: USER, password: API_KEY });
  const head = Buffer.alloc(5);
  head[0] = type;
  head.writeInt32BE(bytes + 4, 1);
  s.send(head);
  const piece = Buffer.alloc(1 << 20, 0x20);
  for (let sent = 0; sent < bytes && !s.closed; sent += piece.length) {
    s.send(piece.subarray(0, Math.min(piece.length, bytes - sent)));
    await Bun.sleep(0);
  }
  const messages = await s.until("E");
  const closed = s.closed || (await s.untilReady()).length >= 0;
  s.close();
  return { messages, closed };
}

describe("a frontend message over max_message_bytes", () => {
  const procs: Subprocess[] = [];
  afterAll(() => {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
  });

  test("the default is half an audit record, and a limit the log cannot hold is refused", () => {
    const dir = mkdtempSync(join(tmpdir(), "agate-limit-"));
    try {
      writeFileSync(join(dir, "audit.key"), generateKey("pg-limits.test/audit").signerKey, { mode: 0o600 });
      const parse = (extra: Record<string, unknown>) =>
        parseConfig({ audit: { dir: "./audit", signing_key: "./audit.key" }, connections: [{ name: "c", listen: "127.0.0.1:0", allow_plaintext_auth: true, target: { database: "d", user: "u" }, ...extra }] }, dir, {});
      expect(parse({}).connections[0]!.max_message_bytes).toBe(MAX_PAYLOAD_BYTES / 2);
      expect(parse({ max_message_bytes: MAX_PAYLOAD_BYTES }).connections[0]!.max_message_bytes).toBe(MAX_PAYLOAD_BYTES);
      expect(() => parse({ max_message_bytes: 256 << 20 })).toThrow(/could not be recorded/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("three 100 MB Queries are refused from their headers: the gateway process's peak RSS grows by far less, it serves others, and streams a 100 MB CopyData", async () => {
    const dir = mkdtempSync(join(tmpdir(), "agate-large-"));
    try {
      writeServeConfig(dir, db, { by: "pg-limits.test", apiKey: { id: USER, key: API_KEY } });
      const g = await spawnGateway(dir, { env: { AGATE_TEST_PG_PASSWORD: db.password }, spawned: (p) => procs.push(p) });
      const url = `postgres://${USER}:${API_KEY}@127.0.0.1:${g.port}/app`;
      for (let i = 0; i < 5; i++) expect((await psql(url, "SELECT 1")).stdout.trim()).toBe("1"); // warm up
      const before = memoryOf(g.proc.pid);
      const answers = await Promise.all([0, 1, 2].map(() => sendLarge(g.port, 0x51, 100_000_000)));
      const after = memoryOf(g.proc.pid);
      console.log(`gateway RSS before ${(before.rss / 2 ** 20).toFixed(1)} MiB (peak ${(before.peak / 2 ** 20).toFixed(1)}), after three 100 MB Queries ${(after.rss / 2 ** 20).toFixed(1)} MiB (peak ${(after.peak / 2 ** 20).toFixed(1)})`);
      for (const a of answers) {
        const e = a.messages.find((m) => m.type === "E")!;
        expect(errorOf(e)).toEqual({ code: "08P01", message: `agate: protocol violation: message of 100000004 bytes exceeds the limit of ${MAX_PAYLOAD_BYTES / 2} bytes` });
        expect(a.closed).toBe(true);
      }
      expect(after.peak - before.peak).toBeLessThan(32 << 20);
      // Others are served as before.
      expect((await psql(url, "SELECT 'still here'")).stdout.trim()).toBe("still here");
      // A 100 MB CopyData message is passed on as it arrives, never buffered whole.
      await db.psql("CREATE TABLE blobs (t text); ALTER TABLE blobs OWNER TO app_scram;");
      const s = await rawSession(g.port, { user: USER, password: API_KEY });
      s.send(Query("COPY blobs FROM STDIN"));
      expect((await s.until("G")).at(-1)!.type).toBe("G");
      const head = Buffer.alloc(5);
      head[0] = 0x64;
      head.writeInt32BE(100_000_000 + 4, 1);
      s.send(head);
      const piece = Buffer.alloc(1_000_000, 0x79);
      const last = Buffer.from(piece);
      last[last.length - 1] = 0x0a; // one line: one row
      for (let i = 0; i < 100; i++) {
        s.send(i === 99 ? last : piece);
        await Bun.sleep(0);
      }
      s.send(message(0x63));
      expect((await s.untilReady()).find((m) => m.type === "C")!.body.toString()).toBe("COPY 1\0");
      s.close();
      const copied = memoryOf(g.proc.pid);
      console.log(`gateway RSS after a 100 MB CopyData message ${(copied.rss / 2 ** 20).toFixed(1)} MiB (peak ${(copied.peak / 2 ** 20).toFixed(1)})`);
      // Bounded by what waits to be framed (8 MiB), relayed garbage between collections (16 MiB) and socket
      // buffers: well under the message, which buffered whole would take at least 100 MB more.
      expect(copied.peak - before.peak).toBeLessThan(64 << 20);
      g.proc.kill("SIGTERM");
      expect(await g.exited()).toBe(0);
      // Each refusal ends its session, recorded with the reason.
      const ends = (await records(join(dir, "audit"))).filter((r) => r.type === "session_end" && String(r.reason).includes("exceeds the limit"));
      expect(ends.length).toBe(3);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("COPY data is streamed: one 24 MB CopyData message passes", async () => {
    await db.psql("CREATE TABLE lines (t text); ALTER TABLE lines OWNER TO app_scram;");
    const s = await rawSession(gw.port, { user: USER, password: API_KEY });
    try {
      s.send(Query("COPY lines FROM STDIN"));
      expect((await s.until("G")).at(-1)!.type).toBe("G");
      const line = Buffer.alloc(24_000_001, 0x78);
      line[line.length - 1] = 0x0a;
      s.send([message(0x64, (w) => w.bytes(line)), message(0x63)]);
      const done = await s.untilReady();
      expect(done.find((m) => m.type === "C")!.body.toString()).toBe("COPY 1\0");
      s.send(Query("SELECT length(t) FROM lines"));
      const rows = await s.untilReady();
      expect(rows.filter((m) => m.type === "D").map((m) => rowOf(m)[0]!.toString())).toEqual(["24000000"]);
    } finally {
      s.close();
    }
  });
});

describe("Framer", () => {
  test("a long CopyData arriving in pieces is returned in pieces that join to the message; other messages whole, over the limit refused", () => {
    const copy = message(0x64, (w) => w.bytes(Buffer.alloc(200_000, 0x41)));
    const small = message(0x64, (w) => w.bytes(Buffer.from("a\tb\n")));
    const stream = Buffer.concat([Query("SELECT 1"), small, copy, message(0x63), Sync]);
    const f = new Framer(1024);
    f.streamCopyData = true;
    const got: { type: number; raw: Buffer }[] = [];
    for (let at = 0; at < stream.length; at += 7_001) {
      f.push(stream.subarray(at, at + 7_001));
      for (let m = f.next(); m; m = f.next()) got.push({ type: m.type, raw: Buffer.from(m.raw) });
      expect(f.buffered).toBeLessThan(7_001 + 5);
    }
    expect(Buffer.concat(got.map((g) => g.raw)).equals(stream)).toBe(true);
    const pieces = got.filter((g) => g.type === 0x64);
    expect(pieces.length).toBeGreaterThan(2);
    expect(pieces[0]!.raw.equals(small)).toBe(true);
    expect(got.map((g) => g.type).filter((t) => t !== 0x64)).toEqual([0x51, 0x63, 0x53]);
    const q = new Framer(1024);
    q.push(Query("x".repeat(2000)).subarray(0, 10));
    expect(() => q.next()).toThrow("message of 2005 bytes exceeds the limit of 1024 bytes");
  });
});
