/**
 * TLS records no larger than PostgreSQL's: at most 8 KiB of plaintext each.
 *
 * PostgreSQL sends through an 8 KiB buffer (PQ_SEND_BUFFER_SIZE in
 * src/backend/libpq/pqcomm.c), so each SSL_write, and each TLS record, holds
 * at most 8192 bytes. libpq before 18 reads 8 KiB per call (pqReadData): from
 * a 16 KiB record it takes half and leaves the rest inside OpenSSL, where
 * select()/epoll on PQsocket cannot see it, so an asynchronous client waits for
 * bytes it already has, and stalls at the end of a large result.
 *
 * Node caps records with `setMaxSendFragment`; Bun's TLSSocket returns false
 * there (it ignores it) and joins writes queued behind a pending one into
 * records of 16 KiB. So, when the cap cannot be set, the socket's `write` and
 * `end` are wrapped: bytes wait in a queue and reach the socket one piece of at
 * most 8 KiB at a time, each after the previous one was written (its callback),
 * so no two pieces are ever joined into one record.
 */
import type tls from "node:tls";

/** PostgreSQL's PQ_SEND_BUFFER_SIZE: the most plaintext one TLS record from agate carries. */
export const MAX_RECORD_PLAINTEXT = 8192;

type WriteCallback = (err?: Error | null) => void;

/**
 * Make every TLS record `sock` sends carry at most MAX_RECORD_PLAINTEXT bytes.
 * Call once, right after the socket is made and before anything is written.
 * `write` keeps its contract: false when the queue is past the socket's high
 * water mark, then "drain" once it has been written out.
 */
export function capRecordSize(sock: tls.TLSSocket): void {
  if (sock.setMaxSendFragment(MAX_RECORD_PLAINTEXT)) return;
  const write = sock.write.bind(sock) as (chunk: Buffer, cb: WriteCallback) => boolean;
  const end = sock.end.bind(sock) as () => tls.TLSSocket;
  const queue: { buf: Buffer; cb?: WriteCallback }[] = [];
  let queued = 0;
  let writing = false;
  let ending = false;
  let owesDrain = false;

  const next = (err?: Error | null): void => {
    writing = false;
    if (err || sock.destroyed) return;
    const head = queue[0];
    if (head === undefined) {
      if (ending) end();
      else if (owesDrain) {
        owesDrain = false;
        sock.emit("drain");
      }
      return;
    }
    let piece = head.buf;
    let cb: WriteCallback | undefined;
    if (piece.length > MAX_RECORD_PLAINTEXT) {
      head.buf = piece.subarray(MAX_RECORD_PLAINTEXT);
      piece = piece.subarray(0, MAX_RECORD_PLAINTEXT);
    } else {
      queue.shift();
      cb = head.cb;
    }
    queued -= piece.length;
    writing = true;
    write(piece, (e) => {
      cb?.(e);
      next(e);
    });
  };

  sock.write = ((chunk: string | Uint8Array, encoding?: BufferEncoding | WriteCallback, cb?: WriteCallback): boolean => {
    const done = typeof encoding === "function" ? encoding : cb;
    const buf = typeof chunk === "string" ? Buffer.from(chunk, typeof encoding === "string" ? encoding : "utf8") : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    if (ending || sock.destroyed) {
      // As a stream does after end(): the bytes are not sent.
      if (done) queueMicrotask(() => done(new Error("write after end")));
      return false;
    }
    if (buf.length > 0 || done) queue.push({ buf, ...(done ? { cb: done } : {}) });
    queued += buf.length;
    if (!writing) next();
    if (queued > sock.writableHighWaterMark) {
      owesDrain = true;
      return false;
    }
    return true;
  }) as typeof sock.write;

  sock.end = ((chunk?: unknown, encoding?: unknown, cb?: unknown): tls.TLSSocket => {
    const done = [chunk, encoding, cb].find((a) => typeof a === "function") as (() => void) | undefined;
    if (typeof chunk === "string" || chunk instanceof Uint8Array) sock.write(chunk, typeof encoding === "string" ? (encoding as BufferEncoding) : "utf8");
    if (done) sock.once("finish", done);
    if (!ending) {
      ending = true;
      if (!writing && queue.length === 0) end();
    }
    return sock;
  }) as typeof sock.end;
}
