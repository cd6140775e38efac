#!/usr/bin/env bun
/**
 * `bun run build`: compiles agate into one executable, dist/agate.
 *
 *   bun scripts/build.ts [--outfile PATH]
 *
 * The executable embeds wasm/policy.wasm (the default policy, imported by
 * src/gateway.ts as a file) and libpg-query's WebAssembly parser (imported by
 * src/protocols/postgres/sql.ts), so it runs with nothing beside it. Because
 * it embeds wasm/, the build first refuses a wasm/ that was not compiled from
 * policies/ as they are now.
 */
import { mkdirSync, statSync } from "node:fs";
import { dirname, relative, resolve } from "node:path";
import { parseArgs } from "node:util";
import { checkFresh } from "../src/policy/build.ts";

const root = resolve(import.meta.dir, "..");

const { values } = parseArgs({ args: Bun.argv.slice(2), options: { outfile: { type: "string", short: "o" } } });
const outfile = resolve(values.outfile ?? `${root}/dist/agate`);

const policy = await checkFresh({ policiesDir: `${root}/policies`, outDir: `${root}/wasm` });
if (!policy.fresh) {
  console.error(
    `build: wasm/ is stale: it was built from policy sources ${policy.got?.slice(0, 12) ?? "(no manifest)"}…, ` +
      `policies/ is now ${policy.want.slice(0, 12)}…\n` +
      "build: the executable embeds wasm/policy.wasm, so rebuild it first: bun src/main.ts policy build",
  );
  process.exit(1);
}

mkdirSync(dirname(outfile), { recursive: true });
const started = performance.now();
// The worker thread's entry (src/workers/worker.ts, `workers` above 1) is an entry point of its own in the executable.
const run = Bun.spawn([process.execPath, "build", "--compile", "--minify", "--sourcemap", `${root}/src/main.ts`, `${root}/src/workers/worker.ts`, "--outfile", outfile], {
  cwd: root,
  stdout: "inherit",
  stderr: "inherit",
});
const code = await run.exited;
if (code !== 0) {
  console.error(`build: bun build --compile exited ${code} (see above)`);
  process.exit(1);
}

const size = statSync(outfile).size;
const shown = relative(process.cwd(), outfile) || outfile;
console.log(`built ${shown.startsWith("..") ? outfile : shown} (${(size / 1e6).toFixed(1)} MB) in ${((performance.now() - started) / 1000).toFixed(1)} s`);
