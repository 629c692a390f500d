//! One Postgres node of a test cluster: its addresses, SQL access, and its process life cycle.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::conf;
use crate::error::{err, Result};
use crate::pgcmd::{pg_command_in, run, OsUser};
use crate::procs::{cmdline, descendants, pid_alive, signal, wait_gone};
use crate::wait::wait_until;

/// How long starting and stopping a node may take.
const LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A node: a data directory, a Postgres port and an agent address on its host.
pub struct Node {
    pub(crate) name: String,
    pub(crate) host: String,
    pub(crate) pg_port: u16,
    pub(crate) agent_port: u16,
    pub(crate) zone: String,
    pub(crate) dir: PathBuf,
    pub(crate) data_dir: PathBuf,
    pub(crate) log_path: PathBuf,
    pub(crate) user: OsUser,
    pub(crate) token: String,
    /// The network namespace this node's processes run in (`ClusterSpec::netns`), if any.
    pub(crate) netns: Option<String>,
    /// Every postmaster PID seen for this node, so teardown can kill them by PID.
    pub(crate) seen_pids: Mutex<Vec<i32>>,
}

impl Node {
    /// "node1", "node2", ...
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The address Postgres and the agent listen on.
    pub fn host(&self) -> &str {
        &self.host
    }
    pub fn pg_port(&self) -> u16 {
        self.pg_port
    }
    pub fn agent_port(&self) -> u16 {
        self.agent_port
    }
    /// `host:port` of this node's agent (`ha.agent_address`).
    pub fn agent_addr(&self) -> String {
        format!("{}:{}", self.host, self.agent_port)
    }
    /// `ha.zone`.
    pub fn zone(&self) -> &str {
        &self.zone
    }
    /// The node's directory (data dir, log, unix socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    /// The server log (pg_ctl -l).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
    /// libpq conninfo of this node (`ha.conninfo`).
    pub fn conninfo(&self) -> String {
        conf::conninfo(&self.host, self.pg_port)
    }

    // ---- SQL ----

    /// A new connection as user postgres to database postgres over TCP.
    pub fn connect(&self) -> Result<postgres::Client> {
        self.connect_as("postgres")
    }

    /// A new connection as `user` (a role with LOGIN; the harness' pg_hba.conf trusts every user on the
    /// cluster's addresses) to database postgres over TCP; for a node on a host of its own (network
    /// namespace), over its unix socket instead: the harness' out-of-band path, which no partition cuts.
    pub fn connect_as(&self, user: &str) -> Result<postgres::Client> {
        let mut config = postgres::Config::new();
        if self.netns.is_some() {
            config.host_path(&self.dir);
        } else {
            config.host(&self.host);
        }
        let client = config
            .port(self.pg_port)
            .user(user)
            .dbname("postgres")
            .application_name("pg_test")
            .connect_timeout(Duration::from_secs(5))
            .connect(postgres::NoTls)
            .map_err(|e| {
                err(format!(
                    "connect to {} ({}:{}) as {user}: {}",
                    self.name,
                    self.host,
                    self.pg_port,
                    match e.as_db_error() {
                        Some(db) =>
                            format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
                        None => e.to_string(),
                    }
                ))
            })?;
        Ok(client)
    }

    /// Runs `sql` (one or more statements, simple query protocol) on a new connection; every row of every
    /// statement as text columns (NULL is `None`).
    pub fn query_strings(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        let mut client = self.connect()?;
        let msgs = client
            .simple_query(sql)
            .map_err(|e| err(format!("{} on {}: {}", sql, self.name, db_error_text(&e))))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_string))
                        .collect(),
                ),
                _ => None,
            })
            .collect())
    }

    /// The first column of the first row `sql` returns (`None` for no row or NULL).
    pub fn query_value(&self, sql: &str) -> Result<Option<String>> {
        Ok(self
            .query_strings(sql)?
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten()))
    }

    /// `pg_is_in_recovery()`.
    pub fn in_recovery(&self) -> Result<bool> {
        Ok(self.query_value("SELECT pg_is_in_recovery()")?.as_deref() == Some("t"))
    }

    /// Whether a TCP connection to the Postgres port succeeds now (for a node in a namespace: its unix
    /// socket).
    pub fn port_open(&self) -> bool {
        if self.netns.is_some() {
            let sock = self.dir.join(format!(".s.PGSQL.{}", self.pg_port));
            return std::os::unix::net::UnixStream::connect(sock).is_ok();
        }
        port_open(&self.host, self.pg_port)
    }

    /// The network namespace of this node's host, if it has one of its own.
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// Whether the node answers `SELECT 1` now.
    pub fn accepts_connections(&self) -> bool {
        self.query_value("SELECT 1").is_ok()
    }

    // ---- configuration ----

    /// Appends `line` to this node's `pg_test_extra.conf` (read after the harness' own settings).
    /// Takes effect at the next [`Node::reload`] or restart.
    pub fn append_conf(&self, line: &str) -> Result<()> {
        use std::io::Write;
        let path = self.data_dir.join(conf::EXTRA_CONF);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        writeln!(f, "{line}")?;
        self.user.chown(&path)
    }

    /// Replaces this node's `pg_test_extra.conf` with `lines`.
    pub fn set_extra_conf(&self, lines: &[&str]) -> Result<()> {
        let path = self.data_dir.join(conf::EXTRA_CONF);
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(&path, text)?;
        self.user.chown(&path)
    }

    /// `pg_ctl reload`.
    pub fn reload(&self) -> Result<()> {
        self.pg_ctl(&["reload"]).map(|_| ())
    }

    // ---- processes ----

    /// The postmaster's PID from postmaster.pid, if that process is alive and is this node's postmaster.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        if !pid_alive(pid) || !self.is_own_postmaster(pid) {
            return None;
        }
        let mut seen = self.seen_pids.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.contains(&pid) {
            seen.push(pid);
        }
        Some(pid)
    }

    /// Whether `pid` runs on this node's data directory.
    fn is_own_postmaster(&self, pid: i32) -> bool {
        cmdline(pid).contains(&*self.data_dir.to_string_lossy())
    }

    /// Whether the postmaster is running.
    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some()
    }

    /// PIDs of the postmaster and all its descendants (empty when not running).
    pub fn pids(&self) -> Vec<i32> {
        match self.postmaster_pid() {
            Some(pm) => {
                let mut v = vec![pm];
                v.extend(descendants(pm));
                v
            }
            None => Vec::new(),
        }
    }

    /// SIGKILL the postmaster, as a crash would; then wait until the port refuses connections and every child
    /// of the postmaster has exited (children exit on postmaster death; frozen ones get SIGCONT for that).
    /// A child still alive after 30 s fails the call, naming it (and is then SIGKILLed).
    pub fn kill9(&self) -> Result<()> {
        let pm = self
            .postmaster_pid()
            .ok_or_else(|| err(format!("kill9: {} is not running", self.name)))?;
        let children = descendants(pm);
        signal(pm, libc::SIGKILL)?;
        // Children frozen by sigstop() could not notice the postmaster's death.
        for &c in &children {
            signal(c, libc::SIGCONT)?;
        }
        let timeout = Duration::from_secs(30);
        let what = format!("{}'s postmaster {pm} to die after SIGKILL", self.name);
        wait_gone(&[pm], timeout, &what)?;
        let what = format!(
            "{}'s port {} to refuse connections",
            self.name, self.pg_port
        );
        wait_until(timeout, &what, || Ok(!self.port_open()))?;
        let what = format!("{}'s children to exit after postmaster death", self.name);
        wait_gone(&children, timeout, &what).inspect_err(|_| {
            // Do not leave orphans behind (teardown could no longer find them through the postmaster).
            for &c in &children {
                let _ = signal(c, libc::SIGKILL);
            }
        })
    }

    /// SIGSTOP the postmaster and all its descendants: the whole node freezes (agent included).
    pub fn sigstop(&self) -> Result<()> {
        let pm = self
            .postmaster_pid()
            .ok_or_else(|| err(format!("sigstop: {} is not running", self.name)))?;
        // The postmaster first, so it forks nothing new meanwhile.
        signal(pm, libc::SIGSTOP)?;
        for p in descendants(pm) {
            signal(p, libc::SIGSTOP)?;
        }
        Ok(())
    }

    /// SIGCONT every process [`Node::sigstop`] froze.
    pub fn sigcont(&self) -> Result<()> {
        let pm = self
            .postmaster_pid()
            .ok_or_else(|| err(format!("sigcont: {} is not running", self.name)))?;
        for p in descendants(pm) {
            signal(p, libc::SIGCONT)?;
        }
        signal(pm, libc::SIGCONT)
    }

    /// `pg_ctl stop -m fast`, then wait until every process of the node is gone.
    pub fn stop(&self) -> Result<()> {
        self.stop_mode("fast")
    }

    /// `pg_ctl stop -m MODE` (smart, fast, immediate), then wait until every process of the node is gone.
    pub fn stop_mode(&self, mode: &str) -> Result<()> {
        let pids = self.pids();
        if pids.is_empty() {
            return Err(err(format!("stop: {} is not running", self.name)));
        }
        self.pg_ctl(&["stop", "-m", mode, "-w", "-t", "60"])?;
        wait_gone(
            &pids,
            LIFECYCLE_TIMEOUT,
            &format!("{}'s processes to exit after stop", self.name),
        )
    }

    /// `pg_ctl start`, then wait until the node accepts connections.
    pub fn start(&self) -> Result<()> {
        if let Some(pid) = self.postmaster_pid() {
            return Err(err(format!(
                "start: {} is already running (pid {pid})",
                self.name
            )));
        }
        let log = self.log_path.to_string_lossy().into_owned();
        self.pg_ctl(&["start", "-w", "-t", "60", "-l", &log])
            .map_err(|e| self.with_log_tail(e))?;
        self.postmaster_pid().ok_or_else(|| {
            self.with_log_tail(err(format!(
                "{}: no postmaster after pg_ctl start",
                self.name
            )))
        })?;
        wait_until(
            LIFECYCLE_TIMEOUT,
            &format!("{} to accept connections", self.name),
            || self.query_value("SELECT 1").map(|_| true),
        )
        .map_err(|e| self.with_log_tail(e))
    }

    /// Stop (fast) if running, then start.
    pub fn restart(&self) -> Result<()> {
        if self.is_running() {
            self.stop()?;
        }
        self.start()
    }

    /// Runs `pg_ctl -D DATA ARGS` as the postgres account.
    pub fn pg_ctl(&self, args: &[&str]) -> Result<String> {
        let mut cmd = pg_command_in(&self.user, "pg_ctl", &self.dir, self.netns.as_deref());
        cmd.arg("-D").arg(&self.data_dir).args(args);
        let out = run(cmd, LIFECYCLE_TIMEOUT + Duration::from_secs(10))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `psql` (this Postgres' own) as the postgres account with `conninfo_extra` added to the node's
    /// connection string (e.g. `replication=true`, `replication=database user=app`) and `-c sql`; the
    /// output on success, the error text (psql's stderr) on failure.
    pub fn psql(&self, conninfo_extra: &str, sql: &str) -> Result<String> {
        let mut cmd = pg_command_in(&self.user, "psql", &self.dir, self.netns.as_deref());
        let host = if self.netns.is_some() {
            self.dir.to_string_lossy().into_owned()
        } else {
            self.host.clone()
        };
        cmd.arg("-X")
            .arg("-A")
            .arg("-t")
            .arg("-v")
            .arg("ON_ERROR_STOP=1");
        cmd.arg("-d").arg(format!(
            "host={host} port={} dbname=postgres user=postgres connect_timeout=5 {conninfo_extra}",
            self.pg_port
        ));
        cmd.arg("-c").arg(sql);
        let out = run(cmd, LIFECYCLE_TIMEOUT)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    // ---- log ----

    /// The whole server log ("" if none yet).
    pub fn read_log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Whether the server log contains `needle`.
    pub fn log_contains(&self, needle: &str) -> bool {
        self.read_log().contains(needle)
    }

    /// The last `n` lines of the server log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.read_log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `e` with the tail of this node's log appended.
    pub(crate) fn with_log_tail(&self, e: crate::Error) -> crate::Error {
        err(format!(
            "{e}\n--- last lines of {} ---\n{}",
            self.log_path.display(),
            self.log_tail(30)
        ))
    }

    // ---- agent ----

    /// The agent's `Status` RPC with the cluster's token.
    #[allow(clippy::result_large_err)]
    pub fn agent_status(&self) -> Result<crate::StatusReply, tonic::Status> {
        let Some(ns) = &self.netns else {
            return crate::agent_status(&self.agent_addr(), Some(&self.token));
        };
        // From inside the node's own namespace: no cut separates a host from itself.
        let (addr, token) = (self.agent_addr(), self.token.clone());
        let mut out = None;
        let _ = crate::netns::in_netns(ns, || {
            out = Some(crate::agent_status(&addr, Some(&token)));
            Ok(())
        });
        out.unwrap_or_else(|| Err(tonic::Status::internal(format!("cannot enter {ns}"))))
    }

    /// The agent's `Pledge` RPC with the cluster's token: ask this node to pledge to `coordinator` for
    /// `term`, as a coordinator would (loopback clusters only).
    #[allow(clippy::result_large_err)]
    pub fn agent_pledge(
        &self,
        term: u64,
        coordinator: &str,
    ) -> Result<crate::pb::PledgeReply, tonic::Status> {
        if let Some(ns) = &self.netns {
            return Err(tonic::Status::unimplemented(format!(
                "agent_pledge from outside namespace {ns}"
            )));
        }
        crate::agent::agent_pledge(
            &self.agent_addr(),
            &self.token,
            crate::pb::PledgeRequest {
                term,
                coordinator: coordinator.into(),
                attempt: 1,
            },
        )
    }
}

/// Whether a TCP connect to `host:port` succeeds within a second.
pub(crate) fn port_open(host: &str, port: u16) -> bool {
    match format!("{host}:{port}").parse::<SocketAddr>() {
        Ok(addr) => TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok(),
        Err(_) => false,
    }
}

/// A postgres error with the server's message, not just "db error".
pub(crate) fn db_error_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => e.to_string(),
    }
}
