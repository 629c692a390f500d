//! A primary of an older term restarted after a crash (issue 12, item 9) on a real cluster.
//!
//! After a SIGKILL, Postgres restarts a former primary as a primary: crash recovery makes every commit in
//! its WAL visible, including an unacknowledged tail that a failover has already left behind. Until its
//! agent has decided (re-establish, or rewind and follow), such a node must not serve application
//! sessions nor stream that tail. The agent is held at start by the `agent_hold_at_start` failpoint so
//! that the window is as long as the test needs, not a race.

use pg_test::{ha, wait_until, Cluster, ClusterSpec, Node};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn release_failpoint(n: &Node) {
    let path = n.data_dir().join("pg_ha_failpoint_release");
    std::fs::write(&path, "").unwrap();
}

/// I4: a commit that was never acknowledged (every follower down) sits in the old leader's WAL. The
/// followers come back and elect a new leader without it. The old leader restarts as a primary with
/// its agent held: an application session must not read the unacknowledged row (it is about to be
/// rewound away), and no standby may stream from it. Once the agent runs, the old leader rewinds,
/// follows, and the row is gone.
#[test]
fn restarted_old_primary_serves_no_reads_of_its_unrewound_tail() {
    let c = Cluster::start(ClusterSpec::ha_any1(3)).unwrap();
    let (old, f1, f2) = (c.node(0), c.node(1), c.node(2));
    old.query_strings(
        "CREATE TABLE probe(x int); CREATE TABLE t(x int); CREATE ROLE app LOGIN; GRANT SELECT ON t TO app",
    )
    .unwrap();
    c.wait_replayed(old, T).unwrap();

    // The unacknowledged commit: both followers down, the commit waits (it is in the WAL, flushed).
    f1.kill9().unwrap();
    f2.kill9().unwrap();
    let mut writer = old.connect().unwrap();
    let pid: i32 = writer
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(writer.batch_execute("INSERT INTO t VALUES (42)"));
    });
    wait_until(
        T,
        "the unacknowledged commit to wait for replication",
        || {
            Ok(old
                .query_value(&format!(
                    "SELECT wait_event FROM pg_stat_activity WHERE pid = {pid}"
                ))?
                .is_some_and(|w| w == "SyncRep" || w == "Extension"))
        },
    )
    .unwrap();
    old.kill9().unwrap();
    assert!(
        !matches!(rx.recv_timeout(Duration::from_secs(5)), Ok(Ok(()))),
        "the commit was acknowledged with every follower down"
    );

    // The followers elect a new leader without the row.
    f1.start().unwrap();
    f2.start().unwrap();
    let new = ha::wait_new_leader(&c, old.name(), T).unwrap();
    assert_eq!(
        new.query_value("SELECT count(*) FROM t")
            .unwrap()
            .as_deref(),
        Some("0")
    );

    // The old leader restarts as a primary (crash recovery) with its agent held.
    old.append_conf("ha.debug_failpoint = 'agent_hold_at_start'")
        .unwrap();
    old.start().unwrap();
    wait_until(T, "the old leader's agent to be held at start", || {
        Ok(old.log_contains("failpoint agent_hold_at_start: holding"))
    })
    .unwrap();
    assert!(
        !old.in_recovery().unwrap(),
        "the old leader restarted as a primary"
    );

    // An application session must not read the unrewound tail.
    match old.connect_as("app") {
        Ok(mut app) => {
            let seen: i64 = app
                .query_one("SELECT count(*) FROM t WHERE x = 42", &[])
                .map(|r| r.get(0))
                .unwrap_or(0);
            assert_eq!(
                seen, 0,
                "I4: an application session on the restarted old primary read the unacknowledged row \
                 that the new leader {} does not have",
                new.name()
            );
            panic!("I4: the restarted old primary accepted an application session before its agent decided");
        }
        Err(e) => assert!(
            e.to_string().contains("pg_ha"),
            "the refusal names pg_ha: {e}"
        ),
    }
    // No standby may stream its tail: a physical replication connection is refused.
    let repl = old.psql("replication=true", "IDENTIFY_SYSTEM");
    assert!(
        repl.is_err(),
        "I4: the restarted old primary accepted a replication connection before its agent decided: {repl:?}"
    );
    // Superuser sessions (operators reading ha.status) still work.
    assert_eq!(
        old.query_value("SELECT count(*) > 0 FROM ha.history")
            .unwrap()
            .as_deref(),
        Some("t")
    );

    // Let the agent run: the old leader rewinds, follows, and the row is gone.
    old.set_extra_conf(&[]).unwrap();
    release_failpoint(old);
    ha::wait_follower(old, T).unwrap();
    wait_until(
        T,
        "the rejoined old leader to serve application reads",
        || Ok(old.connect_as("app").is_ok()),
    )
    .unwrap();
    let mut app = old.connect_as("app").unwrap();
    let seen: i64 = app
        .query_one("SELECT count(*) FROM t WHERE x = 42", &[])
        .unwrap()
        .get(0);
    assert_eq!(seen, 0, "I4: the unacknowledged row survived the rejoin");
}

/// I4 (review of issue 12 item 9): a leader that established, was deposed (it pledged to a higher term)
/// and was then promoted again by that term's coordinator is a merely promoted candidate until it
/// establishes again: it must not admit application sessions (what it shows may still be rewound if
/// the new term never establishes). Here it never does (failpoint `candidate_never_establish`).
#[test]
fn leader_deposed_and_promoted_again_admits_no_application_session_before_establishing() {
    let c = Cluster::start(ClusterSpec::ha_any1(3)).unwrap();
    let l = c.node(0);
    l.query_strings(
        "SELECT ha.pause(); CREATE TABLE t(x int); CREATE ROLE app LOGIN; GRANT SELECT ON t TO app",
    )
    .unwrap();
    c.wait_replayed(l, T).unwrap();
    assert!(
        l.connect_as("app").is_ok(),
        "the established leader admits applications"
    );
    ha::set_failpoint(l, "candidate_never_establish", T).unwrap();

    let st = l.agent_status().unwrap();
    let term = st.term.max(st.pledged_term) + 1;
    let pledged = l.agent_pledge(term, "pg_test").unwrap();
    assert!(pledged.accepted, "pledge refused: {}", pledged.refusal);
    let promoted = ha::promote(&c, l, term, st.ruleset_version + 1, 1).unwrap();
    assert!(promoted.ok, "the promotion failed: {}", promoted.error);
    wait_until(T, "node1 to hold its row of the new term", || {
        Ok(l.query_value("SELECT max(term) FROM ha.history")?
            .as_deref()
            == Some(&term.to_string()))
    })
    .unwrap();
    match l.connect_as("app") {
        Ok(_) => panic!(
            "I4: node1, deposed and promoted again for term {term}, admitted an application session before establishing"
        ),
        Err(e) => assert!(e.to_string().contains("pg_ha"), "the refusal names pg_ha: {e}"),
    }
}
