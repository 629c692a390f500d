//! A ruleset change and the commits made while it is in flight (issue 12 item 6; I5) on a real cluster:
//! from the moment a change's row exists, every commit is acknowledged only once durable under the old
//! AND the new rules, never under the old rules alone.

use pg_test::{ha, procs, session, wait_until, Cluster, ClusterSpec, Node};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// The backend `pid` is asleep in a commit wait (Postgres' SyncRep or pg_ha's gate, Extension).
fn asleep_in_commit_wait(n: &Node, pid: i32) -> pg_test::Result<bool> {
    let ev = |n: &Node| {
        n.query_value(&format!(
            "SELECT wait_event FROM pg_stat_activity WHERE pid = {pid}"
        ))
    };
    let waiting = |e: Option<String>| matches!(e.as_deref(), Some("SyncRep") | Some("Extension"));
    Ok(waiting(ev(n)?) && procs::proc_state(pid) == Some('S') && waiting(ev(n)?))
}

/// I5: 5 nodes under `any 1`, `ha.set_policy('any 2')`, paused right after the change's row is written
/// (failpoint `change_pause_after_row`), with only node2 streaming (node3-5's WAL receivers frozen). A
/// commit made in that window that node2 alone has flushed satisfies the old rules (`any 1`) but not the
/// new ones (`any 2`): it must not be acknowledged, neither while the change is paused nor once the new
/// rules are in force, until a second follower has it.
#[test]
fn commit_in_change_window_waits_for_old_and_new_rules() {
    let c = Cluster::start(ClusterSpec {
        policy: Some("any 1".into()),
        ..ClusterSpec::ha(5)
    })
    .unwrap();
    let leader = c.node(0);
    leader
        .query_strings("CREATE TABLE t(x int PRIMARY KEY)")
        .unwrap();
    c.wait_replayed(leader, T).unwrap();
    let frozen: Vec<i32> = (2..5)
        .map(|i| ha::walreceiver_pid(c.node(i), T).unwrap())
        .collect();
    ha::set_failpoint(leader, "change_pause_after_row", T).unwrap();
    for &p in &frozen {
        procs::signal(p, libc::SIGSTOP).unwrap();
    }
    let (change, _) = session::spawn_sql(leader, "", "SELECT ha.set_policy('any 2')").unwrap();
    wait_until(T, "the change to pause right after its row", || {
        Ok(leader.log_contains("pg_ha: failpoint change_pause_after_row"))
    })
    .unwrap();

    let (rx, pid) = session::spawn_sql(leader, "", "INSERT INTO t VALUES (1)").unwrap();
    // node2 has flushed the commit: under the old rules alone it is durable now.
    wait_until(T, "node2 to have flushed the commit", || {
        Ok(leader
            .query_value(
                "SELECT flush_lsn >= pg_current_wal_flush_lsn() FROM pg_stat_replication WHERE application_name = 'node2'",
            )?
            .as_deref()
            == Some("t"))
    })
    .unwrap();
    // Either the writer was answered, or it went back to sleep in a commit wait after node2's flush
    // (node2's walsender has processed that reply and released whatever it releases).
    wait_until(T, "the writer to be answered or asleep in its commit wait", || {
        if let Ok(r) = rx.try_recv() {
            panic!(
                "I5: a commit made while the change to any 2 was in flight was acknowledged with node2 alone (durable under any 1 only): {r:?}"
            );
        }
        asleep_in_commit_wait(leader, pid)
    })
    .unwrap();

    // The change resumes and takes effect (its row is durable under any 1: node2 has it).
    ha::set_failpoint(leader, "", T).unwrap();
    assert_eq!(
        change.recv_timeout(T).expect("set_policy to return"),
        Ok(())
    );
    wait_until(
        T,
        "the writer to be asleep in its commit wait under any 2",
        || asleep_in_commit_wait(leader, pid),
    )
    .unwrap();
    assert!(
        rx.try_recv().is_err(),
        "I5: the commit was acknowledged under any 2 with node2 alone"
    );
    // A second follower: durable under both.
    procs::signal(frozen[0], libc::SIGCONT).unwrap();
    assert_eq!(
        rx.recv_timeout(T)
            .expect("acknowledged once two followers have it"),
        Ok(())
    );
    for &p in &frozen[1..] {
        procs::signal(p, libc::SIGCONT).unwrap();
    }
}
