/**
 * The test OpenID Provider (test/helpers/oidc.ts) checked the way agate will
 * consume it: discovery, remote JWKS and jose's jwtVerify.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createRemoteJWKSet, decodeJwt, decodeProtectedHeader, jwtVerify, type JWTPayload } from "jose";
import { startIssuer, type TestIssuer } from "./helpers/oidc.ts";

let iss: TestIssuer;

beforeAll(async () => {
  const t0 = performance.now();
  iss = await startIssuer({ audience: "agate" });
  console.log(`issuer ${iss.issuer} up in ${(performance.now() - t0).toFixed(0)} ms`);
});
afterAll(() => iss?.close());

const form = (fields: Record<string, string>) => ({
  method: "POST",
  headers: { "content-type": "application/x-www-form-urlencoded" },
  body: new URLSearchParams(fields),
});

async function verify(token: string, opts: { cooldownDuration?: number } = {}): Promise<JWTPayload> {
  const jwks = createRemoteJWKSet(new URL(iss.jwksUri), opts);
  const { payload } = await jwtVerify(token, jwks, { issuer: iss.issuer, audience: "agate" });
  return payload;
}

describe("test OpenID provider", () => {
  test("discovery document", async () => {
    const res = await fetch(`${iss.issuer}/.well-known/openid-configuration`);
    expect(res.status).toBe(200);
    const doc = (await res.json()) as Record<string, unknown>;
    expect(doc.issuer).toBe(iss.issuer);
    expect(iss.issuer).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(doc.jwks_uri).toBe(iss.jwksUri);
    expect(doc.token_endpoint).toBe(iss.tokenEndpoint);
    expect(doc.device_authorization_endpoint).toBe(iss.deviceAuthorizationEndpoint);
    expect(doc.grant_types_supported).toEqual(expect.arrayContaining(["client_credentials", "urn:ietf:params:oauth:grant-type:device_code"]));
    const jwks = (await (await fetch(iss.jwksUri)).json()) as { keys: Array<Record<string, unknown>> };
    expect(jwks.keys.map((k) => k.kid)).toContain(iss.publicJwk().kid);
    for (const k of jwks.keys) expect(k.d).toBeUndefined(); // public parts only
  });

  test("client_credentials: JWT access token verifies with the remote JWKS", async () => {
    const token = await iss.clientToken({ scope: "read" });
    const header = decodeProtectedHeader(token);
    const payload = await verify(token);
    console.log("client_credentials header", JSON.stringify(header), "payload", JSON.stringify(payload));
    expect(header).toMatchObject({ alg: "RS256", typ: "at+jwt", kid: iss.publicJwk().kid });
    expect(payload).toMatchObject({
      iss: iss.issuer,
      aud: "agate",
      sub: iss.serviceClient.clientId,
      client_id: iss.serviceClient.clientId,
      groups: ["svc-reporting"],
      scope: "read",
    });
    expect(payload.exp! - payload.iat!).toBe(300);
    // other audiences, wrong secret
    expect(decodeJwt(await iss.clientToken({ audience: "other" })).aud).toBe("other");
    await expect(iss.clientToken({ clientSecret: "nope" })).rejects.toThrow(/invalid_client/);
  });

  test("sign(): arbitrary claims with the provider's key and kid", async () => {
    const t = await iss.sign({ sub: "bob", groups: ["dev"], act: { sub: "svc-reporting" } });
    const p = await verify(t);
    expect(p).toMatchObject({ iss: iss.issuer, aud: "agate", sub: "bob", groups: ["dev"], act: { sub: "svc-reporting" } });
    expect(await verify(await iss.sign({ sub: "ec" }, { alg: "ES256" }))).toMatchObject({ sub: "ec" });

    const now = Math.floor(Date.now() / 1000);
    await expect(verify(await iss.sign({ sub: "x", exp: now - 60 }))).rejects.toThrow(/"exp" claim timestamp check failed/);
    await expect(verify(await iss.sign({ sub: "x", nbf: now + 600 }))).rejects.toThrow(/"nbf" claim timestamp check failed/);
    await expect(verify(await iss.sign({ sub: "x", aud: "someone-else" }))).rejects.toThrow(/unexpected "aud" claim value/);
    await expect(verify(await iss.sign({ sub: "x", iss: "http://evil.example" }))).rejects.toThrow(/unexpected "iss" claim value/);
    await expect(verify(await iss.sign({ sub: "x" }, { kid: "unknown-kid" }))).rejects.toThrow(/no applicable key found/);
    // alg confusion: HS256 keyed with the RSA public key's PEM bytes
    const forged = await iss.sign({ sub: "mallory" }, { alg: "HS256", key: new TextEncoder().encode(await iss.publicPem()) });
    expect(decodeProtectedHeader(forged).alg).toBe("HS256");
    await expect(verify(forged)).rejects.toThrow();
  });

  test("device flow end to end", async () => {
    const t0 = performance.now();
    const dar = await fetch(iss.deviceAuthorizationEndpoint, form({ client_id: iss.deviceClientId, scope: "openid", resource: iss.resource("agate") }));
    const da = (await dar.json()) as { device_code: string; user_code: string; verification_uri: string; verification_uri_complete: string; expires_in: number; interval?: number };
    console.log("device_authorization response", JSON.stringify({ ...da, device_code: da.device_code.slice(0, 8) + "…" }));
    expect(dar.status).toBe(200);
    expect(da.verification_uri).toBe(`${iss.issuer}/device`);

    const poll = () => fetch(iss.tokenEndpoint, form({ grant_type: "urn:ietf:params:oauth:grant-type:device_code", device_code: da.device_code, client_id: iss.deviceClientId }));
    const pending = await poll();
    expect(pending.status).toBe(400);
    expect(await pending.json()).toMatchObject({ error: "authorization_pending" });

    const t1 = performance.now();
    await iss.approveDevice(da.user_code, { sub: "alice", groups: ["dba"] });
    const t2 = performance.now();

    const tr = await poll();
    const tokens = (await tr.json()) as Record<string, string>;
    expect(tr.status).toBe(200);
    const payload = await verify(tokens.access_token!);
    console.log(
      `device flow: approve ${(t2 - t1).toFixed(0)} ms, total ${(performance.now() - t0).toFixed(0)} ms; token response keys ${Object.keys(tokens).join(",")}; access token header`,
      JSON.stringify(decodeProtectedHeader(tokens.access_token!)),
      "payload",
      JSON.stringify(payload),
    );
    expect(payload).toMatchObject({ iss: iss.issuer, aud: "agate", sub: "alice", groups: ["dba"], client_id: iss.deviceClientId });
    if (tokens.id_token) console.log("id_token payload", JSON.stringify(decodeJwt(tokens.id_token)));

    // the device code is single use
    const again = await poll();
    expect(((await again.json()) as { error: string }).error).toBe("invalid_grant");
  });

  test("device flow denied by the user", async () => {
    const da = (await (await fetch(iss.deviceAuthorizationEndpoint, form({ client_id: iss.deviceClientId, scope: "openid", resource: iss.resource() }))).json()) as { device_code: string; user_code: string };
    await iss.denyDevice(da.user_code);
    const tr = await fetch(iss.tokenEndpoint, form({ grant_type: "urn:ietf:params:oauth:grant-type:device_code", device_code: da.device_code, client_id: iss.deviceClientId }));
    expect(tr.status).toBe(400);
    expect(await tr.json()).toMatchObject({ error: "access_denied" });
    // an unknown user code is refused by the verification page
    await expect(iss.approveDevice("BCDF-GHJK", { sub: "alice" })).rejects.toThrow(/device code not accepted/);
  });

  test("key rotation: new kid is fetched on demand; dropped key stops verifying", async () => {
    const jwks = createRemoteJWKSet(new URL(iss.jwksUri), { cooldownDuration: 0 });
    const check = async (t: string) => (await jwtVerify(t, jwks, { issuer: iss.issuer, audience: "agate" })).payload;
    const defaultCooldown = createRemoteJWKSet(new URL(iss.jwksUri));
    const oldKid = iss.publicJwk().kid;
    const oldToken = await iss.clientToken();
    await check(oldToken); // caches the current JWKS
    await jwtVerify(oldToken, defaultCooldown, { issuer: iss.issuer, audience: "agate" });

    await iss.rotateKey();
    const newKid = iss.publicJwk().kid;
    expect(newKid).not.toBe(oldKid);
    const newToken = await iss.clientToken();
    expect(decodeProtectedHeader(newToken).kid).toBe(newKid); // the provider signs with the new key
    expect(decodeProtectedHeader(await iss.sign({ sub: "x" })).kid).toBe(newKid);
    expect(await check(newToken)).toMatchObject({ sub: iss.serviceClient.clientId });
    expect(await check(oldToken)).toMatchObject({ sub: iss.serviceClient.clientId }); // old key still published
    // jose's default 30 s cooldown: an unknown kid right after a fetch is not refetched
    await expect(jwtVerify(newToken, defaultCooldown, { issuer: iss.issuer, audience: "agate" })).rejects.toThrow(/no applicable key found/);

    await iss.rotateKey({ dropOld: true });
    const jwksDoc = (await (await fetch(iss.jwksUri)).json()) as { keys: Array<{ kid: string }> };
    expect(jwksDoc.keys.map((k) => k.kid)).not.toContain(oldKid);
    expect(jwksDoc.keys.map((k) => k.kid)).not.toContain(newKid);
    expect(await check(await iss.clientToken())).toMatchObject({ aud: "agate" });
    // the old kid is cached locally by this JWKS object until the next refetch; a fresh one refuses it
    await expect(verify(oldToken)).rejects.toThrow(/no applicable key found/);
  });

  test("stop(): JWKS unreachable (ECONNREFUSED); start(): back on the same port", async () => {
    const token = await iss.sign({ sub: "carol" });
    await iss.stop();
    const err = await fetch(iss.jwksUri).then(
      () => undefined,
      (e: unknown) => e as Error & { code?: string },
    );
    expect(err?.code).toBe("ECONNREFUSED");
    const fail = await verify(token).catch((e: unknown) => e as Error & { code?: string });
    console.log("jwtVerify while stopped:", (fail as Error).name, (fail as { code?: string }).code, (fail as Error).message);
    expect(fail).toBeInstanceOf(Error);

    await iss.start();
    expect(await verify(token)).toMatchObject({ sub: "carol" });
    expect(await verify(await iss.clientToken())).toMatchObject({ aud: "agate" });
  });
});
