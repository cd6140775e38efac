/**
 * What the target does with each frontend message, as PostgreSQL's backend
 * does (postgres.c PostgresMain, SocketBackend and its error recovery;
 * copyfromparse.c CopyGetData), so that agate forwards only messages whose
 * answers it can account for: every Query and Sync agate forwards is
 * answered by exactly one ReadyForQuery (session.ts counts on it).
 *
 * What PostgreSQL does that breaks "one ReadyForQuery per Query or Sync":
 *
 * - COPY … FROM STDIN reads the client's messages itself until CopyDone or
 *   CopyFail. It discards Sync and Flush (for libpq, whose
 *   PQexecParams("COPY … FROM STDIN") sends Execute and Sync together, and
 *   PQputCopyEnd a second Sync after CopyDone); any other message is a
 *   protocol violation that ends the connection ("terminating connection
 *   because protocol synchronization was lost"). Whether a statement gets
 *   that far is known only from the answer: CopyInResponse, or an error
 *   before it. So after a Query or Execute that may enter COPY FROM STDIN,
 *   agate waits for that answer before it reads on ("settle"); while the
 *   target reads CopyData, agate drops Sync and Flush itself ("discard"), and
 *   any other message ends the session as a protocol violation ("violation":
 *   it is neither decided nor forwarded).
 * - After an error in an extended-protocol batch the target discards every
 *   message up to Sync, a Query included (no ReadyForQuery for it). So a
 *   Query, or a fast-path call, inside an unfinished batch waits until agate
 *   knows whether the batch failed ("probe"), and is dropped unanswered when
 *   it did, as PostgreSQL drops it.
 *
 * COPY … TO STDOUT needs nothing: the target writes its rows without reading,
 * and reads a Sync sent meanwhile when the statement is done.
 *
 * One case cannot be told from outside: a CopyData the target fails on, and a
 * Sync after it, sent before the error arrives. PostgreSQL answers that Sync
 * when it read it after the failure, and discards it when it read it first.
 * agate drops it (the answer of the second order), so that the count holds.
 */
import { T } from "./messages.ts";

export type Step =
  /** Pass it on. */
  | { do: "forward" }
  /** The target would discard it unanswered: agate does not pass it on. */
  | { do: "discard" }
  /** The target is reading COPY data and would end the connection on this message: so does agate, saying `message`. */
  | { do: "violation"; message: string }
  /** What the target does with it depends on an answer still to come: wait for settled(), then ask again. */
  | { do: "settle" }
  /** A Query inside an unfinished batch: forward it if the batch has not failed, else discard it. */
  | { do: "probe" };

/** The extended-protocol batch the next message would join. */
export interface BatchState {
  /** Messages of it have reached the target (Parse, Bind, Execute … since the last Sync). */
  open: boolean;
  /** The target answered an error in it: it skips everything up to the Sync. */
  failed: boolean;
}

/** A forwarded Query or Execute that may make the target read COPY data. */
interface CopyIn {
  /** The ReadyForQuery number that ends its batch (a Query's own). */
  batch: number;
  /** Its COPY … FROM STDIN statements not yet ended by CopyDone or CopyFail (a Query may hold several). */
  left: number;
  /** The target answered CopyInResponse: it reads CopyData now. */
  reading: boolean;
}

const FORWARD: Step = { do: "forward" };
const DISCARD: Step = { do: "discard" };

export class BackendState {
  private copy: CopyIn | undefined;
  private waiters: (() => void)[] = [];

  /** What to do with the client's next message of type `type`. */
  step(type: number, batch: BatchState): Step {
    if (type === T.Terminate) return FORWARD;
    const copy = this.copy;
    if (copy) {
      if (!copy.reading) return { do: "settle" };
      switch (type) {
        case T.CopyData:
          return FORWARD;
        case T.CopyDone:
        case T.CopyFail:
          // Its statement ends here; a Query's next COPY … FROM STDIN, if any, starts reading again.
          copy.reading = false;
          if (--copy.left === 0) this.copy = undefined;
          return FORWARD;
        case T.Sync:
        case T.Flush:
          return DISCARD;
        default:
          return { do: "violation", message: `unexpected message type 0x${type.toString(16).toUpperCase().padStart(2, "0")} during COPY from stdin` };
      }
    }
    if ((type === T.Query || type === T.FunctionCall) && batch.open) return batch.failed ? DISCARD : { do: "probe" };
    return FORWARD;
  }

  /** A Query or Execute that runs `copies` COPY … FROM STDIN statements was forwarded; ReadyForQuery #`batch` ends it. */
  sent(batch: number, copies: number): void {
    if (copies > 0) this.copy = { batch, left: copies, reading: false };
  }

  /** The target sent CopyInResponse while answering batch `batch`; false when no statement agate forwarded there is a COPY … FROM STDIN. */
  copyIn(batch: number): boolean {
    const copy = this.copy;
    if (!copy || copy.reading || copy.batch !== batch) return false;
    copy.reading = true;
    this.wake();
    return true;
  }

  /** The target answered an error in batch `batch`: a COPY in it ended, or will not start. */
  failed(batch: number): void {
    if (this.copy?.batch === batch) {
      this.copy = undefined;
      this.wake();
    }
  }

  /** ReadyForQuery #`n` arrived: everything of its batch and those before is answered. */
  ready(n: number): void {
    if (this.copy && this.copy.batch <= n) {
      this.copy = undefined;
      this.wake();
    }
  }

  /** Resolves when the next step no longer depends on an answer to come (or the session ends: close()). */
  settled(): Promise<void> {
    if (!this.copy || this.copy.reading) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  close(): void {
    this.copy = undefined;
    this.wake();
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }
}

/** The number of COPY … FROM STDIN statements among `statements`: each makes the target read CopyData. */
export function copiesIn(statements: readonly { copy?: { direction: string; stdio: boolean } }[] | undefined): number {
  let n = 0;
  for (const s of statements ?? []) if (s.copy?.direction === "from" && s.copy.stdio) n++;
  return n;
}
