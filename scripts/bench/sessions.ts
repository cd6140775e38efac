#!/usr/bin/env bun
/**
 * The gateway's memory per session: `agate serve` as a process of its own
 * (embedded default policy, strict audit log) in front of a throwaway
 * PostgreSQL, then SESSIONS logged-in sessions at once, first idle, then
 * active (each sends small queries, one at a time, for SECONDS).
 *
 * RSS (VmRSS) is read from /proc: the baseline with one session that has
 * run a query (policy, parser and catalog warm), then with every session
 * open and idle (after a collection and a second's rest), and its peak
 * while they are active (sampled every 100 ms, and VmHWM). Per-session
 * figures are (RSS − baseline) / SESSIONS.
 *
 *   bun scripts/bench/sessions.ts [options]
 *     --sessions N   sessions open at once (default 500)
 *     --seconds N    how long the sessions are active (default 15)
 *     --json         the figures as JSON on stdout
 *     -h, --help     this text
 *
 * Needs bun and the PostgreSQL server binaries (test/helpers/postgres.ts);
 * PostgreSQL is started with max_connections = SESSIONS + 50 (each session
 * holds one target backend, and the gateway has a few of its own).
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { startPostgres } from "../../test/helpers/postgres.ts";
import { Query, rawSession, type RawSession } from "../../test/helpers/wire.ts";
import { handleSignals, onCleanup, printHelp, procMemory, runMain, say, startAgate } from "./stack.ts";

const { values: opt } = parseArgs({
  args: process.argv.slice(2),
  options: {
    sessions: { type: "string", default: "500" },
    seconds: { type: "string", default: "15" },
    json: { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (opt.help) printHelp(import.meta.path);
const SESSIONS = Number(opt.sessions);
const SECONDS = Number(opt.seconds);

/** Small queries of the kind an application sends, in turn. */
const QUERIES = ["select 1", "select now(), current_user", "select g, md5(g::text) from generate_series(1, 20) g", "select count(*) from pg_class"];

const mb = (bytes: number) => Math.round((bytes / 2 ** 20) * 10) / 10;

async function main(): Promise<number> {
  handleSignals();
  const base = mkdtempSync(join(tmpdir(), "agate-sessions-"));
  onCleanup("temp dir", async () => rmSync(base, { recursive: true, force: true }));
  const pg = await startPostgres({ settings: { max_connections: String(SESSIONS + 50), shared_buffers: "32MB" } });
  onCleanup("postgres", () => pg.stop());
  const agate = await startAgate({ base, name: "agate", target: { port: pg.port, database: "app", user: "app_scram", password: pg.password }, connections: ["app"], logLevel: "warn" });
  const port = agate.ports.app!;
  const login = { user: agate.user, password: agate.password };
  const rss = () => procMemory(agate.pid).rss;

  const warm = await rawSession(port, login);
  for (const q of QUERIES) {
    warm.send(Query(q));
    await warm.untilReady();
  }
  await Bun.sleep(1000);
  const baseline = rss();
  say(`sessions: baseline ${mb(baseline)} MB with one warm session`);

  const sessions: RawSession[] = [];
  for (let i = 0; i < SESSIONS; i += 25) {
    // In groups of 25, so the gateway's logins (one target connection each) do not all start at once.
    sessions.push(...(await Promise.all(Array.from({ length: Math.min(25, SESSIONS - i) }, () => rawSession(port, login)))));
  }
  await Bun.sleep(1000);
  const idle = rss();
  say(`sessions: ${SESSIONS} idle sessions: ${mb(idle)} MB`);

  let peak = idle;
  const sampler = setInterval(() => (peak = Math.max(peak, rss() || 0)), 100);
  const deadline = performance.now() + SECONDS * 1000;
  let queries = 0;
  await Promise.all(
    sessions.map(async (s, i) => {
      for (let k = i; performance.now() < deadline; k++) {
        s.send(Query(QUERIES[k % QUERIES.length]!));
        const answer = await s.untilReady();
        if (!answer.some((m) => m.type === "C")) throw new Error(`a query failed: ${answer.map((m) => m.body.toString()).join(" | ")}`);
        queries++;
      }
    }),
  );
  clearInterval(sampler);
  const active = Math.max(peak, procMemory(agate.pid).peak || 0);
  for (const s of [...sessions, warm]) s.close();
  await Bun.sleep(2000);
  const after = rss();
  const figures = {
    sessions: SESSIONS,
    seconds: SECONDS,
    queries,
    baselineMb: mb(baseline),
    idleMb: mb(idle),
    activePeakMb: mb(active),
    afterCloseMb: mb(after),
    perIdleSessionKb: Math.round((idle - baseline) / SESSIONS / 1024),
    perActiveSessionKb: Math.round((active - baseline) / SESSIONS / 1024),
  };
  say(
    `sessions: ${SESSIONS} sessions, baseline ${figures.baselineMb} MB; idle ${figures.idleMb} MB (${figures.perIdleSessionKb} KiB a session); ` +
      `active peak ${figures.activePeakMb} MB (${figures.perActiveSessionKb} KiB a session, ${queries} queries in ${SECONDS} s); ${figures.afterCloseMb} MB after they closed`,
  );
  if (opt.json) console.log(JSON.stringify(figures, null, 2));
  return 0;
}

await runMain(main);
