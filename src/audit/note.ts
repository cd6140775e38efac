/**
 * Signed checkpoints: the C2SP tlog-checkpoint text, signed as a C2SP
 * signed note with Ed25519.
 *
 * A checkpoint's text is three lines: the log's origin, the tree size in
 * decimal, and the root hash in base64 (RFC 4648 §4, padded). A signed note
 * is that text, a blank line, and one line per signature:
 * `— <key name> <base64(key id || signature)>`, where the key id is the
 * first four bytes of SHA-256(key name || "\n" || 0x01 || public key) and
 * the signature is Ed25519 over the text (with its final newline).
 *
 * Keys use the same text forms as golang.org/x/mod/sumdb/note:
 * verifier `<name>+<key id, 8 hex digits>+<base64(0x01 || public key)>`,
 * signer `PRIVATE+KEY+<name>+<key id>+<base64(0x01 || 32-byte seed)>`.
 */
import { createPrivateKey, createPublicKey, randomBytes, sign, verify, type KeyObject } from "node:crypto";
import { AgateError } from "../core/errors.ts";
import { HASH_BYTES } from "./merkle.ts";

const ALG_ED25519 = 0x01;
// DER prefixes of an Ed25519 PKCS#8 private key and SPKI public key (RFC 8410).
const PKCS8_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");
const SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex");

export interface Signer {
  name: string;
  keyId: number;
  /** The verifier key text, to publish. */
  verifierKey: string;
  sign(message: Uint8Array): Uint8Array;
}

export interface Verifier {
  name: string;
  keyId: number;
  verify(message: Uint8Array, signature: Uint8Array): boolean;
}

/** Unicode white space as Go's unicode.IsSpace sees it (C2SP signed-note forbids it in key names). */
const SPACE = /[\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]/u;

/** A key name: non-empty, no "+", no white space (as C2SP signed-note requires). */
function checkName(name: string): void {
  if (name === "" || name.includes("+") || SPACE.test(name)) {
    throw new AgateError("NOTE_BAD_KEY", `"${name}" is not a usable key name: it must be non-empty, without "+" or spaces.`, { name });
  }
}

function keyId(name: string, publicKey: Uint8Array): number {
  const h = Bun.SHA256.hash(Buffer.concat([Buffer.from(`${name}\n`), Buffer.from([ALG_ED25519]), publicKey])) as Uint8Array;
  return Buffer.from(h.buffer, h.byteOffset, 4).readUInt32BE(0);
}

const hex8 = (id: number) => id.toString(16).padStart(8, "0");

/** A new Ed25519 key pair named `name`, as signer and verifier key texts. */
export function generateKey(name: string): { signerKey: string; verifierKey: string } {
  return keyFromSeed(name, randomBytes(32));
}

/** The key pair of a given 32-byte Ed25519 seed (test vectors; use generateKey for a real key). */
export function keyFromSeed(name: string, seed: Uint8Array): { signerKey: string; verifierKey: string } {
  checkName(name);
  const signer = signerFromSeed(name, seed);
  return { signerKey: `PRIVATE+KEY+${name}+${hex8(signer.keyId)}+${Buffer.concat([Buffer.from([ALG_ED25519]), seed]).toString("base64")}`, verifierKey: signer.verifierKey };
}

function signerFromSeed(name: string, seed: Uint8Array): Signer {
  const priv = createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, seed]), format: "der", type: "pkcs8" });
  const pub = createPublicKey(priv).export({ format: "der", type: "spki" }).subarray(SPKI_PREFIX.length);
  const id = keyId(name, pub);
  return {
    name,
    keyId: id,
    verifierKey: `${name}+${hex8(id)}+${Buffer.concat([Buffer.from([ALG_ED25519]), pub]).toString("base64")}`,
    sign: (message) => sign(null, message, priv),
  };
}

/** Parse `<name>+<hex id>+<base64(alg || key)>`; checks the id against the key. */
function parseKey(text: string, what: string): { name: string; id: number; key: Buffer } {
  // Split at the first two "+" only: base64 has "+" of its own.
  const m = /^([^+]*)\+([^+]*)\+(.*)$/s.exec(text.trim());
  if (!m) throw badKey(what, "it must look like name+keyid+base64key");
  const [, name, idHex, b64] = m as unknown as [string, string, string, string];
  checkName(name);
  if (!/^[0-9a-f]{8}$/.test(idHex)) throw badKey(what, "the key id must be 8 lower-case hex digits");
  const raw = Buffer.from(b64, "base64");
  if (raw.toString("base64") !== b64 || raw.length !== 33 || raw[0] !== ALG_ED25519) throw badKey(what, "the key must be base64 of 0x01 followed by a 32-byte Ed25519 key");
  return { name, id: Number.parseInt(idHex, 16), key: raw.subarray(1) };
}

function badKey(what: string, why: string): AgateError {
  return new AgateError("NOTE_BAD_KEY", `The ${what} is not valid: ${why}.`, {});
}

/** A signer from its `PRIVATE+KEY+…` text. */
export function parseSignerKey(text: string): Signer {
  const t = text.trim();
  if (!t.startsWith("PRIVATE+KEY+")) throw badKey("signing key", 'it must start with "PRIVATE+KEY+" (make one with `agate keys generate`)');
  const { name, id, key } = parseKey(t.slice("PRIVATE+KEY+".length), "signing key");
  const signer = signerFromSeed(name, key);
  if (signer.keyId !== id) throw badKey("signing key", "its key id does not match the key");
  return signer;
}

/** A verifier from its `<name>+<id>+<key>` text. */
export function parseVerifierKey(text: string): Verifier {
  const { name, id, key } = parseKey(text, "verifier key");
  if (keyId(name, key) !== id) throw badKey("verifier key", "its key id does not match the key");
  const pub: KeyObject = createPublicKey({ key: Buffer.concat([SPKI_PREFIX, key]), format: "der", type: "spki" });
  return { name, keyId: id, verify: (message, signature) => signature.length === 64 && verify(null, message, pub, signature) };
}

/** Sign `text` (which must end in a newline) as a note. */
export function signNote(text: string, signer: Signer): string {
  if (!text.endsWith("\n") || text.includes("\n\n")) throw new AgateError("NOTE_BAD_TEXT", "A note's text must end with a newline and hold no blank line.", {});
  const sig = Buffer.alloc(4 + 64);
  sig.writeUInt32BE(signer.keyId, 0);
  Buffer.from(signer.sign(Buffer.from(text, "utf8"))).copy(sig, 4);
  return `${text}\n— ${signer.name} ${sig.toString("base64")}\n`;
}

const MAX_SIGNATURES = 100;

/**
 * Open a signed note: split text from signatures and check that `verifier`
 * signed it, as golang.org/x/mod/sumdb/note's Open does (a bad signature by
 * the key is an error even beside a good one; other keys' signatures are
 * ignored). Returns the text, or throws NOTE_BAD (malformed) or
 * NOTE_UNSIGNED (no valid signature by that key) with a sentence that says
 * which.
 */
export function openNote(note: string, verifier: Verifier): string {
  const bad = (why: string) => new AgateError("NOTE_BAD", `The note is malformed: ${why}.`, {});
  // Control characters other than newline are not allowed anywhere (nor is U+FFFD, what invalid UTF-8 decodes to).
  if (/[\u0000-\u0009\u000b-\u001f\ufffd]/u.test(note)) throw bad("it holds a control character or invalid UTF-8");
  const sep = note.lastIndexOf("\n\n");
  if (sep < 0 || !note.endsWith("\n")) throw bad("no blank line before its signatures, or no final newline");
  const text = note.slice(0, sep + 1);
  const lines = note.slice(sep + 2, -1).split("\n");
  if (lines.length > MAX_SIGNATURES) throw bad(`more than ${MAX_SIGNATURES} signatures`);
  const others: string[] = [];
  const message = Buffer.from(text, "utf8");
  let good = false;
  for (const line of lines) {
    const m = /^— (\S+) ([A-Za-z0-9+/]+={0,2})$/u.exec(line);
    if (!m || m[1]!.includes("+")) throw bad(`"${line.slice(0, 80)}" is not a signature line`);
    const sig = Buffer.from(m[2]!, "base64");
    if (sig.length < 5 || sig.toString("base64") !== m[2]) throw bad("a signature is not padded base64 of at least 5 bytes");
    if (m[1] !== verifier.name || sig.readUInt32BE(0) !== verifier.keyId) {
      others.push(`${m[1]}+${hex8(sig.readUInt32BE(0))}`);
      continue;
    }
    if (!verifier.verify(message, sig.subarray(4))) {
      throw new AgateError("NOTE_UNSIGNED", `The note's signature by ${verifier.name}+${hex8(verifier.keyId)} does not verify: the text or the signature was changed.`, { key: `${verifier.name}+${hex8(verifier.keyId)}` });
    }
    good = true;
  }
  if (good) return text;
  const who = `${verifier.name}+${hex8(verifier.keyId)}`;
  throw new AgateError("NOTE_UNSIGNED", `The note is not signed by ${who}${others.length ? ` (it is signed by ${others.join(", ")})` : ""}.`, { key: who, others });
}

export interface Checkpoint {
  origin: string;
  size: number;
  root: Uint8Array;
}

/** The tlog-checkpoint text of a tree head. */
export function formatCheckpoint(c: Checkpoint): string {
  if (c.origin === "" || /[\u0000-\u001f]/.test(c.origin)) throw new AgateError("NOTE_BAD_TEXT", "A checkpoint origin must be one non-empty line without control characters.", {});
  return `${c.origin}\n${c.size}\n${Buffer.from(c.root).toString("base64")}\n`;
}

/** Parse a tlog-checkpoint text strictly (extension lines are allowed and ignored). */
export function parseCheckpoint(text: string): Checkpoint {
  const lines = text.split("\n");
  const bad = (why: string) => new AgateError("CHECKPOINT_BAD", `The checkpoint is malformed: ${why}.`, {});
  if (lines.length < 4 || lines[lines.length - 1] !== "") throw bad("it needs an origin, a size and a root hash line, each ending in a newline");
  const [origin, sizeText, rootText] = lines as [string, string, string];
  if (origin === "") throw bad("the origin line is empty");
  if (lines.slice(3, -1).some((l) => l === "")) throw bad("an extension line is empty");
  if (!/^(0|[1-9][0-9]*)$/.test(sizeText) || !Number.isSafeInteger(Number(sizeText))) throw bad(`"${sizeText}" is not a tree size`);
  const root = Buffer.from(rootText, "base64");
  if (root.length !== HASH_BYTES || root.toString("base64") !== rootText) throw bad("the root hash is not base64 of 32 bytes");
  return { origin, size: Number(sizeText), root: new Uint8Array(root) };
}

/** Sign a tree head: the complete signed checkpoint note. */
export function signCheckpoint(c: Checkpoint, signer: Signer): string {
  return signNote(formatCheckpoint(c), signer);
}

/** Verify a signed checkpoint note and parse it. Throws NOTE_BAD, NOTE_UNSIGNED or CHECKPOINT_BAD. */
export function openCheckpoint(note: string, verifier: Verifier): Checkpoint {
  return parseCheckpoint(openNote(note, verifier));
}
