#!/usr/bin/env bun
/**
 * agate: the command line. Each subcommand parses its own flags and has
 * its own --help; errors print a sentence and exit non-zero.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { homedir, hostname, userInfo } from "node:os";
import { dirname, join, resolve } from "node:path";
import { parseArgs } from "node:util";
import pkg from "../package.json" with { type: "json" };
import { verifyLog } from "./audit/index.ts";
import { generateKey, parseVerifierKey, type Verifier } from "./audit/note.ts";
import { dirSource, httpSource, proveConsistency, proveInclusion } from "./audit/prove.ts";
import { fetchShipped } from "./audit/ship.ts";
import { acceptTail, cutTail, inspectTail, type TailReport } from "./audit/tail.ts";
import { loadConfig, parseWorkers } from "./config/index.ts";
import { ensureHostKeys } from "./protocols/ssh/hostkeys.ts";
import { AgateError } from "./core/errors.ts";
import { createLogger } from "./core/log.ts";
import { startGateway } from "./gateway.ts";
import { parse as parseYaml } from "yaml";
import { AccountStore } from "./identity/accounts.ts";
import { createApiKey } from "./identity/apikey.ts";
import { login } from "./identity/login.ts";
import { buildPolicies, checkFresh } from "./policy/build.ts";
import { formatReport, inspectTarget } from "./protocols/postgres/doctor.ts";

const HELP = `agate ${pkg.version}: an identity-aware gateway that decides every command by policy, masks what comes back and records it

Usage: agate <command> [options]

Commands:
  serve --config FILE        run the gateway (listeners, policy, audit log) until SIGINT/SIGTERM
  doctor --config FILE       report what each target's configured credential can do beyond an application's work
  verify --log DIR --key K   check the audit log: frames, chain, Merkle tree, signed checkpoints; exit 1 naming the first bad record or checkpoint
  recover --log DIR          show records added past what the log's writer made (AUDIT_UNSIGNED_TAIL); --accept or --cut them
  proof ...                  prove a record is in the log, or that one checkpoint extends another
  policy build               compile policies/ into wasm/ with the OPA compiler (opa build -t wasm)
  policy check               exit 1 if wasm/ is stale against policies/
  keys create --id ID        make a service-account API key; prints the key once and its config entry
  keys generate --name N     make the Ed25519 key that signs audit checkpoints
  accounts create|list|revoke|locked|unlock  manage service accounts and their API keys, and user locks (accounts store)
  login --issuer URL         sign in with an OIDC provider (device grant); prints export PGUSER/PGPASSWORD
  approvals list|show|approve|deny   see and decide commands held for approval (through the admin API)
  ssh host-keys --config FILE   print the SSH host key fingerprints clients should see (generating missing keys)
  version                    print the version

Run 'agate <command> --help' for a command's options.
`;

const COMMANDS: Record<string, { help: string; run: (argv: string[]) => Promise<number> }> = {
  serve: {
    help: `Usage: agate serve --config FILE [--workers N|auto]

Starts every connection in FILE (YAML; see README.md, "Configuration") and runs
until SIGINT or SIGTERM, then closes listeners and flushes the audit log.
Logs are JSON lines on stderr.

Options:
  -c, --config FILE   configuration file (required)
  -w, --workers N     threads that serve the listeners, sharing each port
                      (SO_REUSEPORT); auto: one per CPU core. Overrides the
                      config's workers (default 1). One audit log, one set of
                      limits and lockout counts for all of them.
  -h, --help          this help`,
    run: serve,
  },
  doctor: {
    help: `Usage: agate doctor --config FILE [--json]

Connects to the target of every connection in FILE exactly as the gateway
does (host, port, database, user, password, sslmode) and reports what that
credential can do beyond an application's work: superuser, CREATEROLE,
CREATEDB, REPLICATION, BYPASSRLS; membership, direct or inherited, in
pg_execute_server_program, pg_write_server_files, pg_read_server_files,
pg_signal_backend, pg_read_all_settings, pg_read_all_data, pg_write_all_data
and pg_create_subscription (where the server has them); ownership of the
database. A role the credential can SET ROLE to counts as its own. For each
such credential it prints the SQL that creates a least-privilege role to
use instead. 'agate serve' logs the same findings as warnings at start-up.

Exit status:
  0  every target's credential is least-privilege
  1  a credential holds one of the privileges above
  2  the configuration is invalid, or a target cannot be reached or refuses
     the credential (2 wins over 1: the check is incomplete)

Options:
  -c, --config FILE   configuration file (required; checked as serve checks it,
                      so password_env variables must be set)
      --json          one JSON document on stdout:
                      {status, connections: [{connection, target, status, findings, error, advice}]}
  -h, --help          this help`,
    run: doctorCommand,
  },
  verify: {
    help: `Usage: agate verify --log DIR --key KEY [--checkpoint FILE]...
       agate verify --from s3://BUCKET/PREFIX --key KEY [--checkpoint FILE]...

Checks an audit log from its files alone: every frame's length and CRC-32C,
the record indexes and hash chain, the Merkle tree (RFC 6962) recomputed from
the records against every checkpoint's root, every checkpoint's Ed25519
signature against KEY, that checkpoint sizes never go back, and that the log
still holds every record a checkpoint signed. Exits 0 when intact; otherwise
exits 1 and names the first bad record (index, segment, byte offset) or
checkpoint, and the kind of damage.

A log rolled back whole (segments and checkpoints together) is only caught
against a checkpoint you kept from before: pass it with --checkpoint.

Options:
  -l, --log DIR          the audit directory (audit.dir in the config)
      --from URL         verify what was shipped to object storage instead
                         (s3://bucket/prefix; credentials from the S3_* or
                         AWS_* environment variables, see README)
  -k, --key KEY          the checkpoint verifier key (name+id+base64, as
                         'agate keys generate' prints it) or a file holding it;
                         without it signatures are NOT checked, and verify says so
      --checkpoint FILE  a signed checkpoint kept from earlier (repeatable)
  -q, --quiet            no progress on stderr
  -h, --help             this help`,
    run: verify,
  },
  recover: {
    help: `Usage: agate recover --log DIR [--accept | --cut]

With the gateway stopped: shows the records of the audit log in DIR past
what its writer can account for (its marker writer.state: the size at a
clean shutdown, or what it had reserved before a crash, under 1,024 records
past its last; without a marker, the latest checkpoint). 'agate serve' refuses such a log with
AUDIT_UNSIGNED_TAIL, since those records were added while agate was not
running. Look at them (e.g. with 'agate verify'), then decide:

Options:
  -l, --log DIR   the audit directory (audit.dir in the config)
      --accept    vouch for them: the next start signs them in its next checkpoint
      --cut       remove them (only within the last segment)
  -h, --help      this help

Exit status: 0 no unsigned records (or they were accepted or cut), 1 there
are some and neither --accept nor --cut was given.`,
    run: recoverCommand,
  },
  accounts: {
    help: `Usage: agate accounts create --id ID [--groups a,b] [--kind service|agent|human] [--owner WHO] [--expires RFC3339] (--config FILE | --db FILE)
       agate accounts list (--config FILE | --db FILE) [--json]
       agate accounts revoke ID (--config FILE | --db FILE)
       agate accounts locked (--config FILE | --db FILE) [--json]
       agate accounts unlock USER (--config FILE | --db FILE)

Service accounts and their API keys, kept in the accounts store (SQLite; the
file identity.accounts in the configuration, or --db). A key is shown once
at creation; the store keeps only its SHA-256. Revoking takes effect in a
running gateway within a fraction of a second, for new commands in open
sessions too. Clients log in with the account id as user name and the key as
password.

The same store keeps the user names locked after repeated failed logins
(lockout.lock_user_after in the configuration); a lock lasts, across
restarts, until it is lifted. 'locked' lists them; 'unlock USER' lifts one,
and a running gateway accepts that user's logins again within a fraction of
a second. USER is the user name clients log in as; it need not be an account
of the store (an API key of the configuration, an OIDC user). Blocked client
addresses are not kept here: a block ends by itself after lockout.block_s.`,
    run: accounts,
  },
  approvals: {
    help: `Usage: agate approvals list [--status pending|approved|denied|expired|withdrawn] [--json]
       agate approvals show ID
       agate approvals approve ID --reason TEXT [--grant MINUTES]
       agate approvals deny ID --reason TEXT
  each with --server URL (or $AGATE_SERVER) and --token CREDENTIAL (or $AGATE_TOKEN)

Commands the policy marks for approval wait in the gateway until people
decide. These commands talk to a gateway's admin API as you: CREDENTIAL is
your OIDC token (eval "$(agate login …)" sets PGPASSWORD; pass that) or an
API key. You must be in a group the request names, and can never decide
your own request; a policy can ask for two distinct approvers.

approve --grant MINUTES also lets the requester's later commands on that
connection through for that long without asking again (the policy sees it
as input.grants). Every vote and its reason is in the audit log.`,
    run: approvalsCommand,
  },
  login: {
    help: `Usage: agate login --issuer URL --client-id ID [--audience AUD] [--resource URI] [--scope S] [--force]

Signs you in with an OpenID provider using the device authorization grant
(RFC 8628): prints a URL and a code to confirm in a browser, waits, and
prints the token as shell exports for psql:

  eval "$(agate login --issuer https://idp.example.com --client-id agate-cli --audience agate)"
  psql "host=db.internal port=6432 dbname=app sslmode=require"

The token is cached (~/.cache/agate/tokens, mode 0600) and reused while it
is valid for at least two more minutes; --force signs in again.

Options:
      --issuer URL      the provider (as in the gateway's identity.oidc)
      --client-id ID    a public client registered for the device grant
      --audience AUD    the audience the gateway accepts (default: agate)
      --resource URI    the RFC 8707 resource indicator to ask for (an absolute
                        URI; default: the audience when it is one, else none)
      --scope S         default: openid`,
    run: loginCommand,
  },
  proof: {
    help: `Usage: agate proof inclusion --index I (--server URL --api-key KEY | --log DIR) --key VKEY [--checkpoint FILE]
       agate proof consistency --old FILE (--server URL --api-key KEY | --log DIR) --key VKEY [--save FILE]

Checks, trusting nothing but the verifier key, what a gateway's audit log
holds. Proofs come from the admin API (--server http://host:port, with an
API key of an admin group) or from a log directory read without writing
(--log), and are checked here with RFC 9162's algorithms.

inclusion: record I is in the log: verifies the latest checkpoint's
  signature (or the one in --checkpoint FILE), fetches record I and its
  inclusion proof, and checks that the proof leads to the signed root.
  Prints the checkpoint, the leaf hash and the record.
consistency: the log only grew since the checkpoint in --old FILE (one you
  kept): verifies both signatures and the consistency proof to the latest
  checkpoint. --save FILE writes that latest checkpoint, to pass as --old
  next time.

Exits 0 when the proof holds, 1 when it does not (and says why), 2 on usage errors.

Options:
  -k, --key VKEY           the log's verifier key (name+id+base64) or a file holding it
  -s, --server URL         a gateway's admin API
      --api-key KEY        API key for --server (or $AGATE_API_KEY)
  -l, --log DIR            an audit directory instead of --server
  -i, --index I            (inclusion) the record index
      --checkpoint FILE    (inclusion) prove against this checkpoint instead of the latest
      --old FILE           (consistency) the checkpoint kept from before
      --save FILE          (consistency) write the latest checkpoint here once proven
      --json               print the proof as JSON`,
    run: proof,
  },
  policy: {
    help: `Usage: agate policy build [--policies DIR] [--out DIR]
       agate policy check [--policies DIR] [--out DIR]

build: compiles the Rego in DIR (default ./policies) to WebAssembly with the
OPA compiler (found as $AGATE_OPA, 'opa' on PATH, or ~/.local/agate-tools/bin/opa;
scripts/opa.sh installs it) and writes policy.wasm and manifest.json to --out
(default ./wasm). check: exits 1 when --out was not built from DIR as it is now.`,
    run: policy,
  },
  keys: {
    help: `Usage: agate keys create --id ID [--groups a,b] [--kind service|agent|human]
       agate keys generate --name NAME --out FILE

create: prints a new API key (shown once, never stored) and the entry to add
under identity.api_keys in the configuration, which holds only the key's
SHA-256. Clients use the key as their password and ID as their user name.

generate: makes the Ed25519 key that signs audit log checkpoints. Writes the
private key to FILE (mode 0600; refuses to overwrite) and the verifier key to
FILE.pub, and prints the verifier key (name+keyid+base64, the form of C2SP
signed notes and Go's sumdb/note). NAME is the key's name in signatures;
use the log's origin, e.g. agate.example.com/audit. Point audit.signing_key
at FILE; give auditors the verifier key.`,
    run: keys,
  },
  ssh: {
    help: `Usage: agate ssh host-keys --config FILE

Prints each SSH connection's host keys (generated on first use into its
host_keys_dir, mode 0600) as "NAME TYPE SHA256:…" and as known_hosts lines,
so clients can pin them before they first connect.`,
    run: sshCommand,
  },
  version: {
    help: "Usage: agate version",
    run: async () => {
      console.log(pkg.version);
      return 0;
    },
  },
};

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name) {
    // No command is a usage error: the help goes to stderr with exit 2.
    process.stderr.write(HELP);
    return 2;
  }
  if (name === "-h" || name === "--help" || name === "help") {
    process.stdout.write(HELP);
    return 0;
  }
  if (name === "--version" || name === "-v") return COMMANDS.version!.run([]);
  const cmd = COMMANDS[name];
  if (!cmd) {
    process.stderr.write(`agate: unknown command "${name}"\n\n${HELP}`);
    return 2;
  }
  if (rest.includes("-h") || rest.includes("--help")) {
    console.log(cmd.help);
    return 0;
  }
  return cmd.run(rest);
}

async function serve(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { config: { type: "string", short: "c" }, workers: { type: "string", short: "w" } } });
  if (!values.config) throw new AgateError("USAGE", "serve needs --config FILE");
  const config = loadConfig(values.config);
  if (values.workers !== undefined) config.workers = parseWorkers(values.workers, "--workers");
  const log = createLogger(config.log_level);
  const gw = await startGateway(config, log);
  for (const l of gw.listeners) process.stdout.write(`agate: ${l.name} listening on ${l.host}:${l.port}\n`);
  await new Promise<void>((done) => {
    const stop = (signal: string) => {
      log("info", "shutting down", { signal });
      void gw.close().then(done);
    };
    process.once("SIGINT", () => stop("SIGINT"));
    process.once("SIGTERM", () => stop("SIGTERM"));
  });
  return 0;
}

async function doctorCommand(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { config: { type: "string", short: "c" }, json: { type: "boolean" } } });
  if (!values.config) throw new AgateError("USAGE", "doctor needs --config FILE");
  let config;
  try {
    config = loadConfig(values.config);
  } catch (e) {
    if (!(e instanceof AgateError)) throw e;
    process.stderr.write(`agate: ${e.message} [${e.code}]\n`);
    if (values.json) console.log(JSON.stringify({ status: "invalid", error: { code: e.code, message: e.message }, connections: [] }));
    return 2;
  }
  const reports = await Promise.all(config.connections.map((c) => inspectTarget(c.name, c.target)));
  const status = reports.some((r) => r.status === "unreachable") ? "unreachable" : reports.some((r) => r.status === "risk") ? "risk" : "ok";
  if (values.json) console.log(JSON.stringify({ status, connections: reports }));
  else if (reports.length === 0) console.log(`${values.config} has no connections: nothing to check`);
  else process.stdout.write(reports.map((r, i) => formatReport(r, i)).join("\n"));
  return status === "unreachable" ? 2 : status === "risk" ? 1 : 0;
}

/** A verifier key given inline (name+id+key) or as a file holding one. */
function readVerifierKey(text: string): Verifier {
  return parseVerifierKey(existsSync(text) ? readFileSync(text, "utf8") : text);
}

async function verify(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      log: { type: "string", short: "l" },
      from: { type: "string" },
      key: { type: "string", short: "k" },
      checkpoint: { type: "string", multiple: true },
      quiet: { type: "boolean", short: "q" },
    },
  });
  if (!values.log === !values.from) throw new AgateError("USAGE", "verify needs --log DIR or --from s3://BUCKET/PREFIX (one of them)");
  const key = values.key ? readVerifierKey(values.key) : undefined;
  const trusted = (values.checkpoint ?? []).map((f) => readFileSync(f, "utf8"));
  if (trusted.length && !key) throw new AgateError("USAGE", "--checkpoint needs --key to check its signature");
  let dir = values.log;
  let cleanup = async () => {};
  if (values.from) {
    const fetched = await fetchShipped(values.from, { quiet: values.quiet ?? false });
    dir = fetched.dir;
    cleanup = fetched.cleanup;
  }
  if (!dir || !existsSync(dir)) throw new AgateError("VERIFY_NO_LOG", `no audit log at ${dir}`);
  try {
    return await verifyDir(dir, key, trusted, values.quiet ?? false);
  } finally {
    await cleanup();
  }
}

async function recoverCommand(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { log: { type: "string", short: "l" }, accept: { type: "boolean" }, cut: { type: "boolean" } } });
  if (!values.log) throw new AgateError("USAGE", "recover needs --log DIR (audit.dir in the config)");
  if (values.accept && values.cut) throw new AgateError("USAGE", "recover takes --accept or --cut, not both");
  const r: TailReport = await (values.accept ? acceptTail : values.cut ? cutTail : inspectTail)(values.log);
  const marker = r.marker ? `${r.marker.state} at ${r.marker.size} records` : "none";
  process.stdout.write(`log: ${r.size} records; writer marker: ${marker}; latest checkpoint: ${r.checkpoint ?? "none"}\n`);
  for (const x of r.unsigned) process.stdout.write(`unsigned: record ${x.index} ${String(x.type)} at ${String(x.t)} (${x.segment} offset ${x.offset}, ${x.bytes} bytes)\n`);
  if (r.unsigned.length === 0) {
    process.stdout.write("no unsigned records\n");
    return 0;
  }
  if (values.accept) process.stdout.write(`accepted ${r.unsigned.length} records: the next checkpoint signs them\n`);
  else if (values.cut) process.stdout.write(`cut ${r.unsigned.length} records: the log ends at ${r.bound}\n`);
  else {
    process.stdout.write(`${r.unsigned.length} records were not made by the writer; accept them with --accept or remove them with --cut\n`);
    return 1;
  }
  return 0;
}

async function verifyDir(dir: string, key: Verifier | undefined, trusted: string[], quiet: boolean): Promise<number> {
  const started = performance.now();
  let lastShown = 0;
  const tty = process.stderr.isTTY;
  const result = await verifyLog(dir, {
    key,
    trusted,
    onProgress: quiet
      ? undefined
      : (records, bytes, total) => {
          const now = performance.now();
          if (now - lastShown < 500) return;
          lastShown = now;
          const pct = total ? ((100 * bytes) / total).toFixed(1) : "100";
          process.stderr.write(`${tty ? "\r" : ""}verify: ${records} records, ${pct}% of ${(total / 1e6).toFixed(1)} MB${tty ? "" : "\n"}`);
        },
  });
  if (tty && !quiet && lastShown) process.stderr.write("\n");
  const seconds = (performance.now() - started) / 1000;
  if (result.ok) {
    const rate = seconds > 0 ? ` (${Math.round(result.records / seconds).toLocaleString("en-US")} records/s)` : "";
    console.log(`ok: ${result.records} records in ${result.segments} segment(s), root ${result.root.slice(0, 16)}…, checked in ${seconds.toFixed(2)} s${rate}`);
    if (result.checkpoints === 0) console.log("checkpoints: none");
    else console.log(`checkpoints: ${result.checkpoints} match the records${result.signaturesChecked ? ` and are signed by ${key!.name}` : ""}; the last signs ${result.checkpointSize} records${result.records > result.checkpointSize ? `, ${result.records - result.checkpointSize} later record(s) are not yet checkpointed` : ""}`);
    if (!result.signaturesChecked) console.log("WARNING: signatures were NOT checked: pass --key with the log's verifier key");
    return 0;
  }
  const e = result.error;
  const where = [e.index !== undefined ? `record ${e.index}` : "", e.segment ? `segment ${e.segment}` : "", e.offset !== undefined ? `offset ${e.offset}` : ""].filter(Boolean).join(", ");
  // The verifier's message usually names the place already; add it only when it does not.
  const named = e.index === undefined || e.message.includes(`record ${e.index}`);
  console.log(`FAILED ${e.code}: ${e.message.replace(/\.$/, "")}${where && !named ? ` (${where})` : ""}; ${result.records} records verified before it`);
  return 1;
}

function opaPath(): string {
  if (process.env.AGATE_OPA) return process.env.AGATE_OPA;
  const local = join(process.env.AGATE_TOOLS ?? join(homedir(), ".local/agate-tools"), "bin/opa");
  if (existsSync(local)) return local;
  const onPath = Bun.which("opa");
  if (onPath) return onPath;
  throw new AgateError("OPA_MISSING", "the OPA compiler was not found: run scripts/opa.sh, or set AGATE_OPA to its path");
}

async function policy(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  const { values } = parseArgs({ args: rest, options: { policies: { type: "string" }, out: { type: "string" } } });
  const policiesDir = resolve(values.policies ?? "policies");
  const outDir = resolve(values.out ?? "wasm");
  if (sub === "build") {
    const m = await buildPolicies({ policiesDir, outDir, opaPath: opaPath() });
    for (const w of m.warnings) process.stderr.write(`agate: warning: ${w}\n`);
    console.log(`built ${join(outDir, "policy.wasm")} from ${policiesDir} (sources ${m.sources_sha256.slice(0, 12)}…)`);
    return 0;
  }
  if (sub === "check") {
    const r = await checkFresh({ policiesDir, outDir });
    if (r.fresh) {
      console.log(`fresh: ${outDir} matches ${policiesDir}`);
      return 0;
    }
    console.log(`stale: ${outDir} was built from sources ${String(r.got).slice(0, 12)}…, ${policiesDir} is now ${r.want.slice(0, 12)}…; run 'agate policy build'`);
    return 1;
  }
  throw new AgateError("USAGE", `policy needs a subcommand: build or check (got ${sub ?? "nothing"})`);
}

async function sshCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, options: { config: { type: "string", short: "c" } }, allowPositionals: true });
  if (positionals[0] !== "host-keys") throw new AgateError("USAGE", `ssh needs a subcommand: host-keys (got ${positionals[0] ?? "nothing"})`);
  if (!values.config) throw new AgateError("USAGE", "ssh host-keys needs --config FILE");
  const config = loadConfig(values.config);
  if (config.ssh.length === 0) throw new AgateError("USAGE", `${values.config} has no protocol: ssh connection`);
  for (const c of config.ssh) {
    for (const k of ensureHostKeys(c.host_keys_dir).keys) {
      const pub = readFileSync(`${k.file}.pub`, "utf8").trim().split(/\s+/).slice(0, 2).join(" ");
      console.log(`${c.name} ${k.type} ${k.fingerprint}\n  [${c.host}]:${c.port} ${pub}`);
    }
  }
  return 0;
}

async function keys(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === "generate") return generateSigningKey(rest);
  if (sub !== "create") throw new AgateError("USAGE", `keys needs a subcommand: create or generate (got ${sub ?? "nothing"})`);
  const { values } = parseArgs({ args: rest, options: { id: { type: "string" }, groups: { type: "string" }, kind: { type: "string" } } });
  if (!values.id) throw new AgateError("USAGE", "keys create needs --id ID");
  const kind = values.kind ?? "service";
  if (!["service", "agent", "human"].includes(kind)) throw new AgateError("USAGE", `--kind is ${kind}; expected service, agent or human`);
  const groups = values.groups ? values.groups.split(",").map((g) => g.trim()).filter(Boolean) : [];
  const { key, sha256 } = createApiKey();
  process.stderr.write("The key is shown once; agate keeps only its SHA-256.\n");
  console.log(`key: ${key}`);
  console.log(`\n# under identity.api_keys:\n- id: ${values.id}\n  kind: ${kind}\n  groups: [${groups.join(", ")}]\n  sha256: ${sha256}`);
  return 0;
}

async function proof(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  const { values } = parseArgs({
    args: rest,
    options: {
      key: { type: "string", short: "k" },
      server: { type: "string", short: "s" },
      "api-key": { type: "string" },
      log: { type: "string", short: "l" },
      index: { type: "string", short: "i" },
      checkpoint: { type: "string" },
      old: { type: "string" },
      save: { type: "string" },
      json: { type: "boolean" },
    },
  });
  if (sub !== "inclusion" && sub !== "consistency") throw new AgateError("USAGE", `proof needs a subcommand: inclusion or consistency (got ${sub ?? "nothing"})`);
  if (!values.key) throw new AgateError("USAGE", "proof needs --key with the log's verifier key");
  if (!values.server === !values.log) throw new AgateError("USAGE", "proof needs --server URL or --log DIR (one of them)");
  const key = readVerifierKey(values.key);
  const apiKey = values["api-key"] ?? process.env.AGATE_API_KEY;
  if (values.server && !apiKey) throw new AgateError("USAGE", "--server needs --api-key KEY (or $AGATE_API_KEY)");
  const src = values.server ? httpSource(values.server, apiKey!) : dirSource(values.log!);
  const b64 = (h: Uint8Array) => Buffer.from(h).toString("base64");
  try {
    if (sub === "inclusion") {
      if (values.index === undefined || !/^\d+$/.test(values.index)) throw new AgateError("USAGE", "proof inclusion needs --index I (a record index)");
      const r = await proveInclusion(src, key, Number(values.index), values.checkpoint ? readFileSync(values.checkpoint, "utf8") : undefined);
      if (values.json) {
        console.log(JSON.stringify({ verified: true, index: r.index, size: r.checkpoint.size, root: b64(r.checkpoint.root), leaf_hash: b64(r.leafHash), hashes: r.proof.map(b64), record: JSON.parse(Buffer.from(r.record).toString("utf8")) }));
      } else {
        console.log(`ok: record ${r.index} is in the log signed by ${key.name} at size ${r.checkpoint.size} (root ${b64(r.checkpoint.root)})`);
        console.log(`leaf hash ${b64(r.leafHash)}, proof of ${r.proof.length} hashes`);
        console.log(Buffer.from(r.record).toString("utf8"));
      }
      return 0;
    }
    if (!values.old) throw new AgateError("USAGE", "proof consistency needs --old FILE (a checkpoint you kept)");
    const r = await proveConsistency(src, key, readFileSync(values.old, "utf8"));
    if (values.save) writeFileSync(values.save, r.note);
    if (values.json) console.log(JSON.stringify({ verified: true, from: r.from.size, to: r.to.size, from_root: b64(r.from.root), to_root: b64(r.to.root), hashes: r.proof.map(b64) }));
    else console.log(`ok: the log at size ${r.to.size} (root ${b64(r.to.root)}) extends the one at size ${r.from.size}; proof of ${r.proof.length} hashes${values.save ? `; saved the new checkpoint to ${values.save}` : ""}`);
    return 0;
  } catch (e) {
    if (e instanceof AgateError && (e.code === "PROOF_FAILED" || e.code.startsWith("NOTE_") || e.code === "CHECKPOINT_BAD")) {
      console.log(`FAILED ${e.code}: ${e.message}`);
      return 1;
    }
    throw e;
  }
}

/** Who runs this command, for the audit log: the system user (SUDO_USER behind sudo) and the host. */
function operator(): string {
  let user = process.env.SUDO_USER;
  if (!user) {
    try {
      user = userInfo().username;
    } catch {
      user = `uid ${process.getuid?.() ?? "?"}`;
    }
  }
  return `${user}@${hostname()}`;
}

/** The accounts store named by --db, or by identity.accounts in --config (read without the rest of the config). */
function openAccounts(values: { db?: string; config?: string }): AccountStore {
  if (values.db) return new AccountStore(values.db);
  if (!values.config) throw new AgateError("USAGE", "accounts needs --db FILE or --config FILE (whose identity.accounts names the store)");
  let doc: { identity?: { accounts?: unknown } };
  try {
    doc = parseYaml(readFileSync(values.config, "utf8")) as typeof doc;
  } catch (e) {
    throw new AgateError("CONFIG_UNREADABLE", `cannot read ${values.config}: ${(e as Error).message}`);
  }
  const file = doc?.identity?.accounts;
  if (typeof file !== "string") throw new AgateError("CONFIG_INVALID", `${values.config} has no identity.accounts: add one (e.g. accounts: ./accounts.db) or pass --db`);
  return new AccountStore(resolve(dirname(resolve(values.config)), file));
}

async function accounts(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: {
      db: { type: "string" },
      config: { type: "string", short: "c" },
      id: { type: "string" },
      groups: { type: "string" },
      kind: { type: "string" },
      owner: { type: "string" },
      expires: { type: "string" },
      json: { type: "boolean" },
    },
  });
  if (sub !== "create" && sub !== "list" && sub !== "revoke" && sub !== "locked" && sub !== "unlock") throw new AgateError("USAGE", `accounts needs a subcommand: create, list, revoke, locked or unlock (got ${sub ?? "nothing"})`);
  const store = openAccounts(values);
  try {
    if (sub === "create") {
      if (!values.id) throw new AgateError("USAGE", "accounts create needs --id ID");
      const kind = values.kind ?? "service";
      if (kind !== "service" && kind !== "agent" && kind !== "human") throw new AgateError("USAGE", `--kind is ${kind}; expected service, agent or human`);
      const groups = values.groups ? values.groups.split(",").map((g) => g.trim()).filter(Boolean) : [];
      const { key, account } = store.create({ id: values.id, groups, kind, ...(values.owner ? { owner: values.owner } : {}), ...(values.expires ? { expires_at: values.expires } : {}) });
      process.stderr.write(`account ${account.id} created in ${store.path}; the key is shown once, agate keeps only its SHA-256
`);
      console.log(key);
      return 0;
    }
    if (sub === "revoke") {
      const id = positionals[0] ?? values.id;
      if (!id) throw new AgateError("USAGE", "accounts revoke needs the account id");
      if (!store.revoke(id)) {
        const a = store.byId(id);
        throw new AgateError("ACCOUNT_NOT_FOUND", a ? `account ${id} was already revoked at ${a.revoked_at}` : `no account ${id} in ${store.path}`);
      }
      console.log(`revoked ${id}: its key is refused from now on, in open sessions too`);
      return 0;
    }
    if (sub === "unlock") {
      const user = positionals[0];
      if (!user) throw new AgateError("USAGE", "accounts unlock needs the user name (see agate accounts locked)");
      if (!store.unlockUser(user, operator())) throw new AgateError("NOT_LOCKED", `"${user}" is not locked in ${store.path}`);
      console.log(`unlocked ${user}: its logins are accepted again (recorded in the audit log by the gateway)`);
      return 0;
    }
    if (sub === "locked") {
      const locked = store.lockedUsers();
      if (values.json) console.log(JSON.stringify(locked));
      else for (const l of locked) console.log(`${l.user}  locked ${l.locked_at} after ${l.failures} failed logins`);
      return 0;
    }
    const all = store.list();
    if (values.json) {
      console.log(JSON.stringify(all.map(({ sha256: _, ...a }) => a)));
      return 0;
    }
    const now = Date.now();
    const state = (a: (typeof all)[number]) => (a.revoked_at ? `revoked ${a.revoked_at}` : a.expires_at && Date.parse(a.expires_at) <= now ? `expired ${a.expires_at}` : a.expires_at ? `active until ${a.expires_at}` : "active");
    const rows = [["ID", "KIND", "GROUPS", "OWNER", "CREATED", "STATE"], ...all.map((a) => [a.id, a.kind, a.groups.join(",") || "-", a.owner ?? "-", a.created_at, state(a)])];
    const widths = rows[0]!.map((_, k) => Math.max(...rows.map((r) => r[k]!.length)));
    for (const r of rows) console.log(r.map((c, k) => c.padEnd(widths[k]!)).join("  ").trimEnd());
    return 0;
  } finally {
    store.close();
  }
}

async function approvalsCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: {
      server: { type: "string", short: "s" },
      token: { type: "string", short: "t" },
      reason: { type: "string", short: "r" },
      grant: { type: "string" },
      status: { type: "string" },
      json: { type: "boolean" },
    },
  });
  if (!sub || !["list", "show", "approve", "deny"].includes(sub)) throw new AgateError("USAGE", `approvals needs a subcommand: list, show, approve or deny (got ${sub ?? "nothing"})`);
  const server = values.server ?? process.env.AGATE_SERVER;
  const token = values.token ?? process.env.AGATE_TOKEN;
  if (!server) throw new AgateError("USAGE", "approvals needs --server URL (the gateway's admin API) or $AGATE_SERVER");
  if (!token) throw new AgateError("USAGE", "approvals needs --token CREDENTIAL (your OIDC token or API key) or $AGATE_TOKEN");
  const call = async (method: string, path: string, body?: object): Promise<unknown> => {
    const res = await fetch(new URL(path, server), {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body ? { "content-type": "application/json" } : {}) },
      ...(body ? { body: JSON.stringify(body) } : {}),
      signal: AbortSignal.timeout(30_000),
    });
    const json = (await res.json().catch(() => ({}))) as { error?: { code: string; message: string } };
    if (!res.ok) throw new AgateError(json.error?.code ?? "API_ERROR", json.error?.message ?? `HTTP ${res.status}`);
    return json;
  };
  type Req = { id: string; status: string; requester: { subject: string }; connection: { name: string }; command: { text: string }; created_at: string; expires_at: string; approvers: string[]; min_approvers: number; votes: { by: { subject: string }; decision: string; reason: string }[]; decided_reason?: string; reasons: string[]; estimate?: string };
  const show = (r: Req) => {
    console.log(`${r.id}  ${r.status}${r.decided_reason ? ` (${r.decided_reason})` : ""}`);
    console.log(`  requester  ${r.requester.subject} on ${r.connection.name}, ${r.created_at}, expires ${r.expires_at}`);
    console.log(`  command    ${r.command.text}`);
    console.log(`  why        ${r.reasons.join("; ")}`);
    if (r.estimate) console.log(`  estimate   ${r.estimate}`);
    console.log(`  approvers  ${r.approvers.join(", ")} (${r.min_approvers} needed)`);
    for (const v of r.votes) console.log(`  vote       ${v.by.subject}: ${v.decision}, "${v.reason}"`);
  };
  const id = positionals[0];
  if (sub === "list") {
    const q = values.status ? `?status=${encodeURIComponent(values.status)}` : "";
    const { requests } = (await call("GET", `/v1/approvals${q}`)) as { requests: Req[] };
    if (values.json) console.log(JSON.stringify(requests));
    else if (requests.length === 0) console.log("no requests");
    else for (const r of requests) console.log(`${r.id}  ${r.status.padEnd(9)}  ${r.requester.subject} on ${r.connection.name}: ${r.command.text.slice(0, 80)}${r.estimate ? `  [${r.estimate}]` : ""}`);
    return 0;
  }
  if (!id) throw new AgateError("USAGE", `approvals ${sub} needs the request id`);
  if (sub === "show") {
    const r = (await call("GET", `/v1/approvals/${encodeURIComponent(id)}`)) as Req;
    if (values.json) console.log(JSON.stringify(r));
    else show(r);
    return 0;
  }
  if (!values.reason) throw new AgateError("USAGE", `approvals ${sub} needs --reason TEXT (it goes into the audit log)`);
  let grant: number | undefined;
  if (values.grant !== undefined) {
    if (sub !== "approve") throw new AgateError("USAGE", "--grant is for approve");
    grant = Number(values.grant.replace(/m$/, ""));
    if (!Number.isFinite(grant) || grant <= 0) throw new AgateError("USAGE", `--grant is a number of minutes; got ${values.grant}`);
  }
  const r = (await call("POST", `/v1/approvals/${encodeURIComponent(id)}/${sub}`, { reason: values.reason, ...(grant !== undefined ? { grant_minutes: grant } : {}) })) as Req;
  show(r);
  return 0;
}

async function loginCommand(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { issuer: { type: "string" }, "client-id": { type: "string" }, audience: { type: "string" }, resource: { type: "string" }, scope: { type: "string" }, force: { type: "boolean" } },
  });
  if (!values.issuer) throw new AgateError("USAGE", "login needs --issuer URL");
  if (!values["client-id"]) throw new AgateError("USAGE", "login needs --client-id ID (a public client allowed the device grant)");
  const r = await login({
    issuer: values.issuer,
    clientId: values["client-id"],
    audience: values.audience ?? "agate",
    ...(values.resource ? { resource: values.resource } : {}),
    scope: values.scope ?? "openid",
    tell: (line) => process.stderr.write(`${line}\n`),
    minValidity: 120,
    force: values.force ?? false,
  });
  process.stderr.write(`${r.cached ? "using the cached token" : "signed in"} as ${r.user}; the token is valid until ${r.expiresAt.toISOString()}\n`);
  const q = (v: string) => `'${v.replace(/'/g, "'\\''")}'`;
  console.log(`export PGUSER=${q(r.user)}`);
  console.log(`export PGPASSWORD=${q(r.token)}`);
  return 0;
}

async function generateSigningKey(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { name: { type: "string" }, out: { type: "string", short: "o" } } });
  if (!values.name) throw new AgateError("USAGE", "keys generate needs --name NAME (the log's origin, e.g. agate.example.com/audit)");
  if (!values.out) throw new AgateError("USAGE", "keys generate needs --out FILE for the private key");
  const { signerKey, verifierKey } = generateKey(values.name);
  try {
    writeFileSync(values.out, `${signerKey}\n`, { mode: 0o600, flag: "wx" });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EEXIST") throw new AgateError("KEY_EXISTS", `${values.out} exists; refusing to overwrite a signing key`);
    throw e;
  }
  writeFileSync(`${values.out}.pub`, `${verifierKey}\n`, { mode: 0o644 });
  process.stderr.write(`private key written to ${values.out} (mode 0600), verifier key to ${values.out}.pub\n`);
  console.log(verifierKey);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e) => {
    // Usage errors (ours, and parseArgs' unknown options or stray arguments) exit 2; anything else 1.
    const parseArgsError = e instanceof Error && "code" in e && String((e as { code: unknown }).code).startsWith("ERR_PARSE_ARGS");
    if (e instanceof AgateError) process.stderr.write(`agate: ${e.message} [${e.code}]\n`);
    else if (parseArgsError) process.stderr.write(`agate: ${e.message}; see 'agate <command> --help'\n`);
    else process.stderr.write(`agate: unexpected error: ${e instanceof Error ? e.stack : String(e)}\n`);
    process.exit((e instanceof AgateError && e.code === "USAGE") || parseArgsError ? 2 : 1);
  },
);
