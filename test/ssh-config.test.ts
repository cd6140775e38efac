/**
 * `protocol: ssh` connections in the configuration (src/config/ssh.ts): what
 * is accepted, and that every mistake fails the start-up naming the key.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateKey } from "../src/audit/note.ts";
import { parseConfig } from "../src/config/index.ts";
import { AgateError } from "../src/core/errors.ts";

const dir = mkdtempSync(join(tmpdir(), "agate-ssh-config-"));
writeFileSync(join(dir, "audit.key"), generateKey("t/a").signerKey, { mode: 0o600 });
writeFileSync(join(dir, "id_ed25519"), "-----BEGIN OPENSSH PRIVATE KEY-----\n…\n", { mode: 0o600 });
writeFileSync(join(dir, "open_key"), "-----BEGIN OPENSSH PRIVATE KEY-----\n…\n", { mode: 0o644 });
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const FP = "SHA256:TOW8ZgvGof1ny/U+mDvmbq9gwYshPhxNcIdenDE+Cac";

function load(connection: Record<string, unknown>, target: Record<string, unknown> = {}, env: Record<string, string> = {}) {
  return parseConfig(
    {
      audit: { dir: "./state/audit", signing_key: "./audit.key" },
      connections: [{ name: "web", protocol: "ssh", listen: "127.0.0.1:2222", target: { host: "10.0.0.5", user: "deploy", private_key_file: "./id_ed25519", host_key: FP, ...target }, ...connection }],
    },
    dir,
    env,
  );
}

function refused(f: () => unknown): AgateError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(AgateError);
    expect((e as AgateError).code).toBe("CONFIG_INVALID");
    return e as AgateError;
  }
  throw new Error("the configuration was accepted");
}

describe("ssh connections", () => {
  test("accepted: defaults, host keys beside the audit dir, a fingerprint", () => {
    const c = load({});
    expect(c.connections).toEqual([]);
    expect(c.ssh).toHaveLength(1);
    expect(c.ssh[0]).toMatchObject({ name: "web", protocol: "ssh", host: "127.0.0.1", port: 2222, host_keys_dir: join(dir, "state", "ssh"), login_timeout_ms: 60_000 });
    expect(c.ssh[0]!.target).toMatchObject({ host: "10.0.0.5", port: 22, user: "deploy", host_key: [{ kind: "fingerprint", sha256: FP.slice(7) }], connect_timeout_ms: 10_000 });
    expect(c.ssh[0]!.target.private_key).toContain("OPENSSH PRIVATE KEY");
  });

  test("host_key: a known_hosts line, a list, accept-new", () => {
    const line = "[10.0.0.5]:22 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGoV3sExampleExampleExampleExampleExample comment";
    expect(load({}, { host_key: line }).ssh[0]!.target.host_key).toEqual([{ kind: "key", type: "ssh-ed25519", base64: "AAAAC3NzaC1lZDI1NTE5AAAAIGoV3sExampleExampleExampleExampleExample" }]);
    expect(load({}, { host_key: [FP, "ssh-rsa AAAAB3NzaC1yc2E="] }).ssh[0]!.target.host_key).toHaveLength(2);
    expect(load({}, { host_key: "accept-new" }).ssh[0]!.target.host_key).toEqual([{ kind: "accept-new" }]);
  });

  test("a password from the environment instead of a key", () => {
    const c = load({}, { private_key_file: undefined, password_env: "DEPLOY_PW" }, { DEPLOY_PW: "s3cret" });
    expect(c.ssh[0]!.target.password).toBe("s3cret");
  });

  test("mistakes name the key", () => {
    expect(refused(() => load({}, { host_key: undefined })).message).toContain("host_key is required");
    expect(refused(() => load({}, { host_key: "MD5:aa:bb" })).message).toContain("MD5 fingerprints are not accepted");
    expect(refused(() => load({}, { host_key: ["accept-new", FP] })).message).toContain("accept-new alone");
    expect(refused(() => load({}, { private_key_file: undefined })).message).toContain("private_key_file (mode 0600) or password_env");
    expect(refused(() => load({}, { private_key_file: "./open_key" })).message).toContain("readable by others");
    expect(refused(() => load({}, { private_key_file: undefined, password_env: "UNSET_VAR" })).message).toContain("UNSET_VAR, which is not set");
    expect(refused(() => load({ tls: {} })).message).toContain('unknown key "tls"');
    expect(refused(() => load({}, { database: "x" })).message).toContain('unknown key "database"');
    expect(refused(() => load({ listen: "2222" })).message).toContain("host:port");
    expect(refused(() => load({ protocol: "shh" })).message).toContain('"postgres" or "ssh"');
  });

  test("names are unique across protocols", () => {
    expect(
      refused(() =>
        parseConfig(
          {
            audit: { dir: "./state/audit", signing_key: "./audit.key" },
            connections: [
              { name: "web", protocol: "postgres", listen: "127.0.0.1:6432", allow_plaintext_auth: true, target: { database: "app", user: "app" } },
              { name: "web", protocol: "ssh", listen: "127.0.0.1:2222", target: { user: "d", private_key_file: "./id_ed25519", host_key: FP } },
            ],
          },
          dir,
        ),
      ).message,
    ).toContain('two connections are named "web"');
  });
});
