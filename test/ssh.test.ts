/**
 * SSH exec through agate against a real OpenSSH sshd on loopback (test/helpers/sshd.ts),
 * with OpenSSH's ssh (password through sshpass) and ssh2's Client (keyboard-interactive):
 * output, stderr and exit status byte-identical to a direct connection; refused commands
 * never run (a marker file stays absent), wherever the parser finds them; bad keys and a
 * target whose host key does not match are refused and recorded; the log verifies.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Client } from "ssh2";
import { readRecords, verifyLog } from "../src/audit/index.ts";
import { generateKey, parseVerifierKey } from "../src/audit/note.ts";
import { parseConfig } from "../src/config/index.ts";
import { createLogger } from "../src/core/log.ts";
import { startGateway, type Gateway } from "../src/gateway.ts";
import { hashApiKey } from "../src/identity/apikey.ts";
import { ssh, startSshd, type TestSshd } from "./helpers/sshd.ts";

const API_KEY = "agk_test_key_for_ssh_tests_only_0123456789";
const USER = "ci-runner";

interface SshGateway {
  gateway: Gateway;
  port: number;
  dir: string;
  auditDir: string;
  verifierKey: string;
  knownHosts: string;
  run(command: string, o?: { stdin?: string | Uint8Array; key?: string; user?: string }): Promise<{ code: number; stdout: Buffer; stderr: Buffer }>;
  records(type: string, until: (rs: Record<string, unknown>[]) => boolean): Promise<Record<string, unknown>[]>;
  close(): Promise<void>;
}

async function startSshGateway(sshd: TestSshd, target: Record<string, unknown> = {}, extra: Record<string, unknown> = {}, connection: Record<string, unknown> = {}): Promise<SshGateway> {
  const dir = mkdtempSync(join(tmpdir(), "agate-ssh-gw-"));
  const { signerKey, verifierKey } = generateKey("agate.test/audit");
  writeFileSync(join(dir, "audit.key"), signerKey, { mode: 0o600 });
  const config = parseConfig(
    {
      audit: { dir: "./audit", signing_key: "./audit.key", checkpoint: { every_records: 10_000, every_seconds: 0.25 } },
      identity: { api_keys: [{ id: USER, groups: ["ci"], kind: "service", sha256: hashApiKey(API_KEY) }] },
      lockout: { delay_after: 0, block_after: 0 },
      connections: [
        {
          name: "web",
          protocol: "ssh",
          listen: "127.0.0.1:0",
          target: { host: sshd.host, port: sshd.port, user: sshd.user, private_key_file: sshd.keyFile, host_key: sshd.hostFingerprint, ...target },
          ...connection,
        },
      ],
      log_level: process.env.AGATE_TEST_LOG ?? "warn",
      ...extra,
    },
    dir,
  );
  const gateway = await startGateway(config, createLogger(config.log_level));
  const port = gateway.listeners[0]!.port;
  const pub = readFileSync(join(dir, "ssh", "ssh_host_ed25519_key.pub"), "utf8").trim().split(/\s+/).slice(0, 2).join(" ");
  const knownHosts = join(dir, "client_known_hosts");
  writeFileSync(knownHosts, `[127.0.0.1]:${port} ${pub}\n`);
  const auditDir = join(dir, "audit");
  return {
    gateway,
    port,
    dir,
    auditDir,
    verifierKey,
    knownHosts,
    run: (command, o = {}) => ssh(["-o", `UserKnownHostsFile=${knownHosts}`, "-p", String(port), `${o.user ?? USER}@127.0.0.1`, command], { password: o.key ?? API_KEY, ...(o.stdin !== undefined ? { stdin: o.stdin } : {}) }),
    records: async (type, until) => {
      let rs: Record<string, unknown>[] = [];
      for (let i = 0; i < 400; i++) {
        rs = [];
        for await (const r of readRecords(auditDir)) if (r.type === type) rs.push(r);
        if (until(rs)) break;
        await Bun.sleep(25);
      }
      return rs;
    },
    close: async () => {
      await gateway.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** ssh2's Client logging in with keyboard-interactive; runs `commands` one after another on one connection. */
async function ssh2Run(port: number, commands: string[], key = API_KEY): Promise<{ code: number | null; signal?: string; stdout: string; stderr: string }[]> {
  const c = new Client();
  await new Promise<void>((resolve, reject) => {
    c.once("ready", () => resolve()).once("error", reject);
    c.on("keyboard-interactive", (_n, _i, _l, prompts, finish) => finish(prompts.map(() => key)));
    c.connect({ host: "127.0.0.1", port, username: USER, tryKeyboard: true, hostVerifier: () => true });
  });
  const out: { code: number | null; signal?: string; stdout: string; stderr: string }[] = [];
  try {
    for (const command of commands) {
      out.push(
        await new Promise((resolve, reject) => {
          c.exec(command, (err, ch) => {
            if (err) return reject(err);
            let stdout = "";
            let stderr = "";
            let code: number | null = null;
            let signal: string | undefined;
            ch.on("data", (b: Buffer) => (stdout += b.toString()));
            ch.stderr.on("data", (b: Buffer) => (stderr += b.toString()));
            ch.on("exit", (c2: number | null, s?: string) => {
              code = c2;
              signal = s;
            });
            ch.on("close", () => resolve({ code, ...(signal ? { signal } : {}), stdout, stderr }));
          });
        }),
      );
    }
  } finally {
    c.end();
  }
  return out;
}

let sshd: TestSshd;
let gw: SshGateway;
const work = mkdtempSync(join(tmpdir(), "agate-ssh-work-"));
const marker = (name: string) => join(work, name);

beforeAll(async () => {
  sshd = await startSshd();
  gw = await startSshGateway(sshd);
});

afterAll(async () => {
  await gw?.close();
  await sshd?.close();
  rmSync(work, { recursive: true, force: true });
});

describe("host keys", () => {
  test("generated on first start, mode 0600, kept across restarts", async () => {
    const file = join(gw.dir, "ssh", "ssh_host_ed25519_key");
    const rsa = join(gw.dir, "ssh", "ssh_host_rsa_key");
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(statSync(rsa).mode & 0o777).toBe(0o600);
    const before = readFileSync(file, "utf8");
    // A second gateway on the same state folder uses the same keys: the client's known_hosts entry still holds.
    const again = await startGateway(
      parseConfig(
        {
          audit: { dir: "./audit2", signing_key: "./audit.key" },
          identity: { api_keys: [{ id: USER, sha256: hashApiKey(API_KEY) }] },
          connections: [{ name: "web", protocol: "ssh", listen: "127.0.0.1:0", host_keys_dir: "./ssh", target: { host: sshd.host, port: sshd.port, user: sshd.user, private_key_file: sshd.keyFile, host_key: sshd.hostFingerprint } }],
          log_level: "error",
        },
        gw.dir,
      ),
      createLogger("error"),
    );
    try {
      expect(readFileSync(file, "utf8")).toBe(before);
      const pub = readFileSync(`${file}.pub`, "utf8").trim().split(/\s+/).slice(0, 2).join(" ");
      writeFileSync(join(gw.dir, "kh2"), `[127.0.0.1]:${again.listeners[0]!.port} ${pub}\n`);
      const r = await ssh(["-o", `UserKnownHostsFile=${join(gw.dir, "kh2")}`, "-p", String(again.listeners[0]!.port), `${USER}@127.0.0.1`, "echo same-key"], { password: API_KEY });
      expect(r.stdout.toString()).toBe("same-key\n");
    } finally {
      await again.close();
    }
  });

  test("a client offering only weak algorithms is refused", async () => {
    const r = await ssh(["-o", `UserKnownHostsFile=${gw.knownHosts}`, "-o", "KexAlgorithms=diffie-hellman-group14-sha1", "-o", "LogLevel=INFO", "-p", String(gw.port), `${USER}@127.0.0.1`, "true"], { password: API_KEY });
    expect(r.code).toBe(255);
    expect(r.stderr.toString()).toContain("no matching key exchange method found");
  });
});

describe("exec through agate is the exec on the target", () => {
  const lines = [
    "echo hello",
    "printf 'a\\0b\\377\\n'; echo to-stderr >&2; exit 3",
    "seq 1 100000",
    "for i in 1 2 3; do echo out $i; echo err $i >&2; done; false",
    "exit 0",
    "sh -c 'exit 42'",
    "cat /nonexistent-file",
    "echo \"$((6 * 7))\" 'single quoted' $'ansi\\tc'",
  ];
  for (const line of lines) {
    test(line, async () => {
      // One after the other: the target user's shell start-up files (a pyenv rehash, say) may race with themselves.
      const direct = await sshd.direct(line);
      const through = await gw.run(line);
      expect(through.stderr.toString()).toBe(direct.stderr.toString());
      expect(Buffer.compare(through.stdout, direct.stdout)).toBe(0);
      expect(through.code).toBe(direct.code);
    });
  }

  test("stdin reaches the command (cat, wc -c), byte for byte", async () => {
    const input = Buffer.alloc(300_000);
    for (let i = 0; i < input.length; i++) input[i] = (i * 7919) & 0xff;
    const direct = await ssh(["-i", sshd.keyFile, "-o", "IdentitiesOnly=yes", "-o", `UserKnownHostsFile=${sshd.knownHosts}`, "-p", String(sshd.port), `${sshd.user}@127.0.0.1`, "sha256sum; echo done"], { stdin: input });
    const through = await ssh(["-o", `UserKnownHostsFile=${gw.knownHosts}`, "-p", String(gw.port), `${USER}@127.0.0.1`, "sha256sum; echo done"], { password: API_KEY, stdin: input });
    expect(through.stdout.toString()).toBe(direct.stdout.toString());
    expect(through.stdout.toString()).toBe(`${new Bun.CryptoHasher("sha256").update(input).digest("hex")}  -\ndone\n`);
    expect(through.code).toBe(0);
    expect(direct.code).toBe(0);
  });

  test("a signal that ends the command is relayed as the signal", async () => {
    const [r] = await ssh2Run(gw.port, ["kill -TERM $$"]);
    expect(r!.code).toBeNull();
    expect(r!.signal).toBe("SIGTERM");
  });

  test("a signal the client sends is passed to the target's channel", async () => {
    // sshd refuses to deliver signals to a session it runs without privilege separation (a root
    // login, as in CI: "session signalling requires privilege separation"), so what is checked is
    // that the request reached the target, by sshd's own log, and that the command still ends.
    const before = sshd.log.split("session_signal_req").length;
    const c = new Client();
    await new Promise<void>((resolve, reject) => {
      c.once("ready", () => resolve()).once("error", reject);
      c.connect({ host: "127.0.0.1", port: gw.port, username: USER, password: API_KEY, hostVerifier: () => true });
    });
    try {
      const r = await new Promise<{ code: number | null; stdout: string }>((resolve, reject) =>
        c.exec("echo started; read line; echo after", (err, ch) => {
          if (err) return reject(err);
          let stdout = "";
          let code: number | null = null;
          let signalled = false;
          ch.on("data", async (b: Buffer) => {
            stdout += b.toString();
            if (!signalled && stdout.includes("started")) {
              signalled = true;
              ch.signal("INT");
              while (sshd.log.split("session_signal_req").length === before) await Bun.sleep(25);
              ch.end("go on\n");
            }
          });
          ch.stderr.on("data", () => {});
          ch.on("exit", (x: number | null) => (code = x));
          ch.on("close", () => resolve({ code, stdout }));
        }),
      );
      expect(sshd.log.split("session_signal_req").length).toBeGreaterThan(before);
      expect(r).toEqual({ code: 0, stdout: "started\nafter\n" });
    } finally {
      c.end();
    }
  });

  test("records: the command with its exec facts, the outcome with its exit status; the log verifies", async () => {
    const line = `printf '%s' "$(echo facts-check)" | wc -c; exit 5`;
    const r = await gw.run(line);
    expect(r.code).toBe(5);
    const commands = await gw.records("command", (rs) => rs.some((x) => x.text === line));
    const cmd = commands.find((x) => x.text === line)!;
    expect(cmd.decision).toMatchObject({ allow: true });
    const facts = cmd.exec as { commands: { name: string; via: string[]; pipeline?: number; stage?: number }[]; pipelines: string[][] };
    expect(facts.commands.map((c) => c.name).sort()).toEqual(["echo", "exit", "printf", "wc"]);
    expect(facts.commands.find((c) => c.name === "echo")!.via).toEqual(["$()"]);
    expect(facts.commands.find((c) => c.name === "wc")).toMatchObject({ pipeline: 0, stage: 1 });
    const outcomes = await gw.records("outcome", (rs) => rs.some((x) => x.session === cmd.session && (x.seqs as number[]).includes(cmd.seq as number)));
    const out = outcomes.find((x) => x.session === cmd.session)!;
    expect(out.exit).toEqual({ status: 5 });
    expect(out.bytes).toBe(3); // "11\n"
    expect(typeof out.duration_ms).toBe("number");
    const starts = await gw.records("session_start", (rs) => rs.some((x) => x.session === cmd.session));
    expect(starts.find((x) => x.session === cmd.session)).toMatchObject({ identity: { subject: USER }, connection: { name: "web", protocol: "ssh" } });
    await gw.records("session_end", (rs) => rs.some((x) => x.session === cmd.session));
    const v = await verifyLog(gw.auditDir, { key: parseVerifierKey(gw.verifierKey) });
    expect(v).toMatchObject({ ok: true });
  });

  test("secrets in the output are masked (the default policy's secret detectors)", async () => {
    const secret = "AKIAIOSFODNN7EXAMPLE";
    const r = await gw.run(`echo "key=${secret.slice(0, 10)}""${secret.slice(10)}"`);
    expect(r.stdout.toString()).not.toContain(secret);
    expect(r.stdout.toString()).toContain("REDACTED");
  });
});

describe("refused commands never run", () => {
  const tricks: [string, (m: string) => string, string][] = [
    ["plain", (m) => `touch ${m}; rm -rf /`, "agate.ssh.deny_rm_system"],
    ["sh -c", (m) => `sh -c 'touch ${m}; rm -rf /'`, "agate.ssh.deny_rm_system"],
    ["bash -c in a subshell", (m) => `(touch ${m}; bash -c "rm -rf /etc")`, "agate.ssh.deny_rm_system"],
    ["command substitution", (m) => `touch ${m}; echo $(reboot)`, "agate.ssh.deny_power"],
    ["pipe to a shell", (m) => `echo "touch ${m}" | sh`, "agate.ssh.deny_opaque"],
    ["curl to a shell", (m) => `touch ${m}; curl -s http://127.0.0.1:1/x | sudo bash`, "agate.ssh.deny_download_exec"],
    ["eval", (m) => `eval "touch ${m}; halt"`, "agate.ssh.deny_power"],
    ["find -exec", (m) => `touch ${m}; find /tmp -maxdepth 0 -exec cat /etc/shadow \\;`, "agate.ssh.deny_secret_read"],
    ["computed script", (m) => `bash -c "$(echo touch ${m})"`, "agate.ssh.deny_opaque"],
    ["here-document", (m) => `sh <<EOF\ntouch ${m}\nmkfs.ext4 /dev/loop9\nEOF`, "agate.ssh.deny_mkfs"],
    ["ansi-c quoting", (m) => `touch ${m}; $'\\x72\\x6d' -rf /`, "agate.ssh.deny_rm_system"],
    ["dd to a device", (m) => `touch ${m} && dd if=/dev/zero of=/dev/sda count=0`, "agate.ssh.deny_device_write"],
    ["unparseable", (m) => `touch ${m}; echo 'unterminated`, "agate.exec_parse"],
  ];
  for (const [name, make, rule] of tricks) {
    test(name, async () => {
      const m = marker(name.replace(/\W+/g, "-"));
      const line = make(m);
      const r = await gw.run(line);
      expect(r.code).toBe(126);
      const err = r.stderr.toString();
      expect(err).toContain(`${rule}: `);
      expect(err.trim().split("\n")).toHaveLength(1);
      expect(r.stdout.length).toBe(0);
      expect(existsSync(m)).toBe(false);
      const commands = await gw.records("command", (rs) => rs.some((x) => x.text === line));
      expect(commands.find((x) => x.text === line)!.decision).toMatchObject({ allow: false });
    });
  }

  test("after a refusal the connection serves the next channel (ssh2 client, keyboard-interactive)", async () => {
    const m = marker("same-connection");
    const [refused, allowed] = await ssh2Run(gw.port, [`touch ${m}; reboot`, "echo still-here"]);
    expect(refused!.code).toBe(126);
    expect(refused!.stderr).toContain("agate.ssh.deny_power: ");
    expect(existsSync(m)).toBe(false);
    expect(allowed).toEqual({ code: 0, stdout: "still-here\n", stderr: "" });
  });

  test("a rule switched off with allow_rules lets the command run", async () => {
    const g = await startSshGateway(sshd, {}, { policy: { data: { agate: { config: { connections: { web: { allow_rules: ["deny_opaque"] } } } } } } });
    try {
      const m = marker("allowed-by-data");
      const [r] = await ssh2Run(g.port, [`echo "touch ${m}" | sh`]);
      expect(r!.code).toBe(0);
      expect(existsSync(m)).toBe(true);
    } finally {
      await g.close();
    }
  });
});

describe("held for approval", () => {
  const APPROVER_KEY = "agk_test_approver_key_for_ssh_tests_0123";
  let g: SshGateway;
  beforeAll(async () => {
    g = await startSshGateway(sshd, {}, {
      identity: { api_keys: [{ id: USER, groups: ["ci"], kind: "service", sha256: hashApiKey(API_KEY) }, { id: "olivia", groups: ["ops"], kind: "human", sha256: hashApiKey(APPROVER_KEY) }] },
      admin: { listen: "127.0.0.1:0" },
      policy: { data: { agate: { config: { connections: { web: { approvals: { approvers: ["ops"] } } } } } } },
    });
  });
  afterAll(() => g?.close());

  /** Run `command` with ssh2; `onHeld` gets the request id from the stderr line that announces the hold. */
  async function held(command: string, onHeld: (id: string) => Promise<void>): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const c = new Client();
    await new Promise<void>((resolve, reject) => {
      c.once("ready", () => resolve()).once("error", reject);
      c.connect({ host: "127.0.0.1", port: g.port, username: USER, password: API_KEY, hostVerifier: () => true });
    });
    try {
      return await new Promise((resolve, reject) => {
        c.exec(command, (err, ch) => {
          if (err) return reject(err);
          let stdout = "";
          let stderr = "";
          let code: number | null = null;
          let told = false;
          ch.on("data", (b: Buffer) => (stdout += b.toString()));
          ch.stderr.on("data", (b: Buffer) => {
            stderr += b.toString();
            const id = /waits for approval by ops: request (\S+),/.exec(stderr)?.[1];
            if (id && !told) {
              told = true;
              onHeld(id).catch(reject);
            }
          });
          ch.on("exit", (x: number | null) => (code = x));
          ch.on("close", () => resolve({ code, stdout, stderr }));
        });
      });
    } finally {
      c.end();
    }
  }

  const decide = async (id: string, how: "approve" | "deny", reason: string) => {
    const admin = g.gateway.admin!;
    const res = await fetch(`http://${admin.host}:${admin.port}/v1/approvals/${id}/${how}`, { method: "POST", headers: { authorization: `Bearer ${APPROVER_KEY}`, "content-type": "application/json" }, body: JSON.stringify({ reason }) });
    expect(res.status).toBe(200);
  };

  test("approved through the API: it runs", async () => {
    const m = marker("held-approved");
    const r = await held(`sudo -n true 2>/dev/null; touch ${m}; echo ran`, (id) => decide(id, "approve", "ticket OPS-1"));
    expect(r.stderr).toContain("(agate.ssh.approve_privileged: sudo at the top of the line runs a command with another user's privileges)");
    expect(r.stdout).toBe("ran\n");
    expect(r.code).toBe(0);
    expect(existsSync(m)).toBe(true);
    const commands = await g.records("command", (rs) => rs.some((x) => String(x.text).includes(m)));
    const rec = commands.find((x) => String(x.text).includes(m))!;
    expect(rec.decision).toMatchObject({ allow: true });
    expect(rec.approval).toMatchObject({ granted_by: [{ subject: "olivia", reason: "ticket OPS-1" }] });
  });

  test("closing the channel while held withdraws the request", async () => {
    const m = marker("held-withdrawn");
    const c = new Client();
    await new Promise<void>((resolve, reject) => {
      c.once("ready", () => resolve()).once("error", reject);
      c.connect({ host: "127.0.0.1", port: g.port, username: USER, password: API_KEY, hostVerifier: () => true });
    });
    const id = await new Promise<string>((resolve, reject) => {
      c.exec(`sudo -n true; touch ${m}`, (err, ch) => {
        if (err) return reject(err);
        let stderr = "";
        ch.stderr.on("data", (b: Buffer) => {
          stderr += b.toString();
          const found = /request (\S+),/.exec(stderr)?.[1];
          if (found) {
            ch.close();
            resolve(found);
          }
        });
      });
    });
    const admin = g.gateway.admin!;
    let status = "pending";
    for (let i = 0; i < 400 && status === "pending"; i++) {
      const res = await fetch(`http://${admin.host}:${admin.port}/v1/approvals/${id}`, { headers: { authorization: `Bearer ${APPROVER_KEY}` } });
      status = ((await res.json()) as { status: string }).status;
      if (status === "pending") await Bun.sleep(25);
    }
    c.end();
    expect(status).toBe("withdrawn");
    expect(existsSync(m)).toBe(false);
  });

  test("denied through the API: 126, never run", async () => {
    const m = marker("held-denied");
    const r = await held(`sudo -n true; touch ${m}`, (id) => decide(id, "deny", "not today"));
    expect(r.code).toBe(126);
    expect(r.stderr).toContain("agate.approval.denied");
    expect(existsSync(m)).toBe(false);
  });
});

describe("with worker threads", () => {
  test("workers: 2: SSH is served (by the main thread), refusals too", async () => {
    const g = await startSshGateway(sshd, {}, { workers: 2 });
    try {
      const m = marker("workers-refused");
      expect((await g.run("echo from-main")).stdout.toString()).toBe("from-main\n");
      const refused = await g.run(`touch ${m}; reboot`);
      expect(refused.code).toBe(126);
      expect(existsSync(m)).toBe(false);
    } finally {
      await g.close();
    }
  });
});

describe("limits", () => {
  test("idle_session_timeout_s ends a session no channel uses, recorded; a running command is never idle", async () => {
    const limited = await startSshGateway(sshd, {}, {}, { limits: { idle_session_timeout_s: 2 } });
    try {
      // A command that runs longer than the idle timeout is not cut.
      const [slow] = await ssh2Run(limited.port, ["sleep 3; echo done"]);
      expect(slow).toEqual({ code: 0, stdout: "done\n", stderr: "" });
      const c = new Client();
      const closed = new Promise<void>((resolve) => c.once("close", () => resolve()));
      await new Promise<void>((resolve, reject) => {
        c.once("ready", () => resolve()).once("error", reject);
        c.connect({ host: "127.0.0.1", port: limited.port, username: USER, password: API_KEY, hostVerifier: () => true });
      });
      await closed;
      const ends = await limited.records("session_end", (rs) => rs.some((x) => x.code === "IDLE_SESSION_TIMEOUT"));
      expect(ends.filter((x) => x.code === "IDLE_SESSION_TIMEOUT")).toHaveLength(1);
    } finally {
      await limited.close();
    }
  });
});

describe("refused sessions and requests", () => {
  test("a bad API key: SSH auth failure and a session_refused record", async () => {
    const r = await gw.run("echo never", { key: "agk_not_a_real_key_000000000000000000" });
    expect(r.code).toBe(255);
    expect(r.stderr.toString()).toContain("Permission denied");
    const refused = await gw.records("session_refused", (rs) => rs.some((x) => x.code === "AUTH_FAILED" || String(x.code).startsWith("AUTH")));
    expect(refused.some((x) => String(x.code).startsWith("AUTH") && x.user === USER)).toBe(true);
  });

  test("a key for another user name is refused", async () => {
    const r = await gw.run("echo never", { user: "someone-else" });
    expect(r.code).toBe(255);
    const refused = await gw.records("session_refused", (rs) => rs.some((x) => x.user === "someone-else"));
    expect(refused.find((x) => x.user === "someone-else")!.code).toMatch(/^AUTH/);
  });

  test("a target whose host key does not match: refused with a clear message, recorded", async () => {
    const wrong = await startSshGateway(sshd, { host_key: "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" });
    try {
      const m = marker("host-key-mismatch");
      const r = await wrong.run(`touch ${m}`);
      expect(r.code).toBe(255);
      expect(r.stderr.toString()).toContain("host key does not match");
      expect(r.stderr.toString()).toContain(sshd.hostFingerprint);
      expect(existsSync(m)).toBe(false);
      const ends = await wrong.records("session_end", (rs) => rs.some((x) => x.code === "UPSTREAM_HOST_KEY"));
      expect(ends.find((x) => x.code === "UPSTREAM_HOST_KEY")!.reason).toContain("host key does not match");
    } finally {
      await wrong.close();
    }
  });

  test("accept-new records the first key seen and requires it afterwards", async () => {
    const g = await startSshGateway(sshd, { host_key: "accept-new" });
    try {
      expect((await g.run("echo first")).stdout.toString()).toBe("first\n");
      const kh = readFileSync(join(g.dir, "ssh", "known_hosts"), "utf8");
      expect(kh).toContain(sshd.hostKey.split(" ")[1]!);
      writeFileSync(join(g.dir, "ssh", "known_hosts"), kh.replace(sshd.hostKey.split(" ")[1]!, "AAAAC3NzaC1lZDI1NTE5AAAAIBadBadBadBadBadBadBadBadBadBadBadBadBadBadBa"));
      const r = await g.run("echo second");
      expect(r.code).toBe(255);
      expect(r.stderr.toString()).toContain("not the key recorded");
    } finally {
      await g.close();
    }
  });

  test("shell, pty, subsystems and forwarding are refused and recorded", async () => {
    const shell = await ssh(["-o", `UserKnownHostsFile=${gw.knownHosts}`, "-T", "-p", String(gw.port), `${USER}@127.0.0.1`], { password: API_KEY, stdin: "echo should-not-run\n" });
    expect(shell.code).toBe(126);
    expect(shell.stderr.toString()).toContain("interactive shells are not available");
    expect(shell.stdout.toString()).not.toContain("should-not-run");
    const sftp = await ssh(["-o", `UserKnownHostsFile=${gw.knownHosts}`, "-s", "-p", String(gw.port), `${USER}@127.0.0.1`, "sftp"], { password: API_KEY });
    expect(sftp.code).toBe(126);
    expect(sftp.stderr.toString()).toContain("sftp subsystem is not available");
    const fwd = await ssh(["-o", `UserKnownHostsFile=${gw.knownHosts}`, "-o", "ExitOnForwardFailure=yes", "-R", "127.0.0.1:0:127.0.0.1:22", "-p", String(gw.port), `${USER}@127.0.0.1`, "echo forwarded"], { password: API_KEY });
    expect(fwd.code).toBe(255);
    expect(fwd.stdout.toString()).not.toContain("forwarded");
    const commands = await gw.records("command", (rs) => ["shell", "subsystem sftp", "tcpip-forward"].every((t) => rs.some((x) => String(x.text).startsWith(t))));
    for (const t of ["shell", "subsystem sftp", "tcpip-forward"]) {
      const c = commands.find((x) => String(x.text).startsWith(t))!;
      expect(c.decision).toMatchObject({ allow: false });
      expect((c.decision as { reasons: string[] }).reasons[0]).toStartWith("agate.ssh_unsupported: ");
    }
  });
});
