//! Holes in the commit gate and the fence (issue 12, items 1, 8, 5 and 4), each forced on a real
//! cluster. Each test names the invariant it checks. Automatic failover is paused (`ha.pause()`) so
//! that only the test decides when a leader is deposed (by sending it a `Pledge` itself).

use pg_test::{ha, wait_until, Cluster, ClusterSpec, Node};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// A 3-node `any 1` cluster with table `t`, automatic failover paused, and `extra` settings.
fn ha3(extra: &[&str]) -> Cluster {
    let c = Cluster::start(ClusterSpec {
        extra_conf: extra.iter().map(|s| s.to_string()).collect(),
        ..ClusterSpec::ha_any1(3)
    })
    .unwrap();
    c.node(0)
        .query_strings("SELECT ha.pause(); CREATE TABLE t(x int)")
        .unwrap();
    c.wait_replayed(c.node(0), T).unwrap();
    c
}

/// How a statement sent by a client ended.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// Acknowledged: the client got CommandComplete / ReadyForQuery.
    Acked,
    /// The server sent an error message: severity, SQLSTATE and text.
    ServerError(String),
    /// The connection ended without a message from the server.
    Closed(String),
}

fn outcome(r: Result<(), postgres::Error>) -> Outcome {
    match r {
        Ok(()) => Outcome::Acked,
        Err(e) => match e.as_db_error() {
            Some(db) => Outcome::ServerError(format!(
                "{}: {} ({})",
                db.severity(),
                db.message(),
                db.code().code()
            )),
            None => Outcome::Closed(e.to_string()),
        },
    }
}

/// A statement running in a client thread.
struct Pending {
    pid: i32,
    rx: Receiver<Outcome>,
    got: Option<Outcome>,
}

impl Pending {
    /// Whether the client has heard back (remembering the outcome).
    fn done(&mut self) -> bool {
        if self.got.is_none() {
            match self.rx.try_recv() {
                Ok(o) => self.got = Some(o),
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => {
                    self.got = Some(Outcome::Closed("client thread gone".into()))
                }
            }
        }
        self.got.is_some()
    }

    /// The outcome, waiting for it up to `T`.
    fn wait(mut self) -> Outcome {
        if let Some(o) = self.got.take() {
            return o;
        }
        self.rx.recv_timeout(T).unwrap_or_else(|_| {
            panic!(
                "backend {}'s client did not hear back within {T:?}",
                self.pid
            )
        })
    }
}

/// Run `setup` on a new connection to `n`, then `sql` in a thread.
fn spawn_sql(n: &Node, setup: &str, sql: &str) -> Pending {
    let mut client = n.connect().unwrap();
    client.batch_execute(setup).unwrap();
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let (tx, rx) = std::sync::mpsc::channel();
    let sql = sql.to_string();
    std::thread::spawn(move || {
        let _ = tx.send(outcome(client.batch_execute(&sql)));
    });
    Pending { pid, rx, got: None }
}

/// Wait until the statement is waiting in `wait_event` on `n`, or its client heard back. Returns
/// whether it is waiting.
/// `wait_events`: one or more wait events separated by `|` (a commit that Postgres' own quorum wait
/// holds waits in `SyncRep`, one that pg_ha's gate holds in `Extension`).
fn waits_or_done(n: &Node, p: &mut Pending, wait_events: &str) -> bool {
    let pid = p.pid;
    wait_until(
        T,
        &format!("backend {pid} to wait in {wait_events} or to answer its client"),
        || {
            Ok(p.done()
                || n.query_value(&format!(
                    "SELECT wait_event FROM pg_stat_activity WHERE pid = {pid}"
                ))?
                .is_some_and(|w| wait_events.split('|').any(|e| e == w)))
        },
    )
    .unwrap();
    !p.done()
}

fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

fn parse_lsn(s: &str) -> u64 {
    let (hi, lo) = s.split_once('/').expect("an LSN X/Y");
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// Depose `n` the way a coordinator of a higher term would: a `Pledge` for the next term. Returns
/// the flush position `n` reported with its pledge.
fn depose(n: &Node) -> u64 {
    let s = n.agent_status().unwrap();
    let term = s.term.max(s.pledged_term) + 1;
    let reply = n.agent_pledge(term, "pg_test").unwrap();
    assert!(
        reply.accepted,
        "{} refused the pledge for term {term}: {}",
        n.name(),
        reply.refusal
    );
    reply.flush_lsn
}

/// I2, I3 (issue 12 item 1): once a leader has pledged to a higher term and reported its flush
/// position F, it acknowledges no commit above F. Here a commit passes the fence check before the
/// pledge (the failpoint holds it there), the pledge is sent to the leader alone, and the commit
/// record is written after it: above F. The followers were not asked to pledge and keep streaming,
/// so one of them flushes it and would release it; the coordinator's discovery, which trusts F,
/// could then promote a node below it. The client must not see it acknowledged.
#[test]
fn deposed_leader_acknowledges_nothing_above_its_reported_flush() {
    let c = ha3(&[]);
    let leader = c.node(0);
    leader
        .query_strings("CREATE EXTENSION pg_walinspect")
        .unwrap();
    ha::set_failpoint(leader, "commit_pause_after_fence", T).unwrap();
    let p = spawn_sql(leader, "", "INSERT INTO t VALUES (1)");
    let paused = format!("commit_pause_after_fence: backend {} paused", p.pid);
    wait_until(T, "the commit to pause after the fence check", || {
        Ok(leader.log_contains(&paused))
    })
    .unwrap();

    let f = depose(leader);
    std::fs::write(leader.data_dir().join("pg_ha.failpoint_release"), "").unwrap();
    let got = p.wait();

    // Where the commit record is: it must be above F (else this test proves nothing).
    let commit_end = leader
        .query_value(&format!(
            "SELECT end_lsn FROM pg_get_wal_records_info('{}', pg_current_wal_flush_lsn()) \
             WHERE resource_manager = 'Transaction' AND record_type = 'COMMIT' \
             AND xid = (SELECT xmin FROM t WHERE x = 1)",
            lsn_text(f)
        ))
        .unwrap()
        .map(|s| parse_lsn(&s))
        .expect("the commit record of the paused transaction");
    assert!(
        commit_end > f,
        "premise: the commit record ends at {} which is not above the pledged flush {}",
        lsn_text(commit_end),
        lsn_text(f)
    );
    // A follower that was not asked to pledge has it: it could have released the commit.
    wait_until(T, "a follower to replay the commit", || {
        Ok(
            c.node(1).query_value("SELECT count(*) FROM t")?.as_deref() == Some("1")
                || c.node(2).query_value("SELECT count(*) FROM t")?.as_deref() == Some("1"),
        )
    })
    .unwrap();
    assert!(
        matches!(got, Outcome::Closed(_)),
        "I2/I3: the leader pledged to a higher term and reported flush {}, then its commit ending at {} \
         was answered: {got:?}",
        lsn_text(f),
        lsn_text(commit_end)
    );
}

/// I2, I3 (review of issue 12 item 1): as above, but before the held commit goes on, the coordinator
/// of the higher term chooses the deposed leader itself and promotes it again in that term, which
/// clears its deposed flag. The commit passed the fence before the pledge and its record lies above
/// the flush F the pledge reported: it must still not be acknowledged (a deposition that happened
/// while it was on its way ends it, whatever the flag says by the time it reaches the gate).
#[test]
fn leader_deposed_then_promoted_again_acknowledges_nothing_above_its_reported_flush() {
    let c = ha3(&[]);
    let leader = c.node(0);
    ha::set_failpoint(leader, "commit_pause_after_fence", T).unwrap();
    let p = spawn_sql(leader, "", "INSERT INTO t VALUES (1)");
    let paused = format!("commit_pause_after_fence: backend {} paused", p.pid);
    wait_until(T, "the commit to pause after the fence check", || {
        Ok(leader.log_contains(&paused))
    })
    .unwrap();

    // The term depose() pledges to, from the status before it.
    let st = leader.agent_status().unwrap();
    let term = st.term.max(st.pledged_term) + 1;
    let f = depose(leader);
    let promoted = ha::promote(&c, leader, term, st.ruleset_version + 1, 1).unwrap();
    assert!(promoted.ok, "the promotion failed: {}", promoted.error);
    std::fs::write(leader.data_dir().join("pg_ha.failpoint_release"), "").unwrap();
    let got = p.wait();
    assert!(
        matches!(got, Outcome::Closed(_)),
        "I2/I3: the leader pledged to term {term} and reported flush {}, was promoted again in that \
         term, and then answered a commit that passed the fence before the pledge: {got:?}",
        lsn_text(f)
    );
}

/// I3 (issue 12 item 8): commits waiting for durability when only the postmaster is SIGKILLed end
/// without telling their clients anything. One waits in pg_ha's gate (a PREPARE TRANSACTION with
/// `synchronous_commit = local` and both followers down: Postgres' own wait is skipped for it), one in
/// Postgres' own quorum wait (an INSERT; pg_ha forces that wait for every commit). A message such as
/// "PANIC: cannot abort transaction N, it was already committed" reads like a success for a commit
/// no follower has.
#[test]
fn postmaster_death_ends_waiting_commits_without_an_answer() {
    let c = ha3(&["max_prepared_transactions = 10"]);
    let leader = c.node(0);
    c.node(1).stop().unwrap();
    c.node(2).stop().unwrap();
    let mut in_gate = spawn_sql(
        leader,
        "SET synchronous_commit = local",
        "BEGIN; INSERT INTO t VALUES (1); PREPARE TRANSACTION 'pm1'",
    );
    let mut in_syncrep = spawn_sql(
        leader,
        "SET synchronous_commit = local",
        "INSERT INTO t VALUES (2)",
    );
    assert!(
        waits_or_done(leader, &mut in_gate, "Extension"),
        "I3: acknowledged with no follower up: {:?}",
        in_gate.got
    );
    assert!(
        waits_or_done(leader, &mut in_syncrep, "SyncRep"),
        "I3: acknowledged with no follower up: {:?}",
        in_syncrep.got
    );
    // SIGKILL of the postmaster alone; kill9 waits until its children have exited.
    leader.kill9().unwrap();
    let gate = in_gate.wait();
    let syncrep = in_syncrep.wait();
    assert!(
        matches!(gate, Outcome::Closed(_)),
        "I3: a commit waiting in the gate was answered when the postmaster died: {gate:?}"
    );
    assert!(
        matches!(syncrep, Outcome::Closed(_)),
        "I3: a commit waiting in SyncRep was answered when the postmaster died: {syncrep:?}"
    );
}

/// psql on `n` over a `replication=database` connection (a walsender that runs SQL), running each of
/// `commands` as its own query; stops at the first error.
fn psql_replication(n: &Node, commands: &[&str]) -> std::process::Command {
    let bindir =
        std::env::var("PG_TEST_BINDIR").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    let mut cmd = std::process::Command::new(format!("{bindir}/psql"));
    cmd.arg(format!(
        "host={} port={} user=postgres dbname=postgres replication=database application_name=gate_holes",
        n.host(),
        n.pg_port()
    ))
    .args(["-X", "-v", "ON_ERROR_STOP=1"]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd
}

/// I3, I6 (issue 12 item 5): SQL on a `replication=database` connection is gated and fenced like any
/// session. With both followers down and `synchronous_commit = local`, its commit waits until a
/// follower has it; on a deposed leader its write is refused with pg_ha's error (read-write asked
/// for explicitly, so Postgres' own read-only default for fenced sessions does not decide).
#[test]
fn replication_database_sessions_are_gated_and_fenced() {
    let c = ha3(&[]);
    let leader = c.node(0);
    c.node(1).stop().unwrap();
    c.node(2).stop().unwrap();

    let mut child = psql_replication(
        leader,
        &["SET synchronous_commit = local", "INSERT INTO t VALUES (1)"],
    )
    .spawn()
    .unwrap();
    let mut exited = None;
    wait_until(
        T,
        "the walsender's commit to wait (quorum wait or gate), or psql to finish",
        || {
            if exited.is_none() {
                exited = child.try_wait()?;
            }
            Ok(exited.is_some()
                || leader
                    .query_value(
                        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender' \
                     AND application_name = 'gate_holes' AND wait_event IN ('SyncRep', 'Extension')",
                    )?
                    .as_deref()
                    == Some("1"))
        },
    )
    .unwrap();
    let mut violations = Vec::new();
    if exited.is_some() {
        let out = child.wait_with_output().unwrap();
        violations.push(format!(
            "I3: a replication=database session's commit was answered with no follower up: {:?}, stdout {:?}, stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
        c.node(1).start().unwrap();
    } else {
        c.node(1).start().unwrap();
        let mut status = None;
        wait_until(T, "psql to finish once a follower is back", || {
            status = child.try_wait()?;
            Ok(status.is_some())
        })
        .unwrap();
        assert!(
            status.unwrap().success(),
            "the commit failed once a follower was back: {status:?}"
        );
    }

    depose(leader);
    let out = psql_replication(
        leader,
        &[
            "SET default_transaction_read_only = off",
            "INSERT INTO t VALUES (2)",
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // pg_ha refuses the write, or (since a deposed primary admits no replication=database connection at
    // all, see admission.rs) the connection.
    if out.status.success()
        || !(stderr.contains("pg_ha: writes are refused on this node")
            || stderr
                .contains("pg_ha: this primary does not accept replication=database connections"))
    {
        violations.push(format!(
            "I6: a write on a deposed leader over replication=database was not refused by pg_ha: {:?}, stdout {:?}, stderr {stderr:?}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    assert!(violations.is_empty(), "{violations:#?}");
}

/// I3 (issue 12 item 4): PREPARE TRANSACTION, COMMIT PREPARED and ROLLBACK PREPARED are gated. With
/// `synchronous_commit = local` and both followers down, none of them is answered until a follower
/// has it (a transaction manager relies on an acknowledged prepare, commit or rollback surviving).
#[test]
fn two_phase_commit_is_gated() {
    let c = ha3(&["max_prepared_transactions = 10"]);
    let leader = c.node(0);
    let follower = c.node(1);
    c.node(2).stop().unwrap();
    leader
        .query_strings("BEGIN; INSERT INTO t VALUES (2); PREPARE TRANSACTION 'g2'")
        .unwrap();
    let mut answered_at_once = Vec::new();
    for (what, sql) in [
        (
            "PREPARE TRANSACTION",
            "BEGIN; INSERT INTO t VALUES (1); PREPARE TRANSACTION 'g1'",
        ),
        ("COMMIT PREPARED", "COMMIT PREPARED 'g1'"),
        ("ROLLBACK PREPARED", "ROLLBACK PREPARED 'g2'"),
    ] {
        follower.stop().unwrap();
        let mut p = spawn_sql(leader, "SET synchronous_commit = local", sql);
        if !waits_or_done(leader, &mut p, "SyncRep|Extension") {
            answered_at_once.push(format!("{what}: {:?}", p.got));
        }
        follower.start().unwrap();
        assert_eq!(p.wait(), Outcome::Acked, "{what} once a follower is back");
    }
    assert!(
        answered_at_once.is_empty(),
        "I3: answered with no follower up: {answered_at_once:?}"
    );
    assert_eq!(
        leader
            .query_value("SELECT string_agg(x::text, ',' ORDER BY x) FROM t")
            .unwrap()
            .as_deref(),
        Some("1")
    );
}

/// I6 (issue 12 item 4): on a deposed leader, PREPARE TRANSACTION (here after DDL, which the
/// executor's check does not see), COMMIT PREPARED and ROLLBACK PREPARED (of transactions prepared
/// while it led) are refused with pg_ha's error; read-write is asked for explicitly.
#[test]
fn two_phase_commit_is_fenced() {
    let c = ha3(&["max_prepared_transactions = 10"]);
    let leader = c.node(0);
    leader
        .query_strings(
            "BEGIN; INSERT INTO t VALUES (1); PREPARE TRANSACTION 'p1'; \
             BEGIN; INSERT INTO t VALUES (2); PREPARE TRANSACTION 'p2'",
        )
        .unwrap();
    depose(leader);
    let mut not_refused = Vec::new();
    for sql in [
        "BEGIN; CREATE TABLE u(x int); PREPARE TRANSACTION 'p3'",
        "COMMIT PREPARED 'p1'",
        "ROLLBACK PREPARED 'p2'",
    ] {
        let mut client = leader.connect().unwrap();
        client
            .batch_execute("SET default_transaction_read_only = off")
            .unwrap();
        let got = outcome(client.batch_execute(sql));
        match &got {
            Outcome::ServerError(e) if e.contains("pg_ha: writes are refused on this node") => {}
            _ => not_refused.push(format!("{sql}: {got:?}")),
        }
    }
    assert!(
        not_refused.is_empty(),
        "I6: not refused by pg_ha on a deposed leader: {not_refused:?}"
    );
    assert_eq!(
        leader
            .query_value("SELECT string_agg(gid, ',' ORDER BY gid) FROM pg_prepared_xacts")
            .unwrap()
            .as_deref(),
        Some("p1,p2")
    );
}
