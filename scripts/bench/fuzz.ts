/**
 * What the soak test (soak.ts) sends the gateway: one fuzz case per
 * connection, as the writes a client makes. Pure: bytes from a seeded
 * random source, no sockets.
 *
 * Two kinds of case:
 * - known-bad: the classes of fault seen from outside the project
 *   (/work/shared/repro): reply-accounting desyncs (COPY FROM STDIN through
 *   the extended protocol, a Sync during COPY, a Query inside a failed
 *   batch), a flood after a refused startup packet, a huge message announced
 *   by its header, a statement too deep to analyse, a client dripping its
 *   startup packet a byte at a time;
 * - mutated: a valid stream (startup, password, then Query, Parse/Bind/
 *   Execute/Sync or COPY messages) with random mutations: bits flipped,
 *   lengths replaced by extreme values, messages dropped, repeated,
 *   swapped, truncated, type bytes changed, garbage inserted.
 */
import { CANCEL_REQUEST_CODE, message, PROTOCOL_3_0, SSL_REQUEST_CODE, startupPacket } from "../../src/protocols/postgres/wire.ts";

/** A deterministic random source (mulberry32), so a seed replays a run's cases. */
export class Random {
  constructor(private state: number) {}
  /** A float in [0, 1). */
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) | 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
}

/** One write of a case: bytes, sent after `delayMs`. */
export interface Write {
  bytes: Buffer;
  delayMs?: number;
}

export interface FuzzCase {
  /** The class, for the report ("mutated:post-login", "known-bad:flood", …). */
  kind: string;
  writes: Write[];
  /** Protocol messages the case holds (before mutation), for the count of messages fuzzed. */
  messages: number;
  /** The client never reads what the gateway answers (a pipelining client that stopped reading). */
  noRead?: boolean;
  /**
   * The case ends in a probe Query the session must answer (only where the
   * stream before it is valid): when no ReadyForQuery follows it, the
   * session is stuck (a desync), counted apart from gateway hangs.
   */
  expectsAnswer?: boolean;
}

export interface Credentials {
  user: string;
  password: string;
  database: string;
}

// ── messages ──────────────────────────────────────────────────────────────

const text = (s: string) => Buffer.from(s);
export const Startup = (c: { user?: string; database?: string; extra?: Record<string, string> }) =>
  startupPacket((w) => {
    w.i32(PROTOCOL_3_0);
    if (c.user !== undefined) w.cstr("user").cstr(c.user);
    if (c.database !== undefined) w.cstr("database").cstr(c.database);
    for (const [k, v] of Object.entries(c.extra ?? {})) w.cstr(k).cstr(v);
    w.u8(0);
  });
export const Password = (p: string) => message(0x70, (w) => w.cstr(p)); // p
export const Query = (sql: string) => message(0x51, (w) => w.cstr(sql)); // Q
export const Parse = (sql: string, name = "", types: number[] = []) => message(0x50, (w) => { w.cstr(name).cstr(sql).i16(types.length); for (const t of types) w.i32(t); }); // P
export const Bind = (statement = "", portal = "", params: (string | null)[] = []) =>
  message(0x42, (w) => {
    w.cstr(portal).cstr(statement).i16(0).i16(params.length);
    for (const p of params) {
      if (p === null) w.i32(-1);
      else w.i32(Buffer.byteLength(p)).bytes(text(p));
    }
    w.i16(0);
  }); // B
export const Describe = (kind: "S" | "P", name = "") => message(0x44, (w) => w.u8(kind.charCodeAt(0)).cstr(name)); // D
export const Execute = (portal = "", rows = 0) => message(0x45, (w) => w.cstr(portal).i32(rows)); // E
export const Close = (kind: "S" | "P", name = "") => message(0x43, (w) => w.u8(kind.charCodeAt(0)).cstr(name)); // C
export const CopyData = (b: Buffer | string) => message(0x64, (w) => w.bytes(typeof b === "string" ? text(b) : b)); // d
export const CopyDone = message(0x63); // c
export const CopyFail = (why: string) => message(0x66, (w) => w.cstr(why)); // f
export const Sync = message(0x53); // S
export const Flush = message(0x48); // H
export const Terminate = message(0x58); // X
const SSLRequest = startupPacket((w) => w.i32(SSL_REQUEST_CODE));

/** The login every post-login case starts with. */
function login(c: Credentials): Buffer[] {
  return [Startup({ user: c.user, database: c.database, extra: { application_name: "agate-soak" } }), Password(c.password)];
}

/** The table the COPY cases use; the soak script creates it. */
export const FUZZ_TABLE = "soak_t";

const STATEMENTS = [
  "select 1",
  "select $$soak$$ as v, 2 + 3",
  "select g, repeat('x', 50) from generate_series(1, 200) g",
  `select * from ${FUZZ_TABLE} limit 5`,
  "begin; select 1; commit",
  "select 1/0",
  "show server_version",
  `insert into ${FUZZ_TABLE} values (1, 'soak')`,
  "select pg_sleep(0.01)",
  "select 'é' || chr(233)",
  "select current_setting('standard_conforming_strings')",
  "drop table soak_nosuch",
];

/** A valid query-phase stream: a few random units, each whole. */
function validUnits(rnd: Random): Buffer[][] {
  const units: Buffer[][] = [];
  const n = 1 + rnd.int(6);
  for (let i = 0; i < n; i++) {
    switch (rnd.int(6)) {
      case 0:
        units.push([Query(rnd.pick(STATEMENTS))]);
        break;
      case 1:
        units.push([Parse(rnd.pick(STATEMENTS).split(";")[0]!), Bind(), Describe("P"), Execute(), Sync]);
        break;
      case 2: {
        const name = `s${rnd.int(3)}`;
        units.push([Parse("select $1::int + 1", name, [23]), Bind(name, "", [String(rnd.int(1000))]), Execute(), Close("S", name), Sync]);
        break;
      }
      case 3:
        units.push([Query(`copy (select g from generate_series(1, ${1 + rnd.int(2000)}) g) to stdout`)]);
        break;
      case 4: {
        const rows = Array.from({ length: 1 + rnd.int(20) }, (_, k) => CopyData(`${k}\trow ${k}\n`));
        units.push([Query(`copy ${FUZZ_TABLE} from stdin`), ...rows, rnd.int(4) === 0 ? CopyFail("soak") : CopyDone]);
        break;
      }
      default:
        units.push([Parse("select $1::text", "", [25]), Bind("", "", [rnd.bytes(8).toString("hex")]), Execute("", 1), Flush, Sync]);
    }
  }
  return units;
}

// ── mutations ─────────────────────────────────────────────────────────────

const EXTREME_LENGTHS = [0, 1, 3, 4, 5, -1, -2147483648, 0x7fffffff, 0x40000000, 10_000, 10_001, 65_536, 16 << 20, (16 << 20) + 1];

/** Mutate a list of messages in place, `count` times. */
function mutate(rnd: Random, msgs: Buffer[], count: number): void {
  for (let k = 0; k < count && msgs.length > 0; k++) {
    const i = rnd.int(msgs.length);
    const m = Buffer.from(msgs[i]!);
    switch (rnd.int(9)) {
      case 0: // flip bits
        for (let j = 0; j < 1 + rnd.int(4); j++) m[rnd.int(m.length)]! ^= 1 << rnd.int(8);
        msgs[i] = m;
        break;
      case 1: // an extreme length (typed messages have it at 1, startup packets at 0)
        if (m.length >= 5) m.writeInt32BE(rnd.pick(EXTREME_LENGTHS) | 0, m[0] === 0 ? 0 : 1);
        msgs[i] = m;
        break;
      case 2: // drop
        msgs.splice(i, 1);
        break;
      case 3: // repeat
        msgs.splice(i, 0, m);
        break;
      case 4: // swap with a neighbour
        if (i + 1 < msgs.length) [msgs[i], msgs[i + 1]] = [msgs[i + 1]!, msgs[i]!];
        break;
      case 5: // truncate the message
        msgs[i] = m.subarray(0, rnd.int(m.length));
        break;
      case 6: // another type byte
        m[0] = rnd.pick([0x00, 0x46, 0x70, 0x64, 0x63, 0x66, 0x53, 0x48, 0x58, 0x51, 0x50, 0x42, 0x45, 0x44, 0x43, 0xff, rnd.int(256)]);
        msgs[i] = m;
        break;
      case 7: // garbage between messages
        msgs.splice(i, 0, rnd.bytes(1 + rnd.int(64)));
        break;
      default: // a message body grown by random bytes, its length kept right
        {
          const extra = rnd.bytes(1 + rnd.int(256));
          const grown = Buffer.concat([m, extra]);
          if (grown.length >= 5 && grown[0] !== 0) grown.writeInt32BE(grown.length - 1, 1);
          msgs[i] = grown;
        }
    }
  }
}

/** Join messages into writes cut at random places (one write, a few, or many small ones). */
function chop(rnd: Random, bytes: Buffer): Write[] {
  if (rnd.int(3) > 0 || bytes.length < 2) return [{ bytes }];
  const writes: Write[] = [];
  for (let at = 0; at < bytes.length; ) {
    const n = 1 + rnd.int(Math.min(bytes.length - at, 512));
    writes.push({ bytes: bytes.subarray(at, at + n) });
    at += n;
  }
  return writes;
}

// ── cases ─────────────────────────────────────────────────────────────────

/** Ends whatever transaction the case left open, then asks for an answer the case must get (soak.ts looks for it). */
const PROBE = [Query("rollback"), Query("select 'soak-probe'")];

export const KNOWN_BAD = ["pipeline-flood", "desync-extended-copy", "desync-sync-in-copy", "desync-query-in-failed-batch", "flood-after-refusal", "huge-message", "huge-startup", "too-deep", "drip", "ssl-twice", "cancel-garbage"] as const;

/** One case: known-bad a quarter of the time, otherwise a mutated valid stream; with `only`, always that known-bad class. */
export function fuzzCase(rnd: Random, c: Credentials, only?: (typeof KNOWN_BAD)[number]): FuzzCase {
  if (only) return knownBad(rnd, only, c);
  if (rnd.int(4) === 0) return knownBad(rnd, rnd.pick(KNOWN_BAD), c);
  const where = rnd.int(5);
  if (where === 0) {
    // Before login: the startup packet and the password message mutated.
    const msgs = [...(rnd.int(3) === 0 ? [SSLRequest] : []), ...login(c), Query("select 1")];
    const n = msgs.length;
    mutate(rnd, msgs, 1 + rnd.int(3));
    return { kind: "mutated:pre-login", writes: chop(rnd, Buffer.concat(msgs)), messages: n };
  }
  const units = validUnits(rnd);
  const msgs = units.flat();
  const n = msgs.length;
  if (where === 1) {
    // Valid throughout, with a probe at the end that must be answered.
    return { kind: "valid", writes: [...login(c).map((bytes) => ({ bytes })), ...chop(rnd, Buffer.concat([...msgs, ...PROBE]))], messages: n + 2 + PROBE.length, expectsAnswer: true };
  }
  mutate(rnd, msgs, 1 + rnd.int(where === 4 ? 12 : 3));
  if (rnd.int(3) === 0) msgs.push(Terminate);
  return { kind: "mutated:post-login", writes: [...login(c).map((bytes) => ({ bytes })), ...chop(rnd, Buffer.concat(msgs))], messages: n + 2 };
}

/** A case of one known-bad class. */
export function knownBad(rnd: Random, kind: (typeof KNOWN_BAD)[number], c: Credentials): FuzzCase {
  const after = (msgs: Buffer[]): FuzzCase => ({ kind: `known-bad:${kind}`, writes: [...login(c), ...msgs, ...PROBE].map((bytes) => ({ bytes })), messages: msgs.length + 2 + PROBE.length, expectsAnswer: true });
  switch (kind) {
    case "desync-extended-copy": // libpq's PQexecParams("COPY … FROM STDIN"): PostgreSQL ignores the first Sync
      return after([Parse(`copy ${FUZZ_TABLE} from stdin`), Bind(), Describe("P"), Execute(), Sync, CopyData("7\tlibpq-style\n"), CopyDone, Sync, Query("drop table soak_nosuch")]);
    case "desync-sync-in-copy": // Sync and Flush are ignored in copy-in mode
      return after([Query(`copy ${FUZZ_TABLE} from stdin`), Sync, CopyData("1\tx\n"), CopyDone, Query("drop table soak_nosuch")]);
    case "desync-query-in-failed-batch": // the failed batch's messages, Query included, are discarded until Sync
      return after([Bind("soak_nosuch_stmt"), Query("select 'inside-batch'"), Sync, Query("drop table soak_nosuch")]);
    case "pipeline-flood": {
      // Megabytes of small queries, pipelined, and never a byte read back: what the gateway holds for it must stay bounded.
      const queries = Buffer.concat(Array.from({ length: 4096 }, () => Query("select 1")));
      return { kind: `known-bad:${kind}`, writes: [...login(c), ...Array.from({ length: 4 + rnd.int(60) }, () => queries)].map((bytes) => ({ bytes })), messages: 2, noRead: true };
    }
    case "too-deep":
      return after([Query(`select ${Array(10_000).fill("1").join("+")}`)]);
    case "flood-after-refusal": {
      // A startup packet refused (no user name), then megabytes the gateway must not keep.
      const mb = 1 + rnd.int(16);
      const chunk = Buffer.alloc(1 << 20);
      return { kind: `known-bad:${kind}`, writes: [{ bytes: Startup({ database: c.database }) }, ...Array.from({ length: mb }, () => ({ bytes: chunk }))], messages: 1 };
    }
    case "huge-message": {
      // A Query announcing 100 MB after login, then some of it: refused from the header, never buffered.
      const head = Buffer.alloc(5);
      head[0] = 0x51;
      head.writeInt32BE(100 << 20, 1);
      const body = Buffer.alloc(1 << 20, 0x61);
      return { kind: `known-bad:${kind}`, writes: [...login(c).map((bytes) => ({ bytes })), { bytes: head }, ...Array.from({ length: 1 + rnd.int(8) }, () => ({ bytes: body }))], messages: 3 };
    }
    case "huge-startup": {
      const head = Buffer.alloc(8);
      head.writeInt32BE(1 << 30, 0);
      head.writeInt32BE(PROTOCOL_3_0, 4);
      return { kind: `known-bad:${kind}`, writes: [{ bytes: head }, { bytes: Buffer.alloc(1 << 20, 0x75) }], messages: 1 };
    }
    case "drip": {
      // One byte at a time, slowly: the absolute startup timeout must end it.
      const bytes = Buffer.concat(login(c));
      return { kind: `known-bad:${kind}`, writes: Array.from(bytes.subarray(0, 40), (b) => ({ bytes: Buffer.from([b]), delayMs: 150 })), messages: 2 };
    }
    case "ssl-twice":
      return { kind: `known-bad:${kind}`, writes: [{ bytes: Buffer.concat([SSLRequest, SSLRequest, ...login(c)]) }], messages: 4 };
    case "cancel-garbage": {
      const cancel = startupPacket((w) => w.i32(CANCEL_REQUEST_CODE).i32(rnd.int(2 ** 31)).i32(rnd.int(2 ** 31)));
      return { kind: `known-bad:${kind}`, writes: [{ bytes: Buffer.concat([cancel, rnd.bytes(rnd.int(100))]) }], messages: 1 };
    }
  }
}
