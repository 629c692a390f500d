#!/usr/bin/env bash
# The test command (README): everything CI checks, in order, from a fresh Debian 12 machine.
#   fmt, clippy, the consensus core's unit/property/model-checking tests, pgrx tests inside Postgres,
#   then the Debian package (built, installed with dpkg -i), and the multi-node integration tests
#   against real Postgres processes running the packaged pg_ha.
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

step "build the Debian package and install it (the integration tests run the packaged library)"
DEB=$(bash packaging/build-deb.sh | tail -1)
dpkg-deb -c "$DEB"
# dpkg -i replaces the pg_test build that `cargo pgrx test` left in /usr (same paths, files not owned
# by any package); apt-get would also pull in missing dependencies, which install-deps.sh already has.
dpkg -i "$DEB"
dpkg -s postgresql-15-pg-ha | grep -E '^(Status|Version):'

step "integration tests on real multi-node clusters"
cargo test -p pg_test -- --test-threads=2

step "all tests passed"
