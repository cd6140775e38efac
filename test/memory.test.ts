/**
 * core/memory.ts: a full collection once RSS has grown by GROWTH_BYTES over
 * the lowest it was since the last one, and not before. (Under load, with a
 * real gateway process: test/soak.test.ts, the pipelining clients.)
 */
import { expect, test } from "bun:test";
import { checkMemory, GROWTH_BYTES } from "../src/core/memory.ts";

test("collects once RSS is GROWTH_BYTES over the floor, then measures the floor anew", () => {
  const floor = 1; // below anything seen, so it becomes the floor whatever ran before
  expect(checkMemory(floor)).toBe(false);
  expect(checkMemory(floor + GROWTH_BYTES - 1)).toBe(false);
  expect(checkMemory(floor + GROWTH_BYTES)).toBe(true);
  // The floor is now the real RSS after the collection: growth is counted from there.
  const real = process.memoryUsage.rss();
  expect(checkMemory(real)).toBe(false);
  expect(checkMemory(real + GROWTH_BYTES + (64 << 20))).toBe(true);
});
