#!/usr/bin/env bash
# Masking throughput and memory: one SELECT streaming 1,000,000 rows (about
# 240 MB as DataRow messages, e-mails and card numbers in some columns) from
# one throwaway PostgreSQL direct, through agate with masking off, and through
# agate with column rules plus every detector on; prints MB/s, the ratios
# against the targets (on >= 0.5x direct, >= 0.8x off) and the masking-on
# gateway's peak RSS at N and N/10 rows.
#
#   bash scripts/bench/mask.sh [--rows N] [--runs N] [--fetch-count N] [--agate-flags="..."] [--keep]
#
# See `bun scripts/bench/mask-stack.ts --help`. Needs: bun, psql, pg_isready
# and the PostgreSQL server binaries. Everything it starts is stopped on exit,
# error, Ctrl-C or SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in bun psql pg_isready; do
  command -v "$tool" >/dev/null || { echo "mask.sh: $tool not found on PATH" >&2; exit 2; }
done
exec bun scripts/bench/mask-stack.ts "$@"
