/**
 * The backend messages agate writes itself and the frontend/backend message
 * bodies it reads. Everything else passes through as received bytes.
 * Names follow https://www.postgresql.org/docs/current/protocol-message-formats.html
 */
import { encodeClientText } from "./encoding.ts";
import { message, Reader } from "./wire.ts";

/** Message type bytes, by protocol name. */
export const T = {
  // frontend
  Bind: 0x42, // B
  Close: 0x43, // C
  CopyData: 0x64, // d
  CopyDone: 0x63, // c
  CopyFail: 0x66, // f
  Describe: 0x44, // D
  Execute: 0x45, // E
  Flush: 0x48, // H
  FunctionCall: 0x46, // F
  Parse: 0x50, // P
  PasswordMessage: 0x70, // p
  Query: 0x51, // Q
  Sync: 0x53, // S
  Terminate: 0x58, // X
  // backend
  Authentication: 0x52, // R
  BackendKeyData: 0x4b, // K
  CommandComplete: 0x43, // C
  CopyInResponse: 0x47, // G
  CopyOutResponse: 0x48, // H
  DataRow: 0x44, // D
  ErrorResponse: 0x45, // E
  NoticeResponse: 0x4e, // N
  NotificationResponse: 0x41, // A
  ParameterStatus: 0x53, // S
  ReadyForQuery: 0x5a, // Z
  RowDescription: 0x54, // T
  NoData: 0x6e, // n
  ParseComplete: 0x31, // 1
  BindComplete: 0x32, // 2
  CloseComplete: 0x33, // 3
  PortalSuspended: 0x73, // s
  EmptyQueryResponse: 0x49, // I
} as const;

/** Authentication request codes (the Int32 after 'R'). */
export const Auth = { Ok: 0, CleartextPassword: 3, MD5Password: 5, SASL: 10, SASLContinue: 11, SASLFinal: 12 } as const;

// ── backend messages agate writes ────────────────────────────────────────

export const AuthenticationOk = message(T.Authentication, (w) => w.i32(Auth.Ok));
export const AuthenticationCleartextPassword = message(T.Authentication, (w) => w.i32(Auth.CleartextPassword));

export function ReadyForQuery(status: number): Buffer {
  return message(T.ReadyForQuery, (w) => w.u8(status));
}


/**
 * Frontend messages agate sends on a client's connection for itself (a
 * settings probe; session.ts keeps their answers from the client).
 */
export function Parse(statement: string, text: string): Buffer {
  return message(T.Parse, (w) => w.cstr(statement).cstr(text).i16(0));
}

/** Bind with no parameters and text results. */
export function Bind(portal: string, statement: string): Buffer {
  return message(T.Bind, (w) => w.cstr(portal).cstr(statement).i16(0).i16(0).i16(0));
}

export function Query(text: string): Buffer {
  return message(T.Query, (w) => w.cstr(text));
}

export function Execute(portal: string): Buffer {
  return message(T.Execute, (w) => w.cstr(portal).i32(0));
}

/** Close of a statement ('S') or a portal ('P'). */
export function Close(kind: "S" | "P", name: string): Buffer {
  return message(T.Close, (w) => w.u8(kind.charCodeAt(0)).cstr(name));
}

export const Flush = message(T.Flush);
export const Sync = message(T.Sync);

/** Describe of a portal: agate asks for a portal's columns itself when the client did not. */
export function DescribePortal(name: string): Buffer {
  return message(T.Describe, (w) => w.u8(0x50).cstr(name));
}

export function BackendKeyData(pid: number, secret: number): Buffer {
  return message(T.BackendKeyData, (w) => w.i32(pid).i32(secret));
}

/** Fields of ErrorResponse / NoticeResponse (protocol-error-fields). */
export interface ErrorFields {
  severity: "ERROR" | "FATAL" | "WARNING" | "NOTICE" | "INFO";
  code: string;
  message: string;
  detail?: string;
  hint?: string;
}

function fields(f: ErrorFields) {
  return (w: import("./wire.ts").BodyWriter) => {
    w.u8(0x53).cstr(f.severity); // S
    w.u8(0x56).cstr(f.severity); // V (non-localized)
    w.u8(0x43).cstr(f.code); // C
    w.u8(0x4d).cstr(f.message); // M
    if (f.detail) w.u8(0x44).cstr(f.detail); // D
    if (f.hint) w.u8(0x48).cstr(f.hint); // H
    w.u8(0);
  };
}

export function ErrorResponse(f: ErrorFields): Buffer {
  return message(T.ErrorResponse, fields(f));
}

export function NoticeResponse(f: ErrorFields): Buffer {
  return message(T.NoticeResponse, fields(f));
}

/**
 * An ErrorResponse or NoticeResponse agate built (in UTF-8), its texts in
 * client encoding `encoding` (encoding.ts encodeClientText); the same
 * buffer when nothing changes. Any other message comes back as it is.
 */
export function inClientEncoding(raw: Buffer, encoding: string): Buffer {
  if ((raw[0] !== T.ErrorResponse && raw[0] !== T.NoticeResponse) || encoding === "UTF8" || raw.every((b) => b < 0x80)) return raw;
  const parts: Buffer[] = [];
  for (let at = 5; at < raw.length && raw[at] !== 0; ) {
    const end = raw.indexOf(0, at + 1);
    parts.push(raw.subarray(at, at + 1), encodeClientText(raw.toString("utf8", at + 1, end), encoding), ZERO);
    at = end + 1;
  }
  return message(raw[0]!, (w) => {
    for (const p of parts) w.bytes(p);
    w.u8(0);
  });
}
const ZERO = Buffer.from([0]);

// ── bodies agate reads ───────────────────────────────────────────────────

/** ErrorResponse/NoticeResponse body → {code, message, …} keyed by field letter. */
export function readErrorFields(body: Buffer): { code: string; message: string; severity: string } {
  const r = new Reader(body);
  const out: Record<string, string> = {};
  while (r.remaining > 0) {
    const k = r.u8();
    if (k === 0) break;
    out[String.fromCharCode(k)] = r.cstr();
  }
  return { code: out.C ?? "XX000", message: out.M ?? "", severity: out.V ?? out.S ?? "ERROR" };
}

export interface ParseMsg {
  name: string;
  /** The SQL text, read by `decode` (the session's client encoding). */
  text: string;
  paramTypes: number[];
}

/** Reads a message's SQL text as the target will: in the session's client encoding. */
export type TextDecode = (bytes: Uint8Array) => string;

export function readParse(body: Buffer, decode?: TextDecode): ParseMsg {
  const r = new Reader(body);
  const name = r.cstr();
  const text = r.cstr(decode);
  const n = r.i16();
  const paramTypes: number[] = [];
  for (let i = 0; i < n; i++) paramTypes.push(r.i32());
  return { name, text, paramTypes };
}

export interface BindMsg {
  portal: string;
  statement: string;
  /** Text-format values as strings, binary as "base64:<…>", NULL as null. */
  params: (string | null)[];
}

const textDecoder = new TextDecoder("utf-8", { fatal: false });

function readValue(bytes: Uint8Array, decode: TextDecode | undefined): string {
  if (decode === undefined) return textDecoder.decode(bytes);
  try {
    return decode(bytes);
  } catch {
    return textDecoder.decode(bytes);
  }
}

/** `decode` reads text-format values (the session's client encoding); a value it refuses is read as UTF-8, for the record. */
export function readBind(body: Buffer, decode?: TextDecode): BindMsg {
  const r = new Reader(body);
  const portal = r.cstr();
  const statement = r.cstr();
  const nFormats = r.i16();
  const formats: number[] = [];
  for (let i = 0; i < nFormats; i++) formats.push(r.i16());
  const n = r.i16();
  const params: (string | null)[] = [];
  for (let i = 0; i < n; i++) {
    const len = r.i32();
    if (len === -1) {
      params.push(null);
      continue;
    }
    const bytes = r.bytes(len);
    const format = nFormats === 0 ? 0 : nFormats === 1 ? formats[0] : formats[i];
    params.push(format === 1 ? `base64:${bytes.toString("base64")}` : readValue(bytes, decode));
  }
  return { portal, statement, params };
}

/** Execute: portal name (max rows is irrelevant to the guard). */
export function readExecute(body: Buffer): string {
  return new Reader(body).cstr();
}

/** Close / Describe: 'S' statement or 'P' portal, and its name. */
export function readTarget(body: Buffer): { kind: number; name: string } {
  const r = new Reader(body);
  return { kind: r.u8(), name: r.cstr() };
}

/** Query: the SQL text, read by `decode` (the session's client encoding). */
export function readQuery(body: Buffer, decode?: TextDecode): string {
  return new Reader(body).cstr(decode);
}

/** StartupMessage parameters (after the protocol version). */
export function readStartupParams(r: Reader): Record<string, string> {
  const params: Record<string, string> = {};
  for (;;) {
    const key = r.cstr();
    if (key === "") break;
    params[key] = r.cstr();
  }
  return params;
}

/** Rows reported by a command tag: "INSERT 0 5" → 5, "SELECT 3" → 3, "BEGIN" → 0. */
export function tagRows(tag: string): number {
  const last = tag.slice(tag.lastIndexOf(" ") + 1);
  const n = Number(last);
  return Number.isInteger(n) ? n : 0;
}
