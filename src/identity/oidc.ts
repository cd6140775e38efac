/**
 * OIDC bearer tokens (JWTs), verified with `jose`.
 *
 * Each configured issuer is found by discovery
 * (`<issuer>/.well-known/openid-configuration`, whose `issuer` must match)
 * unless its `jwks_uri` is given. Its keys come from jose's remote JWK set:
 * cached for `jwks_cache_s`, refetched once for an unknown `kid` (at most
 * every `jwks_cooldown_s`), and when the cache has run out and the
 * endpoint is unreachable, verification fails (closed); until then the
 * cached keys are used.
 *
 * A token is checked for: a configured issuer (its `iss` picks which), a
 * signature by one of that issuer's keys with an algorithm from the
 * allow-list (never `none`, never HMAC: the keys are public), `aud`, `exp`,
 * `nbf` and `iat` within the configured clock skew, a lifetime (`exp - iat`,
 * or `exp - now` for a token without `iat`) of at most
 * `max_token_lifetime_s`, and no `crit` header: agate implements no JWS
 * extension, so a token that marks one critical is refused (RFC 7515
 * §4.1.11). Errors say what failed
 * ("token expired", "audience mismatch", "unknown signing key") and never
 * carry key material.
 */
import { createHash } from "node:crypto";
import { createRemoteJWKSet, decodeJwt, decodeProtectedHeader, errors, jwtVerify, type JWTPayload } from "jose";
import { AgateError } from "../core/errors.ts";
import type { Identity } from "../core/types.ts";

export interface OidcIssuerConfig {
  /** The issuer URL, exactly as tokens carry it in `iss`. */
  issuer: string;
  /** Accepted `aud` values: the token must name one. */
  audience: string[];
  /** Signature algorithms accepted (asymmetric only). */
  algorithms: string[];
  /** Leeway for exp, nbf and iat, in seconds. */
  clock_skew_s: number;
  /** Claim holding the groups (an array, or a space-separated string). */
  groups_claim: string;
  /** Claim naming the agent acting for the subject: `act` (RFC 8693, {sub}) or a string claim such as `azp`/`client_id`. */
  actor_claim?: string;
  /** Kind of identity for tokens of this issuer (an actor makes it "agent"; a client acting as itself, "service"). */
  kind: Identity["kind"];
  /** Claims a login's user name may equal (PostgreSQL: the user in the startup packet). Default: sub. */
  user_claims?: string[];
  /** Skip discovery and use this JWKS URL. */
  jwks_uri?: string;
  jwks_cache_s: number;
  jwks_cooldown_s: number;
  /** Longest accepted lifetime, `exp - iat` (or `exp - now` without `iat`), in seconds. */
  max_token_lifetime_s: number;
}

/** Algorithms that can be on the allow-list: asymmetric signatures only. */
export const ASYMMETRIC_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519"];

const FETCH_TIMEOUT_MS = 5000;


interface Issuer {
  cfg: OidcIssuerConfig;
  keys: ReturnType<typeof createRemoteJWKSet> | null;
  discovering: Promise<ReturnType<typeof createRemoteJWKSet>> | null;
}

export class OidcVerifier {
  readonly #issuers = new Map<string, Issuer>();

  constructor(issuers: OidcIssuerConfig[]) {
    for (const cfg of issuers) {
      const bad = cfg.algorithms.filter((a) => !ASYMMETRIC_ALGORITHMS.includes(a));
      if (bad.length) throw new AgateError("CONFIG_INVALID", `identity.oidc issuer ${cfg.issuer}: algorithms ${bad.join(", ")} are not asymmetric signature algorithms`);
      this.#issuers.set(cfg.issuer, { cfg, keys: null, discovering: null });
    }
  }

  /** Whether `secret` looks like a JWT (three base64url parts). */
  static looksLikeJwt(secret: string): boolean {
    return /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(secret);
  }

  /**
   * Verify `token` and return its identity, or throw AUTH_* with a sentence
   * the client may see. With `user` (a login's user name), it must equal one
   * of the issuer's user_claims, so the log and the client agree on who it is.
   */
  async verify(token: string, user?: string): Promise<Identity> {
    let claims: JWTPayload;
    let header: ReturnType<typeof decodeProtectedHeader>;
    try {
      claims = decodeJwt(token);
      header = decodeProtectedHeader(token);
    } catch {
      throw new AgateError("AUTH_TOKEN_MALFORMED", "the token is not a well-formed JWT");
    }
    const issuer = typeof claims.iss === "string" ? this.#issuers.get(claims.iss) : undefined;
    if (!issuer) {
      throw new AgateError("AUTH_TOKEN_ISSUER", `the token's issuer ${typeof claims.iss === "string" ? JSON.stringify(claims.iss.slice(0, 200)) : "(none)"} is not configured`);
    }
    const { cfg } = issuer;
    const alg = header.alg;
    if (!alg || !cfg.algorithms.includes(alg)) {
      throw new AgateError("AUTH_TOKEN_ALGORITHM", `the token's algorithm ${JSON.stringify(String(alg).slice(0, 20))} is not allowed (allowed: ${cfg.algorithms.join(", ")})`);
    }
    if (header.crit !== undefined) throw critical(header.crit);
    const keys = await this.#keys(issuer);
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, keys, {
        issuer: cfg.issuer,
        audience: cfg.audience,
        algorithms: cfg.algorithms,
        clockTolerance: cfg.clock_skew_s,
        requiredClaims: ["exp", "sub"],
      }));
    } catch (e) {
      throw explain(e, claims, cfg);
    }
    const now = Date.now() / 1000;
    if (typeof payload.iat === "number" && payload.iat > now + cfg.clock_skew_s) {
      throw new AgateError("AUTH_TOKEN_NOT_YET_VALID", "the token was issued in the future (check the clocks)");
    }
    // exp is required above. Without iat the lifetime left is judged: a token that claims no issue time gets no benefit of the doubt.
    const lifetime = typeof payload.iat === "number" ? payload.exp! - payload.iat : payload.exp! - now;
    if (lifetime > cfg.max_token_lifetime_s) {
      const span = typeof payload.iat === "number" ? `from ${iso(payload.iat)} to ${iso(payload.exp!)}` : `until ${iso(payload.exp!)} and has no iat`;
      throw new AgateError(
        "AUTH_TOKEN_LIFETIME",
        `the token is valid for ${Math.round(lifetime)} s (${span}), longer than the ${cfg.max_token_lifetime_s} s this issuer's max_token_lifetime_s allows; ask the provider for shorter-lived tokens`,
      );
    }
    if (user !== undefined) {
      const claims = cfg.user_claims ?? ["sub"];
      if (!claims.some((c) => payload[c] === user)) {
        throw new AgateError("AUTH_USER_MISMATCH", `the user name "${user}" does not match the token (log in as its ${claims.join(" or ")})`);
      }
    }
    return this.#identity(payload, cfg, token);
  }

  #identity(p: JWTPayload, cfg: OidcIssuerConfig, token: string): Identity {
    const raw = p[cfg.groups_claim];
    const groups = Array.isArray(raw) ? raw.filter((g): g is string => typeof g === "string") : typeof raw === "string" ? raw.split(/\s+/).filter(Boolean) : [];
    let actor: string | undefined;
    if (cfg.actor_claim) {
      const a = p[cfg.actor_claim];
      if (typeof a === "string" && a !== p.sub) actor = a;
      else if (a && typeof a === "object" && typeof (a as { sub?: unknown }).sub === "string") actor = (a as { sub: string }).sub;
    }
    // A client acting as itself (client credentials: sub is its client_id, RFC 9068) is a service.
    const client = typeof p.client_id === "string" ? p.client_id : typeof p.azp === "string" ? p.azp : undefined;
    return {
      subject: p.sub!,
      issuer: cfg.issuer,
      groups,
      kind: actor ? "agent" : client !== undefined && client === p.sub ? "service" : cfg.kind,
      ...(actor ? { actor } : {}),
      // The token's id, or a digest of it when it has none (never the token).
      credential_id: typeof p.jti === "string" ? p.jti : `sha256:${createHash("sha256").update(token).digest("hex").slice(0, 32)}`,
      expires_at: new Date(p.exp! * 1000).toISOString(),
    };
  }

  /** The issuer's remote key set, after discovery. Fails closed when the issuer cannot be reached. */
  async #keys(issuer: Issuer): Promise<ReturnType<typeof createRemoteJWKSet>> {
    if (issuer.keys) return issuer.keys;
    issuer.discovering ??= (async () => {
      const uri = issuer.cfg.jwks_uri ?? (await jwksUri(issuer.cfg.issuer));
      issuer.keys = createRemoteJWKSet(new URL(uri), {
        timeoutDuration: FETCH_TIMEOUT_MS,
        cacheMaxAge: issuer.cfg.jwks_cache_s * 1000,
        cooldownDuration: issuer.cfg.jwks_cooldown_s * 1000,
      });
      return issuer.keys;
    })().finally(() => {
      issuer.discovering = null;
    });
    return issuer.discovering;
  }
}

/**
 * The issuer's discovery document (`<issuer>/.well-known/openid-configuration`),
 * which must name `issuer` itself. Throws AgateError `code`: the document
 * could not be read (the reason in parentheses), or describes another issuer.
 */
export async function discover(issuer: string, code: string, timeoutMs: number): Promise<Record<string, unknown>> {
  const url = `${issuer.replace(/\/$/, "")}/.well-known/openid-configuration`;
  let doc: Record<string, unknown>;
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs), redirect: "manual" });
    if (res.status !== 200) throw new Error(`HTTP ${res.status}`);
    doc = (await res.json()) as Record<string, unknown>;
  } catch (e) {
    throw new AgateError(code, `the identity provider ${issuer} could not be reached (cannot read ${url}: ${(e as Error).message})`);
  }
  if (doc?.issuer !== issuer) throw new AgateError(code, `the identity provider at ${url} says it is ${JSON.stringify(doc?.issuer)}, not ${issuer}`);
  return doc;
}

/** The jwks_uri of the issuer (discovery), for verifying tokens: failures refuse. */
async function jwksUri(issuer: string): Promise<string> {
  let doc: Record<string, unknown>;
  try {
    doc = await discover(issuer, "AUTH_ISSUER_UNREACHABLE", FETCH_TIMEOUT_MS);
  } catch (e) {
    throw new AgateError("AUTH_ISSUER_UNREACHABLE", `${(e as Error).message}; the token cannot be verified, refusing`);
  }
  if (typeof doc.jwks_uri !== "string") throw new AgateError("AUTH_ISSUER_UNREACHABLE", `the identity provider ${issuer} publishes no jwks_uri; refusing`);
  return doc.jwks_uri;
}

/** A Unix time as RFC 3339 (an absurd one as the number). */
function iso(t: number): string {
  const d = new Date(t * 1000);
  return Number.isNaN(d.getTime()) ? String(t) : d.toISOString();
}

/** A token with a crit header: name what it marks critical, which agate does not implement. */
function critical(crit: unknown): AgateError {
  if (!Array.isArray(crit) || crit.length === 0 || crit.some((c) => typeof c !== "string" || c === "")) {
    return new AgateError("AUTH_TOKEN_CRIT", "the token's crit header is not a list of extension names (RFC 7515 §4.1.11)");
  }
  const names = crit.slice(0, 5).map((c: string) => JSON.stringify(c.slice(0, 40))).join(", ");
  return new AgateError(
    "AUTH_TOKEN_CRIT",
    `the token marks the header extension ${names}${crit.length > 5 ? " …" : ""} critical (crit); agate implements no JWS extension, so it must refuse the token: ask the provider for tokens without crit`,
  );
}

/** A jose failure as a specific, safe sentence. */
function explain(e: unknown, claims: JWTPayload, cfg: OidcIssuerConfig): AgateError {
  if (e instanceof errors.JWTExpired) {
    return new AgateError("AUTH_TOKEN_EXPIRED", `the token expired at ${typeof claims.exp === "number" ? new Date(claims.exp * 1000).toISOString() : "an unknown time"}`);
  }
  if (e instanceof errors.JWTClaimValidationFailed) {
    switch (e.claim) {
      case "aud":
        return new AgateError("AUTH_TOKEN_AUDIENCE", `audience mismatch: the token is for ${JSON.stringify(claims.aud ?? null).slice(0, 200)}, agate accepts ${cfg.audience.join(", ")}`);
      case "nbf":
        return new AgateError("AUTH_TOKEN_NOT_YET_VALID", `the token is not valid before ${typeof claims.nbf === "number" ? new Date(claims.nbf * 1000).toISOString() : "its nbf"}`);
      case "iss":
        return new AgateError("AUTH_TOKEN_ISSUER", "issuer mismatch");
      case "iat":
        return new AgateError("AUTH_TOKEN_NOT_YET_VALID", "the token was issued in the future (check the clocks)");
      default:
        return new AgateError("AUTH_TOKEN_CLAIMS", `the token's "${e.claim}" claim is missing or invalid`);
    }
  }
  if (e instanceof errors.JWKSNoMatchingKey) return new AgateError("AUTH_TOKEN_UNKNOWN_KEY", "the token is signed with an unknown key (no key of the issuer matches its kid)");
  if (e instanceof errors.JWSSignatureVerificationFailed) return new AgateError("AUTH_TOKEN_SIGNATURE", "the token's signature is invalid");
  if (e instanceof errors.JOSEAlgNotAllowed) return new AgateError("AUTH_TOKEN_ALGORITHM", "the token's algorithm is not allowed");
  const unreachable =
    e instanceof errors.JWKSTimeout ||
    (e instanceof errors.JOSEError && /JSON Web Key Set/.test(e.message)) ||
    (e instanceof Error && ("code" in e ? /^(ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENOTFOUND|ConnectionRefused)$/.test(String((e as { code: unknown }).code)) : false)) ||
    (e instanceof TypeError && /fetch|connect/i.test(e.message));
  if (unreachable) {
    return new AgateError("AUTH_ISSUER_UNREACHABLE", `the identity provider's keys could not be fetched and the cached ones have expired; refusing`);
  }
  if (e instanceof errors.JWTInvalid || e instanceof errors.JWSInvalid) return new AgateError("AUTH_TOKEN_MALFORMED", "the token is not a well-formed JWT");
  if (e instanceof errors.JOSENotSupported) return new AgateError("AUTH_TOKEN_ALGORITHM", "the token's algorithm or key type is not supported");
  return new AgateError("AUTH_FAILED", "the token could not be verified");
}
