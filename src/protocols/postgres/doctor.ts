/**
 * What the configured target credential can do (`agate doctor`, and a
 * warning at `agate serve` start-up). agate's policy is a barrier in front
 * of the target; a credential that is a superuser, can create roles, owns
 * the database or is in a predefined role that reaches outside it turns
 * every gap in that barrier into a takeover. This looks the credential up
 * on the target, connected exactly as agate connects (targetSql), and says
 * what it holds beyond ordinary application work, with the SQL for a
 * least-privilege role.
 *
 * What counts is what the login role can become: a role it is a member of
 * (directly or through other roles, `pg_has_role(…, 'MEMBER')`) is one
 * `SET ROLE` away, so a superuser role among them is reported as superuser
 * "via" that role. Predefined roles are checked where the server has them
 * (pg_read_all_data and pg_write_all_data since PostgreSQL 14,
 * pg_create_subscription since 16).
 */
import { AgateError } from "../../core/errors.ts";
import type { Logger } from "../../core/log.ts";
import { type PgTarget, targetSql } from "./upstream.ts";

/** One privilege beyond what an application needs. */
export interface Finding {
  /** "superuser", "createrole", "createdb", "replication", "bypassrls", "database_owner" or a predefined role's name. */
  privilege: string;
  /** The role that holds it, when it is not the login role itself (a role the login role can SET ROLE to). */
  via?: string;
  /** What it lets whoever holds the credential do. */
  risk: string;
}

export interface TargetReport {
  connection: string;
  target: { host: string; port: number; database: string; user: string; sslmode: PgTarget["sslmode"] };
  /** "ok": least privilege; "risk": findings; "unreachable": the check could not be made (see error). */
  status: "ok" | "risk" | "unreachable";
  findings: Finding[];
  /** The server's version, when reached. */
  server_version?: string;
  error?: { code: string; message: string };
  /** With findings: the role to give agate instead, and the SQL that creates it. */
  advice?: { role: string; sql: string };
}

/** Role attributes that reach beyond the database's data, in report order. */
const ATTRIBUTES: { column: "rolsuper" | "rolcreaterole" | "rolcreatedb" | "rolreplication" | "rolbypassrls"; privilege: string; risk: string }[] = [
  { column: "rolsuper", privilege: "superuser", risk: "bypasses every permission check: reads and writes server files, runs programs as the server's operating-system user, changes any role; agate's policy is the only barrier left" },
  { column: "rolcreaterole", privilege: "createrole", risk: "creates and alters roles; before PostgreSQL 16 it can grant itself any role but a superuser's, pg_execute_server_program included" },
  { column: "rolcreatedb", privilege: "createdb", risk: "creates databases (and owns them)" },
  { column: "rolreplication", privilege: "replication", risk: "streams the whole cluster's data and creates replication slots" },
  { column: "rolbypassrls", privilege: "bypassrls", risk: "row-level security policies do not apply to it" },
];

/** Predefined roles that reach outside the database or past its grants. */
const PREDEFINED: Record<string, string> = {
  pg_execute_server_program: "runs programs on the server host as its operating-system user (COPY … PROGRAM)",
  pg_write_server_files: "writes any file the server can (COPY … TO 'file', lo_export)",
  pg_read_server_files: "reads any file the server can (COPY … FROM 'file', pg_read_file)",
  pg_signal_backend: "cancels and terminates other sessions (pg_terminate_backend)",
  pg_read_all_settings: "reads every server setting, superuser-only ones and file paths included",
  pg_read_all_data: "reads every table and view, whatever their grants",
  pg_write_all_data: "writes every table, whatever its grants",
  pg_create_subscription: "creates subscriptions: the server connects out to any host it is told",
};

const OWNER_RISK = "can drop or rename the database, set defaults for every session in it (ALTER DATABASE … SET) and grant on it";

interface RoleRow {
  rolname: string;
  rolsuper: boolean;
  rolcreaterole: boolean;
  rolcreatedb: boolean;
  rolreplication: boolean;
  rolbypassrls: boolean;
  login: boolean;
  owner: boolean;
  version: string;
}

/**
 * Connect to `target` as agate does and report what its credential can do.
 * Never throws: a target that cannot be reached or refuses the credential
 * is a report with status "unreachable" and the reason. `signal` ends the
 * check early (the gateway shutting down).
 */
export async function inspectTarget(connection: string, target: PgTarget, signal?: AbortSignal): Promise<TargetReport> {
  const base = {
    connection,
    target: { host: target.host, port: target.port, database: target.database, user: target.user, sslmode: target.sslmode },
  };
  const sql = targetSql(target, { application_name: "agate doctor" });
  const stop = () => void sql.end({ timeout: 0 });
  signal?.addEventListener("abort", stop, { once: true });
  try {
    if (signal?.aborted) throw new AgateError("DOCTOR_ABORTED", "the check was stopped");
    // Every role the login role is a member of (itself included): each is one SET ROLE away.
    const rows = await sql<RoleRow[]>`
      SELECT r.rolname::text AS rolname, r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication, r.rolbypassrls,
             r.rolname = session_user AS login, r.oid = d.datdba AS owner,
             pg_catalog.current_setting('server_version') AS version
      FROM pg_catalog.pg_roles r, pg_catalog.pg_database d
      WHERE d.datname = pg_catalog.current_database()
        AND pg_catalog.pg_has_role(session_user, r.oid, 'MEMBER')
      ORDER BY r.rolname = session_user DESC, r.rolname`;
    const findings = privileges(rows);
    return {
      ...base,
      status: findings.length ? "risk" : "ok",
      findings,
      server_version: (rows[0]?.version ?? "").split(" ")[0]!,
      ...(findings.length ? { advice: leastPrivilegeRole(connection, target) } : {}),
    };
  } catch (e) {
    return { ...base, status: "unreachable", findings: [], error: explainFailure(e, target) };
  } finally {
    signal?.removeEventListener("abort", stop);
    await sql.end({ timeout: 1 }).catch(() => {});
  }
}

/**
 * At start-up (`agate serve`): one structured log line per connection with
 * what its target credential can do: a warning for findings, and a warning
 * when the check itself fails; info when it is least-privilege. Runs in the
 * background and never throws; `signal` stops it at shutdown.
 */
export async function logPrivileges(connection: string, target: PgTarget, log: Logger, signal?: AbortSignal): Promise<void> {
  const r = await inspectTarget(connection, target, signal).catch((e: unknown) => ({ status: "unreachable" as const, findings: [], error: explainFailure(e, target) }));
  if (signal?.aborted) return;
  const facts = { connection, target: `${target.host}:${target.port}/${target.database}`, user: target.user };
  if (r.status === "risk") {
    log("warn", "the target credential can do more than agate needs: a gap in the policy is a gap in the server; give agate a least-privilege role (`agate doctor --config FILE` prints the SQL)", {
      ...facts,
      privileges: r.findings.map((f) => (f.via ? `${f.privilege} (via ${f.via})` : f.privilege)),
      findings: r.findings,
    });
  } else if (r.status === "unreachable") {
    log("warn", "could not check what the target credential can do (`agate doctor --config FILE` checks again)", { ...facts, code: r.error!.code, error: r.error!.message });
  } else log("info", "the target credential is least-privilege", facts);
}

/** The findings for the roles a login role is a member of (the login role first). */
export function privileges(all: RoleRow[]): Finding[] {
  // A superuser is a member of every role: what those roles hold would only repeat "superuser".
  const rows = all.some((r) => r.login && r.rolsuper) ? all.filter((r) => r.login) : all;
  const findings: Finding[] = [];
  const via = (r: RoleRow) => (r.login ? {} : { via: r.rolname });
  for (const a of ATTRIBUTES) {
    const holder = rows.find((r) => r[a.column]);
    if (holder) findings.push({ privilege: a.privilege, ...via(holder), risk: a.risk });
  }
  for (const [name, risk] of Object.entries(PREDEFINED)) if (rows.some((r) => r.rolname === name)) findings.push({ privilege: name, risk });
  const owner = rows.find((r) => r.owner);
  if (owner) findings.push({ privilege: "database_owner", ...via(owner), risk: OWNER_RISK });
  return findings;
}

/** A failure to check, as a code and a sentence (no stack, no password). */
function explainFailure(e: unknown, target: PgTarget): { code: string; message: string } {
  const where = `${target.host}:${target.port}/${target.database} as ${target.user}`;
  if (e instanceof AgateError) return { code: e.code, message: e.message };
  const err = e as { code?: string; message?: string };
  const code = String(err.code ?? "");
  const message = String(err.message ?? e);
  if (/^28/.test(code)) return { code: "UPSTREAM_AUTH", message: `the target ${where} refused the configured credential: ${message}; check target.user and its password` };
  if (/^[0-9A-Z]{5}$/.test(code)) return { code: "UPSTREAM_REFUSED", message: `the target ${where} refused the check: ${message} (SQLSTATE ${code})` };
  if (code === "CONNECT_TIMEOUT") return { code: "UPSTREAM_UNREACHABLE", message: `the target ${where} did not answer within ${target.connect_timeout_ms} ms` };
  if (/ssl|tls|certificate/i.test(message) || code.startsWith("ERR_TLS") || code.includes("CERT")) return { code: "UPSTREAM_TLS", message: `TLS to the target ${where} failed (sslmode=${target.sslmode}): ${message}` };
  return { code: "UPSTREAM_UNREACHABLE", message: `cannot reach the target ${where}: ${message}` };
}

/** A PostgreSQL identifier, quoted when it is not a plain lower-case name. */
function ident(name: string): string {
  return /^[a-z_][a-z0-9_]*$/.test(name) ? name : `"${name.replace(/"/g, '""')}"`;
}

/**
 * The least-privilege role for connection `name`: it may log in, connect to
 * the database and read and write the tables of schema public, and nothing
 * else. Grants for other schemas follow the same pattern.
 */
export function leastPrivilegeRole(name: string, target: PgTarget): { role: string; sql: string } {
  const role = `agate_${name.toLowerCase().replace(/[^a-z0-9_]+/g, "_")}`.slice(0, 63);
  const r = ident(role);
  const sql = [
    `-- as a superuser, or the owner of database ${target.database}:`,
    `CREATE ROLE ${r} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;`,
    `\\password ${r}`,
    `GRANT CONNECT ON DATABASE ${ident(target.database)} TO ${r};`,
    `GRANT USAGE ON SCHEMA public TO ${r};`,
    `GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO ${r};`,
    `GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO ${r};`,
    `-- as the role that creates the tables (your migrations), so later tables are granted too:`,
    `ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO ${r};`,
    `ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO ${r};`,
  ].join("\n");
  return { role, sql };
}

/** The report for people: one heading line per connection, a line per finding, then the advice. */
export function formatReport(r: TargetReport, index: number): string {
  const t = r.target;
  const head = `${r.connection}: ${t.user}@${t.host}:${t.port}/${t.database}`;
  if (r.status === "unreachable") return `${head}\n  NOT CHECKED  ${r.error!.message} [${r.error!.code}]\n`;
  if (r.status === "ok") {
    return `${head} (PostgreSQL ${r.server_version})\n  ok  least privilege: not a superuser, no CREATEROLE, CREATEDB, REPLICATION or BYPASSRLS, in none of ${Object.keys(PREDEFINED).join(", ")}, not the database owner\n`;
  }
  const lines = [`${head} (PostgreSQL ${r.server_version})`];
  const width = Math.max(...r.findings.map((f) => label(f).length));
  for (const f of r.findings) lines.push(`  RISK  ${label(f).padEnd(width)}  ${f.risk}`);
  lines.push(
    "",
    `  agate decides every statement, but a gap in the policy is then a gap in the server: give agate`,
    `  a role that can do only what the application does. For example (psql):`,
    "",
    ...r.advice!.sql.split("\n").map((l) => `    ${l}`),
    "",
    `  then set connections[${index}].target.user to ${r.advice!.role} (and its password) and run agate doctor again.`,
  );
  return `${lines.join("\n")}\n`;
}

function label(f: Finding): string {
  return f.privilege === "database_owner" ? `owner of the database${f.via ? ` (via role ${f.via})` : ""}` : `${f.privilege}${f.via ? ` (via role ${f.via})` : ""}`;
}
