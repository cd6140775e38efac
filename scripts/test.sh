#!/usr/bin/env bash
# `bun run test`: every test agate has, in the order that fails fastest.
#
#   1. scripts/setup.sh          install what is missing (Bun, node_modules, opa, PostgreSQL)
#   2. agate policy check        wasm/ must be built from policies/ as they are now
#   3. opa test policies/        the Rego unit tests (summary only, unless one fails)
#   4. go build test/interop     the Go reference checker the transparency-log tests use
#   5. bun test                  every suite in test/ (unit, integration, the compiled binary)
#
# Exits non-zero at the first failing step. Extra arguments go to `bun test`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { echo "test: $*" >&2; }
started=$SECONDS

step "setup"
bash scripts/setup.sh

step "policy check (wasm/ against policies/)"
if ! bun src/main.ts policy check; then
  echo "test: wasm/ is stale; rebuild it with 'bun src/main.ts policy build' and commit wasm/" >&2
  exit 1
fi

step "opa test policies/"
opa="$(bash scripts/opa.sh)"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
if "$opa" test policies/ -v >"$out" 2>&1; then
  # The verbose report ends with a summary line ("PASS: n/n"); show only that.
  grep -E '^(PASS|FAIL|ERROR|SKIPPED)' "$out" | tail -n 3 >&2 || tail -n 3 "$out" >&2
else
  code=$?
  cat "$out" >&2
  echo "test: opa test failed (exit $code)" >&2
  exit "$code"
fi

step "build test/interop (checks checkpoints and proofs with Go's sumdb/note and transparency-dev/merkle)"
export AGATE_INTEROP="${AGATE_TOOLS:-$HOME/.local/agate-tools}/bin/agate-interop"
go build -C test/interop -o "$AGATE_INTEROP" .

step "bun test"
# bun test prints its report (and its summary, last) on stderr. Integration
# suites start real servers, so a test gets a minute, not bun's default 5 s.
report="$(mktemp)"
trap 'rm -f "$out" "$report"' EXIT
code=0
bun test --timeout 60000 "$@" 2> >(tee "$report" >&2) || code=$?
wait
passed=$(grep -Eo '^ *[0-9]+ pass$' "$report" | grep -Eo '[0-9]+' || echo 0)
failed=$(grep -Eo '^ *[0-9]+ fail$' "$report" | grep -Eo '[0-9]+' || echo 0)
echo "test: finished in $((SECONDS - started)) s, bun test exit $code" >&2
echo "bun test: ${passed} passed, ${failed} failed"
exit "$code"
