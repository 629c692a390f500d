//! A running test cluster: setup (initdb, basebackups, streaming), access to its nodes, and teardown by PID.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::conf::{self, NodeConf};
use crate::error::{err, Result};
use crate::node::Node;
use crate::pgcmd::{pg_command, pg_command_in, run, OsUser};
use crate::ports::free_port;
use crate::random::random_hex;
use crate::spec::ClusterSpec;
use crate::wait::wait_until;

/// A running cluster of real Postgres processes in `/tmp/pg_ha_test.<random>`. Dropping it kills every process
/// it started (by PID) and removes the directory, also when the test panics.
pub struct Cluster {
    pub(crate) spec: ClusterSpec,
    pub(crate) base: PathBuf,
    pub(crate) token: String,
    pub(crate) token_file: PathBuf,
    pub(crate) nodes: Vec<Node>,
    pub(crate) user: OsUser,
    /// How long [`Cluster::start`] took.
    pub(crate) startup: Duration,
    /// The hosts' network, when the nodes live in namespaces of their own (dropped after the processes).
    pub(crate) net: Option<crate::netns::Net>,
}

impl Cluster {
    /// Creates and starts the cluster `spec` describes (see [`ClusterSpec`]); returns once every standby
    /// streams from node1 (and, as asked, pg_ha is created, bootstrapped and the members added).
    pub fn start(spec: ClusterSpec) -> Result<Cluster> {
        let t0 = Instant::now();
        if spec.nodes == 0 {
            return Err(err("ClusterSpec.nodes must be at least 1"));
        }
        let user = OsUser::postgres()?;
        crate::procs::become_subreaper();
        let base = std::env::temp_dir().join(format!("pg_ha_test.{}", random_hex(4)));
        std::fs::create_dir(&base).map_err(|e| err(format!("create {}: {e}", base.display())))?;
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755))?;
        let mut cluster = Cluster {
            token: random_hex(16),
            token_file: base.join("auth_token"),
            spec,
            base,
            nodes: Vec::new(),
            user,
            startup: Duration::ZERO,
            net: None,
        };
        // From here on, an error drops `cluster`, which tears down whatever was started.
        match cluster.setup() {
            Ok(()) => {
                cluster.startup = t0.elapsed();
                Ok(cluster)
            }
            Err(e) => {
                let mut msg = format!(
                    "starting the cluster in {} failed: {e}",
                    cluster.base.display()
                );
                for n in &cluster.nodes {
                    if n.log_path.exists() {
                        msg.push_str(&format!(
                            "\n--- last lines of {} ---\n{}",
                            n.log_path.display(),
                            n.log_tail(20)
                        ));
                    }
                }
                Err(err(msg))
            }
        }
    }

    fn setup(&mut self) -> Result<()> {
        let spec = self.spec.clone();
        let timeout = Duration::from_secs(spec.setup_timeout_secs);

        // Token file for ha.auth_token_file: owned by postgres, mode 0600.
        std::fs::write(&self.token_file, format!("{}\n", self.token))?;
        self.user.chown(&self.token_file)?;
        std::fs::set_permissions(&self.token_file, std::fs::Permissions::from_mode(0o600))?;

        if spec.netns {
            self.net = Some(crate::netns::Net::create(spec.nodes)?);
        }
        // Nodes: ports, directories. On hosts of their own every node has the same (default) ports.
        for i in 0..spec.nodes {
            let host = match &self.net {
                Some(net) => net.node_addr(i),
                None => spec.host(i),
            };
            let (pg_port, agent_port) = match &self.net {
                Some(_) => (5432, 7400),
                None => (free_port(&host)?, free_port(&host)?),
            };
            let dir = self.base.join(format!("node{}", i + 1));
            std::fs::create_dir(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
            self.user.chown(&dir)?;
            self.nodes.push(Node {
                name: format!("node{}", i + 1),
                pg_port,
                agent_port,
                netns: self.net.as_ref().map(|net| net.node_ns(i)),
                host,
                zone: spec.zone(i),
                data_dir: dir.join("data"),
                log_path: dir.join("postgres.log"),
                dir,
                user: self.user.clone(),
                token: self.token.clone(),
                seen_pids: Mutex::new(Vec::new()),
            });
        }
        let peers = self.agent_addrs().join(",");
        let mut cidrs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}/32", n.host))
            .collect();
        if let Some(net) = &self.net {
            cidrs.push(format!("{}/32", net.client_addr()));
        }
        cidrs.sort();
        cidrs.dedup();

        // node1: initdb, configure, start.
        let n1 = &self.nodes[0];
        let mut initdb = pg_command(&self.user, "initdb", &n1.dir);
        initdb
            .arg("-D")
            .arg(&n1.data_dir)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--data-checksums",
                "--no-sync",
                "--no-instructions",
            ])
            .args(["-E", "UTF8", "--locale=C"]);
        run(initdb, Duration::from_secs(120))?;
        let pg_conf = n1.data_dir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&pg_conf)?;
        text.push_str(&conf::common(
            &spec,
            &peers,
            &self.token_file.to_string_lossy(),
        ));
        std::fs::write(&pg_conf, text)?;
        self.write_file(&n1.data_dir.join("pg_hba.conf"), &conf::hba(&cidrs))?;
        self.write_node_conf(0)?;
        n1.start()?;
        if spec.preload_pg_ha {
            // Sessions start read-only until the agent's first pass opens the fence of a primary no
            // ruleset knows about (the fence holds from the first transaction, I6).
            wait_until(
                timeout,
                "node1's agent to open the fence of a fresh primary",
                || {
                    Ok(n1
                        .query_value("SHOW default_transaction_read_only")?
                        .as_deref()
                        == Some("off"))
                },
            )?;
        }
        if spec.create_extension {
            n1.query_strings("CREATE EXTENSION pg_ha")?;
        }
        if spec.bootstrap {
            n1.query_strings("SELECT ha.bootstrap()")?;
        }
        if !spec.start_standbys || spec.nodes == 1 {
            return Ok(());
        }

        // Standbys, in parallel: basebackup, own settings, start.
        let this = &*self;
        let results: Vec<Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = (1..spec.nodes)
                .map(|i| s.spawn(move || this.clone_standby(i)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(err("standby setup panicked")))
                })
                .collect()
        });
        for r in results {
            r?;
        }
        let names: Vec<&str> = self.nodes[1..].iter().map(|n| n.name()).collect();
        self.wait_streaming(&self.nodes[0], &names, timeout)?;

        if spec.add_members {
            for name in &names {
                let sql = format!("SELECT ha.add_member('{name}')");
                wait_until(timeout, &format!("{sql} on node1 to succeed"), || {
                    self.nodes[0].query_strings(&sql).map(|_| true)
                })?;
            }
        }
        if let Some(policy) = &spec.policy {
            self.nodes[0].query_strings(&format!(
                "SELECT ha.set_policy('{}')",
                policy.replace('\'', "''")
            ))?;
        }
        Ok(())
    }

    /// pg_basebackup -R node `i` from node1, write its own settings, start it.
    fn clone_standby(&self, i: usize) -> Result<()> {
        let n1 = &self.nodes[0];
        let node = &self.nodes[i];
        let mut bb = pg_command_in(
            &self.user,
            "pg_basebackup",
            &node.dir,
            node.netns.as_deref(),
        );
        bb.arg("-D")
            .arg(&node.data_dir)
            .args([
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
                "-U",
                "postgres",
                "-h",
            ])
            .arg(&n1.host)
            .arg("-p")
            .arg(n1.pg_port.to_string());
        run(bb, Duration::from_secs(self.spec.setup_timeout_secs))?;
        self.configure_standby(i)?;
        node.start()
    }

    /// After a basebackup into node `i`: its own pg_ha_node.conf, an empty pg_test_extra.conf, and
    /// `application_name=nodeN` in the primary_conninfo pg_basebackup -R wrote.
    fn configure_standby(&self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        self.write_node_conf(i)?;
        self.write_file(&node.data_dir.join(conf::EXTRA_CONF), "")?;
        let auto_path = node.data_dir.join("postgresql.auto.conf");
        let auto = std::fs::read_to_string(&auto_path)?;
        let patched = conf::with_application_name(&auto, &node.name)
            .ok_or_else(|| err(format!("no primary_conninfo in {}", auto_path.display())))?;
        self.write_file(&auto_path, &patched)
    }

    fn write_node_conf(&self, i: usize) -> Result<()> {
        let n = &self.nodes[i];
        let socket_dir = n.dir.to_string_lossy();
        let nc = NodeConf {
            name: &n.name,
            host: &n.host,
            pg_port: n.pg_port,
            agent_port: n.agent_port,
            socket_dir: &socket_dir,
            zone: &n.zone,
        };
        self.write_file(
            &n.data_dir.join(conf::NODE_CONF),
            &conf::node(&nc, self.spec.preload_pg_ha),
        )?;
        self.write_file(&n.data_dir.join(conf::EXTRA_CONF), "")
    }

    /// Writes `text` to `path` and makes it owned by the postgres account.
    fn write_file(&self, path: &Path, text: &str) -> Result<()> {
        std::fs::write(path, text).map_err(|e| err(format!("write {}: {e}", path.display())))?;
        self.user.chown(path)
    }

    // ---- access ----

    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    /// Node `i`, 0-based (`node(0)` is "node1").
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }
    /// The node called `name` ("node2").
    pub fn node_by_name(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
    /// The cluster's temp directory.
    pub fn base_dir(&self) -> &Path {
        &self.base
    }
    /// The shared secret in `ha.auth_token_file`.
    pub fn token(&self) -> &str {
        &self.token
    }
    pub fn token_file(&self) -> &Path {
        &self.token_file
    }
    /// How long [`Cluster::start`] took.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }
    /// Every node's agent address, in node order (`ha.peers`).
    pub fn agent_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(Node::agent_addr).collect()
    }
    /// A libpq multi-host conninfo listing every node, with `target_session_attrs=read-write`: clients using it
    /// reach only a node that accepts writes.
    pub fn multi_host_conninfo(&self) -> String {
        let hosts: Vec<&str> = self.nodes.iter().map(|n| n.host.as_str()).collect();
        let ports: Vec<String> = self.nodes.iter().map(|n| n.pg_port.to_string()).collect();
        format!(
            "host={} port={} user=postgres dbname=postgres target_session_attrs=read-write connect_timeout=2",
            hosts.join(","),
            ports.join(",")
        )
    }
    /// The hosts' network ([`ClusterSpec::netns`]), through which links are cut.
    pub fn net(&self) -> Option<&crate::netns::Net> {
        self.net.as_ref()
    }

    /// The namespace clients run in, when the nodes live on hosts of their own.
    pub fn client_netns(&self) -> Option<String> {
        self.net.as_ref().map(|n| n.client_ns())
    }

    /// The running nodes that are not in recovery (normally one).
    pub fn primaries(&self) -> Vec<&Node> {
        self.nodes
            .iter()
            .filter(|n| n.is_running() && n.in_recovery().ok() == Some(false))
            .collect()
    }
    /// PIDs of every process of every node now (postmasters and their descendants).
    pub fn all_pids(&self) -> Vec<i32> {
        self.nodes.iter().flat_map(Node::pids).collect()
    }

    // ---- waiting ----

    /// Waits until `primary`'s pg_stat_replication shows each of `standbys` (application names) streaming.
    pub fn wait_streaming(
        &self,
        primary: &Node,
        standbys: &[&str],
        timeout: Duration,
    ) -> Result<()> {
        wait_until(
            timeout,
            &format!("{standbys:?} streaming from {}", primary.name),
            || {
                let rows = primary.query_strings(
                    "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'",
                )?;
                let streaming: Vec<String> = rows
                    .into_iter()
                    .filter_map(|r| r.into_iter().next().flatten())
                    .collect();
                let missing: Vec<&&str> = standbys
                    .iter()
                    .filter(|s| !streaming.iter().any(|x| x == **s))
                    .collect();
                if missing.is_empty() {
                    Ok(true)
                } else {
                    Err(err(format!(
                        "not streaming yet: {missing:?} (streaming: {streaming:?})"
                    )))
                }
            },
        )
    }

    /// Waits until every running standby has replayed `primary`'s current WAL insert position.
    pub fn wait_replayed(&self, primary: &Node, timeout: Duration) -> Result<()> {
        let lsn = primary
            .query_value("SELECT pg_current_wal_lsn()")?
            .ok_or_else(|| err("pg_current_wal_lsn() returned NULL"))?;
        for n in self
            .nodes
            .iter()
            .filter(|n| n.name != primary.name && n.is_running())
        {
            let sql = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
            wait_until(
                timeout,
                &format!("{} to replay up to {lsn}", n.name),
                || Ok(n.query_value(&sql)?.as_deref() == Some("t")),
            )?;
        }
        Ok(())
    }
}
