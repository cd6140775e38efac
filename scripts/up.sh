#!/usr/bin/env bash
# `bun run up`: install what is missing (scripts/setup.sh), then run agate in
# front of a throwaway PostgreSQL on 127.0.0.1:6432 until Ctrl-C
# (scripts/up.ts prints how to connect).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
# exec: Ctrl-C and SIGTERM reach bun directly, which closes the gateway and stops the database.
exec bun scripts/up.ts "$@"
