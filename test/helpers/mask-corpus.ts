/**
 * The planted-secret corpus shared by the masking tests (mask-detectors,
 * in process; mask-corpus, end to end through a gateway):
 *
 *   plants      every detector in several spellings: the raw value, the
 *               snippet that embeds it with whatever context it needs, and
 *               other strings that must not survive either;
 *   wrappers    how a snippet is embedded in plain text, a log line, JSON,
 *               CSV, ANSI-coloured terminal output and an asciicast event,
 *               and how the raw value is written inside each;
 *   lookalikes  values that resemble secrets (numbers failing Luhn, IBANs
 *               with bad check digits, versions, ids…) and must not be masked.
 *
 * Token-shaped values are generated at load time from a seeded PRNG so no
 * literal credential sits in the source; the private keys are generated
 * afresh on each load. The data is checked with validators of its own
 * (Luhn, IBAN mod 97), independent of the code under test.
 */
import { generateKeyPairSync } from "node:crypto";

/** The corpus is malformed: a bug in this file, not in the code under test. */
function check(ok: boolean, what: string): void {
  if (!ok) throw new Error(`mask corpus: ${what}`);
}

// ---------------------------------------------------------------------------
// deterministic randomness

export function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
export const rand = prng(20240115);
export const ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
export const B64 = ALNUM + "+/";
export const BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
export function pick<T>(xs: readonly T[]): T {
  return xs[Math.floor(rand() * xs.length)]!;
}
export function randStr(n: number, abc = ALNUM): string {
  let s = "";
  for (let i = 0; i < n; i++) s += abc[Math.floor(rand() * abc.length)];
  return s;
}
/** Random, with at least one upper, one lower and one digit (what a real key has). */
export function mixed(n: number, abc = ALNUM): string {
  for (;;) {
    const s = randStr(n, abc);
    if (/[A-Z]/.test(s) && /[a-z]/.test(s) && /\d/.test(s)) return s;
  }
}

// ---------------------------------------------------------------------------
// independent validators (so the test data is checked without the code under test)

export function luhnOk(d: string): boolean {
  let sum = 0;
  for (let i = 0; i < d.length; i++) {
    let x = Number(d[d.length - 1 - i]);
    if (i % 2 === 1) x = x * 2 > 9 ? x * 2 - 9 : x * 2;
    sum += x;
  }
  return sum % 10 === 0;
}
/** `prefix` + random digits + the Luhn check digit, `len` digits in all. */
export function luhnCard(prefix: string, len: number): string {
  let d = prefix;
  while (d.length < len - 1) d += Math.floor(rand() * 10);
  for (let c = 0; c < 10; c++) if (luhnOk(d + c)) return d + c;
  throw new Error("unreachable");
}
export function ibanOk(iban: string): boolean {
  const c = iban.replace(/ /g, "");
  const r = (c.slice(4) + c.slice(0, 4)).replace(/[A-Z]/g, (ch) => String(ch.charCodeAt(0) - 55));
  return BigInt(r) % 97n === 1n;
}
export function group(d: string, sizes: number[], sep: string): string {
  const out: string[] = [];
  let i = 0;
  for (const n of sizes) {
    out.push(d.slice(i, i + n));
    i += n;
  }
  return out.join(sep);
}
export const b64url = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");

// ---------------------------------------------------------------------------
// the planted corpus

export interface Plant {
  /** The detector that must claim the value when every detector runs. */
  detector: string;
  /** What is embedded (the value with whatever context it needs). */
  snippet: string;
  /** The secret itself, which must not survive masking. */
  raw: string;
  /** Other strings that must not survive either (a card's bare digits, a key's body lines). */
  also?: string[];
}

export const plants: Plant[] = [];
export function plant(detector: string, raw: string, snippet = raw, also: string[] = []): void {
  plants.push({ detector, raw, snippet: snippet.replace("$$", raw), also });
}

// email
for (const e of ["alice.smith+tag@example.com", "bob_o-neil@mail.example.co.uk", "x@ex.io", "UPPER.Case@Example.ORG"]) plant("email", e);
plant("email", "carol@example.net", "mailto:$$");
plant("email", "dave@example.com", "<$$>");

// card: every brand, compact, spaced, dashed
export const cards: Array<[string, number[]]> = [
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
  check(luhnOk(d), `${d} fails Luhn`);
  plant("card", d, "card $$ on file");
  plant("card", group(d, sizes, " "), "card: $$", [d]);
  plant("card", group(d, sizes, "-"), "$$", [d]);
}
plant("card", "4111 1111 1111 1111", "4111 1111 1111 1111 12/25", ["4111111111111111"]);
plant("card", "4111111111111111", "cc=4111111111111111;exp=1225");

// iban: several countries, compact and in groups of four
export const ibans = [
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
  check(ibanOk(iban), `${iban} fails mod 97`);
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
export const awsIds = ["AKIA", "ASIA", "AROA", "AIDA"].map((p) => p + randStr(16, BASE32));
for (const id of awsIds) plant("aws_access_key", id, "key id $$");
export const awsSecrets = Array.from({ length: 6 }, () => mixed(40, B64));
plant("aws_secret_key", awsSecrets[0]!, "aws_secret_access_key = $$");
plant("aws_secret_key", awsSecrets[1]!, "AWS_SECRET_ACCESS_KEY=$$");
plant("aws_secret_key", awsSecrets[2]!, '{"AccessKeyId": "' + awsIds[0] + '", "SecretAccessKey": "$$"}');
plant("aws_secret_key", awsSecrets[3]!, "aws configure set --aws-secret-key $$");
// bare, no keyword near: a value that is the key, or holds it among other fields
plant("aws_secret_key", awsSecrets[4]!, "$$");
plant("aws_secret_key", awsSecrets[5]!, "creds for backup job: $$ (rotated monthly)");

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
export const jwtHS = `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url({ sub: "1234567890", name: "Jane", iat: 1516239022 })}.${randStr(43, ALNUM + "-_")}`;
export const jwtRS = `${b64url({ alg: "RS256", kid: "k1" })}.${b64url({ iss: "https://id.example.com", aud: "agate", exp: 1900000000 })}.${randStr(342, ALNUM + "-_")}`;
plant("jwt", jwtHS, "Authorization: Bearer $$");
plant("jwt", jwtRS, "id_token=$$");
plant("jwt", jwtHS, '{"access_token": "$$", "token_type": "Bearer"}');

// pem private keys
const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey;
export const pems = [
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
  check(/^-----BEGIN [A-Z ]*PRIVATE KEY-----\n[\s\S]+\n-----END [A-Z ]*PRIVATE KEY-----$/.test(key), "a PEM key has an unexpected shape");
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
export interface Wrapper {
  name: string;
  wrap: (snippet: string) => string;
  enc: (raw: string) => string;
}
export const json = (s: string) => JSON.stringify(s).slice(1, -1);
export const wrappers: Wrapper[] = [
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

// ---------------------------------------------------------------------------
// look-alikes

export const lookalikes = [
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
  // 40 characters of the key's alphabet that are not keys: digests, base64 of text, words, paths
  "da39a3ee5e6b4b0d3255bfef95601890afd80709",
  "SHA1 DA39A3EE5E6B4B0D3255BFEF95601890AFD80709",
  "etag 2fd4e1c67a2d28fced849ee1bb76e7391b93eb12",
  "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
  `msg ${Buffer.from("Hello World, this is a test!!").toString("base64").slice(0, 40)}`,
  Buffer.from("the quick brown fox jumps over t").toString("base64").slice(0, 40),
  Buffer.from("Password: not a real one, test!").toString("base64").slice(0, 40),
  "ThisIsAVeryLongCamelCaseIdentifierName12",
  "class AbstractSingletonProxyFactoryBean42 extends",
  "HTTPServerErrorResponseHandlerFactory404",
  "org/apache/commons/lang3/StringUtilsTest",
  "usr/local/lib/postgresql/Version15/bin/x",
  "supercalifragilisticexpialidociousWord1A",
  "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567ABCDEFGH",
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
