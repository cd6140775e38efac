/**
 * The identity step: turns what a client presents into a verified
 * Identity, and says, before each later command, whether that identity
 * still holds (a revoked API key, an expired token).
 *
 * A credential is recognised by its form: `agk_…` is an API key (config
 * or accounts store), a JWT is an OIDC token (from a configured issuer).
 * Anything else is refused. Every refusal is an AgateError with a code
 * (AUTH_*) and a sentence a client may see: never key material.
 */
import { AgateError } from "../core/errors.ts";
import type { Credential, IdentityVerifier } from "../core/guard.ts";
import type { ConnectionRef, Identity } from "../core/types.ts";
import type { AccountStore } from "./accounts.ts";
import { API_KEY_PREFIX, ApiKeyVerifier, type ApiKeyAccount } from "./apikey.ts";
import { OidcVerifier, type OidcIssuerConfig } from "./oidc.ts";

export interface IdentityConfig {
  api_keys: ApiKeyAccount[];
  oidc: OidcIssuerConfig[];
}

export class Identities implements IdentityVerifier {
  readonly apiKeys: ApiKeyVerifier;
  readonly #oidc: OidcVerifier | null;
  readonly #skew = new Map<string, number>();
  /** Token expiry in ms, per identity object (parsed once, checked per command). */
  readonly #expiry = new WeakMap<Identity, number>();

  constructor(cfg: IdentityConfig, store?: AccountStore, private readonly now: () => number = Date.now) {
    this.apiKeys = new ApiKeyVerifier(cfg.api_keys, store, now);
    this.#oidc = cfg.oidc.length ? new OidcVerifier(cfg.oidc) : null;
    for (const o of cfg.oidc) {
      this.#skew.set(o.issuer, o.clock_skew_s * 1000);
    }
  }

  async verify(credential: Credential, connection: ConnectionRef): Promise<Identity> {
    const secret = credential.secret;
    if (secret.startsWith(API_KEY_PREFIX)) return this.apiKeys.verify(credential, connection);
    if (OidcVerifier.looksLikeJwt(secret)) {
      if (!this.#oidc) throw new AgateError("AUTH_FAILED", "this gateway accepts no OIDC tokens (no identity.oidc issuer is configured)");
      return this.#oidc.verify(secret, credential.user);
    }
    throw new AgateError("AUTH_FAILED", `password authentication failed for user "${credential.user}" (the password is neither an agate API key nor an OIDC token)`);
  }

  /** Bearer credentials for the admin API: API keys or tokens, no user name. */
  async verifyBearer(secret: string): Promise<Identity> {
    if (secret.startsWith(API_KEY_PREFIX)) return this.apiKeys.verifyBearer(secret);
    if (this.#oidc && OidcVerifier.looksLikeJwt(secret)) return this.#oidc.verify(secret);
    throw new AgateError("AUTH_FAILED", "the credential is neither an agate API key nor an OIDC token");
  }

  revalidate(identity: Identity): AgateError | null {
    if (identity.issuer === "agate:api-key") return this.apiKeys.revalidate(identity);
    let exp = this.#expiry.get(identity);
    if (exp === undefined) {
      exp = identity.expires_at ? Date.parse(identity.expires_at) + (this.#skew.get(identity.issuer) ?? 0) : Infinity;
      this.#expiry.set(identity, exp);
    }
    if (this.now() >= exp) return new AgateError("AUTH_TOKEN_EXPIRED", `the session's token expired at ${identity.expires_at}; reconnect with a fresh token`);
    return null;
  }

}
