/**
 * One error type for the whole gateway: a stable `code` that tests and
 * operators can match on, and a sentence that says what to do about it.
 * Protocol adapters translate it to their native form (a PostgreSQL
 * ErrorResponse with a SQLSTATE, an SSH exit status, an HTTP status).
 */
export class AgateError extends Error {
  override readonly name = "AgateError";
  constructor(
    readonly code: string,
    message: string,
    /** Facts behind the error (got/want, file, offset…); never secrets. */
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

/** Wrap anything thrown (opa-wasm throws strings) into an Error. */
export function asError(e: unknown): Error {
  if (e instanceof Error) return e;
  return new Error(typeof e === "string" ? e : JSON.stringify(e));
}
