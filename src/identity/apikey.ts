/**
 * Service-account API keys. A key is shown once when created
 * (`agate keys create`); configuration holds only its SHA-256, which is
 * safe to compare directly because keys carry 256 bits of entropy.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { AgateError } from "../core/errors.ts";
import type { Credential } from "../core/guard.ts";
import type { AccountStore } from "./accounts.ts";
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

/**
 * API keys from the configuration (`identity.api_keys`) and, if given, the
 * accounts store. A key that was revoked, or has expired, is refused when a
 * session opens and, through revalidate(), at every later command.
 */
export class ApiKeyVerifier {
  private readonly byHash = new Map<string, ApiKeyAccount>();
  private readonly byId = new Map<string, ApiKeyAccount>();

  constructor(
    accounts: ApiKeyAccount[],
    private readonly store?: AccountStore,
    private readonly now: () => number = Date.now,
  ) {
    for (const a of accounts) {
      this.byHash.set(a.sha256.toLowerCase(), a);
      this.byId.set(a.id, a);
    }
  }

  /** A PostgreSQL-style login: the user name must be the account's id (or subject). */
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

  /** Why a session opened with this key may not run another command (revoked, expired, gone), or null. */
  revalidate(identity: Identity): AgateError | null {
    const id = identity.credential_id;
    const account = this.byId.get(id ?? "") ?? this.store?.byId(id ?? "");
    if (!account) return new AgateError("AUTH_REVOKED", `the API key "${id}" no longer exists; the session's commands are refused`);
    return this.#usable(account);
  }

  #account(secret: string, refused: AgateError): ApiKeyAccount {
    if (!secret) throw refused;
    const hash = hashApiKey(secret);
    const account = this.byHash.get(hash) ?? this.store?.byHash(hash);
    // The map lookup is on a hash of a high-entropy secret; compare again in constant time all the same.
    if (!account || !timingSafeEqual(Buffer.from(account.sha256.toLowerCase(), "hex"), Buffer.from(hash, "hex"))) throw refused;
    return account;
  }

  #usable(account: ApiKeyAccount & { revoked_at?: string }): AgateError | null {
    if (account.revoked_at) return new AgateError("AUTH_REVOKED", `the API key "${account.id}" was revoked at ${account.revoked_at}`);
    if (account.expires_at && Date.parse(account.expires_at) <= this.now()) return new AgateError("AUTH_EXPIRED", `the API key "${account.id}" expired at ${account.expires_at}`);
    return null;
  }

  #identity(account: ApiKeyAccount): Identity {
    const unusable = this.#usable(account);
    if (unusable) throw unusable;
    return {
      subject: account.subject ?? account.id,
      issuer: "agate:api-key",
      groups: account.groups,
      kind: account.kind,
      credential_id: account.id,
      ...(account.expires_at ? { expires_at: account.expires_at } : {}),
    };
  }
}
