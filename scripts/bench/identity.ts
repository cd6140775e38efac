/**
 * Token verification throughput with a warm JWKS cache.
 *
 * An issuer (discovery document and JWKS) is served on loopback by this
 * script; agate's OidcVerifier (jose's remote JWK set, claims checks, the
 * identity it builds) verifies a pool of distinct RS256 and ES256 tokens
 * after the first fetch. Baselines in the same run: jose's jwtVerify with
 * the public key already in hand (the cryptographic floor), and agate's
 * API-key check (one SHA-256 and a map lookup).
 *
 *   bun scripts/bench/identity.ts [--seconds 3]
 */
import { parseArgs } from "node:util";
import { SignJWT, exportJWK, generateKeyPair, jwtVerify } from "jose";
import { ApiKeyVerifier, createApiKey } from "../../src/identity/apikey.ts";
import { OidcVerifier } from "../../src/identity/oidc.ts";
import { printHelp } from "./stack.ts";

const { values: opt } = parseArgs({ options: { seconds: { type: "string", default: "3" }, help: { type: "boolean", short: "h" } } });
if (opt.help) printHelp(import.meta.path);
const SECONDS = Number(opt.seconds);

const rsa = await generateKeyPair("RS256");
const ec = await generateKeyPair("ES256");
const jwks = { keys: [{ ...(await exportJWK(rsa.publicKey)), kid: "rsa-1", alg: "RS256", use: "sig" }, { ...(await exportJWK(ec.publicKey)), kid: "ec-1", alg: "ES256", use: "sig" }] };
let jwksFetches = 0;
let issuer = "";
const server: ReturnType<typeof Bun.serve> = Bun.serve({
  hostname: "127.0.0.1",
  port: 0,
  fetch(req: Request): Response {
    const path = new URL(req.url).pathname;
    if (path === "/.well-known/openid-configuration") return Response.json({ issuer, jwks_uri: `${issuer}/jwks` });
    if (path === "/jwks") {
      jwksFetches++;
      return Response.json(jwks);
    }
    return new Response("not found", { status: 404 });
  },
});
issuer = `http://127.0.0.1:${server.port}`;

async function tokens(alg: "RS256" | "ES256", n: number): Promise<string[]> {
  const key = alg === "RS256" ? rsa.privateKey : ec.privateKey;
  const now = Math.floor(Date.now() / 1000);
  return Promise.all(
    Array.from({ length: n }, (_, k) =>
      new SignJWT({ groups: ["dba", "ci"], act: { sub: `agent-${k}` } })
        .setProtectedHeader({ alg, kid: alg === "RS256" ? "rsa-1" : "ec-1" })
        .setIssuer(issuer)
        .setAudience("agate")
        .setSubject(`user-${k}`)
        .setJti(`jti-${alg}-${k}`)
        .setIssuedAt(now)
        .setExpirationTime(now + 3600)
        .sign(key),
    ),
  );
}

/** Calls of `f` per second over SECONDS (after a short warm-up), cycling through `inputs`. */
async function rate<T>(inputs: T[], f: (x: T) => Promise<unknown>): Promise<number> {
  for (let k = 0; k < 200; k++) await f(inputs[k % inputs.length]!);
  let n = 0;
  const end = performance.now() + SECONDS * 1000;
  const t0 = performance.now();
  while (performance.now() < end) {
    for (let k = 0; k < 100; k++) await f(inputs[n++ % inputs.length]!);
  }
  return n / ((performance.now() - t0) / 1000);
}

const verifier = new OidcVerifier([
  { issuer, audience: ["agate"], algorithms: ["RS256", "ES256"], clock_skew_s: 60, groups_claim: "groups", actor_claim: "act", kind: "human", jwks_cache_s: 600, jwks_cooldown_s: 30, max_token_lifetime_s: 86_400 },
]);
const fmt = (x: number) => Math.round(x).toLocaleString("en-US");
try {
  const rows: [string, number][] = [];
  for (const alg of ["RS256", "ES256"] as const) {
    const pool = await tokens(alg, 1000);
    const agate = await rate(pool, (t) => verifier.verify(t));
    const pub = alg === "RS256" ? rsa.publicKey : ec.publicKey;
    const floor = await rate(pool, (t) => jwtVerify(t, pub, { issuer, audience: "agate", algorithms: [alg] }));
    rows.push([`agate OidcVerifier, ${alg}, warm JWKS`, agate], [`jose jwtVerify, ${alg}, key in hand (floor)`, floor]);
    console.log(`${alg}: agate ${fmt(agate)}/s, jose with the key in hand ${fmt(floor)}/s: ${(agate / floor).toFixed(2)}x`);
  }
  const { key, sha256 } = createApiKey();
  const keys = new ApiKeyVerifier([{ id: "bench", groups: ["ci"], kind: "service", sha256 }]);
  const conn = { name: "bench", protocol: "postgres" as const, target: "bench" };
  const apiKey = await rate([key], (k) => keys.verify({ user: "bench", secret: k }, conn));
  rows.push(["agate API key", apiKey]);
  console.log("");
  console.log("| credential | verifications/s (one core) |");
  console.log("|---|---|");
  for (const [name, r] of rows) console.log(`| ${name} | ${fmt(r)} |`);
  console.log(`\nJWKS fetched ${jwksFetches} time(s) in all (the cache was warm after the first).`);
} finally {
  server.stop(true);
}
