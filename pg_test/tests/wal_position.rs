//! The position a node reports when it pledges must cover every WAL record it holds (issue 12 item 2):
//! a standby restarted with acknowledged commits in its pg_wal that its startup process has not
//! replayed yet, and a node rewound below what it held before.

use pg_test::pb::PledgeReply;
use pg_test::{ha, wait_until, Cluster, ClusterSpec, Node};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Insert `n` rows tagged `batch`, one commit each; returns the rows whose commit was acknowledged.
fn write_batch(n: &Node, batch: &str, rows: i32) -> Vec<i32> {
    let mut client = n.connect().unwrap();
    (1..=rows)
        .filter(|x| {
            client
                .batch_execute(&format!("INSERT INTO t VALUES ('{batch}', {x})"))
                .is_ok()
        })
        .collect()
}

/// The acknowledged rows of `batch` that `n` does not hold.
fn missing(n: &Node, batch: &str, acked: &[i32]) -> Vec<i32> {
    let held: Vec<i32> = n
        .query_strings(&format!("SELECT x FROM t WHERE batch = '{batch}'"))
        .unwrap()
        .into_iter()
        .filter_map(|r| r[0].as_deref().and_then(|s| s.parse().ok()))
        .collect();
    acked
        .iter()
        .copied()
        .filter(|x| !held.contains(x))
        .collect()
}

fn lsn(n: &Node, sql: &str) -> String {
    n.query_value(sql).unwrap().unwrap_or_default()
}

/// `n` has flushed (received) WAL up to `target`.
fn received(n: &Node, target: &str) -> pg_test::Result<bool> {
    Ok(n.query_value(&format!(
        "SELECT pg_last_wal_receive_lsn() >= '{target}'::pg_lsn"
    ))?
    .as_deref()
        == Some("t"))
}

/// Every acknowledged row of every batch is on `n` (I3).
fn assert_all_acked(n: &Node, batches: &[(&str, &[i32])]) {
    for (batch, acked) in batches {
        let lost = missing(n, batch, acked);
        assert!(
            lost.is_empty(),
            "I3: {} acknowledged rows of batch {batch} are missing on {} (leader or follower of the new term): {lost:?}",
            lost.len(),
            n.name()
        );
    }
}

/// I3: a standby whose pg_wal holds acknowledged commits its startup process has not replayed yet (its
/// replay is held by `recovery_min_apply_delay`) must not pledge with its replay position. n=3 `any 1`:
/// node2 flushes batches B and C but does not replay them, node3 has B only, C is acknowledged through
/// node2 alone; the leader and node2 are killed, node2 and node3 restarted. If node2 pledged with its
/// replay position, node3 (end of B) would win discovery and C would be lost. node2 refuses to pledge
/// (saying why) until its replay has consumed its local WAL; once the delay is lifted it pledges with
/// its real position, wins, and every acknowledged row survives.
#[test]
fn restarted_standby_refuses_to_pledge_until_its_local_wal_is_replayed() {
    let c = Cluster::start(ClusterSpec::ha_any1(3)).unwrap();
    let (l, f1, f2) = (c.node(0), c.node(1), c.node(2));
    l.query_strings(
        "SELECT ha.pause(); CREATE TABLE probe(x int); CREATE TABLE t(batch text, x int)",
    )
    .unwrap();
    let a = write_batch(l, "A", 20);
    c.wait_replayed(l, T).unwrap();
    // node2's next restart replays from here, so only B and C are left in its local WAL.
    f1.query_strings("CHECKPOINT").unwrap();

    // node2 keeps flushing WAL but stops replaying it at the next commit record.
    f1.query_strings("ALTER SYSTEM SET recovery_min_apply_delay = '1h'")
        .unwrap();
    f1.query_strings("SELECT pg_reload_conf()").unwrap();
    let b = write_batch(l, "B", 20);
    assert_eq!(
        b.len(),
        20,
        "batch B is acknowledged with both followers up"
    );
    let end_b = lsn(l, "SELECT pg_current_wal_flush_lsn()");
    wait_until(T, "node3 to replay batch B", || {
        Ok(f2
            .query_value(&format!(
                "SELECT pg_last_wal_replay_lsn() >= '{end_b}'::pg_lsn"
            ))?
            .as_deref()
            == Some("t"))
    })
    .unwrap();
    wait_until(T, "node2 to flush batch B", || received(f1, &end_b)).unwrap();
    assert_eq!(
        f1.query_value("SELECT count(*) FROM t WHERE batch = 'B'")
            .unwrap()
            .as_deref(),
        Some("0"),
        "node2's replay is held before batch B"
    );

    // Batch C: acknowledged because node2 flushed it (node3 is down).
    f2.stop().unwrap();
    let cc = write_batch(l, "C", 20);
    assert_eq!(cc.len(), 20, "batch C is acknowledged through node2");
    let end_c = lsn(l, "SELECT pg_current_wal_flush_lsn()");
    wait_until(T, "node2 to flush batch C", || received(f1, &end_c)).unwrap();

    l.kill9().unwrap();
    f1.kill9().unwrap();
    f1.start().unwrap();
    f2.start().unwrap();
    wait_until(
        T,
        "node2's startup process to hold replay (apply delay)",
        || {
            Ok(f1
                .query_value(
                    "SELECT wait_event FROM pg_stat_activity WHERE backend_type = 'startup'",
                )?
                .as_deref()
                == Some("RecoveryApplyDelay"))
        },
    )
    .unwrap();
    ha::wait_leader_lost(f2, T).unwrap();
    ha::wait_leader_lost(f1, T).unwrap();

    // A coordinator (node3) needs node2's pledge: n=3 `any 1` recruits 2.
    let first = f2.query_value("SELECT ha.failover()");
    if let Ok(Some(answer)) = &first {
        // A leader was promoted while node2's replay was held: it must hold every acknowledged row
        // (whether or not it manages to establish: what it holds is the new term's history).
        let name = answer.split_whitespace().next().unwrap_or_default();
        let leader = c.node_by_name(name).unwrap();
        assert!(!leader.in_recovery().unwrap(), "{name} was promoted");
        assert_all_acked(leader, &[("A", &a), ("B", &b), ("C", &cc)]);
    }
    assert!(
        first.is_err(),
        "no leader can be chosen while node2's replay is held: got {first:?}"
    );
    assert!(
        f1.log_contains("refused: the startup process has not replayed this node's local WAL"),
        "node2 logs why it refuses to pledge"
    );
    for n in [f1, f2] {
        assert!(n.in_recovery().unwrap(), "{} was promoted", n.name());
    }

    // Lift the delay: node2 replays its local WAL, then pledges with its real position and wins.
    f1.query_strings("ALTER SYSTEM RESET recovery_min_apply_delay")
        .unwrap();
    f1.query_strings("SELECT pg_reload_conf()").unwrap();
    let name = ha::failover_until_ok(f2, T).unwrap();
    assert_eq!(name, "node2", "node2 holds the most WAL");
    let leader = c.node_by_name(&name).unwrap();
    ha::wait_writable(leader, T).unwrap();
    assert_all_acked(leader, &[("A", &a), ("B", &b), ("C", &cc)]);
    ha::wait_follower(f2, T).unwrap();
    c.wait_replayed(leader, T).unwrap();
    assert_all_acked(f2, &[("A", &a), ("B", &b), ("C", &cc)]);
}

/// A Pledge RPC to `n`'s agent for `term` from a coordinator named "pg_test".
fn pledge(n: &Node, _token: &str, term: u64) -> PledgeReply {
    n.agent_pledge(term, "pg_test").unwrap()
}

/// `application_name|sync_state` of the standbys streaming from `leader`.
fn replication(leader: &Node) -> Vec<String> {
    leader
        .query_strings(
            "SELECT application_name || '|' || sync_state FROM pg_stat_replication WHERE state = 'streaming' ORDER BY 1",
        )
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| r[0].clone())
        .collect()
}

/// The `floor` line of `n`'s pledge file.
fn floor_line(n: &Node) -> String {
    let text = std::fs::read_to_string(n.data_dir().join(format!("pg_ha.pledge.{}", n.name())))
        .unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("floor "))
        .unwrap_or("<no floor line>")
        .to_string()
}

/// I3: a node that pg_rewind takes back records a floor (what it held) in its pledge file before the
/// rewind runs; until it holds that again it neither pledges nor counts toward durability (it streams
/// under `node1.uncounted`, which `synchronous_standby_names` and the commit gate do not count); once
/// past, it clears the floor and counts again. With Postgres 15 a real floor is always passed before the
/// agent starts (pg_rewind sets minRecoveryPoint to the source's WAL end, and the agent starts at
/// consistency), so the failpoint `rewind_floor_ahead` records it 48 MiB ahead at the new leader's term
/// to make the window observable.
#[test]
fn rewound_node_neither_pledges_nor_counts_below_its_floor() {
    let c = Cluster::start(ClusterSpec::ha_any1(3)).unwrap();
    let (n1, n2, n3) = (c.node(0), c.node(1), c.node(2));
    n1.query_strings("SELECT ha.pause(); CREATE TABLE probe(x int)")
        .unwrap();
    c.wait_replayed(n1, T).unwrap();
    n1.append_conf("ha.debug_failpoint = 'rewind_floor_ahead'")
        .unwrap();
    n1.kill9().unwrap();
    ha::wait_leader_lost(n2, T).unwrap();
    let name = ha::failover_until_ok(n2, T).unwrap();
    let leader = c.node_by_name(&name).unwrap();
    let other = if name == "node2" { n3 } else { n2 };
    ha::wait_writable(leader, T).unwrap();
    let _ = n1.start(); // an old primary: its agent stops it again to rewind it

    wait_until(
        T,
        "node1 to stream from the new leader as node1.uncounted",
        || Ok(replication(leader).contains(&"node1.uncounted|async".to_string())),
    )
    .unwrap();
    let log = n1.read_log();
    let recorded = log
        .find("pg_ha: rewind floor recorded")
        .expect("floor logged");
    let rewound = log
        .find("pg_ha: rejoin: running pg_rewind")
        .expect("pg_rewind ran");
    assert!(
        recorded < rewound,
        "the floor is recorded before pg_rewind runs"
    );
    assert_ne!(floor_line(n1), "floor -", "the floor is in the pledge file");

    // Below its floor: no pledge, whatever the term. (The node may stream before its agent runs: the
    // startup process requests a receiver before recovery is consistent, the agent starts after.)
    wait_until(T, "node1's agent to answer", || {
        Ok(n1.agent_status().is_ok())
    })
    .unwrap();
    let r = pledge(n1, c.token(), 1000);
    assert!(
        !r.accepted && r.refusal.contains("rewound below its floor"),
        "I3: a node below its rewind floor pledged: {r:?}"
    );
    // ... and its flushes do not count: with the other follower down, a commit waits.
    other.stop().unwrap();
    let mut client = leader.connect().unwrap();
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(
            client
                .batch_execute("INSERT INTO probe VALUES (42)")
                .is_ok(),
        );
    });
    wait_until(T, "the commit to wait for a follower that counts", || {
        Ok(leader
            .query_value(&format!(
                "SELECT wait_event FROM pg_stat_activity WHERE pid = {pid}"
            ))?
            .is_some_and(|e| e == "SyncRep" || e == "Extension"))
    })
    .unwrap();
    assert!(
        rx.try_recv().is_err(),
        "I3: acknowledged through a node below its rewind floor"
    );

    // Move the leader's WAL 48 MiB on without a commit (rolled-back writes, segment switches): node1
    // passes its floor, clears it, streams as node1 again, and the waiting commit is acknowledged.
    wait_until(T, "node1 to pass its rewind floor", || {
        leader.query_strings(
            "BEGIN; INSERT INTO probe VALUES (0); ROLLBACK; SELECT pg_switch_wal()",
        )?;
        Ok(n1.log_contains("pg_ha: passed the rewind floor"))
    })
    .unwrap();
    assert_eq!(
        rx.recv_timeout(T),
        Ok(true),
        "the commit is acknowledged once node1 counts again"
    );
    assert_eq!(floor_line(n1), "floor -", "the floor is cleared");
    wait_until(T, "node1 to stream as node1 again", || {
        Ok(replication(leader).contains(&"node1|quorum".to_string()))
    })
    .unwrap();
}
