#!/usr/bin/env bash
# Print the path of a `lazyfs` binary (LazyFS, github.com/dsrhaslab/lazyfs, BSD-3-Clause): a FUSE file system
# that keeps written data in its own cache until fsync and drops whatever was not synced on command
# (`lazyfs::clear-cache`), which is what a power loss does to the page cache. test/power-loss.test.ts uses it.
#
#   bash scripts/lazyfs.sh            print the binary's path, building it the first time
#   bash scripts/lazyfs.sh --installed print it only if already built (exit 1 otherwise; never builds)
#
# AGATE_LAZYFS=/path/to/lazyfs takes a binary built elsewhere. Building needs git access to GitHub, g++,
# cmake and Debian's libfuse3-dev, libtoml11-dev and libspdlog-dev (installed with apt-get when missing):
# LazyFS's CMake files fetch toml11 and spdlog from GitHub at configure time, so they are pointed at the
# Debian packages of the same versions (toml11 3.7.1, spdlog 1.10.0) instead.
set -euo pipefail

LAZYFS_COMMIT="a47a5ba"   # dsrhaslab/lazyfs main, "Merge pull request #9"
TOOLS="${AGATE_TOOLS:-$HOME/.local/agate-tools}"
BIN="$TOOLS/bin/lazyfs"

if [[ -n "${AGATE_LAZYFS:-}" ]]; then
  [[ -x "$AGATE_LAZYFS" ]] || { echo "lazyfs.sh: AGATE_LAZYFS=$AGATE_LAZYFS is not an executable file" >&2; exit 1; }
  echo "$AGATE_LAZYFS"
  exit 0
fi
if [[ -x "$BIN" ]]; then
  echo "$BIN"
  exit 0
fi
[[ "${1:-}" == "--installed" ]] && exit 1

missing=()
for p in g++ cmake libfuse3-dev fuse3 libtoml11-dev libspdlog-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "lazyfs.sh: installing ${missing[*]} with apt-get" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
fi

src="$(mktemp -d)"
trap 'rm -rf "$src"' EXIT
git clone -q https://github.com/dsrhaslab/lazyfs "$src" >&2
git -C "$src" checkout -q "$LAZYFS_COMMIT"
# The Debian packages instead of FetchContent from GitHub.
python3 - "$src" <<'EOF'
import re, sys
root = sys.argv[1]
p = f"{root}/libs/libpcache/CMakeLists.txt"
s = open(p).read()
s = re.sub(r"include\(FetchContent\).*?FetchContent_MakeAvailable\(spdlog\)\n", "find_package(toml11 REQUIRED)\nfind_package(spdlog REQUIRED)\n", s, flags=re.S)
s = s.replace("set_target_properties(spdlog PROPERTIES POSITION_INDEPENDENT_CODE ON)", "")
open(p, "w").write(s)
p = f"{root}/lazyfs/CMakeLists.txt"
s = open(p).read()
s = s.replace("target_link_libraries(${CMAKE_PROJECT_NAME} fuse3 Threads::Threads libpcache.so)",
              "find_package(spdlog REQUIRED)\nfind_package(toml11 REQUIRED)\ntarget_link_libraries(${CMAKE_PROJECT_NAME} fuse3 Threads::Threads libpcache.so spdlog::spdlog toml11::toml11)")
open(p, "w").write(s)
EOF
(cd "$src/libs/libpcache" && ./build.sh) >&2
(cd "$src/lazyfs" && ./build.sh) >&2
mkdir -p "$TOOLS/bin" "$TOOLS/lib"
cp "$src"/libs/libpcache/build/libpcache.so* "$TOOLS/lib/"
cp "$src/lazyfs/build/lazyfs" "$BIN.tmp"
# The binary finds libpcache beside it, not in the build tree that is removed.
command -v patchelf >/dev/null 2>&1 && patchelf --set-rpath "$TOOLS/lib" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
echo "$BIN"
