//! Foundation (issue 2) on real 3-node clusters: the extension installs, every node's `ha.status`
//! shows all nodes with the right roles and WAL positions, a killed node turns `unreachable` and comes
//! back, agent RPCs need the cluster token, bad settings are clear errors, and the agent is restarted
//! by the postmaster. Nothing here decides leadership yet, so no invariant I1–I6 is at stake; the
//! token test guards the precondition of all of them (agents never trust a peer without the token).

use pg_test::{agent_status, wait_until, Cluster, ClusterSpec, Node};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// One `ha.status` row: (node_name, role, healthy, flush_lsn, is_self).
type Row = (String, String, bool, Option<String>, bool);

/// `ha.status` as seen from `n`.
fn status(n: &Node) -> pg_test::Result<Vec<Row>> {
    let rows = n.query_strings(
        "SELECT node_name, role, healthy::text, flush_lsn::text, is_self::text FROM ha.status",
    )?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
                r[2].as_deref() == Some("true"),
                r[3].clone(),
                r[4].as_deref() == Some("true"),
            )
        })
        .collect())
}

fn role_of(n: &Node, name: &str) -> pg_test::Result<Option<(String, bool)>> {
    Ok(status(n)?
        .into_iter()
        .find(|r| r.0 == name)
        .map(|r| (r.1, r.2)))
}

/// Every node lists all three nodes with the role each really has, and the WAL position each reports
/// reaches a write made on the leader.
#[test]
fn status_lists_every_node_with_roles_and_lsns() {
    let c = Cluster::start(ClusterSpec::default()).unwrap();
    let leader = c.node(0);
    leader
        .query_strings("CREATE TABLE t(x int); INSERT INTO t VALUES (1)")
        .unwrap();
    let lsn = leader
        .query_value("SELECT pg_current_wal_flush_lsn()::text")
        .unwrap()
        .unwrap();
    for viewer in c.nodes() {
        wait_until(
            T,
            &format!(
                "{}'s ha.status to show all 3 nodes at or past {lsn}",
                viewer.name()
            ),
            || {
                let rows = status(viewer)?;
                if rows.len() != 3 || rows.iter().filter(|r| r.4).count() != 1 {
                    return Ok(false);
                }
                for n in c.nodes() {
                    let Some(r) = rows.iter().find(|r| r.0 == n.name()) else {
                        return Ok(false);
                    };
                    let want = if n.name() == "node1" {
                        "leader"
                    } else {
                        "observer"
                    };
                    if r.1 != want || !r.2 {
                        return Ok(false);
                    }
                    let reached = viewer
                        .query_value(&format!(
                            "SELECT '{}'::pg_lsn >= '{lsn}'::pg_lsn",
                            r.3.clone().unwrap_or_else(|| "0/0".into())
                        ))?
                        .as_deref()
                        == Some("t");
                    if !reached {
                        return Ok(false);
                    }
                }
                Ok(true)
            },
        )
        .unwrap();
    }
    // The self row's LSN is the node's own: on a standby, what it received.
    let own = c
        .node(1)
        .query_value(
            "SELECT flush_lsn = pg_last_wal_receive_lsn() OR flush_lsn = pg_last_wal_replay_lsn() FROM ha.status WHERE is_self",
        )
        .unwrap();
    assert_eq!(own.as_deref(), Some("t"));
    // ha.history exists and is readable (empty until bootstrap).
    assert_eq!(
        leader
            .query_value("SELECT count(*) FROM ha.history")
            .unwrap()
            .as_deref(),
        Some("0")
    );
}

/// A SIGKILLed node turns `unreachable` (and unhealthy) in its peers' `ha.status`, and healthy again
/// after it restarts.
#[test]
fn killed_node_turns_unreachable_then_healthy_after_restart() {
    let c = Cluster::start(ClusterSpec::default()).unwrap();
    let victim = c.node(2);
    for viewer in &c.nodes()[..2] {
        wait_until(T, "node3 healthy", || {
            Ok(role_of(viewer, "node3")? == Some(("observer".into(), true)))
        })
        .unwrap();
    }
    victim.kill9().unwrap();
    for viewer in &c.nodes()[..2] {
        wait_until(
            T,
            &format!("{} to see node3 unreachable", viewer.name()),
            || Ok(role_of(viewer, "node3")? == Some(("unreachable".into(), false))),
        )
        .unwrap();
        assert!(viewer.log_contains("is unreachable"));
    }
    victim.start().unwrap();
    for viewer in &c.nodes()[..2] {
        wait_until(
            T,
            &format!("{} to see node3 healthy again", viewer.name()),
            || Ok(role_of(viewer, "node3")? == Some(("observer".into(), true))),
        )
        .unwrap();
    }
}

/// Agents never trust a caller without the cluster token: no token and a wrong token are both
/// rejected (UNAUTHENTICATED) and logged; the right one is answered.
#[test]
fn rpc_without_the_right_token_is_rejected_and_logged() {
    let c = Cluster::start(ClusterSpec {
        nodes: 1,
        ..Default::default()
    })
    .unwrap();
    let n = c.node(0);
    wait_until(T, "agent to answer with the token", || {
        Ok(agent_status(&n.agent_addr(), Some(c.token())).is_ok())
    })
    .unwrap();
    let st = agent_status(&n.agent_addr(), Some(c.token())).unwrap();
    assert_eq!(st.node_name, "node1");
    assert_eq!(st.role, "leader");
    assert!(st.flush_lsn > 0);

    let none = agent_status(&n.agent_addr(), None).unwrap_err();
    assert_eq!(none.code(), tonic::Code::Unauthenticated, "{none:?}");
    let wrong =
        agent_status(&n.agent_addr(), Some("0123456789abcdef0123456789abcdef")).unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated, "{wrong:?}");
    wait_until(T, "the rejection in the log", || {
        Ok(n.log_contains("pg_ha: rejected Status RPC from 127.0.0.1:")
            && n.log_contains("missing token"))
    })
    .unwrap();
}

/// A malformed `ha.agent_address` stops the server at start with a clear message; a malformed
/// `ha.peers` on reload is refused and the old value stays.
#[test]
fn bad_settings_are_clear_errors() {
    let c = Cluster::start(ClusterSpec {
        nodes: 1,
        ..Default::default()
    })
    .unwrap();
    let n = c.node(0);
    let before = n.query_value("SHOW ha.peers").unwrap();
    n.append_conf("ha.peers = '127.0.0.1:1,,nonsense'").unwrap();
    n.reload().unwrap();
    wait_until(T, "the reload to be refused in the log", || {
        Ok(n.log_contains("invalid value for parameter \"ha.peers\"")
            && n.log_contains("entry 2 is empty"))
    })
    .unwrap();
    assert_eq!(n.query_value("SHOW ha.peers").unwrap(), before);
    n.append_conf("ha.systemd_unit = 'postgresql@'").unwrap();
    n.reload().unwrap();
    wait_until(T, "the bad unit name to be refused in the log", || {
        Ok(
            n.log_contains("invalid value for parameter \"ha.systemd_unit\"")
                && n.log_contains("expected a service or a template instance"),
        )
    })
    .unwrap();
    assert_eq!(
        n.query_value("SHOW ha.systemd_unit").unwrap().as_deref(),
        Some("")
    );

    n.stop().unwrap();
    n.append_conf("ha.peers = '127.0.0.1:1'").unwrap();
    n.append_conf("ha.systemd_unit = ''").unwrap();
    n.append_conf("ha.agent_address = 'no-port-here'").unwrap();
    assert!(n.start().is_err(), "the server must refuse to start");
    assert!(n.log_contains(
        "FATAL:  pg_ha: invalid value for parameter \"ha.agent_address\": \"no-port-here\" has no port"
    ));
}

/// The agent is a background worker the postmaster restarts: terminated, it comes back with a new PID.
#[test]
fn agent_is_restarted_after_it_is_terminated() {
    let c = Cluster::start(ClusterSpec {
        nodes: 1,
        ..Default::default()
    })
    .unwrap();
    let n = c.node(0);
    let pid_sql = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_ha agent'";
    let mut first = None;
    wait_until(T, "the agent to run", || {
        first = n.query_value(pid_sql)?;
        Ok(first.is_some())
    })
    .unwrap();
    n.query_value(&format!(
        "SELECT pg_terminate_backend({})",
        first.clone().unwrap()
    ))
    .unwrap();
    wait_until(T, "a new agent process", || {
        let now = n.query_value(pid_sql)?;
        Ok(now.is_some() && now != first)
    })
    .unwrap();
    wait_until(T, "the new agent to answer", || {
        Ok(n.agent_status().is_ok())
    })
    .unwrap();
}
