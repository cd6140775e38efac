/**
 * The query phase of one client connection: every frontend message is
 * framed, every statement is put to the guard before it is forwarded, and
 * the target's answers are relayed back in order.
 *
 * Ordering. A refused statement never reaches the target, so its
 * ErrorResponse is written by agate. Clients pipeline (several Syncs in
 * flight), so that error must appear exactly where the target's answer
 * would have: after the replies to everything forwarded before it. Every
 * forwarded Query or Sync yields exactly one ReadyForQuery (agate forwards
 * only what the target acts on: backend-state.ts), so replies are counted in
 * ReadyForQuery numbers. When the session is idle with nothing
 * in flight, agate answers a refusal itself; otherwise the target must see
 * an error too (targetMustFail), and agate's error takes the place of the
 * one its failing statement gets, at the same position.
 *
 * Extended protocol. The decision is made at Parse (early, so the client
 * gets its error at once); the record is written at Execute, with the Bind
 * parameters, and made durable before the Execute is forwarded. After a
 * refusal, messages are discarded until Sync, as PostgreSQL does after an
 * error.
 *
 * Durability (early.ts). A Query or Execute that provably cannot take
 * durable effect first is forwarded as soon as its record is written, and
 * the gate holds everything bound for the client from then on until that
 * record is durable; the reply accounting below never sees the difference.
 *
 * Masking (rows.ts). Every forwarded Query, Describe and Execute leaves a
 * Reply in `replies`, in the order the target answers them, so that each
 * RowDescription and DataRow is matched with the decision of the command it
 * answers. After an ErrorResponse the target skips to Sync, and so do the
 * replies. An Execute whose rows are to be masked needs its portal's
 * columns: when the client did not Describe the portal since it was bound,
 * agate sends a Describe itself and keeps its answer from the client.
 * Looking up column origins (catalog.ts) pauses the relay, in order.
 */
import type net from "node:net";
import { AgateError, asError } from "../../core/errors.ts";
import { MAX_PAYLOAD_BYTES } from "../../audit/format.ts";
import { DurableGate } from "../../core/durable-gate.ts";
import type { DurableBefore, Guard, HeldRequest, Verdict } from "../../core/guard.ts";
import type { SessionClock } from "../../core/limits.ts";
import type { Logger } from "../../core/log.ts";
import type { Command, Session, SqlFacts, SqlStatement } from "../../core/types.ts";
import { type CompiledMask, NO_MASK } from "../../mask/rules.ts";
import { FIRST_USER_OID } from "./binary.ts";
import type { Catalog } from "./catalog.ts";
import { forwardEarly } from "./early.ts";
import { WriteEstimates } from "./estimate.ts";
import { builtInCall, catalogFacts } from "./facts.ts";
import { type Frame, type Framer, Outbox } from "./framer.ts";
import { Bind, Close, DescribePortal, ErrorResponse, Execute, Flush, Parse, Query, Sync, type ParseMsg, type TextDecode, NoticeResponse, inClientEncoding, readBind, readErrorFields, readExecute, readParse, readQuery, readTarget, ReadyForQuery, T, tagRows } from "./messages.ts";
import { type Field, maskCopyData, maskNotice, type MaskTally, newTally, type OriginOf, readRowDescription, ResultMasker, RowSlabs, statementTaint } from "./rows.ts";
import { copySource, CopyMasker } from "./copy.ts";
import { isLexingBarrier, LexingState, PROBE } from "./lexing.ts";
import { BackendState, copiesIn } from "./backend-state.ts";
import { tagAgrees, tagVerb } from "./tags.ts";
import { analyzeSql, scanSql } from "./sql.ts";
import { paramsAsText } from "./params.ts";
import { maskNotificationAs, maskParameterStatus } from "./status.ts";
import type { Upstream } from "./upstream.ts";
import { ProtocolViolation } from "./wire.ts";

interface Prepared {
  text: string;
  facts?: SqlFacts;
  invalid?: Command["invalid"];
  verdict: Verdict;
  /** The Parse's parameter types (0: left to the server): for the planner's estimate at Execute, and to read binary parameters for the record. */
  paramTypes: number[];
}

/** A forwarded message the target will answer with rows or columns, in answer order. */
interface Reply {
  kind: "query" | "describe" | "execute";
  /** The ReadyForQuery number that ends its batch. */
  sync: number;
  /** Describe/Execute of a portal: its name ("" unnamed); a statement Describe has none. */
  portal?: string;
  /** agate's own Describe: its answer is not relayed. */
  swallow?: boolean;
  mask: CompiledMask;
  facts?: SqlFacts;
  /** The masker of the result being answered. */
  rows?: ResultMasker;
  /** A simple query: its statements answered so far (CommandComplete). */
  done?: number;
  /** The statements as decided (before FETCH/EXECUTE stand for what is behind them): what its command tags must agree with. */
  decided?: readonly SqlStatement[];
  /** agate's failing statement for a refusal (refuseQuery, refuseInBatch): the target's error is replaced by this one. */
  refusal?: Buffer;
  /** agate's own SHOW of a lexing setting (probeLexing): its row is the value. */
  probe?: { setting: string; answered: (ok: boolean) => void };
  /** agate's own Describe of what a COPY … TO reads (describeCopy): its RowDescription body, undefined when it failed. */
  copy?: (columns: Buffer | undefined) => void;
  /** A COPY … TO statement's columns as described, by statement index (describeCopy). */
  copyColumns?: Map<number, Buffer | undefined>;
}

/** A queued reply: bytes, or ReadyForQuery with the transaction status current when it is written. */
type Injected = Buffer | "ReadyForQuery";

/** How long a connection closed with a FATAL error stays open for the client to read it. */
const FATAL_LINGER_MS = 1000;

/** Statements forwarded before their record is durable only while fewer than this many forwarded ones await their answer. */
const MAX_EARLY_AHEAD = 16;

/** Pause reading from the client when this many bytes wait to be framed. */
const CLIENT_BUFFER_HIGH_WATER = 256 << 10;

export interface SessionEnd {
  reason: string;
  commands: number;
  /** The stable code of what ended it, when agate ended it for a limit (terminate()). */
  code?: string;
}

export class PgSession {
  private seq = 0;
  private closed = false;
  /** The client sent Terminate: nothing more is read from it; the session ends when the target closes. */
  private terminated = false;
  private pumping = false;
  private readonly toUpstream = new Outbox();
  private readonly outbox = new Outbox();
  /** Client-bound bytes wait here for the records of statements forwarded before theirs was durable (early.ts). */
  private readonly gate = new DurableGate({
    write: (b) => this.writeNow(b),
    failed: (e) => this.fatal(e),
    pause: () => this.upstream.socket.pause(),
    resume: () => {
      if (!this.heldFrame && !this.client.writableNeedDrain) this.upstream.socket.resume();
    },
  });
  /** A transaction statement forwarded in the current extended batch may have ended the block ReadyForQuery reported. */
  private batchLeftBlock = false;

  // Reply accounting, in ReadyForQuery numbers.
  private syncsSent = 0;
  private zReceived = 0;
  private readonly injectAfter = new Map<number, Injected[]>();
  private txStatus: number;

  // Extended-protocol state.
  private discarding = false;
  private batchForwarded = 0;
  private readonly statements = new Map<string, Prepared>();
  private readonly portals = new Map<string, { statement: string; params: (string | null)[] }>();

  /** How the target lexes the next statement (lexing.ts). */
  private readonly lexing = new LexingState();
  /**
   * A forwarded statement may have changed how later text lexes: before the
   * next Query or Parse is read, wait for the ReadyForQuery #z that ends it,
   * or (still inside its extended batch) probe the target. `aborted`: the
   * probe found the batch failed, so the target discards the rest of it.
   */
  private lexBarrier: { z: number } | { batch: true; aborted?: boolean } | undefined;
  private readonly zWaiters: { z: number; resolve: () => void }[] = [];
  /** The batch (ReadyForQuery number) of the last barrier since the session was idle, 0 when none: ending the transaction may undo what it set. */
  private touchedSync = 0;
  /** The last batch (ReadyForQuery number) the target answered with an error: it skips the rest of it. */
  private failedBatch = 0;
  /** Parse, Bind and Close forwarded, in answer order: which answers are agate's own (swallowed); `answered`: told whether the target answered it (false: it skipped it). */
  private readonly acks: { sync: number; swallow: boolean; answered?: (ok: boolean) => void }[] = [];
  /** What the target does with each message (backend-state.ts): which of them get answers. */
  private readonly backend = new BackendState();

  // Outcomes: command seqs completed by ReadyForQuery #n, and what the target said since the last one.
  private readonly outcomeAt = new Map<number, number[]>();
  private tags: string[] = [];
  private error: { code: string; message: string } | undefined;
  /** The mask of the command `error` answers; undefined when it answers none agate decided (a Parse, a Bind): recorded with every detector. */
  private errorMask: CompiledMask | undefined;
  /** The last reply the target finished answering: ParameterStatus and notifications that follow it are its. */
  private answered: Reply | undefined;

  // Masking: what the target still owes rows or columns for, and what was masked since the last outcome.
  private readonly replies: Reply[] = [];
  /** Portals described (by the client or agate) since they were bound, on the way to the target. */
  private readonly described = new Set<string>();
  /** The RowDescription body of each described portal, as answered. */
  private readonly portalRows = new Map<string, Buffer>();
  private copyMask: CompiledMask | undefined;
  /** The COPY … TO being answered, masked field by field (copy.ts). */
  private copyRows: CopyMasker | undefined;
  /** ReadyForQuery numbers that answer agate's own Sync (describeCopy): not relayed. */
  private readonly ownSyncs = new Set<number>();
  /** The mask of the latest forwarded command: for notices and notifications outside any reply. */
  private lastMask: CompiledMask = NO_MASK;
  private tally: MaskTally = newTally();
  /** Bytes of result rows sent to the client, and DataRows among them, since the last outcome. */
  private resultBytes = 0;
  private resultRows = 0;
  /** A target message waiting for column origins, and whether they were just looked up. */
  private heldFrame: Frame | undefined;
  private lookedUp = false;

  constructor(
    private readonly session: Session,
    private readonly client: net.Socket,
    private readonly clientFramer: Framer,
    private readonly upstream: Upstream,
    private readonly guard: Guard,
    private readonly catalog: Catalog,
    private readonly log: Logger,
    private readonly onEnd: (end: SessionEnd) => void,
    /** Idle timeouts and the session lifetime (core/limits.ts): told when the session waits for its client, and when the client speaks. */
    private readonly clock?: SessionClock,
  ) {
    this.txStatus = upstream.txStatus;
    this.estimates.startWith(upstream.params);
    for (const raw of upstream.parameterStatus) {
      const [name, value] = raw.toString("utf8", 5).split("\0");
      this.lexing.report(name ?? "", value ?? "");
    }
    // A message is refused from its length header when it exceeds max_message_bytes or could not be recorded
    // (framer.ts); CopyData, which is not recorded, is passed on in pieces, never buffered whole.
    clientFramer.maxBytes = Math.min(clientFramer.maxBytes, MAX_PAYLOAD_BYTES);
    clientFramer.streamCopyData = true;
    client.on("data", (chunk: Buffer) => {
      if (this.closed) return; // the rest of a refused message is dropped unread
      this.clock?.active();
      this.clientFramer.push(chunk);
      if (this.clientFramer.buffered > CLIENT_BUFFER_HIGH_WATER) client.pause();
      void this.pump();
    });
    client.on("close", () => this.end("client closed the connection"));
    client.on("error", (e) => this.end(`client error: ${e.message}`));
    upstream.socket.on("data", (chunk: Buffer) => this.fromUpstream(chunk));
    upstream.socket.on("close", () => this.end(this.terminated ? "client terminated the session" : "target closed the connection"));
    upstream.socket.on("error", (e) => this.end(`target error: ${e.message}`));
    // Backpressure both ways.
    client.on("drain", () => upstream.socket.resume());
    upstream.socket.on("drain", () => client.resume());
    // Bytes that arrived with the handshake.
    if (upstream.framer.buffered > 0) this.fromUpstream(Buffer.alloc(0));
    if (clientFramer.buffered > 0) void this.pump();
    else this.noteIdle();
  }

  /**
   * Tell the clock when the session has answered everything its client sent
   * and waits for it (as PostgreSQL after ReadyForQuery): idle, in a
   * transaction block or not. A batch without Sync, a COPY, a statement
   * running or a command held for approval is not idle.
   */
  private noteIdle(): void {
    if (!this.clock || this.closed || this.pumping || this.heldFrame) return;
    if (this.syncsSent !== this.zReceived || this.batchForwarded > 0 || this.clientFramer.buffered > 0) return;
    this.clock.idle(this.txStatus !== 0x49);
  }

  // ── client → target ──────────────────────────────────────────────────

  private async pump(): Promise<void> {
    if (this.pumping || this.closed) return;
    this.pumping = true;
    try {
      for (let next = this.clientFramer.next(); next && !this.closed && !this.terminated; next = this.clientFramer.next()) {
        const stepped = this.backendStep(next);
        const f = stepped instanceof Promise ? await stepped : stepped;
        if (this.closed) break;
        if (!f) continue;
        if (this.lexBarrier && (f.type === T.Query || f.type === T.Parse) && !this.discarding) {
          this.flushUpstream();
          await this.settleLexing();
          if (this.closed) break;
        }
        const pending = this.onClientMessage(f);
        if (pending) {
          this.flushUpstream();
          await pending;
        }
      }
      this.flushUpstream();
      if (!this.closed && this.client.isPaused() && this.upstream.socket.writableNeedDrain === false) this.client.resume();
    } catch (e) {
      this.fatal(e);
    } finally {
      this.pumping = false;
    }
    this.noteIdle();
  }

  /**
   * What the target will do with `f` (backend-state.ts): wait until that is
   * known, then `f` to handle, or undefined when the target would discard it
   * unanswered.
   */
  private backendStep(f: Frame): Frame | undefined | Promise<Frame | undefined> {
    const step = this.backend.step(f.type, { open: this.batchForwarded > 0 && !this.discarding, failed: this.failedBatch === this.syncsSent + 1 });
    switch (step.do) {
      case "forward":
        return f;
      case "discard":
        return undefined;
      case "violation":
        throw new ProtocolViolation(step.message);
      case "settle":
        this.flushUpstream();
        return this.backend.settled().then(() => (this.closed ? undefined : this.backendStep(f)));
      case "probe":
        this.flushUpstream();
        return this.probeBatch().then((ok) => (ok ? f : undefined));
    }
  }

  /**
   * Whether the target has not failed the unfinished batch so far: a Close
   * of a statement agate never makes (answered CloseComplete, even in an
   * aborted transaction), then Flush; the target skips it when the batch
   * failed. Its answer never reaches the client.
   */
  private probeBatch(): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      this.toUpstream.add(Close("S", `${RESERVED_PREFIX}batch`));
      this.toUpstream.add(Flush);
      this.acks.push({ sync: this.syncsSent + 1, swallow: true, answered: resolve });
      this.flushUpstream();
    });
  }

  /** Handle one frontend message; returns a promise when the guard must be awaited. */
  private onClientMessage(f: Frame): Promise<void> | void {
    if (this.discarding && f.type !== T.Sync && f.type !== T.Terminate) return;
    switch (f.type) {
      case T.Query:
        return this.onQuery(f);
      case T.Parse:
        return this.onParse(f);
      case T.Bind: {
        const b = readBind(f.body, this.lexing.decode);
        if (b.portal.startsWith(RESERVED_PREFIX)) return this.refuseInBatch(reservedName("portal", b.portal));
        this.portals.set(b.portal, { statement: b.statement, params: b.params });
        this.described.delete(b.portal);
        return this.forward(f);
      }
      case T.Execute:
        return this.onExecute(f);
      case T.Close: {
        const c = readTarget(f.body);
        if (c.kind === 0x53) this.statements.delete(c.name);
        else {
          this.portals.delete(c.name);
          this.described.delete(c.name);
        }
        return this.forward(f);
      }
      case T.Describe: {
        const d = readTarget(f.body);
        if (d.kind === 0x50) this.described.add(d.name);
        this.replies.push({ kind: "describe", sync: this.syncsSent + 1, ...(d.kind === 0x50 ? { portal: d.name } : {}), mask: NO_MASK });
        return this.forward(f);
      }
      case T.Flush:
        // A Flush asks for what is owed and opens no batch (libpq pipelines end in Sync, Flush): what comes
        // next, a Query or a COPY agate must describe first, does not stand inside an extended batch.
        this.toUpstream.add(f.raw);
        return;
      case T.Sync:
        return this.onSync(f);
      case T.CopyData:
      case T.CopyDone:
      case T.CopyFail:
        this.toUpstream.add(f.raw);
        return;
      case T.Terminate:
        // The target answers what came before the Terminate, then closes: the client gets those answers first.
        this.toUpstream.add(f.raw);
        this.flushUpstream();
        this.terminated = true;
        this.upstream.socket.end();
        return;
      case T.FunctionCall:
        // The fast-path interface calls a function by OID, with no SQL to decide on (lo_import is built on it).
        return this.refuseSimple({ seq: ++this.seq, text: "<fast-path function call>", invalid: { code: "FUNCTION_CALL", message: "the fast-path function call protocol is not allowed through agate; call the function in SQL" } });
      default:
        throw new ProtocolViolation(`unexpected message type '${String.fromCharCode(f.type)}' (0x${f.type.toString(16)})`);
    }
  }

  private forward(f: Frame): void {
    this.toUpstream.add(f.raw);
    this.batchForwarded++;
    if (f.type === T.Parse || f.type === T.Bind || f.type === T.Close) this.acks.push({ sync: this.syncsSent + 1, swallow: false });
  }

  private async onQuery(f: Frame): Promise<void> {
    const command = this.command((decode) => readQuery(f.body, decode));
    if (command.sql && command.sql.statements.length === 0) {
      // Only whitespace or comments: the target answers EmptyQueryResponse; nothing runs.
      this.sendQuery(f);
      return;
    }
    await this.enrich(command);
    const verdict = await this.check(command, false, { onHold: this.onHold, durable: this.durableBefore(command) });
    if (!verdict) return;
    const refused = verdict.allow ? this.unmaskable(command, verdict) : this.refusal(command, verdict);
    if (refused) {
      this.refuseQuery(refused);
      return;
    }
    const copies = this.copiesToDescribe(command, verdict.mask);
    if (copies.length > 0 && this.batchForwarded > 0) {
      // agate describes with a Sync of its own, which would end the client's open batch.
      this.refuseQuery(
        ErrorResponse({
          severity: "ERROR",
          code: "42501",
          message: "agate: a COPY … TO whose output is masked field by field cannot be sent inside an unfinished extended-protocol batch",
          hint: "Send Sync before the query.",
        }),
      );
      return;
    }
    const copyColumns = copies.length > 0 ? await this.describeCopies(command, copies, true) : undefined;
    if (this.closed) return;
    if (copies.some((i) => i > 0 && copyColumns?.get(i) === undefined)) {
      // What the COPY reads may be made by the statements before it: it runs, and cannot be masked.
      this.refuseQuery(
        ErrorResponse({
          severity: "ERROR",
          code: "42501",
          message: "agate: the COPY … TO in this query reads what agate could not describe before the query ran, and this statement's policy masks its output",
          hint: "Send the COPY as a query of its own, after the statements that create what it reads.",
        }),
      );
      return;
    }
    const barrier = this.isBarrier(command);
    this.sendQuery(f);
    this.backend.sent(this.syncsSent, copiesIn(command.sql?.statements));
    if (barrier) this.lexBarrier = { z: this.syncsSent };
    this.outcomeAt.set(this.syncsSent, [command.seq]);
    this.replies.push({ kind: "query", sync: this.syncsSent, mask: verdict.mask, ...(copyColumns ? { copyColumns } : {}), ...(command.sql ? { facts: this.throughNames(command.sql), decided: command.sql.statements } : {}) });
    this.lastMask = verdict.mask;
  }

  /** Whether `command` can change how later text lexes (lexing.ts); judged before throughNames() updates the session's names. */
  private isBarrier(command: Command): boolean {
    const statements = command.sql?.statements ?? [];
    const behind = (st: SqlStatement) => (st.name === undefined ? undefined : st.node === "FetchStmt" ? this.cursors.get(st.name) : this.prepared.get(st.name));
    const barrier = isLexingBarrier(statements, this.touchedSync > 0, behind, builtInCall);
    if (barrier) this.touchedSync = this.syncsSent + 1;
    return barrier;
  }

  /**
   * The facts a result is masked by: a FETCH from a cursor, or an EXECUTE of
   * a prepared statement, this session declared (in this transaction, for a
   * cursor) stands for the query behind it, so that its computed columns are
   * judged by what that query names. One agate did not see declared keeps
   * its own facts, and its computed columns are masked (rows.ts).
   */
  private throughNames(facts: SqlFacts): SqlFacts {
    let out: SqlStatement[] | undefined;
    facts.statements.forEach((s, i) => {
      const { cursors, prepared } = this;
      let behind: SqlStatement | undefined;
      switch (s.node) {
        case "DeclareCursorStmt":
          if (s.name !== undefined) cursors.set(s.name, s);
          break;
        case "PrepareStmt":
          if (s.name !== undefined) prepared.set(s.name, s);
          break;
        case "ClosePortalStmt":
          if (s.name === undefined) cursors.clear();
          else cursors.delete(s.name);
          break;
        case "DeallocateStmt":
          if (s.name === undefined) prepared.clear();
          else prepared.delete(s.name);
          break;
        case "FetchStmt":
          behind = s.name !== undefined ? cursors.get(s.name) : undefined;
          break;
        case "ExecuteStmt":
          behind = s.name !== undefined ? prepared.get(s.name) : undefined;
          break;
      }
      if (behind) (out ??= [...facts.statements])[i] = behind;
    });
    return out ? { ...facts, statements: out } : facts;
  }
  private readonly cursors = new Map<string, SqlStatement>();
  private readonly prepared = new Map<string, SqlStatement>();

  /**
   * A COPY … TO STDOUT in binary, or under column rules, is masked field by
   * field from a description of what it reads (copy.ts, describeCopy).
   * Under column rules, text or CSV in a syntax other than the default
   * (DELIMITER, NULL, QUOTE, ESCAPE, ENCODING) cannot be split into fields
   * safely: such a COPY is refused before it runs.
   */
  private unmaskable(command: Command, verdict: Verdict): Buffer | undefined {
    const m = verdict.mask;
    const statements = command.sql?.statements ?? [];
    if (this.copiesToDescribe(command, m).some((i) => copySource(statements[i]!.text).describe === undefined)) {
      // Its rows could not be masked: refused before it runs, not after, with the session kept.
      return ErrorResponse({
        severity: "ERROR",
        code: "42501",
        message: "agate: the columns this COPY … TO reads cannot be told from its text, and its output must be masked field by field",
        hint: "Name the table (and columns) with plain or double-quoted identifiers, or use COPY (SELECT …) TO.",
      });
    }
    if (m.empty || m.columns.length === 0) return undefined;
    const odd = command.sql?.statements.some((s) => s.copy?.direction === "to" && s.copy.stdio && s.copy.format !== "binary" && !copySource(s.text).plain);
    if (!odd) return undefined;
    return ErrorResponse({
      severity: "ERROR",
      code: "42501",
      message: "agate: COPY … TO with DELIMITER, NULL, QUOTE, ESCAPE or ENCODING cannot be masked by column, and this statement's policy masks columns",
      detail: `masked columns: ${verdict.mask.columns.map((c) => c.rule).join(", ")}`,
      hint: "Use COPY in the default text or CSV syntax, or in binary, or read the rows with SELECT.",
    });
  }

  /** Indexes of the statements that are a COPY … TO STDOUT whose fields must be masked one by one (binary, or under column rules). */
  private copiesToDescribe(command: Command, mask: CompiledMask): number[] {
    if (mask.empty) return [];
    const out: number[] = [];
    command.sql?.statements.forEach((s, i) => {
      if (s.copy?.direction === "to" && s.copy.stdio && (s.copy.format === "binary" || mask.columns.length > 0)) out.push(i);
    });
    return out;
  }

  /**
   * Have the target describe what the COPY statements `which` of `command`
   * read, on this connection (the client's search_path, temporary tables
   * and transaction), before the COPY runs: Parse, Bind, Describe and Close
   * of agate's own statement and portal, then Sync (`sync`: a simple query,
   * whose ReadyForQuery is kept from the client) or Flush (inside the
   * client's extended batch). The answers never reach the client, but for
   * an error inside an extended batch: the target then skips the rest of
   * the batch, and the error stands for the COPY's.
   */
  private async describeCopies(command: Command, which: number[], sync: boolean): Promise<Map<number, Buffer | undefined>> {
    const out = new Map<number, Buffer | undefined>();
    for (const i of which) {
      const source = copySource(command.sql!.statements[i]!.text);
      if (source.describe === undefined || (!sync && this.failedBatch === this.syncsSent + 1)) {
        out.set(i, undefined);
        continue;
      }
      const name = `${RESERVED_PREFIX}copy`;
      const answer = new Promise<Buffer | undefined>((resolve) => {
        for (const m of [Parse(name, source.describe!), Bind(name, name), DescribePortal(name), Close("P", name), Close("S", name), sync ? Sync : Flush]) this.toUpstream.add(m);
        if (sync) this.ownSyncs.add(++this.syncsSent);
        const at = sync ? this.syncsSent : this.syncsSent + 1;
        for (let n = 0; n < 4; n++) this.acks.push({ sync: at, swallow: true }); // ParseComplete, BindComplete, CloseComplete × 2
        this.replies.push({ kind: "describe", sync: at, portal: name, swallow: true, mask: NO_MASK, copy: resolve });
        this.flushUpstream();
      });
      out.set(i, await answer);
    }
    return out;
  }

  private sendQuery(f: Frame): void {
    this.toUpstream.add(f.raw);
    this.syncsSent++;
  }

  private async onParse(f: Frame): Promise<void> {
    let read: ParseMsg | undefined;
    const command = this.command((decode) => (read = readParse(f.body, decode)).text);
    const p = read!;
    if (p.name.startsWith(RESERVED_PREFIX)) return this.refuseInBatch(reservedName("prepared statement", p.name));
    await this.enrich(command, { paramTypes: p.paramTypes });
    const verdict = await this.check(command, true, { recordDenialsOnly: true });
    if (!verdict) return;
    if (!verdict.allow) {
      this.refuseInBatch(this.refusal(command, verdict));
      return;
    }
    this.statements.set(p.name, { text: p.text, facts: command.sql, invalid: command.invalid, verdict, paramTypes: p.paramTypes });
    this.forward(f);
  }

  private async onExecute(f: Frame): Promise<void> {
    const portalName = readExecute(f.body);
    const portal = this.portals.get(portalName);
    const prepared = portal && this.statements.get(portal.statement);
    // A portal bound to a statement agate did not see parsed (one made with SQL PREPARE, or none, which the
    // target refuses at Bind) is decided as EXECUTE of it; a portal agate did not see bound (a cursor from
    // DECLARE) as a FETCH from it: decide on exactly that.
    const command: Command = prepared
      ? { seq: ++this.seq, text: prepared.text, sql: prepared.facts, invalid: prepared.invalid, params: paramsAsText(portal.params, prepared.paramTypes) }
      : portal && portal.statement !== ""
        ? { ...this.command(`EXECUTE ${quoteIdent(portal.statement)}`), params: portal.params }
        : this.command(`FETCH ALL FROM ${quoteIdent(portalName)}`);
    const estimated = await this.enrich(command, { params: portal?.params, paramTypes: prepared?.paramTypes });
    // A write's facts completed at Execute (the planner's estimate with the Bind values) are decided anew.
    const verdict = await this.check(command, true, { prior: estimated ? undefined : prepared?.verdict, onHold: this.onHold, durable: this.durableBefore(command) });
    if (!verdict) return;
    const refused = verdict.allow ? this.unmaskable(command, verdict) : this.refusal(command, verdict);
    if (refused) {
      this.refuseInBatch(refused);
      return;
    }
    const sync = this.syncsSent + 1;
    if (!verdict.mask.empty && !this.described.has(portalName)) {
      // The masker needs the portal's columns (and their formats): ask for them; the client does not see the answer.
      this.toUpstream.add(DescribePortal(portalName));
      this.described.add(portalName);
      this.replies.push({ kind: "describe", sync, portal: portalName, swallow: true, mask: NO_MASK });
    }
    const copies = this.copiesToDescribe(command, verdict.mask).filter((i) => i === 0);
    const copyColumns = copies.length > 0 ? await this.describeCopies(command, copies, false) : undefined;
    if (this.closed) return;
    if (this.isBarrier(command)) this.lexBarrier = { batch: true };
    if (command.sql?.statements.some((s) => s.kind === "transaction" && s.tag !== "SAVEPOINT" && s.tag !== "RELEASE")) this.batchLeftBlock = true;
    this.forward(f);
    this.backend.sent(this.syncsSent + 1, copiesIn(command.sql?.statements));
    this.replies.push({ kind: "execute", sync, portal: portalName, mask: verdict.mask, ...(copyColumns ? { copyColumns } : {}), ...(command.sql ? { facts: this.throughNames(command.sql), decided: command.sql.statements } : {}) });
    this.lastMask = verdict.mask;
    const at = this.syncsSent + 1;
    const seqs = this.outcomeAt.get(at);
    if (seqs) seqs.push(command.seq);
    else this.outcomeAt.set(at, [command.seq]);
  }

  private onSync(f: Frame): void {
    if (this.discarding && this.batchForwarded === 0) {
      // Nothing of this batch reached the target: answer the Sync ourselves, in order.
      this.injectAfterReplies(["ReadyForQuery"]);
    } else {
      this.toUpstream.add(f.raw);
      this.syncsSent++;
      // The batch's settings are reported before this Sync's ReadyForQuery.
      if (this.lexBarrier && "batch" in this.lexBarrier) this.lexBarrier = { z: this.syncsSent };
    }
    this.discarding = false;
    this.batchForwarded = 0;
    this.batchLeftBlock = false;
  }

  /**
   * Wait until the settings the last barrier left are known (lexing.ts):
   * for its ReadyForQuery, whose ParameterStatus reports come before it, or,
   * inside an unfinished extended batch, for the answer to agate's probe.
   */
  private async settleLexing(): Promise<void> {
    const b = this.lexBarrier!;
    if ("z" in b) {
      if (this.zReceived < b.z) await new Promise<void>((resolve) => this.zWaiters.push({ z: b.z, resolve }));
    } else if (b.aborted || this.failedBatch === this.syncsSent + 1) {
      b.aborted = true;
      return; // the target discards everything up to the Sync, whatever its text says
    } else if (!(await this.probeLexing())) {
      b.aborted = true;
      return;
    }
    if (this.lexBarrier === b) this.lexBarrier = undefined;
  }

  /**
   * Ask the target for the lexing settings in the middle of an extended
   * batch: SHOW each one through named statements and portals of agate's own,
   * closed again, then Flush. The answers never reach the client. Resolves
   * false when the batch had already failed (the target then skips the probe
   * with everything else up to the Sync).
   */
  private probeLexing(): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      const sync = this.syncsSent + 1;
      let left = PROBE.length;
      let failed = false;
      const answered = (ok: boolean) => {
        failed ||= !ok;
        if (--left === 0) resolve(!failed);
      };
      PROBE.forEach((setting, i) => {
        const name = `${RESERVED_PREFIX}lexing.${i}`;
        for (const m of [Parse(name, `SHOW ${setting}`), Bind(name, name), Execute(name), Close("P", name), Close("S", name)]) this.toUpstream.add(m);
        for (let n = 0; n < 4; n++) this.acks.push({ sync, swallow: true }); // ParseComplete, BindComplete, CloseComplete × 2
        this.replies.push({ kind: "execute", sync, swallow: true, mask: NO_MASK, probe: { setting, answered } });
      });
      this.toUpstream.add(Flush);
      this.flushUpstream();
    });
  }

  /**
   * Parse the SQL, read from its message as the target will read it (the
   * session's client encoding); text agate cannot read so, or a syntax error,
   * makes the command invalid (refused, never forwarded). `read` may be
   * called twice: without a decoder it reads UTF-8, for the record.
   */
  private command(read: string | ((decode?: TextDecode) => string)): Command {
    const seq = ++this.seq;
    let text: string;
    try {
      text = typeof read === "string" ? read : read(this.lexing.decode);
    } catch (e) {
      if (!(e instanceof AgateError) || e.code !== "SQL_ENCODING") throw e;
      return { seq, text: typeof read === "string" ? read : read(), invalid: { code: "SQL_ENCODING", message: e.message } };
    }
    try {
      return { seq, text, sql: analyzeSql(this.lexing.standard(text, scanSql)) };
    } catch (e) {
      // Any analyser failure (a syntax error, too deep, a parser fault, the parser restarting) refuses the
      // statement as an ordinary error; the session stays usable, as PostgreSQL's does.
      return { seq, text, invalid: analysisFailure(e) };
    }
  }

  /**
   * Complete the command's SQL facts with what the target's own catalog
   * knows (functions, relations, settings, the planner's row estimates),
   * before the policy sees them. The facts from the parser are frozen and
   * shared through its cache: replace `command.sql`, never change it.
   */
  private async enrich(command: Command, bound: { paramTypes?: number[]; params?: (string | null)[] } = {}): Promise<boolean> {
    try {
      const lookup = catalogFacts(this.catalog).complete(command, this.guard.policyVersion);
      if (lookup) await lookup;
      return await this.estimates.enrich({ guard: this.guard, session: this.session, estimator: this.catalog.estimator, log: this.log, prepared: this.prepared }, command, bound);
    } catch (e) {
      // The facts could not be completed: refuse the statement (fail closed), keep the session.
      this.log("warn", "a statement's facts could not be completed; it is refused", { session: this.session.id, error: asError(e).message });
      command.invalid = analysisFailure(e);
      return false;
    }
  }
  private readonly estimates = new WriteEstimates();

  /**
   * When `command`'s record must be durable (early.ts): before its answer, when
   * it provably cannot take durable effect first, else before it is forwarded.
   * Inside a transaction block only when the target reported one and nothing
   * forwarded since can have ended it.
   */
  private durableBefore(command: Command): DurableBefore {
    const facts = command.sql;
    if (facts === undefined || command.invalid !== undefined || facts.catalog?.known !== true) return "forward";
    // A client far ahead of the answers (a pipeline it does not read) gets the pace of the log: each statement
    // waits for its record before it is forwarded, so what the session holds for it stays bounded.
    if (this.replies.length >= MAX_EARLY_AHEAD) return "forward";
    const inBlock = this.txStatus === 0x54 && this.syncsSent === this.zReceived && !this.batchLeftBlock;
    return forwardEarly(facts.statements, inBlock, catalogFacts(this.catalog)) ? "response" : "forward";
  }

  /** Ask the guard; an audit failure refuses the command (fail closed) and returns undefined. */
  private async check(command: Command, extended: boolean, opts?: Parameters<Guard["check"]>[2]): Promise<Verdict | undefined> {
    try {
      const verdict = await this.guard.check(this.session, command, opts);
      // Forwarded before its record is durable: everything the client gets from here on waits for it.
      if (opts?.durable === "response" && verdict.allow) this.gate.hold(verdict.durable);
      return verdict;
    } catch (e) {
      const err = e instanceof AgateError ? e : new AgateError("GUARD_FAILED", String(e));
      this.log("error", "command refused: the guard failed", { session: this.session.id, code: err.code, error: err.message });
      const reply = ErrorResponse({ severity: "ERROR", code: "58000", message: `agate could not record the statement, so it was not run: ${err.message}`, hint: "The gateway's audit log is unavailable; ask its operator." });
      if (extended) this.refuseInBatch(reply);
      else this.refuseQuery(reply);
      return undefined;
    }
  }

  /** A statement is held for approval: tell the client now (a NOTICE; psql prints it while it waits). */
  private readonly onHold = (req: HeldRequest, link?: string): void => {
    const who = `${req.approvers.join(", ") || "the approvers"}${req.min_approvers > 1 ? `, ${req.min_approvers} of them` : ""}`;
    this.injectAfterReplies([
      NoticeResponse({
        severity: "NOTICE",
        code: "01000",
        message: `agate: this statement waits for approval by ${who}: request ${req.id}, until ${req.expires_at}`,
        detail: [req.estimate, link && `Approve or deny at ${link}`].filter(Boolean).join(". ") || undefined,
        hint: `An approver runs: agate approvals approve ${req.id} --reason "…"  (cancel with Ctrl-C to withdraw it)`,
      }),
    ]);
  };

  private refusal(command: Command, verdict: Verdict): Buffer {
    if (command.invalid?.code === "SQL_PARSE") {
      return ErrorResponse({ severity: "ERROR", code: "42601", message: command.invalid.message });
    }
    const analysis = command.invalid && ANALYSIS_SQLSTATE[command.invalid.code];
    if (analysis) {
      return ErrorResponse({ severity: "ERROR", code: analysis, message: `agate: ${command.invalid!.message}`, detail: `session ${this.session.id}, audit record ${verdict.record}` });
    }
    if (command.invalid?.code === "SQL_ENCODING") {
      return ErrorResponse({ severity: "ERROR", code: "22021", message: `agate: ${command.invalid.message}`, detail: `session ${this.session.id}, audit record ${verdict.record}` });
    }
    const reasons = verdict.decision.reasons.length ? verdict.decision.reasons.join("; ") : "no policy rule allowed it";
    return ErrorResponse({
      severity: "ERROR",
      code: "42501",
      message: `agate: statement refused by policy: ${reasons}`,
      detail: `session ${this.session.id}, audit record ${verdict.record}`,
    });
  }

  private async refuseSimple(command: Command): Promise<void> {
    const verdict = await this.check(command, false);
    if (verdict) this.refuseQuery(this.refusal(command, verdict));
  }

  /**
   * Whether a refusal must be an error on the target too. PostgreSQL aborts
   * a transaction block on any error (its COMMIT then rolls back), and rolls
   * back an extended batch's implicit transaction at the Sync: a refusal that
   * only agate answered would leave both usable. So unless the session is
   * idle with nothing in flight, agate sends the target a statement that
   * fails in parse analysis (REFUSED_SQL: nothing runs) and writes its own
   * error in place of the target's; the ReadyForQuery is the target's.
   */
  private targetMustFail(): boolean {
    return this.txStatus !== 0x49 || this.syncsSent !== this.zReceived || this.batchForwarded > 0;
  }

  /** A Query was refused: its error and ReadyForQuery go where the target's would. */
  private refuseQuery(error: Buffer): void {
    if (!this.targetMustFail()) return this.injectAfterReplies([error, "ReadyForQuery"]);
    this.toUpstream.add(Query(REFUSED_SQL));
    this.syncsSent++;
    this.replies.push({ kind: "query", sync: this.syncsSent, mask: NO_MASK, refusal: error });
  }

  /** An extended-protocol message was refused: its error goes where the target's would, then discard until Sync. */
  private refuseInBatch(error: Buffer): void {
    if (this.targetMustFail()) {
      // The target fails the batch here too, and skips the rest of it, as it would after its own error.
      this.toUpstream.add(Parse(`${RESERVED_PREFIX}refused`, REFUSED_SQL));
      this.toUpstream.add(Flush); // a client that waits on its own Flush gets the error now, as from PostgreSQL
      this.batchForwarded++;
      this.replies.push({ kind: "execute", sync: this.syncsSent + 1, mask: NO_MASK, refusal: error });
    } else {
      this.injectAfterReplies([error]);
    }
    this.discarding = true;
  }

  /** Write now if the target owes no replies, else after the replies it owes. */
  private injectAfterReplies(items: Injected[]): void {
    if (this.syncsSent === this.zReceived) this.writeClient(Buffer.concat(items.map((i) => this.materialize(i))));
    else for (const i of items) push(this.injectAfter, this.syncsSent, i);
  }

  private materialize(i: Injected): Buffer {
    return i === "ReadyForQuery" ? ReadyForQuery(this.txStatus) : inClientEncoding(i, this.lexing.encoding);
  }

  private flushUpstream(): void {
    if (this.toUpstream.empty || this.closed) return;
    const out = this.toUpstream.take();
    countRelayed(out.length);
    if (!this.upstream.socket.write(out)) this.client.pause();
  }

  // ── target → client ──────────────────────────────────────────────────

  private fromUpstream(chunk: Buffer): void {
    const framer = this.upstream.framer;
    framer.push(chunk);
    if (this.heldFrame) return;
    const out = this.outbox;
    try {
      for (let f = framer.next(); f; f = framer.next()) {
        const wait = this.onUpstreamMessage(f, out);
        if (wait) {
          this.waitFor(f, wait);
          break;
        }
      }
    } catch (e) {
      this.fatal(e);
      return;
    }
    if (!out.empty) this.writeClient(out.takeParts());
    this.noteIdle();
  }

  /** Column origins are being looked up: hold `f` and everything after it, then go on in order. */
  private waitFor(f: Frame, wait: Promise<void>): void {
    this.heldFrame = f;
    this.upstream.socket.pause();
    wait.then(
      () => {
        if (this.closed) return;
        const held = this.heldFrame!;
        this.heldFrame = undefined;
        this.lookedUp = true;
        try {
          this.onUpstreamMessage(held, this.outbox);
        } catch (e) {
          this.fatal(e);
          return;
        } finally {
          this.lookedUp = false;
        }
        // (a client above its high-water mark resumes the target on drain)
        if (!this.client.writableNeedDrain) this.upstream.socket.resume();
        this.fromUpstream(EMPTY);
      },
      (e) => this.fatal(e),
    );
  }

  /** What a ParameterStatus or a notification arriving now follows: the reply being answered, or the one just answered. */
  private causedBy(): { mask: CompiledMask; facts?: SqlFacts } {
    const r = this.currentReply() ?? this.answered;
    return r && r.kind !== "describe" ? r : { mask: this.lastMask };
  }

  /** The reply the target is answering now, if any. */
  private currentReply(): Reply | undefined {
    const r = this.replies[0];
    return r !== undefined && r.sync === this.zReceived + 1 ? r : undefined;
  }

  /** What the target answers reaches the client here; a promise means: wait for column origins, then hand `f` in again. */
  private onUpstreamMessage(f: Frame, out: Outbox): Promise<void> | undefined {
    switch (f.type) {
      case T.DataRow: {
        const r = this.currentReply();
        if (r?.probe) {
          this.lexing.report(r.probe.setting, readProbeValue(f.body));
          break;
        }
        this.resultRows++;
        if (r?.rows) this.resultBytes += r.rows.rowInto(f.chunk, f.at, f.end, out);
        else if (r?.kind === "execute" && !r.mask.empty) return this.executeRows(f, out);
        else if (!(r && r.kind !== "describe" ? r.mask : this.lastMask).empty) throw new Error("the target sent rows agate cannot match with their columns, so they cannot be masked");
        else {
          this.resultBytes += f.end - f.at;
          out.addRange(f.chunk, f.at, f.end);
        }
        break;
      }
      case T.RowDescription:
        return this.onRowDescription(f, out);
      case T.NoData: {
        const r = this.currentReply();
        if (r?.kind === "describe") this.replies.shift();
        r?.copy?.(undefined);
        if (!r?.swallow) out.add(f.raw);
        break;
      }
      case T.CommandComplete:
      case T.PortalSuspended:
      case T.EmptyQueryResponse: {
        const r = this.currentReply();
        if (r?.probe) {
          this.replies.shift();
          r.probe.answered(true);
          break;
        }
        if (f.type === T.CommandComplete) {
          const tag = f.body.toString("utf8", 0, f.body.length - 1);
          this.checkTag(r, tag);
          this.tags.push(tag);
          if (this.answering(r)?.kind === "ddl") this.lineageChanged();
        }
        this.endRows(r);
        if (r && r.kind !== "describe") this.answered = r;
        if (r?.kind === "execute") this.replies.shift();
        else if (r && f.type !== T.PortalSuspended) r.done = (r.done ?? 0) + 1;
        this.copyMask = undefined;
        this.endCopy();
        out.add(f.raw);
        break;
      }
      case T.ErrorResponse: {
        const r = this.currentReply();
        if (r?.copy && this.ownSyncs.has(r.sync)) {
          // agate's own describe failed (the COPY after it will say why, if it fails too): the target skips to its Sync
          while (this.replies[0]?.sync === r.sync) this.replies.shift()!.copy?.(undefined);
          while (this.acks[0]?.sync === r.sync) this.acks.shift();
          break;
        }
        if (r?.kind === "query") this.checkStatementCount(r);
        // agate's failing statement for a refusal: the client gets agate's error in its place. While a Parse, Bind
        // or Close forwarded before it in the batch is unanswered, the error is that message's, and the target
        // skips agate's statement with the rest of the batch.
        if (r?.refusal && r.kind !== "query" && this.acks[0]?.sync === r.sync) r.refusal = undefined;
        const masked = r?.refusal ? inClientEncoding(r.refusal, this.lexing.encoding) : maskNotice(f.raw, r?.mask ?? this.lastMask, this.tally.detectors, this.taintOf(r));
        if (!this.error && !r?.refusal) {
          this.error = readErrorFields(masked.subarray(5));
          this.errorMask = r && r.kind !== "describe" ? r.mask : undefined;
        }
        if (r && r.kind !== "describe" && !r.refusal) this.answered = r;
        // The target skips the rest of an extended-protocol batch; so do its replies.
        this.endRows(r);
        if (r && r.kind !== "query") {
          while (this.replies[0] && this.replies[0].sync === r.sync && this.replies[0].kind !== "query") {
            const x = this.replies.shift()!;
            x.probe?.answered(false);
            x.copy?.(undefined);
          }
        }
        const batch = this.zReceived + 1;
        this.failedBatch = batch;
        this.backend.failed(batch);
        while (this.acks[0]?.sync === batch) this.acks.shift()!.answered?.(false);
        // agate's probes in this batch are skipped with the rest, wherever they stand in it.
        for (let i = this.replies.length - 1; i >= 0; i--) {
          const x = this.replies[i]!;
          if (x.probe && x.sync === batch) this.replies.splice(i, 1)[0]!.probe!.answered(false);
        }
        this.copyMask = undefined;
        this.endCopy();
        out.add(masked);
        break;
      }
      case T.NoticeResponse:
        out.add(maskNotice(f.raw, this.currentReply()?.mask ?? this.lastMask, this.tally.detectors, this.taintOf(this.currentReply())));
        break;
      case T.NotificationResponse: {
        const by = this.causedBy();
        out.add(maskNotificationAs(f.raw, by.mask, by.facts, this.tally.detectors));
        break;
      }
      case T.CopyOutResponse: {
        const r = this.currentReply();
        const mask = r?.mask ?? this.lastMask;
        if (!mask.empty && (f.body[0] === 1 || mask.columns.length > 0)) {
          const planned = this.planCopy(f.body, r);
          if (planned) return planned;
        } else this.copyMask = mask.empty ? undefined : mask;
        out.add(f.raw);
        break;
      }
      case T.CopyData:
        if (this.copyRows) {
          const masked = this.copyRows.data(f.raw);
          if (masked) this.relayRow(masked, out);
        } else this.relayRow(this.copyMask ? maskCopyData(f.raw, this.copyMask, this.tally.detectors) : f.raw, out);
        break;
      case T.CopyDone:
        this.copyRows?.done();
        out.add(f.raw);
        break;
      case T.ParameterStatus: {
        const [name, value] = f.body.toString("utf8").split("\0");
        this.lexing.report(name ?? "", value ?? "");
        const by = this.causedBy();
        out.add(maskParameterStatus(f.raw, name ?? "", value ?? "", by.mask, by.facts, this.tally.detectors));
        break;
      }
      case T.ParseComplete:
      case T.BindComplete:
      case T.CloseComplete: {
        const ack = this.acks.shift();
        ack?.answered?.(true);
        if (!ack?.swallow) out.add(f.raw);
        break;
      }
      case T.CopyInResponse:
        if (!this.backend.copyIn(this.zReceived + 1)) throw new TargetDisagrees("the target started reading COPY data for a statement agate did not decide as COPY … FROM STDIN; it may have read the statement differently, so the session is closed");
        out.add(f.raw);
        break;
      case T.ReadyForQuery: {
        const n = ++this.zReceived;
        this.txStatus = f.body[0] ?? this.txStatus;
        // Idle: every SET LOCAL and every rollback has been applied, and reported before this message.
        if (this.txStatus === 0x49 && this.touchedSync <= n) this.touchedSync = 0;
        while (this.acks.length > 0 && this.acks[0]!.sync <= n) this.acks.shift()!.answered?.(false);
        this.backend.ready(n);
        for (let i = this.zWaiters.length - 1; i >= 0; i--) if (this.zWaiters[i]!.z <= n) this.zWaiters.splice(i, 1)[0]!.resolve();
        // Outside a transaction block, cursors without HOLD are gone; one WITH HOLD is then unknown (masked whole).
        if (this.txStatus === 0x49) this.cursors.clear();
        if (!this.ownSyncs.delete(n)) out.add(f.raw);
        const after = this.injectAfter.get(n);
        if (after) {
          for (const i of after) out.add(this.materialize(i));
          this.injectAfter.delete(n);
        }
        while (this.replies[0] && this.replies[0].sync <= n) this.endRows(this.replies.shift());
        this.copyMask = undefined;
        this.endCopy();
        this.completeOutcome(n);
        break;
      }
      default:
        out.add(f.raw);
    }
    return undefined;
  }

  /**
   * A RowDescription: the answer to a Describe (kept for the portal's
   * Execute; agate's own is not relayed) or the start of a simple-query
   * result, whose masker is planned here.
   */
  private onRowDescription(f: Frame, out: Outbox): Promise<void> | undefined {
    const r = this.currentReply();
    if (r?.copy) {
      this.replies.shift();
      r.copy(Buffer.from(f.body));
      return undefined;
    }
    if (r?.kind === "describe") {
      const next = this.replies[1];
      if (r.portal !== undefined && next?.kind === "execute" && next.portal === r.portal && next.sync === r.sync && !next.mask.empty) {
        // The Execute this Describe was sent for: plan its rows now.
        const planned = this.plan(f.body, next);
        if (planned) return planned;
      }
      if (r.portal !== undefined) this.portalRows.set(r.portal, Buffer.from(f.body));
      this.replies.shift();
      if (!r.swallow) out.add(f.raw);
      return undefined;
    }
    if (r && !r.mask.empty) {
      const planned = this.plan(f.body, r);
      if (planned) return planned;
    } else if (!r && !this.lastMask.empty) {
      throw new Error("the target sent columns agate cannot match with a statement, so they cannot be masked");
    }
    out.add(f.raw);
    return undefined;
  }

  /**
   * The target's command tag must agree with the statement it answers
   * (tags.ts): otherwise the target ran something other than what was decided
   * and recorded, and the session is closed.
   */
  private checkTag(r: Reply | undefined, tag: string): void {
    const decided = r?.decided;
    if (decided === undefined || r === undefined) return;
    const st = r.kind === "query" ? decided[r.done ?? 0] : decided[0];
    if (st === undefined || !tagAgrees(st, tag)) {
      throw new TargetDisagrees(`the target reported "${tagVerb(tag)}" where agate decided ${st ? `"${st.tag}"` : "no further statement"} (decided: ${decided.map((s) => s.tag).join("; ")}); it may have read the statement differently, so the session is closed`);
    }
  }

  /** The statement (its facts, through cursors and prepared statements) a reply's next message answers. */
  private answering(r: Reply | undefined): SqlStatement | undefined {
    const st = r?.facts?.statements;
    return st === undefined || r === undefined ? undefined : r.kind === "query" ? st[r.done ?? 0] : st[0];
  }

  /** The column rule that taints the statement a reply answers (rows.ts statementTaint); errors and notices lose echoed values. */
  private taintOf(r: Reply | undefined): ReturnType<typeof statementTaint> {
    if (r === undefined || r.mask.columns.length === 0) return undefined;
    const st = this.answering(r);
    // A reply agate cannot match with a statement: tainted under the first rule (fail closed).
    return st === undefined ? r.mask.columns[0] : statementTaint(r.mask, st);
  }

  /** A DDL statement completed: column origins, catalog facts and what estimates know of tables may have changed, so the caches start afresh. */
  private lineageChanged(): void {
    this.catalog.invalidate();
    catalogFacts(this.catalog).invalidate();
  }

  /** An error answers the statement after the last CommandComplete: there must be one. */
  private checkStatementCount(r: Reply): void {
    if (r.decided !== undefined && (r.done ?? 0) >= r.decided.length) {
      throw new TargetDisagrees(`the target answered a statement after the ${r.decided.length} agate decided (${r.decided.map((s) => s.tag).join("; ")}); it may have read the statement differently, so the session is closed`);
    }
  }

  /** A result ended: what its masker did goes into the tally for the outcome record. */
  private endRows(r: Reply | undefined): void {
    r?.rows?.settle();
    if (r) r.rows = undefined;
  }

  /** DataRows of an Execute whose portal was described earlier: plan from that description. */
  private executeRows(f: Frame, out: Outbox): Promise<void> | undefined {
    const r = this.currentReply()!;
    const desc = this.portalRows.get(r.portal ?? "");
    if (!desc) throw new Error(`rows of portal "${r.portal}" arrived without its columns, so they cannot be masked`);
    const planned = this.plan(desc, r);
    if (planned) return planned;
    this.resultBytes += r.rows!.rowInto(f.chunk, f.at, f.end, out);
    return undefined;
  }

  /** A result row (DataRow, CopyData) on its way to the client, as sent: counted for the outcome record. */
  private relayRow(raw: Buffer, out: Outbox): void {
    this.resultBytes += raw.length;
    out.add(raw);
  }

  /** Plan `reply`'s masker from a RowDescription body; a promise when column origins must be looked up first. */
  private plan(body: Buffer, reply: Reply): Promise<void> | undefined {
    const fields = readRowDescription(body);
    const lookup = this.lookUp(fields, reply.mask);
    if (lookup) return lookup;
    this.endRows(reply);
    reply.rows = this.masker(fields, reply);
    return undefined;
  }

  /** Look up what masking `fields` needs and the catalog does not hold (column origins, user-defined types); undefined when nothing is missing. */
  private lookUp(fields: Field[], mask: CompiledMask): Promise<void> | undefined {
    if (this.lookedUp) return undefined;
    const missing = mask.columns.length > 0 ? fields.filter((x) => x.table !== 0 && this.catalog.cached(x.table, x.attnum) === null).map((x) => x.table) : [];
    // User-defined types (domains, enums, citext …): what they are read as
    const types = !mask.empty ? fields.filter((x) => x.type >= FIRST_USER_OID && this.catalog.cachedType(x.type) === null).map((x) => x.type) : [];
    if (missing.length === 0 && types.length === 0) return undefined;
    return Promise.all([missing.length > 0 && this.catalog.load(missing), types.length > 0 && this.catalog.loadTypes(types)]).then(
      () => {},
      (e: Error) => this.log("warn", "column origins or types could not be looked up; what they hide is masked whole", { session: this.session.id, error: e.message }),
    );
  }

  private masker(fields: Field[], reply: Reply): ResultMasker {
    const origin: OriginOf = (table, attnum) => {
      const o = this.catalog.cached(table, attnum);
      return o === null ? "unknown" : o;
    };
    // A simple query answers its statements in order, each ending in CommandComplete: this result is statement `done`'s.
    const facts = reply.kind === "query" && reply.facts && reply.facts.statements[reply.done ?? 0] ? { multi: false, statements: [reply.facts.statements[reply.done ?? 0]!] } : reply.facts;
    return new ResultMasker(fields, reply.mask, facts, origin, this.tally, (oid) => this.catalog.cachedType(oid) ?? oid, (oid) => this.catalog.userType(oid), this.slabs);
  }

  /**
   * A CopyOutResponse of a COPY … TO whose fields are masked one by one:
   * its masker, from the columns agate had described (describeCopies). A
   * COPY whose columns are not known, or do not match, cannot be masked:
   * the session is closed.
   */
  private planCopy(body: Buffer, reply: Reply | undefined): Promise<void> | undefined {
    const index = reply?.kind === "query" ? (reply.done ?? 0) : 0;
    const described = reply?.copyColumns?.get(index);
    const statement = reply?.decided?.[index];
    const columns = body.readInt16BE(1);
    const fields = described ? readRowDescription(described) : undefined;
    if (!reply || !statement?.copy || !fields || fields.length !== columns) {
      throw new Error(`the columns of this COPY … TO could not be described${fields ? ` (${fields.length} described, ${columns} copied: a table with generated columns needs a column list)` : ""}, so its rows cannot be masked; the session is closed`);
    }
    const format = body[0] === 1 ? "binary" : statement.copy.format === "csv" ? "csv" : "text";
    for (const x of fields) x.format = format === "binary" ? 1 : 0;
    const lookup = this.lookUp(fields, reply.mask);
    if (lookup) return lookup;
    this.endCopy();
    this.copyRows = new CopyMasker(this.masker(fields, reply), format, columns, format !== "binary" && copySource(statement.text).header);
    return undefined;
  }

  private endCopy(): void {
    this.copyRows?.settle();
    this.copyRows = undefined;
  }

  private completeOutcome(n: number): void {
    const seqs = this.outcomeAt.get(n);
    if (seqs) {
      this.outcomeAt.delete(n);
      let rows = 0;
      for (const t of this.tags) rows += tagRows(t);
      // A portal read in pieces (PortalSuspended) has no tag for the rows it sent
      rows = Math.max(rows, this.resultRows);
      const t = this.tally;
      const masked = t.rows > 0 || Object.keys(t.detectors).length > 0 || Object.keys(t.columns).length > 0 ? { masked: { rows: t.rows, columns: t.columns, detectors: t.detectors } } : {};
      this.estimates.answered(seqs, this.error !== undefined, this.txStatus);
      this.guard.outcome(this.session, seqs, { tags: this.tags, rows, bytes: this.resultBytes, ...(this.error ? { error: this.error } : {}), ...masked }, this.error ? this.errorMask : undefined);
      this.resultBytes = 0;
      this.resultRows = 0;
      if (t.rows > 0 || Object.keys(t.detectors).length > 0 || Object.keys(t.columns).length > 0) this.tally = newTally();
    }
    this.tags = [];
    this.error = undefined;
    this.errorMask = undefined;
  }

  /** Send `buf` (or its parts, in order, not copied into one) to the client; pause the target while the client's socket is above its high-water mark. */
  private writeClient(buf: Buffer | Buffer[]): void {
    if (this.closed) return;
    const slabs = this.slabs.seal();
    if (this.gate.open) return this.writeNow(buf, slabs);
    // Held behind a record's durability (durable-gate.ts): queued as a copy, so the masked rows' slabs are free at once.
    this.gate.send(slabs || Array.isArray(buf) ? Buffer.concat(Array.isArray(buf) ? buf : [buf]) : buf);
    if (slabs) this.slabs.release(slabs);
  }

  /**
   * Write to the client now: what the gate lets through (also after the session ended, for answers whose records
   * became durable since), or parts in order, not copied into one. `slabs`: masked rows' slabs (rows.ts RowSlabs),
   * reused once the last write carrying them has been flushed.
   */
  private writeNow(buf: Buffer | Buffer[], slabs?: Buffer[]): void {
    if (this.client.destroyed) return;
    const parts = Array.isArray(buf) ? buf : [buf];
    let ok = true;
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i]!;
      countRelayed(part.length);
      ok = slabs && i === parts.length - 1 ? this.client.write(part, (e?: Error | null) => e || this.slabs.release(slabs)) : this.client.write(part);
    }
    if (!ok) this.upstream.socket.pause();
  }

  /** Where this session's result maskers write masked rows. */
  private readonly slabs = new RowSlabs(true);

  // ── ending ───────────────────────────────────────────────────────────

  /** A protocol violation or internal fault: tell the client (08P01) and close both sides. */
  private fatal(e: unknown): void {
    const violation = e instanceof ProtocolViolation;
    const message = violation ? `agate: protocol violation: ${(e as Error).message}` : e instanceof TargetDisagrees || e instanceof AgateError ? `agate: ${e.message}` : `agate: internal error: ${(e as Error)?.message ?? String(e)}`;
    this.log(violation ? "warn" : "error", "session closed", { session: this.session.id, error: message });
    if (!this.closed) {
      // What the gate holds waits for records that may never be durable: it is dropped, never sent after this.
      this.gate.drop();
      this.client.end(inClientEncoding(ErrorResponse({ severity: "FATAL", code: violation ? "08P01" : "XX000", message }), this.lexing.encoding));
      // Read nothing more (the rest of an oversized message stays unread); give the client a moment to read
      // the error before the connection is dropped, whatever it still sends.
      this.client.pause();
      this.client.once("finish", () => setTimeout(() => this.client.destroy(), FATAL_LINGER_MS).unref());
    }
    this.end(message);
  }

  /**
   * End the session for a limit (an idle timeout, the session lifetime): a
   * FATAL `sqlstate` error to the client, as PostgreSQL ends a backend, and
   * both connections closed. The target rolls back an open transaction.
   */
  terminate(sqlstate: string, why: AgateError): void {
    if (this.closed) return;
    this.log("info", "session terminated", { session: this.session.id, code: why.code, reason: why.message });
    this.gate.drop(); // answers still held are not sent after the FATAL error
    this.client.end(inClientEncoding(ErrorResponse({ severity: "FATAL", code: sqlstate, message: `agate: ${why.message}` }), this.lexing.encoding));
    this.client.pause();
    this.client.once("finish", () => setTimeout(() => this.client.destroy(), FATAL_LINGER_MS).unref());
    this.endCode = why.code;
    this.end(why.message);
  }

  private endCode: string | undefined;

  /** `graceful`: let the forwarded Terminate reach the target before closing. */
  private end(reason: string, graceful = false): void {
    if (this.closed) return;
    this.closed = true;
    this.clock?.stop();
    for (const w of this.zWaiters.splice(0)) w.resolve();
    for (const r of this.replies) r.probe?.answered(false);
    for (const a of this.acks.splice(0)) a.answered?.(false);
    this.backend.close();
    if (graceful) this.upstream.socket.end();
    else this.upstream.socket.destroy();
    // Answers still held go out once their records are durable, then the client's side closes.
    this.gate.whenDrained(() => {
      if (!this.client.destroyed) this.client.end();
    });
    this.onEnd({ reason, commands: this.seq, ...(this.endCode ? { code: this.endCode } : {}) });
  }
}

const EMPTY = Buffer.alloc(0);

/**
 * SQLSTATEs of the analyser's refusals that are no syntax error: as
 * PostgreSQL answers a statement too deep for its stack (54001), a fault of
 * its own (XX000, as an ERROR) or a resource not ready (58000).
 */
const ANALYSIS_SQLSTATE: Record<string, string> = { SQL_TOO_DEEP: "54001", SQL_PARSER_FAULT: "XX000", SQL_NOT_READY: "58000", SQL_ANALYSIS_FAULT: "XX000" };
const ANALYSIS_CODES = new Set(["SQL_PARSE", "SQL_SETTINGS", ...Object.keys(ANALYSIS_SQLSTATE)]);

/** A failure to analyse a statement, as the reason it is refused. */
function analysisFailure(e: unknown): { code: string; message: string } {
  if (e instanceof AgateError && ANALYSIS_CODES.has(e.code)) return { code: e.code, message: e.message };
  const err = asError(e);
  const code = e instanceof AgateError ? `${e.code}: ` : e instanceof RangeError ? "nested too deeply: " : "";
  return { code: "SQL_ANALYSIS_FAULT", message: `The statement could not be analysed (${code}${err.message}); it was not run.` };
}

/** Names of agate's own statements and portals on a client's connection (the settings probe, COPY descriptions, refusals). */
const RESERVED_PREFIX = "agate.";

/** Fails in parse analysis, so nothing runs: what agate sends the target in place of a refused statement (targetMustFail). */
const REFUSED_SQL = "SELECT 'agate: statement refused'::pg_catalog.int4";

function reservedName(what: string, name: string): Buffer {
  return ErrorResponse({ severity: "ERROR", code: "42939", message: `agate: ${what} names beginning with "${RESERVED_PREFIX}" are reserved for the gateway: "${name}"`, hint: "Choose another name." });
}

/** The target's answer does not match the statements decided for it. */
class TargetDisagrees extends Error {
  override readonly name = "TargetDisagrees";
}

/** The one text value of a probe's DataRow (Int16 count, Int32 length, bytes). */
function readProbeValue(body: Buffer): string {
  if (body.length < 6 || body.readInt16BE(0) !== 1) throw new ProtocolViolation("the target answered agate's settings probe with an unexpected row");
  const len = body.readInt32BE(2);
  if (len < 0 || 6 + len > body.length) throw new ProtocolViolation("the target answered agate's settings probe with an unexpected row");
  return body.toString("utf8", 6, 6 + len);
}

/** Bytes relayed (all sessions, both ways) since the last collection was asked for. */
let relayed = 0;
const GC_EVERY_BYTES = 16 << 20;

function countRelayed(bytes: number): void {
  relayed += bytes;
  if (relayed >= GC_EVERY_BYTES) {
    // Relayed chunks are garbage as soon as the socket has written them, but the collector does not count
    // their memory as pressure: without a nudge a long result or COPY leaves hundreds of MB of them behind.
    relayed = 0;
    Bun.gc(false);
  }
}

function push<K, V>(m: Map<K, V[]>, k: K, v: V): void {
  const list = m.get(k);
  if (list) list.push(v);
  else m.set(k, [v]);
}

function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}
