/**
 * SCRAM-SHA-256 client (RFC 5802, RFC 7677) as PostgreSQL uses it
 * (https://www.postgresql.org/docs/current/sasl-authentication.html):
 * no channel binding ("n,,"), the user name is taken from the startup
 * packet so the SCRAM user is empty.
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from "node:crypto";
import { AgateError } from "../../core/errors.ts";

export class ScramClient {
  private readonly nonce = randomBytes(18).toString("base64");
  private readonly clientFirstBare = `n=*,r=${this.nonce}`;
  private serverSignature: Buffer | null = null;

  constructor(private readonly password: string) {}

  /** SASLInitialResponse data. */
  first(): string {
    return `n,,${this.clientFirstBare}`;
  }

  /** Given server-first-message, the client-final-message. */
  final(serverFirst: string): string {
    const attrs = parseAttrs(serverFirst);
    const nonce = attrs.get("r");
    const salt = attrs.get("s");
    const iterations = Number(attrs.get("i"));
    if (!nonce?.startsWith(this.nonce) || !salt || !Number.isInteger(iterations) || iterations < 1) {
      throw new AgateError("UPSTREAM_AUTH", "the target sent a malformed SCRAM challenge");
    }
    const salted = pbkdf2Sync(this.password.normalize("NFKC"), Buffer.from(salt, "base64"), iterations, 32, "sha256");
    const clientKey = hmac(salted, "Client Key");
    const storedKey = createHash("sha256").update(clientKey).digest();
    const withoutProof = `c=biws,r=${nonce}`;
    const authMessage = `${this.clientFirstBare},${serverFirst},${withoutProof}`;
    const clientSignature = hmac(storedKey, authMessage);
    const proof = Buffer.alloc(clientKey.length);
    for (let i = 0; i < proof.length; i++) proof[i] = clientKey[i]! ^ clientSignature[i]!;
    this.serverSignature = hmac(hmac(salted, "Server Key"), authMessage);
    return `${withoutProof},p=${proof.toString("base64")}`;
  }

  /** Checks server-final-message: the target proves it knows the password too. */
  verify(serverFinal: string): void {
    const v = parseAttrs(serverFinal).get("v");
    const got = v ? Buffer.from(v, "base64") : Buffer.alloc(0);
    if (!this.serverSignature || got.length !== this.serverSignature.length || !timingSafeEqual(got, this.serverSignature)) {
      throw new AgateError("UPSTREAM_AUTH", "the target's SCRAM server signature did not verify");
    }
  }
}

function hmac(key: Buffer, data: string): Buffer {
  return createHmac("sha256", key).update(data).digest();
}

function parseAttrs(msg: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of msg.split(",")) {
    const eq = part.indexOf("=");
    if (eq > 0) out.set(part.slice(0, eq), part.slice(eq + 1));
  }
  return out;
}

/** md5 password response: "md5" + md5(md5(password + user) + salt). */
export function md5Password(user: string, password: string, salt: Buffer): string {
  const inner = createHash("md5").update(password + user).digest("hex");
  return "md5" + createHash("md5").update(Buffer.concat([Buffer.from(inner), salt])).digest("hex");
}
