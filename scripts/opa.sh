#!/usr/bin/env bash
# Print the path of an `opa` binary at the version agate pins, building it
# with `go install` the first time. Everything but the path goes to stderr,
# so callers can write: OPA="$(bash scripts/opa.sh)".
#
#   1. `opa` on PATH, if it reports the pinned version;
#   2. else $AGATE_TOOLS/bin/opa (default ~/.local/agate-tools), if it does;
#   3. else GOBIN=$AGATE_TOOLS/bin go install github.com/open-policy-agent/opa@$OPA_VERSION.
set -euo pipefail

OPA_VERSION="v1.22.3"
AGATE_TOOLS="${AGATE_TOOLS:-$HOME/.local/agate-tools}"
TOOL_BIN="$AGATE_TOOLS/bin"

# is_pinned PATH: true when PATH runs and reports "Version: 1.22.3".
is_pinned() {
  local out
  out="$("$1" version 2>/dev/null)" || return 1
  grep -qx "Version: ${OPA_VERSION#v}" <<<"$out"
}

if on_path="$(command -v opa 2>/dev/null)" && is_pinned "$on_path"; then
  echo "$on_path"
  exit 0
fi

if [[ -x "$TOOL_BIN/opa" ]] && is_pinned "$TOOL_BIN/opa"; then
  echo "$TOOL_BIN/opa"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "opa.sh: opa $OPA_VERSION was not found (neither on PATH nor at $TOOL_BIN/opa)," >&2
  echo "opa.sh: and 'go' is not installed to build it. Install Go (https://go.dev/dl/)" >&2
  echo "opa.sh: or put opa $OPA_VERSION on PATH (https://github.com/open-policy-agent/opa/releases/tag/$OPA_VERSION)." >&2
  exit 127
fi

echo "opa.sh: building opa $OPA_VERSION into $TOOL_BIN (first run only; this takes a few minutes)" >&2
mkdir -p "$TOOL_BIN"
# -v names each package as it compiles: that is the progress.
if ! GOBIN="$TOOL_BIN" go install -v "github.com/open-policy-agent/opa@$OPA_VERSION" >&2; then
  echo "opa.sh: go install github.com/open-policy-agent/opa@$OPA_VERSION failed (see above)" >&2
  exit 1
fi

if ! is_pinned "$TOOL_BIN/opa"; then
  echo "opa.sh: go install finished but $TOOL_BIN/opa does not report version $OPA_VERSION" >&2
  exit 1
fi
echo "opa.sh: built $TOOL_BIN/opa" >&2
echo "$TOOL_BIN/opa"
