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
 * The corpus (plants, wrappers, look-alikes) lives in helpers/mask-corpus.ts,
 * shared with the end-to-end test (mask-corpus.test.ts).
 */
import { describe, expect, test } from "bun:test";
import { createHmac } from "node:crypto";
import { AgateError } from "../src/core/errors.ts";
import { ALL_DETECTORS, DETECTORS, findAll, type MaskStyle, maskText, maskValue } from "../src/mask/index.ts";
import { jwtHS, lookalikes, plants, prng, wrappers } from "./helpers/mask-corpus.ts";

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
// nested quoting: JSON in CSV, COPY's doubled backslashes, records, SQL literals

describe("nested quoting", () => {
  /** One level of encoding: how it embeds a string, and how to get the string back. */
  interface Layer {
    name: string;
    wrap: (s: string) => string;
    unwrap: (t: string) => string;
  }
  const between = (t: string, a: string, b: string) => {
    expect(t.startsWith(a) && t.endsWith(b)).toBe(true);
    return t.slice(a.length, t.length - b.length);
  };
  const layers: Record<string, Layer> = {
    // a JSON document with the string in it
    json: { name: "json", wrap: (s) => JSON.stringify({ k: s }), unwrap: (t) => JSON.parse(t).k },
    // a CSV line with the string as a quoted field
    csv: {
      name: "csv",
      wrap: (s) => `17,alice,"${s.replaceAll('"', '""')}",2024-01-15,42.50`,
      unwrap: (t) => between(t, '17,alice,"', '",2024-01-15,42.50').replaceAll('""', '"'),
    },
    // COPY's text format: backslashes doubled
    copy: {
      name: "copy",
      wrap: (s) => `17\t${s.replaceAll("\\", "\\\\")}\t\\N`,
      unwrap: (t) => between(t, "17\t", "\t\\N").replaceAll("\\\\", "\\"),
    },
    // a record's text output: a quoted field, quotes doubled, backslashes doubled
    record: {
      name: "record",
      wrap: (s) => `(17,"${s.replaceAll("\\", "\\\\").replaceAll('"', '""')}",t)`,
      unwrap: (t) => between(t, '(17,"', '",t)').replaceAll('""', '"').replaceAll("\\\\", "\\"),
    },
    // an array's text output: a quoted element, quotes and backslashes escaped
    array: {
      name: "array",
      wrap: (s) => `{x,"${s.replaceAll("\\", "\\\\").replaceAll('"', '\\"')}"}`,
      unwrap: (t) => between(t, '{x,"', '"}').replace(/\\(.)/g, "$1"),
    },
    // an SQL literal: single quotes doubled
    sql: {
      name: "sql",
      wrap: (s) => `SELECT '${s.replaceAll("'", "''")}' AS v`,
      unwrap: (t) => between(t, "SELECT '", "' AS v").replaceAll("''", "'"),
    },
  };
  /** Innermost first. */
  const chains: string[][] = [
    [],
    ["json"],
    ["csv"],
    ["copy"],
    ["record"],
    ["sql"],
    ["json", "csv"],
    ["json", "copy"],
    ["json", "record"],
    ["json", "array"],
    ["json", "sql"],
    ["json", "json"],
    ["csv", "json"],
    ["csv", "csv"],
    ["csv", "copy"],
    ["csv", "sql"],
    ["json", "csv", "json"],
    ["json", "csv", "csv"],
    ["json", "csv", "copy"],
    ["json", "record", "csv"],
    ["json", "json", "copy"],
    ["json", "json", "json"],
    ["json", "record", "copy"],
    ["json", "sql", "csv"],
    ["sql", "json", "csv"],
  ];
  const wrapAll = (chain: string[], s: string) => chain.reduce((t, l) => layers[l]!.wrap(t), s);
  const unwrapAll = (chain: string[], t: string) => chain.reduceRight((x, l) => layers[l]!.unwrap(x), t);

  // [detector, secret, snippet]: the secrets hold no quote or backslash, so every encoding writes them as they are
  const planted: Array<[string, string, string]> = [
    ["kv_secret", "Xk9#mPq2$vL8", '{"password": "$$"}'],
    ["kv_secret", "correct-horse-battery", 'db_password = "$$"'],
    ["kv_secret", "aB3$dE6^gH9*", "{'secret': '$$'}"],
    ["kv_secret", "Zx8Kq2LmP9vR4tW7yB1n", '{"api_key":"$$","n":1}'],
    ["kv_secret", "s3cr3tT0kenValue99", "--token='$$' --verbose"],
    ["kv_secret", "hunter22!x", 'password: "$$"'],
    ["kv_secret", "4f9c2b7e8a1d3f6c5b0e9a7d2c4f1b8e", '["x", {"client_secret": "$$"}]'],
    // PostgreSQL quotes a value in an error message without escaping the quotes in it
    ["kv_secret", "correct-horse-battery", 'invalid input syntax for type integer: "db_password = "$$""'],
    ["url_password", "with space", "host=localhost user=postgres password='$$'"],
    ["url_password", "Tr0ub4dor&3", "host=db port=5432 user=app password=$$ sslmode=require"],
    ["url_password", "S3cr3tPass", '{"dsn": "postgres://app:$$@db.example.com:5432/app"}'],
    ["phone", "07700 900123", '{"mobile": "$$"}'],
    ["phone", "0301234567", '{"phone_number":"$$"}'],
    ["phone", "020 7946 0958", "{'tel': '$$'}"],
    ["ssn", "536228791", '{"ssn": "$$"}'],
    ["ssn", "219 09 9999", '{"social_security_number": "$$"}'],
  ];

  /** Empty values, and keys whose "value" is really the next field: unchanged however they are nested. */
  const nestedLookalikes = [
    '"password=",2024-01-15,42.50\tpassword=\t{"k"',
    '{"password": "", "user": "bob", "note": "see the manual"}',
    "password='' host=db user=app",
    'password="" next=1',
    "'password=' || x || ' user=bob'",
    '["password=", "user=alice,2024-01-15"]',
    '{"password": null, "token": "", "phone": "2024-01-15 10:30:00"}',
    "password= 'abc' is not set",
    '"token=", "2024-01-15", "42.50"',
  ];

  for (const chain of chains) {
    const label = chain.length === 0 ? "as is" : chain.join(" in ");
    test(`masked exactly, the encoding intact (${label})`, () => {
      const wrong: string[] = [];
      for (const [detector, secret, snippet] of planted) {
        const text = wrapAll(chain, snippet.replace("$$", secret));
        const want = wrapAll(chain, snippet.replace("$$", `[REDACTED:${detector}]`));
        const { text: got, counts } = maskText(text, ALL_DETECTORS, { kind: "redact" });
        if (got !== want || counts[detector] !== 1) wrong.push(`${JSON.stringify(text)} → ${JSON.stringify(got)}`);
        else if (unwrapAll(chain, got) !== snippet.replace("$$", `[REDACTED:${detector}]`)) wrong.push(`${JSON.stringify(got)} does not decode`);
        // the detector alone finds it too
        if (!findAll(text, [detector]).some((m) => text.slice(m.start, m.end) === secret)) wrong.push(`${detector} alone misses ${JSON.stringify(text)}`);
      }
      expect(wrong).toEqual([]);
    });

    test(`look-alikes unchanged (${label})`, () => {
      const changed: string[] = [];
      for (const l of [...lookalikes, ...nestedLookalikes]) {
        const text = wrapAll(chain, l);
        const got = maskText(text, ALL_DETECTORS, { kind: "redact" }).text;
        if (got !== text) changed.push(`${JSON.stringify(text)} → ${JSON.stringify(got)}`);
      }
      expect(changed).toEqual([]);
    });
  }

  test("the cases the end-to-end corpus found", () => {
    const redact = { kind: "redact" } as const;
    // [text, secret, detector]
    const planted: Array<[string, string, string]> = [
      ['"{""password"": ""Xk9#mPq2$vL8""}"', "Xk9#mPq2$vL8", "kv_secret"],
      ['{"k": "17,alice,\\"{\\"\\"password\\"\\": \\"\\"Xk9#mPq2$vL8\\"\\"}\\",2024-01-15"}', "Xk9#mPq2$vL8", "kv_secret"],
      ['{"k": "{\\\\"password\\\\": \\\\"Xk9#mPq2$vL8\\\\"}"}', "Xk9#mPq2$vL8", "kv_secret"],
      ['{\\\\"mobile\\\\": \\\\"07700 900123\\\\"}', "07700 900123", "phone"],
      ['"{""k"": ""{\\\\""mobile\\\\"": \\\\""07700 900123\\\\""}""}"', "07700 900123", "phone"],
      ['""""password"""": """"Xk9#mPq2$vL8""""', "Xk9#mPq2$vL8", "kv_secret"],
      ["SELECT 'host=localhost user=postgres password=''with space''' AS v", "with space", "url_password"],
      ['17,alice,"db_password = ""correct-horse-battery""",2024-01-15', "correct-horse-battery", "kv_secret"],
      ['{"k": "17,alice,\\"db_password = \\"\\"correct-horse-battery\\"\\"\\",2024-01-15"}', "correct-horse-battery", "kv_secret"],
      ['{"k": "db_password = \\\\"correct-horse-battery\\\\""}', "correct-horse-battery", "kv_secret"],
      ['"{""k"": ""db_password = \\\\""correct-horse-battery\\\\""""}"', "correct-horse-battery", "kv_secret"],
      ['"""db_password = """"correct-horse-battery"""""""', "correct-horse-battery", "kv_secret"],
      ['ERROR:  invalid input syntax for type integer: "db_password = "correct-horse-battery""', "correct-horse-battery", "kv_secret"],
    ];
    for (const [text, secret, detector] of planted) {
      // only the value is replaced: the quotes and escapes around it stay as they were
      expect(maskText(text, ALL_DETECTORS, redact).text).toBe(text.replace(secret, `[REDACTED:${detector}]`));
      expect(findAll(text, [detector]).map((m) => text.slice(m.start, m.end))).toEqual([secret]);
    }
    // the look-alike: in CSV, the quote after "password=" closes the field; a value never runs across a tab
    for (const text of ['"password=",2024-01-15,42.50\tpassword=\t{"k"', '17,alice,"password=",2024-01-15,42.50\tpassword=\t{"k": "password="}'])
      expect(maskText(text, ALL_DETECTORS, redact).text).toBe(text);
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
    // quote runs: read as one boundary, but only up to a bounded length
    'escaped quotes \\"\\"…': '\\"'.repeat(N / 2),
    "single quotes ''''…": "'".repeat(N),
    'double quotes """"…': '"'.repeat(N),
    'password= + \\"\\"…': "password=" + '\\"'.repeat(N / 2),
    "password= + ''''…": "password=" + "'".repeat(N),
    "''''password'''' …": "'".repeat(N / 2) + "password" + "'".repeat(N / 2) + ": x",
    'quoted keys \\"\\"password\\"\\": ×': '\\"\\"password\\"\\": \\"\\"'.repeat(N / 24),
    "sql-quoted keys ''password=''' ×": "''password='''".repeat(N / 14),
    "unterminated nested values ×": ('\\\\"password\\\\": \\\\"' + "a".repeat(200)).repeat(N / 218),
    "libpq ''…'' ×": "host=x password=''".repeat(N / 18),
    'phone + \\"\\"… ×': 'phone\\"\\": \\"\\"'.repeat(N / 14) + "0123456789",
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
