#!/usr/bin/env bun
/**
 * Exits 1 when wasm/ was not built from the current policies/ (the binary
 * embeds wasm/, so a stale build ships an old policy). Fix: bun run policy:build.
 *
 *   bun scripts/check-policy-fresh.ts [policiesDir] [outDir]
 */
import { resolve } from "node:path";
import { checkFresh } from "../src/policy/build.ts";

const root = resolve(import.meta.dir, "..");
const policiesDir = resolve(process.argv[2] ?? `${root}/policies`);
const outDir = resolve(process.argv[3] ?? `${root}/wasm`);

const { fresh, want, got } = await checkFresh({ policiesDir, outDir });
if (!fresh) {
  console.error(
    `wasm/ is stale: ${outDir}/manifest.json says sources_sha256 ${got ?? "(missing)"}, ` +
      `but ${policiesDir} hashes to ${want}.\n` +
      "Rebuild with `bun run policy:build` (or `bun src/policy/build.ts`) and commit wasm/.",
  );
  process.exit(1);
}
console.log(`wasm/ is fresh (sources_sha256 ${want})`);
