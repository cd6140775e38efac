/**
 * `protocol: ssh` connections (src/protocols/ssh):
 *
 * ```yaml
 * connections:
 *   - name: web-1
 *     protocol: ssh
 *     listen: 127.0.0.1:2222
 *     host_keys_dir: ./.agate/ssh     # default: "ssh" beside audit.dir; generated on first start (0600)
 *     target:
 *       host: 10.0.0.5
 *       port: 22
 *       user: deploy
 *       private_key_file: ./deploy_ed25519   # mode 0600; or password_env: DEPLOY_PASSWORD
 *       host_key: "SHA256:Qx…"               # or a known_hosts line "10.0.0.5 ssh-ed25519 AAAA…",
 *                                            # or accept-new: trust the first key seen, recorded in
 *                                            # host_keys_dir/known_hosts, and require it from then on
 *       connect_timeout_ms: 10000
 *     login_timeout_ms: 60000        # from accept to a verified identity
 *     limits: { max_connections: 100, … }     # as for postgres (core/limits.ts)
 * ```
 */
import { dirname, resolve } from "node:path";
import { AgateError } from "../core/errors.ts";
import type { LimitsConfig } from "../core/limits.ts";
import { arr, hostPort, invalid, num, obj, only, parseLimits, readPrivateFile, str } from "./index.ts";

/** How the target's host key is checked. */
export type HostKeyCheck =
  | { kind: "fingerprint"; sha256: string }
  | { kind: "key"; type: string; base64: string }
  | { kind: "accept-new" };

export interface SshTarget {
  host: string;
  port: number;
  user: string;
  /** The private key's text (OpenSSH or PEM). */
  private_key?: string;
  passphrase?: string;
  password?: string;
  host_key: HostKeyCheck[];
  connect_timeout_ms: number;
}

export interface SshConnectionConfig {
  name: string;
  protocol: "ssh";
  host: string;
  port: number;
  host_keys_dir: string;
  target: SshTarget;
  login_timeout_ms: number;
  limits: LimitsConfig;
}

export function parseSshConnection(o: Record<string, unknown>, at: string, path: (p: string) => string, env: Record<string, string | undefined>, auditDir: string): SshConnectionConfig {
  only(o, at, ["name", "protocol", "listen", "host_keys_dir", "target", "login_timeout_ms", "limits"]);
  const [host, port] = hostPort(str(o.listen, `${at}.listen`), `${at}.listen`);
  const t = obj(o.target, `${at}.target`);
  only(t, `${at}.target`, ["host", "port", "user", "private_key_file", "passphrase_env", "password_env", "host_key", "connect_timeout_ms"]);
  const fromEnv = (key: string): string | undefined => {
    if (t[key] === undefined) return undefined;
    const name = str(t[key], `${at}.target.${key}`);
    const v = env[name];
    if (v === undefined) throw new AgateError("CONFIG_INVALID", `${at}.target.${key} names ${name}, which is not set in the environment`, { at: `${at}.target.${key}` });
    return v;
  };
  const private_key = t.private_key_file === undefined ? undefined : readPrivateFile(path(str(t.private_key_file, `${at}.target.private_key_file`)), `${at}.target.private_key_file`);
  const password = fromEnv("password_env");
  const passphrase = fromEnv("passphrase_env");
  if (private_key === undefined && password === undefined) {
    throw new AgateError("CONFIG_INVALID", `${at}.target needs the gateway's own credential for the target: private_key_file (mode 0600) or password_env`, { at: `${at}.target` });
  }
  if (t.host_key === undefined) {
    throw new AgateError(
      "CONFIG_INVALID",
      `${at}.target.host_key is required: the target's host key fingerprint ("SHA256:…", from \`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub\` on the target), a known_hosts line, or accept-new to trust the first key seen`,
      { at: `${at}.target.host_key` },
    );
  }
  const keys = (Array.isArray(t.host_key) ? arr(t.host_key, `${at}.target.host_key`) : [t.host_key]).map((k, i) => parseHostKey(str(k, `${at}.target.host_key${Array.isArray(t.host_key) ? `[${i}]` : ""}`), `${at}.target.host_key`));
  if (keys.some((k) => k.kind === "accept-new") && keys.length > 1) throw invalid(`${at}.target.host_key`, t.host_key, "accept-new alone, or the keys to accept");
  return {
    name: str(o.name, `${at}.name`),
    protocol: "ssh",
    host,
    port,
    host_keys_dir: path(o.host_keys_dir === undefined ? resolve(dirname(auditDir), "ssh") : str(o.host_keys_dir, `${at}.host_keys_dir`)),
    target: {
      host: str(t.host ?? "127.0.0.1", `${at}.target.host`),
      port: num(t.port ?? 22, `${at}.target.port`),
      user: str(t.user, `${at}.target.user`),
      ...(private_key !== undefined ? { private_key } : {}),
      ...(passphrase !== undefined ? { passphrase } : {}),
      ...(password !== undefined ? { password } : {}),
      host_key: keys,
      connect_timeout_ms: num(t.connect_timeout_ms ?? 10_000, `${at}.target.connect_timeout_ms`),
    },
    login_timeout_ms: num(o.login_timeout_ms ?? 60_000, `${at}.login_timeout_ms`),
    limits: parseLimits(obj(o.limits ?? {}, `${at}.limits`), `${at}.limits`),
  };
}

const KEY_TYPES = /^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com)$/;

/** "SHA256:…", "accept-new", or a known_hosts line ("[host]:port type base64 comment", host optional). */
export function parseHostKey(v: string, at: string): HostKeyCheck {
  if (v === "accept-new") return { kind: "accept-new" };
  const fp = /^SHA256:([A-Za-z0-9+/]{43})=?$/.exec(v);
  if (fp) return { kind: "fingerprint", sha256: fp[1]! };
  const words = v.trim().split(/\s+/);
  const i = words.findIndex((w) => KEY_TYPES.test(w));
  const b64 = i >= 0 ? words[i + 1] : undefined;
  if (i < 0 || i > 1 || !b64 || !/^[A-Za-z0-9+/]+=*$/.test(b64)) {
    throw invalid(at, v, `a SHA256 fingerprint ("SHA256:" and 43 base64 characters), a known_hosts line ("host ssh-ed25519 AAAA…"), or accept-new (MD5 fingerprints are not accepted)`);
  }
  return { kind: "key", type: words[i]!, base64: b64 };
}
