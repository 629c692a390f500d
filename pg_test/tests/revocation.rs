//! Revocation (I2) at the edges of a standby's life: once a recruit quorum pledged to a term, no leader
//! of a lower term may complete a commit, so a pledged standby must not stream from (acknowledge WAL
//! to) one. The test acts as the coordinator of the higher term itself (direct `Pledge` RPCs) and
//! never promotes anyone, so the old leader stays up with a commit waiting for a follower.

use pg_test::{agent_pledge, pb, procs, session, wait_until, Cluster, ClusterSpec, Node};
use std::sync::mpsc::Receiver;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// node1 leads, `any 1`, automatic failover paused (the test is the only coordinator).
fn ha3() -> Cluster {
    let c = Cluster::start(ClusterSpec::ha_any1(3)).unwrap();
    c.node(0)
        .query_strings("SELECT ha.pause(); CREATE TABLE t(x int)")
        .unwrap();
    c.wait_replayed(c.node(0), T).unwrap();
    c
}

/// The term node1 leads in.
fn leader_term(c: &Cluster) -> u64 {
    c.node(0).agent_status().unwrap().ruleset_term
}

/// `n` pledges to `term` for the coordinator "pg_test"; panics unless the pledge is accepted.
fn pledge(c: &Cluster, n: &Node, term: u64) {
    let r = agent_pledge(
        &n.agent_addr(),
        c.token(),
        pb::PledgeRequest {
            term,
            coordinator: "pg_test".into(),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        r.accepted,
        "{} refused the pledge for term {term}: {}",
        n.name(),
        r.refusal
    );
}

/// A commit running in a thread: `Some(Ok(()))` once acknowledged, `Some(Err(_))` if it failed.
struct Commit {
    rx: Receiver<Result<(), String>>,
    pid: i32,
    result: Option<Result<(), String>>,
}

impl Commit {
    fn start(n: &Node, sql: &str) -> Commit {
        let (rx, pid) = session::spawn_sql(n, "", sql).unwrap();
        Commit {
            rx,
            pid,
            result: None,
        }
    }

    fn returned(&mut self) -> bool {
        if self.result.is_none() {
            self.result = self.rx.try_recv().ok();
        }
        self.result.is_some()
    }

    /// Wait until the backend waits for synchronous replication on `n`.
    fn wait_sync_rep(&self, n: &Node) {
        wait_until(T, "the commit to wait for a follower (SyncRep)", || {
            Ok(n.query_value(&format!(
                "SELECT wait_event FROM pg_stat_activity WHERE pid = {}",
                self.pid
            ))?
            .as_deref()
                == Some("SyncRep"))
        })
        .unwrap();
    }
}

/// Restart `n` without its pledge file (lost with a disk, or removed by an operator).
fn restart_without_pledge_file(n: &Node) {
    n.stop().unwrap();
    let file = n.data_dir().join(format!("pg_ha.pledge.{}", n.name()));
    std::fs::remove_file(&file).unwrap();
    n.start().unwrap();
}

/// Whether `n`'s WAL receiver process exists (connecting or streaming).
fn runs_wal_receiver(n: &Node) -> pg_test::Result<bool> {
    Ok(
        n.query_value("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walreceiver'")?
            .as_deref()
            != Some("0"),
    )
}

fn streams_to(leader: &Node, follower: &str) -> pg_test::Result<bool> {
    Ok(leader
        .query_value(&format!(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = '{follower}'"
        ))?
        .as_deref()
        != Some("0"))
}

/// I2 (issue 12 item 3): node2 and node3 pledged to term T+1, so node1 (leader of T) is revoked and a
/// commit on it waits. node2 then loses its pledge file and restarts: it must not follow node1 (and so
/// release that commit) before it has relearned its term from the others; it relearns T+1 from node3
/// and never streams from node1.
#[test]
fn lost_pledge_file_does_not_follow_a_revoked_leader() {
    let c = ha3();
    let (l, f1, f2) = (c.node(0), c.node(1), c.node(2));
    let next = leader_term(&c) + 1;
    pledge(&c, f1, next);
    pledge(&c, f2, next);
    let mut commit = Commit::start(l, "INSERT INTO t VALUES (1)");
    commit.wait_sync_rep(l);

    restart_without_pledge_file(f1);
    wait_until(
        T,
        "node2 to relearn its term (or the commit to return)",
        || Ok(commit.returned() || f1.log_contains("pg_ha: pledge file relearned")),
    )
    .unwrap();
    assert!(
        !commit.returned(),
        "I2: the revoked leader node1 completed a commit ({:?}) after node2 and node3 pledged to term {next}: node2, restarted without its pledge file, followed it",
        commit.result
    );
    // Its Status shows the relearned term once the pass that relearned it (and decided whom to follow
    // with it) has ended.
    wait_until(T, "node2's agent to report the relearned term", || {
        Ok(f1.agent_status().map(|s| s.pledged_term).unwrap_or(0) >= next)
    })
    .unwrap();
    assert_eq!(f1.agent_status().unwrap().pledged_term, next);
    assert!(
        !commit.returned(),
        "I2: the revoked leader completed a commit"
    );
    assert!(
        !streams_to(l, "node2").unwrap(),
        "I2: node2 streams from node1, a leader below its relearned term {next}"
    );
}

/// I2 (issue 12 item 3): as above, but node3 is down while node2 relearns. The only other member that
/// answers is node1, whose term is T: relearning "the highest term on a majority" with node2 counting
/// itself would conclude T and follow node1. node2 must count only the others (a majority of the
/// cohort without itself), so it keeps waiting until node3 is back, and then relearns T+1.
#[test]
fn lost_pledge_file_is_not_relearned_from_the_revoked_leader_alone() {
    let c = ha3();
    let (l, f1, f2) = (c.node(0), c.node(1), c.node(2));
    let next = leader_term(&c) + 1;
    pledge(&c, f1, next);
    pledge(&c, f2, next);
    let mut commit = Commit::start(l, "INSERT INTO t VALUES (1)");
    commit.wait_sync_rep(l);
    f2.stop().unwrap();

    restart_without_pledge_file(f1);
    wait_until(
        T,
        "node2 to report that it cannot relearn yet (or to relearn, or the commit to return)",
        || {
            Ok(commit.returned()
                || f1.log_contains("pg_ha: pledge file relearned")
                || f1.log_contains("pg_ha: pledge file lost: cannot relearn"))
        },
    )
    .unwrap();
    assert!(
        !commit.returned(),
        "I2: the revoked leader node1 completed a commit ({:?}) after a recruit quorum pledged to term {next}",
        commit.result
    );
    assert!(
        !f1.log_contains("pg_ha: pledge file relearned"),
        "I2: node2 relearned its term from node1 alone (a revoked leader) and itself"
    );
    assert!(!streams_to(l, "node2").unwrap());

    f2.start().unwrap();
    wait_until(
        T,
        "node2 to relearn from node3 (or the commit to return)",
        || Ok(commit.returned() || f1.log_contains("pg_ha: pledge file relearned")),
    )
    .unwrap();
    wait_until(T, "node2's agent to report the relearned term", || {
        Ok(f1.agent_status().map(|s| s.pledged_term).unwrap_or(0) >= next)
    })
    .unwrap();
    assert_eq!(f1.agent_status().unwrap().pledged_term, next);
    assert!(
        !commit.returned(),
        "I2: the revoked leader completed a commit"
    );
    assert!(!streams_to(l, "node2").unwrap());
}

/// I2 (review of issue 12): node1 (leader of T) and node2 pledged to T+1, so node1 is revoked. node1
/// then restarts without its pledge file: its pledge reads as none, and node3 (which never pledged)
/// still reports T, so node1 and node3 look like a majority with no higher term. node1 must not
/// re-establish (and acknowledge commits of term T through node3) before it has relearned its term;
/// it relearns T+1 and stays deposed.
#[test]
fn leader_that_lost_its_pledge_file_does_not_re_establish_before_relearning() {
    // A relearn waits two failover timeouts: 10 s leaves node3's WAL receiver (which retries every
    // 5 s) the time to reconnect, which is what re-establishment needs.
    let c = Cluster::start(ClusterSpec {
        failover_timeout_ms: Some(10_000),
        ..ClusterSpec::ha_any1(3)
    })
    .unwrap();
    c.node(0)
        .query_strings("SELECT ha.pause(); CREATE TABLE t(x int)")
        .unwrap();
    c.wait_replayed(c.node(0), T).unwrap();
    let (l, f1) = (c.node(0), c.node(1));
    let next = leader_term(&c) + 1;
    pledge(&c, l, next);
    pledge(&c, f1, next);
    let established_before = l.read_log().matches("pg_ha: established as leader").count();

    restart_without_pledge_file(l);
    let mut wrote = false;
    wait_until(
        T,
        "node1 to relearn its term (or to accept a write)",
        || {
            wrote = l.query_strings("INSERT INTO t VALUES (2)").is_ok();
            Ok(wrote || l.log_contains("pg_ha: pledge file relearned"))
        },
    )
    .unwrap();
    assert!(
        !wrote,
        "I2: node1, restarted without its pledge file after it pledged to term {next}, re-established and acknowledged a commit of a lower term"
    );
    wait_until(T, "node1's agent to report the relearned term", || {
        Ok(l.agent_status().map(|s| s.pledged_term).unwrap_or(0) >= next)
    })
    .unwrap();
    assert!(
        l.query_strings("INSERT INTO t VALUES (3)").is_err(),
        "I2: node1 accepts writes after relearning term {next}"
    );
    assert_eq!(
        l.read_log().matches("pg_ha: established as leader").count(),
        established_before,
        "I2: node1 re-established in a term below the one it pledged to"
    );
}

/// I2 (issue 12 item 11, second suspicion): a pledged standby must not answer while a WAL receiver of
/// its still runs. `pg_stat_wal_receiver` hides a receiver until it has connected, so one still
/// connecting to the old leader is invisible there. node1 is frozen (SIGSTOP: it accepts TCP but never
/// answers) with a commit waiting; node2 restarts and its receiver hangs connecting to node1. node2's
/// startup process is frozen too, so it cannot act on the configuration reload the pledge causes (as
/// when it is busy replaying). The pledge must not be answered while that receiver lives; once node1
/// is thawed, node2 must not stream from it and release the commit.
#[test]
fn pledge_waits_for_a_connecting_wal_receiver() {
    let c = ha3();
    let (l, f1, f2) = (c.node(0), c.node(1), c.node(2));
    let next = leader_term(&c) + 1;
    pledge(&c, f2, next);
    f1.stop().unwrap();
    let mut commit = Commit::start(l, "INSERT INTO t VALUES (1)");
    commit.wait_sync_rep(l);

    l.sigstop().unwrap();
    f1.start().unwrap();
    wait_until(
        T,
        "node2's WAL receiver to hang connecting to the frozen node1",
        || {
            Ok(f1
                .query_value(
                    "SELECT wait_event FROM pg_stat_activity WHERE backend_type = 'walreceiver'",
                )?
                .as_deref()
                == Some("LibPQWalReceiverConnect"))
        },
    )
    .unwrap();
    assert_eq!(
        f1.query_value("SELECT count(*) FROM pg_stat_wal_receiver")
            .unwrap()
            .as_deref(),
        Some("0"),
        "pg_stat_wal_receiver shows a receiver that has not connected yet (the premise of this test)"
    );
    let startup: i32 = f1
        .query_value("SELECT pid FROM pg_stat_activity WHERE backend_type = 'startup'")
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    procs::signal(startup, libc::SIGSTOP).unwrap();

    pledge(&c, f1, next);
    let receiver_after_pledge = runs_wal_receiver(f1).unwrap();

    l.sigcont().unwrap();
    // Either node2's receiver (alive, connecting) reaches node1 and releases the commit, or there is no
    // receiver on node2, and none can start while its startup process is frozen.
    wait_until(
        T,
        "the commit to return or node2 to run no WAL receiver",
        || Ok(commit.returned() || (!runs_wal_receiver(f1)? && l.query_value("SELECT 1").is_ok())),
    )
    .unwrap();
    assert!(
        !commit.returned(),
        "I2: the revoked leader node1 completed a commit ({:?}) after node2 and node3 pledged to term {next}: node2's WAL receiver, connecting when node2 pledged, streamed from node1 afterwards",
        commit.result
    );
    assert!(
        !receiver_after_pledge,
        "I2: node2 answered its pledge while its WAL receiver still ran"
    );

    // Thaw node2's startup process: it rereads the configuration (no primary_conninfo) and starts no
    // receiver. It has run once its context switches grow.
    let switches = || {
        std::fs::read_to_string(format!("/proc/{startup}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    let before = switches();
    procs::signal(startup, libc::SIGCONT).unwrap();
    wait_until(T, "node2's startup process to run again", || {
        Ok(switches() >= before + 2)
    })
    .unwrap();
    assert!(!runs_wal_receiver(f1).unwrap());
    assert!(
        !commit.returned(),
        "I2: the revoked leader completed a commit"
    );
    assert!(!streams_to(l, "node2").unwrap());
}
