/**
 * The PostgreSQL start-up phase under hostile or sloppy clients: memory
 * stays bounded before login, the login timeout is absolute, the database
 * name is checked, and a garbage first packet or an early Terminate closes
 * the connection as PostgreSQL does.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Subprocess } from "bun";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { readRecords } from "../src/audit/index.ts";
import { message, startupPacket } from "../src/protocols/postgres/wire.ts";
import { API_KEY, psql, sh, spawnGateway, startTestGateway, type TestGateway, USER, writeServeConfig } from "./helpers/gateway.ts";
import { startPostgres, type TestPostgres } from "./helpers/postgres.ts";

let db: TestPostgres;
let gw: TestGateway;
const procs: Subprocess[] = [];
const dirs: string[] = [];

beforeAll(async () => {
  db = await startPostgres();
  gw = await startTestGateway(db);
});

afterAll(async () => {
  for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
  await Promise.all(procs.map((p) => p.exited));
  await gw?.close();
  await db?.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const startup = (params: Record<string, string>) =>
  startupPacket((w) => {
    w.i32(196608);
    for (const [k, v] of Object.entries(params)) w.cstr(k).cstr(v);
    w.u8(0);
  });

/** Connect, write `bytes` in one write, then answer a password request with `password` (and `then`, in the same write) when given; resolve with all the reply and our port once the server closes (or `ready` ReadyForQuery messages came). */
function exchange(port: number, bytes: Buffer, password?: string, then: Buffer[] = [], ready = 0): Promise<{ reply: Buffer; port: number }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let local = 0;
    const s = net.connect(port, "127.0.0.1", () => {
      local = s.localPort!;
      s.write(bytes);
    });
    s.on("data", (c: Buffer) => {
      chunks.push(c);
      if (ready > 0 && [...types(Buffer.concat(chunks))].filter((t) => t === "Z").length >= ready) s.destroy();
      if (password !== undefined && c[0] === 0x52 && c.readInt32BE(5) === 3) s.write(Buffer.concat([message(0x70, (w) => w.cstr(password)), ...then]));
    });
    s.on("close", () => resolve({ reply: Buffer.concat(chunks), port: local }));
    s.on("error", () => {});
  });
}

/** Type bytes of the backend messages in `reply`. */
function types(reply: Buffer): string {
  let out = "";
  for (let at = 0; at + 5 <= reply.length; at += 1 + reply.readInt32BE(at + 1)) out += String.fromCharCode(reply[at]!);
  return out;
}

/** The session_refused record of the client at local port `port`, polling (refusals are group-committed). */
async function refusedFrom(g: TestGateway, port: number): Promise<Record<string, any>> {
  for (let i = 0; i < 200; i++) {
    for await (const r of readRecords(g.auditDir)) if ((r as any).type === "session_refused" && (r as any).client?.port === port) return r as Record<string, any>;
    await Bun.sleep(20);
  }
  throw new Error(`no session_refused record for client port ${port}`);
}

function rssKb(pid: number): number {
  const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(m![1]);
}

describe("before login", () => {
  test("a client flooding after its refusal keeps the gateway's memory bounded, and is cut off", async () => {
    const dir = mkdtempSync(join(tmpdir(), "agate-flood-"));
    dirs.push(dir);
    writeServeConfig(dir, db, { by: "pg-startup.test", apiKey: { id: USER, key: API_KEY } });
    const g = await spawnGateway(dir, { env: { AGATE_TEST_PG_PASSWORD: db.password }, spawned: (p) => procs.push(p) });
    const pid = g.proc.pid;
    const before = rssKb(pid);
    let peak = before;
    const MB = 400;
    const chunk = Buffer.alloc(1 << 20);
    // No user name: refused at once. Then keep writing, as postrefuse_flood.py does.
    const sent = await new Promise<number>((resolve) => {
      let n = 0;
      const s = net.connect(g.port, "127.0.0.1");
      s.on("error", () => {});
      s.on("close", () => resolve(n));
      s.on("connect", () => {
        s.write(startup({ database: "app" }));
        const more = () => {
          while (n < MB) {
            peak = Math.max(peak, rssKb(pid));
            n++;
            if (!s.write(chunk)) return void s.once("drain", more);
          }
          s.end();
        };
        more();
      });
    });
    peak = Math.max(peak, rssKb(pid));
    g.proc.kill("SIGKILL");
    await g.exited();
    // Before the fix every byte was kept: the RSS grew by about what was sent.
    expect(peak - before).toBeLessThan(64 * 1024);
    expect(sent).toBeLessThan(MB);
  });

  test("near the open file limit connections are cut at accept, and the gateway neither spins nor stops accepting", async () => {
    const dir = mkdtempSync(join(tmpdir(), "agate-nofile-"));
    dirs.push(dir);
    writeServeConfig(dir, db, { by: "pg-startup.test", apiKey: { id: USER, key: API_KEY } });
    const g = await spawnGateway(dir, { env: { AGATE_TEST_PG_PASSWORD: db.password }, spawned: (p) => procs.push(p) });
    const pid = g.proc.pid;
    // 200 descriptors: about 68 client connections with their targets.
    expect((await sh(["prlimit", `--pid=${pid}`, "--nofile=200:200"])).code).toBe(0);
    const cpu = () => readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ").slice(11, 13).reduce((a, b) => a + Number(b), 0);
    const held: net.Socket[] = [];
    let cut = 0;
    await Promise.all(
      Array.from({ length: 200 }, () => new Promise<void>((resolve) => {
        const s = net.connect(g.port, "127.0.0.1");
        held.push(s);
        s.on("error", () => {});
        s.on("close", () => cut++);
        s.on("connect", () => resolve());
      })),
    );
    for (let i = 0; i < 100 && cut < 100; i++) await Bun.sleep(20);
    const before = cpu();
    await Bun.sleep(500);
    const ticks = cpu() - before; // clock ticks, 100 a second: a spinning core would use about 50
    if (process.env.AGATE_TEST_FIGURES) console.log(`connections cut ${cut} of 200, ${ticks} CPU ticks in 0.5 s`);
    expect(cut).toBeGreaterThanOrEqual(100);
    expect(ticks).toBeLessThan(25);
    for (const s of held) s.destroy();
    let answer = "";
    for (let i = 0; i < 200 && answer === ""; i++) {
      const r = await psql(`postgres://${USER}:${API_KEY}@127.0.0.1:${g.port}/app`, "SELECT 42");
      if (r.code === 0) answer = r.stdout.trim();
      else await Bun.sleep(20);
    }
    expect(answer).toBe("42");
    expect(g.stderr()).toContain("open file limit nearly reached");
    g.proc.kill("SIGKILL");
    await g.exited();
  });

  test("a connection dripping bytes is dropped at startup_timeout_ms, counted from accept", async () => {
    const g = await startTestGateway(db, { connection: { startup_timeout_ms: 300 } });
    try {
      const packet = startup({ user: USER, database: "app" });
      let dripped = 0;
      const reply = await new Promise<Buffer>((resolve) => {
        const chunks: Buffer[] = [];
        // Half-open allowed: the client keeps writing after the server's FIN, as a hostile one would.
        const s = net.connect({ port: g.port, host: "127.0.0.1", allowHalfOpen: true });
        let timer: ReturnType<typeof setInterval> | undefined;
        s.on("connect", () => {
          timer = setInterval(() => {
            // One byte at a time, never completing the packet.
            if (s.writable) s.write(packet.subarray(dripped % (packet.length - 1), (dripped % (packet.length - 1)) + 1));
            dripped++;
          }, 20);
        });
        s.on("data", (c: Buffer) => chunks.push(c));
        s.on("error", () => {});
        s.on("close", () => {
          clearInterval(timer);
          resolve(Buffer.concat(chunks));
        });
      });
      expect(reply.toString()).toContain("08006");
      expect(reply.toString()).toContain("authentication timed out");
      expect(dripped).toBeGreaterThan(0);
    } finally {
      await g.close();
    }
  });

  test("a database name other than the connection's is refused with 3D000 and recorded; the right one or none logs in", async () => {
    const client = new pg.Client({ connectionString: gw.url({ database: "nosuchdb" }) });
    client.on("error", () => {});
    const err = await client.connect().then(
      () => null,
      (e) => e,
    );
    expect(err?.code).toBe("3D000");
    expect(err?.message).toBe('database "nosuchdb" does not exist');
    const r = await psql(gw.url({ database: "nosuchdb" }), "SELECT 1");
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('database "nosuchdb" does not exist');

    const { reply, port } = await exchange(gw.port, startup({ user: USER, database: "other" }));
    expect(types(reply)).toBe("E");
    const rec = await refusedFrom(gw, port);
    expect([rec.code, rec.sqlstate, rec.reason, rec.user]).toEqual(["DATABASE_UNKNOWN", "3D000", 'database "other" does not exist', USER]);

    expect((await psql(gw.url({ database: "app" }), "SELECT current_database()")).stdout.trim()).toBe("app");
    // No database name: the connection's target database (PostgreSQL would take the user name).
    const none = await exchange(gw.port, startup({ user: USER }), API_KEY, [message(0x51, (w) => w.cstr("SELECT current_database()"))], 2);
    expect(types(none.reply)).not.toContain("E");
    expect(types(none.reply)).toContain("D");
    expect(none.reply.includes(Buffer.from("\0\0\0\x03app"))).toBe(true);
  });

  test("a garbage first packet (an invalid startup length) closes without a reply, and is recorded", async () => {
    for (const [bytes, reason] of [
      [Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "the startup packet: message of 1195725856 bytes exceeds the limit of 10000 bytes"],
      [Buffer.from([0, 0, 0, 6, 0, 3]), "the startup packet: invalid length of startup packet"],
    ] as const) {
      const { reply, port } = await exchange(gw.port, bytes);
      expect(reply.length).toBe(0);
      const r = await refusedFrom(gw, port);
      expect([r.code, r.sqlstate, r.reason]).toEqual(["PROTOCOL_VIOLATION", "08P01", reason]);
    }
  });

  test("a Terminate sent with the startup packet closes quietly, before or after it (node-postgres's quick end())", async () => {
    const after = await exchange(gw.port, Buffer.concat([startup({ user: USER, database: "app" }), message(0x58)]));
    expect(types(after.reply)).toBe("R"); // the password request, and no error
    const before = await exchange(gw.port, Buffer.concat([message(0x58), startup({ user: USER, database: "app" })]));
    expect(before.reply.length).toBe(0);
    // node-postgres: end() right after connect() ends without an error event.
    const client = new pg.Client({ connectionString: gw.url() });
    const errors: Error[] = [];
    client.on("error", (e) => errors.push(e));
    const stream = (client as any).connection.stream as net.Socket;
    const closed = new Promise<void>((done) => stream.once("close", () => done()));
    const connectError = client.connect().catch((e: Error) => e);
    await client.end();
    await closed;
    expect(errors.map((e) => e.message)).toEqual([]);
    const settled = await Promise.race([connectError, Bun.sleep(0).then(() => "pending")]);
    expect(settled instanceof Error ? settled.message : "no error").not.toContain("exceeds the limit");
  });
});
