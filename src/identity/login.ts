/**
 * `agate login`: the OAuth 2.0 device authorization grant (RFC 8628) for a
 * person at a terminal, and a token cache so the next login reuses a token
 * that is still good.
 *
 * The provider is found by discovery. The user is shown a URL and a code;
 * agate polls the token endpoint at the interval the provider asks
 * (slowing down when told) until the person approves, denies, or the code
 * expires.
 */
import { createHash } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { decodeJwt } from "jose";
import { AgateError } from "../core/errors.ts";
import { discover } from "./oidc.ts";

export interface LoginOptions {
  issuer: string;
  clientId: string;
  /** The audience (resource) the token is for: the gateway's identity.oidc audience. */
  audience?: string;
  /**
   * The RFC 8707 resource indicator to ask for. It must be an absolute URI
   * (providers such as oidc-provider refuse anything else with
   * invalid_target), so by default it is sent only when `audience` is one.
   */
  resource?: string;
  scope: string;
  /** Where to tell the person what to do (stderr). */
  tell: (line: string) => void;
  /** Reuse a cached token that is valid for at least this long (seconds). */
  minValidity: number;
  force: boolean;
  cacheDir?: string;
  /** For tests: how to wait between polls. */
  sleep?: (ms: number) => Promise<void>;
}

export interface LoginResult {
  token: string;
  /** The claim to use as the user name (preferred_username, email or sub). */
  user: string;
  expiresAt: Date;
  cached: boolean;
}

const FETCH_TIMEOUT_MS = 10_000;

interface Discovery {
  token_endpoint: string;
  device_authorization_endpoint: string;
}

async function post(url: string, form: Record<string, string>): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded", accept: "application/json" },
    body: new URLSearchParams(form),
    signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
  });
  let body: Record<string, unknown> = {};
  try {
    body = (await res.json()) as Record<string, unknown>;
  } catch {}
  return { status: res.status, body };
}

/** The provider's endpoints for the device grant. */
async function deviceEndpoints(issuer: string): Promise<Discovery> {
  const doc = (await discover(issuer, "LOGIN_FAILED", FETCH_TIMEOUT_MS)) as Partial<Discovery>;
  if (typeof doc.token_endpoint !== "string" || typeof doc.device_authorization_endpoint !== "string") {
    throw new AgateError("LOGIN_FAILED", `${issuer} does not offer the device authorization grant (no device_authorization_endpoint or token_endpoint)`);
  }
  return doc as Discovery;
}

function cachePath(o: LoginOptions): string {
  const dir = o.cacheDir ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "agate", "tokens");
  const name = createHash("sha256").update(`${o.issuer}\n${o.clientId}\n${o.audience ?? ""}`).digest("hex").slice(0, 32);
  return join(dir, `${name}.json`);
}

/** The claims that name the holder, as the gateway matches the user name. */
function userOf(token: string): { user: string; exp: number } {
  const c = decodeJwt(token);
  const user = [c.preferred_username, c.email, c.sub].find((v): v is string => typeof v === "string" && v !== "");
  if (!user || typeof c.exp !== "number") throw new AgateError("LOGIN_FAILED", "the provider's token has no subject or no expiry");
  return { user, exp: c.exp };
}

/** Run the device grant (or reuse a cached token) and return the token to present. */
export async function login(o: LoginOptions): Promise<LoginResult> {
  const file = cachePath(o);
  if (!o.force && existsSync(file)) {
    try {
      const { token } = JSON.parse(readFileSync(file, "utf8")) as { token: string };
      const { user, exp } = userOf(token);
      if (exp - Date.now() / 1000 >= o.minValidity) return { token, user, expiresAt: new Date(exp * 1000), cached: true };
    } catch {
      // an unreadable cache entry is simply replaced
    }
  }
  const d = await deviceEndpoints(o.issuer);
  const form: Record<string, string> = { client_id: o.clientId, scope: o.scope };
  // RFC 8707: a resource indicator is an absolute URI; a bare audience ("agate") is sent as `audience` only.
  const resource = o.resource ?? (o.audience && /^[a-z][a-z0-9+.-]*:/i.test(o.audience) ? o.audience : undefined);
  if (resource) form.resource = resource;
  if (o.audience) form.audience = o.audience; // what some providers use instead
  const start = await post(d.device_authorization_endpoint, form);
  if (start.status !== 200 || typeof start.body.device_code !== "string") {
    throw new AgateError("LOGIN_FAILED", `the provider refused the device authorization request: ${String(start.body.error_description ?? start.body.error ?? `HTTP ${start.status}`)}`);
  }
  const b = start.body as { device_code: string; user_code: string; verification_uri: string; verification_uri_complete?: string; expires_in: number; interval?: number };
  o.tell(`To sign in, open ${b.verification_uri_complete ?? b.verification_uri}`);
  o.tell(`and confirm the code ${b.user_code} (it expires in ${Math.round(b.expires_in / 60)} min).`);
  let interval = Math.max(1, b.interval ?? 5) * 1000;
  const deadline = Date.now() + b.expires_in * 1000;
  const sleep = o.sleep ?? ((ms: number) => Bun.sleep(ms));
  for (;;) {
    if (Date.now() > deadline) throw new AgateError("LOGIN_EXPIRED", "the code expired before it was confirmed; run agate login again");
    await sleep(interval);
    const r = await post(d.token_endpoint, { grant_type: "urn:ietf:params:oauth:grant-type:device_code", device_code: b.device_code, client_id: o.clientId });
    if (r.status === 200) {
      const token = pickToken(r.body, o.audience);
      const { user, exp } = userOf(token);
      save(file, token);
      return { token, user, expiresAt: new Date(exp * 1000), cached: false };
    }
    switch (r.body.error) {
      case "authorization_pending":
        continue;
      case "slow_down":
        interval += 5000;
        continue;
      case "access_denied":
        throw new AgateError("LOGIN_DENIED", "the sign-in was denied");
      case "expired_token":
        throw new AgateError("LOGIN_EXPIRED", "the code expired before it was confirmed; run agate login again");
      default:
        throw new AgateError("LOGIN_FAILED", `the provider refused the token request: ${String(r.body.error_description ?? r.body.error ?? `HTTP ${r.status}`)}`);
    }
  }
}

/** The JWT access token if it is for `audience`, else the ID token. */
function pickToken(body: Record<string, unknown>, audience?: string): string {
  const { access_token: at, id_token: it } = body as { access_token?: string; id_token?: string };
  if (typeof at === "string" && at.split(".").length === 3) {
    try {
      const aud = decodeJwt(at).aud;
      if (!audience || aud === audience || (Array.isArray(aud) && aud.includes(audience))) return at;
    } catch {}
  }
  if (typeof it === "string") return it;
  throw new AgateError("LOGIN_FAILED", `the provider returned no JWT${audience ? ` for audience ${audience}` : ""} (ask for the right resource/audience)`);
}

function save(file: string, token: string): void {
  mkdirSync(join(file, ".."), { recursive: true, mode: 0o700 });
  const tmp = `${file}.tmp`;
  writeFileSync(tmp, JSON.stringify({ token }), { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, file);
}
