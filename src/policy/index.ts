/**
 * policy/: Rego compiled to WebAssembly, loaded once, asked per session and
 * per command. See DESIGN.md, "Policy contract".
 */
export { createPolicyEngine, loadPolicy } from "./engine.ts";
export type { LoadedPolicy, LogLevel, PolicyEngine, PolicyEngineOptions, PolicyLog } from "./engine.ts";
export { deny, ENTRYPOINT, MALFORMED, normalizeDecision, parseDecision, POLICY_ERROR } from "./decision.ts";
export { buildPolicies, checkFresh, OPA_VERSION, resolveOpa, runPolicyTests, sourcesSha256 } from "./build.ts";
export type { BuildResult, PolicyInputs, PolicyManifest } from "./build.ts";
