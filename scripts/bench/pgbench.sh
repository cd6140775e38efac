#!/usr/bin/env bash
# pgbench throughput through three paths to one throwaway PostgreSQL: direct,
# pgbouncer (session pool) and agate (default policy, strict durable audit log).
#
#   bash scripts/bench/pgbench.sh [duration_s=20] [options]
#
# duration_s is per pgbench run (4 runs per path: select-only and TPC-B-like,
# each with -M simple and -M prepared). Options (see
# `bun scripts/bench/pgbench-stack.ts --help`): --only, --paths, --warmup,
# --audit, --agate-flags, --agate-workers, --clients, --hold, --keep. Needs: bun, pgbench, psql,
# pg_isready, the PostgreSQL server binaries and pgbouncer (installed with
# apt-get when missing and run as root). Everything it
# starts is stopped on exit, error, Ctrl-C or SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/../.."
# pgbouncer is the baseline every figure is compared with: install it when it is missing and we can.
if ! command -v pgbouncer >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "pgbench.sh: pgbouncer not found; installing it with apt-get" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y pgbouncer >&2 ||
      { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y pgbouncer >&2; } ||
      { echo "pgbench.sh: apt-get could not install pgbouncer; install it yourself and run again" >&2; exit 2; }
  else
    echo "pgbench.sh: pgbouncer not found on PATH; install it (e.g. sudo apt-get install pgbouncer) and run again" >&2
    exit 2
  fi
fi
for tool in bun pgbench psql pg_isready pgbouncer; do
  command -v "$tool" >/dev/null || { echo "pgbench.sh: $tool not found on PATH" >&2; exit 2; }
done
exec bun scripts/bench/pgbench-stack.ts "$@"
