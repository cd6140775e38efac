/**
 * `import path from "../wasm/policy.wasm" with { type: "file" }`: Bun gives
 * the path of the file (inside the executable once compiled), which
 * Bun.file(path) reads.
 */
declare module "*.wasm" {
  const path: string;
  export default path;
}
