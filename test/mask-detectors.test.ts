/**
 * mask/: the detectors, the styles and maskText.
 *
 *   - a corpus of planted secrets, every detector in several spellings, each
 *     embedded in plain text, a log line, JSON, CSV, ANSI-coloured terminal
 *     output and an asciicast-style JSON event: found by the right detector,
 *     and gone from maskText's output in every style;
 *   - a corpus of look-alikes that must not be masked;
 *   - styles (redact, partial, hmac), the fast path, unknown names;
 *   - pathological inputs (they must simply finish);
 *   - throughput on ~20 MB of mixed text without secrets and with ~1 %.
 *
 * Token-shaped test values are generated at run time from a seeded PRNG so
 * no literal credential sits in this file.
 */
import { describe, expect, test } from "bun:test";
import { createHmac, generateKeyPairSync } from "node:crypto";
import { AgateError } from "../src/core/errors.ts";
import { ALL_DETECTORS, DETECTORS, findAll, type MaskStyle, maskText, maskValue } from "../src/mask/index.ts";

// ---------------------------------------------------------------------------
// deterministic randomness

function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = prng(20240115);
const ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const B64 = ALNUM + "+/";
const BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
function pick<T>(xs: readonly T[]): T {
  return xs[Math.floor(rand() * xs.length)]!;
}
function randStr(n: number, abc = ALNUM): string {
  let s = "";
  for (let i = 0; i < n; i++) s += abc[Math.floor(rand() * abc.length)];
  return s;
}
/** Random, with at least one upper, one lower and one digit (what a real key has). */
function mixed(n: number, abc = ALNUM): string {
  for (;;) {
    const s = randStr(n, abc);
    if (/[A-Z]/.test(s) && /[a-z]/.test(s) && /\d/.test(s)) return s;
  }
}

// ---------------------------------------------------------------------------
// independent validators (so the test data is checked without the code under test)

function luhnOk(d: string): boolean {
  let sum = 0;
  for (let i = 0; i < d.length; i++) {
    let x = Number(d[d.length - 1 - i]);
    if (i % 2 === 1) x = x * 2 > 9 ? x * 2 - 9 : x * 2;
    sum += x;
  }
  return sum % 10 === 0;
}
/** `prefix` + random digits + the Luhn check digit, `len` digits in all. */
function luhnCard(prefix: string, len: number): string {
  let d = prefix;
  while (d.length < len - 1) d += Math.floor(rand() * 10);
  for (let c = 0; c < 10; c++) if (luhnOk(d + c)) return d + c;
  throw new Error("unreachable");
}
function ibanOk(iban: string): boolean {
  const c = iban.replace(/ /g, "");
  const r = (c.slice(4) + c.slice(0, 4)).replace(/[A-Z]/g, (ch) => String(ch.charCodeAt(0) - 55));
  return BigInt(r) % 97n === 1n;
}
function group(d: string, sizes: number[], sep: string): string {
  const out: string[] = [];
  let i = 0;
  for (const n of sizes) {
    out.push(d.slice(i, i + n));
    i += n;
  }
  return out.join(sep);
}
const b64url = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");

// ---------------------------------------------------------------------------
// the planted corpus

interface Plant {
  /** The detector that must claim the value when every detector runs. */
  detector: string;
  /** What is embedded (the value with whatever context it needs). */
  snippet: string;
  /** The secret itself, which must not survive masking. */
  raw: string;
  /** Other strings that must not survive either (a card's bare digits, a key's body lines). */
  also?: string[];
}

const plants: Plant[] = [];
function plant(detector: string, raw: string, snippet = raw, also: string[] = []): void {
  plants.push({ detector, raw, snippet: snippet.replace("$$", raw), also });
}

// email
for (const e of ["alice.smith+tag@example.com", "bob_o-neil@mail.example.co.uk", "x@ex.io", "UPPER.Case@Example.ORG"]) plant("email", e);
plant("email", "carol@example.net", "mailto:$$");
plant("email", "dave@example.com", "<$$>");

// card: every brand, compact, spaced, dashed
const cards: Array<[string, number[]]> = [
  [luhnCard("4", 16), [4, 4, 4, 4]],
  [luhnCard("4", 13), [4, 4, 4, 1]],
  [luhnCard("4", 19), [4, 4, 4, 4, 3]],
  [luhnCard("51", 16), [4, 4, 4, 4]],
  [luhnCard("2221", 16), [4, 4, 4, 4]],
  [luhnCard("2720", 16), [4, 4, 4, 4]],
  [luhnCard("34", 15), [4, 6, 5]],
  [luhnCard("37", 15), [4, 6, 5]],
  [luhnCard("6011", 16), [4, 4, 4, 4]],
  [luhnCard("65", 16), [4, 4, 4, 4]],
  [luhnCard("644", 16), [4, 4, 4, 4]],
  [luhnCard("3528", 16), [4, 4, 4, 4]],
  [luhnCard("3589", 16), [4, 4, 4, 4]],
  [luhnCard("36", 14), [4, 6, 4]],
  [luhnCard("300", 14), [4, 6, 4]],
  [luhnCard("38", 16), [4, 4, 4, 4]],
  [luhnCard("62", 16), [4, 4, 4, 4]],
  [luhnCard("62", 19), [4, 4, 4, 4, 3]],
  [luhnCard("6759", 16), [4, 4, 4, 4]],
  [luhnCard("2200", 16), [4, 4, 4, 4]],
  ["4111111111111111", [4, 4, 4, 4]],
  ["5555555555554444", [4, 4, 4, 4]],
  ["378282246310005", [4, 6, 5]],
  ["6011111111111117", [4, 4, 4, 4]],
  ["3530111333300000", [4, 4, 4, 4]],
  ["30569309025904", [4, 6, 4]],
];
for (const [d, sizes] of cards) {
  expect(luhnOk(d)).toBe(true);
  plant("card", d, "card $$ on file");
  plant("card", group(d, sizes, " "), "card: $$", [d]);
  plant("card", group(d, sizes, "-"), "$$", [d]);
}
plant("card", "4111 1111 1111 1111", "4111 1111 1111 1111 12/25", ["4111111111111111"]);
plant("card", "4111111111111111", "cc=4111111111111111;exp=1225");

// iban: several countries, compact and in groups of four
const ibans = [
  "DE89370400440532013000",
  "GB82WEST12345698765432",
  "FR1420041010050500013M02606",
  "NL91ABNA0417164300",
  "ES9121000418450200051332",
  "IT60X0542811101000000123456",
  "CH9300762011623852957",
  "BE68539007547034",
  "AT611904300234573201",
  "PL61109010140000071219812874",
  "NO9386011117947",
  "MT84MALT011000012345MTLCAST001S",
];
for (const iban of ibans) {
  expect(ibanOk(iban)).toBe(true);
  plant("iban", iban, "IBAN $$");
  plant("iban", iban.replace(/(.{4})(?!$)/g, "$1 "), "pay to $$ EUR", [iban]);
}

// ssn
plant("ssn", "123-45-6789");
plant("ssn", "078-05-1120", "id 078-05-1120 on file");
plant("ssn", "219 09 9999", "SSN: $$");
plant("ssn", "536228791", "ssn=$$");
plant("ssn", "432-10-9876", "social security number $$");
plant("ssn", "401 23 4567", "Social_Security_No 401 23 4567");

// phone
for (const p of ["+1 (415) 555-2671", "+14155552671", "+44 20 7946 0958", "+49 30 1234567", "+33 1 23 45 67 89", "+1-202-555-0143"])
  plant("phone", p, "call $$ now");
for (const p of ["(555) 123-4567", "555-123-4567", "555.123.4567", "1-800-555-0199"]) plant("phone", p, "call $$ now");
plant("phone", "020 7946 0958", "phone: $$");
plant("phone", "030 1234567", "Tel. $$");
plant("phone", "07700 900123", '{"mobile": "$$"}');
plant("phone", "555 123 4567", "Telephone number 555 123 4567");

// ipv4 / ipv6
for (const ip of ["192.168.1.10", "10.0.0.1", "8.8.8.8", "255.255.255.255"]) plant("ipv4", ip, "from $$ to");
plant("ipv4", "172.16.254.1", "db at 172.16.254.1:5432");
for (const ip of ["2001:0db8:85a3:0000:0000:8a2e:0370:7334", "2001:db8::1", "fe80::1ff:fe23:4567:890a", "::ffff:192.0.2.128", "::1"])
  plant("ipv6", ip, "peer $$ connected");
plant("ipv6", "2001:db8::8a2e:370:7334", "https://[2001:db8::8a2e:370:7334]:443/");

// aws
const awsIds = ["AKIA", "ASIA", "AROA", "AIDA"].map((p) => p + randStr(16, BASE32));
for (const id of awsIds) plant("aws_access_key", id, "key id $$");
const awsSecrets = Array.from({ length: 4 }, () => mixed(40, B64));
plant("aws_secret_key", awsSecrets[0]!, "aws_secret_access_key = $$");
plant("aws_secret_key", awsSecrets[1]!, "AWS_SECRET_ACCESS_KEY=$$");
plant("aws_secret_key", awsSecrets[2]!, '{"AccessKeyId": "' + awsIds[0] + '", "SecretAccessKey": "$$"}');
plant("aws_secret_key", awsSecrets[3]!, "aws configure set --aws-secret-key $$");

// github, gitlab, slack
for (const p of ["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]) plant("github_token", p + randStr(36), "GITHUB_TOKEN $$ ok");
plant("github_token", "github_pat_" + randStr(22) + "_" + randStr(59), "token $$");
plant("github_token", "ghp_" + randStr(36), '{"token": "$$"}');
plant("gitlab_token", "glpat-" + randStr(20, ALNUM + "_-"), "PRIVATE-TOKEN: $$");
plant("gitlab_token", "glpat-" + randStr(20), "$$");
plant("slack_token", "xoxb-" + randStr(12, "0123456789") + "-" + randStr(13, "0123456789") + "-" + randStr(24), "SLACK_BOT $$");
plant("slack_token", "xoxp-" + randStr(12, "0123456789") + "-" + randStr(12, "0123456789") + "-" + randStr(13, "0123456789") + "-" + randStr(32, "0123456789abcdef"));
plant("slack_token", `https://hooks.slack.com/services/T${randStr(8, BASE32)}/B${randStr(10, BASE32)}/${randStr(24)}`, "webhook=$$");

// jwt
const jwtHS = `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url({ sub: "1234567890", name: "Jane", iat: 1516239022 })}.${randStr(43, ALNUM + "-_")}`;
const jwtRS = `${b64url({ alg: "RS256", kid: "k1" })}.${b64url({ iss: "https://id.example.com", aud: "agate", exp: 1900000000 })}.${randStr(342, ALNUM + "-_")}`;
plant("jwt", jwtHS, "Authorization: Bearer $$");
plant("jwt", jwtRS, "id_token=$$");
plant("jwt", jwtHS, '{"access_token": "$$", "token_type": "Bearer"}');

// pem private keys
const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey;
const pems = [
  rsa.export({ type: "pkcs1", format: "pem" }) as string,
  rsa.export({ type: "pkcs8", format: "pem" }) as string,
  rsa.export({ type: "pkcs8", format: "pem", cipher: "aes-256-cbc", passphrase: "pw" }) as string,
  generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey.export({ type: "sec1", format: "pem" }) as string,
  generateKeyPairSync("ed25519").privateKey.export({ type: "pkcs8", format: "pem" }) as string,
  "-----BEGIN OPENSSH PRIVATE KEY-----\n" +
    ("b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ" + randStr(350, B64)).replace(/(.{70})/g, "$1\n") +
    "\n-----END OPENSSH PRIVATE KEY-----\n",
];
for (const pem of pems) {
  const key = pem.trimEnd();
  expect(key).toMatch(/^-----BEGIN [A-Z ]*PRIVATE KEY-----\n[\s\S]+\n-----END [A-Z ]*PRIVATE KEY-----$/);
  const body = key.split("\n").filter((l) => !l.startsWith("-----") && l.length >= 16);
  plant("pem_private_key", key, "key:\n$$\nend", body);
}

// url_password
plant("url_password", "S3cr3tPass", "postgres://app:S3cr3tPass@db.example.com:5432/app");
plant("url_password", "hunter2", "mysql://root:hunter2@localhost/shop");
plant("url_password", "guest123", "amqp://guest:guest123@rabbit/vhost");
plant("url_password", "r3dispass", "redis://:r3dispass@cache:6379/0");
plant("url_password", "p%40ss", "https://user:p%40ss@example.com/path?q=1");
plant("url_password", "M0ng0Pw", "mongodb+srv://admin:M0ng0Pw@cluster0.example.net/?retryWrites=true");
plant("url_password", "Tr0ub4dor&3", "host=db.internal port=5432 dbname=app user=app password=Tr0ub4dor&3 sslmode=require");
plant("url_password", "with space", "host=localhost user=postgres password='with space'");

// kv_secret: JSON, YAML, env, CLI flags, headers, TOML, Python
plant("kv_secret", "Xk9#mPq2$vL8", '{"password": "$$"}');
plant("kv_secret", "8f3kL0qPzX7vN2mR", "client_secret: $$");
plant("kv_secret", "Zx8Kq2LmP9vR4tW7yB1n", "API_KEY=$$");
plant("kv_secret", "s3cr3tT0kenValue99", "deploy --token=$$ --verbose");
plant("kv_secret", "hunter22!", "psql --password hunter22! -h db");
plant("kv_secret", "aB3$dE6^gH9*", "{'secret': '$$'}");
plant("kv_secret", "4f9c2b7e8a1d3f6c5b0e9a7d2c4f1b8e", "X-Api-Key: $$");
plant("kv_secret", "dXNlcjpzM2NyM3RwYXNz", "Authorization: Basic $$");
plant("kv_secret", "correct-horse-battery", 'db_password = "$$"');
plant("kv_secret", "changeme", "PGPASSWORD=changeme");
plant("kv_secret", mixed(32), "spring.datasource.password=$$");
plant("kv_secret", mixed(24), "    accessToken: $$");

/** How a wrapper embeds a snippet, and how it writes the raw value inside it. */
interface Wrapper {
  name: string;
  wrap: (snippet: string) => string;
  enc: (raw: string) => string;
}
const json = (s: string) => JSON.stringify(s).slice(1, -1);
const wrappers: Wrapper[] = [
  { name: "plain", wrap: (s) => s, enc: (r) => r },
  {
    name: "log",
    wrap: (s) => `2024-01-15T10:30:00.123Z INFO [worker-3] req=550e8400-e29b-41d4-a716-446655440000 ${s} status=200 dur=12ms`,
    enc: (r) => r,
  },
  { name: "json", wrap: (s) => JSON.stringify({ id: 17, note: s, at: "2024-01-15 10:30:00" }), enc: json },
  { name: "csv", wrap: (s) => `17,alice,"${s.replaceAll('"', '""')}",2024-01-15,42.50`, enc: (r) => r.replaceAll('"', '""') },
  { name: "ansi", wrap: (s) => `\x1b[1;31m${s}\x1b[0m\r\n\x1b[32m$\x1b[0m `, enc: (r) => r },
  { name: "asciicast", wrap: (s) => JSON.stringify([0.512, "o", `\x1b[33m${s}\x1b[0m\r\n`]), enc: json },
];

const styles: Array<[string, MaskStyle]> = [
  ["redact", { kind: "redact" }],
  ["partial", { kind: "partial", keep: 4 }],
  ["hmac", { kind: "hmac", key: new TextEncoder().encode("test-key") }],
];

describe("planted secrets", () => {
  test("every detector is planted", () => {
    expect(new Set(plants.map((p) => p.detector))).toEqual(new Set(ALL_DETECTORS));
  });

  for (const w of wrappers) {
    test(`found by the right detector (${w.name})`, () => {
      const misses: string[] = [];
      for (const p of plants) {
        const text = w.wrap(p.snippet);
        const raw = w.enc(p.raw);
        const at = text.indexOf(raw);
        expect(at).toBeGreaterThanOrEqual(0);
        const covers = (ms: { start: number; end: number; detector: string }[]) =>
          ms.find((m) => m.detector === p.detector && m.start <= at && m.end >= at + raw.length);
        const all = findAll(text, ALL_DETECTORS);
        const alone = findAll(text, [p.detector]);
        if (!covers(all) || !covers(alone))
          misses.push(
            `${p.detector} ${JSON.stringify(p.raw)} in ${JSON.stringify(text.slice(0, 160))}: ` +
              all.map((m) => `${m.detector}:${JSON.stringify(text.slice(m.start, m.end))}`).join(", "),
          );
        else expect(covers(alone)!.end - covers(alone)!.start).toBeLessThanOrEqual(DETECTORS[p.detector]!.maxLength);
      }
      expect(misses).toEqual([]);
    });

    test(`gone after masking in every style (${w.name})`, () => {
      const leaks: string[] = [];
      for (const p of plants) {
        const text = w.wrap(p.snippet);
        for (const [sname, style] of styles) {
          const { text: out, counts } = maskText(text, ALL_DETECTORS, style);
          const forbidden = [p.raw, w.enc(p.raw), ...(p.also ?? []).map(w.enc)];
          if (p.detector === "card") forbidden.push(p.raw.replace(/\D/g, ""));
          for (const f of forbidden) if (out.includes(f)) leaks.push(`${sname}/${p.detector}: ${JSON.stringify(f)} survives in ${JSON.stringify(out.slice(0, 200))}`);
          if ((counts[p.detector] ?? 0) < 1) leaks.push(`${sname}/${p.detector}: not counted (${JSON.stringify(counts)})`);
        }
      }
      expect(leaks).toEqual([]);
    });
  }

  test("one text with everything in it", () => {
    const text = plants.map((p) => p.snippet).join("\n");
    const { text: out, counts } = maskText(text, ALL_DETECTORS, { kind: "redact" });
    for (const p of plants) expect(out.includes(p.raw)).toBe(false);
    for (const d of ALL_DETECTORS) expect(counts[d] ?? 0).toBeGreaterThan(0);
  });
});

// ---------------------------------------------------------------------------
// look-alikes

const lookalikes = [
  // numbers that fail Luhn, or are not in an issuer range, or are something else
  "order 4111111111111112 total",
  "4111 1111 1111 1112",
  "ref 1234567812345678",
  "account 9876543210987654",
  "pi 3.14159265358979 and 0.41111111111111115",
  "1705312345678 1705312345",
  "Invoice 2024-001-0042",
  "sku 4111-11111-1111-11",
  // bad IBAN checksums, or no such shape
  "DE89370400440532013001",
  "GB82 WEST 1234 5698 7654 33",
  "ISO8601 AB12 CDEF",
  // SSNs out of range
  "000-12-3456",
  "666-12-3456",
  "912-34-5678",
  "123-00-4567",
  "123-45-0000",
  "ssn: 000123456",
  // versions, dates, times, ids
  "version 1.2.3.4.5",
  "v1.2.3.4",
  "release 10.0.19041.1",
  "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0.0.0 Safari/537.36",
  "1.2.3.4.5",
  "999.1.1.1 and 1.2.3",
  "2024-01-15",
  "2024-01-15T10:30:00.123Z",
  "15/01/2024 10:30:00",
  "Mon, 15 Jan 2024 10:30:00 GMT",
  "10:30-11:45",
  "550e8400-e29b-41d4-a716-446655440000",
  "12345678-1234-1234-1234-123456789012",
  "00:1A:2B:3C:4D:5E",
  "std::vector<int> Foo::Bar::baz() Abc::Def",
  "12:34:56",
  // kv without a secret value
  "token=true",
  "secret=false",
  "password=",
  "password=\nnext=1",
  "password: ${DB_PASSWORD}",
  "token_type=bearer",
  "auth=required",
  "auth: anonymous",
  '"password": ""',
  "passed=42",
  "key: value",
  '"key": "some-key-name"',
  "token_count=12345678",
  "secret_name=db-credentials",
  "password: ********",
  "password=<redacted>",
  "api_key={{ .Values.apiKey }}",
  '"password": {"type": "string"}',
  "author=Alexander",
  // emails without a TLD, and other @
  "user@localhost",
  "admin@intranet",
  "@channel hello",
  "git@github.com:org/repo.git",
  // base64 and hex without a keyword
  "data: dGhpcyBpcyBqdXN0IHNvbWUgb3JkaW5hcnkgYmFzZTY0IHRleHQ=",
  "blob wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEZ",
  "commit da39a3ee5e6b4b0d3255bfef95601890afd80709",
  "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
  // not quite tokens
  "ghp_short AKIA1234 xoxb-short glpat-short",
  "they key money eyJust kidding",
  "eyJub3QganNvbg.eyJ4IjoxfQ.c2ln",
  "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
  "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----",
  // URLs without a password
  "https://example.com:8443/path",
  "https://user@example.com/",
  "postgres://db.example.com:5432/app",
  "see https://example.com/contact?to=info",
  "ID 555-1234",
];

describe("look-alikes", () => {
  for (const w of wrappers.slice(0, 4)) {
    test(`nothing masked (${w.name})`, () => {
      const hits: string[] = [];
      for (const l of lookalikes) {
        const text = w.wrap(l);
        for (const m of findAll(text, ALL_DETECTORS)) hits.push(`${m.detector}:${JSON.stringify(text.slice(m.start, m.end))} in ${JSON.stringify(l)}`);
        if (maskText(text, ALL_DETECTORS, { kind: "redact" }).text !== text) hits.push(`maskText changed ${JSON.stringify(l)}`);
      }
      expect(hits).toEqual([]);
    });
  }

  test("overlaps: a URL's password is not also an email, the union is masked", () => {
    const text = "dsn postgres://app:S3cr3t@db.example.com/app";
    expect(findAll(text, ALL_DETECTORS).map((m) => m.detector)).toEqual(["url_password"]);
    // a kv value that is a JWT is attributed to jwt (same span, more specific)
    const t2 = `token=${jwtHS}`;
    expect(findAll(t2, ALL_DETECTORS).map((m) => m.detector)).toEqual(["jwt"]);
    // overlapping matches of different detectors are merged into one span covering both
    const t3 = "::ffff:192.0.2.128";
    const ms = findAll(t3, ["ipv4", "ipv6"]);
    expect(ms).toEqual([{ start: 0, end: t3.length, detector: "ipv6" }]);
  });
});

// ---------------------------------------------------------------------------
// styles, maskText, registry

describe("styles and maskText", () => {
  const key = new TextEncoder().encode("k1");
  const key2 = new TextEncoder().encode("k2");

  test("redact", () => {
    expect(maskValue("bob@example.com", "email", { kind: "redact" })).toBe("[REDACTED:email]");
  });

  test("partial keeps the last N letters/digits and the separators", () => {
    expect(maskValue("4111 1111 1111 1111", "card", { kind: "partial", keep: 4 })).toBe("**** **** **** 1111");
    expect(maskValue("4111-1111-1111-1111", "card", { kind: "partial", keep: 4 })).toBe("****-****-****-1111");
    expect(maskValue("DE89 3704 0044 0532 0130 00", "iban", { kind: "partial", keep: 4 })).toBe("**** **** **** **** **30 00");
    expect(maskValue("123-45-6789", "ssn", { kind: "partial", keep: 4 })).toBe("***-**-6789");
    // secrets: punctuation is starred too
    expect(maskValue("p@ss!w0rd", "kv_secret", { kind: "partial", keep: 4 })).toBe("*****w0rd");
    // shorter than keep + 4: redacted whole
    expect(maskValue("1234567", "card", { kind: "partial", keep: 4 })).toBe("[REDACTED:card]");
    expect(maskValue("12345678", "card", { kind: "partial", keep: 4 })).toBe("****5678");
  });

  test("hmac is stable, keyed, and HMAC-SHA-256 of the value", () => {
    const a = maskValue("bob@example.com", "email", { kind: "hmac", key });
    expect(a).toMatch(/^\[email:[0-9a-f]{16}\]$/);
    expect(maskValue("bob@example.com", "email", { kind: "hmac", key })).toBe(a);
    expect(maskValue("bob@example.com", "email", { kind: "hmac", key: new TextEncoder().encode("k1") })).toBe(a);
    expect(maskValue("bob@example.com", "email", { kind: "hmac", key: key2 })).not.toBe(a);
    expect(maskValue("bob@example.org", "email", { kind: "hmac", key })).not.toBe(a);
    const want = createHmac("sha256", key).update("bob@example.com").digest("hex").slice(0, 16);
    expect(a).toBe(`[email:${want}]`);
    const text = "from bob@example.com to bob@example.com";
    const { text: out, counts } = maskText(text, ["email"], { kind: "hmac", key });
    expect(out).toBe(`from ${a} to ${a}`);
    expect(counts).toEqual({ email: 2 });
  });

  test("fast path: the same string back when nothing matched", () => {
    const text = "nothing to see here, just 42 words and a date 2024-01-15";
    const r = maskText(text, ALL_DETECTORS, { kind: "redact" });
    expect(r.text).toBe(text);
    expect(r.counts).toEqual({});
    expect(maskText("", ALL_DETECTORS, { kind: "redact" })).toEqual({ text: "", counts: {} });
  });

  test("masking masked text changes nothing more", () => {
    const text = plants.map((p) => p.snippet).join("\n");
    // (partial output keeps part of a value, which may still look like one: "*0.0.0.1")
    for (const [, style] of styles.filter(([name]) => name !== "partial")) {
      const once = maskText(text, ALL_DETECTORS, style).text;
      const twice = maskText(once, ALL_DETECTORS, style);
      expect(twice.text).toBe(once);
      expect(twice.counts).toEqual({});
    }
  });

  test("only the named detectors run", () => {
    const text = "bob@example.com 4111111111111111";
    expect(maskText(text, ["card"], { kind: "redact" }).text).toBe("bob@example.com [REDACTED:card]");
    expect(maskText(text, [], { kind: "redact" }).text).toBe(text);
  });

  test("unknown detector names throw MASK_UNKNOWN_DETECTOR naming the known ones", () => {
    let err: unknown;
    try {
      findAll("x", ["email", "credit_card"]);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(AgateError);
    expect((err as AgateError).code).toBe("MASK_UNKNOWN_DETECTOR");
    expect((err as AgateError).message).toContain("credit_card");
    for (const d of ALL_DETECTORS) expect((err as AgateError).message).toContain(d);
    expect(() => maskText("x", ["__proto__"], { kind: "redact" })).toThrow(AgateError);
    expect(() => maskText("x", ["toString"], { kind: "redact" })).toThrow(AgateError);
  });

  test("registry: every detector named, with a maxLength, matches sorted and disjoint", () => {
    expect(ALL_DETECTORS.length).toBe(16);
    const text = plants.map((p) => p.snippet).join(" | ");
    for (const name of ALL_DETECTORS) {
      const d = DETECTORS[name]!;
      expect(d.name).toBe(name);
      expect(d.maxLength).toBeGreaterThan(0);
      const ms = d.find(text);
      expect(ms.length).toBeGreaterThan(0);
      for (let i = 0; i < ms.length; i++) {
        expect(ms[i]!.detector).toBe(name);
        expect(ms[i]!.end).toBeGreaterThan(ms[i]!.start);
        expect(ms[i]!.end - ms[i]!.start).toBeLessThanOrEqual(d.maxLength);
        if (i > 0) expect(ms[i]!.start).toBeGreaterThanOrEqual(ms[i - 1]!.end);
      }
    }
    const all = findAll(text, ALL_DETECTORS);
    for (let i = 1; i < all.length; i++) expect(all[i]!.start).toBeGreaterThanOrEqual(all[i - 1]!.end);
  });
});

// ---------------------------------------------------------------------------
// pathological inputs: they must finish (bun's per-test timeout guards it)

describe("pathological inputs", () => {
  const N = 100_000;
  const inputs: Record<string, string> = {
    "a@": "a@".repeat(N / 2),
    "@@@": "@".repeat(N),
    "long local part": "a".repeat(N) + "@example.com",
    "long domain": "a@" + "b.".repeat(N / 2) + "com",
    digits: "1".repeat(N),
    "digit spaces": "1 ".repeat(N / 2),
    "digit dashes": "1-".repeat(N / 2),
    "card-ish groups": "4111 ".repeat(N / 5),
    "dotted digits": "1.".repeat(N / 2),
    colons: ":".repeat(N),
    "hex colons": "a:".repeat(N / 2),
    "ey runs": "eyJ".repeat(N / 3),
    "jwt-ish": ("eyJ" + "a".repeat(20) + ".").repeat(N / 24),
    "base64 run": "eyJ" + "a".repeat(N),
    "password=": "password=".repeat(N / 9),
    "unterminated quote": '"password": "' + "a".repeat(N),
    "many unterminated": '"password": "'.repeat(N / 13),
    secret: "secret ".repeat(N / 7),
    "secret + run": "secret " + "A".repeat(N),
    "BEGIN ×": "-----BEGIN RSA PRIVATE KEY-----".repeat(N / 31),
    "BEGIN + body": "-----BEGIN RSA PRIVATE KEY-----\n" + "A".repeat(N),
    "url ×": "https://".repeat(N / 8),
    "url userinfo": "https://" + "a:".repeat(N / 2) + "@x",
    "libpq ×": "host=x password=".repeat(N / 16),
    "plus ×": "+1 ".repeat(N / 3),
    "parens ×": "(555) ".repeat(N / 6),
    "phone ×": "phone ".repeat(N / 6),
    "ssn ×": "ssn 123456789 ".repeat(N / 14),
    "upper ×": "A".repeat(N),
    "iban-ish": "AB12" + "C".repeat(N),
    "iban groups": "DE89 " + "3704 ".repeat(N / 5),
    "AKIA ×": "AKIA".repeat(N / 4),
    "ghp ×": "ghp_".repeat(N / 4),
    "key chars": "x".repeat(N) + "password=abc",
    "ansi ×": "\x1b[31m".repeat(N / 5),
    "escaped ansi ×": "\\u001b[31m".repeat(N / 10),
  };
  for (const [name, text] of Object.entries(inputs)) {
    test(name, () => {
      const t0 = performance.now();
      findAll(text, ALL_DETECTORS);
      maskText(text, ALL_DETECTORS, { kind: "redact" });
      const ms = performance.now() - t0;
      if (ms > 500) console.log(`pathological ${name}: ${ms.toFixed(0)} ms`);
    });
  }
});

// ---------------------------------------------------------------------------
// throughput

describe("throughput", () => {
  const r = prng(7);
  const pk = <T>(xs: readonly T[]) => xs[Math.floor(r() * xs.length)]!;
  const int = (n: number) => Math.floor(r() * n);
  const hex = (n: number) => Array.from({ length: n }, () => "0123456789abcdef"[int(16)]).join("");
  const words =
    "the of and to in is was for on that with as by at from it be this an are or have which not has had their were but been one all also its new more after first other two they time can would who into only over may most such these then some than three many where during made well about later world between used under state year because both part city since while season"
      .split(" ");
  const sentence = (n: number) => Array.from({ length: n }, () => pk(words)).join(" ");
  const uuid = () => `${hex(8)}-${hex(4)}-4${hex(3)}-a${hex(3)}-${hex(12)}`;
  const ts = () => `2024-0${1 + int(9)}-1${int(10)}T1${int(10)}:${10 + int(50)}:${10 + int(50)}.${100 + int(900)}Z`;
  const line = (): string => {
    switch (int(5)) {
      case 0:
        return `${ts()} INFO [worker-${int(16)}] request_id=${uuid()} user_id=${int(1e6)} GET /api/v1/orders/${int(1e5)}?page=${int(9)} status=200 duration_ms=${int(900)} bytes=${int(1e5)} ua="Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0.0.0 Safari/537.36"`;
      case 1:
        return JSON.stringify({ id: int(1e7), name: `${pk(words)} ${pk(words)}`, created_at: ts(), amount: int(1e6) / 100, status: pk(["shipped", "pending"]), sku: `AB-${int(1e5)}`, key: pk(words), note: sentence(12), commit: hex(40) });
      case 2:
        return `${int(1e6)},${pk(words)},${pk(words)} ${pk(words)},${(r() * 1000).toFixed(2)},2024-01-${10 + int(20)},${uuid()},v${int(9)}.${int(20)}.${int(50)}`;
      case 3:
        return sentence(20 + int(20)) + ".";
      default:
        return `\x1b[32m✓\x1b[0m test ${pk(words)} ${pk(words)} (${int(999)} ms) at 10:${10 + int(50)}:${10 + int(50)} token_count=${int(5000)} passed=${int(100)}`;
    }
  };
  // flat strings, as a decoder would hand them over
  const flat = (s: string) => Buffer.from(s).toString();

  function corpus(secretEvery: number): { lines: string[]; bytes: number; planted: number } {
    const lines: string[] = [];
    let bytes = 0;
    let planted = 0;
    while (bytes < 20e6) {
      let l = line();
      if (secretEvery > 0 && lines.length % secretEvery === 0) {
        const p = plants[planted++ % plants.length]!;
        l = `${l} ${p.snippet}`;
      }
      lines.push(flat(l));
      bytes += l.length + 1;
    }
    return { lines, bytes, planted };
  }
  function chunks(lines: string[]): string[] {
    const out: string[] = [];
    let c = "";
    for (const l of lines) {
      c += l + "\n";
      if (c.length >= 65536) {
        out.push(flat(c));
        c = "";
      }
    }
    if (c) out.push(flat(c));
    return out;
  }
  /** MB/s of findAll over `inputs`, twice: the first pass includes the JIT warming up, the second is the steady state. */
  function rate(inputs: string[], bytes: number): { cold: number; mbs: number; found: number } {
    const pass = () => {
      let found = 0;
      const t0 = performance.now();
      for (const s of inputs) found += findAll(s, ALL_DETECTORS).length;
      return { mbs: bytes / 1e6 / ((performance.now() - t0) / 1000), found };
    };
    const cold = pass();
    const warm = pass();
    return { cold: cold.mbs, mbs: warm.mbs, found: warm.found };
  }

  test("MB/s on ~20 MB of mixed text, without secrets and with ~1 %", () => {
    const clean = corpus(0);
    const dirty = corpus(100);
    const results = [
      ["no secrets, one line per call", rate(clean.lines, clean.bytes)],
      ["no secrets, 64 KiB per call", rate(chunks(clean.lines), clean.bytes)],
      ["1% lines with a secret, one line per call", rate(dirty.lines, dirty.bytes)],
      ["1% lines with a secret, 64 KiB per call", rate(chunks(dirty.lines), dirty.bytes)],
    ] as const;
    for (const [label, { cold, mbs, found }] of results)
      console.log(
        `mask throughput, all ${ALL_DETECTORS.length} detectors, ${label}: ${mbs.toFixed(1)} MB/s (first pass ${cold.toFixed(1)} MB/s, ${found} matches)`,
      );
    expect(results[0][1].found).toBe(0);
    expect(results[1][1].found).toBe(0);
    expect(results[2][1].found).toBeGreaterThanOrEqual(dirty.planted);
  });
});
