//! The seed-002 race on a real cluster (issue 4): a member is added while an older member is away, a
//! write is acknowledged with the new member's help while the older members lag, the leader crashes,
//! and a coordinator that never saw the membership change runs the failover. The write must survive.

use pg_test::{ha, wait_until, Cluster, ClusterSpec};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// I3, I5: the coordinator (node3) starts from the old ruleset {node1, node2, node3}; a recruit
/// (node2) reports the newer one with node4; the quorum is re-checked against it, node4 is asked, and
/// the write that only node1 and node4 had is on the new leader.
#[test]
fn write_acknowledged_with_a_new_member_survives_failover_by_a_stale_coordinator() {
    let c = Cluster::start(ClusterSpec {
        nodes: 4,
        add_members: false,
        failover_timeout_ms: Some(1500),
        ..ClusterSpec::ha(4)
    })
    .unwrap();
    let (n1, n2, n3, n4) = (c.node(0), c.node(1), c.node(2), c.node(3));
    ha::add_members(n1, &["node2", "node3"], "any 1", T).unwrap();
    // Only the failover this test runs by hand: no automatic race.
    n1.query_strings("SELECT ha.pause(); CREATE TABLE w(id int)")
        .unwrap();
    c.wait_replayed(n1, T).unwrap();

    // node3 is away while node4 joins: the change is acknowledged under the old ruleset by node2.
    n3.stop().unwrap();
    wait_until(T, "add_member node4", || {
        Ok(n1.query_strings("SELECT ha.add_member('node4')").is_ok())
    })
    .unwrap();
    assert_eq!(
        n3.name(),
        "node3",
        "node3 is down and so never saw ruleset v5 (cohort with node4)"
    );
    // node2 goes away too: a write is now acknowledged by node1 + node4 only (any 1 under v5).
    n2.stop().unwrap();
    n1.query_strings("INSERT INTO w VALUES (42)").unwrap();
    wait_until(T, "node4 to have the write", || {
        Ok(n4.query_value("SELECT count(*) FROM w")?.as_deref() == Some("1"))
    })
    .unwrap();

    // The leader crashes; the older members come back; node3 (old view) coordinates the failover.
    n1.kill9().unwrap();
    n3.start().unwrap();
    n2.start().unwrap();
    let v_on_n3 = n3
        .query_value("SELECT max(version) FROM ha.ruleset_history")
        .unwrap();
    assert_eq!(
        v_on_n3.as_deref(),
        Some("4"),
        "node3 must not have seen the change"
    );
    ha::wait_leader_lost(n3, T).unwrap();
    let name = ha::failover_until_ok(n3, T).unwrap();
    let new = c.node_by_name(&name).unwrap();
    assert!(
        n3.log_contains("a recruit holds a newer ruleset (v5); revocation now checked against it"),
        "I5: the stale coordinator must re-check its quorum under the newer ruleset"
    );
    wait_until(T, "the new leader to be established", || {
        Ok(new.query_strings("CREATE TABLE probe(x int)").is_ok())
    })
    .unwrap();
    assert_eq!(
        new.query_value("SELECT count(*) FROM w WHERE id = 42")
            .unwrap()
            .as_deref(),
        Some("1"),
        "I3: the write acknowledged with node4's help was lost by a failover from the old view"
    );
}
