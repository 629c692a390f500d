//! Ruleset changes (issue 4, "bad input gets a clear error, and nothing is lost") on real clusters: every
//! refused `ha.bootstrap` / `ha.add_member` / `ha.remove_member` / `ha.set_policy` answers with pg_ha's precise
//! error and leaves the ruleset history and `synchronous_standby_names` exactly as they were; accepted
//! membership changes write one row each and are in force when the call returns. Each test names the
//! invariant it checks.

use pg_test::{ha, wait_until, Cluster, ClusterSpec, Node};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// What a ruleset change may touch: every `ha.history` row (term, leader, cohort, policy, reason) and the
/// leader's `synchronous_standby_names`.
#[derive(Debug, PartialEq, Eq)]
struct Rules {
    history: Vec<String>,
    ssn: String,
}

fn history(n: &Node) -> Vec<String> {
    ha::history(n).unwrap()
}

fn ssn(n: &Node) -> String {
    n.query_value("SHOW synchronous_standby_names")
        .unwrap()
        .unwrap_or_default()
}

fn rules(leader: &Node) -> Rules {
    Rules {
        history: history(leader),
        ssn: ssn(leader),
    }
}

/// `role:member` of `name` in `ha.status` as `viewer` sees it.
fn status_of(viewer: &Node, name: &str) -> pg_test::Result<Option<String>> {
    viewer.query_value(&format!(
        "SELECT role || ':' || member FROM ha.status WHERE node_name = '{name}'"
    ))
}

fn wait_status(viewer: &Node, name: &str, want: &str) {
    wait_until(
        T,
        &format!("{}'s ha.status to show {name} as {want}", viewer.name()),
        || Ok(status_of(viewer, name)?.as_deref() == Some(want)),
    )
    .unwrap();
}

/// Runs `sql` on `on`, which must fail with an error containing `want` (pg_test renders a server error as
/// `SEVERITY: message (SQLSTATE)`), and checks that the leader's ruleset history (row count and rows) and
/// `synchronous_standby_names` are unchanged.
fn assert_refused(leader: &Node, on: &Node, sql: &str, want: &str) {
    let before = rules(leader);
    let e = match on.query_strings(sql) {
        Ok(rows) => panic!("I5: {sql} on {} was accepted: {rows:?}", on.name()),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains(want),
        "{sql} on {}: expected an error containing {want:?}, got: {e}",
        on.name()
    );
    let after = rules(leader);
    assert_eq!(
        after.history.len(),
        before.history.len(),
        "I5: the refused {sql} on {} added a ruleset row",
        on.name()
    );
    assert_eq!(
        after,
        before,
        "I5: the refused {sql} on {} changed the ruleset or synchronous_standby_names",
        on.name()
    );
}

/// node1 leader, node2 and node3 members under `any 1`, node4 a caught-up observer (not a member).
fn ha4_with_observer() -> Cluster {
    let c = Cluster::start(ClusterSpec {
        nodes: 4,
        add_members: false,
        ..ClusterSpec::ha(4)
    })
    .unwrap();
    let leader = c.node(0);
    ha::add_members(leader, &["node2", "node3"], "any 1", T).unwrap();
    wait_status(leader, "node2", "follower:true");
    wait_status(leader, "node3", "follower:true");
    wait_status(leader, "node4", "observer:false");
    c
}

/// I5: every malformed, unknown, unsatisfiable or misplaced ruleset change is refused with pg_ha's precise
/// error and changes nothing: not the ruleset history (on the leader or, once replayed, anywhere), not
/// `synchronous_standby_names`; and no refused change is left in flight (a valid change still goes through
/// afterwards, writing exactly one row).
#[test]
fn refused_changes_say_why_and_change_nothing() {
    let c = ha4_with_observer();
    let leader = c.node(0);
    let (follower, observer) = (c.node(1), c.node(3));
    let start = rules(leader);
    assert_eq!(
        start.history,
        vec![
            "1|node1|{node1}|zones 1|bootstrap",
            "1|node1|{node1,node2}|zones 1|add_member node2",
            "1|node1|{node1,node2,node3}|zones 1|add_member node3",
            "1|node1|{node1,node2,node3}|any 1|set_policy any 1",
        ]
    );
    assert_eq!(start.ssn, "ANY 1 (\"node2\", \"node3\")");

    let refusals: &[(&Node, &str, &str)] = &[
        // Membership.
        (
            leader,
            "SELECT ha.add_member('nosuchnode')",
            "ERROR: pg_ha: unknown node nosuchnode: it must be registered (running as an observer) \
             before it can join (55000)",
        ),
        (
            leader,
            "SELECT ha.add_member('node2')",
            "ERROR: pg_ha: node2 is already a cohort member (55000)",
        ),
        (
            leader,
            "SELECT ha.remove_member('node1')",
            "ERROR: pg_ha: node1 is the leader: switch over to another member before removing it (55000)",
        ),
        (
            leader,
            "SELECT ha.remove_member('node4')",
            "ERROR: pg_ha: node4 is not a cohort member (55000)",
        ),
        (
            leader,
            "SELECT ha.remove_member('nosuchnode')",
            "ERROR: pg_ha: unknown node nosuchnode",
        ),
        // Policy: unsatisfiable by the cohort, malformed, or no change at all.
        (
            leader,
            "SELECT ha.set_policy('any 5')",
            "ERROR: pg_ha: policy any 5 cannot be satisfied by the resulting cohort \
             (3 members in 1 zones) (55000)",
        ),
        (
            leader,
            "SELECT ha.set_policy('zones 2')",
            "ERROR: pg_ha: policy zones 2 cannot be satisfied by the resulting cohort \
             (3 members in 1 zones) (55000)",
        ),
        (
            leader,
            "SELECT ha.set_policy('most 2')",
            "ERROR: pg_ha: invalid policy \"most 2\": unknown policy kind \"most\": \
             expected `any K` or `zones K` (22023)",
        ),
        (
            leader,
            "SELECT ha.set_policy('any')",
            "ERROR: pg_ha: invalid policy \"any\": policy `any` lacks its count: \
             expected `any K` with K >= 1 (22023)",
        ),
        (
            leader,
            "SELECT ha.set_policy('any 1')",
            "ERROR: pg_ha: the change leaves the ruleset as it is (55000)",
        ),
        // Bootstrap: a second one on the leader, one on a standby.
        (
            leader,
            "SELECT ha.bootstrap()",
            "ERROR: pg_ha: a pg_ha cluster already exists: ruleset v4 term 1 led by node1 (55000)",
        ),
        (
            follower,
            "SELECT ha.bootstrap()",
            "ERROR: pg_ha: ha.bootstrap() must run on a primary, and this node is a standby (55000)",
        ),
        // Changes run anywhere but on the leader.
        (
            follower,
            "SELECT ha.add_member('node4')",
            "ERROR: pg_ha: this node is not the leader; run cluster changes on the leader (55000)",
        ),
        (
            follower,
            "SELECT ha.set_policy('any 2')",
            "ERROR: pg_ha: this node is not the leader; run cluster changes on the leader (55000)",
        ),
        (
            observer,
            "SELECT ha.remove_member('node2')",
            "ERROR: pg_ha: this node is not the leader; run cluster changes on the leader (55000)",
        ),
    ];
    for (on, sql, want) in refusals {
        assert_refused(leader, on, sql, want);
    }
    assert_eq!(rules(leader), start);

    // Nothing reached the other nodes either.
    c.wait_replayed(leader, T).unwrap();
    for n in c.nodes() {
        assert_eq!(history(n), start.history, "I5: ha.history on {}", n.name());
    }

    // No refused change is stuck in flight: a valid change goes through and writes exactly one row.
    let r = leader
        .query_value("SELECT ha.set_policy('any 2')")
        .unwrap()
        .unwrap_or_default();
    assert!(r.contains("set_policy any 2"), "set_policy answered {r:?}");
    let mut want = start.history.clone();
    want.push("1|node1|{node1,node2,node3}|any 2|set_policy any 2".into());
    assert_eq!(history(leader), want);
    wait_until(T, "synchronous_standby_names to follow any 2", || {
        Ok(ssn(leader) == "ANY 2 (\"node2\", \"node3\")")
    })
    .unwrap();
}

/// I5 (who may change the ruleset): a role without `ha_admin` cannot run a cluster change, neither without
/// access to schema `ha` nor as a `pg_monitor` member that may read `ha.status`; the refusal changes
/// nothing. The same role, once granted `ha_admin`, changes the policy.
#[test]
fn changes_need_ha_admin() {
    let c = Cluster::start(ClusterSpec {
        policy: Some("any 1".into()),
        ..ClusterSpec::ha(3)
    })
    .unwrap();
    let leader = c.node(0);
    leader
        .query_strings("CREATE ROLE app LOGIN; CREATE ROLE watcher LOGIN IN ROLE pg_monitor")
        .unwrap();
    let start = rules(leader);

    let as_user = |user: &str, sql: &str| -> Result<Vec<String>, String> {
        let mut client = leader.connect_as(user).map_err(|e| e.to_string())?;
        client
            .simple_query(sql)
            .map(|msgs| {
                msgs.into_iter()
                    .filter_map(|m| match m {
                        postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                        _ => None,
                    })
                    .collect()
            })
            .map_err(|e| match e.as_db_error() {
                Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
                None => e.to_string(),
            })
    };
    let refused = |user: &str, sql: &str, want: &str| {
        let e = as_user(user, sql).expect_err(&format!("I5: {sql} as {user} was accepted"));
        assert!(
            e.contains(want),
            "{sql} as {user}: expected an error containing {want:?}, got: {e}"
        );
        assert_eq!(
            rules(leader),
            start,
            "I5: the refused {sql} as {user} changed the ruleset"
        );
    };

    // Without any grant the schema itself is closed.
    refused(
        "app",
        "SELECT ha.add_member('node2')",
        "ERROR: permission denied for schema ha (42501)",
    );
    // pg_monitor may look, not touch.
    assert_eq!(
        as_user("watcher", "SELECT count(*) FROM ha.status").unwrap(),
        vec!["3".to_string()]
    );
    for sql in [
        "SELECT ha.add_member('node2')",
        "SELECT ha.remove_member('node3')",
        "SELECT ha.set_policy('any 2')",
        "SELECT ha.bootstrap()",
    ] {
        let func = sql
            .trim_start_matches("SELECT ha.")
            .split('(')
            .next()
            .unwrap();
        refused(
            "watcher",
            sql,
            &format!("ERROR: permission denied for function {func} (42501)"),
        );
    }

    leader.query_strings("GRANT ha_admin TO app").unwrap();
    let r = as_user("app", "SELECT ha.set_policy('any 2')").unwrap();
    assert!(
        r.first().is_some_and(|m| m.contains("set_policy any 2")),
        "set_policy as app (ha_admin) answered {r:?}"
    );
    let mut want = start.history.clone();
    want.push("1|node1|{node1,node2,node3}|any 2|set_policy any 2".into());
    assert_eq!(history(leader), want);
}

/// I5: removing a member and adding it back are ruleset changes that each write one row and are in force
/// (acknowledged under the previous ruleset) when the call returns: the removed node is an observer that no
/// longer appears in `synchronous_standby_names`, and once re-added it is a follower counted again. While
/// one change waits to become durable, at most one is in flight: a second one is refused.
#[test]
fn remove_and_readd_member() {
    let c = Cluster::start(ClusterSpec {
        policy: Some("any 1".into()),
        ..ClusterSpec::ha(3)
    })
    .unwrap();
    let leader = c.node(0);
    let start = rules(leader);
    assert_eq!(start.ssn, "ANY 1 (\"node2\", \"node3\")");
    let n = start.history.len();

    // Remove node3.
    let r = leader
        .query_value("SELECT ha.remove_member('node3')")
        .unwrap()
        .unwrap_or_default();
    assert!(
        r.contains("remove_member node3"),
        "remove_member answered {r:?}"
    );
    let h = history(leader);
    assert_eq!(h.len(), n + 1, "I5: remove_member wrote {:?}", &h[n..]);
    assert_eq!(h[n], "1|node1|{node1,node2}|any 1|remove_member node3");
    let in_force =
        |v: usize| format!("pg_ha: ruleset v{v} in force (acknowledged under the previous ruleset");
    assert!(
        leader.log_contains(&in_force(n + 1)),
        "I5: no {:?} in node1's log",
        in_force(n + 1)
    );
    wait_until(T, "synchronous_standby_names without node3", || {
        Ok(ssn(leader) == "ANY 1 (\"node2\")")
    })
    .unwrap();
    for viewer in c.nodes() {
        wait_status(viewer, "node3", "observer:false");
        wait_status(viewer, "node2", "follower:true");
    }

    // Add it back.
    let r = leader
        .query_value("SELECT ha.add_member('node3')")
        .unwrap()
        .unwrap_or_default();
    assert!(r.contains("add_member node3"), "add_member answered {r:?}");
    let h = history(leader);
    assert_eq!(h.len(), n + 2, "I5: add_member wrote {:?}", &h[n + 1..]);
    assert_eq!(
        h[n + 1],
        "1|node1|{node1,node2,node3}|any 1|add_member node3"
    );
    assert!(
        leader.log_contains(&in_force(n + 2)),
        "I5: no {:?} in node1's log",
        in_force(n + 2)
    );
    wait_until(T, "synchronous_standby_names with node3 again", || {
        Ok(ssn(leader) == "ANY 1 (\"node2\", \"node3\")")
    })
    .unwrap();
    for viewer in c.nodes() {
        wait_status(viewer, "node3", "follower:true");
    }

    // One change in flight: with both followers down, a change the leader alone could satisfy
    // (`zones 1`) is accepted, but its row cannot become durable under `any 1`, so the call waits; a
    // second change meanwhile is refused and writes nothing.
    c.node(1).stop().unwrap();
    c.node(2).stop().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut client = leader.connect().unwrap();
    let waiting = std::thread::spawn(move || {
        let r = client
            .simple_query("SELECT ha.set_policy('zones 1')")
            .map(|_| ())
            .map_err(|e| format!("{e:?}"));
        let _ = tx.send(r);
    });
    let asked = std::time::Instant::now();
    wait_until(
        T,
        "the set_policy row to be written and still pending 1 s after the call",
        || Ok(history(leader).len() == n + 3 && asked.elapsed() > Duration::from_secs(1)),
    )
    .unwrap();
    assert!(
        rx.try_recv().is_err(),
        "I5: set_policy returned although no follower could acknowledge its row"
    );
    // While the change is in flight, Postgres' wait expresses the old and the new rules jointly (issue
    // 12 item 6): one of node2, node3, never the leader alone as zones 1 would be.
    assert_eq!(
        ssn(leader),
        "FIRST 1 (\"pg_ha_joint_v7_1\", \"pg_ha_joint_v7_2\", \"node2\", \"node3\")",
        "I5: the pending zones 1 took effect before it was durable under any 1"
    );
    let e = leader
        .query_strings("SELECT ha.remove_member('node2')")
        .expect_err("I5: a second change was accepted while one is in flight")
        .to_string();
    assert!(
        e.contains(
            "ERROR: pg_ha: another pg_ha cluster change is in progress; retry when it is done (55006)"
        ),
        "I5: the second change was refused with {e}"
    );
    assert_eq!(
        history(leader).len(),
        n + 3,
        "I5: the refused change wrote a row"
    );
    c.node(1).start().unwrap();
    assert_eq!(
        rx.recv_timeout(T)
            .expect("set_policy returns once a follower acknowledged its row"),
        Ok(())
    );
    waiting.join().unwrap();
    wait_until(
        T,
        "synchronous_standby_names to follow zones 1 (the leader alone)",
        || Ok(ssn(leader).is_empty()),
    )
    .unwrap();
}
