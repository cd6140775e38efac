/**
 * The facts of an SSH exec command line, for the policy (`input.command.exec`;
 * docs/ARCHITECTURE.md, "Policy contract"): every simple command the line can
 * run, wherever the parser finds it — in pipelines and &&/|| lists, in
 * subshells, blocks, if/while/for/case bodies and functions, in command and
 * process substitutions, and inside the payload of `sh -c`/`bash -c`,
 * `eval`, a here-document or here-string fed to a shell, and the command
 * that a wrapper runs (`sudo`, `env`, `timeout`, `xargs`, `find -exec`, …),
 * parsed again, recursively.
 *
 * Words are given as their value when it is known before the line runs
 * (quotes removed, escapes and $'…' decoded) and otherwise as their source
 * text, with the command marked `dynamic`. What agate cannot see into is
 * listed in `opaque` (a program name computed at run time, a `sh -c` payload
 * with expansions, a shell reading its script from stdin): the policy
 * refuses it by default.
 */
import { AgateError } from "../../core/errors.ts";
import { parseShell, type ShNode } from "./shparse.ts";

export interface ExecRedirect {
  /** As written: ">", ">>", "<", "<<", "<<<", ">&", "&>", … */
  op: string;
  /** The file descriptor named before the operator ("2" in 2>), or null. */
  fd: string | null;
  /** The target word (a file, a descriptor, a here-document's delimiter). */
  target: string;
}

export interface ExecCommand {
  /** The program as written (its value), "" for a line of assignments only. */
  program: string;
  /** Its last path component: "/bin/rm" → "rm". */
  name: string;
  args: string[];
  /** Assignments before the program: "NAME=value". */
  assigns: string[];
  redirects: ExecRedirect[];
  /** Some word's value is only known when the line runs ($VAR, $(…), arithmetic), or arguments are added then (xargs, find -exec's {}). */
  dynamic: boolean;
  /** Some unquoted word holds a glob (* ? […]) or a brace expansion ({a,b}, {1..3}). */
  glob: boolean;
  /** How it is reached from the top of the line: [] at the top; "$()", "<()", "sh -c", "eval", "sudo", "find -exec", … */
  via: string[];
  /** Index of its pipeline (in `pipelines`), and its stage there (0: the first), when it is in one. */
  pipeline?: number;
  stage?: number;
  /** Runs in the background (&). */
  background?: boolean;
}

export interface ExecFacts {
  commands: ExecCommand[];
  /** Each pipeline's stages: the names of the simple commands of each stage. */
  pipelines: string[][];
  /** Every list and pipeline operator used: ";", "&&", "||", "|", "|&", "&". */
  operators: string[];
  subshells: number;
  /** Command substitutions ($(…), `…`) and process substitutions (<(…), >(…)). */
  substitutions: number;
  heredocs: number;
  /** Functions the line defines. */
  functions: string[];
  /** What agate cannot see into, one sentence each; empty when it saw everything. */
  opaque: string[];
}

/** Nested payloads deeper than this are not followed (and are opaque). */
const MAX_DEPTH = 8;
/** A line with more simple commands than this is refused: its facts would not fit a record. */
const MAX_COMMANDS = 2000;

const SHELLS = new Set(["sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox", "rbash"]);

/** Facts of `text`, or AgateError EXEC_PARSE when it is not valid shell. */
export function execFacts(text: string): ExecFacts {
  if (text.includes("\0")) throw new AgateError("EXEC_PARSE", "the command line holds a NUL byte, which no shell reads");
  const facts: ExecFacts = { commands: [], pipelines: [], operators: [], subshells: 0, substitutions: 0, heredocs: 0, functions: [], opaque: [] };
  new Walker(facts).line(text, [], 0, undefined);
  facts.operators = [...new Set(facts.operators)];
  facts.opaque = [...new Set(facts.opaque)];
  return facts;
}

interface Place {
  pipeline?: number;
  stage?: number;
}

/** A word's value: known (`value`) or computed at run time (`source`). */
interface WordValue {
  text: string;
  dynamic: boolean;
  glob: boolean;
  /** Substitutions inside the word, walked as nested lines. */
  nested: { kind: "$()" | "<()" | ">()"; stmts: ShNode[] }[];
}

class Walker {
  private src: Buffer = Buffer.alloc(0);
  constructor(private readonly facts: ExecFacts) {}

  /** Parse `text` and walk it; `via` says how it was reached. */
  line(text: string, via: string[], depth: number, place: Place | undefined): void {
    if (depth > MAX_DEPTH) {
      this.facts.opaque.push(`commands nested more than ${MAX_DEPTH} levels deep (${via.join(" → ")}) are not followed`);
      return;
    }
    const tree = parseShell(text);
    const saved = this.src;
    this.src = Buffer.from(text, "utf8");
    try {
      this.stmts(asList(tree.Stmts), via, depth, place);
    } finally {
      this.src = saved;
    }
  }

  private stmts(list: ShNode[], via: string[], depth: number, place: Place | undefined): void {
    // Statements one after another (";" or a newline); "&" is recorded by the statement it ends.
    if (list.slice(0, -1).some((s) => !s.Background)) this.facts.operators.push(";");
    for (const s of list) this.stmt(s, via, depth, place);
  }

  private stmt(s: ShNode, via: string[], depth: number, place: Place | undefined): void {
    if (s.Background) this.facts.operators.push("&");
    const redirs = asList(s.Redirs);
    const cmd = s.Cmd as ShNode | undefined;
    if (!cmd) {
      // Redirections alone (`> file`): their words may still hold substitutions.
      this.redirects(redirs, via, depth);
      return;
    }
    switch (cmd.Type) {
      case "CallExpr":
        this.call(cmd, redirs, via, depth, place, Boolean(s.Background));
        return;
      case "BinaryCmd": {
        this.redirects(redirs, via, depth);
        const op = String(cmd.Op);
        this.facts.operators.push(op);
        if (op === "|" || op === "|&") {
          const stages: ShNode[] = [];
          flattenPipe(cmd, stages);
          const index = this.facts.pipelines.length;
          const names: string[][] = stages.map(() => []);
          this.facts.pipelines.push([]);
          stages.forEach((st, i) => {
            const before = this.facts.commands.length;
            this.stmt(st, via, depth, { pipeline: index, stage: i });
            for (const c of this.facts.commands.slice(before)) if (c.pipeline === index && c.stage === i) names[i]!.push(c.name);
          });
          this.facts.pipelines[index] = names.map((n) => n.join(" "));
          return;
        }
        this.stmt(cmd.X as ShNode, via, depth, place);
        this.stmt(cmd.Y as ShNode, via, depth, place);
        return;
      }
      case "Subshell":
        this.facts.subshells++;
        this.redirects(redirs, via, depth);
        this.stmts(asList(cmd.Stmts), [...via, "( )"], depth, place);
        return;
      case "FuncDecl": {
        const name = (cmd.Name as ShNode | undefined)?.Value;
        if (typeof name === "string") this.facts.functions.push(name);
        this.redirects(redirs, via, depth);
        this.generic(cmd.Body, [...via, `function ${name ?? ""}`.trim()], depth, place);
        return;
      }
      default:
        // Blocks, if/while/for/case, [[ ]], (( )), declare/let/time/coproc: every statement and word inside.
        this.redirects(redirs, via, depth);
        this.generic(cmd, via, depth, place);
    }
  }

  /** Walk any node: statements are walked as statements, words for their substitutions. */
  private generic(node: unknown, via: string[], depth: number, place: Place | undefined): void {
    if (Array.isArray(node)) {
      for (const n of node) this.generic(n, via, depth, place);
      return;
    }
    if (node === null || typeof node !== "object") return;
    const n = node as ShNode;
    if (n.Type === "Stmt") return this.stmt(n, via, depth, place);
    if (n.Type === "Word") {
      this.walkNested(this.word(n).nested, via, depth);
      return;
    }
    if (n.Type === "CmdSubst" || n.Type === "ProcSubst") {
      this.walkNested([{ kind: n.Type === "CmdSubst" ? "$()" : (String(n.Op) as "<()"), stmts: asList(n.Stmts) }], via, depth);
      return;
    }
    if (n.Type === "DeclClause") {
      // declare/local/export/readonly/typeset: a command with assignments (export PATH=… changes what later names run).
      const variant = String((n.Variant as ShNode | undefined)?.Value ?? "declare");
      const args = asList(n.Args).map((a) => this.assign(a, via, depth));
      this.push({ program: variant, name: variant, args, assigns: [], redirects: [], dynamic: false, glob: false, via, ...place });
      return;
    }
    for (const [k, v] of Object.entries(n)) {
      if (k === "Pos" || k === "End" || k === "Type") continue;
      if (v && typeof v === "object") this.generic(v, via, depth, place);
    }
  }

  private call(cmd: ShNode, redirs: ShNode[], via: string[], depth: number, place: Place | undefined, background: boolean): void {
    const assigns = asList(cmd.Assigns).map((a) => this.assign(a, via, depth));
    const words = asList(cmd.Args).map((w) => this.word(w));
    const redirects = this.redirects(redirs, via, depth);
    let dynamic = words.some((w) => w.dynamic) || redirects.some((r) => r.dynamic);
    const glob = words.some((w) => w.glob);
    for (const w of words) this.walkNested(w.nested, via, depth);
    const program = words[0]?.text ?? "";
    const args = words.slice(1).map((w) => w.text);
    if (words[0]?.dynamic) this.facts.opaque.push(`the program name ${JSON.stringify(program)} is only known when the line runs`);
    if (assigns.some((a) => a.includes("$"))) dynamic = true;
    const c: ExecCommand = { program, name: basename(program), args, assigns, redirects: redirects.map((r) => r.redirect), dynamic, glob, via, ...place, ...(background ? { background } : {}) };
    this.push(c);
    if (words.length > 0) this.inner(c, words.slice(1), redirs, via, depth, place);
  }

  private push(c: ExecCommand): void {
    if (this.facts.commands.length >= MAX_COMMANDS) throw new AgateError("EXEC_TOO_COMPLEX", `the command line runs more than ${MAX_COMMANDS} simple commands`);
    this.facts.commands.push(c);
  }

  /** What a command runs in turn: a shell's -c payload or stdin script, eval's arguments, a wrapper's command. */
  private inner(c: ExecCommand, args: WordValue[], redirs: ShNode[], via: string[], depth: number, place: Place | undefined): void {
    const name = c.name;
    const nest = (label: string) => [...via, label];
    if (SHELLS.has(name)) {
      let rest = args;
      if (name === "busybox") {
        if (!rest[0] || !SHELLS.has(basename(rest[0].text))) return this.wrapped(c, rest, via, depth, place, "busybox");
        rest = rest.slice(1);
      }
      const { command, operands } = shellOptions(rest);
      const label = `${name} -c`;
      if (command) {
        if (command.dynamic) this.facts.opaque.push(`the script of ${label} is only known when the line runs`);
        else this.line(command.text, nest(label), depth + 1, place);
        return;
      }
      if (operands[0]?.dynamic) this.facts.opaque.push(`the script ${name} runs is only known when the line runs`);
      if (operands.length > 0) return; // runs a script file: what the file holds is the target's
      // No -c and no script file: the shell reads its script from stdin.
      const fed = stdinPayload(redirs, this);
      if (fed?.text !== undefined) {
        this.line(fed.text, nest(`${name} <<`), depth + 1, place);
      } else {
        const from = fed ? "a redirection" : place?.stage !== undefined && place.stage > 0 ? "a pipe" : "the client's input";
        this.facts.opaque.push(`${name} reads its script from ${from}, which agate cannot see before it runs`);
      }
      return;
    }
    if ((name === "source" || name === ".") && args[0]?.dynamic) {
      this.facts.opaque.push(`the script ${name} reads is only known when the line runs`);
      return;
    }
    if (name === "eval") {
      if (args.some((a) => a.dynamic)) this.facts.opaque.push("the script of eval is only known when the line runs");
      else if (args.length) this.line(args.map((a) => a.text).join(" "), nest("eval"), depth + 1, place);
      return;
    }
    if (name === "find") {
      for (let i = 0; i < args.length; i++) {
        const a = args[i]!.text;
        if (a !== "-exec" && a !== "-execdir" && a !== "-ok" && a !== "-okdir") continue;
        let j = i + 1;
        while (j < args.length && args[j]!.text !== ";" && args[j]!.text !== "+") j++;
        // {} is each path find finds: known only when it runs.
        const inner = args.slice(i + 1, j);
        this.run(inner, nest(`find ${a}`), depth, place, c, inner.some((w) => w.text.includes("{}")));
        i = j;
      }
      return;
    }
    const w = WRAPPERS[name];
    if (w) this.wrapped(c, args, via, depth, place, name);
  }

  /** A wrapper (sudo, env, timeout, xargs, …): skip its options and run what follows. */
  private wrapped(c: ExecCommand, args: WordValue[], via: string[], depth: number, place: Place | undefined, name: string): void {
    const w = WRAPPERS[name]!;
    let i = 0;
    let positionals = w.positionals;
    while (i < args.length) {
      const a = args[i]!.text;
      if (a === "--") {
        i++;
        break;
      }
      if (w.assignments && /^[A-Za-z_][A-Za-z0-9_]*=/.test(a)) {
        i++;
        continue;
      }
      if (a.startsWith("-") && a.length > 1) {
        const opt = a.includes("=") ? a.slice(0, a.indexOf("=")) : a;
        if (w.script?.includes(opt)) {
          // env -S STRING, su -c STRING, flock -c STRING, watch's whole command: a shell line of its own.
          const payload = a.includes("=") ? { text: a.slice(a.indexOf("=") + 1), dynamic: args[i]!.dynamic } : args[i + 1];
          if (!payload) return;
          if (payload.dynamic) this.facts.opaque.push(`the script of ${name} ${opt} is only known when the line runs`);
          else this.line(payload.text, [...via, `${name} ${opt}`], depth + 1, place);
          return;
        }
        i += !a.includes("=") && w.values.includes(opt) ? 2 : 1;
        continue;
      }
      if (positionals > 0) {
        positionals--;
        i++;
        continue;
      }
      break;
    }
    const rest = args.slice(i);
    if (w.joined) {
      if (rest.some((r) => r.dynamic)) this.facts.opaque.push(`the command ${name} runs is only known when the line runs`);
      else if (rest.length) this.line(rest.map((r) => r.text).join(" "), [...via, name], depth + 1, place);
      return;
    }
    // xargs appends what it reads from its input to the command's arguments.
    this.run(rest, [...via, name], depth, place, c, name === "xargs");
  }

  /** A command given as words (a wrapper's, find -exec's): one more simple command, and what it runs. */
  private run(words: WordValue[], via: string[], depth: number, place: Place | undefined, outer: ExecCommand, addedAtRunTime = false): void {
    if (words.length === 0) return;
    if (via.length > MAX_DEPTH * 2) {
      this.facts.opaque.push(`commands nested more than ${MAX_DEPTH * 2} wrappers deep are not followed`);
      return;
    }
    const program = words[0]!.text;
    if (words[0]!.dynamic) this.facts.opaque.push(`the program name ${JSON.stringify(program)} is only known when the line runs`);
    const c: ExecCommand = { program, name: basename(program), args: words.slice(1).map((w) => w.text), assigns: [], redirects: outer.redirects, dynamic: addedAtRunTime || words.some((w) => w.dynamic), glob: words.some((w) => w.glob), via, ...place };
    this.push(c);
    this.inner(c, words.slice(1), [], via, depth, place);
  }

  private walkNested(nested: WordValue["nested"], via: string[], depth: number): void {
    for (const n of nested) {
      this.facts.substitutions++;
      // A substitution runs in its own process, outside the pipeline it appears in.
      this.stmts(n.stmts, [...via, n.kind], depth, undefined);
    }
  }

  private assign(a: ShNode, via: string[], depth: number): string {
    const name = String((a.Name as ShNode | undefined)?.Value ?? "");
    let value = "";
    if (a.Value) {
      const w = this.word(a.Value as ShNode);
      this.walkNested(w.nested, via, depth);
      value = w.text;
    } else if (a.Array) {
      this.generic(a.Array, via, depth, undefined);
      value = this.source(a.Array as ShNode);
    }
    return a.Naked ? name : `${name}${a.Append ? "+=" : "="}${value}`;
  }

  private redirects(redirs: ShNode[], via: string[], depth: number): { redirect: ExecRedirect; dynamic: boolean }[] {
    return redirs.map((r) => {
      const op = String(r.Op);
      if (op === "<<" || op === "<<-") this.facts.heredocs++;
      const w = r.Word ? this.word(r.Word as ShNode) : undefined;
      if (w) this.walkNested(w.nested, via, depth);
      if (r.Hdoc) this.walkNested(this.word(r.Hdoc as ShNode).nested, via, depth);
      const fd = (r.N as ShNode | null | undefined)?.Value;
      return { redirect: { op, fd: typeof fd === "string" ? fd : null, target: w?.text ?? "" }, dynamic: w?.dynamic ?? false };
    });
  }

  /** A Word's value, or its source text when it holds expansions. */
  word(w: ShNode): WordValue {
    const out: WordValue = { text: "", dynamic: false, glob: false, nested: [] };
    let value = "";
    for (const p of asList(w.Parts)) value += this.part(p, out, false);
    out.text = out.dynamic ? this.source(w) : value;
    return out;
  }

  private part(p: ShNode, out: WordValue, quoted: boolean): string {
    switch (p.Type) {
      case "Lit": {
        const v = String(p.Value ?? "");
        if (quoted) return v.replace(/\\([$`"\\\n])/g, (_m, c: string) => (c === "\n" ? "" : c));
        if (/[*?[]/.test(v.replace(/\\./g, "")) || /\{[^}]*(,|\.\.)[^}]*\}/.test(v)) out.glob = true;
        return v.replace(/\\(.|\n)/g, (_m, c: string) => (c === "\n" ? "" : c));
      }
      case "SglQuoted":
        return p.Dollar ? ansiC(String(p.Value ?? "")) : String(p.Value ?? "");
      case "DblQuoted": {
        if (p.Dollar) out.dynamic = true; // $"…": translated at run time
        let s = "";
        for (const q of asList(p.Parts)) s += this.part(q, out, true);
        return s;
      }
      case "CmdSubst":
        out.dynamic = true;
        out.nested.push({ kind: "$()", stmts: asList(p.Stmts) });
        return "";
      case "ProcSubst":
        out.dynamic = true;
        out.nested.push({ kind: String(p.Op) === ">(" ? ">()" : "<()", stmts: asList(p.Stmts) });
        return "";
      default:
        // ParamExp, ArithmExp, ExtGlob, BraceExp: known only at run time; their own substitutions still run.
        out.dynamic = true;
        if (p.Type === "ExtGlob" || p.Type === "BraceExp") out.glob = true;
        collectSubsts(p, out.nested);
        return "";
    }
  }

  /** The source text of a node, from its byte offsets. */
  source(n: ShNode): string {
    const a = n.Pos?.Offset;
    const b = n.End?.Offset;
    return typeof a === "number" && typeof b === "number" ? this.src.subarray(a, b).toString("utf8") : "";
  }
}

/** A shell's options: the -c command string, and the operands after the options. */
function shellOptions(args: WordValue[]): { command?: WordValue; operands: WordValue[] } {
  let c = false;
  let i = 0;
  for (; i < args.length; i++) {
    const a = args[i]!.text;
    if (a === "--" || a === "-") {
      i++;
      break;
    }
    if (!/^[-+]/.test(a) || a.length < 2) break;
    if (a.startsWith("--")) {
      if (a === "--rcfile" || a === "--init-file") i++;
      continue;
    }
    const letters = a.slice(1);
    if (letters.includes("c")) c = true;
    // -o NAME / +o NAME / -O NAME take a value.
    if (/[oO]$/.test(letters)) i++;
  }
  const operands = args.slice(i);
  return c ? { command: operands[0], operands: operands.slice(1) } : { operands };
}

/** What a here-document or here-string gives a command on stdin: its text if known; `{}` for another redirection of stdin. */
function stdinPayload(redirs: ShNode[], walker: Walker): { text?: string } | undefined {
  let out: { text?: string } | undefined;
  for (const r of redirs) {
    const op = String(r.Op);
    const fd = (r.N as ShNode | null | undefined)?.Value;
    if (fd !== undefined && fd !== null && fd !== "0") continue;
    if (op === "<<" || op === "<<-") {
      const doc = r.Hdoc ? walker.word(r.Hdoc as ShNode) : { text: "", dynamic: false };
      out = doc.dynamic ? {} : { text: op === "<<-" ? doc.text.replace(/^\t+/gm, "") : doc.text };
    } else if (op === "<<<") {
      const w = walker.word(r.Word as ShNode);
      out = w.dynamic ? {} : { text: w.text };
    } else if (op === "<" || op === "<&" || op === "<>") out = {};
  }
  return out;
}

interface Wrapper {
  /** Options that take a value as the next word. */
  values: string[];
  /** Words before the command that are not options (timeout's DURATION, chroot's DIR). */
  positionals: number;
  /** NAME=VALUE words are skipped (env). */
  assignments?: boolean;
  /** Options whose value is a shell line. */
  script?: string[];
  /** The rest is joined into one shell line (watch). */
  joined?: boolean;
}

/** Commands that run the command given in their arguments. */
const WRAPPERS: Record<string, Wrapper> = {
  sudo: { values: ["-u", "-g", "-h", "-p", "-C", "-D", "-r", "-t", "-U", "-T", "--user", "--group", "--host", "--prompt", "--chdir"], positionals: 0 },
  doas: { values: ["-u", "-C"], positionals: 0 },
  env: { values: ["-u", "-C", "--unset", "--chdir"], positionals: 0, assignments: true, script: ["-S", "--split-string"] },
  nice: { values: ["-n", "--adjustment"], positionals: 0 },
  nohup: { values: [], positionals: 0 },
  setsid: { values: [], positionals: 0 },
  time: { values: ["-f", "-o", "--format", "--output"], positionals: 0 },
  command: { values: [], positionals: 0 },
  builtin: { values: [], positionals: 0 },
  exec: { values: ["-a"], positionals: 0 },
  timeout: { values: ["-s", "-k", "--signal", "--kill-after"], positionals: 1 },
  stdbuf: { values: ["-i", "-o", "-e", "--input", "--output", "--error"], positionals: 0 },
  ionice: { values: ["-c", "-n", "--class", "--classdata"], positionals: 0 },
  chroot: { values: ["--userspec", "--groups"], positionals: 1 },
  xargs: { values: ["-I", "-i", "-n", "-P", "-d", "-a", "-L", "-l", "-s", "-E", "-e", "--max-args", "--max-procs", "--delimiter", "--arg-file", "--max-lines", "--max-chars", "--eof", "--replace"], positionals: 0 },
  su: { values: ["-s", "-g", "-G", "--shell", "--group"], positionals: 1, script: ["-c", "--command"] },
  runuser: { values: ["-u", "-s", "-g", "-G", "--user", "--shell", "--group"], positionals: 0, script: ["-c", "--command"] },
  flock: { values: ["-w", "-E", "--timeout", "--conflict-exit-code"], positionals: 1, script: ["-c", "--command"] },
  watch: { values: ["-n", "-d", "--interval", "--differences"], positionals: 0, joined: true },
  strace: { values: ["-e", "-o", "-p", "-s", "-u"], positionals: 0 },
  unbuffer: { values: [], positionals: 0 },
};

function flattenPipe(cmd: ShNode, out: ShNode[]): void {
  for (const side of [cmd.X as ShNode, cmd.Y as ShNode]) {
    const inner = side.Cmd as ShNode | undefined;
    if (inner?.Type === "BinaryCmd" && (inner.Op === "|" || inner.Op === "|&") && asList(side.Redirs).length === 0 && !side.Negated && !side.Background) flattenPipe(inner, out);
    else out.push(side);
  }
}

function collectSubsts(node: unknown, out: WordValue["nested"]): void {
  if (Array.isArray(node)) return node.forEach((n) => collectSubsts(n, out));
  if (node === null || typeof node !== "object") return;
  const n = node as ShNode;
  if (n.Type === "CmdSubst") return void out.push({ kind: "$()", stmts: asList(n.Stmts) });
  if (n.Type === "ProcSubst") return void out.push({ kind: String(n.Op) === ">(" ? ">()" : "<()", stmts: asList(n.Stmts) });
  for (const [k, v] of Object.entries(n)) if (k !== "Pos" && k !== "End" && v && typeof v === "object") collectSubsts(v, out);
}

function asList(v: unknown): ShNode[] {
  return Array.isArray(v) ? (v as ShNode[]) : [];
}

function basename(p: string): string {
  const i = p.replace(/\/+$/, "").lastIndexOf("/");
  return i < 0 ? p : p.slice(i + 1);
}

/** Bash's $'…' escapes. */
function ansiC(s: string): string {
  const simple: Record<string, string> = { a: "\x07", b: "\b", e: "\x1b", E: "\x1b", f: "\f", n: "\n", r: "\r", t: "\t", v: "\v", "\\": "\\", "'": "'", '"': '"', "?": "?" };
  return s.replace(/\\(x[0-9a-fA-F]{1,2}|u[0-9a-fA-F]{1,4}|U[0-9a-fA-F]{1,8}|[0-7]{1,3}|c.|.)/gs, (m, e: string) => {
    if (e in simple) return simple[e]!;
    if (/^[0-7]/.test(e)) return String.fromCharCode(parseInt(e, 8) & 0xff);
    if (e[0] === "x") return String.fromCharCode(parseInt(e.slice(1), 16));
    if (e[0] === "u" || e[0] === "U") return String.fromCodePoint(Math.min(parseInt(e.slice(1), 16), 0x10ffff));
    if (e[0] === "c" && e.length === 2) return String.fromCharCode(e.charCodeAt(1) & 0x1f);
    return m;
  });
}
