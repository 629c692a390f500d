#!/usr/bin/env bash
# The demo command (README): installs what is missing, builds and installs pg_ha, and runs a local
# 3-node cluster under a temp dir (see pg_test/src/bin/demo.rs for the story it tells).
set -euo pipefail
cd "$(dirname "$0")/.."
bash packaging/install-deps.sh
cargo pgrx install --release --pg-config /usr/bin/pg_config
cargo run -q -p pg_test --bin demo
