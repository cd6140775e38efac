/**
 * Compiling policies/ to wasm/ with the real OPA compiler, and telling
 * whether wasm/ still matches policies/.
 *
 *   wasm/policy.wasm     `opa build -t wasm -e agate/decision` output
 *   wasm/data.json       the bundle's data, only when policies/ holds data files
 *   wasm/manifest.json   {"entrypoint", "opa", "sources_sha256", "inputs"}
 *
 * `inputs` says what of its input the compiled policy can read, found from
 * the plan OPA compiles from the same sources (`opa build -t plan`;
 * reads.ts), bound to the policy.wasm it describes by `wasm_sha256`. The
 * engine caches decisions on exactly those parts (cache.ts).
 *
 * sources_sha256 is SHA-256 over the policy sources sorted by path, each as
 * `relative path || 0x00 || contents || 0x00`. Sources are the files
 * `opa build` reads: *.rego except *_test.rego, and data files (*.json,
 * *.yaml, *.yml), so editing either makes wasm/ stale.
 *
 * The build runs with policiesDir as the working directory so the file names
 * embedded in policy.wasm are relative: the same sources give the same bytes
 * on every machine.
 */
import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve, sep } from "node:path";
import { AgateError } from "../core/errors.ts";
import { ENTRYPOINT } from "./decision.ts";
import { analysePlan, type PolicyReads, readsPath } from "./reads.ts";
import { readTarGz } from "./tar.ts";

/** The OPA release agate pins; scripts/opa.sh installs exactly this. */
export const OPA_VERSION = "v1.22.3";

export interface PolicyManifest {
  entrypoint: string;
  opa: string;
  sources_sha256: string;
  /** What the policy reads of its input (absent in manifests written before agate analysed policies). */
  inputs?: PolicyInputs;
}

/** The manifest's account of what a policy.wasm reads (see reads.ts). */
export interface PolicyInputs extends PolicyReads {
  /** SHA-256 (hex) of the policy.wasm this describes: any other module is not described by it. */
  wasm_sha256: string;
  /** Whether it reads input.now, input.command.text, parameters (input.command.params) or input.grants. */
  now: boolean;
  text: boolean;
  params: boolean;
  grants: boolean;
}

/** The manifest written, plus what the build did. */
export interface BuildResult extends PolicyManifest {
  /** Files written, absolute. */
  files: string[];
  /** Things the build could not check, in sentences (e.g. builtins unsupported by the wasm SDK). */
  warnings: string[];
}

const REPO_ROOT = resolve(import.meta.dir, "../..");

/**
 * The path of the pinned opa binary: $AGATE_OPA if set, else `scripts/opa.sh`
 * when this runs from a checkout (it builds opa on first use), else `opa`
 * from PATH.
 */
export function resolveOpa(): string {
  if (process.env.AGATE_OPA) return process.env.AGATE_OPA;
  const script = join(REPO_ROOT, "scripts/opa.sh");
  if (!existsSync(script)) return "opa";
  const run = Bun.spawnSync(["bash", script], { stdout: "pipe", stderr: "inherit" });
  const path = run.stdout.toString().trim();
  if (run.exitCode !== 0 || !path) {
    throw new AgateError("OPA_MISSING", `scripts/opa.sh could not provide opa ${OPA_VERSION}; see its message above.`, {
      exitCode: run.exitCode,
    });
  }
  return path;
}

/** The version `opa version` reports, as "v1.22.3". */
export function opaVersion(opaPath: string): string {
  const run = Bun.spawnSync([opaPath, "version"], { stdout: "pipe", stderr: "pipe" });
  const m = /^Version: (\S+)$/m.exec(run.stdout.toString());
  if (run.exitCode !== 0 || !m?.[1]) {
    throw new AgateError("OPA_MISSING", `${opaPath} did not run; install opa ${OPA_VERSION} with scripts/opa.sh.`, {
      stderr: run.stderr.toString().trim(),
    });
  }
  return `v${m[1]}`;
}

/** Compiles `policiesDir` into `outDir` (policy.wasm, manifest.json, data.json when there is data). */
export async function buildPolicies(opts: { policiesDir: string; outDir: string; opaPath?: string }): Promise<BuildResult> {
  const policiesDir = resolve(opts.policiesDir);
  const outDir = resolve(opts.outDir);
  const opaPath = opts.opaPath ?? resolveOpa();
  const opa = opaVersion(opaPath);
  const warnings: string[] = [];
  if (opa !== OPA_VERSION) warnings.push(`opa at ${opaPath} is ${opa}, not the pinned ${OPA_VERSION}`);

  const tmp = mkdtempSync(join(tmpdir(), "agate-policy-"));
  try {
    const bundle = join(tmp, "bundle.tar.gz");
    const args = [opaPath, "build", "-t", "wasm", "-e", ENTRYPOINT, ".", "--ignore", "*_test.rego", "-o", bundle];
    const capabilities = await writeCapabilities(opaPath, tmp);
    if (capabilities) args.push("--capabilities", capabilities);
    else warnings.push("the opa-wasm SDK's capabilities.json was not found, so builtins the SDK lacks are not rejected at build time");

    const run = Bun.spawnSync(args, { cwd: policiesDir, stdout: "pipe", stderr: "pipe" });
    if (run.exitCode !== 0) {
      throw new AgateError("POLICY_BUILD_FAILED", `opa build failed for ${policiesDir}; fix the policy and build again.`, {
        exitCode: run.exitCode,
        output: (run.stderr.toString() + run.stdout.toString()).trim(),
      });
    }

    const files = readTarGz(new Uint8Array(await Bun.file(bundle).arrayBuffer()));
    const wasm = files.get("policy.wasm");
    if (!wasm) throw new AgateError("POLICY_BUILD_FAILED", "opa build wrote a bundle without /policy.wasm.", { bundle });

    const manifest: PolicyManifest = {
      entrypoint: ENTRYPOINT,
      opa,
      sources_sha256: await sourcesSha256(policiesDir),
      inputs: await analyseInputs(opaPath, policiesDir, tmp, capabilities, wasm),
    };
    const written = [join(outDir, "policy.wasm"), join(outDir, "manifest.json")];
    await Bun.write(written[0]!, wasm);
    await Bun.write(written[1]!, `${JSON.stringify(manifest, null, 2)}\n`);

    const dataPath = join(outDir, "data.json");
    const data = files.get("data.json");
    if (data && hasData(data)) {
      await Bun.write(dataPath, data);
      written.push(dataPath);
    } else {
      rmSync(dataPath, { force: true });
    }
    return { ...manifest, files: written, warnings };
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

/**
 * What the policy reads of its input: `opa build -t plan` over the same
 * sources, with the same capabilities, analysed (reads.ts); the
 * nondeterministic builtins are those `opa capabilities` marks so.
 */
async function analyseInputs(opaPath: string, policiesDir: string, tmp: string, capabilities: string | null, wasm: Uint8Array): Promise<PolicyInputs> {
  const out = join(tmp, "plan.tar.gz");
  const args = [opaPath, "build", "-t", "plan", "-e", ENTRYPOINT, ".", "--ignore", "*_test.rego", "-o", out];
  if (capabilities) args.push("--capabilities", capabilities);
  const run = Bun.spawnSync(args, { cwd: policiesDir, stdout: "pipe", stderr: "pipe" });
  const plan = run.exitCode === 0 ? readTarGz(new Uint8Array(await Bun.file(out).arrayBuffer())).get("plan.json") : undefined;
  if (!plan) {
    throw new AgateError("POLICY_BUILD_FAILED", `opa build -t plan failed for ${policiesDir}; fix the policy and build again.`, {
      exitCode: run.exitCode,
      output: (run.stderr.toString() + run.stdout.toString()).trim(),
    });
  }
  const caps = Bun.spawnSync([opaPath, "capabilities", "--current"], { stdout: "pipe", stderr: "pipe" });
  if (caps.exitCode !== 0) throw new AgateError("OPA_MISSING", `${opaPath} capabilities --current failed; install opa ${OPA_VERSION} with scripts/opa.sh.`, { stderr: caps.stderr.toString().trim() });
  const builtins = (JSON.parse(caps.stdout.toString()) as { builtins?: { name: string; nondeterministic?: boolean }[] }).builtins ?? [];
  const reads = analysePlan(JSON.parse(new TextDecoder().decode(plan)), new Set(builtins.filter((b) => b.nondeterministic).map((b) => b.name)));
  return {
    wasm_sha256: new Bun.CryptoHasher("sha256").update(wasm).digest("hex"),
    now: readsPath(reads.reads, ["now"]),
    text: readsPath(reads.reads, ["command", "text"]),
    params: readsPath(reads.reads, ["command", "params"]),
    grants: readsPath(reads.reads, ["grants"]),
    ...reads,
  };
}

/** Whether outDir's manifest matches policiesDir's sources; `got` is null when there is no manifest or no policy.wasm. */
export async function checkFresh(opts: {
  policiesDir: string;
  outDir: string;
}): Promise<{ fresh: boolean; want: string; got: string | null }> {
  const want = await sourcesSha256(resolve(opts.policiesDir));
  let got: string | null = null;
  const manifest = Bun.file(join(opts.outDir, "manifest.json"));
  if ((await manifest.exists()) && (await Bun.file(join(opts.outDir, "policy.wasm")).exists())) {
    try {
      const parsed: unknown = await manifest.json();
      const sha = (parsed as Partial<PolicyManifest> | null)?.sources_sha256;
      got = typeof sha === "string" ? sha : null;
    } catch {
      got = null;
    }
  }
  return { fresh: got === want, want, got };
}

/** Runs `opa test <policiesDir>`; returns its exit code and output. */
export function runPolicyTests(policiesDir: string, opaPath = resolveOpa()): { ok: boolean; output: string } {
  const run = Bun.spawnSync([opaPath, "test", resolve(policiesDir), "-v"], { stdout: "pipe", stderr: "pipe" });
  return { ok: run.exitCode === 0, output: (run.stdout.toString() + run.stderr.toString()).trim() };
}

/** See the module comment for what is hashed and how. */
export async function sourcesSha256(policiesDir: string): Promise<string> {
  const paths = listSources(policiesDir).sort();
  const hasher = new Bun.CryptoHasher("sha256");
  const nul = new Uint8Array(1);
  for (const rel of paths) {
    hasher.update(rel);
    hasher.update(nul);
    hasher.update(new Uint8Array(await Bun.file(join(policiesDir, rel)).arrayBuffer()));
    hasher.update(nul);
  }
  return hasher.digest("hex");
}

/** Relative, "/"-separated paths of the files opa build reads. */
function listSources(policiesDir: string): string[] {
  if (!existsSync(policiesDir)) {
    throw new AgateError("POLICY_SOURCES_MISSING", `The policies directory ${policiesDir} does not exist.`, {});
  }
  const out: string[] = [];
  for (const entry of readdirSync(policiesDir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const name = entry.name;
    const isRego = name.endsWith(".rego") && !name.endsWith("_test.rego");
    const isData = /\.(json|ya?ml)$/.test(name);
    if (!isRego && !isData) continue;
    const parent = entry.parentPath ?? policiesDir;
    out.push(relative(policiesDir, join(parent, name)).split(sep).join("/"));
  }
  return out;
}

function hasData(json: Uint8Array): boolean {
  try {
    const data: unknown = JSON.parse(new TextDecoder().decode(json));
    return typeof data === "object" && data !== null && Object.keys(data).length > 0;
  } catch {
    return true; // not ours to judge: keep it, and let loading report it
  }
}

/**
 * The capabilities the opa-wasm SDK supports (its builtins and ABI
 * versions) plus the language features of this opa, so that `opa build`
 * rejects a builtin the SDK cannot run instead of the policy failing on a
 * live command. Returns null when the SDK's capabilities.json is not found.
 */
async function writeCapabilities(opaPath: string, tmp: string): Promise<string | null> {
  let sdkCaps: string;
  try {
    const entry = Bun.resolveSync("@open-policy-agent/opa-wasm", REPO_ROOT);
    sdkCaps = join(dirname(entry), "../capabilities.json");
  } catch {
    return null;
  }
  const file = Bun.file(sdkCaps);
  if (!(await file.exists())) return null;
  const caps = (await file.json()) as Record<string, unknown>;
  const run = Bun.spawnSync([opaPath, "capabilities", "--current"], { stdout: "pipe", stderr: "pipe" });
  if (run.exitCode !== 0) return null;
  const current = JSON.parse(run.stdout.toString()) as Record<string, unknown>;
  caps.features = current.features ?? [];
  caps.future_keywords = current.future_keywords ?? [];
  const out = join(tmp, "capabilities.json");
  await Bun.write(out, JSON.stringify(caps));
  return out;
}

// `bun src/policy/build.ts [policiesDir] [outDir]` rebuilds wasm/ from policies/.
if (import.meta.main) {
  const policiesDir = process.argv[2] ?? join(REPO_ROOT, "policies");
  const outDir = process.argv[3] ?? join(REPO_ROOT, "wasm");
  const result = await buildPolicies({ policiesDir, outDir });
  for (const w of result.warnings) console.error(`warning: ${w}`);
  for (const f of result.files) console.error(`wrote ${relative(process.cwd(), f)}`);
  const { files: _files, warnings: _warnings, ...manifest } = result;
  console.log(JSON.stringify(manifest));
}
