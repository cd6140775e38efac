/**
 * Power loss under load, on LazyFS (scripts/lazyfs.sh): the audit log lives
 * on a FUSE file system that keeps written data in its own cache until it is
 * fsynced. A gateway process is SIGKILLed while 16 sessions insert rows, then
 * LazyFS drops every byte that was not synced (`lazyfs::clear-cache`), as a
 * power loss drops the page cache. Every statement a client saw succeed must
 * still be in the log, the gateway must restart on what is left, and
 * `agate verify` must pass.
 *
 * What LazyFS models: file data not covered by fsync/fdatasync is lost.
 * What it does not: it passes metadata (create, rename, directory entries)
 * straight to the file system below, so a missing directory fsync is not
 * caught here (the writer does one after creating each segment, the
 * checkpoint file and the marker: src/audit/writer.ts syncDir).
 *
 * Needs /dev/fuse, the right to mount (root or fusermount3) and the lazyfs
 * binary: `bash scripts/lazyfs.sh` builds it (or AGATE_LAZYFS=path). Without
 * it this test is skipped, and says so.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import type { Subprocess } from "bun";
import postgres from "postgres";
import { readRecords } from "../src/audit/index.ts";
import { psql, sh, spawnGateway, writeServeConfig } from "./helpers/gateway.ts";
import { startPostgres, type TestPostgres } from "./helpers/postgres.ts";

const ROOT = resolve(import.meta.dir, "..");
const SESSIONS = 16;
const KEY = "agk_power_loss_test_key_not_a_real_one";

const found = await sh(["bash", join(ROOT, "scripts/lazyfs.sh"), "--installed"]);
const LAZYFS = found.code === 0 ? found.stdout.trim() : "";
const usable = LAZYFS !== "" && existsSync("/dev/fuse");
if (!usable) console.warn("power-loss.test.ts: skipped: no LazyFS (build it with `bash scripts/lazyfs.sh`, or set AGATE_LAZYFS) or no /dev/fuse");

let db: TestPostgres;
let base: string;
let mount: string;
let fifo: string;
let done: string;
let lazyfs: Subprocess | undefined;
const procs: Subprocess[] = [];

beforeAll(async () => {
  if (!usable) return;
  db = await startPostgres();
  await db.psql(`CREATE TABLE t (v text NOT NULL); ALTER TABLE t OWNER TO app_scram;`);
  base = mkdtempSync(join(tmpdir(), "agate-power-"));
  mount = join(base, "mnt");
  const under = join(base, "disk");
  mkdirSync(mount);
  mkdirSync(under);
  fifo = join(base, "faults.fifo");
  done = join(base, "faults-done.fifo");
  writeFileSync(join(base, "lazyfs.toml"), `[faults]\nfifo_path="${fifo}"\nfifo_path_completed="${done}"\n[cache]\napply_eviction=false\n[cache.simple]\ncustom_size="1gb"\nblocks_per_page=1\n[filesystem]\nlog_all_operations=false\nlogfile=""\n`);
  lazyfs = Bun.spawn([LAZYFS, mount, "--config-path", join(base, "lazyfs.toml"), "-o", "allow_other", "-o", "modules=subdir", "-o", `subdir=${under}`, "-f"], {
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, LD_LIBRARY_PATH: join(dirname(LAZYFS), "../lib") },
  });
  for (let i = 0; i < 200 && (await sh(["mountpoint", "-q", mount])).code !== 0; i++) await Bun.sleep(50);
  expect((await sh(["mountpoint", "-q", mount])).code).toBe(0);
});

afterAll(async () => {
  for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
  await Promise.all(procs.map((p) => p.exited));
  if (lazyfs) {
    await sh(["umount", "-l", mount]);
    lazyfs.kill("SIGTERM");
    await lazyfs.exited;
  }
  await db?.stop();
  if (base) rmSync(base, { recursive: true, force: true });
});

/** Drop every byte LazyFS holds that was not fsynced, and wait until it has. */
async function powerLoss(): Promise<void> {
  // The completion FIFO is opened for reading first, so LazyFS's write of "finished::clear-cache" finds a reader.
  const finished = Bun.spawn(["head", "-n", "1", done], { stdout: "pipe" });
  await Bun.sleep(100);
  await Bun.write(fifo, "lazyfs::clear-cache\n");
  const said = await new Response(finished.stdout).text();
  expect(said.trim()).toBe("finished::clear-cache");
}

test.skipIf(!usable)("power loss under load: every acknowledged statement survives, the gateway restarts and the log verifies", async () => {
  // The config and keys on the ordinary disk; only the audit log on LazyFS.
  const dir = join(base, "gw");
  mkdirSync(dir);
  const vkey = writeServeConfig(dir, db, { by: "power-loss.test", apiKey: { id: "ci", key: KEY }, audit: "  segment_bytes: 262144\n  checkpoint: { every_records: 500, every_seconds: 0.2 }" });
  mkdirSync(join(mount, "audit"));
  symlinkSync(join(mount, "audit"), join(dir, "audit"));
  const env = { AGATE_TEST_PG_PASSWORD: db.password };

  const first = await spawnGateway(dir, { env, spawned: (p) => procs.push(p) });
  const url = `postgres://ci:${KEY}@127.0.0.1:${first.port}/app`;
  const ok: string[] = [];
  let stopping = false;
  const clients = Array.from({ length: SESSIONS }, () => postgres(url, { max: 1, connect_timeout: 10, onnotice: () => {}, idle_timeout: 0 }));
  const loops = clients.map(async (sql, s) => {
    for (let n = 0; !stopping; n++) {
      const marker = `m-${s}-${n}`;
      try {
        const text = `INSERT INTO t VALUES ('${marker}')`;
        await (s % 2 === 0 ? sql.unsafe(text).simple() : sql.unsafe(text));
        ok.push(marker);
      } catch {
        return;
      }
    }
  });
  for (let i = 0; i < 3000 && ok.length < 1500; i++) await Bun.sleep(20);
  stopping = true;
  first.proc.kill("SIGKILL");
  await first.exited();
  await Promise.all(clients.map((c) => c.end({ timeout: 0 }).catch(() => {})));
  await Promise.all(loops);
  const acknowledged = [...ok];
  expect(acknowledged.length).toBeGreaterThanOrEqual(1500);
  await powerLoss();

  const second = await spawnGateway(dir, { env, spawned: (p) => procs.push(p) });
  const r = await psql(`postgres://ci:${KEY}@127.0.0.1:${second.port}/app`, "INSERT INTO t VALUES ('m-after')");
  expect(r.stderr).toBe("");
  second.proc.kill("SIGTERM");
  expect(await second.exited()).toBe(0);

  const markers = new Set<string>();
  let records = 0;
  for await (const rec of readRecords(join(dir, "audit"))) {
    records++;
    const m = rec.type === "command" && typeof rec.text === "string" ? /'(m-[^']+)'/.exec(rec.text) : null;
    if (m) markers.add(m[1]!);
  }
  expect(acknowledged.filter((m) => !markers.has(m))).toEqual([]);
  expect(markers.has("m-after")).toBe(true);
  const v = await sh([process.execPath, join(ROOT, "src/main.ts"), "verify", "--log", join(dir, "audit"), "--key", vkey, "--quiet"]);
  expect(v.stdout).toStartWith(`ok: ${records} records`);
  expect(v.code).toBe(0);
  if (process.env.AGATE_TEST_LOG) console.log("power loss:", { acknowledged: acknowledged.length, records, restart: second.stderr().split("\n").filter((l) => l.includes("truncated")) });
}, 180_000);
