//! The README's demo: a local 3-node pg_ha cluster on loopback, a write load, and `ha.status` from
//! every node. Everything runs under a temp dir and is torn down at the end (PG_TEST_KEEP=1 keeps it).

use pg_test::{count_lost, wait_until, write_load, Cluster, ClusterSpec, Node};
use std::time::{Duration, Instant};

fn print_status(n: &Node) -> pg_test::Result<()> {
    println!("\n-- ha.status on {} --", n.name());
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

fn main() -> pg_test::Result<()> {
    let t0 = Instant::now();
    println!(
        "pg_ha demo: starting a 3-node cluster (node1 primary, node2/node3 streaming replicas)"
    );
    let c = Cluster::start(ClusterSpec::default())?;
    println!(
        "cluster up in {:.1?} under {}",
        c.startup_time(),
        c.base_dir().display()
    );
    let load = write_load(&c.multi_host_conninfo())?;
    load.wait_for_more_acks(200, Duration::from_secs(30))?;
    for n in c.nodes() {
        wait_until(
            Duration::from_secs(30),
            &format!("{} to see all 3 nodes healthy", n.name()),
            || {
                Ok(
                    n.query_value("SELECT count(*) FILTER (WHERE healthy) FROM ha.status")?
                        .as_deref()
                        == Some("3"),
                )
            },
        )?;
    }
    for n in c.nodes() {
        print_status(n)?;
    }
    let acked = load.stop();
    c.wait_replayed(c.node(0), Duration::from_secs(30))?;
    let lost: usize = c
        .nodes()
        .iter()
        .map(|n| count_lost(n, &acked).map(|l| l.len()))
        .sum::<pg_test::Result<usize>>()?;
    println!(
        "\nwrites acknowledged: {}; missing on any node after replay: {}",
        acked.len(),
        lost
    );
    println!("demo finished in {:.1?}", t0.elapsed());
    if lost != 0 {
        return Err("acknowledged writes are missing".into());
    }
    Ok(())
}
