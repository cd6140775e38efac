/**
 * SQL facts for the policy, from PostgreSQL's own parser (libpg-query,
 * PostgreSQL 18, compiled to WebAssembly): parse, don't pattern-match.
 *
 * @example
 * await initSql();                        // once, at start-up
 * analyzeSql("select 1; drop table x");   // { multi: true, statements: [{kind: "select", …}, {kind: "ddl", tag: "DROP TABLE", writes: ["x"], …}] }
 *
 * The WebAssembly module is imported as a file, so `bun build --compile`
 * embeds it in the executable and nothing is read from node_modules at run
 * time. libpg-query's own loader (wasm/index.js) locates the .wasm next to
 * itself and cannot be used in a single binary; this file drives the same
 * emscripten exports (`_wasm_parse_query_raw` and friends) directly. The
 * factory ignores a `wasmBinary` option (this build never reads it), so the
 * bytes are handed over through emscripten's `instantiateWasm` hook.
 */
import { AgateError, asError } from "../../core/errors.ts";
import type { SqlFacts, SqlStatement } from "../../core/types.ts";
// @ts-expect-error -- the emscripten factory ships no type declarations; PgQueryFactory below is its shape.
import createPgQueryModule from "libpg-query/wasm/libpg-query.js";
// @ts-ignore -- TypeScript < 7.1 cannot see bun-types' `with { type: "file" }` declaration (a path string).
import wasmAsset from "libpg-query/wasm/libpg-query.wasm" with { type: "file" };
import { literalShape, singleStatementText } from "./sql-shape.ts";
import { describeStatement } from "./sql-walk.ts";
import { GenerationalCache } from "../../core/generational-cache.ts";

/** The emscripten exports used here (see node_modules/libpg-query/wasm/index.js). */
interface PgQueryModule {
  HEAPU8: Uint8Array;
  _malloc(bytes: number): number;
  _free(ptr: number): void;
  /** Returns a PgQueryParseResult*: { char* parse_tree; char* stderr_buffer; PgQueryError* error }. */
  _wasm_parse_query_raw(query: number): number;
  _wasm_free_parse_result(result: number): void;
  /** Returns a char* of JSON: { tokens: [{ start, end, tokenName, … }] } (byte offsets), or an error text. */
  _wasm_scan(query: number): number;
  _wasm_free_string(s: number): void;
  getValue(ptr: number, type: "i32"): number;
  UTF8ToString(ptr: number): string;
}

/** Where the .wasm is: on disk when run from source, inside the executable ($bunfs) when compiled. */
const wasmPath: string = wasmAsset;

type PgQueryFactory = (moduleArg: {
  instantiateWasm(imports: Bun.WebAssembly.Imports, receive: (instance: WebAssembly.Instance) => void): object;
  print(line: string): void;
  printErr(line: string): void;
}) => Promise<PgQueryModule>;

/** The cache holds at most this many texts… */
export const SQL_CACHE_MAX_ENTRIES = 10_000;
/** …texts longer than this (UTF-16 code units) are never cached… */
export const SQL_CACHE_MAX_TEXT_CHARS = 8 * 1024;
/** …and at most this many code units of text, keys together (≈ 8 MiB; the facts hold about as much again). */
export const SQL_CACHE_MAX_TOTAL_CHARS = 4 * 1024 * 1024;

/** The compiled parser; instances are cheap to make from it (≈1–2 ms). */
let compiled: WebAssembly.Module | undefined;
/** The instance analyzeSql uses. */
let active: PgQueryModule | undefined;
/** A ready instance that replaces `active` at once if `active` faults. */
let spare: PgQueryModule | undefined;
let loading: Promise<void> | undefined;
let refilling = false;

/**
 * Load, compile and instantiate the parser. Idempotent: every call after the
 * first returns the same promise; after a failure the next call tries again.
 *
 * @throws AgateError SQL_INIT when the WebAssembly module cannot be loaded.
 */
export function initSql(): Promise<void> {
  loading ??= (async () => {
    compiled = await WebAssembly.compile(await Bun.file(wasmPath).bytes());
    [active, spare] = await Promise.all([instantiate(compiled), instantiate(compiled)]);
  })().catch((e: unknown) => {
    loading = undefined;
    throw new AgateError("SQL_INIT", `Could not load the SQL parser (libpg-query WebAssembly): ${asError(e).message}.`, {
      wasm: wasmPath,
    });
  });
  return loading;
}

async function instantiate(wasm: WebAssembly.Module): Promise<PgQueryModule> {
  // emscripten never settles its promise if instantiateWasm fails, so a
  // failure settles this one instead.
  let fail: (e: unknown) => void = () => {};
  const failed = new Promise<never>((_, reject) => {
    fail = reject;
  });
  const ready = (createPgQueryModule as PgQueryFactory)({
    instantiateWasm(imports, receive) {
      WebAssembly.instantiate(wasm, imports).then(receive, fail);
      return {}; // emscripten's convention for "instantiating asynchronously"
    },
    // The parser reports through its result struct; anything printed is noise.
    print() {},
    printErr() {},
  });
  return Promise.race([ready, failed]);
}

/**
 * Stop using an instance that threw from inside WebAssembly (a native stack
 * overflow on a very deep expression, or a trap). Unwinding through C frames
 * skips their cleanup: the parser's memory context, its error-handler stack
 * and emscripten's shadow stack pointer may all be left behind, so the
 * instance is never trusted again. The spare takes over synchronously and a
 * new spare is made in the background; until then analyzeSql answers
 * SQL_NOT_READY (fail closed).
 */
function retire(m: PgQueryModule): void {
  if (active !== m) return;
  active = spare;
  spare = undefined;
  void refill();
}

async function refill(): Promise<void> {
  if (refilling || compiled === undefined) return;
  refilling = true;
  try {
    while (active === undefined || spare === undefined) {
      const m = await instantiate(compiled);
      if (active === undefined) active = m;
      else spare = m;
    }
  } catch {
    // Leave the gap: analyzeSql keeps answering SQL_NOT_READY and retries.
  } finally {
    refilling = false;
  }
}

/** A cached answer: the facts, or the SQL_PARSE error the same text gets again. */
type Cached = SqlFacts | AgateError;
const cache = new GenerationalCache<Cached>(SQL_CACHE_MAX_ENTRIES, SQL_CACHE_MAX_TOTAL_CHARS);
/** Facts of single-statement strings by literal shape (sql-shape.ts): inlined values share one parse. */
const shapes = new GenerationalCache<SqlFacts>(SQL_CACHE_MAX_ENTRIES, SQL_CACHE_MAX_TOTAL_CHARS);

/**
 * Parse a query string (one or more statements) and describe each statement.
 *
 * Requires `await initSql()` first. Synchronous after that. Results are
 * cached by text (bounded, approximately LRU) and frozen all the way down:
 * copy before changing anything. Errors SQL_PARSE and SQL_TOO_DEEP are
 * cached too (the same instance is thrown again).
 *
 * @throws AgateError SQL_NOT_READY before initSql() has finished (or, briefly,
 *   while a faulted parser instance is being replaced).
 * @throws AgateError SQL_PARSE when PostgreSQL's grammar rejects the text;
 *   details.position is the 0-based character offset PostgreSQL reports.
 * @throws AgateError SQL_TOO_DEEP when the statement is nested too deeply for
 *   the parser's native stack or for the tree walk.
 * @throws AgateError SQL_PARSER_FAULT when the parser trapped for another reason.
 */
export function analyzeSql(text: string): SqlFacts {
  const hit = cache.get(text);
  if (hit !== undefined) {
    if (hit instanceof AgateError) throw hit;
    return hit;
  }
  if (active === undefined) {
    if (compiled === undefined) {
      throw new AgateError("SQL_NOT_READY", "The SQL parser is not loaded: await initSql() at start-up before analyzeSql().");
    }
    void refill();
    throw new AgateError("SQL_NOT_READY", "The SQL parser is restarting after a fault; retry the statement.");
  }
  const cacheable = text.length <= SQL_CACHE_MAX_TEXT_CHARS;
  const shape = cacheable ? literalShape(text) : undefined;
  const same = shape === undefined ? undefined : shapes.get(shape);
  if (same !== undefined) {
    // Not added to the text cache: strings with inlined values rarely repeat and would evict those that do.
    return freezeFacts({ statements: [{ ...same.statements[0]!, text: singleStatementText(text) }], multi: false });
  }
  let facts: SqlFacts;
  try {
    facts = freezeFacts(analyze(active, text));
  } catch (e) {
    // The same text gets the same answer: remember refusals that depend on the text alone.
    if (cacheable && e instanceof AgateError && CACHED_ERRORS.has(e.code)) cache.set(text, e);
    throw e;
  }
  if (cacheable) cache.set(text, facts);
  if (shape !== undefined && facts.statements.length === 1 && !literalFacts(facts.statements[0]!)) shapes.set(shape, facts);
  return facts;
}

const CACHED_ERRORS = new Set(["SQL_PARSE", "SQL_TOO_DEEP"]);

/**
 * Facts read from a literal, which another text of the same shape would not
 * share: the setting named in set_config('…')/current_setting('…') and COPY's
 * FORMAT '…'. Such statements are never cached by shape.
 */
function literalFacts(st: SqlStatement): boolean {
  return st.node === "CopyStmt" || st.settings.some((s) => s.call);
}

/** Empty the result cache (tests and benchmarks measure the uncached path with it). */
export function clearSqlCache(): void {
  cache.clear();
  shapes.clear();
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

interface RawStmt {
  stmt: Record<string, Record<string, unknown>>;
  /** Byte offset into the UTF-8 query; absent means 0. */
  stmt_location?: number;
  /** Length in bytes; absent or 0 means "to the end of the string". */
  stmt_len?: number;
}

function analyze(m: PgQueryModule, text: string): SqlFacts {
  if (text.includes("\0")) {
    // PostgreSQL reads a query as a C string; the parser would stop at the
    // zero and hide whatever follows it from the policy.
    throw new AgateError("SQL_PARSE", "The query text contains a zero byte; remove it.", {
      position: text.indexOf("\0"),
    });
  }
  const bytes = encoder.encode(text);
  const stmts = parse(m, bytes);
  const ascii = bytes.length === text.length; // byte offsets are string offsets
  const statements: SqlStatement[] = [];
  for (const raw of stmts) {
    const type = Object.keys(raw.stmt)[0];
    const node = type === undefined ? undefined : raw.stmt[type];
    if (type === undefined || node === undefined) {
      // Never skip a statement the policy would then not see.
      throw new AgateError("SQL_PARSER_FAULT", "The SQL parser returned a statement without a node.", {});
    }
    let facts;
    try {
      facts = describeStatement(type, node);
    } catch (e) {
      if (!(e instanceof RangeError)) throw e;
      throw new AgateError("SQL_TOO_DEEP", "The statement is nested too deeply to analyse; simplify it.", {
        node: type,
      });
    }
    const begin = raw.stmt_location ?? 0;
    const end = raw.stmt_len ? begin + raw.stmt_len : bytes.length;
    const slice = ascii ? text.slice(begin, end) : decoder.decode(bytes.subarray(begin, end));
    statements.push({ ...facts, text: slice.trim() });
  }
  return { statements, multi: statements.length > 1 };
}

/** One token of PostgreSQL's own scanner (scan.l), with `standard_conforming_strings` on; offsets in bytes. */
export interface SqlToken {
  start: number;
  end: number;
  /** "SCONST" for a '…', E'…' or $$…$$ string; "IDENT", "SQL_COMMENT", "UNKNOWN" (keywords, B'…', U&'…'), … */
  tokenName: string;
}

/**
 * Split UTF-8 SQL into tokens with PostgreSQL's scanner. Requires initSql().
 *
 * @throws AgateError SQL_PARSE when the scanner rejects the text (an unterminated string or comment).
 */
export function scanSql(bytes: Uint8Array): SqlToken[] {
  const m = active;
  if (m === undefined) throw new AgateError("SQL_NOT_READY", "The SQL parser is not loaded or is restarting; retry the statement.");
  const json = callModule(m, bytes, "scanner", (q) => m._wasm_scan(q), (r) => m.UTF8ToString(r), (r) => m._wasm_free_string(r));
  if (!json.startsWith("{")) throw new AgateError("SQL_PARSE", json || "syntax error", {});
  return (JSON.parse(escapeControls(json)) as { tokens?: SqlToken[] }).tokens ?? [];
}

/**
 * libpg-query's scanner writes each token's text into its JSON escaping `"`,
 * `\\`, \n, \t and a few more, but other control characters (U+0001 to
 * U+001F, legal in a string literal or an identifier) raw, which JSON
 * forbids: COPY (SELECT E'\x01'…) could not be split, nor text lexed
 * under standard_conforming_strings off. Its JSON has no whitespace between tokens, so every control
 * character in it is inside a string: escape them all.
 */
function escapeControls(json: string): string {
  return /[\u0000-\u001f]/.test(json) ? json.replace(/[\u0000-\u001f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`) : json;
}

/**
 * Copy `bytes` into the module as a NUL-terminated string, `call` an export
 * on it, `read` its result and `free` it. An AgateError from `read` passes
 * through; anything thrown from inside WebAssembly retires the instance (see
 * retire: nothing more is called on it, frees included) and is answered as
 * SQL_TOO_DEEP (a native stack overflow) or SQL_PARSER_FAULT.
 */
function callModule<T>(m: PgQueryModule, bytes: Uint8Array, what: string, call: (query: number) => number, read: (result: number) => T, free: (result: number) => void): T {
  let query = 0;
  let result = 0;
  try {
    query = m._malloc(bytes.length + 1);
    if (!query) throw new AgateError("SQL_PARSE", "The SQL parser is out of memory; the query is too large.", {});
    const heap = m.HEAPU8; // read after _malloc: memory growth replaces the view
    heap.set(bytes, query);
    heap[query + bytes.length] = 0;
    result = call(query);
    if (!result) throw new AgateError("SQL_PARSE", "The SQL parser is out of memory; the query is too large.", {});
    return read(result);
  } catch (e) {
    if (e instanceof AgateError) throw e;
    query = result = 0;
    retire(m);
    if (e instanceof RangeError) {
      throw new AgateError("SQL_TOO_DEEP", `The statement is nested too deeply for the SQL ${what}; simplify it.`, {});
    }
    throw new AgateError("SQL_PARSER_FAULT", `The SQL ${what} failed: ${asError(e).message}.`, {});
  } finally {
    if (query) m._free(query);
    if (result) free(result);
  }
}

/** Run the parser on NUL-terminated UTF-8 and return the `stmts` of its JSON tree. */
function parse(m: PgQueryModule, bytes: Uint8Array): RawStmt[] {
  const json = callModule(
    m,
    bytes,
    "parser",
    (q) => m._wasm_parse_query_raw(q),
    (result) => {
      const error = m.getValue(result + 8, "i32");
      if (error) {
        // PgQueryError: { char* message; char* funcname; char* filename; int lineno; int cursorpos }
        const message = m.UTF8ToString(m.getValue(error, "i32")) || "syntax error";
        const cursor = m.getValue(error + 16, "i32"); // 1-based characters, 0 when unknown
        throw new AgateError("SQL_PARSE", message, { position: cursor > 0 ? cursor - 1 : 0 });
      }
      return m.UTF8ToString(m.getValue(result, "i32"));
    },
    (r) => m._wasm_free_parse_result(r),
  );
  let tree: { stmts?: RawStmt[] };
  try {
    tree = JSON.parse(json) as { stmts?: RawStmt[] };
  } catch (e) {
    if (!(e instanceof RangeError)) throw e;
    throw new AgateError("SQL_TOO_DEEP", "The statement is nested too deeply to analyse; simplify it.", {});
  }
  return tree.stmts ?? [];
}

/**
 * Freeze the answer's objects: it is shared through the cache. Its arrays
 * (statements, reads, writes, functions) are left unfrozen and MUST be
 * treated as read-only: Bun's JSON.stringify takes a slow path for frozen
 * arrays (2.6 µs instead of 0.6 µs for a typical policy input), and every
 * statement's facts are stringified into the policy input.
 */
function freezeFacts(facts: SqlFacts): SqlFacts {
  for (const st of facts.statements) {
    if (st.copy) Object.freeze(st.copy);
    Object.freeze(st);
  }
  return Object.freeze(facts);
}
