/**
 * The single executable: build it with scripts/build.ts, copy it alone into
 * an empty folder outside the checkout (no node_modules, no wasm/, no
 * NODE_PATH), and use it as a user would: the CLI, a gateway in front of a
 * real PostgreSQL reached with psql, an SSH connection in front of a real
 * sshd reached with ssh, and `agate verify` on the audit log it
 * wrote, intact and then with one byte flipped.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, copyFileSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { hashApiKey } from "../src/identity/apikey.ts";
import { freePort, startPostgres, type TestPostgres } from "./helpers/postgres.ts";
import { ssh, startSshd } from "./helpers/sshd.ts";

const root = resolve(import.meta.dir, "..");
const psqlPath = Bun.which("psql");
if (!psqlPath) throw new Error("psql not found on PATH: install postgresql-client (scripts/setup.sh does)");

let buildDir: string;
let dir: string;
let pg: TestPostgres | undefined;

/** What the executable sees: no NODE_PATH, no Bun or node on PATH, only psql's folder. */
const env = { PATH: dirname(psqlPath), HOME: "/nonexistent", LANG: "C.UTF-8" };

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(argv: string[], opts: { env?: Record<string, string> } = {}): Promise<Run> {
  const p = Bun.spawn(argv, { cwd: dir, env: opts.env ?? env, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, stdout, stderr };
}

const agate = (...args: string[]) => run(["./agate", ...args]);

beforeAll(async () => {
  buildDir = mkdtempSync(join(tmpdir(), "agate-build-"));
  const outfile = join(buildDir, "agate");
  const build = Bun.spawn([process.execPath, join(root, "scripts/build.ts"), "--outfile", outfile], { cwd: root, stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(build.stdout).text(), new Response(build.stderr).text(), build.exited]);
  if (code !== 0) throw new Error(`scripts/build.ts exited ${code}:\n${out}${err}`);

  dir = mkdtempSync(join(tmpdir(), "agate-bin-"));
  // The executable alone: no .map beside it, no wasm/, no node_modules.
  copyFileSync(outfile, join(dir, "agate"));
  chmodSync(join(dir, "agate"), 0o755);
}, 120_000);

afterAll(async () => {
  await pg?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
  if (buildDir) rmSync(buildDir, { recursive: true, force: true });
});

describe("the compiled executable, alone in an empty folder", () => {
  test("the folder holds only the executable, outside the checkout", () => {
    expect(readdirSync(dir)).toEqual(["agate"]);
    expect(dir.startsWith(root)).toBe(false);
  });

  test("--help lists the commands and exits 0", async () => {
    const r = await agate("--help");
    expect(r.code).toBe(0);
    for (const cmd of ["serve", "verify", "policy", "keys"]) expect(r.stdout).toContain(cmd);
  });

  test("serve --help exits 0", async () => {
    const r = await agate("serve", "--help");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("--config");
  });

  test("an unknown command exits 2", async () => {
    const r = await agate("nonsense");
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('unknown command "nonsense"');
  });

  test("serve without --config exits 2 and says what is missing", async () => {
    const r = await agate("serve");
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("serve needs --config FILE");
  });

  test("keys create prints an agk_ key and its SHA-256", async () => {
    const r = await agate("keys", "create", "--id", "ci");
    expect(r.code).toBe(0);
    const key = /^key: (agk_\S+)$/m.exec(r.stdout)?.[1];
    expect(key).toBeDefined();
    const sha = /sha256: ([0-9a-f]{64})$/m.exec(r.stdout)?.[1];
    expect(sha).toBe(hashApiKey(key!));
    expect(r.stdout).toContain("- id: ci");
  });

  test("serve: a gateway in front of PostgreSQL, then verify its audit log", async () => {
    pg = await startPostgres();
    const port = await freePort();
    const key = "agk_" + Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("base64url");
    const auditDir = join(dir, "audit");
    const keygen = await agate("keys", "generate", "--name", "build.test/audit", "--out", "audit.key");
    expect(keygen.code).toBe(0);
    const vkey = keygen.stdout.trim();
    expect(vkey).toMatch(/^build\.test\/audit\+[0-9a-f]{8}\+[A-Za-z0-9+/]{44}$/);
    expect(statSync(join(dir, "audit.key")).mode & 0o777).toBe(0o600);
    writeFileSync(
      join(dir, "agate.yaml"),
      `# written by test/build.test.ts
audit:
  dir: ./audit
  signing_key: ./audit.key
identity:
  api_keys:
    - id: ci
      kind: service
      groups: [ci]
      sha256: ${hashApiKey(key)}
connections:
  - name: app-db
    protocol: postgres
    listen: 127.0.0.1:${port}
    allow_plaintext_auth: true   # loopback only
    target:
      host: ${pg.host}
      port: ${pg.port}
      database: app
      user: app_scram
      password_env: AGATE_TEST_PG_PASSWORD
`,
    );

    // Two workers: the executable also carries the worker threads' entry point (scripts/build.ts).
    const gw = Bun.spawn(["./agate", "serve", "--config", "agate.yaml", "--workers", "2"], {
      cwd: dir,
      env: { ...env, AGATE_TEST_PG_PASSWORD: pg.password },
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
    });
    const stderr = new Response(gw.stderr).text();
    // Read stdout until the listener is announced (or the process ends).
    let stdout = "";
    const reader = gw.stdout.getReader();
    const decoder = new TextDecoder();
    const deadline = Date.now() + 30_000;
    while (!stdout.includes("listening") && Date.now() < deadline) {
      const chunk = await Promise.race([reader.read(), Bun.sleep(deadline - Date.now()).then(() => null)]);
      if (!chunk || chunk.done) break;
      stdout += decoder.decode(chunk.value, { stream: true });
    }
    if (!stdout.includes("listening")) {
      gw.kill("SIGKILL");
      throw new Error(`agate serve did not start (exit ${await gw.exited}):\nstdout: ${stdout}\nstderr: ${await stderr}`);
    }
    expect(stdout).toContain(`app-db listening on 127.0.0.1:${port}`);
    // Keep draining stdout so the gateway never blocks on a full pipe.
    const rest = (async () => {
      for (;;) {
        const c = await reader.read();
        if (c.done) return;
        stdout += decoder.decode(c.value, { stream: true });
      }
    })();

    try {
      const url = `postgres://ci:${key}@127.0.0.1:${port}/app`;
      const psql = (sql: string) =>
        run([psqlPath, "-X", "-v", "VERBOSITY=verbose", url, "-Atc", sql], { env: { ...env, PGCONNECT_TIMEOUT: "10", PGSSLMODE: "disable" } });

      const ok = await psql("select 40+2");
      expect(ok.stderr).toBe("");
      expect(ok.code).toBe(0);
      expect(ok.stdout.trim()).toBe("42");

      const denied = await psql("drop table x");
      expect(denied.code).not.toBe(0);
      expect(denied.stderr).toContain("42501");
      expect(denied.stderr).toContain("agate.sql.deny_drop");

      // The same config, checked by the executable alone: app_scram is least-privilege.
      const doctor = await run(["./agate", "doctor", "--config", "agate.yaml"], { env: { ...env, AGATE_TEST_PG_PASSWORD: pg.password } });
      expect(doctor.stderr).toBe("");
      expect(doctor.stdout).toContain("ok  least privilege");
      expect(doctor.code).toBe(0);
    } finally {
      gw.kill("SIGTERM");
    }
    const code = await gw.exited;
    await rest;
    if (code !== 0) throw new Error(`agate serve exited ${code} after SIGTERM:\n${await stderr}`);
    expect(code).toBe(0);

    const good = await agate("verify", "--log", auditDir, "--key", vkey);
    expect(good.code).toBe(0);
    expect(good.stdout).toStartWith("ok: ");
    expect(Number(/ok: (\d+) records/.exec(good.stdout)?.[1])).toBeGreaterThan(0);
    // The shutdown checkpoint signs every record.
    expect(good.stdout).toContain(`signed by build.test/audit; the last signs ${/ok: (\d+) records/.exec(good.stdout)?.[1]} records\n`);

    // Flip one byte in the middle of the largest segment file.
    const segments = readdirSync(auditDir).filter((f) => f.startsWith("seg-") && statSync(join(auditDir, f)).size > 8);
    expect(segments.length).toBeGreaterThan(0);
    const segment = join(auditDir, segments.sort((a, b) => statSync(join(auditDir, b)).size - statSync(join(auditDir, a)).size)[0]!);
    const bytes = readFileSync(segment);
    const middle = bytes.length >> 1;
    bytes[middle] = bytes[middle]! ^ 0xff;
    writeFileSync(segment, bytes);

    const bad = await agate("verify", "--log", auditDir);
    expect(bad.code).toBe(1);
    expect(bad.stdout).toContain("FAILED");
    expect(bad.stdout).toMatch(/record \d+/);
    if (process.env.AGATE_TEST_LOG) console.log(good.stdout + bad.stdout);
  }, 120_000);

  test("serve: an SSH connection (ssh2 and the embedded shell parser), exec allowed and refused", async () => {
    const sshd = await startSshd();
    const sub = join(dir, "ssh-gw");
    const key = "agk_" + Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("base64url");
    const port = await freePort();
    Bun.spawnSync(["mkdir", "-p", sub]);
    const keygen = await agate("keys", "generate", "--name", "build.test/ssh", "--out", "ssh-gw/audit.key");
    expect(keygen.code).toBe(0);
    writeFileSync(
      join(sub, "agate.yaml"),
      `audit: { dir: ./audit, signing_key: ./audit.key }
identity: { api_keys: [{ id: ci, sha256: ${hashApiKey(key)} }] }
connections:
  - name: web
    protocol: ssh
    listen: 127.0.0.1:${port}
    target: { host: 127.0.0.1, port: ${sshd.port}, user: ${sshd.user}, private_key_file: ${sshd.keyFile}, host_key: "${sshd.hostFingerprint}" }
`,
    );
    const gw = Bun.spawn(["../agate", "serve", "--config", "agate.yaml"], { cwd: sub, env, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
    const stderr = new Response(gw.stderr).text();
    let stdout = "";
    const reader = gw.stdout.getReader();
    const decoder = new TextDecoder();
    while (!stdout.includes("listening")) {
      const chunk = await reader.read();
      if (chunk.done) break;
      stdout += decoder.decode(chunk.value, { stream: true });
    }
    try {
      if (!stdout.includes("listening")) throw new Error(`agate serve did not start (exit ${await gw.exited}):\n${stdout}\n${await stderr}`);
      const pub = readFileSync(join(sub, "ssh", "ssh_host_ed25519_key.pub"), "utf8").trim().split(/\s+/).slice(0, 2).join(" ");
      writeFileSync(join(sub, "known_hosts"), `[127.0.0.1]:${port} ${pub}\n`);
      const client = (command: string) => ssh(["-o", `UserKnownHostsFile=${join(sub, "known_hosts")}`, "-p", String(port), "ci@127.0.0.1", command], { password: key });
      const ok = await client("echo hi; sh -c 'exit 7'");
      expect([ok.code, ok.stdout.toString(), ok.stderr.toString()]).toEqual([7, "hi\n", ""]);
      const refused = await client("bash -c 'rm -rf /'");
      expect(refused.code).toBe(126);
      expect(refused.stderr.toString()).toContain("agate.ssh.deny_rm_system");
      // The same keys, from the CLI: what an operator hands to clients' known_hosts.
      const hostKeys = await agate("ssh", "host-keys", "--config", "ssh-gw/agate.yaml");
      expect(hostKeys.code).toBe(0);
      expect(hostKeys.stdout).toContain(readFileSync(join(sub, "ssh", "ssh_host_ed25519_key.pub"), "utf8").trim().split(/\s+/)[1]!);
      expect(hostKeys.stdout).toMatch(/^web ssh-ed25519 SHA256:[A-Za-z0-9+/]{43}$/m);
      expect(hostKeys.stdout).toMatch(/^web ssh-rsa SHA256:[A-Za-z0-9+/]{43}$/m);
    } finally {
      gw.kill("SIGTERM");
      await gw.exited;
      await sshd.close();
    }
    const verified = await run(["./agate", "verify", "--log", join(sub, "audit"), "--key", keygen.stdout.trim()]);
    expect(verified.code).toBe(0);
  }, 120_000);
});
