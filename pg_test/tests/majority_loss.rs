//! A permanently lost majority (issue 7): pg_ha never fails over without a quorum, and the operator's
//! override `ha.unsafe_force_leader(confirm)` makes a survivor the leader of a higher term alone; the
//! lost nodes, once back, follow it and can be re-added. Each test names the invariant it checks (or
//! says which one the override deliberately bypasses).

use pg_test::{count_lost, ha, wait_until, write_load, Cluster, ClusterSpec, Node};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
const CONFIRM: &str = "I accept losing acknowledged writes";
const FAILOVER_TIMEOUT: Duration = Duration::from_millis(1500);

fn history(n: &Node) -> Vec<String> {
    ha::history(n).unwrap()
}

/// `role:member` of `name` in `viewer`'s `ha.status`.
fn wait_status(viewer: &Node, name: &str, want: &str) {
    wait_until(
        T,
        &format!("{}'s ha.status to show {name} as {want}", viewer.name()),
        || {
            Ok(viewer
                .query_value(&format!(
                    "SELECT role || ':' || member FROM ha.status WHERE node_name = '{name}'"
                ))?
                .as_deref()
                == Some(want))
        },
    )
    .unwrap();
}

fn refused(n: &Node, sql: &str) -> String {
    match n.query_strings(sql) {
        Ok(rows) => panic!("{sql} on {} was accepted: {rows:?}", n.name()),
        Err(e) => e.to_string(),
    }
}

/// I1/I2 at work, then the override (superusers only, not ha_admin): a 3-node `any 1` cluster under a write load loses its leader and
/// one follower for good. No coordinator can recruit a majority of the cohort (I1: recruit quorums are
/// majorities), so no failover happens and the survivor stays a read-only standby: nothing can revoke
/// the old leader's term (I2) without a quorum. `ha.unsafe_force_leader` refuses a wrong confirmation
/// (changing nothing), then with the right one makes the survivor the writable leader of a higher term,
/// cohort of one. The two lost nodes, restarted, see the newer term and rejoin as observers that follow
/// it (never taking over); they are re-added, the policy is set back to `any 1`, and every node's
/// history has exactly one leader per term (I1 on the rows the cluster keeps).
#[test]
fn majority_lost_no_failover_then_override_and_rejoin() {
    let c = Cluster::start(ClusterSpec {
        policy: Some("any 1".into()),
        failover_timeout_ms: Some(FAILOVER_TIMEOUT.as_millis() as u64),
        ..ClusterSpec::ha(3)
    })
    .unwrap();
    let (old_leader, lost_follower, survivor) = (c.node(0), c.node(1), c.node(2));
    old_leader
        .query_strings("CREATE TABLE probe(x int)")
        .unwrap();
    c.wait_replayed(old_leader, T).unwrap();

    // Superusers only: a member of ha_admin (who may run every other cluster change) may not.
    old_leader
        .query_strings("CREATE ROLE operator LOGIN IN ROLE ha_admin")
        .unwrap();
    c.wait_replayed(old_leader, T).unwrap();
    let e = survivor
        .connect_as("operator")
        .unwrap()
        .simple_query(&format!("SELECT ha.unsafe_force_leader('{CONFIRM}')"))
        .expect_err("ha_admin ran ha.unsafe_force_leader")
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(
        e.contains("permission denied for function unsafe_force_leader"),
        "{e}"
    );

    // While the leader is healthy the override is refused: this is not a majority loss.
    let e = refused(
        survivor,
        &format!("SELECT ha.unsafe_force_leader('{CONFIRM}')"),
    );
    assert!(
        e.contains("the established leader node1 (term 1) is reachable and healthy from here"),
        "{e}"
    );

    let load = write_load(&c.multi_host_conninfo()).unwrap();
    load.wait_for_more_acks(100, T).unwrap();
    old_leader.kill9().unwrap();
    lost_follower.kill9().unwrap();
    let killed_at = Instant::now();
    let before = history(survivor);

    // No automatic failover: the survivor sees the leader lost, but alone it is not a majority of the
    // cohort, so it never races; for three failover timeouts it stays a standby that refuses writes.
    ha::wait_leader_lost(survivor, T).unwrap();
    while killed_at.elapsed() < FAILOVER_TIMEOUT * 4 {
        assert!(
            survivor.in_recovery().unwrap(),
            "I1/I2: the survivor promoted itself without a quorum"
        );
        assert!(
            survivor
                .query_strings("INSERT INTO probe VALUES (1)")
                .is_err(),
            "I1/I2: the survivor accepted a write without a quorum"
        );
        std::thread::sleep(Duration::from_millis(200)); // poll interval of an absence check
    }
    assert!(!survivor.log_contains("racing for term"));
    assert_eq!(history(survivor), before);

    // A wrong confirmation: a precise error, and nothing changes.
    let e = refused(survivor, "SELECT ha.unsafe_force_leader('wrong')");
    assert!(
        e.contains(&format!(
            "ha.unsafe_force_leader() needs the confirmation '{CONFIRM}' (got 'wrong'); nothing changed"
        )),
        "{e}"
    );
    assert_eq!(history(survivor), before);
    assert!(survivor.in_recovery().unwrap());

    // The override.
    let answer = survivor
        .query_value(&format!("SELECT ha.unsafe_force_leader('{CONFIRM}')"))
        .unwrap()
        .unwrap();
    eprintln!("ha.unsafe_force_leader: {answer}");
    assert!(
        answer.starts_with("node3 is leader of term 1001 without a quorum (was term 1 led by node1, cohort [node1, node2, node3], policy any 1)"),
        "{answer}"
    );
    assert!(answer.contains("may be lost"), "{answer}");
    ha::wait_writable(survivor, T).unwrap();
    let after = history(survivor);
    assert_eq!(after.len(), before.len() + 1);
    assert_eq!(
        after.last().unwrap(),
        "1001|node3|{node3}|zones 1|unsafe_force_leader"
    );
    assert!(survivor.log_contains(
        "WARNING:  pg_ha: unsafe_force_leader: node3 takes term 1001 WITHOUT a quorum"
    ));
    assert!(survivor.log_contains("commits acknowledged by the old leader beyond"));
    load.wait_for_more_acks(50, T).unwrap();

    // The lost nodes come back: they follow the leader of the newer term as observers; neither takes
    // over (the old leader is rewound).
    let _ = old_leader.start();
    let _ = lost_follower.start();
    wait_status(survivor, "node1", "observer:false");
    wait_status(survivor, "node2", "observer:false");
    for n in [old_leader, lost_follower] {
        wait_until(T, &format!("{} to be a standby", n.name()), || {
            Ok(n.in_recovery().unwrap_or(false))
        })
        .unwrap();
        assert!(n.query_strings("INSERT INTO probe VALUES (1)").is_err());
    }
    assert!(old_leader.log_contains("rejoining as a follower of node3 (leader of term 1001)"));

    // Re-added, back to `any 1`.
    ha::add_members(survivor, &["node1", "node2"], "any 1", T).unwrap();
    wait_status(survivor, "node1", "follower:true");
    wait_status(survivor, "node2", "follower:true");
    load.wait_for_more_acks(50, T).unwrap();
    let acked = load.stop();
    let lost = count_lost(survivor, &acked).unwrap();
    eprintln!(
        "acknowledged writes not on the forced leader: {} of {} (the override's documented price)",
        lost.len(),
        acked.len()
    );
    c.wait_replayed(survivor, T).unwrap();
    for n in c.nodes() {
        assert_eq!(
            ha::terms_with_two_leaders(n).unwrap(),
            0,
            "I1: a term with two leaders in {}'s ha.history",
            n.name()
        );
        assert_eq!(history(n), history(survivor));
    }
    let last = history(survivor);
    assert_eq!(
        last.last().unwrap(),
        "1001|node3|{node1,node2,node3}|any 1|set_policy any 1"
    );
}
