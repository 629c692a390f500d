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
//! trying until an operator removes the file.
//!
//! How the helper stops and starts the server depends on `ha.systemd_unit`:
//! - empty (bare `pg_ctl`): the agent runs the helper itself, in its own session, with `pg_ctl`;
//! - a unit such as `postgresql@15-main`: a helper started by the postmaster would sit in the unit's
//!   cgroup and die when the unit stops, and a server started by `pg_ctl` would not be supervised. So
//!   the agent writes the helper as a script to `/run/postgresql/pg_ha_rejoin.<instance>.sh` and starts
//!   the shipped template unit `pg-ha-rejoin@<instance>.service` (packaging/systemd), which runs it as
//!   `postgres` in its own cgroup; the helper stops and starts the server with `systemctl`. The three
//!   `systemctl` calls (start the helper's unit, stop and start the server's) go through `sudo -n`,
//!   allowed by exactly three sudoers lines (packaging/systemd/pg_ha.sudoers). `systemd-run` is not used: letting the `postgres` account create
//!   arbitrary transient units would amount to root.

use pgrx::pg_sys;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Stop and start the server with `pg_ctl` (bare servers; the default).
const PG_CTL: &str = r#"
server_stop_fast() { "$BINDIR/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop || "$BINDIR/pg_ctl" -D "$PGDATA" -m immediate -w stop; }
server_stop_immediate() { "$BINDIR/pg_ctl" -D "$PGDATA" -m immediate -w stop; }
server_start() { "$BINDIR/pg_ctl" -D "$PGDATA" -l "$SERVER_LOG" start; }
"#;

/// Stop and start the server through its systemd unit (`ha.systemd_unit`).
const SYSTEMD: &str = r#"
# The unit's ExecStop is a fast shutdown (Debian: pg_ctlcluster -m fast stop).
server_stop_fast() { $SYSTEMCTL stop "$UNIT"; }
# No shutdown checkpoint (it would be WAL past the fork): stop the postmaster directly, then tell
# systemd, which marks the unit stopped and cancels a Restart=on-failure it may have scheduled.
server_stop_immediate() { "$BINDIR/pg_ctl" -D "$PGDATA" -m immediate -w stop; $SYSTEMCTL stop "$UNIT"; }
server_start() { $SYSTEMCTL start "$UNIT"; }
"#;

/// The helper's steps; it calls the `server_*` functions of [`PG_CTL`] or [`SYSTEMD`].
const SCRIPT: &str = r#"
set -u
log() { echo "$(date '+%Y-%m-%d %H:%M:%S.%3N %Z') [$$] LOG:  pg_ha: rejoin: $*" | tee -a "$PGDATA/pg_ha_rejoin.log" >> "$SERVER_LOG"; }
# The source went away before anything was changed here (it was killed or cut off after the agent
# chose it): nothing to repair. Start again as a standby without upstream; the agent retries against
# whoever leads by then. (A rewind that fails after it began is different: see below.)
source_unreachable() {
  log "$SOURCE_NAME is unreachable; nothing was rewound; restarting as a standby without upstream (the agent will retry)"
  [ -n "${SAVE:-}" ] && [ -d "$SAVE" ] && cp -p "$SAVE"/* "$PGDATA/" 2>/dev/null && rm -rf "$SAVE"
  touch "$PGDATA/standby.signal"
  echo "primary_conninfo = ''" >> "$PGDATA/postgresql.auto.conf"
  server_start >> "$PGDATA/pg_ha_rejoin.log" 2>&1
  exit 0
}
# pg_rewind, its output kept for the log; fails like pg_rewind. Its first step is connecting to the
# source: when that is what failed, nothing was changed yet.
rewind() {
  "$BINDIR/pg_rewind" -D "$PGDATA" --source-server="$SOURCE_CONNINFO" $REWIND_FAILPOINT_ARG > "$SAVE/pg_rewind.out" 2>&1
  local rc=$?
  cat "$SAVE/pg_rewind.out" >> "$PGDATA/pg_ha_rejoin.log"
  if [ $rc -ne 0 ] && [ "${REWIND_BEGAN:-no}" != yes ] \
     && grep -q "^pg_rewind: error: connection to server" "$SAVE/pg_rewind.out"; then
    rm -f "$SAVE/pg_rewind.out"
    source_unreachable
  fi
  rm -f "$SAVE/pg_rewind.out"
  # This attempt got past connecting: from here on the data directory may have been changed, and a
  # later attempt's connection failure no longer means "nothing was rewound" (found by the campaign:
  # the source killed in the middle of a rewind).
  REWIND_BEGAN=yes
  return $rc
}
if [ "$NEEDS_REWIND" = yes ]; then
  log "stopping the server to rewind it against $SOURCE_NAME"
  server_stop_fast >> "$PGDATA/pg_ha_rejoin.log" 2>&1
else
  # Its WAL ends at or before the new term's start: stop without a shutdown checkpoint (which would
  # be WAL past the fork), then recover as a standby and follow the new timeline. No rewind.
  log "stopping the server (immediate) to restart it as a follower of $SOURCE_NAME"
  server_stop_immediate >> "$PGDATA/pg_ha_rejoin.log" 2>&1
fi
if [ "$NEEDS_REWIND" = yes ]; then
  # pg_rewind reads the source's timeline from its control file, which a just-promoted server only
  # updates at its first checkpoint: without one it would say "no rewind required".
  log "asking $SOURCE_NAME for a checkpoint"
  if ! "$BINDIR/psql" -X -q "$SOURCE_CONNINFO" -c CHECKPOINT >> "$PGDATA/pg_ha_rejoin.log" 2>&1; then
    source_unreachable
  fi
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
  # Test-only: an option pg_rewind refuses, so it fails without connecting (not a transient failure).
  if [ "$FAILPOINT" = rewind_fails ]; then REWIND_FAILPOINT_ARG=--pg-ha-failpoint-rewind-fails; else REWIND_FAILPOINT_ARG=; fi
  if ! rewind; then
    # A stopped-by-crash target must first finish recovery once; pg_rewind says so. Do it and retry.
    log "pg_rewind failed; letting the server finish crash recovery once and retrying"
    "$BINDIR/postgres" --single -D "$PGDATA" -c config_file="$CONFIG_FILE" postgres < /dev/null >> "$PGDATA/pg_ha_rejoin.log" 2>&1
    if ! rewind; then
      if [ "$RECLONE" = yes ]; then
        log "pg_rewind failed again; re-cloning from $SOURCE_NAME with pg_basebackup (ha.reclone_on_rewind_failure = on)"
        cp -p "$PGDATA/pg_ha_rejoin.log" "$SAVE/" 2>/dev/null
        find "$PGDATA" -mindepth 1 -delete
        # The source may be down for a moment (killed, restarting): retry for two minutes.
        CLONED=no
        for attempt in $(seq 1 60); do
          if "$BINDIR/pg_basebackup" -D "$PGDATA" -d "$SOURCE_CONNINFO" -X stream -c fast >> "$SAVE/pg_ha_rejoin.log" 2>&1; then
            CLONED=yes
            break
          fi
          [ "$attempt" = 1 ] && log "pg_basebackup from $SOURCE_NAME failed; retrying every 2 s for 2 minutes"
          find "$PGDATA" -mindepth 1 -delete
          sleep 2
        done
        if [ "$CLONED" != yes ]; then
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
        server_start >> "$PGDATA/pg_ha_rejoin.log" 2>&1
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
server_start >> "$PGDATA/pg_ha_rejoin.log" 2>&1
log "done"
"#;

/// Where this server writes its log: the file behind the postmaster's stderr (pg_ctl -l; Debian's
/// pg_ctlcluster points it at /var/log/postgresql/postgresql-15-main.log).
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

/// The server's configuration file (`config_file`; Debian keeps it outside the data directory).
fn config_file(data_dir: &Path) -> String {
    // SAFETY: plain read of a global set at startup (NULL only before the configuration is read).
    let p = unsafe { pg_sys::ConfigFileName };
    if p.is_null() {
        return data_dir
            .join("postgresql.conf")
            .to_string_lossy()
            .into_owned();
    }
    // SAFETY: a NUL-terminated string owned by the GUC machinery.
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned()
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
    /// `ha.systemd_unit`, validated; empty: bare `pg_ctl`.
    pub systemd_unit: &'a str,
}

/// Where this server lives, as the helper needs it (read from Postgres by [`spawn`]).
struct Server {
    bindir: String,
    server_log: String,
    config_file: String,
}

/// The helper's environment (pure: what it is told).
fn helper_env(p: &Plan<'_>, srv: &Server) -> Vec<(&'static str, String)> {
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
    vec![
        ("PGDATA", p.data_dir.to_string_lossy().into_owned()),
        ("BINDIR", srv.bindir.clone()),
        ("SERVER_LOG", srv.server_log.clone()),
        ("CONFIG_FILE", srv.config_file.clone()),
        ("SOURCE_NAME", p.source_name.to_string()),
        ("NODE_NAME", p.node_name.to_string()),
        ("SOURCE_CONNINFO", p.source_conninfo.to_string()),
        (
            "PRIMARY_CONNINFO_ESCAPED",
            p.primary_conninfo.replace('\'', "''"),
        ),
        ("NEEDS_REWIND", yes_no(p.needs_rewind)),
        ("RECLONE", yes_no(p.reclone)),
        ("FAILPOINT", p.failpoint.to_string()),
    ]
}

/// The names the systemd path uses for a server unit such as `postgresql@15-main.service`.
#[derive(Debug, PartialEq, Eq)]
struct SystemdNames {
    /// The server's unit, with its `.service` suffix.
    unit: String,
    /// The shipped template's instance that runs the helper: `pg-ha-rejoin@<instance>.service`.
    rejoin_unit: String,
    /// The script that instance runs (`ExecStart` of packaging/systemd/pg-ha-rejoin@.service).
    script: PathBuf,
}

/// How the helper calls systemctl: through sudo, allowed by packaging/systemd/pg_ha.sudoers.
const SYSTEMCTL: &str = "/usr/bin/sudo -n /usr/bin/systemctl";

fn systemd_names(unit: &str) -> SystemdNames {
    let unit = if unit.ends_with(".service") {
        unit.to_string()
    } else {
        format!("{unit}.service")
    };
    let stem = unit.trim_end_matches(".service");
    let instance = stem.split_once('@').map_or(stem, |(_, i)| i);
    SystemdNames {
        rejoin_unit: format!("pg-ha-rejoin@{instance}.service"),
        script: PathBuf::from(format!("/run/postgresql/pg_ha_rejoin.{instance}.sh")),
        unit,
    }
}

/// Single-quote a value for bash.
fn sh_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

/// The whole script the systemd path writes: its environment, the systemctl functions, the steps.
fn systemd_script(env: &[(&'static str, String)], names: &SystemdNames, systemctl: &str) -> String {
    let mut out = String::from("#!/bin/bash\n# Written by pg_ha for one rejoin; run by ");
    out.push_str(&names.rejoin_unit);
    out.push('\n');
    for (k, v) in env
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain([("UNIT", names.unit.as_str()), ("SYSTEMCTL", systemctl)])
    {
        out.push_str(&format!("{k}={}\n", sh_quote(v)));
    }
    out.push_str(SYSTEMD);
    out.push_str(SCRIPT);
    out
}

/// The command that starts the helper's unit (it returns once the start is queued).
fn systemd_launch(names: &SystemdNames) -> Vec<String> {
    let mut cmd: Vec<String> = SYSTEMCTL.split(' ').map(String::from).collect();
    cmd.extend(["--no-block", "start", &names.rejoin_unit].map(String::from));
    cmd
}

/// Spawn the helper (detached). Returns what was started, for the log.
pub fn spawn(p: &Plan<'_>) -> std::io::Result<String> {
    let srv = Server {
        bindir: bindir(),
        server_log: server_log(p.data_dir),
        config_file: config_file(p.data_dir),
    };
    let env = helper_env(p, &srv);
    if !p.systemd_unit.is_empty() {
        return spawn_systemd(&env, &systemd_names(p.systemd_unit));
    }
    let mut cmd = Command::new("/bin/bash");
    cmd.arg("-c")
        .arg(format!("{PG_CTL}{SCRIPT}"))
        .envs(env)
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
    Ok(format!("pid {}", child.id()))
}

fn spawn_systemd(env: &[(&'static str, String)], names: &SystemdNames) -> std::io::Result<String> {
    let script = systemd_script(env, names, SYSTEMCTL);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o700)
        .open(&names.script)
        .map_err(|e| std::io::Error::other(format!("{}: {e}", names.script.display())))?;
    f.write_all(script.as_bytes())?;
    f.sync_all()?;
    drop(f);
    let cmd = systemd_launch(names);
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "{} failed ({}): {} (see packaging/systemd/pg_ha.sudoers)",
            cmd.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(format!(
        "unit {} running {}",
        names.rejoin_unit,
        names.script.display()
    ))
}

/// The marker a failed rewind leaves: its text, if present.
pub fn failed(data_dir: &Path) -> Option<String> {
    std::fs::read_to_string(data_dir.join("pg_ha.rejoin_failed"))
        .ok()
        .map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    //! The helper's command generation, and its steps run in a sandbox where pg_ctl, pg_rewind, psql,
    //! postgres and systemctl are stubs that record their arguments (no server, no systemd).
    use super::*;

    #[test]
    fn systemd_names_for_debian_and_plain_units() {
        assert_eq!(
            systemd_names("postgresql@15-main.service"),
            SystemdNames {
                unit: "postgresql@15-main.service".into(),
                rejoin_unit: "pg-ha-rejoin@15-main.service".into(),
                script: "/run/postgresql/pg_ha_rejoin.15-main.sh".into(),
            }
        );
        let n = systemd_names("pg");
        assert_eq!(n.unit, "pg.service");
        assert_eq!(n.rejoin_unit, "pg-ha-rejoin@pg.service");
        // Exactly the command packaging/systemd/pg_ha.sudoers allows.
        assert_eq!(
            systemd_launch(&systemd_names("postgresql@15-main.service")).join(" "),
            "/usr/bin/sudo -n /usr/bin/systemctl --no-block start pg-ha-rejoin@15-main.service"
        );
        let sudoers = include_str!("../../packaging/systemd/pg_ha.sudoers");
        for allowed in [
            "/usr/bin/systemctl --no-block start pg-ha-rejoin@15-main.service",
            "/usr/bin/systemctl stop postgresql@15-main.service",
            "/usr/bin/systemctl start postgresql@15-main.service",
        ] {
            assert!(sudoers.contains(allowed), "sudoers lacks {allowed}");
        }
        let unit = include_str!("../../packaging/systemd/pg-ha-rejoin@.service");
        assert!(unit.contains("ExecStart=/bin/bash /run/postgresql/pg_ha_rejoin.%i.sh"));
    }

    #[test]
    fn quoting_survives_bash() {
        let v = "host=a password='x y' $HOME `id` \\ \"";
        let out = Command::new("/bin/bash")
            .arg("-c")
            .arg(format!("V={}; printf %s \"$V\"", sh_quote(v)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), v);
    }

    /// A data directory, stub binaries, and a file where every stub call is recorded.
    struct Sandbox {
        dir: PathBuf,
    }

    impl Sandbox {
        fn new(tag: &str, rewind_ok: bool) -> Sandbox {
            let dir = std::env::temp_dir()
                .join(format!("pg_ha_rejoin_test.{tag}.{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("bin")).unwrap();
            std::fs::create_dir_all(dir.join("data")).unwrap();
            std::fs::write(dir.join("data/postgresql.auto.conf"), "# auto\n").unwrap();
            for (name, rc) in [
                ("pg_ctl", 0),
                ("psql", 0),
                ("postgres", 0),
                ("systemctl", 0),
                ("pg_rewind", if rewind_ok { 0 } else { 1 }),
            ] {
                let p = dir.join("bin").join(name);
                std::fs::write(
                    &p,
                    format!("#!/bin/bash\necho \"{name} $*\" >> \"$CALLS\"\nexit {rc}\n"),
                )
                .unwrap();
                std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                    .unwrap();
            }
            Sandbox { dir }
        }

        fn plan_env(&self, needs_rewind: bool) -> Vec<(&'static str, String)> {
            let data = self.dir.join("data");
            let plan = Plan {
                data_dir: &data,
                node_name: "n1",
                source_name: "n2",
                source_conninfo: "host=127.0.0.1 port=5433",
                primary_conninfo: "host=127.0.0.1 port=5433 application_name=n1",
                needs_rewind,
                reclone: false,
                failpoint: "",
                systemd_unit: "postgresql@15-main.service",
            };
            let srv = Server {
                bindir: self.dir.join("bin").to_string_lossy().into_owned(),
                server_log: self.dir.join("server.log").to_string_lossy().into_owned(),
                config_file: "/etc/postgresql/15/main/postgresql.conf".into(),
            };
            helper_env(&plan, &srv)
        }

        /// Run the systemd script (as pg-ha-rejoin@.service would) and return the recorded calls.
        fn run_systemd(&self, needs_rewind: bool) -> Vec<String> {
            let names = systemd_names("postgresql@15-main");
            let systemctl = self
                .dir
                .join("bin/systemctl")
                .to_string_lossy()
                .into_owned();
            let script = systemd_script(&self.plan_env(needs_rewind), &names, &systemctl);
            let path = self.dir.join("helper.sh");
            std::fs::write(&path, script).unwrap();
            self.run(Command::new("/bin/bash").arg(&path))
        }

        /// Run the bare pg_ctl helper exactly as `spawn` does.
        fn run_pg_ctl(&self, needs_rewind: bool) -> Vec<String> {
            let mut cmd = Command::new("/bin/bash");
            cmd.arg("-c")
                .arg(format!("{PG_CTL}{SCRIPT}"))
                .envs(self.plan_env(needs_rewind));
            self.run(&mut cmd)
        }

        fn run(&self, cmd: &mut Command) -> Vec<String> {
            let calls = self.dir.join("calls");
            let _ = std::fs::remove_file(&calls);
            let _ = cmd.env("CALLS", &calls).status().unwrap();
            std::fs::read_to_string(&calls)
                .unwrap_or_default()
                .lines()
                .map(String::from)
                .collect()
        }

        /// Replace stub `name` with one that records its call, then runs `body`.
        fn stub(&self, name: &str, body: &str) {
            let p = self.dir.join("bin").join(name);
            std::fs::write(
                &p,
                format!("#!/bin/bash\necho \"{name} $*\" >> \"$CALLS\"\n{body}\n"),
            )
            .unwrap();
        }

        fn auto_conf(&self) -> String {
            std::fs::read_to_string(self.dir.join("data/postgresql.auto.conf")).unwrap()
        }
    }

    impl Drop for Sandbox {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn starts(calls: &[String], prefixes: &[&str]) {
        assert_eq!(calls.len(), prefixes.len(), "calls: {calls:#?}");
        for (c, p) in calls.iter().zip(prefixes) {
            assert!(
                c.starts_with(p),
                "expected {p}..., got {c}; calls: {calls:#?}"
            );
        }
    }

    #[test]
    fn systemd_rewind_stops_and_starts_the_unit() {
        let sb = Sandbox::new("sd_rewind", true);
        let calls = sb.run_systemd(true);
        starts(
            &calls,
            &[
                "systemctl stop postgresql@15-main.service",
                "psql -X -q host=127.0.0.1 port=5433 -c CHECKPOINT",
                "pg_rewind -D ",
                "systemctl start postgresql@15-main.service",
            ],
        );
        assert!(sb.dir.join("data/standby.signal").exists());
        assert!(sb
            .auto_conf()
            .contains("primary_conninfo = 'host=127.0.0.1 port=5433 application_name=n1'"));
    }

    #[test]
    fn systemd_restart_only_stops_immediately_then_tells_systemd() {
        let sb = Sandbox::new("sd_restart", true);
        let calls = sb.run_systemd(false);
        starts(
            &calls,
            &[
                "pg_ctl -D ",
                "systemctl stop postgresql@15-main.service",
                "systemctl start postgresql@15-main.service",
            ],
        );
        assert!(calls[0].contains("-m immediate"), "{calls:#?}");
    }

    #[test]
    fn systemd_rewind_failure_leaves_the_marker_and_starts_through_systemd() {
        let sb = Sandbox::new("sd_fail", false);
        let calls = sb.run_systemd(true);
        starts(
            &calls,
            &[
                "systemctl stop postgresql@15-main.service",
                "psql ",
                "pg_rewind ",
                // Debian keeps postgresql.conf outside the data directory.
                "postgres --single -D ",
                "pg_rewind ",
                "systemctl start postgresql@15-main.service",
            ],
        );
        assert!(calls[3].contains("-c config_file=/etc/postgresql/15/main/postgresql.conf"));
        assert!(sb.dir.join("data/pg_ha.rejoin_failed").exists());
    }

    #[test]
    fn bare_path_uses_pg_ctl_only() {
        let sb = Sandbox::new("bare", true);
        let calls = sb.run_pg_ctl(true);
        starts(&calls, &["pg_ctl -D ", "psql ", "pg_rewind ", "pg_ctl -D "]);
        assert!(calls[0].ends_with("-m fast -w -t 60 stop"), "{calls:#?}");
        assert!(
            calls[3].contains(" -l ") && calls[3].ends_with(" start"),
            "{calls:#?}"
        );
        let sb = Sandbox::new("bare_restart", true);
        let calls = sb.run_pg_ctl(false);
        starts(&calls, &["pg_ctl -D ", "pg_ctl -D "]);
        assert!(calls[0].ends_with("-m immediate -w stop"), "{calls:#?}");
    }

    /// Found by the fault campaign: the source was killed after the agent chose it. Neither failure
    /// below changed anything, so no marker: the node restarts as a standby and the agent retries.
    #[test]
    fn unreachable_source_is_retried_not_marked_failed() {
        let sb = Sandbox::new("unreach_ckpt", true);
        sb.stub("psql", "exit 2");
        let calls = sb.run_pg_ctl(true);
        starts(&calls, &["pg_ctl -D ", "psql ", "pg_ctl -D "]);
        assert!(calls[2].ends_with(" start"), "{calls:#?}");
        assert!(!sb.dir.join("data/pg_ha.rejoin_failed").exists());
        assert!(sb.dir.join("data/standby.signal").exists());
        assert!(sb.auto_conf().ends_with("primary_conninfo = ''\n"));

        let sb = Sandbox::new("unreach_rewind", true);
        sb.stub(
            "pg_rewind",
            "echo 'pg_rewind: error: connection to server at \"10.0.0.2\", port 5432 failed: Connection refused' >&2; exit 1",
        );
        let calls = sb.run_pg_ctl(true);
        starts(&calls, &["pg_ctl -D ", "psql ", "pg_rewind ", "pg_ctl -D "]);
        assert!(!sb.dir.join("data/pg_ha.rejoin_failed").exists());
        assert!(sb.auto_conf().ends_with("primary_conninfo = ''\n"));
    }

    /// The bare helper's calls when both pg_rewind attempts fail: stop, checkpoint, rewind, crash
    /// recovery, rewind again, start (as a standby, with the marker).
    const FAILED_REWIND_CALLS: &[&str] = &[
        "pg_ctl -D ",
        "psql ",
        "pg_rewind ",
        "postgres --single",
        "pg_rewind ",
        "pg_ctl -D ",
    ];

    /// A rewind that fails for another reason (here: the test failpoint's refused option) still leaves
    /// the marker.
    #[test]
    fn other_rewind_failures_leave_the_marker() {
        let sb = Sandbox::new("other_fail", false);
        let calls = sb.run_pg_ctl(true);
        starts(&calls, FAILED_REWIND_CALLS);
        assert!(sb.dir.join("data/pg_ha.rejoin_failed").exists());
    }

    /// Found by the fault campaign: the source died in the middle of a rewind, and the retry's
    /// connection failure must not be taken for "nothing was rewound".
    #[test]
    fn a_connection_failure_after_a_rewind_began_is_not_transient() {
        let sb = Sandbox::new("began", true);
        sb.stub(
            "pg_rewind",
            "if [ -f \"$CALLS.began\" ]; then echo 'pg_rewind: error: connection to server at \"10.0.0.2\", port 5432 failed: Connection refused' >&2; else touch \"$CALLS.began\"; echo 'pg_rewind: error: unexpected result while fetching remote files' >&2; fi; exit 1",
        );
        let calls = sb.run_pg_ctl(true);
        starts(&calls, FAILED_REWIND_CALLS);
        assert!(sb.dir.join("data/pg_ha.rejoin_failed").exists());
    }
}
