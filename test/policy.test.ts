/**
 * policy/: the committed bundle, the decision contract, reload and
 * staleness, all against the real OPA compiler (scripts/opa.sh) and the
 * real opa-wasm runtime.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { AgateError } from "../src/core/errors.ts";
import { SECRET_DETECTORS } from "../src/mask/detectors.ts";
import type { Decision, SqlStatement } from "../src/core/types.ts";
import {
  buildPolicies,
  checkFresh,
  createPolicyEngine,
  loadPolicy,
  normalizeDecision,
  type PolicyEngine,
  resolveOpa,
  runPolicyTests,
} from "../src/policy/index.ts";

const ROOT = resolve(import.meta.dir, "..");
const POLICIES = join(ROOT, "policies");
const WASM = join(ROOT, "wasm");

let opa: string;
let tmp: string;

beforeAll(() => {
  opa = resolveOpa();
  tmp = mkdtempSync(join(tmpdir(), "agate-policy-test-"));
});

afterAll(() => {
  rmSync(tmp, { recursive: true, force: true });
});

/** A fresh directory under the suite's temp dir. */
function dir(name: string): string {
  const d = join(tmp, name);
  rmSync(d, { recursive: true, force: true });
  return d;
}

/** A copy of the repository's policies/ to edit. */
function copyPolicies(name: string): string {
  const d = dir(name);
  cpSync(POLICIES, d, { recursive: true });
  return d;
}

/** Writes a file, creating its directory. */
function writeFile(path: string, text: string): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, text);
}

/** Writes a one-package policy tree from { "agate/x.rego": source }. */
function writePolicies(name: string, files: Record<string, string>): string {
  const d = dir(name);
  for (const [rel, src] of Object.entries(files)) writeFile(join(d, rel), src);
  return d;
}

function stmt(over: Partial<SqlStatement> & Pick<SqlStatement, "kind" | "node" | "tag">): SqlStatement {
  return { reads: [], writes: [], functions: [], columns: [], whole_row: false, settings: [], text: over.tag, ...over };
}

const SELECT = stmt({ kind: "select", node: "SelectStmt", tag: "SELECT", reads: ["public.users"] });
const DROP = stmt({ kind: "ddl", node: "DropStmt", tag: "DROP TABLE", writes: ["users"], text: "DROP TABLE users" });

function sessionInput(subject: string | undefined, connection = "prod-db"): object {
  return {
    stage: "session",
    now: "2025-06-01T12:00:00Z",
    ...(subject === undefined ? {} : { identity: { subject, issuer: "https://idp.test", groups: [], kind: "agent" } }),
    connection: { name: connection, protocol: "postgres", target: "127.0.0.1:5432/app" },
    session: { id: "s-1", started_at: "2025-06-01T12:00:00Z" },
  };
}

function sqlInput(statements: SqlStatement[], connection = "prod-db"): object {
  return {
    stage: "command",
    now: "2025-06-01T12:00:00Z",
    identity: { subject: "alice@example.com", issuer: "https://idp.test", groups: ["dev"], kind: "agent" },
    connection: { name: connection, protocol: "postgres", target: "127.0.0.1:5432/app" },
    session: { id: "s-1", started_at: "2025-06-01T12:00:00Z" },
    command: { text: statements.map((s) => s.text).join("; "), sql: { statements, multi: statements.length > 1, catalog: { known: true } } },
  };
}

const EMPTY_APPROVAL = { required: false, approvers: [], timeout_s: 0 };
const EMPTY_MASK = { columns: [], detectors: [] };
/** The default policy's mask: the secret detectors (policies/agate/mask.rego). */
const DEFAULT_MASK = { columns: [], detectors: [...SECRET_DETECTORS] };

/** Polls `cond` every 25 ms; fails after `attempts` tries. */
async function until(what: string, cond: () => boolean, attempts = 800): Promise<void> {
  for (let i = 0; i < attempts; i++) {
    if (cond()) return;
    await Bun.sleep(25);
  }
  throw new Error(`timed out waiting until ${what}`);
}

describe("the committed bundle (wasm/policy.wasm)", () => {
  let engine: PolicyEngine;
  beforeAll(async () => {
    engine = await createPolicyEngine({ file: join(WASM, "policy.wasm") });
  });
  afterAll(() => engine.close());

  test("was built from the current policies/", async () => {
    const { fresh, want, got } = await checkFresh({ policiesDir: POLICIES, outDir: WASM });
    expect({ fresh, got }).toEqual({ fresh: true, got: want });
    const manifest = await Bun.file(join(WASM, "manifest.json")).json();
    expect(manifest).toMatchObject({ entrypoint: "agate/decision", opa: "v1.22.3", sources_sha256: want });
    // What the policy reads describes this very policy.wasm (the decision cache relies on it).
    const wasm = await Bun.file(join(WASM, "policy.wasm")).bytes();
    expect(manifest.inputs.wasm_sha256).toBe(new Bun.CryptoHasher("sha256").update(wasm).digest("hex"));
  });

  test("version is the short SHA-256 of the wasm", async () => {
    const bytes = await Bun.file(join(WASM, "policy.wasm")).arrayBuffer();
    const sha = new Bun.CryptoHasher("sha256").update(bytes).digest("hex");
    expect(engine.version).toBe(sha.slice(0, 12));
  });

  test("SELECT is allowed with the contract's full decision", () => {
    expect(engine.decide(sqlInput([SELECT]))).toEqual({
      allow: true,
      reasons: [],
      approval: EMPTY_APPROVAL,
      mask: DEFAULT_MASK,
    });
  });

  test("DROP TABLE is denied with a reason naming the rule", () => {
    const d = engine.decide(sqlInput([DROP]));
    expect(d).toEqual({
      allow: false,
      reasons: ["agate.sql.deny_drop: DROP is not allowed (statement 1: DROP TABLE)"],
      approval: EMPTY_APPROVAL,
      mask: DEFAULT_MASK,
    });
  });

  test("TRUNCATE and ALTER are denied", () => {
    const truncate = engine.decide(sqlInput([stmt({ kind: "ddl", node: "TruncateStmt", tag: "TRUNCATE TABLE" })]));
    expect(truncate.reasons).toEqual(["agate.sql.deny_truncate: TRUNCATE is not allowed (statement 1: TRUNCATE TABLE)"]);
    const alter = engine.decide(sqlInput([stmt({ kind: "ddl", node: "AlterTableStmt", tag: "ALTER TABLE" })]));
    expect(alter.allow).toBe(false);
    expect(alter.reasons[0]).toStartWith("agate.sql.deny_alter: ");
  });

  test("pg_read_file is denied, with or without pg_catalog.", () => {
    for (const fn of ["pg_read_file", "pg_catalog.pg_read_file"]) {
      const d = engine.decide(sqlInput([{ ...SELECT, functions: ["now", fn] }]));
      expect(d.allow).toBe(false);
      expect(d.reasons).toEqual([
        `agate.sql.deny_server_function: calling ${fn}() is not allowed: it reaches outside the database or acts on the server or other sessions (statement 1: SELECT)`,
      ]);
    }
  });

  test("COPY ... PROGRAM and COPY to a server file are denied; COPY to STDOUT is allowed", () => {
    const copy = (program: boolean, file: boolean, stdio: boolean) =>
      stmt({ kind: "copy", node: "CopyStmt", tag: "COPY", copy: { direction: "to", program, file, stdio, format: "text" } });
    const program = engine.decide(sqlInput([copy(true, false, false)]));
    expect(program.allow).toBe(false);
    expect(program.reasons).toHaveLength(1);
    expect(program.reasons[0]).toStartWith("agate.sql.deny_copy_program: ");
    expect(engine.decide(sqlInput([copy(false, true, false)])).reasons[0]).toStartWith("agate.sql.deny_copy_file: ");
    expect(engine.decide(sqlInput([copy(false, false, true)])).allow).toBe(true);
  });

  test("a multi-statement query with one DROP is denied", () => {
    const d = engine.decide(sqlInput([SELECT, SELECT, DROP]));
    expect(d.allow).toBe(false);
    expect(d.reasons).toEqual(["agate.sql.deny_drop: DROP is not allowed (statement 3: DROP TABLE)"]);
  });

  test("a session is allowed for a subject and denied without one", () => {
    expect(engine.decide(sessionInput("alice@example.com")).allow).toBe(true);
    for (const subject of [undefined, ""]) {
      const d = engine.decide(sessionInput(subject));
      expect(d.allow).toBe(false);
      expect(d.reasons[0]).toStartWith("agate.session.deny_no_identity: ");
    }
  });

  test("a missing or unknown stage is denied", () => {
    expect(engine.decide({}).reasons).toEqual([
      'agate.policy.deny_unknown_stage: the input has no stage; expected "session" or "command"',
    ]);
    expect(engine.decide({ ...sessionInput("alice"), stage: "later" }).allow).toBe(false);
  });

  test("an input that cannot be serialised is a deny, not a throw", () => {
    const input: Record<string, unknown> = { stage: "command" };
    input.self = input;
    const d = engine.decide(input);
    expect(d.allow).toBe(false);
    expect(d.reasons[0]).toStartWith("agate.policy.error: ");
  });
});

describe("escape hatch (data.agate.config)", () => {
  test("allow_rules switches a rule off everywhere; connections.<name>.allow_rules for one connection", async () => {
    const bytes = new Uint8Array(await Bun.file(join(WASM, "policy.wasm")).arrayBuffer());
    const global = await createPolicyEngine({ bytes, data: { agate: { config: { allow_rules: ["deny_drop"] } } } });
    expect(global.decide(sqlInput([DROP]))).toMatchObject({ allow: true, reasons: [] });
    // Only the named rule: TRUNCATE is still denied.
    expect(global.decide(sqlInput([DROP, stmt({ kind: "ddl", node: "TruncateStmt", tag: "TRUNCATE TABLE" })])).reasons).toEqual([
      "agate.sql.deny_truncate: TRUNCATE is not allowed (statement 2: TRUNCATE TABLE)",
    ]);
    global.close();

    const config = { agate: { config: { connections: { "staging-db": { allow_rules: ["agate.sql.deny_drop"] } } } } };
    const perConnection = await createPolicyEngine({ bytes, data: config });
    expect(perConnection.decide(sqlInput([DROP], "staging-db")).allow).toBe(true);
    expect(perConnection.decide(sqlInput([DROP], "prod-db")).allow).toBe(false);
    perConnection.close();
  });

  test("data files in policies/ end up in wasm/data.json and are used", async () => {
    const policiesDir = copyPolicies("with-data");
    writeFile(join(policiesDir, "agate/config/data.json"), JSON.stringify({ allow_rules: ["deny_truncate"] }));
    const outDir = dir("with-data-out");
    const result = await buildPolicies({ policiesDir, outDir, opaPath: opa });
    expect(result.files).toContain(join(outDir, "data.json"));
    const engine = await createPolicyEngine({ file: join(outDir, "policy.wasm") });
    expect(engine.decide(sqlInput([stmt({ kind: "ddl", node: "TruncateStmt", tag: "TRUNCATE TABLE" })])).allow).toBe(true);
    expect(engine.decide(sqlInput([DROP])).allow).toBe(false);
    engine.close();
  });
});

describe("normalizeDecision", () => {
  const good: Decision = { allow: true, reasons: ["ok"], approval: EMPTY_APPROVAL, mask: EMPTY_MASK };

  test("keeps a well-formed decision and drops extra fields", () => {
    expect(normalizeDecision({ ...good, extra: 1 })).toEqual(good);
  });

  const cases: [string, unknown, string][] = [
    ["missing", undefined, "the policy returned no decision"],
    ["null", null, "the decision is null, not an object"],
    ["a list", [good], "the decision is a list, not an object"],
    ["allow not a boolean", { ...good, allow: "yes" }, 'decision.allow is "yes", not a boolean'],
    ["reasons not strings", { ...good, reasons: [1] }, "decision.reasons is a list, not a list of strings"],
    ["approval missing", { ...good, approval: undefined }, "decision.approval is missing"],
    ["negative timeout", { ...good, approval: { ...EMPTY_APPROVAL, timeout_s: -1 } }, "decision.approval.timeout_s is -1"],
    ["mask columns missing", { ...good, mask: { detectors: [] } }, "decision.mask.columns is missing"],
  ];
  for (const [name, raw, why] of cases) {
    test(`${name} is a deny`, () => {
      const d = normalizeDecision(raw);
      expect(d.allow).toBe(false);
      expect(d.reasons).toHaveLength(1);
      expect(d.reasons[0]).toStartWith(`agate.policy.malformed: ${why}`);
      expect(d.approval).toEqual(EMPTY_APPROVAL);
      expect(d.mask).toEqual(EMPTY_MASK);
    });
  }
});

const WELL_FORMED = `package agate

decision := {
	"allow": allow,
	"reasons": [],
	"approval": {"required": false, "approvers": [], "timeout_s": 0},
	"mask": {"columns": [], "detectors": []},
} if not special

default allow := true

special if input.command.text == "malformed"

special if input.command.text == "conflict"
`;

describe("loading and validating bundles", () => {
  test("a decision that is malformed for some inputs is a deny for those inputs", async () => {
    const policiesDir = writePolicies("malformed-sometimes", {
      "agate/decision.rego": `${WELL_FORMED}
decision := {"allow": "yes"} if input.command.text == "malformed"

# Two different values for one complete rule: an evaluation error at run time.
decision := {"allow": true} if input.command.text == "conflict"
decision := {"allow": false} if input.command.text == "conflict"
`,
    });
    const outDir = dir("malformed-sometimes-out");
    await buildPolicies({ policiesDir, outDir, opaPath: opa });
    const engine = await createPolicyEngine({ file: join(outDir, "policy.wasm") });

    expect(engine.decide({ stage: "command", command: { text: "fine" } }).allow).toBe(true);
    const malformed = engine.decide({ stage: "command", command: { text: "malformed" } });
    expect(malformed.allow).toBe(false);
    expect(malformed.reasons).toEqual(['agate.policy.malformed: decision.allow is "yes", not a boolean']);

    const conflict = engine.decide({ stage: "command", command: { text: "conflict" } });
    expect(conflict.allow).toBe(false);
    expect(conflict.reasons[0]).toStartWith("agate.policy.error: ");
    // The instance survives an aborted evaluation.
    expect(engine.decide({ stage: "command", command: { text: "fine" } }).allow).toBe(true);
    // And many of them (each unwinds the module's own stack without restoring it).
    for (let i = 0; i < 2000; i++) {
      expect(engine.decide({ stage: "command", command: { text: "conflict" } }).reasons[0]).toStartWith("agate.policy.error: ");
      if (i % 100 === 0) await Bun.sleep(5); // a fresh instance is swapped in asynchronously
    }
    expect(engine.decide({ stage: "command", command: { text: "fine" } }).allow).toBe(true);
    engine.close();
  });

  test("a bundle whose decision is always malformed is rejected at load", async () => {
    const policiesDir = writePolicies("malformed-always", {
      "agate/decision.rego": 'package agate\n\ndecision := {"allow": true}\n',
    });
    const outDir = dir("malformed-always-out");
    await buildPolicies({ policiesDir, outDir, opaPath: opa });
    const bytes = new Uint8Array(await Bun.file(join(outDir, "policy.wasm")).arrayBuffer());
    const err = await loadPolicy(bytes).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgateError);
    expect((err as AgateError).code).toBe("POLICY_INVALID");
    expect((err as AgateError).message).toContain("decision.reasons is missing");
  });

  test("a bundle without the agate/decision entrypoint is rejected at load", async () => {
    const policiesDir = writePolicies("other-entrypoint", { "other/x.rego": "package other\n\nallow := true\n" });
    const bundle = join(dir("other-entrypoint-out"), "bundle.tar.gz");
    mkdirSync(dirname(bundle), { recursive: true });
    const run = Bun.spawnSync([opa, "build", "-t", "wasm", "-e", "other/allow", ".", "-o", bundle], { cwd: policiesDir });
    expect(run.exitCode).toBe(0);
    const err = await loadPolicy(new Uint8Array(await Bun.file(bundle).arrayBuffer())).catch((e: unknown) => e);
    expect((err as AgateError).code).toBe("POLICY_INVALID");
    expect((err as AgateError).details.want).toBe("agate/decision");
    expect((err as AgateError).details.got).toEqual(["other/allow"]);
  });

  test("garbage bytes are rejected at load", async () => {
    for (const bytes of [new Uint8Array([1, 2, 3, 4]), new Uint8Array([0x1f, 0x8b, 0, 0]), new Uint8Array()]) {
      const err = await loadPolicy(bytes).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(AgateError);
      expect((err as AgateError).code).toBe("POLICY_INVALID");
    }
  });

  test("a bundle.tar.gz straight from opa build loads", async () => {
    const bundle = join(tmp, "real-bundle.tar.gz");
    const run = Bun.spawnSync(
      [opa, "build", "-t", "wasm", "-e", "agate/decision", ".", "--ignore", "*_test.rego", "-o", bundle],
      { cwd: POLICIES },
    );
    expect(run.exitCode).toBe(0);
    const policy = await loadPolicy(new Uint8Array(await Bun.file(bundle).arrayBuffer()));
    expect(policy.decide(sqlInput([DROP])).allow).toBe(false);
    expect(policy.decide(sqlInput([SELECT])).allow).toBe(true);
    // Built from the same sources in the same way: the same wasm as the committed one.
    const committed = await loadPolicy(new Uint8Array(await Bun.file(join(WASM, "policy.wasm")).arrayBuffer()));
    expect(policy.version).toBe(committed.version);
  });
});

describe("reload", () => {
  test("a rebuilt bundle changes decisions in place; garbage keeps the last good one", async () => {
    const policiesDir = copyPolicies("reload");
    const outDir = dir("reload-out");
    await buildPolicies({ policiesDir, outDir, opaPath: opa });

    const logs: { level: string; msg: string; facts: Record<string, unknown> }[] = [];
    const engine = await createPolicyEngine({
      file: join(outDir, "policy.wasm"),
      watch: true,
      onLog: (level, msg, facts) => logs.push({ level, msg, facts }),
    });
    const first = engine.version;
    expect(engine.decide(sqlInput([SELECT])).allow).toBe(true);

    // A new rule: SELECT on public.users is denied.
    writeFileSync(
      join(policiesDir, "agate/users.rego"),
      `package agate

violations contains violation("agate.test.deny_users", "deny_users", true, "reading public.users is not allowed") if {
	some st in input.command.sql.statements
	"public.users" in st.reads
}
`,
    );
    await buildPolicies({ policiesDir, outDir, opaPath: opa });
    await until("the rebuilt bundle is in use", () => !engine.decide(sqlInput([SELECT])).allow);
    expect(engine.decide(sqlInput([SELECT])).reasons).toEqual([
      "agate.test.deny_users: reading public.users is not allowed",
    ]);
    const second = engine.version;
    expect(second).not.toBe(first);
    expect(logs).toContainEqual({
      level: "info",
      msg: "policy reloaded",
      facts: expect.objectContaining({ version: second, previous: first }),
    });

    // Garbage: the engine keeps deciding with the last good bundle and says so.
    logs.length = 0;
    writeFileSync(join(outDir, "policy.wasm"), "this is not webassembly");
    await until("the failed reload is logged", () => logs.some((l) => l.level === "error"));
    expect(logs.find((l) => l.level === "error")).toMatchObject({
      msg: "policy reload failed; keeping the last good bundle",
      facts: { version: second },
    });
    expect(typeof logs.find((l) => l.level === "error")?.facts.reason).toBe("string");
    expect(engine.version).toBe(second);
    expect(engine.decide(sqlInput([SELECT])).allow).toBe(false);
    expect(engine.decide(sqlInput([{ ...SELECT, reads: [] }])).allow).toBe(true);

    // And recovers when a good bundle comes back.
    await buildPolicies({ policiesDir: POLICIES, outDir, opaPath: opa });
    await until("the good bundle is back", () => engine.decide(sqlInput([SELECT])).allow);

    engine.close();
    expect(engine.decide(sqlInput([SELECT])).reasons).toEqual(["agate.policy.error: the policy engine is closed"]);
  });
});

describe("build and staleness", () => {
  test("checkFresh notices an edited policy, not an edited test", async () => {
    const policiesDir = copyPolicies("fresh");
    const outDir = dir("fresh-out");
    expect((await checkFresh({ policiesDir, outDir })).got).toBeNull();

    const manifest = await buildPolicies({ policiesDir, outDir, opaPath: opa });
    expect(await checkFresh({ policiesDir, outDir })).toEqual({
      fresh: true,
      want: manifest.sources_sha256,
      got: manifest.sources_sha256,
    });

    writeFileSync(join(policiesDir, "agate/sql_test.rego"), "\n# a test edit\n", { flag: "a" });
    expect((await checkFresh({ policiesDir, outDir })).fresh).toBe(true);

    writeFileSync(join(policiesDir, "agate/sql.rego"), "\n# an edit\n", { flag: "a" });
    const stale = await checkFresh({ policiesDir, outDir });
    expect(stale.fresh).toBe(false);
    expect(stale.got).toBe(manifest.sources_sha256);
    expect(stale.want).not.toBe(manifest.sources_sha256);

    const script = Bun.spawnSync(["bun", join(ROOT, "scripts/check-policy-fresh.ts"), policiesDir, outDir]);
    expect(script.exitCode).toBe(1);
    expect(script.stderr.toString()).toContain("stale");
  });

  test("a policy that does not compile fails the build with opa's message", async () => {
    const policiesDir = writePolicies("broken", { "agate/decision.rego": "package agate\n\ndecision := {\n" });
    const err = await buildPolicies({ policiesDir, outDir: dir("broken-out"), opaPath: opa }).catch((e: unknown) => e);
    expect((err as AgateError).code).toBe("POLICY_BUILD_FAILED");
    expect(String((err as AgateError).details.output)).toContain("rego_parse_error");
  });

  test("a builtin the wasm SDK cannot run is rejected at build time", async () => {
    const policiesDir = writePolicies("http-send", {
      "agate/decision.rego": `${WELL_FORMED}
fetched := http.send({"method": "GET", "url": "http://127.0.0.1:1"}) if input.fetch
`,
    });
    const err = await buildPolicies({ policiesDir, outDir: dir("http-send-out"), opaPath: opa }).catch((e: unknown) => e);
    expect((err as AgateError).code).toBe("POLICY_BUILD_FAILED");
    expect(String((err as AgateError).details.output)).toContain("http.send");
  });

  test("opa test policies/ passes", () => {
    const { ok, output } = runPolicyTests(POLICIES, opa);
    if (!ok) console.error(output);
    expect(ok).toBe(true);
    expect(output).toMatch(/PASS: \d+\/\d+/);
  });
});
