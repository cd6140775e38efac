/**
 * The configuration file (YAML). Every key is checked at load and an error
 * names the key, what was found and what is expected, so a typo fails the
 * start-up instead of being ignored.
 *
 * ```yaml
 * audit:
 *   dir: ./.agate/audit
 *   durability: strict            # or: { mode: interval, interval_ms: 10 }
 *   signing_key: ./audit.key      # required; `agate keys generate --name ORIGIN --out audit.key`
 *   checkpoint: { every_records: 10000, every_seconds: 10 }
 *   seal_after_s: 300             # seal the open segment this long after its first record, so it ships
 *   ship:                         # optional: upload sealed segments and checkpoints
 *     url: s3://bucket/prefix
 *     endpoint: http://127.0.0.1:9000   # optional; AWS otherwise
 *     keep_local_s: 604800        # optional; delete local copies this long after upload (default: keep)
 * approvals:                      # holding commands the policy marks approval.required
 *   store: ./approvals.db         # SQLite (one gateway), or postgres://… / store_env: NAME (several)
 *   timeout_s: 300                # when the policy gives none
 *   public_url: https://agate.example.com   # links in notices and webhooks (default: the admin API)
 *   webhooks: [{ url: https://hooks.slack.com/…, format: slack }]
 * mask:                           # optional: the key of the "hmac" masking style (>= 32 bytes)
 *   hmac_key_env: AGATE_MASK_KEY  # or hmac_key_file: ./mask.key (mode 0600)
 *   derived_store: ./mask-derived.db  # SQLite: rules derived when covered data is copied (default)
 * admin:                          # optional: the admin API (proofs, checkpoints, /metrics)
 *   listen: 127.0.0.1:9090
 *   groups: [auditor]             # API keys of these groups may call /v1
 * policy:
 *   bundle: ./wasm/policy.wasm    # optional; the embedded default otherwise
 *   data: {}                      # optional `data` document for the policy
 * identity:
 *   api_keys:
 *     - { id: ci-runner, groups: [ci], kind: service, sha256: <hex> }
 *   accounts: ./accounts.db       # optional: service accounts managed with `agate accounts`
 *   oidc:                         # optional: OIDC issuers whose tokens are accepted
 *     - issuer: https://idp.example.com
 *       audience: agate
 *       max_token_lifetime_s: 86400   # refuse tokens valid longer (exp - iat)
 * lockout:                        # failed logins (core/lockout.ts); these are the defaults
 *   window_s: 300
 *   delay_after: 3                # failures from one address before its failure answers are delayed
 *   delay_ms: 250                 # doubling per further failure, up to max_delay_ms
 *   max_delay_ms: 4000
 *   block_after: 20               # failures from one address at which it is blocked for block_s
 *   block_s: 600
 *   lock_user_after: 0            # failures for one user name at which it is locked (needs identity.accounts)
 * workers: 1                      # event loops serving the listeners: a number, or auto (one per CPU core)
 * connections:
 *   - name: app-db
 *     protocol: postgres
 *     listen: 127.0.0.1:6432
 *     tls: { cert: ./cert.pem, key: ./key.pem, required: false }
 *     target: { host: 127.0.0.1, port: 5432, database: app, user: app, password_env: APP_DB_PASSWORD }
 *     limits: { max_connections: 100, max_connections_per_address: 0, max_sessions_per_identity: 0,
 *               idle_session_timeout_s: 0, idle_in_transaction_timeout_s: 0, max_session_lifetime_s: 0 }   # 0: none
 * ```
 */
import { readFileSync, statSync } from "node:fs";
import { availableParallelism } from "node:os";
import { dirname, resolve } from "node:path";
import { parse } from "yaml";
import { MAX_PAYLOAD_BYTES } from "../audit/format.ts";
import { AgateError } from "../core/errors.ts";
import { DEFAULT_LIMITS, type LimitsConfig } from "../core/limits.ts";
import { DEFAULT_LOCKOUT, type LockoutConfig } from "../core/lockout.ts";
import type { ApiKeyAccount } from "../identity/apikey.ts";
import { ASYMMETRIC_ALGORITHMS, type OidcIssuerConfig } from "../identity/oidc.ts";
import type { PgTarget } from "../protocols/postgres/upstream.ts";
import { parseSshConnection, type SshConnectionConfig } from "./ssh.ts";

export type DurabilityConfig = { mode: "strict" } | { mode: "interval"; interval_ms: number };

export interface PostgresConnectionConfig {
  name: string;
  protocol: "postgres";
  host: string;
  port: number;
  /** Accept credentials without TLS: only for a loopback listener, and only when configured. */
  allow_plaintext_auth: boolean;
  tls?: { cert: string; key: string; required: boolean };
  target: PgTarget;
  max_message_bytes: number;
  startup_timeout_ms: number;
  limits: LimitsConfig;
}

export interface ShipConfig {
  bucket: string;
  prefix: string;
  endpoint?: string;
  region: string;
  access_key_id?: string;
  secret_access_key?: string;
  keep_local_s?: number;
}

export interface AuditConfig {
  dir: string;
  durability: DurabilityConfig;
  segment_bytes: number;
  /** The checkpoint signing key (its `PRIVATE+KEY+…` text) and the file it came from. */
  signing_key: { file: string; text: string };
  origin?: string;
  checkpoint: { every_records: number; every_seconds: number };
  seal_after_s: number;
  ship?: ShipConfig;
}

export interface ApprovalsConfig {
  /** A SQLite file path, or a postgres:// URL. */
  store: { kind: "sqlite"; path: string } | { kind: "postgres"; url: string };
  timeout_s: number;
  public_url?: string;
  gateway?: string;
  webhooks: { url: string; format: "slack" | "json" }[];
}

export interface MaskConfig {
  /** Key of the "hmac" masking style. */
  hmac_key?: Uint8Array;
  /** The SQLite file of derived mask rules (mask/derived.ts). */
  derived_store: string;
}

export interface Config {
  audit: AuditConfig;
  mask: MaskConfig;
  approvals: ApprovalsConfig;
  admin?: { host: string; port: number; groups: string[] };
  policy: { bundle?: string; data: Record<string, unknown>; watch: boolean };
  identity: { api_keys: ApiKeyAccount[]; accounts?: string; oidc: OidcIssuerConfig[] };
  lockout: LockoutConfig;
  connections: PostgresConnectionConfig[];
  /** `protocol: ssh` entries of `connections` (config/ssh.ts). */
  ssh: SshConnectionConfig[];
  log_level: "debug" | "info" | "warn" | "error";
  /** Threads that serve the listeners (src/workers); `auto` is resolved to the CPU count at load. */
  workers: number;
}

/** Read and validate a config file; relative paths resolve against the file's folder. */
export function loadConfig(file: string, env: Record<string, string | undefined> = process.env): Config {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new AgateError("CONFIG_UNREADABLE", `cannot read the configuration file ${file}: ${(e as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = parse(text);
  } catch (e) {
    throw new AgateError("CONFIG_INVALID", `${file} is not valid YAML: ${(e as Error).message}`);
  }
  return parseConfig(doc, dirname(resolve(file)), env);
}

export function parseConfig(doc: unknown, baseDir: string, env: Record<string, string | undefined> = process.env): Config {
  const root = obj(doc, "the configuration");
  const path = (p: string) => resolve(baseDir, p);

  only(root, "the configuration", ["audit", "admin", "approvals", "mask", "policy", "identity", "lockout", "connections", "log_level", "workers"]);
  const audit = obj(root.audit ?? {}, "audit");
  only(audit, "audit", ["dir", "durability", "segment_bytes", "signing_key", "origin", "checkpoint", "seal_after_s", "ship"]);
  const durability = parseDurability(audit.durability ?? "strict");
  const policy = obj(root.policy ?? {}, "policy");
  const identity = obj(root.identity ?? {}, "identity");
  only(identity, "identity", ["api_keys", "accounts", "oidc"]);

  const apiKeys = arr(identity.api_keys ?? [], "identity.api_keys").map((a, i): ApiKeyAccount => {
    const at = `identity.api_keys[${i}]`;
    const o = obj(a, at);
    const sha256 = str(o.sha256, `${at}.sha256`);
    if (!/^[0-9a-f]{64}$/i.test(sha256)) throw invalid(`${at}.sha256`, sha256, "64 hex digits (run `agate keys create`)");
    const kind = o.kind ?? "service";
    if (kind !== "human" && kind !== "service" && kind !== "agent") throw invalid(`${at}.kind`, kind, "human, service or agent");
    return {
      id: str(o.id, `${at}.id`),
      ...(o.subject !== undefined ? { subject: str(o.subject, `${at}.subject`) } : {}),
      groups: arr(o.groups ?? [], `${at}.groups`).map((g, j) => str(g, `${at}.groups[${j}]`)),
      kind,
      sha256,
      ...(o.expires_at !== undefined ? { expires_at: str(o.expires_at, `${at}.expires_at`) } : {}),
    };
  });

  const auditDir = path(str(audit.dir ?? "./.agate/audit", "audit.dir"));
  const connections: PostgresConnectionConfig[] = [];
  const ssh: SshConnectionConfig[] = [];
  arr(root.connections ?? [], "connections").forEach((c, i) => {
    const o = obj(c, `connections[${i}]`);
    if (o.protocol === "ssh") ssh.push(parseSshConnection(o, `connections[${i}]`, path, env, auditDir));
    else connections.push(parseConnection(o, `connections[${i}]`, path, env));
  });
  const names = new Set<string>();
  for (const c of [...connections, ...ssh]) {
    if (names.has(c.name)) throw new AgateError("CONFIG_INVALID", `two connections are named "${c.name}"; names must be unique`);
    names.add(c.name);
  }

  const logLevel = root.log_level ?? "info";
  if (!["debug", "info", "warn", "error"].includes(logLevel as string)) throw invalid("log_level", logLevel, "debug, info, warn or error");

  return {
    audit: parseAudit(audit, durability, path, env),
    approvals: parseApprovals(obj(root.approvals ?? {}, "approvals"), path, env),
    mask: parseMask(obj(root.mask ?? {}, "mask"), path, env),
    ...(root.admin !== undefined ? { admin: parseAdmin(obj(root.admin, "admin")) } : {}),
    policy: {
      ...(policy.bundle !== undefined ? { bundle: path(str(policy.bundle, "policy.bundle")) } : {}),
      data: obj(policy.data ?? {}, "policy.data"),
      watch: bool(policy.watch ?? true, "policy.watch"),
    },
    identity: {
      api_keys: apiKeys,
      ...(identity.accounts !== undefined ? { accounts: path(str(identity.accounts, "identity.accounts")) } : {}),
      oidc: arr(identity.oidc ?? [], "identity.oidc").map((o, i) => parseOidc(obj(o, `identity.oidc[${i}]`), `identity.oidc[${i}]`)),
    },
    lockout: parseLockout(obj(root.lockout ?? {}, "lockout"), identity.accounts !== undefined),
    connections,
    ssh,
    log_level: logLevel as Config["log_level"],
    workers: parseWorkers(root.workers ?? 1, "workers"),
  };
}

/** Most threads a gateway runs: past this a typo (workers: 1000) would only cost memory. */
const MAX_WORKERS = 256;

/** `workers`: a count from 1, or auto (the CPU cores this process may use). */
export function parseWorkers(v: unknown, at: string): number {
  if (v === "auto") return availableParallelism();
  const n = typeof v === "string" && /^\d+$/.test(v) ? Number(v) : v;
  if (typeof n !== "number" || !Number.isInteger(n) || n < 1 || n > MAX_WORKERS) throw invalid(at, v, `auto or a whole number from 1 to ${MAX_WORKERS}`);
  return n;
}

/** A key file's text; it must not be readable by group or others. */
export function readPrivateFile(file: string, at: string): string {
  let mode: number;
  let text: string;
  try {
    mode = statSync(file).mode;
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new AgateError("CONFIG_INVALID", `${at}: cannot read ${file}: ${(e as Error).message}`, { at });
  }
  if (mode & 0o077) {
    throw new AgateError("CONFIG_INVALID", `${at}: ${file} is readable by others (mode ${(mode & 0o777).toString(8)}); run \`chmod 600 ${file}\``, { at });
  }
  return text;
}

/** mask: the hmac style's key, from a file (mode 0600) or an environment variable; at least 32 bytes. */
function parseMask(o: Record<string, unknown>, path: (p: string) => string, env: Record<string, string | undefined>): MaskConfig {
  only(o, "mask", ["hmac_key_file", "hmac_key_env", "derived_store"]);
  const derived_store = path(o.derived_store === undefined ? "./mask-derived.db" : str(o.derived_store, "mask.derived_store"));
  if (o.hmac_key_file !== undefined && o.hmac_key_env !== undefined) throw new AgateError("CONFIG_INVALID", "mask: give hmac_key_file or hmac_key_env, not both");
  let key: string | undefined;
  let at = "mask.hmac_key_file";
  if (o.hmac_key_file !== undefined) key = readPrivateFile(path(str(o.hmac_key_file, at)), at).trim();
  else if (o.hmac_key_env !== undefined) {
    at = "mask.hmac_key_env";
    const name = str(o.hmac_key_env, at);
    key = env[name];
    if (key === undefined) throw new AgateError("CONFIG_INVALID", `${at} names ${name}, which is not set in the environment`, { at });
  }
  if (key === undefined) return { derived_store };
  const bytes = new TextEncoder().encode(key);
  if (bytes.length < 32) throw new AgateError("CONFIG_INVALID", `${at}: the key is ${bytes.length} bytes; use at least 32 (e.g. \`openssl rand -hex 32\`)`, { at });
  return { hmac_key: bytes, derived_store };
}

function parseAudit(a: Record<string, unknown>, durability: DurabilityConfig, path: (p: string) => string, env: Record<string, string | undefined>): AuditConfig {
  if (a.signing_key === undefined) {
    throw new AgateError("CONFIG_INVALID", "audit.signing_key is required: make one with `agate keys generate --name ORIGIN --out audit.key` and point audit.signing_key at it", { at: "audit.signing_key" });
  }
  const file = path(str(a.signing_key, "audit.signing_key"));
  const text = readPrivateFile(file, "audit.signing_key");
  const cp = obj(a.checkpoint ?? {}, "audit.checkpoint");
  only(cp, "audit.checkpoint", ["every_records", "every_seconds"]);
  const everyRecords = num(cp.every_records ?? 10_000, "audit.checkpoint.every_records");
  const everySeconds = num(cp.every_seconds ?? 10, "audit.checkpoint.every_seconds");
  if (!Number.isInteger(everyRecords) || everyRecords < 1) throw invalid("audit.checkpoint.every_records", everyRecords, "a whole number >= 1");
  if (!(everySeconds > 0)) throw invalid("audit.checkpoint.every_seconds", everySeconds, "a number of seconds > 0");
  const sealAfter = num(a.seal_after_s ?? 300, "audit.seal_after_s");
  if (!(sealAfter > 0)) throw invalid("audit.seal_after_s", sealAfter, "a number of seconds > 0");
  return {
    dir: path(str(a.dir ?? "./.agate/audit", "audit.dir")),
    durability,
    segment_bytes: num(a.segment_bytes ?? 64 << 20, "audit.segment_bytes"),
    signing_key: { file, text },
    ...(a.origin !== undefined ? { origin: str(a.origin, "audit.origin") } : {}),
    checkpoint: { every_records: everyRecords, every_seconds: everySeconds },
    seal_after_s: sealAfter,
    ...(a.ship !== undefined ? { ship: parseShip(obj(a.ship, "audit.ship"), env) } : {}),
  };
}

function parseShip(o: Record<string, unknown>, env: Record<string, string | undefined>): ShipConfig {
  only(o, "audit.ship", ["url", "endpoint", "region", "access_key_id_env", "secret_access_key_env", "keep_local_s"]);
  const url = str(o.url, "audit.ship.url");
  const m = /^s3:\/\/([^/]+)\/?(.*)$/.exec(url);
  if (!m) throw invalid("audit.ship.url", url, "s3://bucket or s3://bucket/prefix");
  const keyEnv = str(o.access_key_id_env ?? "AWS_ACCESS_KEY_ID", "audit.ship.access_key_id_env");
  const secretEnv = str(o.secret_access_key_env ?? "AWS_SECRET_ACCESS_KEY", "audit.ship.secret_access_key_env");
  const keep = o.keep_local_s === undefined ? undefined : num(o.keep_local_s, "audit.ship.keep_local_s");
  if (keep !== undefined && keep < 0) throw invalid("audit.ship.keep_local_s", keep, "a number of seconds >= 0");
  return {
    bucket: m[1]!,
    prefix: m[2]!.replace(/\/+$/, ""),
    ...(o.endpoint !== undefined ? { endpoint: str(o.endpoint, "audit.ship.endpoint") } : {}),
    region: str(o.region ?? env.AWS_REGION ?? "us-east-1", "audit.ship.region"),
    ...(env[keyEnv] ? { access_key_id: env[keyEnv] } : {}),
    ...(env[secretEnv] ? { secret_access_key: env[secretEnv] } : {}),
    ...(keep !== undefined ? { keep_local_s: keep } : {}),
  };
}

const DEFAULT_ALGORITHMS = ["RS256", "PS256", "ES256", "EdDSA"];

function parseOidc(o: Record<string, unknown>, at: string): OidcIssuerConfig {
  only(o, at, ["issuer", "audience", "algorithms", "clock_skew_s", "groups_claim", "actor_claim", "kind", "jwks_uri", "jwks_cache_s", "jwks_cooldown_s", "user_claims", "max_token_lifetime_s"]);
  const issuer = str(o.issuer, `${at}.issuer`);
  let url: URL;
  try {
    url = new URL(issuer);
  } catch {
    throw invalid(`${at}.issuer`, issuer, "an https URL");
  }
  const loopback = ["127.0.0.1", "localhost", "[::1]"].includes(url.hostname);
  if (url.protocol !== "https:" && !(url.protocol === "http:" && loopback)) throw invalid(`${at}.issuer`, issuer, "an https URL (http only on a loopback address)");
  const list = (v: unknown, name: string) => (typeof v === "string" ? [v] : arr(v, `${at}.${name}`).map((x, j) => str(x, `${at}.${name}[${j}]`)));
  const audience = list(o.audience, "audience");
  if (audience.length === 0) throw invalid(`${at}.audience`, o.audience, "the audience (aud) agate accepts, e.g. agate");
  const algorithms = o.algorithms === undefined ? DEFAULT_ALGORITHMS : list(o.algorithms, "algorithms");
  const bad = algorithms.filter((a) => !ASYMMETRIC_ALGORITHMS.includes(a));
  if (bad.length) throw invalid(`${at}.algorithms`, bad, `asymmetric signature algorithms only (${ASYMMETRIC_ALGORITHMS.join(", ")}); never none or HS*`);
  const kind = o.kind ?? "human";
  if (kind !== "human" && kind !== "service" && kind !== "agent") throw invalid(`${at}.kind`, kind, "human, service or agent");
  const seconds = (name: string, dflt: number, max: number) => {
    const v = num(o[name] ?? dflt, `${at}.${name}`);
    if (v < 0 || v > max) throw invalid(`${at}.${name}`, v, `seconds from 0 to ${max}`);
    return v;
  };
  // A day by default; up to 30 days for providers that issue long-lived tokens (0 would refuse every token).
  const lifetime = seconds("max_token_lifetime_s", 86_400, 2_592_000);
  if (lifetime < 1) throw invalid(`${at}.max_token_lifetime_s`, lifetime, "seconds from 1 to 2592000");
  return {
    issuer,
    audience,
    algorithms,
    clock_skew_s: seconds("clock_skew_s", 60, 600),
    groups_claim: str(o.groups_claim ?? "groups", `${at}.groups_claim`),
    ...(o.actor_claim !== undefined ? { actor_claim: str(o.actor_claim, `${at}.actor_claim`) } : { actor_claim: "act" }),
    kind,
    ...(o.jwks_uri !== undefined ? { jwks_uri: str(o.jwks_uri, `${at}.jwks_uri`) } : {}),
    jwks_cache_s: seconds("jwks_cache_s", 600, 86_400),
    jwks_cooldown_s: seconds("jwks_cooldown_s", 30, 3600),
    max_token_lifetime_s: lifetime,
    user_claims: o.user_claims === undefined ? ["sub", "preferred_username", "email"] : list(o.user_claims, "user_claims"),
  };
}

function parseApprovals(o: Record<string, unknown>, path: (p: string) => string, env: Record<string, string | undefined>): ApprovalsConfig {
  only(o, "approvals", ["store", "store_env", "timeout_s", "public_url", "gateway", "webhooks"]);
  let url: string | undefined;
  if (o.store_env !== undefined) {
    const name = str(o.store_env, "approvals.store_env");
    url = env[name];
    if (!url) throw new AgateError("CONFIG_INVALID", `approvals.store_env names ${name}, which is not set in the environment`);
  } else if (o.store !== undefined) url = str(o.store, "approvals.store");
  const store: ApprovalsConfig["store"] = url && /^postgres(ql)?:\/\//.test(url) ? { kind: "postgres", url } : { kind: "sqlite", path: path(url ?? "./approvals.db") };
  const timeout = num(o.timeout_s ?? 300, "approvals.timeout_s");
  if (!(timeout > 0 && timeout <= 86_400)) throw invalid("approvals.timeout_s", timeout, "seconds from 1 to 86400");
  const webhooks = arr(o.webhooks ?? [], "approvals.webhooks").map((w, i) => {
    const at = `approvals.webhooks[${i}]`;
    const x = obj(w, at);
    only(x, at, ["url", "format"]);
    const format = x.format ?? "json";
    if (format !== "slack" && format !== "json") throw invalid(`${at}.format`, format, "slack or json");
    return { url: str(x.url, `${at}.url`), format: format as "slack" | "json" };
  });
  return {
    store,
    timeout_s: timeout,
    ...(o.public_url !== undefined ? { public_url: str(o.public_url, "approvals.public_url") } : {}),
    ...(o.gateway !== undefined ? { gateway: str(o.gateway, "approvals.gateway") } : {}),
    webhooks,
  };
}

function parseAdmin(o: Record<string, unknown>): NonNullable<Config["admin"]> {
  only(o, "admin", ["listen", "groups"]);
  const [host, port] = hostPort(str(o.listen, "admin.listen"), "admin.listen");
  return { host, port, groups: arr(o.groups ?? ["auditor"], "admin.groups").map((g, j) => str(g, `admin.groups[${j}]`)) };
}

/** Refuse keys a section does not know: a typo must fail the start-up, not be ignored. */
export function only(o: Record<string, unknown>, at: string, known: string[]): void {
  for (const k of Object.keys(o)) {
    if (!known.includes(k)) throw new AgateError("CONFIG_INVALID", `${at} has an unknown key "${k}"; known keys: ${known.join(", ")}`, { at, key: k });
  }
}

function parseDurability(v: unknown): DurabilityConfig {
  if (v === "strict") return { mode: "strict" };
  const o = obj(v, "audit.durability");
  if (o.mode === "strict") return { mode: "strict" };
  if (o.mode === "interval") {
    const ms = num(o.interval_ms, "audit.durability.interval_ms");
    if (ms <= 0 || ms > 10_000) throw invalid("audit.durability.interval_ms", ms, "a number of milliseconds from 1 to 10000");
    return { mode: "interval", interval_ms: ms };
  }
  throw invalid("audit.durability", v, `"strict" or { mode: interval, interval_ms: N }`);
}

function parseConnection(o: Record<string, unknown>, at: string, path: (p: string) => string, env: Record<string, string | undefined>): PostgresConnectionConfig {
  only(o, at, ["name", "protocol", "listen", "tls", "target", "max_message_bytes", "startup_timeout_ms", "allow_plaintext_auth", "limits"]);
  const name = str(o.name, `${at}.name`);
  const protocol = o.protocol ?? "postgres";
  if (protocol !== "postgres") throw invalid(`${at}.protocol`, protocol, `"postgres" or "ssh" (HTTP comes later)`);
  const [host, port] = hostPort(str(o.listen, `${at}.listen`), `${at}.listen`);
  const allowPlain = bool(o.allow_plaintext_auth ?? false, `${at}.allow_plaintext_auth`);
  if (allowPlain && !isLoopback(host)) {
    throw invalid(`${at}.allow_plaintext_auth`, true, `false for a listener on ${host}: credentials travel in the clear only on a loopback address (configure tls instead)`);
  }
  const t = obj(o.target, `${at}.target`);
  only(t, `${at}.target`, ["host", "port", "database", "user", "password", "password_env", "sslmode", "connect_timeout_ms"]);
  let password: string | undefined;
  if (t.password !== undefined) password = str(t.password, `${at}.target.password`);
  if (t.password_env !== undefined) {
    const name = str(t.password_env, `${at}.target.password_env`);
    password = env[name];
    if (password === undefined) throw new AgateError("CONFIG_INVALID", `${at}.target.password_env names ${name}, which is not set in the environment`);
  }
  const sslmode = t.sslmode ?? "disable";
  if (sslmode !== "disable" && sslmode !== "require" && sslmode !== "verify-full") throw invalid(`${at}.target.sslmode`, sslmode, "disable, require or verify-full");
  let tls: PostgresConnectionConfig["tls"];
  if (o.tls === undefined && !allowPlain) {
    throw new AgateError(
      "CONFIG_INVALID",
      `${at} has no tls, so clients' API keys and tokens would travel in the clear: configure tls (cert, key), or for a loopback listener set allow_plaintext_auth: true`,
      { at },
    );
  }
  if (o.tls !== undefined) {
    const x = obj(o.tls, `${at}.tls`);
    tls = {
      cert: readPem(path(str(x.cert, `${at}.tls.cert`)), `${at}.tls.cert`),
      key: readPem(path(str(x.key, `${at}.tls.key`)), `${at}.tls.key`),
      required: bool(x.required ?? false, `${at}.tls.required`),
    };
  }
  return {
    name,
    protocol: "postgres",
    host,
    port,
    allow_plaintext_auth: allowPlain,
    ...(tls ? { tls } : {}),
    target: {
      host: str(t.host ?? "127.0.0.1", `${at}.target.host`),
      port: num(t.port ?? 5432, `${at}.target.port`),
      database: str(t.database, `${at}.target.database`),
      user: str(t.user, `${at}.target.user`),
      ...(password !== undefined ? { password } : {}),
      sslmode,
      connect_timeout_ms: num(t.connect_timeout_ms ?? 10_000, `${at}.target.connect_timeout_ms`),
    },
    max_message_bytes: maxMessageBytes(o.max_message_bytes, `${at}.max_message_bytes`),
    // PostgreSQL's authentication_timeout defaults to one minute too.
    startup_timeout_ms: num(o.startup_timeout_ms ?? 60_000, `${at}.startup_timeout_ms`),
    limits: parseLimits(obj(o.limits ?? {}, `${at}.limits`), `${at}.limits`),
  };
}

/** A connection's limits (core/limits.ts): counts are whole numbers, times seconds; 0 turns one off. */
export function parseLimits(o: Record<string, unknown>, at: string): LimitsConfig {
  only(o, at, Object.keys(DEFAULT_LIMITS));
  const out = { ...DEFAULT_LIMITS };
  for (const k of Object.keys(DEFAULT_LIMITS) as (keyof LimitsConfig)[]) {
    const v = num(o[k] ?? DEFAULT_LIMITS[k], `${at}.${k}`);
    const seconds = k.endsWith("_s");
    if (v < 0 || (!seconds && !Number.isInteger(v))) throw invalid(`${at}.${k}`, v, seconds ? "a number of seconds >= 0 (0: none)" : "a whole number >= 0 (0: no limit)");
    out[k] = v;
  }
  return out;
}

/** lockout (core/lockout.ts). A user lock is kept in the accounts store: lock_user_after needs identity.accounts. */
function parseLockout(o: Record<string, unknown>, hasAccounts: boolean): LockoutConfig {
  only(o, "lockout", Object.keys(DEFAULT_LOCKOUT));
  const out = { ...DEFAULT_LOCKOUT };
  for (const k of Object.keys(DEFAULT_LOCKOUT) as (keyof LockoutConfig)[]) {
    const v = num(o[k] ?? DEFAULT_LOCKOUT[k], `lockout.${k}`);
    const whole = k === "delay_after" || k === "block_after" || k === "lock_user_after";
    if (v < 0 || (whole && !Number.isInteger(v))) throw invalid(`lockout.${k}`, v, whole ? "a whole number >= 0 (0: never)" : "a number >= 0");
    out[k] = v;
  }
  if (!(out.window_s > 0)) throw invalid("lockout.window_s", out.window_s, "a number of seconds > 0");
  if (out.lock_user_after > 0 && !hasAccounts) {
    throw new AgateError("CONFIG_INVALID", "lockout.lock_user_after needs identity.accounts: a user lock is kept in the accounts store so it survives a restart (add accounts: ./accounts.db, or set lock_user_after: 0)", { at: "lockout.lock_user_after" });
  }
  return out;
}

/**
 * The largest frontend message accepted after login. Every statement is
 * recorded before it runs, in one audit record of at most MAX_PAYLOAD_BYTES
 * (16 MiB): a larger message could never be recorded, so it is refused from
 * its length header. The default, half of that, leaves room for the
 * record's escaping (JSON, base64 of binary parameters) and its other
 * fields. CopyData is not recorded and not bound by it (it is streamed).
 */
function maxMessageBytes(v: unknown, at: string): number {
  const n = num(v ?? MAX_PAYLOAD_BYTES / 2, at);
  if (!Number.isInteger(n) || n < 1024 || n > MAX_PAYLOAD_BYTES) {
    throw new AgateError("CONFIG_INVALID", `${at}: ${String(v)} is outside 1024..${MAX_PAYLOAD_BYTES}: a message larger than an audit record (16 MiB) could not be recorded; omit it for the default of ${MAX_PAYLOAD_BYTES / 2} (COPY data is streamed and not bound by it)`);
  }
  return n;
}

function readPem(file: string, at: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (e) {
    throw new AgateError("CONFIG_INVALID", `${at}: cannot read ${file}: ${(e as Error).message}`);
  }
}

/** A loopback address: 127.0.0.0/8, ::1, localhost. */
export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

export function hostPort(v: string, at: string): [string, number] {
  const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(v);
  if (!m) throw invalid(at, v, "host:port, e.g. 127.0.0.1:6432");
  return [m[1]!.replace(/^\[|\]$/g, ""), Number(m[2])];
}

export function invalid(at: string, got: unknown, want: string): AgateError {
  return new AgateError("CONFIG_INVALID", `${at} is ${JSON.stringify(got)}; expected ${want}`, { at, want });
}
export function obj(v: unknown, at: string): Record<string, unknown> {
  if (v === null || typeof v !== "object" || Array.isArray(v)) throw invalid(at, v, "a mapping");
  return v as Record<string, unknown>;
}
export function arr(v: unknown, at: string): unknown[] {
  if (!Array.isArray(v)) throw invalid(at, v, "a list");
  return v;
}
export function str(v: unknown, at: string): string {
  if (typeof v !== "string" || v === "") throw invalid(at, v, "a non-empty string");
  return v;
}
export function num(v: unknown, at: string): number {
  if (typeof v !== "number" || !Number.isFinite(v)) throw invalid(at, v, "a number");
  return v;
}
export function bool(v: unknown, at: string): boolean {
  if (typeof v !== "boolean") throw invalid(at, v, "true or false");
  return v;
}
