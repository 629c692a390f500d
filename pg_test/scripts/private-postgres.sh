#!/usr/bin/env bash
# A private copy of the system PostgreSQL 15 with this tree's pg_ha installed into it, so that several
# worktrees can run the integration tests at once without installing into /usr.
#
#   bash pg_test/scripts/private-postgres.sh DIR      # copy (once) and install this tree's pg_ha (debug build)
#   PG_TEST_BINDIR=DIR/usr/lib/postgresql/15/bin cargo test -p pg_test --test failover -- --nocapture
#
# Postgres finds its lib and share directories relative to its binaries, so the copy is self-contained.
# The copy must be readable by the postgres account (the tests run the server as postgres).
set -euo pipefail
dir=${1:?usage: private-postgres.sh DIR}
cd "$(dirname "$0")/../.."
if [ ! -x "$dir/usr/lib/postgresql/15/bin/postgres" ]; then
  mkdir -p "$dir/usr/lib/postgresql" "$dir/usr/share/postgresql"
  cp -a /usr/lib/postgresql/15 "$dir/usr/lib/postgresql/"
  cp -a /usr/share/postgresql/15 "$dir/usr/share/postgresql/"
fi
chmod -R a+rX "$dir"
cargo pgrx install --pg-config "$dir/usr/lib/postgresql/15/bin/pg_config" "${@:2}"
echo "PG_TEST_BINDIR=$dir/usr/lib/postgresql/15/bin"
