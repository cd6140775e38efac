/**
 * mask/rules.ts: a decision's mask rules compiled, matched and applied.
 */
import { describe, expect, test } from "bun:test";
import { AgateError } from "../src/core/errors.ts";
import { ALL_DETECTORS } from "../src/mask/detectors.ts";
import { maskValue, starPartial } from "../src/mask/styles.ts";
import { prng } from "./helpers/mask-corpus.ts";
import { compileMask, type MaskKeys, maskWith, NO_MASK, ruleForColumn, ruleForColumnName, ruleForName } from "../src/mask/rules.ts";

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
  test("stars ASCII bytes in place exactly as maskValue's partial style does", () => {
    const rand = prng(11);
    const alphabet = "0123456789 -abcXYZ@.\t!,_";
    for (let n = 0; n < 5000; n++) {
      let v = "";
      const len = Math.floor(rand() * 24);
      for (let i = 0; i < len; i++) v += Array.from(alphabet)[Math.floor(rand() * Array.from(alphabet).length)];
      for (const detector of ["card", "jwt"]) {
        for (const keep of [0, 4]) {
          if (v.length < keep + 4) continue;
          const buf = Buffer.from(`<${v}>`);
          starPartial(buf, 1, buf.length - 1, detector, keep);
          expect(buf.toString("latin1")).toBe(`<${maskValue(v, detector, { kind: "partial", keep })}>`);
        }
      }
    }
  });
});
