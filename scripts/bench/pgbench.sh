#!/usr/bin/env bash
# pgbench throughput through three paths to one throwaway PostgreSQL: direct,
# pgbouncer (session pool) and agate (default policy, strict durable audit log).
#
#   bash scripts/bench/pgbench.sh [duration_s=20] [options]
#
# duration_s is per pgbench run (4 runs per path: select-only and TPC-B-like,
# each with -M simple and -M prepared). Options (see
# `bun scripts/bench/pgbench-stack.ts --help`): --only, --paths, --warmup,
# --audit, --agate-flags, --hold, --keep. Needs: bun, pgbench, psql,
# pg_isready, the PostgreSQL server binaries and pgbouncer. Everything it
# starts is stopped on exit, error, Ctrl-C or SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in bun pgbench psql pg_isready pgbouncer; do
  command -v "$tool" >/dev/null || { echo "pgbench.sh: $tool not found on PATH" >&2; exit 2; }
done
exec bun scripts/bench/pgbench-stack.ts "$@"
