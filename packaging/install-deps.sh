#!/usr/bin/env bash
# Installs everything pg_ha needs to build and test on Debian 12, skipping what is already there.
# Idempotent: safe to run on every CI start.
set -euo pipefail

PGRX_VERSION=0.18.1
PG_CONFIG=/usr/bin/pg_config

log() { echo "install-deps: $*"; }

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

# Debian packages. postgresql-15 is the server the tests run; server-dev for pgrx's bindgen;
# clang/libclang for bindgen; protobuf-compiler for tonic/prost code generation; sudo because
# `cargo pgrx test --runas postgres` calls it; iproute2/nftables for the partition tests;
# dpkg-dev (dpkg-shlibdeps, and binutils for strip) for packaging/build-deb.sh.
PKGS=(postgresql-15 postgresql-client-15 postgresql-server-dev-15 libclang-dev clang
      protobuf-compiler sudo pkg-config libssl-dev iproute2 nftables procps dpkg-dev)
missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  log "Debian packages present"
fi

# Debian's postgresql-common creates a default cluster (15/main) on install; pg_ha's tests
# start their own servers, so make sure the packaged one is not holding port 5432 or memory.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q online; then
  log "stopping Debian's default cluster(s)"
  pg_lsclusters -h | awk '$4=="online"{print $1, $2}' | while read -r v c; do
    $SUDO pg_ctlcluster "$v" "$c" stop || true
  done
fi

# cargo-pgrx, exactly the pgrx version the crate uses.
if command -v cargo-pgrx >/dev/null && cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION\$"; then
  log "cargo-pgrx $PGRX_VERSION present"
else
  log "cargo install cargo-pgrx $PGRX_VERSION"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

# pgrx's config pointing at the system PostgreSQL 15 (no source download).
if [ -f "${PGRX_HOME:-$HOME/.pgrx}/config.toml" ] && grep -q "pg15 *= *\"$PG_CONFIG\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
  log "cargo pgrx init already done for pg15"
else
  log "cargo pgrx init --pg15 $PG_CONFIG"
  cargo pgrx init --pg15 "$PG_CONFIG"
fi

# The tests install the extension into the system PostgreSQL tree (cargo pgrx test, then the .deb
# from packaging/build-deb.sh with dpkg -i), so they run as root.
log "done"
