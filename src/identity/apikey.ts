/**
 * Service-account API keys. A key is shown once when created
 * (`agate keys create`); configuration holds only its SHA-256, which is
 * safe to compare directly because keys carry 256 bits of entropy.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { AgateError } from "../core/errors.ts";
import type { Credential, IdentityVerifier } from "../core/guard.ts";
import type { ConnectionRef, Identity } from "../core/types.ts";

export interface ApiKeyAccount {
  /** Stable id, also the user name a PostgreSQL client may log in as. */
  id: string;
  /** Subject recorded in the log and given to the policy; defaults to id. */
  subject?: string;
  groups: string[];
  kind: "human" | "service" | "agent";
  /** hex SHA-256 of the key. */
  sha256: string;
  /** RFC 3339; the key is refused after it. */
  expires_at?: string;
}

export const API_KEY_PREFIX = "agk_";

/** A new random key and the hash that goes into the configuration. */
export function createApiKey(): { key: string; sha256: string } {
  const key = API_KEY_PREFIX + randomBytes(32).toString("base64url");
  return { key, sha256: hashApiKey(key) };
}

export function hashApiKey(key: string): string {
  return createHash("sha256").update(key).digest("hex");
}

export class ApiKeyVerifier implements IdentityVerifier {
  private readonly byHash = new Map<string, ApiKeyAccount>();

  constructor(accounts: ApiKeyAccount[], private readonly now: () => Date = () => new Date()) {
    for (const a of accounts) this.byHash.set(a.sha256.toLowerCase(), a);
  }

  async verify(credential: Credential, _connection: ConnectionRef): Promise<Identity> {
    const refused = new AgateError("AUTH_FAILED", `password authentication failed for user "${credential.user}"`);
    const account = this.#account(credential.secret, refused);
    if (credential.user !== account.id && credential.user !== (account.subject ?? account.id)) throw refused;
    return this.#identity(account);
  }

  /** A bearer key (HTTP `Authorization: Bearer`), which names no user. */
  async verifyBearer(secret: string): Promise<Identity> {
    return this.#identity(this.#account(secret, new AgateError("AUTH_FAILED", "the API key is not valid")));
  }

  #account(secret: string, refused: AgateError): ApiKeyAccount {
    if (!secret) throw refused;
    const hash = hashApiKey(secret);
    const account = this.byHash.get(hash);
    // The map lookup is on a hash of a high-entropy secret; compare again in constant time all the same.
    if (!account || !timingSafeEqual(Buffer.from(account.sha256.toLowerCase(), "hex"), Buffer.from(hash, "hex"))) throw refused;
    return account;
  }

  #identity(account: ApiKeyAccount): Identity {
    if (account.expires_at && Date.parse(account.expires_at) <= this.now().getTime()) {
      throw new AgateError("AUTH_EXPIRED", `the API key for "${account.id}" expired at ${account.expires_at}`);
    }
    return { subject: account.subject ?? account.id, issuer: "agate:api-key", groups: account.groups, kind: account.kind, credential_id: account.id };
  }
}
