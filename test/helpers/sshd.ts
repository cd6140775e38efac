/**
 * A real OpenSSH sshd on loopback for tests: its own config, host key and
 * authorized_keys in a temporary folder, started with `sshd -D -e -f`.
 *
 * The target user is whoever runs the tests (root in CI): a non-root sshd
 * can only log in the user running it, and root may log in with a key
 * (PermitRootLogin prohibit-password), so this works on a clean machine
 * either way without creating users. StrictModes is off because the
 * authorized_keys file lives under /tmp (world-writable, which StrictModes
 * refuses along the path); the file itself is 0600. As root, sshd needs its
 * privilege-separation directory /run/sshd.
 */
import { spawn, type Subprocess } from "bun";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";

export const SSHD = ["/usr/sbin/sshd", "/usr/local/sbin/sshd"].find((p) => existsSync(p));

export interface TestSshd {
  host: string;
  port: number;
  user: string;
  dir: string;
  /** The client key agate (and the direct client) logs in with. */
  keyFile: string;
  /** The sshd host key's public half ("ssh-ed25519 AAAA…") and its SHA256 fingerprint. */
  hostKey: string;
  hostFingerprint: string;
  /** A known_hosts file for clients connecting directly. */
  knownHosts: string;
  /** What sshd logged so far (-e: its log on stderr). */
  readonly log: string;
  /** Run OpenSSH's ssh straight to this sshd. */
  direct(command: string, stdin?: string): Promise<{ code: number; stdout: Buffer; stderr: Buffer }>;
  close(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

async function run(argv: string[]): Promise<void> {
  const p = spawn(argv, { stdout: "pipe", stderr: "pipe" });
  const code = await p.exited;
  if (code !== 0) throw new Error(`${argv.join(" ")} exited ${code}: ${await new Response(p.stderr).text()}`);
}

export async function startSshd(): Promise<TestSshd> {
  if (!SSHD) throw new Error("sshd is not installed (apt-get install -y openssh-server; scripts/setup.sh does)");
  const dir = mkdtempSync(join(tmpdir(), "agate-sshd-"));
  // os.userInfo() answers "unknown" under Bun on some machines: ask id(1).
  const user = (await new Response(spawn(["id", "-un"], { stdout: "pipe" }).stdout).text()).trim() || userInfo().username;
  if (process.getuid?.() === 0) mkdirSync("/run/sshd", { recursive: true, mode: 0o755 });
  await run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", join(dir, "host_ed25519"), "-C", "test-sshd"]);
  const keyFile = join(dir, "client_ed25519");
  await run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keyFile, "-C", "agate-target"]);
  writeFileSync(join(dir, "authorized_keys"), readFileSync(`${keyFile}.pub`), { mode: 0o600 });
  const hostKey = readFileSync(join(dir, "host_ed25519.pub"), "utf8").trim().split(/\s+/).slice(0, 2).join(" ");
  const fp = spawn(["ssh-keygen", "-l", "-E", "sha256", "-f", join(dir, "host_ed25519.pub")], { stdout: "pipe" });
  const hostFingerprint = (await new Response(fp.stdout).text()).split(/\s+/)[1]!;
  let port = 0;
  let proc: Subprocess<"ignore", "pipe", "pipe"> | undefined;
  let log = "";
  // A port found free may be taken before sshd binds it: try another.
  for (let attempt = 0; attempt < 5 && !proc; attempt++) {
    port = await freePort();
    writeFileSync(
      join(dir, "sshd_config"),
      [
        `Port ${port}`,
        "ListenAddress 127.0.0.1",
        `HostKey ${join(dir, "host_ed25519")}`,
        `AuthorizedKeysFile ${join(dir, "authorized_keys")}`,
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "PermitRootLogin prohibit-password",
        "PidFile none",
        "LogLevel VERBOSE",
        "AcceptEnv NONE",
        "",
      ].join("\n"),
    );
    const p = spawn([SSHD, "-D", "-e", "-f", join(dir, "sshd_config")], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
    const stderr = p.stderr.getReader();
    const dec = new TextDecoder();
    // sshd logs "Server listening on 127.0.0.1 port N." once it accepts.
    for (;;) {
      const { value, done } = await stderr.read();
      if (done) break;
      log += dec.decode(value);
      if (log.includes("Server listening on")) break;
    }
    if (log.includes("Server listening on")) {
      proc = p;
      // Keep draining its log, so sshd never blocks on a full pipe.
      void (async () => {
        for (;;) {
          const { value, done } = await stderr.read();
          if (done) return;
          log += dec.decode(value);
        }
      })();
    } else await p.exited;
  }
  if (!proc) throw new Error(`sshd did not start: ${log}`);
  await new Promise<void>((resolve, reject) => connect(port, "127.0.0.1").once("connect", function (this: import("node:net").Socket) { this.destroy(); resolve(); }).once("error", reject));
  const knownHosts = join(dir, "known_hosts");
  writeFileSync(knownHosts, `[127.0.0.1]:${port} ${hostKey}\n`);
  const sshd = proc;
  return {
    host: "127.0.0.1",
    port,
    user,
    dir,
    keyFile,
    hostKey,
    hostFingerprint,
    knownHosts,
    direct: (command, stdin) => ssh(["-i", keyFile, "-o", "IdentitiesOnly=yes", "-o", `UserKnownHostsFile=${knownHosts}`, "-p", String(port), `${user}@127.0.0.1`, command], { stdin }),
    close: async () => {
      sshd.kill();
      await sshd.exited;
      rmSync(dir, { recursive: true, force: true });
    },
    get log() {
      return log;
    },
  } as TestSshd;
}

/**
 * OpenSSH's ssh with no user or system config; `password` goes in through sshpass (SSHPASS), otherwise batch mode.
 * `args`: options, then the destination (user@host) and the command. Options given win over the defaults (ssh keeps the first value).
 */
export async function ssh(args: string[], o: { stdin?: string | Uint8Array; password?: string } = {}): Promise<{ code: number; stdout: Buffer; stderr: Buffer }> {
  const at = args.findIndex((a) => /^[^-].*@/.test(a));
  const defaults = ["-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=60", ...(o.password !== undefined ? ["-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1"] : ["-o", "BatchMode=yes"])];
  const argv = [...(o.password !== undefined ? ["sshpass", "-e"] : []), "ssh", "-F", "/dev/null", ...args.slice(0, at), ...defaults, ...args.slice(at)];
  const p = spawn(argv, { stdin: o.stdin === undefined ? "ignore" : "pipe", stdout: "pipe", stderr: "pipe", env: { ...process.env, ...(o.password !== undefined ? { SSHPASS: o.password } : {}) } });
  if (o.stdin !== undefined && p.stdin) {
    p.stdin.write(o.stdin);
    await p.stdin.end();
  }
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).arrayBuffer(), new Response(p.stderr).arrayBuffer(), p.exited]);
  return { code, stdout: Buffer.from(stdout), stderr: Buffer.from(stderr) };
}
