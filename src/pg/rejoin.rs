//! Rejoining as a follower when this node's WAL diverged from the new leader's (I4): an old primary's
//! unacknowledged tail, or a candidate promoted in an attempt that never established.
//!
//! pg_rewind needs this node's postmaster stopped, and the agent lives under that postmaster. So the
//! agent spawns a helper in its own session (setsid) that outlives the server: it stops the server
//! (fast), runs pg_rewind against the new leader, writes the standby configuration, and starts the
//! server again with the same log file, logging each step to `pg_ha_rejoin.log` in the data directory
//! (and the server log). If pg_rewind cannot work, the helper re-clones the node with pg_basebackup when
//! `ha.reclone_on_rewind_failure` is on; otherwise it leaves `pg_ha.rejoin_failed` in the data directory
//! (shown in `ha.status`), starts the server as a standby that streams from nobody, and the agent stops
//! trying until an operator removes the file. Servers run by systemd or Kubernetes: issue 7.

use pgrx::pg_sys;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

const SCRIPT: &str = r#"
set -u
log() { echo "$(date '+%Y-%m-%d %H:%M:%S.%3N %Z') [$$] LOG:  pg_ha: rejoin: $*" | tee -a "$PGDATA/pg_ha_rejoin.log" >> "$SERVER_LOG"; }
if [ "$NEEDS_REWIND" = yes ]; then
  log "stopping the server to rewind it against $SOURCE_NAME"
  "$BINDIR/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >> "$PGDATA/pg_ha_rejoin.log" 2>&1 \
    || "$BINDIR/pg_ctl" -D "$PGDATA" -m immediate -w stop >> "$PGDATA/pg_ha_rejoin.log" 2>&1
else
  # Its WAL ends at or before the new term's start: stop without a shutdown checkpoint (which would
  # be WAL past the fork), then recover as a standby and follow the new timeline. No rewind.
  log "stopping the server (immediate) to restart it as a follower of $SOURCE_NAME"
  "$BINDIR/pg_ctl" -D "$PGDATA" -m immediate -w stop >> "$PGDATA/pg_ha_rejoin.log" 2>&1
fi
if [ "$NEEDS_REWIND" = yes ]; then
  # pg_rewind reads the source's timeline from its control file, which a just-promoted server only
  # updates at its first checkpoint: without one it would say "no rewind required".
  log "asking $SOURCE_NAME for a checkpoint"
  "$BINDIR/psql" -X -q "$SOURCE_CONNINFO" -c CHECKPOINT >> "$PGDATA/pg_ha_rejoin.log" 2>&1
  # pg_rewind copies the source's files wholesale, configuration included, and deletes files the source
  # lacks: keep this node's own configuration files and its pledge file, and put them back afterwards.
  SAVE=$(mktemp -d "$PGDATA/../pg_ha_rejoin_save.XXXXXX" 2>/dev/null || mktemp -d /tmp/pg_ha_rejoin_save.XXXXXX)
  if [ -z "$SAVE" ] || [ ! -d "$SAVE" ]; then
    log "cannot create a directory to keep this node's configuration; not rewinding (server left stopped)"
    exit 1
  fi
  for f in "$PGDATA"/*.conf "$PGDATA/pg_ha.pledge.$NODE_NAME"; do
    [ -f "$f" ] && cp -p "$f" "$SAVE/"
  done
  log "running pg_rewind"
  if [ "$FAILPOINT" = rewind_fails ]; then REWIND_SOURCE="host=127.0.0.1 port=1 connect_timeout=1"; else REWIND_SOURCE="$SOURCE_CONNINFO"; fi
  if ! "$BINDIR/pg_rewind" -D "$PGDATA" --source-server="$REWIND_SOURCE" >> "$PGDATA/pg_ha_rejoin.log" 2>&1; then
    # A stopped-by-crash target must first finish recovery once; pg_rewind says so. Do it and retry.
    log "pg_rewind failed; letting the server finish crash recovery once and retrying"
    "$BINDIR/postgres" --single -D "$PGDATA" postgres < /dev/null >> "$PGDATA/pg_ha_rejoin.log" 2>&1
    if ! "$BINDIR/pg_rewind" -D "$PGDATA" --source-server="$REWIND_SOURCE" >> "$PGDATA/pg_ha_rejoin.log" 2>&1; then
      if [ "$RECLONE" = yes ]; then
        log "pg_rewind failed again; re-cloning from $SOURCE_NAME with pg_basebackup (ha.reclone_on_rewind_failure = on)"
        cp -p "$PGDATA/pg_ha_rejoin.log" "$SAVE/" 2>/dev/null
        find "$PGDATA" -mindepth 1 -delete
        if ! "$BINDIR/pg_basebackup" -D "$PGDATA" -d "$SOURCE_CONNINFO" -X stream -c fast >> "$SAVE/pg_ha_rejoin.log" 2>&1; then
          log "pg_basebackup failed; this node needs an operator (data directory is empty; see $SAVE)"
          exit 1
        fi
        log "re-cloned from $SOURCE_NAME"
        RECLONED=yes
      else
        log "pg_rewind failed again; this node needs a new base backup (see $PGDATA/pg_ha_rejoin.log), or set ha.reclone_on_rewind_failure = on"
        cp -p "$SAVE"/* "$PGDATA/"
        echo "pg_rewind against $SOURCE_NAME failed at $(date '+%F %T %Z'); the node needs a new base backup (pg_basebackup) or ha.reclone_on_rewind_failure = on; remove this file afterwards" > "$PGDATA/pg_ha.rejoin_failed"
        touch "$PGDATA/standby.signal"
        echo "primary_conninfo = ''" >> "$PGDATA/postgresql.auto.conf"
        "$BINDIR/pg_ctl" -D "$PGDATA" -l "$SERVER_LOG" start >> "$PGDATA/pg_ha_rejoin.log" 2>&1
        exit 1
      fi
    fi
  fi
  [ "${RECLONED:-no}" = yes ] || log "pg_rewind done"
  rm -f "$PGDATA"/pg_ha.pledge.*
  cp -p "$SAVE"/* "$PGDATA/"
  rm -rf "$SAVE"
fi
touch "$PGDATA/standby.signal"
# pg_rewind copied the leader's postgresql.auto.conf; this node follows, it does not wait for standbys.
{
  echo "synchronous_standby_names = ''"
  echo "primary_conninfo = '$PRIMARY_CONNINFO_ESCAPED'"
} >> "$PGDATA/postgresql.auto.conf"
log "starting as a follower of $SOURCE_NAME"
"$BINDIR/pg_ctl" -D "$PGDATA" -l "$SERVER_LOG" start >> "$PGDATA/pg_ha_rejoin.log" 2>&1
log "done"
"#;

/// Where this server writes its log: the file behind the postmaster's stderr (pg_ctl -l).
fn server_log(data_dir: &Path) -> String {
    // SAFETY: plain read of a global.
    let pm = unsafe { pg_sys::PostmasterPid };
    std::fs::read_link(format!("/proc/{pm}/fd/2"))
        .ok()
        .filter(|p| p.is_absolute() && !p.starts_with("/dev"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| {
            data_dir
                .join("pg_ha_server.log")
                .to_string_lossy()
                .into_owned()
        })
}

fn bindir() -> String {
    // SAFETY: my_exec_path is set at startup.
    let exec = unsafe {
        std::ffi::CStr::from_ptr((&raw const pg_sys::my_exec_path).cast::<std::ffi::c_char>())
    }
    .to_string_lossy()
    .into_owned();
    Path::new(&exec)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/usr/lib/postgresql/15/bin".into())
}

/// What the helper is to do.
pub struct Plan<'a> {
    pub data_dir: &'a Path,
    pub node_name: &'a str,
    pub source_name: &'a str,
    pub source_conninfo: &'a str,
    pub primary_conninfo: &'a str,
    /// The WAL diverged: pg_rewind (otherwise only restart as a standby).
    pub needs_rewind: bool,
    /// `ha.reclone_on_rewind_failure`.
    pub reclone: bool,
    /// `ha.debug_failpoint` (testing only).
    pub failpoint: &'a str,
}

/// Spawn the helper (detached).
pub fn spawn(p: &Plan<'_>) -> std::io::Result<u32> {
    let Plan {
        data_dir,
        node_name,
        source_name,
        source_conninfo,
        primary_conninfo,
        needs_rewind,
        reclone,
        failpoint,
    } = *p;
    let mut cmd = Command::new("/bin/bash");
    cmd.arg("-c")
        .arg(SCRIPT)
        .env("PGDATA", data_dir)
        .env("BINDIR", bindir())
        .env("SERVER_LOG", server_log(data_dir))
        .env("SOURCE_NAME", source_name)
        .env("NODE_NAME", node_name)
        .env("SOURCE_CONNINFO", source_conninfo)
        .env(
            "PRIMARY_CONNINFO_ESCAPED",
            primary_conninfo.replace('\'', "''"),
        )
        .env("NEEDS_REWIND", if needs_rewind { "yes" } else { "no" })
        .env("RECLONE", if reclone { "yes" } else { "no" })
        .env("FAILPOINT", failpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid in the child before exec: the helper leaves the postmaster's process group and
    // session, so stopping the server does not stop it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    Ok(child.id())
}

/// The marker a failed rewind leaves: its text, if present.
pub fn failed(data_dir: &Path) -> Option<String> {
    std::fs::read_to_string(data_dir.join("pg_ha.rejoin_failed"))
        .ok()
        .map(|s| s.trim().to_string())
}
