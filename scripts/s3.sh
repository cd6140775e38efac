#!/usr/bin/env bash
# Print the path of a `versitygw` binary (Versity S3 Gateway, Apache-2.0) at
# the version agate pins, building it from its Go module the first time (see
# go-tool.sh). It is the S3-compatible server the tests and benchmarks start
# on loopback (test/helpers/s3.ts). Callers write: S3="$(bash scripts/s3.sh)".
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/go-tool.sh"

VERSITYGW_VERSION="v1.8.0"
# `go install` leaves the version at "git" unless -ldflags sets main.Version,
# as upstream's Makefile does. CGO_ENABLED=0: a static binary and no C
# compiler needed (cgo only adds optional GPU/RDMA backends).
CGO_ENABLED=0 go_tool versitygw github.com/versity/versitygw/cmd/versitygw "$VERSITYGW_VERSION" --version \
  "^Version *: *${VERSITYGW_VERSION}\$" -ldflags "-X=main.Version=$VERSITYGW_VERSION"
