/**
 * A throwaway PostgreSQL for tests and scripts: initdb into a temp dir, start
 * on a free loopback port, stop and delete on close. As root (CI), the server
 * runs as the `postgres` system user, since PostgreSQL refuses to run as root.
 *
 * Roles created: `postgres` (superuser, SCRAM), `app_scram` (SCRAM),
 * `app_md5` (md5), `app_plain` (cleartext "password" method); all own
 * database `app` objects via `app_scram`.
 */
import { chmodSync, chownSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface TestPostgres {
  host: string;
  port: number;
  dir: string;
  password: string;
  /** libpq URL for a role (direct to the server). */
  url(user?: string, database?: string): string;
  /** Run SQL as the superuser with psql; returns stdout. */
  psql(sql: string, database?: string): Promise<string>;
  stop(): Promise<void>;
}

export const PASSWORD = "s3cret-upstream";

const PG_BIN = process.env.PG_BIN ?? findPgBin();

function findPgBin(): string {
  for (const v of ["18", "17", "16", "15", "14"]) {
    const p = `/usr/lib/postgresql/${v}/bin`;
    if (Bun.file(`${p}/postgres`).size > 0) return p;
  }
  const which = Bun.which("postgres");
  if (which) return which.replace(/\/postgres$/, "");
  throw new Error("PostgreSQL server binaries not found: install the postgresql package (scripts/setup.sh does) or set PG_BIN");
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

const asRoot = process.getuid?.() === 0;

function asPostgres(argv: string[]): string[] {
  return asRoot ? ["runuser", "-u", "postgres", "--", ...argv] : argv;
}

async function run(argv: string[], opts: { env?: Record<string, string>; stdin?: string } = {}): Promise<string> {
  const p = Bun.spawn(argv, { stdout: "pipe", stderr: "pipe", stdin: opts.stdin !== undefined ? new TextEncoder().encode(opts.stdin) : "ignore", env: { ...process.env, ...opts.env } });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (code !== 0) throw new Error(`${argv.join(" ")} exited ${code}: ${err || out}`);
  return out;
}

export async function startPostgres(opts: { fsync?: boolean; settings?: Record<string, string> } = {}): Promise<TestPostgres> {
  const dir = mkdtempSync(join(tmpdir(), "agate-pg-"));
  chmodSync(dir, 0o755);
  const data = join(dir, "data");
  const pwfile = join(dir, "pw");
  writeFileSync(pwfile, PASSWORD + "\n");
  if (asRoot) {
    const { uid, gid } = await pgUser();
    chownSync(dir, uid, gid);
    chownSync(pwfile, uid, gid);
  }
  await run(asPostgres([`${PG_BIN}/initdb`, "-D", data, "-U", "postgres", "--pwfile", pwfile, "-E", "UTF8", "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256"]));
  // md5 and cleartext roles, for the gateway's upstream authentication tests.
  const hba = `local all all trust\nhost all app_md5 127.0.0.1/32 md5\nhost all app_plain 127.0.0.1/32 password\nhost all all 127.0.0.1/32 scram-sha-256\n`;
  await run(asPostgres(["sh", "-c", `cat > ${data}/pg_hba.conf`]), { stdin: hba });
  const port = await freePort();
  const settings: Record<string, string> = {
    listen_addresses: "127.0.0.1",
    port: String(port),
    unix_socket_directories: dir,
    fsync: opts.fsync ? "on" : "off",
    max_connections: "200",
    shared_buffers: "128MB",
    ...opts.settings,
  };
  const args = Object.entries(settings).flatMap(([k, v]) => ["-c", `${k}=${v}`]);
  const server = Bun.spawn(asPostgres([`${PG_BIN}/postgres`, "-D", data, ...args]), { stdout: "ignore", stderr: Bun.file(join(dir, "server.log")) });
  const pg: TestPostgres = {
    host: "127.0.0.1",
    port,
    dir,
    password: PASSWORD,
    url: (user = "postgres", database = "app") => `postgres://${user}:${PASSWORD}@127.0.0.1:${port}/${database}`,
    psql: (sql, database = "app") => run(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-At", "-h", dir, "-p", String(port), "-U", "postgres", "-d", database, "-c", sql]),
    stop: async () => {
      // runuser does not pass signals on: ask pg_ctl, which signals the postmaster by its pid file.
      await run(asPostgres([`${PG_BIN}/pg_ctl`, "stop", "-D", data, "-m", "fast", "-w"])).catch(() => server.kill("SIGKILL"));
      await server.exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
  for (let attempt = 0; ; attempt++) {
    try {
      await run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", String(port)]);
      break;
    } catch (e) {
      if (server.exitCode !== null || attempt > 300) throw new Error(`PostgreSQL did not start: ${await Bun.file(join(dir, "server.log")).text()}`);
      await Bun.sleep(100);
    }
  }
  await pg.psql("CREATE DATABASE app", "postgres");
  await pg.psql(
    `CREATE ROLE app_scram LOGIN PASSWORD '${PASSWORD}';
     SET password_encryption = 'md5'; CREATE ROLE app_md5 LOGIN PASSWORD '${PASSWORD}';
     RESET password_encryption; CREATE ROLE app_plain LOGIN PASSWORD '${PASSWORD}';
     GRANT ALL ON SCHEMA public TO app_scram, app_md5, app_plain;`,
  );
  return pg;
}

async function pgUser(): Promise<{ uid: number; gid: number }> {
  const out = await run(["id", "-u", "postgres"]).catch(() => {
    throw new Error("no 'postgres' system user: install the postgresql package (scripts/setup.sh does)");
  });
  const gid = await run(["id", "-g", "postgres"]);
  return { uid: Number(out.trim()), gid: Number(gid.trim()) };
}
