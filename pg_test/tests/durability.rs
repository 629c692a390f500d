//! Durability and fencing (issue 4) on real clusters. Each test names the invariant it checks.

use pg_test::{ha, procs, session, wait_until, Cluster, ClusterSpec, Node};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn ha3(policy: &str) -> Cluster {
    Cluster::start(ClusterSpec {
        policy: Some(policy.into()),
        ..ClusterSpec::ha(3)
    })
    .unwrap()
}

fn history(n: &Node) -> Vec<String> {
    ha::history(n).unwrap()
}

/// I5: bootstrap, two add_members and set_policy each write a ruleset row; every node holds them and
/// reports its role from them.
#[test]
fn setup_writes_ruleset_rows_and_roles_follow() {
    let c = ha3("any 1");
    let h = history(c.node(0));
    assert_eq!(
        h,
        vec![
            "1|node1|{node1}|zones 1|bootstrap",
            "1|node1|{node1,node2}|zones 1|add_member node2",
            "1|node1|{node1,node2,node3}|zones 1|add_member node3",
            "1|node1|{node1,node2,node3}|any 1|set_policy any 1",
        ]
    );
    for n in c.nodes() {
        wait_until(T, &format!("{} to show 1 leader and 2 followers", n.name()), || {
            let v = n.query_value(
                "SELECT string_agg(node_name || ':' || role || ':' || member, ',' ORDER BY node_name) FROM ha.status",
            )?;
            Ok(v.as_deref() == Some("node1:leader:true,node2:follower:true,node3:follower:true"))
        })
        .unwrap();
    }
    assert_eq!(
        c.node(0)
            .query_value("SHOW synchronous_standby_names")
            .unwrap()
            .as_deref(),
        Some("ANY 1 (\"node2\", \"node3\")")
    );
}

fn stop_followers(c: &Cluster) {
    c.node(1).stop().unwrap();
    c.node(2).stop().unwrap();
}

/// I3: with `any 1` and both followers down, a commit on the leader does not return; once one follower
/// is back and has flushed it, it does.
#[test]
fn any1_commit_waits_for_a_follower() {
    let c = ha3("any 1");
    let leader = c.node(0);
    leader.query_strings("CREATE TABLE t(x int)").unwrap();
    stop_followers(&c);
    let (rx, pid) = session::spawn_sql(leader, "", "INSERT INTO t VALUES (1)").unwrap();
    wait_until(T, "the commit to wait for synchronous replication", || {
        session::waits_in(leader, pid, "SyncRep")
    })
    .unwrap();
    assert!(
        rx.try_recv().is_err(),
        "I3: acknowledged with no follower up"
    );
    c.node(2).start().unwrap();
    let r = rx
        .recv_timeout(T)
        .expect("the commit returns once a follower is back");
    assert_eq!(r, Ok(()));
    wait_until(T, "node3 to replay the row", || {
        Ok(c.node(2).query_value("SELECT count(*) FROM t")?.as_deref() == Some("1"))
    })
    .unwrap();
}

/// I3 (cancel safety): cancelling the waiting backend (pg_cancel_backend, then statement_timeout) does
/// not turn into a success; terminating it ends the connection without one (once the commit is durable).
#[test]
fn cancelled_or_terminated_commit_is_never_acknowledged() {
    let c = ha3("any 1");
    let leader = c.node(0);
    leader.query_strings("CREATE TABLE t(x int)").unwrap();
    stop_followers(&c);

    // pg_cancel_backend: held off while the commit waits (pg_ha's commit_wait), so Postgres' own wait
    // never gives up ("already committed locally") and the commit keeps waiting there.
    let (rx, pid) = session::spawn_sql(leader, "", "INSERT INTO t VALUES (1)").unwrap();
    wait_until(T, "the commit to wait in SyncRep", || {
        session::waits_in(leader, pid, "SyncRep")
    })
    .unwrap();
    leader
        .query_value(&format!("SELECT pg_cancel_backend({pid})"))
        .unwrap();
    wait_until(T, "the waiting backend to take the cancel", || {
        Ok(procs::signal_taken(pid, libc::SIGINT))
    })
    .unwrap();
    wait_until(T, "the commit to wait in SyncRep after the cancel", || {
        session::waits_in(leader, pid, "SyncRep")
    })
    .unwrap();
    assert!(
        rx.try_recv().is_err(),
        "I3: a cancelled wait was acknowledged"
    );

    // statement_timeout: Postgres 15 disarms it before the commit (finish_xact_command), so it cannot
    // cancel the wait at all; either way the commit must still be waiting well past the timeout.
    let (rx2, pid2) = session::spawn_sql(
        leader,
        "SET statement_timeout = '200ms'",
        "INSERT INTO t VALUES (2)",
    )
    .unwrap();
    let started = std::time::Instant::now();
    wait_until(
        T,
        "the commit under statement_timeout to be waiting 1 s after it started",
        || {
            Ok((session::waits_in(leader, pid2, "SyncRep")?
                || session::waits_in(leader, pid2, "Extension")?)
                && started.elapsed() > Duration::from_secs(1))
        },
    )
    .unwrap();
    assert!(
        rx2.try_recv().is_err(),
        "I3: a commit under statement_timeout was acknowledged"
    );

    // Terminating the first one: held off until its commit is durable; meanwhile it keeps waiting.
    leader
        .query_value(&format!("SELECT pg_terminate_backend({pid})"))
        .unwrap();
    wait_until(T, "the waiting backend to take the terminate", || {
        Ok(procs::signal_taken(pid, libc::SIGTERM))
    })
    .unwrap();
    wait_until(
        T,
        "the commit to wait in SyncRep after the terminate",
        || session::waits_in(leader, pid, "SyncRep"),
    )
    .unwrap();
    assert!(
        rx.try_recv().is_err(),
        "I3: a terminated waiting commit answered before it was durable"
    );

    // Once a follower has the commits: the terminated session ends without an answer (never a
    // success), the still-waiting one is acknowledged (it is durable).
    c.node(1).start().unwrap();
    let r = rx
        .recv_timeout(T)
        .expect("the terminated backend's client hears back");
    assert!(
        r.is_err(),
        "I3: a terminated waiting commit was acknowledged: {r:?}"
    );
    assert_eq!(
        rx2.recv_timeout(T).expect("acknowledged once durable"),
        Ok(())
    );
}

/// I3 with a zone policy Postgres cannot express: `zones 2` over zones a, a, b. A commit flushed only in
/// zone a (leader + node2) waits; once the zone-b follower has it, it is acknowledged.
#[test]
fn zones2_commit_needs_the_other_zone() {
    let c = Cluster::start(ClusterSpec {
        zones: vec!["a".into(), "a".into(), "b".into()],
        policy: Some("zones 2".into()),
        ..ClusterSpec::ha(3)
    })
    .unwrap();
    let leader = c.node(0);
    leader.query_strings("CREATE TABLE t(x int)").unwrap();
    c.node(2).stop().unwrap();
    let (rx, pid) = session::spawn_sql(leader, "", "INSERT INTO t VALUES (1)").unwrap();
    wait_until(
        T,
        "the commit to wait (node2 in zone a has it, zone b does not)",
        || {
            Ok(session::waits_in(leader, pid, "SyncRep")?
                || session::waits_in(leader, pid, "Extension")?)
        },
    )
    .unwrap();
    wait_until(T, "node2 (zone a) to have flushed the commit", || {
        Ok(c.node(1).query_value("SELECT count(*) FROM t")?.as_deref() == Some("1"))
    })
    .unwrap();
    assert!(rx.try_recv().is_err(), "I3: acknowledged with zone a only");
    c.node(2).start().unwrap();
    assert_eq!(
        rx.recv_timeout(T).expect("acknowledged once zone b has it"),
        Ok(())
    );
}

fn assert_refused(n: &Node, what: &str) {
    let err = n
        .query_strings("INSERT INTO t VALUES (42)")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pg_ha: writes are refused on this node"),
        "I6: a write on {what} ({}) was not refused by pg_ha: {err}",
        n.name()
    );
}

/// I6: a write on a follower, on an observer, and on a restarted former leader that cannot confirm its
/// term fails with pg_ha's error; none is acknowledged; the fenced node reports itself read-only so
/// `target_session_attrs=read-write` skips it.
#[test]
fn writes_refused_off_the_established_leader() {
    let c = Cluster::start(ClusterSpec {
        nodes: 4,
        add_members: false,
        ..ClusterSpec::ha(4)
    })
    .unwrap();
    let leader = c.node(0);
    ha::add_members(leader, &["node2", "node3"], "any 1", T).unwrap();
    leader.query_strings("CREATE TABLE t(x int)").unwrap();
    c.wait_replayed(leader, T).unwrap();
    assert_refused(c.node(1), "a follower");
    assert_refused(c.node(3), "an observer");

    // The leader restarts while neither follower answers: it cannot confirm that no higher term exists,
    // so from its very first transaction it refuses writes and says it is read-only.
    stop_followers(&c);
    leader.kill9().unwrap();
    leader.start().unwrap();
    assert_refused(leader, "a restarted leader that cannot confirm its term");
    assert_eq!(
        leader
            .query_value("SHOW default_transaction_read_only")
            .unwrap()
            .as_deref(),
        Some("on")
    );
    let rw = format!("{} target_session_attrs=read-write", leader.conninfo());
    assert!(
        postgres::Client::connect(&rw, postgres::NoTls).is_err(),
        "I6: target_session_attrs=read-write accepted a fenced node"
    );
    assert_eq!(
        leader
            .query_value("SELECT count(*) FROM t WHERE x = 42")
            .unwrap()
            .as_deref(),
        Some("0")
    );

    // A follower comes back: a majority (2 of 3) confirms term 1, the fence opens.
    c.node(1).start().unwrap();
    wait_until(T, "the leader to be established again", || {
        Ok(leader.query_strings("INSERT INTO t VALUES (7)").is_ok())
    })
    .unwrap();
    assert!(leader.log_contains("pg_ha: established as leader of term 1"));
}
