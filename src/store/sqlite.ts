/**
 * Opening a SQLite file that agate keeps state in (accounts, approvals):
 * created with mode 0600 (it names people and holds key hashes), WAL so a
 * CLI process and the gateway can use it at once, a busy timeout instead of
 * SQLITE_BUSY errors, and the store's schema applied.
 */
import { Database } from "bun:sqlite";
import { chmodSync, existsSync } from "node:fs";
import { AgateError } from "../core/errors.ts";

/** PRAGMA data_version: changes when another connection (another process) has changed the file. */
export function dataVersion(db: Database): number {
  return (db.query("PRAGMA data_version").get() as { data_version: number }).data_version;
}

/** Open (creating) the store at `path` with `schema`; `what` names it in errors ("accounts store"), `code` is the error code. */
export function openSqlite(path: string, schema: string, what: string, code: string): Database {
  const fresh = !existsSync(path);
  let db: Database;
  try {
    db = new Database(path, { create: true, strict: true });
    db.exec("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000;");
    db.exec(schema);
  } catch (e) {
    throw new AgateError(code, `Cannot open the ${what} ${path}: ${(e as Error).message}`, { path });
  }
  if (fresh) chmodSync(path, 0o600);
  return db;
}
