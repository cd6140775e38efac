/**
 * mask/rules.ts: a decision's mask rules compiled, matched and applied.
 */
import { describe, expect, test } from "bun:test";
import { AgateError } from "../src/core/errors.ts";
import { ALL_DETECTORS } from "../src/mask/detectors.ts";
import { isPersonal, keptChars, maskValue, starPartial } from "../src/mask/styles.ts";
import { prng } from "./helpers/mask-corpus.ts";
import { BinaryUnscanned, compileMask, type MaskKeys, maskWith, NO_MASK, readsAsText, ruleForColumn, ruleForColumnName, ruleForName, UNSCANNED_BINARY } from "../src/mask/rules.ts";

const KEY = { hmac: new TextEncoder().encode("k".repeat(32)) };

function invalid(mask: { columns: string[]; detectors: string[] }, keys: MaskKeys = KEY): string {
  try {
    compileMask(mask, keys);
  } catch (e) {
    expect(e).toBeInstanceOf(AgateError);
    expect((e as AgateError).code).toBe("MASK_INVALID");
    return (e as Error).message;
  }
  throw new Error("compiled");
}

describe("compileMask", () => {
  test("no rules: the shared empty mask", () => {
    expect(compileMask({ columns: [], detectors: [] })).toBe(NO_MASK);
    expect(NO_MASK.empty).toBe(true);
  });

  test("detectors with styles; * is every detector; the same rules give the same object", () => {
    const m = compileMask({ columns: [], detectors: ["email:partial", "*:hmac"] }, KEY);
    expect([...m.detectors].sort()).toEqual([...ALL_DETECTORS].sort());
    expect(m.styles.email).toEqual({ kind: "partial", keep: 4 });
    expect(m.styles.card!.kind).toBe("hmac");
    expect(compileMask({ columns: [], detectors: ["email:partial", "*:hmac"] }, KEY)).toBe(m);
  });

  test("column rules: schema.table.column, table.column, a bare name, * patterns, any case", () => {
    const m = compileMask({ columns: ["public.users.email", "orders.card:partial", "*secret*", "hr.*.ssn"], detectors: [] });
    expect(ruleForColumn(m, "public", "users", "email")?.rule).toBe("public.users.email");
    expect(ruleForColumn(m, "Public", "USERS", "Email")?.rule).toBe("public.users.email");
    expect(ruleForColumn(m, "other", "users", "email")).toBeUndefined();
    expect(ruleForColumn(m, "sales", "orders", "card")?.style).toEqual({ kind: "partial", keep: 4 });
    expect(ruleForColumn(m, "x", "y", "api_secret_2")?.rule).toBe("*secret*");
    expect(ruleForColumn(m, "hr", "people", "ssn")?.rule).toBe("hr.*.ssn");
    expect(ruleForColumn(m, "hrx", "people", "ssn")).toBeUndefined();
    // a bare name also covers a result column's own name; table rules do not
    expect(ruleForName(m, "my_secret")?.rule).toBe("*secret*");
    expect(ruleForName(m, "email")).toBeUndefined();
    // any rule's column part, for the columns a statement names
    expect(ruleForColumnName(m, "email")?.rule).toBe("public.users.email");
    // regex characters in a name are literal
    expect(ruleForColumn(compileMask({ columns: ["a+b"], detectors: [] }), "s", "t", "aab")).toBeUndefined();
  });

  test("what cannot be applied is refused with a reason", () => {
    expect(invalid({ columns: [], detectors: ["emial"] })).toContain('unknown mask detector "emial"');
    expect(invalid({ columns: [], detectors: ["email:blur"] })).toContain('unknown style "blur"');
    expect(invalid({ columns: ["users.email:hmac"], detectors: [] }, {})).toContain("no mask.hmac_key configured");
    expect(invalid({ columns: ["a.b.c.d"], detectors: [] })).toContain("more than schema.table.column");
    expect(invalid({ columns: ["users..email"], detectors: [] })).toContain("is not a name");
  });
});

describe("maskWith", () => {
  test("each detector in its own style, counted; nothing found gives the same string", () => {
    const m = compileMask({ columns: [], detectors: ["email", "card:partial"] });
    const counts: Record<string, number> = {};
    const out = maskWith("mail ada@example.org, card 4111 1111 1111 1111", m, counts);
    expect(out).toBe("mail [REDACTED:email], card **** **** **** 1111");
    expect(counts).toEqual({ email: 1, card: 1 });
    const plain = "nothing here";
    expect(maskWith(plain, m)).toBe(plain);
  });
});

describe("starPartial", () => {
  test("stars ASCII bytes, copied or in place, exactly as maskValue's partial style does", () => {
    const rand = prng(11);
    const alphabet = "0123456789 -abcXYZ@.\t!,_";
    for (let n = 0; n < 5000; n++) {
      let v = "";
      const len = Math.floor(rand() * 24);
      for (let i = 0; i < len; i++) v += Array.from(alphabet)[Math.floor(rand() * Array.from(alphabet).length)];
      for (const detector of ["card", "jwt"]) {
        for (const keep of [0, 4]) {
          if (v.length < keep + 4) continue;
          const want = `<${maskValue(v, detector, { kind: "partial", keep })}>`;
          const buf = Buffer.from(`<${v}>`);
          const copy = Buffer.from(`<${" ".repeat(v.length)}>`);
          expect(starPartial(buf, 1, buf.length - 1, copy, 1, isPersonal(detector), keptChars(keep))).toBe(buf.length - 1);
          expect(copy.toString("latin1")).toBe(want);
          starPartial(buf, 1, buf.length - 1, buf, 1, isPersonal(detector), keptChars(keep));
          expect(buf.toString("latin1")).toBe(want);
          // a byte beyond ASCII: not starred here (the caller uses maskValue)
          const wide = Buffer.from(`<${v}é>`);
          expect(starPartial(wide, 1, wide.length - 1, Buffer.alloc(wide.length), 1, isPersonal(detector), keptChars(keep))).toBe(-1);
        }
      }
    }
  });
});

describe("bytea hex runs: only bytes that read as text are scanned", () => {
  const secret = "password=Zx8Kq2LmP9vR4tW7yB1n";
  const text = Buffer.from(`note ${secret}`);
  const binary = Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x00, 0x1a]), Buffer.from(` ${secret} `), Buffer.from([0xff, 0xfe])]);

  test("text bytes are masked; binary bytes pass unchanged and are counted", () => {
    const m = compileMask({ columns: [], detectors: ["kv_secret"] });
    const counts: Record<string, number> = {};
    const masked = maskWith(`\\x${text.toString("hex")}`, m, counts);
    expect(Buffer.from(masked.slice(2), "hex").toString()).toBe("note password=[REDACTED:kv_secret]");
    const hex = `\\x${binary.toString("hex")}`;
    expect(maskWith(hex, m, counts)).toBe(hex);
    expect(counts).toEqual({ kv_secret: 1, [UNSCANNED_BINARY]: 1 });
    // a record scans binary too (it is never read back as data)
    expect(maskWith(hex, m, {}, undefined, true)).not.toBe(hex);
  });

  test("binary:strict refuses what it cannot scan; binary:pass and unknown values", () => {
    const strict = compileMask({ columns: [], detectors: ["kv_secret", "binary:strict"] });
    expect(strict.strictBinary).toBe(true);
    expect(strict.detectors).toEqual(["kv_secret"]);
    expect(() => maskWith(`\\x${binary.toString("hex")}`, strict)).toThrow(BinaryUnscanned);
    expect(maskWith(`\\x${text.toString("hex")}`, strict)).not.toContain(text.toString("hex"));
    expect(compileMask({ columns: [], detectors: ["*", "binary:pass"] }).strictBinary).toBe(false);
    expect(invalid({ columns: [], detectors: ["binary:maybe"] })).toContain("binary:strict");
  });

  test("readsAsText: UTF-8 without control bytes but tab, LF, CR", () => {
    expect(readsAsText(Buffer.from("héllo\tworld\r\n"), 0, 14)).toBe(true);
    expect(readsAsText(Buffer.from([0x61, 0x00, 0x62]), 0, 3)).toBe(false);
    expect(readsAsText(Buffer.from([0x61, 0x1b, 0x62]), 0, 3)).toBe(false);
    expect(readsAsText(Buffer.from([0x61, 0xe9, 0x62]), 0, 3)).toBe(false);
    expect(readsAsText(Buffer.from([0x61, 0x7f]), 0, 2)).toBe(false);
  });
});
