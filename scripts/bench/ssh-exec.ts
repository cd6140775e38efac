/**
 * SSH exec through agate against a direct connection to the same sshd, in one
 * run (the first step of issue 15's scripts/bench/ssh.sh): a real OpenSSH
 * sshd on loopback (test/helpers/sshd.ts), ssh2's Client on one connection
 * each way, so connection set-up is not counted.
 *
 * - exec:  N sequential short execs (`true`): per-exec time, p50/p99, ratio
 *          (target: through agate <= 2x direct).
 * - bulk:  `head -c BYTES /dev/zero` streamed back: MB/s, ratio (target >= 0.7),
 *          with the default policy's mask (the secret detectors) applied.
 *
 *   bun scripts/bench/ssh-exec.ts [--execs 200] [--bytes 209715200] [--no-mask]
 *
 * --no-mask: a policy mask with no detectors (what the relay itself costs).
 *
 * The machine may be shared: run it twice and read the ratios, not the times.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Client } from "ssh2";
import { generateKey } from "../../src/audit/note.ts";
import { parseConfig } from "../../src/config/index.ts";
import { createLogger } from "../../src/core/log.ts";
import { startGateway } from "../../src/gateway.ts";
import { hashApiKey } from "../../src/identity/apikey.ts";
import { startSshd } from "../../test/helpers/sshd.ts";
import { printHelp } from "./stack.ts";

const { values } = parseArgs({ args: Bun.argv.slice(2), options: { execs: { type: "string" }, bytes: { type: "string" }, "no-mask": { type: "boolean" }, help: { type: "boolean", short: "h" } } });
if (values.help) printHelp(import.meta.path);
const EXECS = Number(values.execs ?? 200);
const BYTES = Number(values.bytes ?? 200 * 1024 * 1024);
const KEY = "agk_bench_key_for_ssh_exec_0123456789abcdef";

const sshd = await startSshd();
const dir = mkdtempSync(join(tmpdir(), "agate-bench-ssh-"));
writeFileSync(join(dir, "audit.key"), generateKey("bench/audit").signerKey, { mode: 0o600 });
const gateway = await startGateway(
  parseConfig(
    {
      audit: { dir: "./audit", signing_key: "./audit.key" },
      identity: { api_keys: [{ id: "bench", sha256: hashApiKey(KEY) }] },
      connections: [{ name: "web", protocol: "ssh", listen: "127.0.0.1:0", target: { host: sshd.host, port: sshd.port, user: sshd.user, private_key_file: sshd.keyFile, host_key: sshd.hostFingerprint } }],
      log_level: "error",
      ...(values["no-mask"] ? { policy: { data: { agate: { config: { mask: { detectors: [] } } } } } } : {}),
    },
    dir,
  ),
  createLogger("error"),
);

async function connect(port: number, username: string, auth: { password?: string; privateKey?: string }): Promise<Client> {
  const c = new Client();
  await new Promise<void>((resolve, reject) => {
    c.once("ready", () => resolve()).once("error", reject);
    c.connect({ host: "127.0.0.1", port, username, ...auth, hostVerifier: () => true });
  });
  return c;
}

function exec(c: Client, command: string): Promise<{ code: number | null; bytes: number }> {
  return new Promise((resolve, reject) =>
    c.exec(command, (err, ch) => {
      if (err) return reject(err);
      let bytes = 0;
      let code: number | null = null;
      ch.on("data", (b: Buffer) => (bytes += b.length));
      ch.stderr.on("data", () => {});
      ch.on("exit", (x: number | null) => (code = x));
      ch.on("close", () => resolve({ code, bytes }));
    }),
  );
}

const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))]!;

async function measure(name: string, c: Client) {
  for (let i = 0; i < 10; i++) await exec(c, "true"); // warm-up
  const times: number[] = [];
  const t0 = performance.now();
  for (let i = 0; i < EXECS; i++) {
    const t = performance.now();
    const r = await exec(c, "true");
    if (r.code !== 0) throw new Error(`${name}: true exited ${r.code}`);
    times.push(performance.now() - t);
  }
  const perExec = (performance.now() - t0) / EXECS;
  const b0 = performance.now();
  const bulk = await exec(c, `head -c ${BYTES} /dev/zero`);
  const secs = (performance.now() - b0) / 1000;
  if (bulk.bytes !== BYTES) throw new Error(`${name}: got ${bulk.bytes} of ${BYTES} bytes`);
  return { perExec, p50: pct(times, 50), p99: pct(times, 99), mbps: BYTES / 1e6 / secs };
}

try {
  const direct = await connect(sshd.port, sshd.user, { privateKey: await Bun.file(sshd.keyFile).text() });
  const through = await connect(gateway.listeners[0]!.port, "bench", { password: KEY });
  const d = await measure("direct", direct);
  const a = await measure("agate", through);
  direct.end();
  through.end();
  const f = (n: number) => n.toFixed(2);
  console.log(`exec x${EXECS} (one connection, sequential 'true'):`);
  console.log(`  direct  ${f(d.perExec)} ms/exec  p50 ${f(d.p50)}  p99 ${f(d.p99)}`);
  console.log(`  agate   ${f(a.perExec)} ms/exec  p50 ${f(a.p50)}  p99 ${f(a.p99)}   ratio ${f(a.perExec / d.perExec)}x (target <= 2)`);
  console.log(`bulk ${(BYTES / 1e6).toFixed(0)} MB (head -c /dev/zero), ${values["no-mask"] ? "no mask" : "default mask"}:`);
  console.log(`  direct  ${d.mbps.toFixed(0)} MB/s`);
  console.log(`  agate   ${a.mbps.toFixed(0)} MB/s   ratio ${f(a.mbps / d.mbps)} (target >= 0.7)`);
} finally {
  await gateway.close();
  await sshd.close();
  rmSync(dir, { recursive: true, force: true });
}
