#!/usr/bin/env bash
# The test command (README): everything CI checks, in order, from a fresh Debian 12 machine.
#   fmt, clippy, the consensus core's unit/property/model-checking tests, pgrx tests inside Postgres,
#   then the multi-node integration tests against real Postgres processes.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { echo; echo "=== $* ($(date +%T))"; }

step "dependencies"
bash packaging/install-deps.sh

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "consensus core: unit, property and model-checking tests"
cargo test -p pg_ha_core

step "pgrx tests (one Postgres, run as the postgres account)"
PGRX_PGDATA=$(mktemp -d /tmp/pg_ha-pgrx-test.XXXXXX)
chown postgres "$PGRX_PGDATA"
trap 'rm -rf "$PGRX_PGDATA"' EXIT
cargo pgrx test pg15 --runas postgres --pgdata "$PGRX_PGDATA"

step "install pg_ha into /usr (the build the integration tests run)"
cargo pgrx install --pg-config /usr/bin/pg_config

step "integration tests on real multi-node clusters"
cargo test -p pg_test -- --test-threads=2

step "all tests passed"
