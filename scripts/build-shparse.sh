#!/usr/bin/env bash
# Rebuild src/protocols/ssh/shparse/shparse.wasm (mvdan/sh's parser as WebAssembly, GOOS=js)
# and copy the matching wasm_exec.js from the Go toolchain that built it.
# The .wasm is committed (the executable embeds it); rebuild it when main.go or go.mod change.
set -euo pipefail
cd "$(dirname "$0")/../src/protocols/ssh/shparse"
GOOS=js GOARCH=wasm go build -trimpath -ldflags="-s -w" -o shparse.wasm .
root="$(go env GOROOT)"
cp "$root/lib/wasm/wasm_exec.js" wasm_exec.js 2>/dev/null || cp "$root/misc/wasm/wasm_exec.js" wasm_exec.js
echo "built $(pwd)/shparse.wasm with $(go version)"
