//! A ruleset change and the commits made while it is in flight (issue 12 item 6; I5) on a real cluster:
//! from the moment a change's row exists, every commit is acknowledged only once durable under the old
//! AND the new rules, never under the old rules alone.

use pg_test::{procs, wait_until, Cluster, ClusterSpec, Node};
use std::sync::mpsc::Receiver;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn agent_reloads(n: &Node) -> usize {
    n.read_log()
        .matches("pg_ha: configuration reloaded")
        .count()
}

/// Set `ha.debug_failpoint` on `n` and wait until its agent uses it.
fn set_failpoint(n: &Node, fp: &str) {
    let before = agent_reloads(n);
    n.append_conf(&format!("ha.debug_failpoint = '{fp}'"))
        .unwrap();
    n.reload().unwrap();
    wait_until(
        T,
        &format!("{}'s agent to use failpoint '{fp}'", n.name()),
        || Ok(agent_reloads(n) > before),
    )
    .unwrap();
}

/// PID of `n`'s WAL receiver once it streams under its node name (the agent repoints
/// `primary_conninfo` at start, which restarts the receiver).
fn walreceiver_pid(n: &Node) -> i32 {
    let mut pid = 0;
    let sql = format!(
        "SELECT pid FROM pg_stat_wal_receiver WHERE status = 'streaming' AND conninfo LIKE '%application_name={}%'",
        n.name()
    );
    wait_until(
        T,
        &format!("{}'s WAL receiver to stream", n.name()),
        || match n.query_value(&sql)? {
            Some(p) => {
                pid = p.parse().unwrap();
                Ok(true)
            }
            None => Ok(false),
        },
    )
    .unwrap();
    pid
}

/// `sql` on `n` in a thread; the receiver gets Ok(()) on success or Err(text).
fn spawn_sql(n: &Node, sql: &str) -> (Receiver<Result<(), String>>, i32) {
    let mut client = n.connect().unwrap();
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let (tx, rx) = std::sync::mpsc::channel();
    let sql = sql.to_string();
    std::thread::spawn(move || {
        let _ = tx.send(client.batch_execute(&sql).map_err(|e| format!("{e:?}")));
    });
    (rx, pid)
}

/// `/proc/PID/stat` state letter, None once the process is gone.
fn proc_state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The backend `pid` is asleep in a commit wait (Postgres' SyncRep or pg_ha's gate, Extension).
fn asleep_in_commit_wait(n: &Node, pid: i32) -> pg_test::Result<bool> {
    let ev = |n: &Node| {
        n.query_value(&format!(
            "SELECT wait_event FROM pg_stat_activity WHERE pid = {pid}"
        ))
    };
    let waiting = |e: Option<String>| matches!(e.as_deref(), Some("SyncRep") | Some("Extension"));
    Ok(waiting(ev(n)?) && proc_state(pid) == Some('S') && waiting(ev(n)?))
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
    let frozen: Vec<i32> = (2..5).map(|i| walreceiver_pid(c.node(i))).collect();
    set_failpoint(leader, "change_pause_after_row");
    for &p in &frozen {
        procs::signal(p, libc::SIGSTOP).unwrap();
    }
    let (change, _) = spawn_sql(leader, "SELECT ha.set_policy('any 2')");
    wait_until(T, "the change to pause right after its row", || {
        Ok(leader.log_contains("pg_ha: failpoint change_pause_after_row"))
    })
    .unwrap();

    let (rx, pid) = spawn_sql(leader, "INSERT INTO t VALUES (1)");
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
    set_failpoint(leader, "");
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
