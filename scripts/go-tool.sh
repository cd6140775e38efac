# Sourced by opa.sh and s3.sh: find or build a Go tool at a pinned version.
#
#   go_tool NAME PACKAGE VERSION VERSION_FLAG VERSION_LINE_REGEX [go install flags...]
#
# Prints the path of NAME that reports VERSION (VERSION_FLAG's output has a
# line matching VERSION_LINE_REGEX), trying in turn:
#   1. NAME on PATH;
#   2. $AGATE_TOOLS/bin/NAME (default ~/.local/agate-tools);
#   3. GOBIN=$AGATE_TOOLS/bin go install [flags] PACKAGE@VERSION.
# Everything but the path goes to stderr, so callers can write
# TOOL="$(bash scripts/opa.sh)". Exits 127 without Go, 1 if the build fails.

go_tool() {
  local name="$1" pkg="$2" version="$3" flag="$4" line="$5"
  shift 5
  local bin="${AGATE_TOOLS:-$HOME/.local/agate-tools}/bin"
  is_pinned() {
    local out
    out="$("$1" "$flag" 2>/dev/null)" || return 1
    grep -qE "$line" <<<"$out"
  }
  local on_path
  if on_path="$(command -v "$name" 2>/dev/null)" && is_pinned "$on_path"; then
    echo "$on_path"
    return 0
  fi
  if [[ -x "$bin/$name" ]] && is_pinned "$bin/$name"; then
    echo "$bin/$name"
    return 0
  fi
  if ! command -v go >/dev/null 2>&1; then
    echo "$name: $version was not found (neither on PATH nor at $bin/$name), and 'go' is not" >&2
    echo "$name: installed to build it. Install Go (https://go.dev/dl/) or put $name $version on PATH." >&2
    exit 127
  fi
  echo "$name: building $pkg@$version into $bin (first run only; this takes a minute or more)" >&2
  mkdir -p "$bin"
  # -v names each package as it compiles: that is the progress.
  if ! GOBIN="$bin" go install -v "$@" "$pkg@$version" >&2; then
    echo "$name: go install $pkg@$version failed (see above)" >&2
    exit 1
  fi
  if ! is_pinned "$bin/$name"; then
    echo "$name: go install finished but $bin/$name does not report version $version" >&2
    exit 1
  fi
  echo "$name: built $bin/$name" >&2
  echo "$bin/$name"
}
