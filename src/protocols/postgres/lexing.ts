/**
 * How the target will lex the next statement, known without a race.
 *
 * Two settings change how PostgreSQL reads SQL text: `client_encoding`
 * (which bytes make a character, see encoding.ts) and
 * `standard_conforming_strings` (whether a backslash in '…' escapes). The
 * target reports both in ParameterStatus, but only after the statement that
 * changed them has run: PostgreSQL 14 and later send the reports just before
 * ReadyForQuery. A client that pipelines `SET standard_conforming_strings =
 * off` and, in the same write, a statement whose quoting means something else
 * under the new setting would have that statement read under the old one.
 *
 * So a statement that can change either setting is a barrier: nothing after
 * it is parsed until the settings it leaves are known. PgSession waits for
 * the ReadyForQuery that ends it (the reports come before it) or, inside an
 * extended-protocol batch that has not reached its Sync, asks the target
 * with its own SHOW statements (`PROBE`), whose answers the client never
 * sees. Barriers (`isLexingBarrier`):
 *
 * * SET and RESET of anything (RESET ALL, SET NAMES, SET LOCAL included),
 *   DISCARD, DO and CALL;
 * * any function call: set_config() changes settings, and a user-defined
 *   function may call it. Built-in functions other than set_config are not
 *   barriers once the target's catalog says they are built in
 *   (`functionFacts`);
 * * EXECUTE of a prepared statement and FETCH from a cursor that agate did
 *   not see made (they stand for the statement behind them otherwise);
 * * transaction control, once the session ran a barrier since it was last
 *   idle: COMMIT ends SET LOCAL, ROLLBACK undoes SET.
 *
 * Not seen: a trigger function that calls set_config. The default policy
 * refuses CREATE FUNCTION and CREATE TRIGGER, and the command-tag check in
 * PgSession closes a session whose target ran other statements than were
 * decided.
 *
 * With standard_conforming_strings off, a statement with a backslash is
 * refused (without one, both settings lex alike): agate's parser reads '…'
 * as the SQL standard does.
 */
import type { SqlStatement } from "../../core/types.ts";
import { decodeClientText, encodingName } from "./encoding.ts";

/** The settings the probe asks for, by the names ParameterStatus reports. */
export const PROBE = ["client_encoding", "standard_conforming_strings"] as const;

/** Whether the catalog says a function is built in (undefined: not known). */
export type BuiltIn = (st: SqlStatement, fn: string) => boolean | undefined;

export class LexingState {
  encoding = "UTF8";
  scsOff = false;

  /** A reported setting (ParameterStatus or the probe's answer). */
  report(name: string, value: string): void {
    if (name === "client_encoding") this.encoding = encodingName(value);
    else if (name === "standard_conforming_strings") this.scsOff = value.toLowerCase() === "off";
  }

  /** Read a message's SQL bytes as the target will (throws AgateError SQL_ENCODING). */
  readonly decode = (bytes: Uint8Array): string => decodeClientText(bytes, this.encoding);

  /** Why `text` cannot be read as the target reads it now, or undefined. */
  hazard(text: string): string | undefined {
    if (!this.scsOff || !text.includes("\\")) return undefined;
    return "agate reads '…' strings as the SQL standard does, but in this session standard_conforming_strings is off, so a statement with a backslash is refused; use E'…' strings with standard_conforming_strings on (SET standard_conforming_strings = on)";
  }
}

/**
 * Whether running `statements` can change how later text lexes.
 * `behind(st)` is the statement an EXECUTE or FETCH stands for, when agate
 * saw it made; `builtIn` what the catalog knows of a function.
 */
export function isLexingBarrier(statements: readonly SqlStatement[], touched: boolean, behind: (st: SqlStatement) => SqlStatement | undefined, builtIn?: BuiltIn): boolean {
  for (const st of statements) {
    if (st.kind === "set" || st.kind === "do" || st.kind === "call" || st.node === "DiscardStmt") return true;
    if (st.kind === "transaction" && touched) return true;
    for (const fn of st.functions) {
      const name = fn.slice(fn.lastIndexOf(".") + 1);
      if (name === "set_config" || builtIn?.(st, fn) !== true) return true;
    }
    if (st.node === "ExecuteStmt" || st.node === "FetchStmt") {
      const b = behind(st);
      if (b === undefined || isLexingBarrier([b], touched, () => undefined, builtIn)) return true;
    }
  }
  return false;
}
