//! The README's demo: a local 3-node pg_ha cluster on loopback (policy `any 1`), a write load that
//! records every acknowledged id, `ha.status` before, SIGKILL of the leader, `ha.status` after the
//! failover, the old leader rejoining as a follower on its own, and the count of acknowledged writes
//! lost (0). Everything runs under a temp dir and is torn down at the end (PG_TEST_KEEP=1 keeps it).

use pg_test::{count_lost, wait_until, write_load, Cluster, ClusterSpec, Node};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

fn print_status(n: &Node, title: &str) -> pg_test::Result<()> {
    println!("\n-- {title}: SELECT * FROM ha.status on {} --", n.name());
    let rows = n.query_strings(
        "SELECT node_name, role, member::text, zone, term::text, timeline::text, flush_lsn::text,
                replay_lsn::text, coalesce(lag_bytes::text, ''), healthy::text
         FROM ha.status",
    )?;
    println!(
        "{:<8} {:<12} {:<6} {:<8} {:>4} {:>3} {:>12} {:>12} {:>9} {:<7}",
        "node",
        "role",
        "member",
        "zone",
        "term",
        "tli",
        "flush_lsn",
        "replay_lsn",
        "lag",
        "healthy"
    );
    for r in rows {
        let f = |i: usize| r[i].clone().unwrap_or_default();
        println!(
            "{:<8} {:<12} {:<6} {:<8} {:>4} {:>3} {:>12} {:>12} {:>9} {:<7}",
            f(0),
            f(1),
            f(2),
            f(3),
            f(4),
            f(5),
            f(6),
            f(7),
            f(8),
            f(9)
        );
    }
    Ok(())
}

fn print_history(n: &Node) -> pg_test::Result<()> {
    println!("\n-- SELECT * FROM ha.history on {} --", n.name());
    for r in n.query_strings(
        "SELECT format('term %s  leader %s  cohort %s  policy %s  (%s)', term, leader, cohort, policy, reason)
         FROM ha.history",
    )? {
        println!("{}", r[0].clone().unwrap_or_default());
    }
    Ok(())
}

fn leader_log_lines(n: &Node) -> Vec<String> {
    n.read_log()
        .lines()
        .filter(|l| {
            l.contains("pg_ha: coordinator")
                || l.contains("pg_ha: promot")
                || l.contains("pg_ha: established")
                || l.contains("pg_ha: rejoin")
                || l.contains("pg_ha: following")
        })
        .map(|l| l.to_string())
        .collect()
}

fn main() -> pg_test::Result<()> {
    let t0 = Instant::now();
    println!("pg_ha demo: a 3-node cluster on 127.0.0.1 (node1 leader, node2/node3 followers, policy any 1)");
    let c = Cluster::start(ClusterSpec {
        policy: Some("any 1".into()),
        ..ClusterSpec::ha(3)
    })?;
    println!(
        "cluster up in {:.1?} under {}",
        c.startup_time(),
        c.base_dir().display()
    );
    let old = c.node(0);
    for n in c.nodes() {
        wait_until(T, &format!("{} to see 3 healthy nodes", n.name()), || {
            Ok(
                n.query_value("SELECT count(*) FILTER (WHERE healthy) FROM ha.status")?
                    .as_deref()
                    == Some("3"),
            )
        })?;
    }
    println!("\nwrite load: one INSERT at a time through a multi-host connection string with target_session_attrs=read-write");
    let load = write_load(&c.multi_host_conninfo())?;
    load.wait_for_more_acks(200, T)?;
    print_status(old, "before")?;

    println!(
        "\n>>> SIGKILL the leader's postmaster (node1) with {} writes acknowledged",
        load.acked_count()
    );
    let killed = Instant::now();
    old.kill9()?;
    let mut new_leader = None;
    wait_until(T, "a write acknowledged by a new leader", || {
        Ok(load
            .snapshot()
            .acks
            .iter()
            .any(|a| a.at > killed && a.server_port != Some(old.pg_port())))
    })?;
    let first = load
        .snapshot()
        .acks
        .into_iter()
        .find(|a| a.at > killed && a.server_port != Some(old.pg_port()));
    if let Some(a) = &first {
        new_leader = c
            .nodes()
            .iter()
            .find(|n| Some(n.pg_port()) == a.server_port);
        println!(
            ">>> first write acknowledged by {} {:.2?} after the kill",
            new_leader.map(|n| n.name()).unwrap_or("?"),
            a.at - killed
        );
    }
    let new = new_leader.ok_or("no new leader")?;
    load.wait_for_more_acks(100, T)?;
    print_status(new, "after the failover")?;

    println!("\n>>> restart node1 (as a supervisor would); its agent rejoins it as a follower on its own");
    let _ = old.start(); // the rejoin helper stops and restarts it, pg_rewind first if needed
    wait_until(T, "node1 to rejoin as a follower", || {
        Ok(old
            .query_value("SELECT role FROM ha.status WHERE is_self")?
            .as_deref()
            == Some("follower"))
    })?;
    for n in c.nodes() {
        wait_until(T, &format!("{} to see 3 healthy nodes", n.name()), || {
            Ok(
                n.query_value("SELECT count(*) FILTER (WHERE healthy) FROM ha.status")?
                    .as_deref()
                    == Some("3"),
            )
        })?;
    }
    let acked = load.stop();
    c.wait_replayed(new, T)?;
    print_status(new, "after node1 rejoined")?;
    print_history(new)?;

    println!("\n-- what the agents logged (LOG: pg_ha: ...) --");
    for n in c.nodes() {
        for l in leader_log_lines(n) {
            println!("{}: {}", n.name(), l);
        }
    }

    let mut lost_total = 0;
    for n in c.nodes() {
        let lost = count_lost(n, &acked)?;
        lost_total += lost.len();
        println!(
            "{}: {} of {} acknowledged writes missing",
            n.name(),
            lost.len(),
            acked.len()
        );
    }
    println!(
        "\nwrites acknowledged: {}; acknowledged writes lost: {}; demo finished in {:.1?}",
        acked.len(),
        lost_total,
        t0.elapsed()
    );
    if lost_total != 0 {
        return Err("acknowledged writes were lost".into());
    }
    Ok(())
}
