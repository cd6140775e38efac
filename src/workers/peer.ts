/**
 * Calls between the main thread and a worker thread (src/workers): a call
 * is answered once (a value, or an AgateError with its code), a note is not
 * answered. Messages keep their order on the port, as postMessage does.
 * Values cross by structured clone: plain data only.
 *
 * What one side says in one task (with its microtasks) goes over as one postMessage:
 * each message wakes the other thread, and on a busy host those wake-ups,
 * not the copying, are what a message costs.
 */
import { AgateError, asError } from "../core/errors.ts";

/** The end of a message channel: a node:worker_threads Worker or parentPort. */
export interface Port {
  postMessage(message: unknown): void;
  on(event: "message", listener: (message: unknown) => void): unknown;
}

export type Handler = (...args: any[]) => unknown;

type Message =
  | { k: "call"; id: number; op: string; args: unknown[] }
  | { k: "reply"; id: number; value?: unknown; error?: { code: string; message: string; details: Record<string, unknown> } }
  | { k: "note"; op: string; args: unknown[] };

export class Peer {
  #next = 1;
  #out: Message[] = [];
  #flushing = false;
  readonly #waiting = new Map<number, { resolve: (v: any) => void; reject: (e: Error) => void }>();
  #gone: AgateError | null = null;

  constructor(
    private readonly port: Port,
    private readonly handlers: Record<string, Handler>,
  ) {
    port.on("message", (ms) => {
      for (const m of ms as Message[]) this.#receive(m);
    });
  }

  /** Ask the other side; rejects with what its handler threw (as an AgateError), or WORKER_GONE once it is gone. */
  call<T>(op: string, ...args: unknown[]): Promise<T> {
    if (this.#gone) return Promise.reject(this.#gone);
    const id = this.#next++;
    return new Promise<T>((resolve, reject) => {
      this.#waiting.set(id, { resolve, reject });
      this.#send({ k: "call", id, op, args });
    });
  }

  /** Tell the other side, without an answer. */
  note(op: string, ...args: unknown[]): void {
    if (!this.#gone) this.#send({ k: "note", op, args });
  }

  #send(m: Message): void {
    this.#out.push(m);
    if (this.#flushing) return;
    this.#flushing = true;
    // Once the current task's microtasks have run: what they answered goes together, and at once.
    queueMicrotask(() => {
      this.#flushing = false;
      const out = this.#out;
      this.#out = [];
      if (!this.#gone) this.port.postMessage(out);
    });
  }

  /** The other side ended: every waiting call rejects, and so does every later one. */
  gone(why: string): void {
    this.#gone ??= new AgateError("WORKER_GONE", why);
    for (const w of this.#waiting.values()) w.reject(this.#gone);
    this.#waiting.clear();
  }

  #receive(m: Message): void {
    if (m.k === "reply") {
      const w = this.#waiting.get(m.id);
      if (!w) return;
      this.#waiting.delete(m.id);
      if (m.error) w.reject(new AgateError(m.error.code, m.error.message, m.error.details));
      else w.resolve(m.value);
      return;
    }
    const handler = this.handlers[m.op];
    if (m.k === "note") {
      handler?.(...m.args);
      return;
    }
    const answer = (value: unknown) => this.#send({ k: "reply", id: m.id, value });
    const fail = (e: unknown) => this.#send({ k: "reply", id: m.id, error: errorOf(e) });
    if (!handler) return fail(new AgateError("WORKER_UNKNOWN_CALL", `no handler for "${m.op}"`));
    try {
      const out = handler(...m.args);
      if (out instanceof Promise) out.then(answer, fail);
      else answer(out);
    } catch (e) {
      fail(e);
    }
  }
}

/** An error as it crosses: its code, sentence and facts. */
export function errorOf(e: unknown): { code: string; message: string; details: Record<string, unknown> } {
  if (e instanceof AgateError) return { code: e.code, message: e.message, details: e.details };
  return { code: "WORKER_CALL_FAILED", message: asError(e).message, details: {} };
}
