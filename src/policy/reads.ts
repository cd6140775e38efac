/**
 * What a compiled policy can read of its input, found from the plan OPA
 * itself compiles (`opa build -t plan`, the intermediate representation the
 * wasm target is generated from), not from the Rego text.
 *
 * The analysis follows every value taken from `input` through the plan's
 * locals, function calls, and the objects, arrays and sets the policy builds,
 * and records which parts of the input can change what the plan does:
 *
 *   - a part that is compared, passed to a builtin, added to a set, used as
 *     a key, or put into the result is read whole;
 *   - a part only looked into (`input.command.sql.statements[i].tag`) is
 *     read through: only the fields looked at, their presence and type;
 *   - a collection iterated or counted has its keys (for an array, its length) read.
 *
 * It is flow- and context-insensitive (every call of a function is merged),
 * so it only over-approximates: a part it leaves out can never change the
 * decision. Anything it does not understand (an unknown statement, `with`,
 * dynamic calls) makes the policy read everything (`reads: null`), and a
 * nondeterministic builtin (time.now_ns, rand.intn, …, as `opa capabilities`
 * marks them) is reported, so that no decision of such a policy is cached.
 */

/** A part of the input as the policy reads it (stored in wasm/manifest.json). */
export interface ReadNode {
  /** The whole value matters. */
  whole?: true;
  /** The set of keys (an array's length) matters. */
  keys?: true;
  /** Fields (or array indices) looked into, by name. */
  fields?: Record<string, ReadNode>;
  /** Every element looked into alike (iteration, or a key not known at build time). */
  any?: ReadNode;
}

export interface PolicyReads {
  /** The read tree from the input's root; null when the plan could not be analysed (it may read anything). */
  reads: ReadNode | null;
  /** Nondeterministic builtins the plan calls (a decision then depends on more than its input). */
  nondeterministic: string[];
  /** Why the plan could not be analysed, when reads is null. */
  unanalysed?: string;
}

const ANY = "\u0001*";
/** Paths longer than this are cut short and read whole from there (a cycle through containers cannot grow without bound). */
const MAX_DEPTH = 12;

type Operand = { type: string; value: unknown };
type Stmt = { type: string; stmt: Record<string, unknown> };
type Block = { stmts: Stmt[] };
interface Plan {
  static: { strings?: { value: string }[]; builtin_funcs?: { name: string }[] };
  plans: { plans: { name: string; blocks: Block[] }[] };
  funcs?: { funcs?: { name: string; params: number[]; return: number; blocks: Block[] }[] | null };
}

/**
 * A value held by a local: the input's value at `src` sits at `rel` inside
 * it (rel empty: the local is that value). `keys`: the local is a key of
 * the collection at `src`.
 */
interface Fact {
  rel: string[];
  src: string[];
  keys?: boolean;
}

class Unanalysable extends Error {}

/** Analyses an `opa build -t plan` plan.json; `nondeterministic` names the builtins OPA's capabilities mark so. */
export function analysePlan(plan: Plan, nondeterministic: ReadonlySet<string>): PolicyReads {
  const strings = (plan.static.strings ?? []).map((s) => s.value);
  const funcs = new Map((plan.funcs?.funcs ?? []).map((f) => [f.name, f]));
  const builtins = new Set((plan.static.builtin_funcs ?? []).map((b) => b.name));
  const called = new Set<string>();
  for (const b of builtins) if (nondeterministic.has(b)) called.add(b);

  // Summaries shared by every call (context-insensitive): each function's parameters and its return value.
  const params = new Map<string, Facts>();
  const returns = new Map<string, Facts>();
  const root: MutableNode = newNode();
  let changed = true;

  const summary = (m: Map<string, Facts>, k: string) => {
    let s = m.get(k);
    if (!s) m.set(k, (s = new Map()));
    return s;
  };
  const addTo = (into: Facts, f: Fact): boolean => {
    if (f.rel.length > MAX_DEPTH || f.src.length > MAX_DEPTH) {
      markWhole(f.src.slice(0, MAX_DEPTH));
      return false;
    }
    const k = `${f.keys ? "k" : "v"}${f.rel.join("\0")}\u0002${f.src.join("\0")}`;
    if (into.has(k)) return false;
    into.set(k, f);
    return true;
  };
  const addSummary = (into: Facts, facts: Iterable<Fact>) => {
    for (const f of facts) if (addTo(into, f)) changed = true;
  };
  const constKey = (op: Operand): string | undefined => (op.type === "string_index" ? strings[op.value as number] : undefined);

  const nodeAt = (path: string[]): MutableNode => {
    let n = root;
    for (const seg of path) {
      if (seg === ANY) {
        if (!n.any) (n.any = newNode()), (changed = true);
        n = n.any;
      } else {
        let c = n.fields.get(seg);
        if (!c) {
          n.fields.set(seg, (c = newNode()));
          changed = true;
        }
        n = c;
      }
    }
    return n;
  };
  const markWhole = (path: string[]) => {
    const n = nodeAt(path);
    if (!n.whole) (n.whole = true), (changed = true);
  };
  const markKeys = (path: string[]) => {
    const n = nodeAt(path);
    if (!n.keys) (n.keys = true), (changed = true);
  };
  /** The value matters whole: for a key, its collection's keys. */
  const readWhole = (facts: Iterable<Fact>) => {
    for (const f of facts) (f.keys ? markKeys : markWhole)(f.src);
  };
  const dot = (facts: Iterable<Fact>, key: string | undefined): Fact[] => {
    const k = key ?? ANY;
    const out: Fact[] = [];
    for (const f of facts) {
      if (f.keys) continue; // a key is a string or a number: nothing inside
      if (f.rel.length === 0) {
        out.push({ rel: [], src: [...f.src, k] });
        nodeAt([...f.src, k]); // whether it is there decides what runs next
      } else if (f.rel[0] === k || f.rel[0] === ANY || k === ANY) out.push({ rel: f.rel.slice(1), src: f.src });
    }
    return out;
  };

  /**
   * One function (or plan) body, flow-sensitively: a local assigned anew
   * holds only its new value, so locals the compiler reuses in sibling
   * blocks do not mix. Any statement may end its block early, so what
   * follows a block sees the join of every state inside it.
   */
  const analyse = (name: string, blocks: Block[], entry: State, ret?: number) => {
    const retFacts = ret === undefined ? undefined : summary(returns, name);
    const writes = countWrites(blocks);
    /** The scans enclosing the statement being analysed, innermost last. */
    const scans: { key: Set<number>; value: Set<number> }[] = [];
    const runBlocks = (list: Block[], start: State): State => {
      let state = start;
      for (const b of list) state = runBlock(b, state);
      return state;
    };
    const runBlock = (b: Block, start: State): State => {
      let state = clone(start);
      const seen = clone(start);
      for (const s of b.stmts) {
        state = step(s, state);
        join(seen, state);
      }
      return seen;
    };
    const step = ({ type, stmt: s }: Stmt, st: State): State => {
      const op = (k: string) => s[k] as Operand;
      const local = (k: string) => s[k] as number;
      const of = (o: Operand | number): Facts => {
        const n = typeof o === "number" ? o : o.type === "local" ? (o.value as number) : undefined;
        return (n === undefined ? undefined : st.get(n)) ?? EMPTY;
      };
      const set = (target: number, facts: Iterable<Fact>) => {
        const m: Facts = new Map();
        for (const f of facts) addTo(m, f);
        st.set(target, m);
      };
      const addLocal = (target: number, facts: Iterable<Fact>) => {
        let m = st.get(target);
        if (!m) st.set(target, (m = new Map()));
        for (const f of facts) addTo(m, f);
      };
      switch (type) {
        case "AssignVarStmt": {
          set(local("target"), [...of(op("source")).values()]);
          // A copy of the innermost scan's key or value, written nowhere else, is that key or value.
          const scan = scans.at(-1);
          const from = op("source");
          if (scan && from.type === "local" && writes.get(local("target")) === 1) {
            if (scan.key.has(from.value as number)) scan.key.add(local("target"));
            if (scan.value.has(from.value as number)) scan.value.add(local("target"));
          }
          return st;
        }
        case "AssignVarOnceStmt":
          // A second, different value is a conflict (an evaluation error): both values matter whole,
          // unless this is the only write of the target and it runs at most once (in no scan).
          if (scans.length > 0 || writes.get(local("target")) !== 1) {
            readWhole(of(op("source")).values());
            readWhole(of(local("target")).values());
          }
          addLocal(local("target"), [...of(op("source")).values()]);
          return st;
        case "DotStmt": {
          const key = constKey(op("key"));
          if (key === undefined) readWhole(of(op("key")).values());
          set(local("target"), dot(of(op("source")).values(), key));
          return st;
        }
        case "ScanStmt": {
          const values: Fact[] = [];
          const keys: Fact[] = [];
          for (const f of of(local("source")).values()) {
            if (f.keys) continue;
            if (f.rel.length === 0) {
              markKeys(f.src);
              values.push({ rel: [], src: [...f.src, ANY] });
              keys.push({ rel: [], src: f.src, keys: true });
            } else values.push({ rel: f.rel.slice(1), src: f.src });
          }
          // The body runs any number of times: to a fixpoint, from the state before it joined with its own end.
          let head = clone(st);
          for (;;) {
            const body = clone(head);
            set(local("key"), keys);
            set(local("value"), values);
            body.set(local("key"), st.get(local("key"))!);
            body.set(local("value"), st.get(local("value"))!);
            const own = (n: number) => new Set(writes.get(n) === 1 ? [n] : []);
            scans.push({ key: own(local("key")), value: own(local("value")) });
            const end = runBlock(s.block as Block, body);
            scans.pop();
            const next = clone(head);
            if (!join(next, end)) return next;
            head = next;
          }
        }
        case "ObjectInsertStmt":
        case "ObjectInsertOnceStmt": {
          const key = constKey(op("key"));
          if (key === undefined) readWhole(of(op("key")).values());
          const value = [...of(op("value")).values()];
          // A conflicting value for one key is an error, so values matter whole; except for
          // `obj[k] := v if some k, v in input…`: the only write of obj, in a scan run once,
          // with that scan's own key and value: one key, one value.
          const scan = scans.at(-1);
          const own =
            scans.length === 1 && scan !== undefined && writes.get(`into ${local("object")}`) === 1 &&
            op("key").type === "local" && scan.key.has(op("key").value as number) &&
            op("value").type === "local" && scan.value.has(op("value").value as number);
          if (type === "ObjectInsertOnceStmt" && !own) readWhole(value);
          addLocal(local("object"), value.map((f) => ({ ...f, rel: [key ?? ANY, ...f.rel] })));
          return st;
        }
        case "ArrayAppendStmt":
          addLocal(local("array"), [...of(op("value")).values()].map((f) => ({ ...f, rel: [ANY, ...f.rel] })));
          return st;
        case "SetAddStmt": {
          // A set is ordered and deduplicated by its elements' values.
          const value = [...of(op("value")).values()];
          readWhole(value);
          addLocal(local("set"), value.map((f) => ({ ...f, rel: [ANY, ...f.rel] })));
          return st;
        }
        case "ObjectMergeStmt": {
          const both = [...of(op("a")).values(), ...of(op("b")).values()];
          readWhole(both);
          set(local("target"), both);
          return st;
        }
        case "CallStmt": {
          const fname = s.func as string;
          const args = (s.args as Operand[]) ?? [];
          const fn = funcs.get(fname);
          if (fn) {
            args.forEach((a, i) => {
              const param = fn.params[i];
              if (param !== undefined) addSummary(summary(params, `${fn.name}#${param}`), of(a).values());
            });
            set(local("result"), [...summary(returns, fn.name).values()]);
            return st;
          }
          if (!builtins.has(fname)) throw new Unanalysable(`the plan calls ${fname}, which is neither a plan function nor a builtin`);
          if (nondeterministic.has(fname)) called.add(fname);
          const k = args.length === 3 ? constKey(args[1]!) : undefined;
          if (fname === "object.get" && k !== undefined) {
            // object.get(x, "k", default): x's field k (or the default), nothing else of x.
            set(local("result"), [...dot(of(args[0]!).values(), k), ...of(args[2]!).values()]);
            return st;
          }
          for (const a of args) readWhole(of(a).values());
          st.delete(local("result"));
          return st;
        }
        case "EqualStmt":
        case "NotEqualStmt":
          if (op("a").type === "bool" || op("b").type === "bool") {
            // `x`, `not x`: whether x is there and is true or false, which every node read records (ReadNode).
            for (const f of [...of(op("a")).values(), ...of(op("b")).values()]) if (!f.keys && f.rel.length === 0) nodeAt(f.src);
            return st;
          }
          readWhole(of(op("a")).values());
          readWhole(of(op("b")).values());
          return st;
        case "IsArrayStmt":
        case "IsObjectStmt":
        case "IsSetStmt":
        case "IsDefinedStmt":
        case "IsUndefinedStmt":
          // Presence and type are part of every node read: make sure the node is there.
          for (const f of of(s.source as Operand | number).values()) if (!f.keys && f.rel.length === 0) nodeAt(f.src);
          return st;
        case "LenStmt":
          for (const f of of(op("source")).values()) if (f.keys || f.rel.length === 0) markKeys(f.src);
          st.delete(local("target"));
          return st;
        case "ReturnLocalStmt":
          if (!retFacts) throw new Unanalysable("a ReturnLocalStmt outside a function");
          addSummary(retFacts, of(local("source")).values());
          return st;
        case "ResultSetAddStmt":
          readWhole(of(local("value")).values());
          return st;
        case "BlockStmt":
          return runBlocks((s.blocks as Block[]) ?? [], st);
        case "NotStmt": {
          const end = runBlock(s.block as Block, st);
          join(st, end);
          return st;
        }
        case "MakeArrayStmt":
        case "MakeObjectStmt":
        case "MakeSetStmt":
        case "MakeNullStmt":
        case "MakeNumberIntStmt":
        case "MakeNumberRefStmt":
        case "ResetLocalStmt":
        case "AssignIntStmt":
          st.delete(local("target"));
          return st;
        case "BreakStmt":
        case "NopStmt":
          return st;
        default:
          throw new Unanalysable(`the plan has a ${type}, which this analysis does not follow`);
      }
    };
    const end = runBlocks(blocks, entry);
    if (retFacts && ret !== undefined) addSummary(retFacts, (end.get(ret) ?? EMPTY).values());
  };

  try {
    // Each plan starts with input in local 0 and data in local 1; every function gets them in params 0 and 1.
    const input: State = new Map([[0, toFacts([{ rel: [], src: [] }])]]);
    let passes = 0;
    while (changed) {
      if (++passes > 100) throw new Unanalysable("the analysis found no fixpoint in 100 passes");
      changed = false;
      for (const p of plan.plans.plans) analyse(`plan:${p.name}`, p.blocks, clone(input));
      for (const f of funcs.values()) {
        const entry: State = new Map();
        for (const p of f.params) entry.set(p, new Map(summary(params, `${f.name}#${p}`)));
        analyse(f.name, f.blocks, entry, f.return);
      }
    }
  } catch (e) {
    if (e instanceof Unanalysable) return { reads: null, nondeterministic: [...called].sort(), unanalysed: e.message };
    throw e;
  }
  return { reads: freezeNode(root), nondeterministic: [...called].sort() };
}

/** How many statements write each local of a body (a target, a container added to, a scan's key and value); `into N`: additions to container N. */
function countWrites(blocks: Block[]): Map<number | string, number> {
  const out = new Map<number | string, number>();
  const bump = (n: unknown, into = false) => {
    if (typeof n !== "number") return;
    out.set(n, (out.get(n) ?? 0) + 1);
    if (into) out.set(`into ${n}`, (out.get(`into ${n}`) ?? 0) + 1); // additions to a container, apart
  };
  const walk = (list: Block[]) => {
    for (const b of list) {
      for (const { stmt: s } of b.stmts) {
        for (const k of ["target", "object", "array", "set", "key", "value", "result"]) {
          if (k === "key" || k === "value") {
            if (s.block !== undefined && typeof s[k] === "number") bump(s[k]); // ScanStmt's own locals
          } else bump(s[k], k === "object" || k === "array" || k === "set");
        }
        if (s.block) walk([s.block as Block]);
        if (s.blocks) walk(s.blocks as Block[]);
      }
    }
  };
  walk(blocks);
  return out;
}

type Facts = Map<string, Fact>;
/** What each local may hold at one point of a body. */
type State = Map<number, Facts>;
const EMPTY: Facts = new Map();

function toFacts(list: Fact[]): Facts {
  const m: Facts = new Map();
  for (const f of list) m.set(`${f.keys ? "k" : "v"}${f.rel.join("\0")}\u0002${f.src.join("\0")}`, f);
  return m;
}

function clone(s: State): State {
  const out: State = new Map();
  for (const [k, v] of s) out.set(k, new Map(v));
  return out;
}

/** Adds b's facts into a; whether a grew. */
function join(a: State, b: State): boolean {
  let grew = false;
  for (const [k, v] of b) {
    let m = a.get(k);
    if (!m) a.set(k, (m = new Map()));
    for (const [fk, f] of v) {
      if (!m.has(fk)) {
        m.set(fk, f);
        grew = true;
      }
    }
  }
  return grew;
}

interface MutableNode {
  whole?: boolean;
  keys?: boolean;
  fields: Map<string, MutableNode>;
  any?: MutableNode;
}

function newNode(): MutableNode {
  return { fields: new Map() };
}

/** The stored form: a whole node has nothing below it; fields sorted, so the same plan gives the same manifest. */
function freezeNode(n: MutableNode): ReadNode {
  if (n.whole) return { whole: true };
  const out: ReadNode = {};
  if (n.keys) out.keys = true;
  if (n.fields.size > 0) {
    out.fields = {};
    for (const k of [...n.fields.keys()].sort()) out.fields[k] = freezeNode(n.fields.get(k)!);
  }
  if (n.any) out.any = freezeNode(n.any);
  return out;
}

/** Whether `path` (field names from the input's root) can be read, in part or whole: `now`, `command.text`, `grants`. */
export function readsPath(reads: ReadNode | null, path: string[]): boolean {
  if (reads === null) return true;
  let n: ReadNode | undefined = reads;
  for (const seg of path) {
    if (n.whole) return true;
    const next: ReadNode | undefined = n.fields?.[seg] ?? n.any;
    if (!next) return false;
    n = next;
  }
  return true;
}

/** Human-readable paths, for people and tests: "command.sql.statements[*].tag", "identity (whole)". */
export function describeReads(reads: ReadNode | null): string[] {
  if (reads === null) return ["(everything)"];
  const out: string[] = [];
  const walk = (n: ReadNode, at: string) => {
    if (n.whole) return void out.push(`${at || "input"} (whole)`);
    if (n.keys) out.push(`${at || "input"} (keys)`);
    const leaf = !n.fields && !n.any && !n.keys;
    if (leaf) out.push(at || "input");
    for (const [k, c] of Object.entries(n.fields ?? {})) walk(c, at ? `${at}.${k}` : k);
    if (n.any) walk(n.any, `${at}[*]`);
  };
  walk(reads, "");
  return out;
}
