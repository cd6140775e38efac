#!/usr/bin/env bun
/**
 * A client library's own test suite, run direct to PostgreSQL and through
 * agate, with pass/fail counts for both and the cases that fail only
 * through agate (README "Client fidelity"). Not part of CI: it needs the
 * suite's checkout, which it does not download.
 *
 *   bun scripts/suites/run.ts <psycopg|node-postgres|porsager> <checkout-dir> [--only direct|agate] [-- args for the suite's runner]
 *
 *   psycopg        a psycopg 3 checkout; tests/ run with pytest from $PYTHON
 *                  (default: python3), a Python that has the checkout's psycopg
 *                  and its test dependencies (see "Client fidelity" in the README).
 *                  Arguments after -- replace the default `tests` (e.g. tests/test_copy.py).
 *   node-postgres  a brianc/node-postgres checkout, installed and built (npm install; npx tsc --build);
 *                  every packages/pg/test/integration/**\/*-tests.js, one node process each.
 *   porsager       a porsager/postgres checkout; tests/index.js on a copy whose runner
 *                  goes on after a failure (upstream it skips every later test).
 *
 * Each run gets a throwaway PostgreSQL (test/helpers/postgres.ts; wal_level
 * logical and prepared transactions, which the suites test) and an agate gateway in this process with
 * the default policy, every rule that can be switched off switched off (an
 * allow-all policy; the secret detectors stay on), lockout off. The
 * client's user is an API key account, and the role's password in
 * PostgreSQL is that same key (KEY), so direct and through agate the
 * client is given the same user, password and database: only the port
 * differs.
 */
import { appendFileSync, cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, chmodSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative, resolve } from "node:path";
import { generateKey } from "../../src/audit/note.ts";
import { parseConfig } from "../../src/config/index.ts";
import { createLogger } from "../../src/core/log.ts";
import { startGateway, type Gateway } from "../../src/gateway.ts";
import { hashApiKey } from "../../src/identity/apikey.ts";
import { startPostgres, type TestPostgres } from "../../test/helpers/postgres.ts";

/** Every rule of the default policy that data can switch off (policies/agate/decision.rego). */
const ALL_RULES = [
  "deny_statement", "deny_drop", "deny_truncate", "deny_alter", "deny_opaque_code", "deny_function_binding", "deny_external_access",
  "deny_catalog_write", "deny_privileged_function", "deny_security_definer", "deny_untrusted_function", "deny_unknown_function",
  "deny_server_function", "deny_dynamic_sql", "deny_server_config", "deny_setting", "deny_copy_program", "deny_copy_file",
  "deny_catalog_unknown", "deny_unanalysed", "deny_covered_copy", "approve_ddl", "approve_large_write", "approve_unestimated_write",
];

interface Login { user: string; password: string }
interface Counts { passed: number; failed: number; failures: string[]; note?: string }

interface Suite {
  /** The database the suite uses and the role agate logs in as upstream. */
  database: string;
  owner: Login;
  /** Further users the suite logs in as (each an API key account through agate). */
  logins: Login[];
  prepare(pg: TestPostgres, checkout: string): Promise<void>;
  run(target: { host: string; port: number }, pg: TestPostgres, checkout: string, args: string[]): Promise<Counts>;
}

/** The suites' password, direct and through agate (agate's API keys start with agk_). */
const KEY = "agk_suite_password_for_client_test_suites";

const say = (line: string) => process.stderr.write(`suites: ${line}\n`);

/** Run `argv`, its output appended to the log as it comes (tail -f it); its exit code and output. */
async function spawn(argv: string[], opts: { cwd: string; env: Record<string, string>; log: string; doneWhen?: RegExp }): Promise<{ code: number; out: string }> {
  writeFileSync(opts.log, `$ ${argv.join(" ")}\n`, { flag: "a" });
  const p = Bun.spawn(argv, { cwd: opts.cwd, env: { ...process.env, ...opts.env }, stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  let out = "";
  const tee = async (stream: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      const text = decoder.decode(chunk, { stream: true });
      out += text;
      appendFileSync(opts.log, text);
      // A runner that has printed its summary but whose process lingers (a handle left open) is ended.
      if (opts.doneWhen?.test(out)) setTimeout(() => p.kill(), 3000).unref();
    }
  };
  await Promise.all([tee(p.stdout), tee(p.stderr)]);
  return { code: await p.exited, out };
}

/** libpq's environment for `login` at `target`. */
function pgEnv(target: { host: string; port: number }, login: Login, database: string): Record<string, string> {
  return { PGHOST: target.host, PGPORT: String(target.port), PGUSER: login.user, PGPASSWORD: login.password, PGDATABASE: database, PGSSLMODE: "disable" };
}

let logFile = "";

/** A suite that logs in as the superuser `postgres` (its password KEY) to its own database. */
function asSuperuser(database: string): Pick<Suite, "database" | "owner" | "logins" | "prepare"> {
  return {
    database,
    owner: { user: "postgres", password: KEY },
    logins: [],
    async prepare(pg) {
      await pg.psql(`CREATE DATABASE ${database}`, "postgres");
      await pg.psql(`ALTER ROLE postgres PASSWORD '${KEY}'`, "postgres");
    },
  };
}

const SUITES: Record<string, Suite> = {
  psycopg: {
    ...asSuperuser("psycopg_test"),
    async run(target, _pg, checkout, args) {
      const dsn = `host=${target.host} port=${target.port} user=postgres password=${KEY} dbname=psycopg_test sslmode=disable`;
      const cache = mkdtempSync(join(tmpdir(), "suites-pytest-"));
      const { out } = await spawn(
        [process.env.PYTHON ?? "python3", "-m", "pytest", "--import-mode=importlib", "-o", `cache_dir=${cache}`, "-p", "no:randomly", "-q", "-rfE", "--color=no", "--tb=line", ...(args.length > 0 ? args : ["tests"])],
        // PYTHONSAFEPATH: the checkout's psycopg/ folder (a project, not the package) must not shadow the installed
        // package, in pytest and in the Python processes tests start.
        { cwd: checkout, env: { PSYCOPG_TEST_DSN: dsn, PYTHONSAFEPATH: "1" }, log: logFile },
      );
      rmSync(cache, { recursive: true, force: true });
      const summary = [...out.matchAll(/^(?:=+ )?(\d+ (?:passed|failed|skipped|errors?|deselected).*?) in [\d.]+s/gm)].at(-1)?.[1] ?? "";
      const n = (word: string) => Number(summary.match(new RegExp(`(\\d+) ${word}`))?.[1] ?? 0);
      const failures = [...out.matchAll(/^(?:FAILED|ERROR) (\S+)/gm)].map((m) => m[1]!);
      return { passed: n("passed"), failed: n("failed") + n("errors?"), failures, note: summary };
    },
  },

  "node-postgres": {
    ...asSuperuser("pg_test"),
    async run(target, _pg, checkout, args) {
      const pkg = join(checkout, "packages/pg");
      const files = args.length > 0 ? args : walk(join(pkg, "test/integration")).filter((f) => f.endsWith("-tests.js")).map((f) => relative(pkg, f)).sort();
      const counts: Counts = { passed: 0, failed: 0, failures: [] };
      for (const file of files) {
        const { code, out } = await spawn(["node", file], { cwd: pkg, env: pgEnv(target, this.owner, this.database), log: logFile });
        const failed = [...out.matchAll(/^ {2}(.*) FAILED!$/gm)].map((m) => `${file}: ${m[1]}`);
        // A file of plain assertions, with no suite tests, counts as one test; one that dies outside a test
        // (an uncaught error, a test's timer) as one failure.
        counts.passed += out.match(/ ✔$/gm)?.length ?? (code === 0 ? 1 : 0);
        if (failed.length === 0 && code !== 0) failed.push(`${file}: exited ${code}`);
        counts.failed += failed.length;
        counts.failures.push(...failed);
      }
      return counts;
    },
  },

  porsager: {
    database: "postgres_js_test",
    // tests/bootstrap.js makes the roles and the database; the suite's own user has no password (trust),
    // the md5 and scram users log in with theirs, which are no agate keys.
    owner: { user: "postgres_js_test", password: KEY },
    logins: [],
    async prepare(pg) {
      const hba = "local all all trust\nhost all postgres_js_test 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 md5\n";
      writeFileSync(join(pg.dir, "data/pg_hba.conf"), hba); // the file exists: it keeps its owner
      await pg.psql("SELECT pg_reload_conf()", "postgres");
    },
    async run(target, pg, checkout, _args) {
      // A copy whose runner reports every test, not only those before the first failure.
      const copy = mkdtempSync(join(tmpdir(), "suites-porsager-"));
      cpSync(checkout, copy, { recursive: true, filter: (src) => !src.includes("/.git") });
      const runner = join(copy, "tests/test.js");
      const text = readFileSync(runner, "utf8");
      // ... and names each test that passed, so that the two runs can be compared test by test.
      const goOn = text
        .replace(/failed\s*\?\s*\(ignored\+\+, ignore\)/, "false ? (ignored++, ignore)")
        .replace("process.stdout.write('✅')", "process.stdout.write('\\n✅ ' + name + ' at line ' + line + '\\n')")
        .replace("tests[line] = { fn, line, name }", "tests[line] = { fn, line, name }; process.stdout.write('\\n📋 ' + name + ' at line ' + line + '\\n')");
      if (!goOn.includes("false ? (ignored++") || !goOn.includes("'\\n✅ '") || !goOn.includes("'\\n📋 '")) throw new Error(`${runner}: the runner's lines to change were not found; update scripts/suites/run.ts`);
      writeFileSync(runner, goOn);
      // bootstrap.js administers the server with psql, createdb and dropdb: those go to PostgreSQL directly, as its superuser.
      const bin = join(copy, ".direct-bin");
      mkdirSync(bin);
      for (const tool of ["psql", "createdb", "dropdb"]) {
        writeFileSync(join(bin, tool), `#!/bin/sh\nPGHOST=${pg.dir} PGPORT=${pg.port} PGUSER=postgres PGDATABASE=postgres exec /usr/bin/${tool} "$@"\n`);
        chmodSync(join(bin, tool), 0o755);
      }
      const { out } = await spawn(["node", "tests/index.js"], {
        cwd: copy,
        env: { ...pgEnv(target, this.owner, this.database), PGSOCKET: pg.dir, PATH: `${bin}:${process.env.PATH}` },
        log: logFile,
        doneWhen: /🎉|⚠️/u,
      });
      rmSync(copy, { recursive: true, force: true });
      // Every test that started and did not pass failed (its ⛔️ line, if any, says why).
      const passed = new Set([...out.matchAll(/^✅ (.*) at line \d+$/gmu)].map((m) => m[1]!));
      const failures = [...new Set([...out.matchAll(/^📋 (.*) at line \d+$/gmu)].map((m) => m[1]!))].filter((t) => !passed.has(t));
      return { passed: passed.size, failed: failures.length, failures };
    },
  },
};

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? walk(p) : [p];
  });
}

async function gatewayFor(suite: Suite, pg: TestPostgres, dir: string): Promise<Gateway> {
  const { signerKey } = generateKey("agate.suites/audit");
  writeFileSync(join(dir, "audit.key"), signerKey, { mode: 0o600 });
  const config = parseConfig(
    {
      audit: { dir: join(dir, "audit"), signing_key: "./audit.key" },
      identity: { api_keys: [suite.owner, ...suite.logins].map((l) => ({ id: l.user, groups: ["suite"], kind: "service", sha256: hashApiKey(l.password) })) },
      policy: { data: { agate: { config: { allow_rules: ALL_RULES } } } },
      connections: [
        {
          name: "suite-db",
          listen: "127.0.0.1:0",
          allow_plaintext_auth: true,
          target: { host: pg.host, port: pg.port, database: suite.database, user: suite.owner.user, password: suite.owner.password },
        },
      ],
      log_level: process.env.AGATE_LOG ?? "error",
      lockout: { delay_after: 0, block_after: 0 },
    },
    dir,
    process.env,
  );
  return startGateway(config, createLogger(config.log_level));
}

function report(label: string, c: Counts): void {
  console.log(`${label.padEnd(14)} passed ${String(c.passed).padStart(5)}  failed ${String(c.failed).padStart(4)}${c.note ? `  (${c.note})` : ""}`);
}

const argv = process.argv.slice(2);
const dash = argv.indexOf("--");
const suiteArgs = dash >= 0 ? argv.slice(dash + 1) : [];
const own = dash >= 0 ? argv.slice(0, dash) : argv;
const only = own.includes("--only") ? own[own.indexOf("--only") + 1] : undefined;
const [name, checkoutArg] = own.filter((a, i) => a !== "--only" && own[i - 1] !== "--only");
const suite = SUITES[name ?? ""];
if (!suite || !checkoutArg) {
  console.error(`usage: bun scripts/suites/run.ts <${Object.keys(SUITES).join("|")}> <checkout-dir> [--only direct|agate] [-- suite args]`);
  process.exit(2);
}
const checkout = resolve(checkoutArg);
const work = mkdtempSync(join(tmpdir(), `suites-${name}-`));
logFile = join(work, "output.log");
say(`output of the suite's runs: ${logFile}`);

const results: Record<string, Counts> = {};
for (const mode of ["direct", "agate"] as const) {
  if (only && only !== mode) continue;
  const pg = await startPostgres({ settings: { wal_level: "logical", max_wal_senders: "10", max_replication_slots: "10", max_prepared_transactions: "10" } });
  let gateway: Gateway | undefined;
  try {
    await suite.prepare(pg, checkout);
    let target = { host: pg.host, port: pg.port };
    if (mode === "agate") {
      const dir = join(work, "gateway");
      mkdirSync(dir, { recursive: true });
      gateway = await gatewayFor(suite, pg, dir);
      target = { host: "127.0.0.1", port: gateway.listeners[0]!.port };
    }
    writeFileSync(logFile, `\n===== ${mode} (${target.host}:${target.port})\n`, { flag: "a" });
    say(`${mode}: running ${name} against ${target.host}:${target.port}`);
    results[mode] = await suite.run(target, pg, checkout, suiteArgs);
    report(mode, results[mode]!);
  } finally {
    await gateway?.close();
    await pg.stop();
  }
}

const { direct, agate } = results;
if (direct && agate) {
  const before = new Set(direct.failures);
  const onlyAgate = agate.failures.filter((f) => !before.has(f));
  const fixed = direct.failures.filter((f) => !agate.failures.includes(f));
  console.log(`\nfailing only through agate (${onlyAgate.length}):`);
  for (const f of onlyAgate) console.log(`  ${f}`);
  if (fixed.length > 0) console.log(`failing only direct (${fixed.length}):\n${fixed.map((f) => `  ${f}`).join("\n")}`);
} else for (const [mode, c] of Object.entries(results)) for (const f of c.failures) console.log(`  ${mode} failed: ${f}`);
