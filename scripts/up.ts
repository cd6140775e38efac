#!/usr/bin/env bun
/**
 * `bun run up` (through scripts/up.sh): agate in front of a throwaway local
 * PostgreSQL, to try it with psql in a minute.
 *
 * Starts PostgreSQL in a temp dir (test/helpers/postgres.ts) with a `demo`
 * table in database `app`, makes an API key, writes .agate/agate.yaml (audit
 * log in .agate/audit, kept across runs), and runs the gateway in this
 * process on 127.0.0.1:6432, or the next free port. Ctrl-C (SIGINT) or
 * SIGTERM closes the gateway and stops and deletes the database.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import net from "node:net";
import { join, relative, resolve } from "node:path";
import { generateKey } from "../src/audit/note.ts";
import { loadConfig } from "../src/config/index.ts";
import { createLogger } from "../src/core/log.ts";
import { startGateway, type Gateway } from "../src/gateway.ts";
import { createApiKey } from "../src/identity/apikey.ts";
import { startPostgres, type TestPostgres } from "../test/helpers/postgres.ts";

const root = resolve(import.meta.dir, "..");
const stateDir = join(root, ".agate");
const configFile = join(stateDir, "agate.yaml");
const USER = "demo";

const say = (line: string) => process.stderr.write(`up: ${line}\n`);

/** Whether 127.0.0.1:port can be listened on right now. */
function portFree(port: number): Promise<boolean> {
  return new Promise((done) => {
    const s = net.createServer();
    s.once("error", () => done(false));
    s.listen(port, "127.0.0.1", () => s.close(() => done(true)));
  });
}

async function pickPort(from: number): Promise<number> {
  for (let p = from; p < from + 100; p++) if (await portFree(p)) return p;
  throw new Error(`no free port on 127.0.0.1 from ${from} to ${from + 99}`);
}

let pg: TestPostgres | undefined;
let gateway: Gateway | undefined;
let stopping: Promise<void> | undefined;

function stop(why: string): Promise<void> {
  stopping ??= (async () => {
    say(`${why}: stopping the gateway and the throwaway database`);
    await gateway?.close().catch((e) => say(`closing the gateway: ${(e as Error).message}`));
    await pg?.stop().catch((e) => say(`stopping PostgreSQL: ${(e as Error).message}`));
  })();
  return stopping;
}

for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.on(signal, () => void stop(signal).then(() => process.exit(0)));
}

try {
  say("starting a throwaway PostgreSQL");
  pg = await startPostgres();
  await pg.psql(
    `SET ROLE app_scram;
     CREATE TABLE demo (id int PRIMARY KEY, name text NOT NULL, email text, note text);
     INSERT INTO demo VALUES
       (1, 'Ada Lovelace', 'ada@example.com', 'card 4111 1111 1111 1111, expires 12/29'),
       (2, 'Alan Turing', 'alan@example.com', 'prefers a call: +44 20 7946 0958'),
       (3, 'Grace Hopper', 'grace@example.com', 'api_key=sk_live_9fQ2xT7bL4mN8vR1cZ6w');`,
  );
  say(`PostgreSQL ${pg.host}:${pg.port} (data in ${pg.dir}), table demo in database app`);

  const { key, sha256 } = createApiKey();
  const approver = createApiKey(); // a second person, in group dba, to approve what the policy holds
  const port = await pickPort(6432);
  const adminPort = await pickPort(9090);
  mkdirSync(stateDir, { recursive: true });
  // The checkpoint signing key lives as long as the audit log beside it.
  const keyFile = join(stateDir, "audit.key");
  if (!existsSync(keyFile)) {
    const { signerKey, verifierKey } = generateKey("agate.local/audit");
    writeFileSync(keyFile, `${signerKey}\n`, { mode: 0o600 });
    writeFileSync(`${keyFile}.pub`, `${verifierKey}\n`);
  }
  const verifierKey = readFileSync(`${keyFile}.pub`, "utf8").trim();
  writeFileSync(
    configFile,
    `# Written by scripts/up.ts for a throwaway PostgreSQL; rewritten on every run.
audit:
  dir: ./audit
  signing_key: ./audit.key
admin:
  listen: 127.0.0.1:${adminPort}
  groups: [demo]
identity:
  api_keys:
    - id: ${USER}
      kind: human
      groups: [demo]
      sha256: ${sha256}
    - id: approver
      kind: human
      groups: [dba]
      sha256: ${approver.sha256}
policy:
  data:
    agate:
      config:
        # masked in every answer and in the audit log: the email column by rule, anything detected elsewhere
        mask: { columns: ["public.demo.email:partial"], detectors: ["*"] }
connections:
  - name: app-db
    protocol: postgres
    listen: 127.0.0.1:${port}
    allow_plaintext_auth: true   # loopback only; anywhere else configure tls
    target:
      host: ${pg.host}
      port: ${pg.port}
      database: app
      user: app_scram
      password: ${pg.password}   # the throwaway server's password, not a real secret
`,
    { mode: 0o600 },
  );

  const config = loadConfig(configFile);
  gateway = await startGateway(config, createLogger(config.log_level));
  const listener = gateway.listeners[0]!;
  const auditDir = relative(process.cwd(), config.audit.dir) || config.audit.dir;

  process.stdout.write(`
agate is up. Connect through it with:
  psql "postgres://${USER}:${key}@${listener.host}:${listener.port}/app"
Try:  select * from demo;                           -- e-mails, the card, the phone and the key come back masked
      drop table demo;                             -- refused by policy
      delete from demo;                            -- held until someone in group dba approves it:
  bun src/main.ts approvals list --server http://127.0.0.1:${gateway.admin!.port} --token ${approver.key}
  bun src/main.ts approvals approve <id> --reason "demo" --server http://127.0.0.1:${gateway.admin!.port} --token ${approver.key}
Audit log: ${auditDir}   (verify: bun src/main.ts verify --log ${auditDir} --key ${keyFile}.pub)
Admin API: http://127.0.0.1:${gateway.admin!.port}   (curl -H "Authorization: Bearer ${key}" http://127.0.0.1:${gateway.admin!.port}/v1/log/checkpoint)
Ctrl-C stops the gateway and the throwaway database.

`);
} catch (e) {
  say(`could not start: ${e instanceof Error ? e.message : String(e)}`);
  await stop("error");
  process.exit(1);
}
