#!/usr/bin/env bash
# Print the path of a `versitygw` binary (Versity S3 Gateway, Apache-2.0) at
# the version agate pins, building it with `go install` the first time. It is
# the S3-compatible server the tests and benchmarks start on loopback (see
# test/helpers/s3.ts). Everything but the path goes to stderr, so callers can
# write: S3="$(bash scripts/s3.sh)".
#
#   1. `versitygw` on PATH, if it reports the pinned version;
#   2. else $AGATE_TOOLS/bin/versitygw (default ~/.local/agate-tools), if it does;
#   3. else GOBIN=$AGATE_TOOLS/bin go install github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION.
set -euo pipefail

VERSITYGW_VERSION="v1.8.0"
AGATE_TOOLS="${AGATE_TOOLS:-$HOME/.local/agate-tools}"
TOOL_BIN="$AGATE_TOOLS/bin"
PKG="github.com/versity/versitygw/cmd/versitygw"

# is_pinned PATH: true when PATH runs and reports "Version  : v1.8.0".
# (`go install` leaves the version at "git" unless -ldflags sets main.Version,
# which is what upstream's Makefile does and what we do below.)
is_pinned() {
  local out
  out="$("$1" --version 2>/dev/null)" || return 1
  grep -qE "^Version *: *${VERSITYGW_VERSION}\$" <<<"$out"
}

if on_path="$(command -v versitygw 2>/dev/null)" && is_pinned "$on_path"; then
  echo "$on_path"
  exit 0
fi

if [[ -x "$TOOL_BIN/versitygw" ]] && is_pinned "$TOOL_BIN/versitygw"; then
  echo "$TOOL_BIN/versitygw"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "s3.sh: versitygw $VERSITYGW_VERSION was not found (neither on PATH nor at $TOOL_BIN/versitygw)," >&2
  echo "s3.sh: and 'go' is not installed to build it. Install Go (https://go.dev/dl/)" >&2
  echo "s3.sh: or put versitygw $VERSITYGW_VERSION on PATH (https://github.com/versity/versitygw/releases/tag/$VERSITYGW_VERSION)." >&2
  exit 127
fi

echo "s3.sh: building versitygw $VERSITYGW_VERSION into $TOOL_BIN (first run only; about a minute or two)" >&2
mkdir -p "$TOOL_BIN"
# CGO_ENABLED=0: a static binary, and no C compiler needed (cgo only adds the
# optional GPU/RDMA backends). -v names each package as it compiles: that is the progress.
if ! CGO_ENABLED=0 GOBIN="$TOOL_BIN" go install -v -ldflags "-X=main.Version=$VERSITYGW_VERSION" "$PKG@$VERSITYGW_VERSION" >&2; then
  echo "s3.sh: go install $PKG@$VERSITYGW_VERSION failed (see above)" >&2
  exit 1
fi

if ! is_pinned "$TOOL_BIN/versitygw"; then
  echo "s3.sh: go install finished but $TOOL_BIN/versitygw does not report version $VERSITYGW_VERSION" >&2
  exit 1
fi
echo "s3.sh: built $TOOL_BIN/versitygw" >&2
echo "$TOOL_BIN/versitygw"
