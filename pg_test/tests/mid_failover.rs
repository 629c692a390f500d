//! Failures in the middle of a leadership change (issue 5), driven with the test-only
//! `ha.debug_failpoint` setting. Automatic failover is paused so that `ha.failover()` decides who
//! coordinates.

use pg_test::{count_lost, ha, wait_until, write_load, Cluster, ClusterSpec, Node};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn ha3() -> Cluster {
    let c = Cluster::start(ClusterSpec::ha_any1(3)).unwrap();
    c.node(0)
        .query_strings("SELECT ha.pause(); CREATE TABLE probe(x int)")
        .unwrap();
    c.wait_replayed(c.node(0), T).unwrap();
    c
}

fn wait_leader_lost(n: &Node) {
    ha::wait_leader_lost(n, T).unwrap()
}

/// `SELECT ha.failover()` on `n` in a thread (it may never answer if `n` is killed meanwhile).
fn failover_async(n: &Node) {
    let mut client = n.connect().unwrap();
    std::thread::spawn(move || {
        let _ = client.query_one("SELECT ha.failover()", &[]);
    });
}

fn failover_until_ok(n: &Node) -> String {
    ha::failover_until_ok(n, T).unwrap()
}

fn wait_writable(n: &Node) {
    ha::wait_writable(n, T).unwrap()
}

fn wait_follower(n: &Node) {
    ha::wait_follower(n, T).unwrap()
}

fn assert_one_leader_per_term(leader: &Node) {
    assert_eq!(
        ha::terms_with_two_leaders(leader).unwrap(),
        0,
        "I1: two leaders in one term"
    );
}

/// I3, I1: the coordinator is SIGKILLed after it collected its pledges and before it promoted anyone.
/// The pledged nodes no longer follow the old leader; once the old leader and the coordinator are back
/// (as a supervisor would restart them), another coordinator runs a higher term and the cluster
/// converges on one leader with every acknowledged write.
#[test]
fn coordinator_killed_after_pledges_cluster_converges() {
    let c = ha3();
    let (n1, n2, n3) = (c.node(0), c.node(1), c.node(2));
    let load = write_load(&c.multi_host_conninfo()).unwrap();
    load.wait_for_more_acks(50, T).unwrap();
    ha::set_failpoint(n2, "coordinator_stall_after_pledges", T).unwrap();
    n1.kill9().unwrap();
    wait_leader_lost(n2);
    failover_async(n2);
    wait_until(T, "node2 to have its pledges and stall", || {
        Ok(n2.log_contains("failpoint coordinator_stall_after_pledges: stalling"))
    })
    .unwrap();
    n2.kill9().unwrap();
    ha::set_failpoint(n2, "", T).unwrap();
    let _ = n1.start(); // fenced: a majority pledged a higher term
    n2.start().unwrap();
    wait_leader_lost(n3);
    let name = failover_until_ok(n3);
    let leader = c.node_by_name(&name).unwrap();
    wait_writable(leader);
    for n in c.nodes().iter().filter(|n| n.name() != name) {
        wait_follower(n);
    }
    load.wait_for_more_acks(20, T).unwrap();
    let acked = load.stop();
    c.wait_replayed(leader, T).unwrap();
    for n in c.nodes() {
        let lost = count_lost(n, &acked).unwrap();
        assert!(
            lost.is_empty(),
            "I3: {} acknowledged writes missing on {}",
            lost.len(),
            n.name()
        );
    }
    assert_one_leader_per_term(leader);
}

/// I4, I6: a candidate is promoted but never establishes (its fence never opens), then dies. Another
/// coordinator promotes someone else under a higher term; the failed candidate, restarted, rejoins as
/// a follower (rewinding whatever WAL it holds beyond the new leader's history) and never accepted a
/// write in its term.
#[test]
fn promoted_but_never_established_candidate_rejoins() {
    let c = ha3();
    let (n1, n2, n3) = (c.node(0), c.node(1), c.node(2));
    for n in [n2, n3] {
        ha::set_failpoint(n, "candidate_never_establish", T).unwrap();
    }
    n1.kill9().unwrap();
    wait_leader_lost(n3);
    let cand_name = failover_until_ok(n3);
    let cand = c.node_by_name(&cand_name).unwrap();
    let other = if cand_name == "node2" { n3 } else { n2 };
    wait_until(T, "the candidate to be promoted", || {
        Ok(cand.in_recovery().ok() == Some(false))
    })
    .unwrap();
    assert!(
        cand.query_strings("INSERT INTO probe VALUES (2)").is_err(),
        "I6: a promoted candidate that has not established accepted a write"
    );
    cand.kill9().unwrap();
    ha::set_failpoint(other, "", T).unwrap();
    ha::set_failpoint(cand, "", T).unwrap();
    let _ = n1.start();
    wait_leader_lost(other);
    let name = failover_until_ok(other);
    assert_ne!(name, cand_name);
    let leader = c.node_by_name(&name).unwrap();
    wait_writable(leader);
    let _ = cand.start(); // its agent stops it again to rejoin
    wait_follower(cand);
    assert!(
        cand.log_contains("pg_ha: rejoining as a follower of"),
        "I4: the failed candidate did not go through the rejoin"
    );
    if cand.log_contains("pg_rewind first") {
        assert!(cand.log_contains("pg_ha: rejoin: pg_rewind done"));
    }
    for n in c.nodes().iter().filter(|n| n.name() != name) {
        wait_follower(n);
    }
    assert_eq!(
        leader
            .query_value("SELECT count(*) FROM probe WHERE x = 2")
            .unwrap()
            .as_deref(),
        Some("0")
    );
    assert_one_leader_per_term(leader);
}

/// I4: when pg_rewind cannot work, the old leader does not serve diverged WAL: it says so in ha.status
/// (unhealthy, with the reason) and the log, and waits for an operator; with
/// `ha.reclone_on_rewind_failure = on` it re-clones itself from the new leader with pg_basebackup.
#[test]
fn rewind_failure_is_reported_and_reclone_repairs() {
    let c = ha3();
    let (n1, n2) = (c.node(0), c.node(1));
    n1.query_strings("INSERT INTO probe VALUES (7)").unwrap();
    ha::set_failpoint(n1, "rewind_fails", T).unwrap();
    n1.kill9().unwrap();
    wait_leader_lost(n2);
    let name = failover_until_ok(n2);
    let leader = c.node_by_name(&name).unwrap();
    wait_writable(leader);
    let _ = n1.start(); // restarts as a primary of an older term; its agent tries to rejoin
    wait_until(T, "node1's ha.status to report the failed rewind", || {
        Ok(n1
            .query_value("SELECT last_error FROM ha.status WHERE is_self AND NOT healthy")?
            .is_some_and(|e| e.contains("pg_rewind against") && e.contains("new base backup")))
    })
    .unwrap();
    assert!(n1.log_contains("pg_rewind failed again; this node needs a new base backup"));
    assert!(
        n1.in_recovery().unwrap(),
        "I4: the node that failed to rewind serves as a primary"
    );

    // The operator allows re-cloning and clears the marker: the agent re-clones node1.
    // The agent must have the new setting before it sees the marker gone (else it retries without it).
    let reloads = |n: &Node| {
        n.read_log()
            .matches("pg_ha: configuration reloaded")
            .count()
    };
    let before = reloads(n1);
    n1.append_conf("ha.reclone_on_rewind_failure = on").unwrap();
    n1.reload().unwrap();
    wait_until(T, "node1's agent to reload its settings", || {
        Ok(reloads(n1) > before)
    })
    .unwrap();
    std::fs::remove_file(n1.data_dir().join("pg_ha.rejoin_failed")).unwrap();
    wait_until(T, "node1 to be re-cloned and follow", || {
        Ok(n1.log_contains("pg_ha: rejoin: re-cloned from")
            && n1
                .query_value("SELECT role FROM ha.status WHERE is_self")?
                .as_deref()
                == Some("follower"))
    })
    .unwrap();
    c.wait_replayed(leader, T).unwrap();
    assert_eq!(
        n1.query_value("SELECT count(*) FROM probe WHERE x = 7")
            .unwrap()
            .as_deref(),
        Some("1")
    );
}
