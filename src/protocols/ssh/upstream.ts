/**
 * agate's own SSH connection to a target (ssh2 Client), with the credential
 * from the config: the client never sees it. The target's host key is
 * checked against the configured fingerprint, known_hosts line, or the key
 * recorded on first use (accept-new); a mismatch fails the connection with
 * UPSTREAM_HOST_KEY, naming the key seen.
 */
import { join } from "node:path";
import { Client } from "ssh2";
import type { SshTarget } from "../../config/ssh.ts";
import { AgateError } from "../../core/errors.ts";
import { CLIENT_ALGORITHMS } from "./algorithms.ts";
import { checkHostKey } from "./hostkeys.ts";

export function connectTarget(target: SshTarget, hostKeysDir: string): Promise<Client> {
  const client = new Client();
  let mismatch: string | null = null;
  return new Promise((resolve, reject) => {
    const fail = (e: Error) => {
      client.removeAllListeners("ready");
      client.end();
      if (mismatch) reject(new AgateError("UPSTREAM_HOST_KEY", `the target's host key does not match: ${mismatch}`));
      else reject(new AgateError("UPSTREAM_FAILED", `cannot connect to the target ${target.user}@${target.host}:${target.port}: ${e.message}`));
    };
    client.once("error", fail);
    client.once("ready", () => {
      client.off("error", fail);
      // Later errors end the connection; its channels report them.
      client.on("error", () => {});
      resolve(client);
    });
    client.connect({
      host: target.host,
      port: target.port,
      username: target.user,
      ...(target.private_key !== undefined ? { privateKey: target.private_key } : {}),
      ...(target.passphrase !== undefined ? { passphrase: target.passphrase } : {}),
      ...(target.password !== undefined ? { password: target.password } : {}),
      readyTimeout: target.connect_timeout_ms,
      algorithms: CLIENT_ALGORITHMS,
      hostVerifier: (key: Buffer) => {
        mismatch = checkHostKey(target.host_key, key, join(hostKeysDir, "known_hosts"), target.host, target.port);
        return mismatch === null;
      },
      // No agent, no keyboard-interactive prompts: only the configured credential.
      tryKeyboard: false,
    });
  });
}
