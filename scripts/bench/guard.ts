#!/usr/bin/env bun
/**
 * What the guard costs per statement, in process, with no sockets: a
 * pgbench select-only statement (a new literal each time, as `-M simple`
 * sends it, or the same text as `-M prepared` reuses) parsed, completed from
 * a real PostgreSQL catalog, decided by the embedded default policy and
 * recorded (command and outcome records), on one core. Prints µs of CPU per
 * statement for each step added in turn, so that what each costs is the
 * difference between two lines of the same run:
 *
 *   facts      analyzeSql + catalog facts (cached after the first)
 *   decide     + guard.check with an audit sink that keeps nothing
 *   record     + a real audit log (durability interval, so no fsync waits): command and outcome records
 *
 *   bun scripts/bench/guard.ts [--n 20000] [--rounds 5]
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import defaultManifest from "../../wasm/manifest.json" with { type: "json" };
import { openLog } from "../../src/audit/index.ts";
import { generateKey, parseSignerKey } from "../../src/audit/note.ts";
import { type AuditSink, Guard } from "../../src/core/guard.ts";
import type { Command, ConnectionRef, Identity, Session } from "../../src/core/types.ts";
import { defaultPolicyBytes } from "../../src/gateway.ts";
import { createPolicyEngine, type PolicyManifest } from "../../src/policy/index.ts";
import { Catalog } from "../../src/protocols/postgres/catalog.ts";
import { catalogFacts } from "../../src/protocols/postgres/facts.ts";
import { analyzeSql, initSql } from "../../src/protocols/postgres/sql.ts";
import { startPostgres } from "../../test/helpers/postgres.ts";
import { printHelp } from "./stack.ts";

const { values: args } = parseArgs({ options: { n: { type: "string", default: "20000" }, rounds: { type: "string", default: "5" }, help: { type: "boolean" } } });
if (args.help) printHelp(import.meta.path);
const N = Number(args.n);
const ROUNDS = Number(args.rounds);

await initSql();
const db = await startPostgres();
const dir = mkdtempSync(join(tmpdir(), "agate-guard-bench-"));
try {
  await db.psql("CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84)); ALTER TABLE pgbench_accounts OWNER TO app_scram;");
  const catalog = new Catalog({ host: db.host, port: db.port, database: "app", user: "app_scram", password: db.password, sslmode: "disable", connect_timeout_ms: 5000 });
  const facts = catalogFacts(catalog);
  const policy = await createPolicyEngine({ bytes: await defaultPolicyBytes(), manifest: defaultManifest as PolicyManifest });
  const identity: Identity = { subject: "bench", issuer: "agate", groups: ["ci"], kind: "service" };
  const connection: ConnectionRef = { name: "app-db", protocol: "postgres", target: `${db.host}:${db.port}/app` };
  const session: Session = { id: "5a3c6f1e-0000-4000-8000-000000000001", started_at: new Date().toISOString(), identity, connection, client: { address: "127.0.0.1", tls: false } };
  const signer = parseSignerKey(generateKey("bench").signerKey);
  const log = await openLog(join(dir, "audit"), { durability: { mode: "interval", interval_ms: 1000 }, signer, origin: signer.name });
  const none: AuditSink = { append: () => Promise.resolve(0), appendLater: () => 0 };
  const guards = { none: new Guard({ policy, audit: none, identity: { verify: async () => identity } }), log: new Guard({ policy, audit: log, identity: { verify: async () => identity } }) };

  const text = (i: number, prepared: boolean) => (prepared ? "SELECT abalance FROM pgbench_accounts WHERE aid = $1;" : `SELECT abalance FROM pgbench_accounts WHERE aid = ${1 + ((i * 7919) % 1000000)};`);
  async function command(i: number, prepared: boolean): Promise<Command> {
    const c: Command = { seq: i, text: text(i, prepared), sql: analyzeSql(text(i, prepared)), ...(prepared ? { params: [String(i)] } : {}) };
    const pending = facts.complete(c, policy.version);
    if (pending) await pending;
    return c;
  }
  type Step = "facts" | "decide" | "record";
  async function round(step: Step, prepared: boolean): Promise<number> {
    const guard = step === "record" ? guards.log : guards.none;
    const t0 = process.cpuUsage();
    for (let i = 0; i < N; i++) {
      const c = await command(i, prepared);
      if (step === "facts") continue;
      const v = await guard.check(session, c, { durable: "response" });
      guard.outcome(session, [c.seq], { tags: ["SELECT 1"], rows: 1, bytes: 60 }, v.mask);
    }
    if (step === "record") await log.flush();
    const t = process.cpuUsage(t0);
    return (t.user + t.system) / N;
  }
  const steps: Step[] = ["facts", "decide", "record"];
  for (const prepared of [false, true]) {
    for (const s of steps) await round(s, prepared); // warm-up
    const got: Record<Step, number[]> = { facts: [], decide: [], record: [] };
    for (let r = 0; r < ROUNDS; r++) for (const s of steps) got[s].push(await round(s, prepared));
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    console.log(`${prepared ? "prepared" : "simple  "}  µs CPU per statement (median of ${ROUNDS} rounds of ${N}):  facts ${median(got.facts).toFixed(1)}  +decide ${median(got.decide).toFixed(1)}  +record ${median(got.record).toFixed(1)}`);
  }
  await log.close();
  await catalog.close();
  policy.close();
} finally {
  await db.stop();
  rmSync(dir, { recursive: true, force: true });
}
