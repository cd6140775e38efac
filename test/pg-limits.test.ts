/**
 * Limits of the query phase: a statement the analyser cannot take is an
 * ordinary error that keeps the session (as PostgreSQL's 54001), and a
 * frontend message too large to be recorded or over `max_message_bytes` is
 * refused from its length header, before its body is read.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readRecords } from "../src/audit/index.ts";
import { message, startupPacket } from "../src/protocols/postgres/wire.ts";
import { API_KEY, psql, sh, spawnGateway, startTestGateway, type TestGateway, USER, writeServeConfig } from "./helpers/gateway.ts";
import { PASSWORD, startPostgres, type TestPostgres } from "./helpers/postgres.ts";
import { errorOf, Query, rawSession, rowOf, run, Sync } from "./helpers/wire.ts";

let db: TestPostgres;
let gw: TestGateway;

beforeAll(async () => {
  db = await startPostgres();
  gw = await startTestGateway(db);
});

afterAll(async () => {
  await gw?.close();
  await db?.stop();
});

async function records(dir: string): Promise<Record<string, unknown>[]> {
  const out: Record<string, unknown>[] = [];
  for await (const r of readRecords(dir)) out.push(r);
  return out;
}

/** `select 1+1+…+1` with 10,000 terms: deeper than agate's analyser takes (and than PostgreSQL's stack). */
const TOO_DEEP = `select ${Array(10_000).fill("1").join("+")}`;

describe("a statement too deep to analyse", () => {
  test("psql: ERROR 54001, and the same connection runs the next statement", async () => {
    const dir = mkdtempSync(join(tmpdir(), "agate-deep-"));
    try {
      writeFileSync(join(dir, "deep.sql"), `${TOO_DEEP};\n`);
      const r = await sh(["psql", "-X", "-At", gw.url(), "-c", "select 'before', pg_backend_pid()", "-f", join(dir, "deep.sql"), "-c", "select 'after', pg_backend_pid()"]);
      expect(r.stderr).toContain("ERROR:  agate: The statement is nested too deeply");
      expect(r.stderr).not.toContain("FATAL");
      const lines = r.stdout.trim().split("\n");
      expect(lines.length).toBe(2);
      expect(lines[0]!.startsWith("before|")).toBe(true);
      expect(lines[1]!.startsWith("after|")).toBe(true);
      // psql runs every -c and -f on one connection: the backend is the same.
      expect(lines[0]!.split("|")[1]).toBe(lines[1]!.split("|")[1]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("raw client, simple and extended protocol: 54001, then SELECT 1 on the same connection", async () => {
    const s = await rawSession(gw.port, { user: USER, password: API_KEY });
    try {
      s.send(Query(TOO_DEEP));
      const simple = await s.untilReady();
      const e1 = simple.find((m) => m.type === "E")!;
      expect(errorOf(e1).code).toBe("54001");
      expect(simple.at(-1)!.body.toString()).toBe("I");
      s.send([...run(TOO_DEEP), Sync]);
      const extended = await s.untilReady();
      expect(errorOf(extended.find((m) => m.type === "E")!).code).toBe("54001");
      s.send(Query("SELECT 1"));
      const after = await s.untilReady();
      expect(after.filter((m) => m.type === "D").map((m) => rowOf(m)[0]!.toString())).toEqual(["1"]);
      expect(s.closed).toBe(false);
    } finally {
      s.close();
    }
    // Refused and recorded with its reason, as any refusal.
    const denied = (await records(gw.auditDir)).filter((r) => r.type === "command" && String((r.decision as { reasons?: string[] } | undefined)?.reasons ?? "").includes("agate.sql_too_deep"));
    expect(denied.length).toBeGreaterThanOrEqual(2);
  });
});
