/**
 * The gateway's SSH host keys, and the target host keys it trusts.
 *
 * Host keys (ed25519, and rsa for clients that only speak rsa-sha2) are
 * generated on first start into the connection's host_keys_dir (mode 0600,
 * the folder 0700) and read from there on every later start, so clients'
 * known_hosts entries stay valid across restarts. A key file readable by
 * group or others is refused, as sshd does.
 */
import { createHash } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { utils } from "ssh2";
import type { HostKeyCheck } from "../../config/ssh.ts";
import { AgateError } from "../../core/errors.ts";

export interface HostKey {
  type: string;
  /** The private key, OpenSSH format. */
  private: string;
  /** "SHA256:…" as ssh-keygen -l prints it. */
  fingerprint: string;
  file: string;
}

const KINDS: { type: "ed25519" | "rsa"; file: string; opts?: { bits: number } }[] = [
  { type: "ed25519", file: "ssh_host_ed25519_key" },
  { type: "rsa", file: "ssh_host_rsa_key", opts: { bits: 3072 } },
];

/** Load the host keys in `dir`, generating those missing. */
export function ensureHostKeys(dir: string): { keys: HostKey[]; generated: string[] } {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const generated: string[] = [];
  const keys = KINDS.map(({ type, file, opts }) => {
    const path = join(dir, file);
    if (!existsSync(path)) {
      const pair = utils.generateKeyPairSync(type, opts as { bits: number });
      // wx: two gateways starting at once never overwrite each other's key.
      try {
        writeFileSync(path, pair.private, { mode: 0o600, flag: "wx" });
        writeFileSync(`${path}.pub`, `${pair.public} agate\n`, { mode: 0o644 });
        generated.push(path);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw new AgateError("SSH_HOST_KEY", `cannot write the SSH host key ${path}: ${(e as Error).message}`);
      }
    }
    const mode = statSync(path).mode;
    if (mode & 0o077) throw new AgateError("SSH_HOST_KEY", `the SSH host key ${path} is readable by others (mode ${(mode & 0o777).toString(8)}); run \`chmod 600 ${path}\``);
    const text = readFileSync(path, "utf8");
    const parsed = utils.parseKey(text);
    if (parsed instanceof Error) throw new AgateError("SSH_HOST_KEY", `the SSH host key ${path} cannot be read: ${parsed.message}`);
    return { type: parsed.type, private: text, fingerprint: fingerprint(parsed.getPublicSSH()), file: path };
  });
  return { keys, generated };
}

/** OpenSSH's SHA256 fingerprint of a public key blob. */
export function fingerprint(blob: Buffer): string {
  return `SHA256:${createHash("sha256").update(blob).digest("base64").replace(/=+$/, "")}`;
}

/** The key type a public key blob starts with ("ssh-ed25519"). */
export function keyType(blob: Buffer): string {
  const n = blob.length >= 4 ? blob.readUInt32BE(0) : 0;
  return blob.subarray(4, 4 + n).toString("latin1");
}

/**
 * Whether `blob` is a host key the target may present. accept-new: the key
 * recorded for host:port in `knownHosts`, or, when none is, this one (then
 * recorded). Returns why not, or null.
 */
export function checkHostKey(checks: HostKeyCheck[], blob: Buffer, knownHosts: string, host: string, port: number): string | null {
  const seen = `${fingerprint(blob)} (${keyType(blob)})`;
  const b64 = blob.toString("base64");
  if (checks[0]?.kind === "accept-new") {
    const name = port === 22 ? host : `[${host}]:${port}`;
    const lines = existsSync(knownHosts) ? readFileSync(knownHosts, "utf8").split("\n") : [];
    const mine = lines.map((l) => l.trim().split(/\s+/)).filter((w) => w[0] === name && w[1] === keyType(blob));
    if (mine.length === 0) {
      writeFileSync(knownHosts, `${name} ${keyType(blob)} ${b64}\n`, { mode: 0o600, flag: "a" });
      chmodSync(knownHosts, 0o600);
      return null;
    }
    return mine.some((w) => w[2] === b64) ? null : `the target presented ${seen}, not the key recorded for ${name} in ${knownHosts} when it was first seen`;
  }
  for (const c of checks) {
    if (c.kind === "fingerprint" && fingerprint(blob) === `SHA256:${c.sha256}`) return null;
    if (c.kind === "key" && c.base64 === b64) return null;
  }
  return `the target presented ${seen}, which is not the configured host_key`;
}
