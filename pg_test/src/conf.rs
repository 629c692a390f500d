//! The configuration files the harness writes.
//!
//! Layout of each data directory:
//! - `postgresql.conf`: initdb's file plus the settings common to every node (written once on node1; the
//!   basebackups copy it), ending with `include_if_exists` of the two per-node files below, in this order:
//! - `pg_ha_node.conf`: this node's own settings (address, port, socket dir, `ha.node_name`, ...), rewritten
//!   for every node after its basebackup.
//! - the spec's `extra_conf` lines (common to all nodes).
//! - `pg_test_extra.conf`: per-node lines a test adds later ([`crate::Node::append_conf`]).
//! - `postgresql.auto.conf`: Postgres' own (ALTER SYSTEM); on standbys it holds pg_basebackup -R's
//!   `primary_conninfo`, to which the harness adds `application_name=nodeN`.

/// Per-node facts the config needs.
pub(crate) struct NodeConf<'a> {
    pub name: &'a str,
    pub host: &'a str,
    pub pg_port: u16,
    pub agent_port: u16,
    pub socket_dir: &'a str,
    pub zone: &'a str,
}

pub(crate) const NODE_CONF: &str = "pg_ha_node.conf";
pub(crate) const EXTRA_CONF: &str = "pg_test_extra.conf";

/// A single-quoted postgresql.conf string.
pub(crate) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The libpq conninfo of a node's Postgres as peers and the harness use it.
pub(crate) fn conninfo(host: &str, port: u16) -> String {
    format!("host={host} port={port} user=postgres dbname=postgres")
}

/// Lines appended to node1's postgresql.conf (copied to the other nodes by pg_basebackup).
pub(crate) fn common(spec: &crate::ClusterSpec, peers: &str, token_file: &str) -> String {
    let mut c = String::from("\n# ---- pg_test: settings common to every node ----\n");
    let mut set = |k: &str, v: &str| c.push_str(&format!("{k} = {v}\n"));
    set("wal_level", "replica");
    set("hot_standby", "on");
    set("wal_log_hints", "on");
    set("max_wal_senders", "16");
    set("max_replication_slots", "16");
    set("wal_keep_size", "'256MB'");
    set("max_connections", "50");
    set("shared_buffers", "'32MB'");
    set("logging_collector", "off");
    set("log_line_prefix", "'%m [%p] %q%a '");
    set("log_timezone", "'UTC'");
    set("fsync", if spec.fsync_off { "off" } else { "on" });
    if spec.preload_pg_ha {
        set("shared_preload_libraries", "'pg_ha'");
        set("ha.peers", &quote(peers));
        set("ha.auth_token_file", &quote(token_file));
        if let Some(ms) = spec.failover_timeout_ms {
            set("ha.failover_timeout", &ms.to_string());
        }
    }
    c.push_str(&format!("include_if_exists = {}\n", quote(NODE_CONF)));
    if !spec.extra_conf.is_empty() {
        c.push_str("# ---- pg_test: the spec's extra_conf ----\n");
        for line in &spec.extra_conf {
            c.push_str(line);
            c.push('\n');
        }
    }
    c.push_str(&format!("include_if_exists = {}\n", quote(EXTRA_CONF)));
    c
}

/// The content of `pg_ha_node.conf` for one node.
pub(crate) fn node(n: &NodeConf<'_>, preload_pg_ha: bool) -> String {
    let mut c = format!("# ---- pg_test: settings of {} only ----\n", n.name);
    let mut set = |k: &str, v: &str| c.push_str(&format!("{k} = {v}\n"));
    set("listen_addresses", &quote(n.host));
    set("port", &n.pg_port.to_string());
    set("unix_socket_directories", &quote(n.socket_dir));
    set("cluster_name", &quote(n.name));
    if preload_pg_ha {
        set("ha.node_name", &quote(n.name));
        set(
            "ha.agent_address",
            &quote(&format!("{}:{}", n.host, n.agent_port)),
        );
        set("ha.conninfo", &quote(&conninfo(n.host, n.pg_port)));
        set("ha.zone", &quote(n.zone));
    }
    c
}

/// pg_hba.conf: trust for local sockets and each host address given (CIDR), including replication.
pub(crate) fn hba(cidrs: &[String]) -> String {
    let mut c = String::from("# pg_test: trust everything local (test clusters only)\n");
    c.push_str("local all all trust\nlocal replication all trust\n");
    for cidr in cidrs {
        c.push_str(&format!(
            "host all all {cidr} trust\nhost replication all {cidr} trust\n"
        ));
    }
    c
}

/// Appends `application_name=NAME` to the `primary_conninfo` value pg_basebackup -R wrote into
/// postgresql.auto.conf (libpq takes the last value of a repeated keyword). Other lines are kept.
/// `None` if there is no `primary_conninfo` line.
pub(crate) fn with_application_name(auto_conf: &str, name: &str) -> Option<String> {
    let mut found = false;
    let lines: Vec<String> = auto_conf
        .lines()
        .map(|line| match line.rfind('\'') {
            Some(close) if line.trim_start().starts_with("primary_conninfo") => {
                found = true;
                format!("{} application_name={name}'", &line[..close])
            }
            _ => line.to_string(),
        })
        .collect();
    found.then(|| lines.join("\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_name_is_added_to_primary_conninfo() {
        let auto = "# Do not edit this file manually!\nprimary_conninfo = 'user=postgres passfile=''/x/.pgpass'' host=127.0.0.1 port=5432 sslmode=prefer'\n";
        let out = with_application_name(auto, "node2").unwrap();
        assert!(out.starts_with("# Do not edit"));
        assert!(
            out.contains("sslmode=prefer application_name=node2'\n"),
            "{out}"
        );
        assert!(with_application_name("# nothing\n", "n").is_none());
    }

    #[test]
    fn pg_ha_settings_are_written_only_when_preloaded() {
        let spec = crate::ClusterSpec {
            failover_timeout_ms: Some(1500),
            ..Default::default()
        };
        let common = common(&spec, "127.0.0.1:1,127.0.0.1:2", "/t/auth_token");
        assert!(common.contains("shared_preload_libraries = 'pg_ha'\n"));
        assert!(common.contains("ha.peers = '127.0.0.1:1,127.0.0.1:2'\n"));
        assert!(common.contains("ha.auth_token_file = '/t/auth_token'\n"));
        assert!(common.contains("ha.failover_timeout = 1500\n"));
        assert!(common.contains("include_if_exists = 'pg_ha_node.conf'\n"));
        let nc = NodeConf {
            name: "node2",
            host: "127.0.0.1",
            pg_port: 5,
            agent_port: 6,
            socket_dir: "/t/node2",
            zone: "z1",
        };
        let node_text = node(&nc, true);
        for line in [
            "ha.node_name = 'node2'",
            "ha.agent_address = '127.0.0.1:6'",
            "ha.conninfo = 'host=127.0.0.1 port=5 user=postgres dbname=postgres'",
            "ha.zone = 'z1'",
            "port = 5",
        ] {
            assert!(node_text.contains(line), "{line} in {node_text}");
        }
        let plain = crate::ClusterSpec::plain(3);
        assert!(!common_has_ha(&super::common(&plain, "x", "y")));
        assert!(!common_has_ha(&node(&nc, false)));
    }

    fn common_has_ha(text: &str) -> bool {
        text.lines()
            .any(|l| l.starts_with("ha.") || l.starts_with("shared_preload_libraries"))
    }

    #[test]
    fn quoting_doubles_single_quotes() {
        assert_eq!(quote("it's"), "'it''s'");
    }
}
