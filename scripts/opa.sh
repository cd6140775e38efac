#!/usr/bin/env bash
# Print the path of an `opa` binary at the version agate pins, building it
# from its Go module the first time (see go-tool.sh). Callers write:
# OPA="$(bash scripts/opa.sh)".
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/go-tool.sh"

OPA_VERSION="v1.22.3"
go_tool opa github.com/open-policy-agent/opa "$OPA_VERSION" version "^Version: ${OPA_VERSION#v}\$"
