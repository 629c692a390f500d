//! The agent's metrics and health endpoints (`ha.metrics_address`, issue 7) on a real 3-node cluster.
//! Mostly operational: the figures are there, plausible, and follow a switchover. The invariant-facing
//! checks: exactly one node answers `GET /leader` (and the documented SQL check) with 200 / true,
//! before and after (I1: one leader per term; I6: only the established leader accepts writes), and a
//! promoted candidate that never established answers 503 although it is out of recovery (I6).

use pg_test::pb::{agent_client::AgentClient, PledgeRequest};
use pg_test::{
    free_port, ha, http_get, wait_until, wait_until_ok, Cluster, ClusterSpec, Metrics, Node,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const T: Duration = Duration::from_secs(60);

/// The SQL checks README documents for load balancers (run on a new connection each time).
const SQL_LEADER: &str = "SELECT NOT pg_is_in_recovery() AND current_setting('default_transaction_read_only') = 'off' AND healthy FROM ha.status WHERE is_self";
const SQL_REPLICA: &str = "SELECT pg_is_in_recovery() AND healthy AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming') FROM ha.status WHERE is_self";

fn ha3() -> Cluster {
    Cluster::start(ClusterSpec::ha_any1(3)).unwrap()
}

/// Turn `ha.metrics_address` on for every node (a reload setting), adding the `extra` lines of that
/// node (by name) in the same reload; returns the addresses once each serves `/health`.
fn enable_metrics(c: &Cluster, extra: &[(&str, &str)]) -> Vec<String> {
    let addrs: Vec<String> = c
        .nodes()
        .iter()
        .map(|n| format!("{}:{}", n.host(), free_port(n.host()).unwrap()))
        .collect();
    for (n, a) in c.nodes().iter().zip(&addrs) {
        n.append_conf(&format!("ha.metrics_address = '{a}'"))
            .unwrap();
        for (_, line) in extra.iter().filter(|(name, _)| *name == n.name()) {
            n.append_conf(line).unwrap();
        }
        n.reload().unwrap();
    }
    wait_until(T, "every node to serve /health", || {
        Ok(statuses(&addrs, "/health") == [200, 200, 200])
    })
    .unwrap();
    addrs
}

/// The documented SQL check on each node ("t" / "f"; "?" when the node does not answer).
fn sql(c: &Cluster, query: &str) -> Vec<String> {
    c.nodes()
        .iter()
        .map(|n| {
            n.query_value(query)
                .ok()
                .flatten()
                .unwrap_or_else(|| "?".into())
        })
        .collect()
}

fn metrics(addr: &str) -> pg_test::Result<Metrics> {
    let r = http_get(addr, "/metrics")?;
    if r.status != 200 {
        return Err(format!("GET {addr}/metrics: {}", r.status).into());
    }
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    Metrics::parse(&r.body)
}

fn value(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> pg_test::Result<f64> {
    m.get(name, labels)
        .ok_or_else(|| format!("{name}{labels:?} missing").into())
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The status code of `GET path` on each node (0 = no answer).
fn statuses(addrs: &[String], path: &str) -> Vec<u16> {
    addrs
        .iter()
        .map(|a| http_get(a, path).map(|r| r.status).unwrap_or(0))
        .collect()
}

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}

/// Every figure of one node's metrics that must hold once the cluster has settled with `leader`
/// leading `term` and both other nodes following.
fn check(m: &Metrics, name: &str, leader: &str, term: f64) -> pg_test::Result<()> {
    let one = |b: bool| f64::from(u8::from(b));
    ensure!(value(m, "pg_ha_up", &[])? == 1.0, "{name}: not up");
    ensure!(
        value(m, "pg_ha_term", &[])? == term,
        "{name}: term {:?}",
        m.get("pg_ha_term", &[])
    );
    ensure!(
        m.label_where_one("pg_ha_leader", "node") == [leader],
        "{name}: leader {:?}",
        m.label_where_one("pg_ha_leader", "node")
    );
    ensure!(value(m, "pg_ha_members", &[])? == 3.0, "{name}: members");
    ensure!(
        value(m, "pg_ha_members_healthy", &[])? == 3.0,
        "{name}: healthy members"
    );
    ensure!(
        m.label_where_one("pg_ha_node_role", "role").len() == 3,
        "{name}: one role per node"
    );
    for n in ["node1", "node2", "node3"] {
        ensure!(
            value(m, "pg_ha_node_member", &[("node", n), ("zone", "default")])? == 1.0,
            "{name} sees {n} outside the cohort"
        );
        ensure!(
            value(m, "pg_ha_node_healthy", &[("node", n)])? == 1.0,
            "{name} sees {n} unhealthy"
        );
        let role = if n == leader { "leader" } else { "follower" };
        ensure!(
            value(m, "pg_ha_node_role", &[("node", n), ("role", role)])? == 1.0,
            "{name} does not see {n} as {role}"
        );
    }
    let me_leads = name == leader;
    ensure!(
        value(m, "pg_ha_role", &[("role", "leader")])? == one(me_leads),
        "{name}: own role"
    );
    ensure!(
        value(m, "pg_ha_role", &[("role", "follower")])? == one(!me_leads),
        "{name}: own role"
    );
    ensure!(
        value(m, "pg_ha_established", &[])? == one(me_leads),
        "{name}: established"
    );
    ensure!(
        value(m, "pg_ha_wal_receiver_streaming", &[])? == one(!me_leads),
        "{name}: WAL receiver"
    );
    // Lag: one series per follower, none for the leader, small on an idle cluster.
    let lag = m.series("pg_ha_replication_lag_bytes");
    ensure!(
        lag.len() == 2
            && lag
                .iter()
                .all(|s| s.labels["node"] != leader && s.value < 16e6),
        "{name}: replication lag {lag:?}"
    );
    let fl = m.series("pg_ha_follower_flush_lag_bytes");
    if me_leads {
        ensure!(
            fl.len() == 2 && fl.iter().all(|s| s.value < 16e6),
            "the leader {name} does not see both followers' flush: {fl:?}"
        );
    } else {
        ensure!(
            fl.is_empty(),
            "{name}: only the leader reports walsender flush lag"
        );
    }
    for c in [
        "pg_ha_failovers_total",
        "pg_ha_switchovers_total",
        "pg_ha_pledges_refused_total",
    ] {
        ensure!(
            m.types.get(c).map(String::as_str) == Some("counter"),
            "{c} is not a counter"
        );
    }
    ensure!(
        m.types.get("pg_ha_term").map(String::as_str) == Some("gauge"),
        "pg_ha_term type"
    );
    for s in &m.samples {
        ensure!(m.helped.contains(&s.name), "{} has no HELP line", s.name);
    }
    let changed = value(m, "pg_ha_last_leadership_change_timestamp_seconds", &[])?;
    ensure!(
        changed > now_s() - 600.0 && changed < now_s() + 60.0,
        "{name}: last leadership change at {changed}"
    );
    ensure!(
        value(m, "pg_ha_failovers_total", &[])? == 0.0,
        "{name}: failovers"
    );
    Ok(())
}

/// The metrics of every node once they all pass [`check`] (the deadline error names the last failure).
fn settled(c: &Cluster, addrs: &[String], leader: &str, term: f64) -> Vec<Metrics> {
    wait_until_ok(
        T,
        &format!(
            "every node's metrics to show {leader} leading term {term} with 3 healthy members"
        ),
        || {
            let all: Vec<Metrics> = addrs.iter().map(|a| metrics(a)).collect::<Result<_, _>>()?;
            for (m, n) in all.iter().zip(c.nodes()) {
                check(m, n.name(), leader, term)?;
            }
            Ok(Some(all))
        },
    )
    .unwrap()
}

/// A Pledge for a term below the node's own (a stale coordinator): refused, so counted.
fn stale_pledge(n: &Node, token: &str) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = AgentClient::connect(format!("http://{}", n.agent_addr()))
            .await
            .unwrap();
        let mut req = tonic::Request::new(PledgeRequest {
            term: 1,
            coordinator: "pg_test".into(),
            ..Default::default()
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        client.pledge(req).await.unwrap().into_inner().accepted
    })
}

#[test]
fn metrics_and_health_endpoints_follow_a_switchover() {
    let c = ha3();
    let addrs = enable_metrics(&c, &[]);

    let before = settled(&c, &addrs, "node1", 1.0);
    for m in &before {
        assert_eq!(m.get("pg_ha_switchovers_total", &[]), Some(0.0));
    }
    let changed0 = value(
        &before[0],
        "pg_ha_last_leadership_change_timestamp_seconds",
        &[],
    )
    .unwrap();
    // I1/I6-facing: exactly one node answers /leader with 200, and it is the leader.
    assert_eq!(statuses(&addrs, "/leader"), [200, 503, 503]);
    assert_eq!(sql(&c, SQL_LEADER), ["t", "f", "f"]);
    assert_eq!(statuses(&addrs, "/replica"), [503, 200, 200]);
    assert_eq!(sql(&c, SQL_REPLICA), ["f", "t", "t"]);
    assert_eq!(statuses(&addrs, "/health"), [200, 200, 200]);
    let body = http_get(&addrs[1], "/replica").unwrap().body;
    assert!(
        body.starts_with(
            "{\"ok\":true,\"node\":\"node2\",\"role\":\"follower\",\"term\":1,\"leader\":\"node1\""
        ),
        "{body}"
    );
    assert_eq!(
        http_get(&addrs[1], "/replica?max_lag_bytes=100000000")
            .unwrap()
            .status,
        200
    );
    assert_eq!(http_get(&addrs[0], "/nope").unwrap().status, 404);

    let new = c
        .node(0)
        .query_value("SELECT ha.switchover('node2')")
        .unwrap()
        .unwrap();
    assert_eq!(new, "node2");

    // Every node (node1 after its restart as a follower) shows the new term, leader and counters.
    let after = settled(&c, &addrs, "node2", 2.0);
    for (m, n) in after.iter().zip(c.nodes()) {
        assert_eq!(
            m.get("pg_ha_switchovers_total", &[]),
            Some(1.0),
            "{}",
            n.name()
        );
        let changed = value(m, "pg_ha_last_leadership_change_timestamp_seconds", &[]).unwrap();
        assert!(
            changed > changed0,
            "{}: {changed} after {changed0}",
            n.name()
        );
    }
    wait_until(
        T,
        "exactly node2 to answer /leader with 200 and the others /replica",
        || {
            Ok(statuses(&addrs, "/leader") == [503, 200, 503]
                && statuses(&addrs, "/replica") == [200, 503, 200]
                && sql(&c, SQL_LEADER) == ["f", "t", "f"]
                && sql(&c, SQL_REPLICA) == ["t", "f", "t"])
        },
    )
    .unwrap();

    // A frozen member (SIGSTOP: its agent hangs, its port still accepts) is unhealthy and unreachable
    // in the others' metrics, and healthy again once it runs.
    let n3 = c.node(2);
    n3.sigstop().unwrap();
    wait_until(T, "node2 and node1 to report node3 unhealthy", || {
        for a in &addrs[..2] {
            let m = metrics(a)?;
            if m.get("pg_ha_node_healthy", &[("node", "node3")]) != Some(0.0)
                || m.get(
                    "pg_ha_node_role",
                    &[("node", "node3"), ("role", "unreachable")],
                ) != Some(1.0)
                || m.get("pg_ha_members_healthy", &[]) != Some(2.0)
            {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .unwrap();
    assert_eq!(statuses(&addrs, "/leader")[..2], [503, 200]);
    n3.sigcont().unwrap();
    let after = settled(&c, &addrs, "node2", 2.0);

    // A pledge below node3's term is refused and counted there.
    let refused0 = value(&after[2], "pg_ha_pledges_refused_total", &[]).unwrap();
    assert!(!stale_pledge(c.node(2), c.token()));
    wait_until(T, "node3 to count the refused pledge", || {
        Ok(metrics(&addrs[2])?.get("pg_ha_pledges_refused_total", &[]) == Some(refused0 + 1.0))
    })
    .unwrap();

    // A malformed address is refused at reload and changes nothing; an empty one turns metrics off.
    n3.append_conf("ha.metrics_address = '9187'").unwrap();
    n3.reload().unwrap();
    wait_until(T, "node3 to log the refused ha.metrics_address", || {
        Ok(n3.log_contains("invalid value for parameter \"ha.metrics_address\": \"9187\""))
    })
    .unwrap();
    assert_eq!(http_get(&addrs[2], "/health").unwrap().status, 200);
    assert_eq!(
        n3.query_value("SHOW ha.metrics_address")
            .unwrap()
            .as_deref(),
        Some(addrs[2].as_str())
    );
    n3.append_conf("ha.metrics_address = ''").unwrap();
    n3.reload().unwrap();
    wait_until(T, "node3 to stop serving metrics", || {
        Ok(http_get(&addrs[2], "/health").is_err())
    })
    .unwrap();
    // At server start, a malformed address is a hard error, like the other addresses.
    n3.stop().unwrap();
    n3.append_conf("ha.metrics_address = 'nohost'").unwrap();
    assert!(n3.start().is_err(), "the server must refuse to start");
    assert!(n3.log_contains(
        "FATAL:  pg_ha: invalid value for parameter \"ha.metrics_address\": \"nohost\" has no port"
    ));
}

/// I6: a candidate promoted by a failover that never establishes (failpoint) is out of recovery, so
/// `pg_is_in_recovery()` alone would route writes to it; `/leader` and the SQL check say no.
#[test]
fn a_promoted_but_unestablished_candidate_is_not_ready_as_leader() {
    let c = ha3();
    let fp = "ha.debug_failpoint = 'candidate_never_establish'";
    let addrs = enable_metrics(&c, &[("node2", fp), ("node3", fp)]);
    c.node(0).kill9().unwrap();
    ha::wait_leader_lost(c.node(2), T).unwrap();
    let cand = ha::failover_until_ok(c.node(2), T).unwrap();
    let i = c.nodes().iter().position(|n| n.name() == cand).unwrap();
    // The endpoints answer from the agent's snapshot, published after its main thread has handled
    // the promotion: wait for it to report itself out of recovery.
    wait_until(T, "the candidate's agent to report itself promoted", || {
        Ok(metrics(&addrs[i])?.get("pg_ha_role", &[("role", "leader")]) == Some(1.0))
    })
    .unwrap();
    assert!(!c.node(i).in_recovery().unwrap(), "out of recovery");
    let r = http_get(&addrs[i], "/leader").unwrap();
    assert_eq!(r.status, 503, "I6: {}", r.body);
    assert!(
        r.body.contains("\"role\":\"leader\"") && r.body.contains("fence closed"),
        "{}",
        r.body
    );
    assert_eq!(
        c.node(i).query_value(SQL_LEADER).unwrap().as_deref(),
        Some("f")
    );
    let m = metrics(&addrs[i]).unwrap();
    assert_eq!(m.get("pg_ha_role", &[("role", "leader")]), Some(1.0));
    assert_eq!(m.get("pg_ha_established", &[]), Some(0.0));
    assert_eq!(
        m.get("pg_ha_failovers_total", &[]),
        Some(1.0),
        "its failover row counts"
    );
}
