#!/usr/bin/env bash
# Builds the Debian package postgresql-15-pg-ha (named like Debian's own extension packages) from
# `cargo pgrx package` (a release build), with Debian's PostgreSQL layout:
#   /usr/lib/postgresql/15/lib/pg_ha.so
#   /usr/share/postgresql/15/extension/pg_ha.control, pg_ha--<version>.sql
#   /lib/systemd/system/pg-ha-rejoin@.service          (inert unless ha.systemd_unit is set; README)
#   /usr/share/doc/postgresql-15-pg-ha/examples/        (the postgresql@ drop-in and the sudoers lines)
# It installs nothing: the .deb lands in $OUT_DIR (default: ${CARGO_TARGET_DIR:-target}/deb), and the
# last line of output is its path. Needs dpkg-dev (dpkg-shlibdeps) and binutils (strip).
#   bash packaging/build-deb.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

PG_CONFIG=${PG_CONFIG:-/usr/bin/pg_config}
PGMAJOR=15
PKG=postgresql-$PGMAJOR-pg-ha
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
OUT_DIR=${1:-$TARGET/deb}
VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -1)
MAINTAINER=${DEB_MAINTAINER:-pg_ha maintainers <pg-ha@example.org>}
ARCH=$(dpkg --print-architecture)

log() { echo "build-deb: $*" >&2; }

work=$(mktemp -d /tmp/pg_ha-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
stage=$work/pgrx
root=$work/$PKG

log "cargo pgrx package (release) against $PG_CONFIG"
cargo pgrx package --pg-config "$PG_CONFIG" --out-dir "$stage" >&2

# cargo pgrx package mirrors pg_config's paths; with Debian's pg_config those are Debian's.
libdir=$("$PG_CONFIG" --pkglibdir)
extdir=$("$PG_CONFIG" --sharedir)/extension
[ "$libdir" = /usr/lib/postgresql/$PGMAJOR/lib ] || { log "unexpected pkglibdir $libdir (not Debian's)"; exit 1; }
install -D -m 644 "$stage$libdir/pg_ha.so" "$root$libdir/pg_ha.so"
strip --strip-debug "$root$libdir/pg_ha.so"
install -d "$root$extdir"
install -m 644 "$stage$extdir"/pg_ha.control "$stage$extdir"/pg_ha--*.sql "$root$extdir/"

# systemd: the rejoin helper's template unit (src/pg/rejoin.rs), and examples the operator installs.
install -D -m 644 packaging/systemd/pg-ha-rejoin@.service "$root/lib/systemd/system/pg-ha-rejoin@.service"
doc=$root/usr/share/doc/$PKG
install -D -m 644 packaging/systemd/postgresql@.service.d/pg_ha.conf "$doc/examples/postgresql@.service.d/pg_ha.conf"
install -D -m 644 packaging/systemd/pg_ha.sudoers "$doc/examples/pg_ha.sudoers"
cat > "$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: pg_ha

Files: *
License: PostgreSQL
EOF

# Shared-library dependencies (libc6, libgcc-s1) as Debian computes them.
mkdir -p "$work/shlibs/debian"
printf 'Source: pg-ha\n\nPackage: %s\nArchitecture: any\n' "$PKG" > "$work/shlibs/debian/control"
shlibs=$(cd "$work/shlibs" && dpkg-shlibdeps -O -e"$root$libdir/pg_ha.so" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')

mkdir -p "$root/DEBIAN"
cat > "$root/DEBIAN/control" <<EOF
Package: $PKG
Version: $VERSION
Architecture: $ARCH
Maintainer: $MAINTAINER
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: postgresql-$PGMAJOR, ${shlibs:-libc6}
Section: database
Priority: optional
Description: PostgreSQL high availability as a consensus problem (PostgreSQL $PGMAJOR)
 pg_ha is a PostgreSQL $PGMAJOR extension: every node loads it through
 shared_preload_libraries and runs an agent that elects the leader, gates
 commits on the cluster's durability policy and rejoins diverged nodes with
 pg_rewind. No etcd or monitor node is needed.
EOF

mkdir -p "$OUT_DIR"
deb=$OUT_DIR/${PKG}_${VERSION}_$ARCH.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >&2
log "built $deb"
echo "$deb"
