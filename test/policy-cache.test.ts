/**
 * The decision cache (src/policy/cache.ts) is sound: it keys decisions on
 * exactly what the compiled policy can read (src/policy/reads.ts, from
 * OPA's plan), so
 *   - over a corpus of statements (facts completed from a real
 *     PostgreSQL's catalog), identities, connections, grants and literal
 *     variants, every cached decision equals a fresh evaluation;
 *   - a policy that reads input.now, or calls a nondeterministic builtin,
 *     gets no cache: it is evaluated every time, through the engine and
 *     through the guard (which then does not reuse an earlier decision either).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import postgres from "postgres";
import { Guard } from "../src/core/guard.ts";
import type { Command, ConnectionRef, Identity, Session } from "../src/core/types.ts";
import { buildPolicies, createPolicyEngine, type PolicyEngine, type PolicyManifest, resolveOpa } from "../src/policy/index.ts";
import { uncacheable } from "../src/policy/cache.ts";
import { analysePlan, describeReads, readsPath } from "../src/policy/reads.ts";
import { readTarGz } from "../src/policy/tar.ts";
import { CatalogFacts } from "../src/protocols/postgres/facts.ts";
import { analyzeSql, initSql } from "../src/protocols/postgres/sql.ts";
import { startPostgres, type TestPostgres } from "./helpers/postgres.ts";

const WASM = resolve(import.meta.dir, "../wasm");
const DATA = {
  agate: {
    config: {
      allow_rules: ["deny_truncate"],
      approvals: { max_rows: 100 },
      connections: {
        staging: { allow_rules: ["deny_drop", "approve_ddl"], mask: { columns: ["users.email"] }, allow_settings: ["work_mem"] },
      },
    },
  },
};

let db: TestPostgres;
let sql: postgres.Sql;
let bytes: Uint8Array;
let manifest: PolicyManifest;
const tmp = mkdtempSync(join(tmpdir(), "agate-policy-cache-"));

beforeAll(async () => {
  await initSql();
  db = await startPostgres();
  await db.psql(`CREATE TABLE users (id int PRIMARY KEY, email text, name text);
    CREATE TABLE orders (id int PRIMARY KEY, user_id int, total numeric);
    CREATE FUNCTION public.secdef() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';
    CREATE VIEW user_names AS SELECT id, name FROM users;`, "app");
  sql = postgres(db.url("postgres", "app"), { max: 1, onnotice: () => {} });
  bytes = await Bun.file(join(WASM, "policy.wasm")).bytes();
  manifest = (await Bun.file(join(WASM, "manifest.json")).json()) as PolicyManifest;
});

afterAll(async () => {
  await sql?.end();
  await db?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

/** Statements whose decisions differ by rule, by catalog facts, by literal, by connection. */
const CORPUS = [
  "SELECT 1",
  "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
  "SELECT id, email FROM users WHERE id = 1",
  "SELECT id, email FROM users WHERE id = 2",
  "SELECT id, email FROM users WHERE name = 'bob'",
  "SELECT * FROM user_names",
  "SELECT secdef()",
  "SELECT pg_read_file('/etc/passwd')",
  "SELECT no_such_function(1)",
  "SELECT * FROM pg_settings",
  "SELECT set_config('work_mem', '8MB', false)",
  "SELECT set_config('log_statement', 'none', false)",
  "SET work_mem = '8MB'",
  "SET log_statement = 'none'",
  "SHOW ALL",
  "INSERT INTO users VALUES (1, 'a@example.com', 'a')",
  "INSERT INTO orders SELECT id, id, 1 FROM users",
  "UPDATE users SET name = 'x' WHERE id = 1",
  "DELETE FROM orders",
  "INSERT INTO pg_catalog.pg_class DEFAULT VALUES",
  "CREATE TABLE t2 (id int)",
  "CREATE TEMP TABLE t3 (id int)",
  "ALTER TABLE users ADD COLUMN age int",
  "ALTER TABLE users DROP COLUMN name",
  "DROP TABLE orders",
  "TRUNCATE orders",
  "DO $$ BEGIN END $$",
  "CREATE EXTENSION dblink",
  "COPY users TO STDOUT",
  "COPY users TO PROGRAM 'cat'",
  "COPY users FROM '/tmp/x'",
  "EXPLAIN SELECT * FROM users",
  "EXPLAIN ANALYZE DELETE FROM users",
  "PREPARE p AS SELECT * FROM users WHERE id = $1",
  "CREATE SCHEMA s CREATE TABLE s.a (id int) CREATE VIEW s.v AS SELECT 1",
  "BEGIN; SELECT 1; COMMIT",
  "SELECT 1; DROP TABLE users",
  "CREATE ROLE r",
  "GRANT pg_read_server_files TO app_scram",
  "LISTEN ch",
  "VACUUM users",
];

const identities: Identity[] = [
  { subject: "ci-runner", issuer: "agate", groups: ["ci"], kind: "service" },
  { subject: "alice", issuer: "https://idp.example", groups: ["dba"], kind: "human" },
];
const connections: ConnectionRef[] = [
  { name: "app-db", protocol: "postgres", target: "127.0.0.1:5432/app" },
  { name: "staging", protocol: "postgres", target: "127.0.0.1:5432/app" },
];

/** The facts of `text`: completed from the real catalog, or (`known: false`) as if the catalog could not be asked. */
async function factsOf(text: string, catalog: CatalogFacts | undefined): Promise<Command> {
  const command: Command = { seq: 1, text, sql: analyzeSql(text) };
  if (catalog) await catalog.complete(command, "v");
  return command;
}

function inputs(command: Command, estimated: number | null | undefined): object[] {
  const out: object[] = [];
  const withRows =
    estimated === undefined || !command.sql
      ? command.sql
      : { ...command.sql, statements: command.sql.statements.map((s) => (["insert", "update", "delete"].includes(s.kind) ? { ...s, estimated_rows: estimated } : s)) };
  for (const identity of identities) {
    for (const connection of connections) {
      for (const grants of [undefined, [{ id: "g1", connection: connection.name, granted_by: ["dba1"], expires_at: "2999-01-01T00:00:00Z", request: "r1" }]]) {
        out.push({
          stage: "command",
          now: new Date().toISOString(),
          identity,
          connection,
          session: { id: crypto.randomUUID(), started_at: new Date().toISOString() },
          client: { address: "127.0.0.1", tls: false },
          command: { text: command.text, sql: withRows },
          ...(grants ? { grants } : {}),
        });
      }
    }
  }
  out.push({ stage: "session", now: new Date().toISOString(), identity: identities[0], connection: connections[0], session: { id: "s", started_at: "x" }, client: { address: "127.0.0.1", tls: false } });
  out.push({ stage: "session", now: new Date().toISOString(), identity: { ...identities[0], subject: " " }, connection: connections[0], session: { id: "s", started_at: "x" }, client: { address: "127.0.0.1", tls: false } });
  return out;
}

describe("what the default policy reads", () => {
  test("the manifest says: not now, not the text, not params; grants, identity and statement facts by shape", () => {
    const inputs = manifest.inputs!;
    expect(inputs.reads).not.toBeNull();
    expect({ now: inputs.now, text: inputs.text, params: inputs.params, grants: inputs.grants, nondeterministic: inputs.nondeterministic }).toEqual({
      now: false,
      text: false,
      params: false,
      grants: true,
      nondeterministic: [],
    });
    const paths = describeReads(inputs.reads);
    expect(paths).toContain("identity.subject (whole)");
    expect(paths).toContain("connection.name (whole)");
    expect(paths).toContain("command.sql.statements[*].tag (whole)");
    expect(readsPath(inputs.reads, ["command", "sql", "statements", "0", "text"])).toBe(false);
    expect(readsPath(inputs.reads, ["session", "id"])).toBe(false);
  });
});

describe("the plan analysis fails closed", () => {
  test("a statement it does not follow makes the policy read everything, and nothing is cached", () => {
    const plan = { static: {}, plans: { plans: [{ name: "agate/decision", blocks: [{ stmts: [{ type: "WithStmt", stmt: {} }] }] }] } };
    const reads = analysePlan(plan, new Set());
    expect(reads.reads).toBeNull();
    expect(readsPath(reads.reads, ["now"])).toBe(true);
    expect(uncacheable({ ...reads, wasm_sha256: "ab", now: true, text: true, params: true, grants: true }, "ab")).toBe(
      "the policy could not be analysed: the plan has a WithStmt, which this analysis does not follow",
    );
  });
});

describe("a cached decision equals a fresh one", () => {
  test("over a corpus of statements, identities, connections, grants and estimates", async () => {
    const cached = await createPolicyEngine({ bytes, manifest, data: DATA });
    const fresh = await createPolicyEngine({ bytes, data: DATA }); // no manifest: evaluated every time
    expect(cached.caching).toBe(true);
    expect(fresh.caching).toBe(false);
    const catalog = new CatalogFacts((text, params) => sql.unsafe(text, params as never[]) as unknown as Promise<never>);
    let compared = 0;
    const allows = new Set<boolean>();
    // Twice over: the second pass is answered from the cache, and must still agree.
    for (const pass of [1, 2]) {
      for (const text of CORPUS) {
        for (const source of [catalog, undefined]) {
          const command = await factsOf(text, source);
          for (const estimated of [undefined, 5, 5000, null]) {
            for (const input of inputs(command, estimated)) {
              const a = cached.decide(input);
              const b = fresh.decide(input);
              expect({ pass, text, input, decision: a }).toEqual({ pass, text, input, decision: b });
              allows.add(a.allow);
              compared++;
            }
          }
        }
      }
    }
    expect(allows).toEqual(new Set([true, false]));
    const { evaluated, cached: hits } = cached.current.stats;
    expect(evaluated + hits).toBe(compared);
    expect(hits).toBeGreaterThan(compared / 2); // the whole second pass, and literal variants of the first
    expect(fresh.current.stats.cached).toBe(0);
  });

  test("statements differing only in their literals share one decision", async () => {
    const engine = await createPolicyEngine({ bytes, manifest });
    const catalog = new CatalogFacts((text, params) => sql.unsafe(text, params as never[]) as unknown as Promise<never>);
    const decisions = [];
    for (const id of [1, 2, 3, 48213]) {
      const [input] = inputs(await factsOf(`SELECT id, email FROM users WHERE id = ${id}`, catalog), undefined);
      decisions.push(engine.decide(input!));
    }
    expect(engine.current.stats).toEqual({ evaluated: 1, cached: 3 });
    expect(new Set(decisions).size).toBe(1);
    expect(decisions[0]!.allow).toBe(true);
  });

  test("an input holding null (a write whose estimate could not be made) is cached, and apart from a number", async () => {
    const engine = await createPolicyEngine({ bytes, manifest, data: DATA });
    const catalog = new CatalogFacts((text, params) => sql.unsafe(text, params as never[]) as unknown as Promise<never>);
    const command = await factsOf("UPDATE orders SET total = 1 WHERE id = 2", catalog);
    const [unknown] = inputs(command, null);
    const [five] = inputs(command, 5);
    const first = engine.decide(unknown!);
    expect(engine.decide(unknown!)).toBe(first);
    expect(engine.current.stats).toEqual({ evaluated: 1, cached: 1 });
    expect(first.approval.required).toBe(true); // null rows: held
    expect(engine.decide(five!).approval.required).toBe(false);
    expect(engine.current.stats).toEqual({ evaluated: 2, cached: 1 });
  });

  test("a new grant, another identity or another connection is another key", async () => {
    const engine = await createPolicyEngine({ bytes, manifest, data: DATA });
    const catalog = new CatalogFacts((text, params) => sql.unsafe(text, params as never[]) as unknown as Promise<never>);
    const all = inputs(await factsOf("DELETE FROM orders", catalog), 5000);
    const [noGrant, withGrant] = all as [object, object];
    expect(engine.decide(noGrant).approval.required).toBe(true);
    expect(engine.decide(withGrant).approval.required).toBe(false);
    expect(engine.decide(noGrant).approval.required).toBe(true);
    expect(engine.current.stats).toEqual({ evaluated: 2, cached: 1 });
  });
});

describe("a policy that reads the time is evaluated every time", () => {
  const TIMED = `package agate

import rego.v1

default decision := {"allow": false, "reasons": ["agate.test.closed: outside office hours"], "approval": {"required": false, "approvers": [], "timeout_s": 0}, "mask": {"columns": [], "detectors": []}}

decision := {"allow": true, "reasons": [], "approval": {"required": false, "approvers": [], "timeout_s": 0}, "mask": {"columns": [], "detectors": []}} if {
	input.stage == "session"
}

decision := {"allow": true, "reasons": [], "approval": {"required": false, "approvers": [], "timeout_s": 0}, "mask": {"columns": [], "detectors": []}} if {
	input.stage == "command"
	hour := substring(input.now, 11, 2)
	hour >= "09"
	hour < "17"
}
`;
  const NOW_NS = `package agate

import rego.v1

decision := {"allow": time.now_ns() > 0, "reasons": [], "approval": {"required": false, "approvers": [], "timeout_s": 0}, "mask": {"columns": [], "detectors": []}}
`;

  async function build(name: string, rego: string): Promise<string> {
    const dir = join(tmp, name);
    mkdirSync(join(dir, "policies"), { recursive: true });
    writeFileSync(join(dir, "policies", "decision.rego"), rego);
    const result = await buildPolicies({ policiesDir: join(dir, "policies"), outDir: dir });
    return result.files[0]!;
  }

  let timed: PolicyEngine;
  beforeAll(async () => {
    timed = await createPolicyEngine({ file: await build("timed", TIMED) });
  });

  test("its manifest says it reads now; the engine makes no cache", async () => {
    const m = (await Bun.file(join(tmp, "timed", "manifest.json")).json()) as PolicyManifest;
    expect(m.inputs!.now).toBe(true);
    expect(timed.caching).toBe(false);
    expect(timed.current.uncached).toBe("the policy reads input.now");
  });

  test("the same command at two times: two decisions, every call evaluated", () => {
    const at = (iso: string) => ({ stage: "command", now: iso, identity: identities[0], connection: connections[0], session: { id: "s", started_at: iso }, command: { text: "SELECT 1", sql: analyzeSql("SELECT 1") } });
    const before = timed.current.stats.evaluated;
    const answers: boolean[] = [];
    for (let i = 0; i < 10; i++) answers.push(timed.decide(at(i % 2 ? "2026-01-05T10:00:00Z" : "2026-01-05T20:00:00Z")).allow);
    expect(answers).toEqual([false, true, false, true, false, true, false, true, false, true]);
    expect(timed.current.stats.evaluated - before).toBe(10);
    expect(timed.current.stats.cached).toBe(0);
  });

  test("through the guard: an earlier decision for the same text is not reused when time has moved on", async () => {
    let now = new Date("2026-01-05T10:00:00Z");
    const records: Record<string, unknown>[] = [];
    const guard = new Guard({
      policy: timed,
      audit: { append: async (f) => records.push(f) - 1, appendLater: (f) => records.push(f) - 1 },
      identity: { verify: async () => identities[0]! },
      now: () => now,
    });
    const session: Session = { id: "s1", started_at: now.toISOString(), identity: identities[0]!, connection: connections[0]!, client: { address: "127.0.0.1", tls: false } };
    const command = (seq: number): Command => ({ seq, text: "SELECT 1", sql: analyzeSql("SELECT 1") });
    const before = timed.current.stats.evaluated;
    const parsed = await guard.check(session, command(1), { recordDenialsOnly: true });
    expect(parsed.allow).toBe(true);
    now = new Date("2026-01-05T20:00:00Z");
    const executed = await guard.check(session, command(2), { prior: parsed });
    expect(executed.allow).toBe(false);
    expect(executed.decision.reasons).toEqual(["agate.test.closed: outside office hours"]);
    expect(timed.current.stats.evaluated - before).toBe(2);
  });

  test("a policy calling a nondeterministic builtin gets no cache either", async () => {
    // The wasm SDK has none of them (the build refuses them), so the plan is built without its capabilities.
    const dir = join(tmp, "now_ns");
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "decision.rego"), NOW_NS);
    const run = Bun.spawnSync([resolveOpa(), "build", "-t", "plan", "-e", "agate/decision", ".", "-o", "plan.tar.gz"], { cwd: dir, stderr: "pipe" });
    expect(run.stderr.toString()).toBe("");
    const plan = JSON.parse(new TextDecoder().decode(readTarGz(await Bun.file(join(dir, "plan.tar.gz")).bytes()).get("plan.json")!));
    const reads = analysePlan(plan, new Set(["time.now_ns", "rand.intn"]));
    expect(reads.nondeterministic).toEqual(["time.now_ns"]);
    const inputs = { ...reads, wasm_sha256: "ab", now: false, text: false, params: false, grants: false };
    expect(uncacheable(inputs, "ab")).toBe("the policy calls time.now_ns");
  });

  test("a manifest for another policy.wasm is not trusted", async () => {
    const engine = await createPolicyEngine({ bytes, manifest: { ...manifest, inputs: { ...manifest.inputs!, wasm_sha256: "0".repeat(64) } } });
    expect(engine.current.uncached).toBe("the manifest describes another policy.wasm");
  });
});
