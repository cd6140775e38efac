/**
 * The SSH listeners of a gateway (one per `protocol: ssh` connection): host
 * keys loaded or generated, their fingerprints logged, the shell parser
 * loaded once.
 */
import type { SshConnectionConfig } from "../../config/ssh.ts";
import type { Guard } from "../../core/guard.ts";
import type { Limits } from "../../core/limits.ts";
import type { Logger } from "../../core/log.ts";
import { ensureHostKeys } from "./hostkeys.ts";
import { listenSsh, type SshListener } from "./server.ts";
import { initShell } from "./shparse.ts";

export async function startSshListeners(connections: SshConnectionConfig[], guard: Guard, log: Logger, limits: (connection: string) => Limits): Promise<(SshListener & { name: string; host: string })[]> {
  if (connections.length === 0) return [];
  await initShell();
  const out: (SshListener & { name: string; host: string })[] = [];
  try {
    for (const c of connections) {
      const { keys, generated } = ensureHostKeys(c.host_keys_dir);
      for (const g of generated) log("info", "ssh host key generated", { connection: c.name, file: g });
      const target = `${c.target.user}@${c.target.host}:${c.target.port}`;
      const l = await listenSsh({
        connection: { name: c.name, protocol: "ssh", target },
        host: c.host,
        port: c.port,
        hostKeys: keys,
        hostKeysDir: c.host_keys_dir,
        target: c.target,
        guard,
        log,
        limits: limits(c.name),
        loginTimeoutMs: c.login_timeout_ms,
      });
      out.push({ ...l, name: c.name, host: c.host });
      log("info", "listening", { connection: c.name, protocol: "ssh", address: `${c.host}:${l.port}`, target, host_keys: keys.map((k) => `${k.type} ${k.fingerprint}`) });
    }
  } catch (e) {
    await Promise.all(out.map((l) => l.close()));
    throw e;
  }
  return out;
}
