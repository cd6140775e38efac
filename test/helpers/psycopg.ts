/**
 * psycopg 3 (the pure-Python build over the system libpq, installed by
 * scripts/setup.sh into $AGATE_TOOLS/py) as a test client: one session runs
 * statements in order and reports, for each, its rows or its error, and every
 * notice. `binary` asks for binary results (extended protocol); otherwise
 * psycopg still sends every statement through the extended protocol, in text.
 */
import { existsSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";

export const PSYCOPG_PYTHON = join(process.env.AGATE_TOOLS ?? join(homedir(), ".local/agate-tools"), "py/bin/python");

const SCRIPT = String.raw`
import json, sys, psycopg
req = json.load(sys.stdin)
out = []
def show(v):
    if isinstance(v, (bytes, bytearray, memoryview)): return bytes(v).decode("latin1")
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
with psycopg.connect(req["url"], autocommit=True) as conn:
    conn.add_notice_handler(lambda d: out.append({"notice": d.message_primary, "detail": d.message_detail}))
    for st in req["statements"]:
        try:
            with conn.cursor(binary=req["binary"]) as cur:
                cur.execute(st)
                out.append({"rows": [[show(v) for v in r] for r in cur.fetchall()] if cur.description else cur.statusmessage})
        except psycopg.Error as e:
            d = e.diag
            out.append({"error": str(e), "sqlstate": d.sqlstate, "detail": d.message_detail, "hint": d.message_hint, "context": d.context})
print(json.dumps(out))
`;

/** Runs `statements` in one psycopg session at `url`; one JSON text per statement or notice. */
export async function psycopg(url: string, statements: string[], opts: { binary?: boolean } = {}): Promise<string[]> {
  if (!existsSync(PSYCOPG_PYTHON)) throw new Error(`${PSYCOPG_PYTHON} not found: run bash scripts/setup.sh (it installs psycopg into a venv)`);
  const proc = Bun.spawn([PSYCOPG_PYTHON, "-c", SCRIPT], { stdin: "pipe", stdout: "pipe", stderr: "pipe" });
  proc.stdin.write(JSON.stringify({ url, statements, binary: opts.binary ?? true }));
  await proc.stdin.end();
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  if (code !== 0) throw new Error(`psycopg client exited ${code}: ${stderr.trim()}`);
  return (JSON.parse(stdout) as unknown[]).map((o) => JSON.stringify(o));
}
