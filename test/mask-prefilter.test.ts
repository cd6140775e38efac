/**
 * mask/prefilter.ts may leave a detector out only where it would find
 * nothing: findAll with the detectors the triggers allow must equal findAll
 * with all of them, on every planted secret in every wrapping, on the
 * look-alikes, and on random text built to sit near the prefilter's edges.
 */
import { describe, expect, test } from "bun:test";
import { ALL_DETECTORS, findAll } from "../src/mask/detectors.ts";
import { triggers, TRIGGERS } from "../src/mask/prefilter.ts";
import { lookalikes, plants, prng, wrappers } from "./helpers/mask-corpus.ts";

/** The detectors the triggers of `text` allow, read as UTF-8 bytes (rows) or as Latin-1 bytes (strings, rules.ts). */
function allowed(text: string, encoding: "utf8" | "latin1" = "utf8"): string[] {
  const b = Buffer.from(text, encoding);
  const bits = triggers(b, 0, b.length);
  return ALL_DETECTORS.filter((d) => (TRIGGERS[d]! & bits) !== 0);
}

/** Texts where the allowed detectors (either reading) find something other than all of them do. */
function differing(texts: Iterable<string>): string[] {
  const out: string[] = [];
  for (const t of texts) {
    const all = JSON.stringify(findAll(t, ALL_DETECTORS));
    if (all === "[]") continue;
    if (JSON.stringify(findAll(t, allowed(t))) !== all || JSON.stringify(findAll(t, allowed(t, "latin1"))) !== all) out.push(t);
  }
  return out;
}

describe("prefilter triggers", () => {
  test("every detector has triggers", () => {
    for (const d of ALL_DETECTORS) expect(TRIGGERS[d]).toBeGreaterThan(0);
  });

  test("every planted secret, raw and in every wrapping: the allowed detectors find what all of them find", () => {
    const texts: string[] = [];
    for (const p of plants) {
      texts.push(p.raw, p.snippet);
      for (const w of wrappers) texts.push(w.wrap(p.snippet));
    }
    expect(differing(texts)).toEqual([]);
    // and each plant's own detector is allowed on its snippet
    expect(plants.filter((p) => !allowed(p.snippet).includes(p.detector)).map((p) => `${p.detector}: ${p.snippet}`)).toEqual([]);
    // a text with everything in it
    expect(differing([plants.map((p) => p.snippet).join(" | ")])).toEqual([]);
  });

  test("look-alikes", () => {
    expect(differing(lookalikes)).toEqual([]);
  });

  test("random text near the edges: short digit runs, dots, dashes, token-ish runs, non-ASCII", () => {
    const rand = prng(7);
    // "Ā" (U+0100), "Ġ" (U+0120), "ŀ" (U+0140): beyond Latin-1, read as the bytes 0x00, " " and "@" by the string path
    const pieces = ["1", "12", "123", "4111", ".", "-", "_", "a", "Z", "GB", "x", " ", "é", "😀", "Ā", "Ġ", "ŀ", "\t", "ab1", "AKIA", "eyJ", "+", "/", "(", ")", ",", "#", "@", ":", "="];
    const texts: string[] = [];
    for (let i = 0; i < 20_000; i++) {
      let t = "";
      const n = 1 + Math.floor(rand() * 32);
      for (let j = 0; j < n; j++) t += pieces[Math.floor(rand() * pieces.length)];
      texts.push(t);
    }
    expect(differing(texts)).toEqual([]);
  });

  test("prose, names and small numbers have no triggers", () => {
    for (const t of ["Ada Lovelace", "Prefers a call between nine and five; ask for Ana.", "order 12345 is pending", "Zoë Müller-Lüdenscheidt", "order #123 (paid)"]) {
      const b = Buffer.from(t);
      expect(triggers(b, 0, b.length)).toBe(0);
    }
  });
});
