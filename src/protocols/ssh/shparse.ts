/**
 * mvdan/sh's bash parser, compiled to WebAssembly (shparse/main.go, GOOS=js),
 * embedded in the executable like the SQL parser: `parseShell(text)` returns
 * the syntax tree as JSON (shparse/main.go: every node has a "Type": File,
 * Stmt, CallExpr, BinaryCmd, Word, Lit, DblQuoted, CmdSubst, …, and Pos/End
 * with its byte offsets; the fields of mvdan/sh's syntax package, zero values
 * omitted), or throws AgateError EXEC_PARSE when the text is not valid bash.
 *
 *   await initShell();          // once, at start-up
 *   parseShell("ls | wc -l");   // synchronous after that
 *
 * One Go instance serves every call (Go's js/wasm runtime keeps running and
 * exposes `agateShParse`); if it ever exits (a Go panic), the next call
 * answers EXEC_NOT_READY and a new instance is started (fail closed).
 */
import "./shparse/wasm_exec.js";
import wasmAsset from "./shparse/shparse.wasm" with { type: "file" };
import { AgateError, asError } from "../../core/errors.ts";

/** On disk when run from source, inside the executable ($bunfs) when compiled. */
const wasmPath: string = wasmAsset;

type GoRuntime = { importObject: Bun.WebAssembly.Imports; run(instance: WebAssembly.Instance): Promise<void>; exited: boolean };
const GoClass = (globalThis as unknown as { Go: new () => GoRuntime }).Go;

let compiled: WebAssembly.Module | undefined;
let loading: Promise<void> | undefined;
let active: { go: GoRuntime; parse: (text: string) => string } | undefined;

/** Load and start the parser. Idempotent; after a failure the next call tries again. */
export function initShell(): Promise<void> {
  loading ??= (async () => {
    compiled ??= await WebAssembly.compile(await Bun.file(wasmPath).bytes());
    const go = new GoClass();
    const instance = await WebAssembly.instantiate(compiled, go.importObject);
    const g = globalThis as unknown as { agateShParse?: (text: string) => string };
    delete g.agateShParse;
    void go.run(instance).finally(() => {
      // A Go instance that exited can parse nothing more: start another.
      if (active?.go === go) {
        active = undefined;
        loading = undefined;
        void initShell().catch(() => {});
      }
    });
    const parse = g.agateShParse;
    if (typeof parse !== "function") throw new Error("the parser did not register agateShParse");
    active = { go, parse };
  })().catch((e: unknown) => {
    loading = undefined;
    throw new AgateError("EXEC_INIT", `could not load the shell parser (mvdan/sh WebAssembly): ${asError(e).message}`, { wasm: wasmPath });
  });
  return loading;
}

/** A node of the typed JSON tree. */
export interface ShNode {
  Type?: string;
  Pos?: { Offset: number };
  End?: { Offset: number };
  [key: string]: unknown;
}

/** The syntax tree of `text` as bash reads it. Throws AgateError EXEC_PARSE (not bash) or EXEC_NOT_READY. */
export function parseShell(text: string): ShNode {
  const p = active;
  if (!p || p.go.exited) throw new AgateError("EXEC_NOT_READY", "the shell parser is not ready (await initShell())");
  let out: string;
  try {
    out = p.parse(text);
  } catch (e) {
    throw new AgateError("EXEC_NOT_READY", `the shell parser failed: ${asError(e).message}`);
  }
  const tree = JSON.parse(out) as ShNode & { error?: string };
  if (typeof tree.error === "string") throw new AgateError("EXEC_PARSE", `the command line is not valid shell: ${tree.error}`);
  return tree;
}
