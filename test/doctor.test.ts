/**
 * `agate doctor` and the start-up warning, against a real PostgreSQL: what
 * the configured target credential can do (superuser, CREATEROLE, …,
 * predefined roles reached through other roles, a superuser one SET ROLE
 * away, ownership of the database), the exit statuses, the SQL it advises
 * (run here, and the role it makes passes), and the warning `agate serve`
 * logs for each connection without waiting for it.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { generateKey } from "../src/audit/note.ts";
import { psql, sh, startTestGateway } from "./helpers/gateway.ts";
import { freePort, startPostgres, type TestPostgres } from "./helpers/postgres.ts";

const MAIN = join(resolve(import.meta.dir, ".."), "src/main.ts");

let db: TestPostgres;
let tmp: string;

beforeAll(async () => {
  db = await startPostgres();
  tmp = mkdtempSync(join(tmpdir(), "agate-doctor-"));
  writeFileSync(join(tmp, "audit.key"), generateKey("agate.test/audit").signerKey, { mode: 0o600 });
  const pw = `PASSWORD '${db.password}'`;
  await db.psql(`
    CREATE TABLE public.orders (id serial PRIMARY KEY, item text NOT NULL);
    INSERT INTO public.orders (item) VALUES ('tea'), ('cake');
    -- one SET ROLE away from a superuser
    CREATE ROLE boss NOLOGIN SUPERUSER;
    CREATE ROLE sneaky LOGIN ${pw} IN ROLE boss;
    -- CREATEROLE, and pg_read_server_files through another role
    CREATE ROLE files NOLOGIN IN ROLE pg_read_server_files;
    CREATE ROLE filer LOGIN CREATEROLE ${pw} IN ROLE files;
    -- owns a database
    CREATE ROLE dbowner LOGIN ${pw};
    -- cancels other sessions
    CREATE ROLE signaller LOGIN ${pw} IN ROLE pg_signal_backend;`);
  await db.psql("CREATE DATABASE owned OWNER dbowner", "postgres");
});

afterAll(async () => {
  await db?.stop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

/** A config file whose connections have these targets (password from AGATE_TEST_PG_PASSWORD unless given). */
function config(name: string, targets: Record<string, unknown>[], extra = ""): string {
  const file = join(tmp, `${name}.yaml`);
  const connections = targets
    .map((t, i) => {
      const target = { host: db.host, port: db.port, database: "app", password_env: "AGATE_TEST_PG_PASSWORD", ...t };
      return `  - name: ${String(t.name ?? `db${i}`)}\n    listen: 127.0.0.1:0\n    allow_plaintext_auth: true\n    target: ${JSON.stringify(Object.fromEntries(Object.entries(target).filter(([k]) => k !== "name")))}\n`;
    })
    .join("");
  writeFileSync(file, `audit:\n  dir: ./audit-${name}\n  signing_key: ./audit.key\n${extra}connections:\n${connections}`);
  return file;
}

function doctor(file: string, ...args: string[]) {
  return sh([process.execPath, MAIN, "doctor", "--config", file, ...args], { env: { AGATE_TEST_PG_PASSWORD: db.password } });
}

interface Report {
  connection: string;
  status: string;
  findings: { privilege: string; via?: string; risk: string }[];
  error?: { code: string; message: string };
  advice?: { role: string; sql: string };
}

async function doctorJson(file: string): Promise<{ code: number; status: string; connections: Report[] }> {
  const r = await doctor(file, "--json");
  return { code: r.code, ...(JSON.parse(r.stdout) as { status: string; connections: Report[] }) };
}

describe("agate doctor", () => {
  test("a superuser target: reported with what it can do, exit 1, and the advised role's SQL works and passes", async () => {
    const file = config("superuser", [{ name: "app-db", user: "postgres" }]);
    const human = await doctor(file);
    expect(human.stderr).toBe("");
    expect(human.code).toBe(1);
    expect(human.stdout).toContain(`app-db: postgres@127.0.0.1:${db.port}/app (PostgreSQL `);
    expect(human.stdout).toMatch(/RISK {2}superuser +bypasses every permission check/);
    expect(human.stdout).toContain("RISK  createrole");
    expect(human.stdout).toContain("RISK  owner of the database");
    expect(human.stdout).toContain("CREATE ROLE agate_app_db LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;");
    expect(human.stdout).toContain("then set connections[0].target.user to agate_app_db");

    const json = await doctorJson(file);
    expect(json.code).toBe(1);
    expect(json.status).toBe("risk");
    const [report] = json.connections;
    expect(report!.findings.map((f) => f.privilege)).toEqual(["superuser", "createrole", "createdb", "replication", "bypassrls", "database_owner"]);
    expect(report!.findings.every((f) => f.via === undefined)).toBe(true);

    // The advice, run as it says (psql's \password is interactive: set the password in SQL instead).
    const advised = report!.advice!.sql.split("\n").filter((l) => !l.startsWith("\\")).join("\n");
    await db.psql(`${advised}\nALTER ROLE agate_app_db PASSWORD '${db.password}';`);
    const after = await doctor(config("advised", [{ name: "app-db", user: report!.advice!.role }]));
    expect(after.code).toBe(0);
    expect(after.stdout).toContain("ok  least privilege");
    // ... and it can still do the application's work.
    const work = await psql(db.url("agate_app_db"), "INSERT INTO orders (item) VALUES ('scone') RETURNING item; SELECT count(*) FROM orders");
    expect(work.stderr).toBe("");
    expect(work.stdout.trim().split("\n")).toEqual(["scone", "INSERT 0 1", "3"]);
  });

  test("privileges held through other roles, CREATEROLE, a predefined role and the database's ownership are each named", async () => {
    const file = config("roles", [
      { name: "via-boss", user: "sneaky" },
      { name: "filer", user: "filer" },
      { name: "owner", user: "dbowner", database: "owned" },
      { name: "signaller", user: "signaller" },
      { name: "plain", user: "app_scram" },
    ]);
    const json = await doctorJson(file);
    expect(json.code).toBe(1);
    expect(json.status).toBe("risk");
    const by = Object.fromEntries(json.connections.map((c) => [c.connection, c.findings.map((f) => (f.via ? `${f.privilege} via ${f.via}` : f.privilege))]));
    expect(by).toEqual({
      "via-boss": ["superuser via boss"],
      filer: ["createrole", "pg_read_server_files"],
      owner: ["database_owner"],
      signaller: ["pg_signal_backend"],
      plain: [],
    });
    expect(json.connections.find((c) => c.connection === "plain")!.status).toBe("ok");
    const human = await doctor(file);
    expect(human.stdout).toContain("RISK  superuser (via role boss)");
    expect(human.stdout).toMatch(/RISK {2}pg_read_server_files +reads any file the server can/);
  });

  test("a least-privilege credential: exit 0", async () => {
    const r = await doctor(config("least", [{ name: "app-db", user: "app_scram" }]));
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`app-db: app_scram@127.0.0.1:${db.port}/app`);
    expect(r.stdout).toContain("ok  least privilege");
  });

  test("a target that cannot be reached, or refuses the credential: exit 2 with a sentence, even beside a risky one", async () => {
    const closed = await freePort();
    const file = config("unreachable", [
      { name: "gone", user: "app_scram", port: closed },
      { name: "wrong-password", user: "app_scram", password: "not-the-password", password_env: undefined },
      { name: "risky", user: "postgres" },
    ]);
    const r = await doctor(file);
    expect(r.code).toBe(2);
    expect(r.stdout).toContain(`NOT CHECKED  cannot reach the target 127.0.0.1:${closed}/app as app_scram: connect ECONNREFUSED`);
    expect(r.stdout).toContain(`[UPSTREAM_UNREACHABLE]`);
    expect(r.stdout).toContain(`password authentication failed for user "app_scram"; check target.user and its password [UPSTREAM_AUTH]`);
    expect(r.stdout).toContain("RISK  superuser");
    expect(`${r.stdout}${r.stderr}`).not.toMatch(/\n\s+at /); // no stack trace
    expect(`${r.stdout}${r.stderr}`).not.toContain("not-the-password");
    const json = await doctorJson(file);
    expect(json.code).toBe(2);
    expect(json.status).toBe("unreachable");
    expect(json.connections.map((c) => [c.connection, c.status, c.error?.code])).toEqual([
      ["gone", "unreachable", "UPSTREAM_UNREACHABLE"],
      ["wrong-password", "unreachable", "UPSTREAM_AUTH"],
      ["risky", "risk", undefined],
    ]);
  });

  test("an invalid configuration: exit 2 naming the key; --help tells the exit statuses", async () => {
    const bad = config("bad", [{ name: "app-db", user: "app_scram", colour: "blue" }]);
    const r = await doctor(bad);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe("");
    expect(r.stderr).toContain(`connections[0].target has an unknown key "colour"`);
    expect(r.stderr).toContain("[CONFIG_INVALID]");
    const json = await doctor(bad, "--json");
    expect(json.code).toBe(2);
    expect(JSON.parse(json.stdout)).toMatchObject({ status: "invalid", error: { code: "CONFIG_INVALID" } });
    const unset = await doctor(config("unset", [{ user: "app_scram", password_env: "AGATE_DOCTOR_NOT_SET" }]));
    expect(unset.code).toBe(2);
    expect(unset.stderr).toContain("connections[0].target.password_env names AGATE_DOCTOR_NOT_SET, which is not set in the environment [CONFIG_INVALID]");
    const usage = await sh([process.execPath, MAIN, "doctor"]);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain("doctor needs --config FILE");

    const help = await sh([process.execPath, MAIN, "doctor", "--help"]);
    expect(help.code).toBe(0);
    for (const line of ["0  every target's credential is least-privilege", "1  a credential holds one of the privileges above", "2  the configuration is invalid, or a target cannot be reached or refuses"]) expect(help.stdout).toContain(line);
    expect((await sh([process.execPath, MAIN, "--help"])).stdout).toContain("doctor --config FILE");
  });
});

describe("agate serve at start-up", () => {
  type Line = { level: string; msg: string } & Record<string, any>;
  const capture = () => {
    const lines: Line[] = [];
    return { lines, log: (level: string, msg: string, facts: Record<string, unknown> = {}) => void lines.push({ level, msg, ...facts }) };
  };
  async function until(lines: Line[], pred: (l: Line) => boolean): Promise<Line> {
    for (let i = 0; i < 500; i++) {
      const found = lines.find(pred);
      if (found) return found;
      await Bun.sleep(10);
    }
    throw new Error(`no such log line in ${JSON.stringify(lines)}`);
  }

  test("logs one warning per connection whose credential can do more than it needs; info for a least-privilege one", async () => {
    const risky = capture();
    const g = await startTestGateway(db, { targetUser: "postgres", log: risky.log });
    try {
      const w = await until(risky.lines, (l) => l.level === "warn" && l.connection === "app-db");
      expect(w.msg).toContain("the target credential can do more than agate needs");
      expect(w.msg).toContain("agate doctor --config FILE");
      expect(w).toMatchObject({ target: `${db.host}:${db.port}/app`, user: "postgres" });
      expect(w.privileges).toEqual(["superuser", "createrole", "createdb", "replication", "bypassrls", "database_owner"]);
      expect(w.findings[0]).toMatchObject({ privilege: "superuser" });
      // The gateway serves meanwhile and after.
      expect((await psql(g.url(), "SELECT 1")).stdout.trim()).toBe("1");
      expect(risky.lines.filter((l) => l.level === "warn" && l.connection === "app-db")).toHaveLength(1);
    } finally {
      await g.close();
    }
    const fine = capture();
    const h = await startTestGateway(db, { log: fine.log });
    try {
      const i = await until(fine.lines, (l) => l.connection === "app-db" && l.msg.includes("least-privilege"));
      expect(i.level).toBe("info");
      expect(fine.lines.filter((l) => l.level === "warn")).toEqual([]);
    } finally {
      await h.close();
    }
  });

  test("a check that fails is a warning; a check that hangs delays neither start-up nor shutdown", async () => {
    const failed = capture();
    const g = await startTestGateway(db, { targetUser: "app_scram", connection: { target: { host: db.host, port: await freePort(), database: "app", user: "app_scram" } }, log: failed.log });
    try {
      const w = await until(failed.lines, (l) => l.level === "warn" && l.connection === "app-db");
      expect(w.msg).toContain("could not check what the target credential can do");
      expect(w.code).toBe("UPSTREAM_UNREACHABLE");
      expect(w.error).toContain("cannot reach the target");
    } finally {
      await g.close();
    }
    // A target that accepts connections and never answers: the check waits (connect_timeout_ms is a minute).
    const accepted: net.Socket[] = [];
    const silent = net.createServer((s) => void accepted.push(s));
    await new Promise<void>((done) => silent.listen(0, "127.0.0.1", done));
    const hung = capture();
    const h = await startTestGateway(db, { connection: { target: { host: "127.0.0.1", port: (silent.address() as net.AddressInfo).port, database: "app", user: "app_scram", connect_timeout_ms: 60_000 } }, log: hung.log });
    try {
      for (let i = 0; i < 500 && accepted.length === 0; i++) await Bun.sleep(10);
      expect(accepted.length).toBe(1); // the check is under way, and the gateway is up
      expect(hung.lines.filter((l) => l.msg.includes("target credential"))).toEqual([]);
    } finally {
      await h.close();
      for (const s of accepted) s.destroy();
      silent.close();
    }
    // Stopped by the shutdown: no late line.
    await Bun.sleep(50);
    expect(hung.lines.filter((l) => l.msg.includes("target credential"))).toEqual([]);
  });
});
