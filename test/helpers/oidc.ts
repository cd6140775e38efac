/**
 * A real OpenID Provider for tests: panva's `oidc-provider` (a Koa app) served
 * by node:http on a free loopback port, issuer `http://127.0.0.1:PORT`.
 *
 * - Access tokens are JWTs (RFC 9068, `typ: at+jwt`) signed RS256 with keys
 *   generated here, so tests can also mint arbitrary tokens with the very same
 *   key and `kid` ({@link TestIssuer.sign}).
 * - Audience: oidc-provider only accepts absolute-URI resource indicators
 *   (RFC 8707), so audience `X` is requested as resource `urn:audience:X`
 *   ({@link TestIssuer.resource}); the resource server config maps it back to
 *   `aud: "X"`. Absolute URIs (`https://…`) are their own audience. Requests
 *   without `resource` default to the issuer's default audience.
 * - `groups` (or `opts.groupsClaim`) is added to access tokens by
 *   `extraTokenClaims`: per service client (client_credentials) from this
 *   harness's client table, per user (device flow) from the account given to
 *   {@link TestIssuer.approveDevice}.
 * - Device flow: the real user-code pages at `/device` are driven with fetch
 *   and a tiny cookie jar; login and consent happen in a minimal interaction
 *   endpoint (`/interaction/:uid`) added to the same server that uses
 *   `provider.interactionDetails` / `interactionFinished`.
 * - Key rotation builds a new Provider with the new key set and swaps it in
 *   behind the same HTTP server; state (device codes, sessions, grants) lives
 *   in this issuer's own in-memory adapter, shared by both Providers.
 */
import http from "node:http";
import type net from "node:net";
import { randomBytes } from "node:crypto";
import { exportJWK, exportSPKI, generateKeyPair, SignJWT, type CryptoKey, type JWK } from "jose";
import Provider, { type Adapter, type AdapterPayload, type Configuration } from "oidc-provider";
import { freePort } from "./postgres.ts";

export interface TestClient {
  clientId: string;
  /** Present for confidential (client_credentials) clients. */
  clientSecret?: string;
  /** Groups put in this client's client_credentials access tokens. */
  groups?: string[];
}

export interface TestAccount {
  sub: string;
  groups?: string[];
  /** Further claims copied into the user's access tokens (e.g. email). */
  claims?: Record<string, unknown>;
}

export interface TestIssuer {
  /** e.g. http://127.0.0.1:PORT (no trailing slash; equals the discovery `issuer`). */
  issuer: string;
  port: number;
  jwksUri: string;
  tokenEndpoint: string;
  deviceAuthorizationEndpoint: string;
  /** The default audience (`aud` of tokens requested without resource). */
  audience: string;
  /** The confidential client_credentials client (has groups ["svc-reporting"]). */
  serviceClient: Required<TestClient>;
  /** The public native client for the device grant (token_endpoint_auth_method none). */
  deviceClientId: string;
  /** The resource indicator to send (`resource=`) to get tokens with `aud` = audience. */
  resource(audience?: string): string;
  /** client_credentials grant at the token endpoint: a JWT access token with `aud` = audience. */
  clientToken(opts?: { clientId?: string; clientSecret?: string; audience?: string; scope?: string }): Promise<string>;
  /**
   * A JWT signed with the provider's current key and kid. Defaults: iss, aud
   * (default audience), iat (now), exp (now+300), jti; the given claims override
   * them, and a claim given as `undefined` is removed. Header defaults:
   * `{alg: "RS256", kid: <current>, typ: "at+jwt"}`. `alg: "ES256"` uses the
   * published P-256 key. `key` overrides the signing key (e.g. HS256 with the
   * public key bytes: the alg-confusion attack). `crit` names the header
   * extensions the signer lets a `crit` header mark critical.
   */
  sign(claims: Record<string, unknown>, opts?: { kid?: string | null; alg?: string; header?: Record<string, unknown>; key?: CryptoKey | Uint8Array; crit?: Record<string, boolean> }): Promise<string>;
  /** A new RSA signing key (new kid) becomes current; the old one stays published unless dropOld. */
  rotateKey(opts?: { dropOld?: boolean }): Promise<void>;
  /** Current RSA public key as JWK (with kid, alg, use). */
  publicJwk(): JWK;
  /** Current RSA public key as SPKI PEM. */
  publicPem(): Promise<string>;
  /** The currently published JWKS. */
  jwks(): { keys: JWK[] };
  /**
   * The human side of the device flow: open verification_uri, enter the
   * user code, confirm, log in as `account.sub`, consent. Afterwards the
   * device's token polling succeeds with a token for that user.
   */
  approveDevice(userCode: string, account: TestAccount): Promise<void>;
  /** The human presses "Abort" on the confirmation page: polling gets access_denied. */
  denyDevice(userCode: string): Promise<void>;
  /** Close the HTTP server (connections too): the issuer is unreachable (ECONNREFUSED). */
  stop(): Promise<void>;
  /** Listen again on the same port. */
  start(): Promise<void>;
  close(): Promise<void>;
}

interface SigningKey {
  kid: string;
  alg: "RS256" | "ES256";
  privateKey: CryptoKey;
  publicKey: CryptoKey;
  publicJwk: JWK;
  privateJwk: JWK;
}

const SCOPES = "read write admin";
const RESOURCE_PREFIX = "urn:audience:";

async function makeKey(alg: "RS256" | "ES256"): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  const kid = `${alg.toLowerCase()}-${randomBytes(6).toString("hex")}`;
  const publicJwk: JWK = { ...(await exportJWK(publicKey)), kid, alg, use: "sig" };
  const privateJwk: JWK = { ...(await exportJWK(privateKey)), kid, alg, use: "sig" };
  return { kid, alg, privateKey, publicKey, publicJwk, privateJwk };
}

/** A minimal cookie jar honouring Path (oidc-provider scopes interaction cookies by path). */
class CookieJar {
  private cookies = new Map<string, { name: string; value: string; path: string }>();

  store(res: Response): void {
    for (const line of res.headers.getSetCookie()) {
      const [pair = "", ...attrs] = line.split(";").map((s) => s.trim());
      const eq = pair.indexOf("=");
      const name = pair.slice(0, eq);
      const value = pair.slice(eq + 1);
      let path = "/";
      let expired = value === "";
      for (const a of attrs) {
        const [k = "", v = ""] = a.split("=");
        if (k.toLowerCase() === "path") path = v;
        if (k.toLowerCase() === "expires" && Date.parse(v) < Date.now()) expired = true;
        if (k.toLowerCase() === "max-age" && Number(v) <= 0) expired = true;
      }
      const key = `${name}\0${path}`;
      if (expired) this.cookies.delete(key);
      else this.cookies.set(key, { name, value, path });
    }
  }

  header(url: string): string {
    const path = new URL(url).pathname;
    return [...this.cookies.values()]
      .filter((c) => path === c.path || path.startsWith(c.path.endsWith("/") ? c.path : c.path + "/"))
      .sort((a, b) => b.path.length - a.path.length)
      .map((c) => `${c.name}=${c.value}`)
      .join("; ");
  }
}

/**
 * Per-issuer in-memory storage shared by successive Provider instances (key
 * rotation swaps the Provider; device codes, sessions and grants survive).
 * Replaces oidc-provider's module-global MemoryAdapter (and its warning).
 */
function memoryAdapter(): (model: string) => Adapter {
  const store = new Map<string, { payload: AdapterPayload; expiresAt: number }>();
  const index = new Map<string, string>(); // "userCode:X" / "uid:X" -> key
  const grants = new Map<string, Set<string>>(); // grantId -> keys
  const get = (key: string | undefined) => {
    const e = key === undefined ? undefined : store.get(key);
    if (!e) return undefined;
    if (e.expiresAt <= Date.now()) {
      store.delete(key!);
      return undefined;
    }
    return e.payload;
  };
  return (model) => ({
    async upsert(id, payload, expiresIn) {
      const key = `${model}:${id}`;
      store.set(key, { payload, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : Infinity });
      if (payload.userCode) index.set(`userCode:${payload.userCode}`, key);
      if (model === "Session" && payload.uid) index.set(`uid:${payload.uid}`, key);
      if (payload.grantId) grants.set(payload.grantId, (grants.get(payload.grantId) ?? new Set()).add(key));
    },
    find: async (id) => get(`${model}:${id}`),
    findByUserCode: async (userCode) => get(index.get(`userCode:${userCode}`)),
    findByUid: async (uid) => get(index.get(`uid:${uid}`)),
    async consume(id) {
      const p = get(`${model}:${id}`);
      if (p) p.consumed = Math.floor(Date.now() / 1000);
    },
    async destroy(id) {
      store.delete(`${model}:${id}`);
    },
    async revokeByGrantId(grantId) {
      for (const key of grants.get(grantId) ?? []) store.delete(key);
      grants.delete(grantId);
    },
  });
}

function errText(e: unknown): string {
  const o = e as { error?: string; error_description?: string; message?: string };
  return htmlEscape([o.error, o.error_description ?? o.message].filter(Boolean).join(": "));
}

function htmlEscape(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

async function readForm(req: http.IncomingMessage): Promise<URLSearchParams> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return new URLSearchParams(Buffer.concat(chunks).toString("utf8"));
}

export async function startIssuer(opts: {
  audience?: string;
  groupsClaim?: string;
  /** Extra clients besides the default service and device clients. */
  clients?: TestClient[];
  /** Access token lifetime in seconds (default 300). */
  accessTokenTTL?: number;
} = {}): Promise<TestIssuer> {
  const audience = opts.audience ?? "agate";
  const groupsClaim = opts.groupsClaim ?? "groups";
  const port = await freePort();
  const issuer = `http://127.0.0.1:${port}`;

  const serviceClient = { clientId: "svc-reporting", clientSecret: "svc-reporting-secret", groups: ["svc-reporting"] };
  const deviceClientId = "agate-cli";
  const clients: TestClient[] = [serviceClient, { clientId: deviceClientId }, ...(opts.clients ?? [])];
  const clientGroups = new Map(clients.map((c) => [c.clientId, c.groups]));
  const accounts = new Map<string, TestAccount>();

  let rsaKeys: SigningKey[] = [await makeKey("RS256")];
  const ecKey = await makeKey("ES256");
  const current = () => rsaKeys[0]!;
  const publishedKeys = () => [...rsaKeys, ecKey];

  const resourceFor = (aud = audience) => (/^[a-z][a-z0-9+.-]*:/i.test(aud) ? aud : RESOURCE_PREFIX + aud);
  const audienceOf = (indicator: string) => (indicator.startsWith(RESOURCE_PREFIX) ? indicator.slice(RESOURCE_PREFIX.length) : indicator);

  const adapter = memoryAdapter();
  const configuration = (): Configuration => ({
    adapter,
    clients: clients.map((c) =>
      c.clientSecret !== undefined
        ? {
            client_id: c.clientId,
            client_secret: c.clientSecret,
            grant_types: ["client_credentials"],
            response_types: [],
            redirect_uris: [],
            scope: SCOPES,
          }
        : {
            client_id: c.clientId,
            application_type: "native",
            token_endpoint_auth_method: "none",
            grant_types: ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"],
            response_types: [],
            redirect_uris: [],
            scope: `openid offline_access ${SCOPES}`,
          },
    ),
    jwks: { keys: publishedKeys().map((k) => k.privateJwk) } as Configuration["jwks"],
    cookies: { keys: ["agate-test-cookie-key"] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      deviceFlow: {
        enabled: true,
        // Plain pages (the defaults pull Google Fonts and log a notice each time).
        userCodeInputSource: async (ctx, form, _out, err) => {
          ctx.body = `<!DOCTYPE html><title>Sign-in</title><p>${err ? `Error: ${err.name} ${errText((err as { cause?: unknown }).cause ?? err)}` : "Enter the code displayed on your device"}</p>${form}`;
        },
        userCodeConfirmSource: async (ctx, form, client, _deviceInfo, userCode) => {
          ctx.body = `<!DOCTYPE html><title>Confirm Device</title><p>${client.clientId} shows <code>${userCode}</code>?</p>${form}`;
        },
        successSource: async (ctx) => {
          ctx.body = `<!DOCTYPE html><title>Sign-in Success</title><p>Sign-in Success</p>`;
        },
      },
      introspection: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (_ctx, _client, oneOf) => oneOf ?? resourceFor(audience),
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, indicator) => ({
          audience: audienceOf(indicator),
          scope: SCOPES,
          accessTokenFormat: "jwt",
          accessTokenTTL: opts.accessTokenTTL ?? 300,
          jwt: { sign: { alg: "RS256" } },
        }),
      },
    },
    claims: { openid: ["sub"], groups: [groupsClaim] },
    scopes: ["openid", "offline_access", ...SCOPES.split(" ")],
    findAccount: async (_ctx, sub) => {
      const account = accounts.get(sub);
      if (!account) return undefined;
      return {
        accountId: sub,
        claims: async () => ({ sub, ...(account.groups ? { [groupsClaim]: account.groups } : {}), ...account.claims }),
      };
    },
    extraTokenClaims: async (_ctx, token) => {
      if ("accountId" in token && token.accountId) {
        const account = accounts.get(token.accountId);
        if (!account) return undefined;
        return { ...account.claims, ...(account.groups ? { [groupsClaim]: account.groups } : {}) };
      }
      const groups = clientGroups.get(token.clientId!);
      return groups ? { [groupsClaim]: groups } : undefined;
    },
    interactions: { url: async (_ctx, interaction) => `/interaction/${interaction.uid}` },
    // Quiet the "you should change this" warnings and serve JSON errors.
    clientBasedCORS: () => true,
    renderError: async (ctx, out) => {
      ctx.type = "json";
      ctx.body = out;
    },
    ttl: {
      AccessToken: opts.accessTokenTTL ?? 300,
      ClientCredentials: opts.accessTokenTTL ?? 300,
      DeviceCode: 600,
      IdToken: 300,
      RefreshToken: 3600,
      Interaction: 600,
      Session: 3600,
      Grant: 3600,
    },
  });

  const errors: unknown[] = [];
  const makeProvider = () => {
    const p = new Provider(issuer, configuration());
    const record = (ev: string) => (_ctx: unknown, err: unknown) => {
      errors.push(err);
      if (process.env.OIDC_DEBUG) console.error(`[oidc ${ev}]`, err);
    };
    p.on("server_error", record("server_error"));
    p.on("grant.error", record("grant.error"));
    p.on("authorization.error", record("authorization.error"));
    return { provider: p, callback: p.callback() };
  };
  let op = makeProvider();

  async function interaction(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const { provider } = op;
    try {
      const details = await provider.interactionDetails(req, res);
      if (req.method === "GET") {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ uid: details.uid, prompt: details.prompt, params: details.params }));
        return;
      }
      const form = await readForm(req);
      if (form.get("deny")) {
        await provider.interactionFinished(req, res, { error: "access_denied", error_description: "End-User denied" }, { mergeWithLastSubmission: false });
        return;
      }
      if (details.prompt.name === "login") {
        const sub = form.get("sub");
        if (!sub || !accounts.has(sub)) throw new Error(`unknown account ${sub}`);
        await provider.interactionFinished(req, res, { login: { accountId: sub } }, { mergeWithLastSubmission: false });
        return;
      }
      if (details.prompt.name === "consent") {
        const missing = details.prompt.details as { missingOIDCScope?: string[]; missingOIDCClaims?: string[]; missingResourceScopes?: Record<string, string[]> };
        const grant = details.grantId
          ? (await provider.Grant.find(details.grantId))!
          : new provider.Grant({ accountId: details.session!.accountId, clientId: details.params.client_id as string });
        if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(" "));
        if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
        for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) grant.addResourceScope(indicator, scopes.join(" "));
        const grantId = await grant.save();
        await provider.interactionFinished(req, res, { consent: details.grantId ? {} : { grantId } }, { mergeWithLastSubmission: true });
        return;
      }
      throw new Error(`unhandled prompt ${details.prompt.name}`);
    } catch (err) {
      if (!res.headersSent) {
        res.writeHead(400, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: "interaction_failed", error_description: String(err) }));
      }
    }
  }

  const sockets = new Set<net.Socket>();
  const server = http.createServer((req, res) => {
    if (req.url?.startsWith("/interaction/")) void interaction(req, res);
    else void op.callback(req, res);
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  let listening = false;

  const start = () =>
    new Promise<void>((resolve, reject) => {
      if (listening) return resolve();
      server.once("error", reject);
      server.listen(port, "127.0.0.1", () => {
        server.off("error", reject);
        listening = true;
        resolve();
      });
    });
  const stop = () =>
    new Promise<void>((resolve) => {
      if (!listening) return resolve();
      listening = false;
      server.close(() => resolve());
      server.closeAllConnections?.();
      for (const s of sockets) s.destroy();
    });

  await start();

  const discovery = (await (await fetch(`${issuer}/.well-known/openid-configuration`)).json()) as Record<string, string>;

  /** GET /device for the xsrf token (in the session), then POST the user code. */
  async function submitUserCode(jar: CookieJar, userCode: string, extra: Record<string, string>): Promise<Response> {
    const verification = discovery.device_authorization_endpoint!.replace(/\/device\/auth$/, "/device");
    const page = await fetch(verification, { redirect: "manual" });
    jar.store(page);
    const html = await page.text();
    const xsrf = /name="xsrf" value="([^"]+)"/.exec(html)?.[1];
    if (!xsrf) throw new Error(`no xsrf in device page: ${html.slice(0, 300)}`);
    const post = async (fields: Record<string, string>) => {
      const r = await fetch(verification, {
        method: "POST",
        redirect: "manual",
        headers: { "content-type": "application/x-www-form-urlencoded", cookie: jar.header(verification) },
        body: new URLSearchParams({ xsrf, user_code: userCode, ...fields }),
      });
      jar.store(r);
      return r;
    };
    if (extra.abort) return post(extra);
    // First POST renders the confirmation page ("is this the code on your device?"), second confirms.
    const confirmPage = await post({});
    const confirmHtml = await confirmPage.text();
    if (!confirmHtml.includes('name="confirm"')) throw new Error(`device code not accepted (${confirmPage.status}): ${confirmHtml.replace(/<style>[^]*<\/style>/, "").slice(0, 500)}`);
    return post({ confirm: "yes", ...extra });
  }

  async function follow(jar: CookieJar, res: Response, sub: string): Promise<Response> {
    for (let hops = 0; hops < 10 && res.status >= 300 && res.status < 400; hops++) {
      const url = new URL(res.headers.get("location")!, issuer).href;
      if (new URL(url).pathname.startsWith("/interaction/")) {
        // The login page, then the consent page: the human logs in as `sub` and consents.
        res = await fetch(url, {
          method: "POST",
          redirect: "manual",
          headers: { "content-type": "application/x-www-form-urlencoded", cookie: jar.header(url) },
          body: new URLSearchParams({ sub }),
        });
      } else {
        res = await fetch(url, { redirect: "manual", headers: { cookie: jar.header(url) } });
      }
      jar.store(res);
    }
    return res;
  }

  const self: TestIssuer = {
    issuer: discovery.issuer!,
    port,
    jwksUri: discovery.jwks_uri!,
    tokenEndpoint: discovery.token_endpoint!,
    deviceAuthorizationEndpoint: discovery.device_authorization_endpoint!,
    audience,
    serviceClient,
    deviceClientId,
    resource: resourceFor,

    async clientToken(o = {}) {
      const clientId = o.clientId ?? serviceClient.clientId;
      const secret = o.clientSecret ?? clients.find((c) => c.clientId === clientId)?.clientSecret ?? "";
      const body = new URLSearchParams({ grant_type: "client_credentials", resource: resourceFor(o.audience ?? audience) });
      if (o.scope) body.set("scope", o.scope);
      const res = await fetch(self.tokenEndpoint, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded", authorization: `Basic ${btoa(`${encodeURIComponent(clientId)}:${encodeURIComponent(secret)}`)}` },
        body,
      });
      const json = (await res.json()) as Record<string, string>;
      if (!res.ok || !json.access_token) throw new Error(`client_credentials failed (${res.status}): ${JSON.stringify(json)}`);
      return json.access_token;
    },

    async sign(claims, o = {}) {
      const alg = o.alg ?? "RS256";
      const signer = alg === "ES256" ? ecKey : current();
      const now = Math.floor(Date.now() / 1000);
      const payload: Record<string, unknown> = { iss: self.issuer, aud: audience, iat: now, exp: now + 300, jti: randomBytes(8).toString("hex"), ...claims };
      for (const k of Object.keys(payload)) if (payload[k] === undefined) delete payload[k];
      const header: Record<string, unknown> = { alg, typ: "at+jwt", ...(o.kid === null ? {} : { kid: o.kid ?? signer.kid }), ...o.header };
      return new SignJWT(payload).setProtectedHeader(header as { alg: string }).sign(o.key ?? signer.privateKey, o.crit ? { crit: o.crit } : undefined);
    },

    async rotateKey(o = {}) {
      const fresh = await makeKey("RS256");
      rsaKeys = o.dropOld ? [fresh] : [fresh, ...rsaKeys];
      op = makeProvider();
    },

    publicJwk: () => ({ ...current().publicJwk }),
    publicPem: () => exportSPKI(current().publicKey),
    jwks: () => ({ keys: publishedKeys().map((k) => ({ ...k.publicJwk })) }),

    async approveDevice(userCode, account) {
      accounts.set(account.sub, account);
      const jar = new CookieJar();
      const res = await follow(jar, await submitUserCode(jar, userCode, {}), account.sub);
      const text = await res.text();
      if (res.status !== 200 || !text.includes("Sign-in Success")) {
        throw new Error(`device approval failed (${res.status}): ${text.replace(/<style>[^]*<\/style>/, "").slice(0, 500)}; provider errors: ${errors.map(String).join("; ")}`);
      }
    },

    async denyDevice(userCode) {
      const jar = new CookieJar();
      const res = await submitUserCode(jar, userCode, { abort: "yes" });
      await res.text();
    },

    stop,
    start,
    close: stop,
  };
  return self;
}
