//! Visible before durable (issue 12 item 7; I3 as readers see it) on real clusters: on the established
//! leader, another session can read a row only once it is durable under the rules in force, whatever
//! `synchronous_commit` the writer set and however its wait is cancelled or terminated.
//!
//! Each scenario runs on one cluster of three nodes (node1 leads in zone z1, node2 is in z1 too, node3 in
//! z2), first under `any 1` with both followers' WAL receivers frozen (SIGSTOP), then under `zones 2` with
//! only node3's frozen: node2, in the leader's zone, keeps streaming and flushing, which under `zones 2`
//! makes nothing durable. A reader session polls for the writer's row the whole time; no poll that started
//! before the frozen receivers were resumed may see it.

use pg_test::{ha, procs, wait_until, Cluster, ClusterSpec, Node};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Interrupt {
    None,
    Cancel,
    Terminate,
}

/// node1 (z1) leads, node2 (z1) and node3 (z2) follow; policy `any 1`. `fsync` as asked (off is the
/// harness' default).
fn cluster_with(fsync: bool) -> Cluster {
    let c = Cluster::start(ClusterSpec {
        zones: vec!["z1".into(), "z1".into(), "z2".into()],
        policy: Some("any 1".into()),
        fsync_off: !fsync,
        ..ClusterSpec::ha(3)
    })
    .unwrap();
    c.node(0)
        .query_strings("CREATE TABLE t(x int PRIMARY KEY)")
        .unwrap();
    c.wait_replayed(c.node(0), T).unwrap();
    c
}

fn cluster() -> Cluster {
    cluster_with(false)
}

/// A session polling `SELECT count(*) FROM t WHERE x = tag` until stopped, recording when each poll
/// started and whether it saw the row.
struct Reader {
    stop: Arc<AtomicBool>,
    polls: Arc<Mutex<Vec<(Instant, bool)>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    fn start(n: &Node, tag: i32) -> Reader {
        let mut client = n.connect().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let polls = Arc::new(Mutex::new(Vec::new()));
        let (s, p) = (stop.clone(), polls.clone());
        let handle = std::thread::spawn(move || {
            let sql = format!("SELECT count(*) FROM t WHERE x = {tag}");
            while !s.load(Ordering::Acquire) {
                let started = Instant::now();
                let Ok(row) = client.query_one(sql.as_str(), &[]) else {
                    return; // the server went away
                };
                let seen = row.get::<_, i64>(0) > 0;
                p.lock().unwrap().push((started, seen));
                // Pacing, not a wait: keep the poll rate bounded on a shared machine.
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Reader {
            stop,
            polls,
            handle: Some(handle),
        }
    }

    /// Polls that started after `t` and have finished.
    fn polls_after(&self, t: Instant) -> usize {
        self.polls
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| *s > t)
            .count()
    }

    /// The first poll that started before `t` and saw the row.
    fn saw_before(&self, t: Instant) -> Option<Instant> {
        self.polls
            .lock()
            .unwrap()
            .iter()
            .find(|(s, seen)| *seen && *s < t)
            .map(|(s, _)| *s)
    }

    fn saw_any(&self) -> bool {
        self.polls.lock().unwrap().iter().any(|(_, seen)| *seen)
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Waits until the reader has completed a poll that started after now (proves it had its chance).
fn one_more_poll(r: &Reader) {
    let now = Instant::now();
    wait_until(T, "the reader to complete one more poll", || {
        Ok(r.polls_after(now) >= 1)
    })
    .unwrap();
}

/// Run `INSERT INTO t VALUES (tag)` under `synchronous_commit = sync_commit` in a thread; the receiver
/// gets Ok(()) on an acknowledgement or Err(text). Returns the writer's backend PID too.
fn spawn_writer(n: &Node, sync_commit: &str, tag: i32) -> (Receiver<Result<(), String>>, i32) {
    let mut client = n.connect().unwrap();
    client
        .batch_execute(&format!("SET synchronous_commit = {sync_commit}"))
        .unwrap();
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = client
            .batch_execute(&format!("INSERT INTO t VALUES ({tag})"))
            .map_err(|e| format!("{e:?}"));
        let _ = tx.send(r);
    });
    (rx, pid)
}

fn wait_event(n: &Node, pid: i32) -> pg_test::Result<Option<String>> {
    n.query_value(&format!(
        "SELECT wait_event FROM pg_stat_activity WHERE pid = {pid}"
    ))
}

/// The backend waits in a commit: Postgres' synchronous replication wait (SyncRep) or pg_ha's gate
/// (Extension).
fn in_commit_wait(n: &Node, pid: i32) -> pg_test::Result<bool> {
    Ok(matches!(
        wait_event(n, pid)?.as_deref(),
        Some("SyncRep") | Some("Extension")
    ))
}

/// Hold every fsync/fdatasync of process `pid` (node3's WAL receiver) for 60 s with strace's syscall
/// fault injection: the receiver writes WAL and reports it written, but cannot flush it. Needs `fsync = on`
/// on that node. Returns once strace is attached.
fn hold_fsyncs(pid: i32) -> std::process::Child {
    let child = std::process::Command::new("strace")
        .args(["-qq", "-o", "/dev/null", "-e", "trace=fsync,fdatasync"])
        .args(["-e", "inject=fsync,fdatasync:delay_enter=60000000", "-p"])
        .arg(pid.to_string())
        .spawn()
        .unwrap();
    let tracer = child.id().to_string();
    wait_until(T, &format!("strace to attach to {pid}"), || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        Ok(status
            .lines()
            .any(|l| l.starts_with("TracerPid:") && l.split_whitespace().nth(1) == Some(&tracer)))
    })
    .unwrap();
    child
}

/// One phase of a scenario on `c`: freeze `frozen` followers' WAL receivers, commit row `tag` under
/// `sync_commit`, interrupt the waiting writer as asked, and check that a reader never sees the row
/// before the receivers are resumed; then resume them and check the writer's outcome.
fn phase(c: &Cluster, policy: &str, sync_commit: &str, interrupt: Interrupt, tag: i32) {
    let leader = c.node(0);
    let frozen: Vec<usize> = if policy == "any 1" {
        vec![1, 2]
    } else {
        vec![2]
    };
    let what = format!("synchronous_commit = {sync_commit}, {interrupt:?}, policy {policy}");
    // Under remote_write, node3 is not frozen but writes without flushing (its fsyncs held by strace).
    let write_only = sync_commit == "remote_write";
    let receivers: Vec<i32> = frozen
        .iter()
        .filter(|&&i| !(write_only && i == 2))
        .map(|&i| ha::walreceiver_pid(c.node(i), T).unwrap())
        .collect();
    let mut strace = write_only.then(|| hold_fsyncs(ha::walreceiver_pid(c.node(2), T).unwrap()));
    for &p in &receivers {
        procs::signal(p, libc::SIGSTOP).unwrap();
    }
    let reader = Reader::start(leader, tag);
    // The commit record ends after this position; the frozen followers cannot get past it.
    let before = leader
        .query_value("SELECT pg_current_wal_insert_lsn()")
        .unwrap()
        .unwrap();
    let (rx, pid) = spawn_writer(leader, sync_commit, tag);
    wait_until(T, &format!("the commit to wait ({what})"), || {
        in_commit_wait(leader, pid)
    })
    .unwrap();
    if policy != "any 1" {
        // node2 (zone z1, the leader's) has flushed the commit; under zones 2 that is not enough.
        wait_until(T, "node2 to have flushed the commit", || {
            Ok(leader
                .query_value(
                    "SELECT flush_lsn >= pg_current_wal_flush_lsn() FROM pg_stat_replication WHERE application_name = 'node2'",
                )?
                .as_deref()
                == Some("t"))
        })
        .unwrap();
    }
    if write_only {
        // node3 has reported the commit as written (not flushed): `remote_write` alone is satisfied.
        let end = leader
            .query_value("SELECT pg_current_wal_flush_lsn()")
            .unwrap()
            .unwrap();
        wait_until(T, "node3 to report the commit written", || {
            Ok(leader
                .query_value(&format!(
                    "SELECT write_lsn >= '{end}' FROM pg_stat_replication WHERE application_name = 'node3'"
                ))?
                .as_deref()
                == Some("t"))
        })
        .unwrap();
    }
    let sig = match interrupt {
        Interrupt::None => None,
        Interrupt::Cancel => Some(("pg_cancel_backend", libc::SIGINT)),
        Interrupt::Terminate => Some(("pg_terminate_backend", libc::SIGTERM)),
    };
    if let Some((f, sig)) = sig {
        assert_eq!(
            leader
                .query_value(&format!("SELECT {f}({pid})"))
                .unwrap()
                .as_deref(),
            Some("t")
        );
        wait_until(T, &format!("the writer to take the signal of {f}"), || {
            Ok(procs::signal_taken(pid, sig))
        })
        .unwrap();
        // After the handler ran, the backend either ended or went back to sleep in a commit wait: either
        // way it has acted on the interrupt.
        wait_until(
            T,
            &format!("the writer to have acted on {f} (gone, or asleep in a commit wait)"),
            || {
                if procs::proc_state(pid).is_none() {
                    return Ok(true);
                }
                Ok(in_commit_wait(leader, pid)?
                    && procs::proc_state(pid) == Some('S')
                    && in_commit_wait(leader, pid)?)
            },
        )
        .unwrap();
    }
    one_more_poll(&reader);
    // The freeze holds: no frozen follower has flushed the commit.
    let names: Vec<String> = frozen
        .iter()
        .map(|&i| format!("'{}'", c.node(i).name()))
        .collect();
    assert_eq!(
        leader
            .query_value(&format!(
                "SELECT coalesce(bool_or(flush_lsn > '{before}'), false) FROM pg_stat_replication WHERE application_name IN ({})",
                names.join(", ")
            ))
            .unwrap()
            .as_deref(),
        Some("f"),
        "a frozen follower flushed the commit: the test's freeze did not hold"
    );
    let resumed = Instant::now();
    if let Some(t) = reader.saw_before(resumed) {
        for &p in &receivers {
            let _ = procs::signal(p, libc::SIGCONT);
        }
        if let Some(st) = &strace {
            let _ = procs::signal(st.id() as i32, libc::SIGTERM);
        }
        panic!(
            "I3: a reader on the leader saw row {tag} ({what}) {} ms before any follower that makes it durable could flush it (frozen WAL receivers, or fsyncs held); writer: {:?}",
            resumed.duration_since(t).as_millis(),
            rx.try_recv()
        );
    }
    assert!(
        rx.try_recv().is_err(),
        "I3: the commit was acknowledged before it was durable ({what})"
    );
    if let Some(mut st) = strace.take() {
        procs::signal(st.id() as i32, libc::SIGTERM).unwrap();
        let _ = st.wait();
    }
    for &p in &receivers {
        procs::signal(p, libc::SIGCONT).unwrap();
    }
    let r = rx
        .recv_timeout(T)
        .unwrap_or_else(|_| panic!("the writer to hear back once durable ({what})"));
    match interrupt {
        Interrupt::Terminate => assert!(
            r.is_err(),
            "a terminated commit answered the client: {r:?} ({what})"
        ),
        _ => assert_eq!(r, Ok(()), "{what}"),
    }
    wait_until(
        T,
        &format!("the reader to see row {tag} once durable"),
        || Ok(reader.saw_any()),
    )
    .unwrap();
    reader.finish();
}

/// Both phases: `any 1`, then `zones 2`.
fn scenario(sync_commit: &str, interrupt: Interrupt) {
    let c = cluster_with(sync_commit == "remote_write");
    phase(&c, "any 1", sync_commit, interrupt, 1);
    c.node(0)
        .query_strings("SELECT ha.set_policy('zones 2')")
        .unwrap();
    c.wait_replayed(c.node(0), T).unwrap();
    phase(&c, "zones 2", sync_commit, interrupt, 2);
}

/// I3: a writer with `synchronous_commit = off` cannot make its row visible before it is durable.
#[test]
fn sync_commit_off_row_invisible_until_durable() {
    scenario("off", Interrupt::None);
}

/// I3: a writer with `synchronous_commit = local` cannot make its row visible before it is durable.
#[test]
fn sync_commit_local_row_invisible_until_durable() {
    scenario("local", Interrupt::None);
}

/// I3: a writer with `synchronous_commit = remote_write` cannot make its row visible when a follower has
/// only written it: node3's fsyncs are held (strace fault injection), so it reports the commit written
/// but not flushed.
#[test]
fn sync_commit_remote_write_row_invisible_until_durable() {
    scenario("remote_write", Interrupt::None);
}

/// I3: cancelling a commit that waits for its followers (pg_cancel_backend; statement_timeout and
/// lock_timeout signal the same way) neither makes the row visible nor acknowledges it before it is
/// durable; once durable, the commit is acknowledged.
#[test]
fn cancel_during_commit_wait_keeps_row_invisible() {
    scenario("on", Interrupt::Cancel);
}

/// I3: terminating a backend whose commit waits for its followers neither makes the row visible before
/// it is durable nor answers the client; the session ends once the commit is durable.
#[test]
fn terminate_during_commit_wait_keeps_row_invisible() {
    scenario("on", Interrupt::Terminate);
}

/// I3: `pg_ctl stop -m fast` while a commit waits for its followers: the stop completes, the waiting
/// backend ends without answering and without its row ever becoming visible (it ends itself with
/// SIGKILL, so the postmaster stops everything at once: "abnormal database system shutdown"; the next
/// start runs crash recovery, and the row is durable or not like any other unacknowledged commit).
#[test]
fn fast_shutdown_during_commit_wait_ends_unanswered_and_unseen() {
    let c = cluster();
    let leader = c.node(0);
    let receivers: Vec<i32> = [1, 2]
        .iter()
        .map(|&i| ha::walreceiver_pid(c.node(i), T).unwrap())
        .collect();
    for &p in &receivers {
        procs::signal(p, libc::SIGSTOP).unwrap();
    }
    let reader = Reader::start(leader, 7);
    let (rx, pid) = spawn_writer(leader, "on", 7);
    wait_until(T, "the commit to wait", || in_commit_wait(leader, pid)).unwrap();
    one_more_poll(&reader);
    leader.stop().unwrap();
    let stopped = Instant::now();
    let r = rx.recv_timeout(T).expect("the writer to hear back");
    assert!(r.is_err(), "I3: a commit acknowledged at shutdown: {r:?}");
    assert!(
        reader.saw_before(stopped).is_none(),
        "I3: a reader saw the waiting commit's row during the fast shutdown"
    );
    reader.finish();
    assert!(
        leader.log_contains("pg_ha: termination requested by the postmaster (shutdown) while a commit waits for durability"),
        "pg_ha did not log how it ended the waiting backend:\n{}",
        leader.log_tail(30)
    );
    assert!(leader.log_contains("abnormal database system shutdown"));
    for &p in &receivers {
        procs::signal(p, libc::SIGCONT).unwrap();
    }
}

/// I3 under `zones 3`, which Postgres' `ANY`/`FIRST` cannot express exactly when two followers outside
/// the leader's zone share a zone (here node2 and node3 in z2, node4 in z3, the leader in z1). What holds,
/// as the README says: a row becomes visible only once K-1 = 2 followers outside the leader's zone have
/// flushed it (so at least 2 zones and 3 nodes have it), and the commit is acknowledged only once 3 zones
/// have it.
#[test]
fn zones3_visible_after_first_stage_acknowledged_after_all_zones() {
    let c = Cluster::start(ClusterSpec {
        zones: vec!["z1".into(), "z2".into(), "z2".into(), "z3".into()],
        policy: Some("zones 3".into()),
        ..ClusterSpec::ha(4)
    })
    .unwrap();
    let leader = c.node(0);
    leader
        .query_strings("CREATE TABLE t(x int PRIMARY KEY)")
        .unwrap();
    c.wait_replayed(leader, T).unwrap();
    let receivers: Vec<i32> = [1, 2, 3]
        .iter()
        .map(|&i| ha::walreceiver_pid(c.node(i), T).unwrap())
        .collect();
    for &p in &receivers {
        procs::signal(p, libc::SIGSTOP).unwrap();
    }
    let reader = Reader::start(leader, 3);
    let (rx, pid) = spawn_writer(leader, "on", 3);
    wait_until(T, "the commit to wait in Postgres' quorum wait", || {
        Ok(wait_event(leader, pid)?.as_deref() == Some("SyncRep"))
    })
    .unwrap();
    one_more_poll(&reader);
    // node2 (z2) alone: still the first stage's wait; invisible.
    procs::signal(receivers[0], libc::SIGCONT).unwrap();
    wait_until(T, "node2 to have flushed the commit", || {
        Ok(leader
            .query_value(
                "SELECT flush_lsn >= pg_current_wal_flush_lsn() FROM pg_stat_replication WHERE application_name = 'node2'",
            )?
            .as_deref()
            == Some("t"))
    })
    .unwrap();
    let node2_flushed = Instant::now();
    one_more_poll(&reader);
    assert!(
        reader.saw_before(Instant::now()).is_none(),
        "I3: under zones 3 the row was visible with only one follower outside the leader's zone"
    );
    assert_eq!(wait_event(leader, pid).unwrap().as_deref(), Some("SyncRep"));
    // node3 (z2 too): the first stage is met, the row is visible (2 zones), not yet acknowledged.
    procs::signal(receivers[1], libc::SIGCONT).unwrap();
    wait_until(
        T,
        "the commit to wait in pg_ha's gate for a third zone",
        || Ok(wait_event(leader, pid)?.as_deref() == Some("Extension")),
    )
    .unwrap();
    wait_until(T, "the reader to see the row after the first stage", || {
        Ok(reader.saw_any())
    })
    .unwrap();
    assert!(reader.saw_before(node2_flushed).is_none());
    assert!(
        rx.try_recv().is_err(),
        "I3: acknowledged under zones 3 with two zones only"
    );
    // node4 (z3): three zones, acknowledged.
    procs::signal(receivers[2], libc::SIGCONT).unwrap();
    assert_eq!(
        rx.recv_timeout(T).expect("acknowledged once z3 has it"),
        Ok(())
    );
    reader.finish();
}
