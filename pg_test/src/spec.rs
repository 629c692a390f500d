//! What cluster to start.

/// The shape and configuration of a test cluster.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Number of nodes (node1 is initdb'd and primary, the others are basebackups streaming from it).
    pub nodes: usize,
    /// Zone of each node (`ha.zone`); missing entries are "default".
    pub zones: Vec<String>,
    /// Write `shared_preload_libraries='pg_ha'` and the `ha.*` settings. Needs pg_ha installed
    /// (`/usr/lib/postgresql/15/lib/pg_ha.so`).
    pub preload_pg_ha: bool,
    /// Run `CREATE EXTENSION pg_ha` on node1 before the basebackups.
    pub create_extension: bool,
    /// Run `SELECT ha.bootstrap()` on node1 after `CREATE EXTENSION` (interface.md, setup step 1).
    pub bootstrap: bool,
    /// After every standby streams, run `SELECT ha.add_member('nodeN')` on node1 for each of them
    /// (retried until it succeeds or `setup_timeout` passes: a node must first show up as an observer).
    pub add_members: bool,
    /// `SELECT ha.set_policy(...)` on node1 after adding members, e.g. `Some("any 1".into())`.
    pub policy: Option<String>,
    /// `ha.failover_timeout` in ms; `None` leaves the extension's default.
    pub failover_timeout_ms: Option<u64>,
    /// Extra postgresql.conf lines for every node (written after the harness' own, so they override them).
    pub extra_conf: Vec<String>,
    /// Host address of each node (listen address, conninfo, agent address); missing entries are 127.0.0.1.
    /// Kept per node so nodes can later live on their own addresses (network namespaces).
    pub hosts: Vec<String>,
    /// Put every node on a host of its own: a network namespace with its own address, joined to the others
    /// through a bridge, plus a namespace for the clients ([`crate::netns`]); needs root. Links can then be
    /// cut ([`crate::nemesis`]). `hosts` is ignored (the addresses are 10.77.0.N).
    pub netns: bool,
    /// `fsync = off`: much faster on a shared machine and safe for process kills (the OS page cache
    /// survives them); only an OS crash would lose data. Synchronous replication waits are not affected.
    pub fsync_off: bool,
    /// Start the standbys and wait until they stream. `false` only initdb's and starts node1 (the others'
    /// directories and ports are reserved but not created).
    pub start_standbys: bool,
    /// Deadline for each setup step that waits (start, streaming, add_member).
    pub setup_timeout_secs: u64,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            nodes: 3,
            zones: Vec::new(),
            preload_pg_ha: true,
            create_extension: true,
            bootstrap: false,
            add_members: false,
            policy: None,
            failover_timeout_ms: None,
            extra_conf: Vec::new(),
            hosts: Vec::new(),
            netns: false,
            fsync_off: true,
            start_standbys: true,
            setup_timeout_secs: 60,
        }
    }
}

impl ClusterSpec {
    /// `n` nodes of plain streaming replication, without pg_ha (works before the extension is installed).
    pub fn plain(n: usize) -> Self {
        ClusterSpec {
            nodes: n,
            preload_pg_ha: false,
            create_extension: false,
            ..Default::default()
        }
    }

    /// `n` nodes with pg_ha preloaded and created, bootstrapped on node1, every other node added as a member.
    pub fn ha(n: usize) -> Self {
        ClusterSpec {
            nodes: n,
            bootstrap: true,
            add_members: true,
            ..Default::default()
        }
    }

    /// [`ClusterSpec::ha`] with policy `any 1` and a 1.5 s failover timeout: what most leadership tests use.
    pub fn ha_any1(n: usize) -> Self {
        ClusterSpec {
            policy: Some("any 1".into()),
            failover_timeout_ms: Some(1500),
            ..ClusterSpec::ha(n)
        }
    }

    /// Zone of node `i` (0-based).
    pub fn zone(&self, i: usize) -> String {
        self.zones
            .get(i)
            .cloned()
            .unwrap_or_else(|| "default".into())
    }

    /// Host address of node `i` (0-based).
    pub fn host(&self, i: usize) -> String {
        self.hosts
            .get(i)
            .cloned()
            .unwrap_or_else(|| "127.0.0.1".into())
    }
}
