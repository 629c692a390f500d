//! bench_commit: what pg_ha's commit gate costs. Measures pgbench commit throughput (tps) and latency (average,
//! p50, p99) on two 3-node clusters on this machine, in one run:
//! - `plain`: Postgres streaming replication with `synchronous_standby_names = 'ANY 1 (node2, node3)'`,
//!   `synchronous_commit = on`;
//! - `pg_ha`: pg_ha bootstrapped on node1, node2 and node3 added as members, `ha.set_policy('any 1')`.
//!
//! Both clusters run side by side; the workload is `pgbench -n -N -c C -j 2 -T SECS -l` (simple-update: three
//! writes and a commit per transaction) against node1 after one `pgbench -i -s 1`, the configurations'
//! runs interleaved (plain, pg_ha, pg_ha, plain, ...) so drift on the shared machine hits both alike. It prints
//! the median, min and max per configuration and the ratio pg_ha/plain of the medians.
//!
//! Run: `cargo run --release -p pg_test --bin bench_commit -- [--runs 5] [--duration 10] [--clients 4]
//! [--mode both|plain|ha] [--fsync]` (default `fsync = off`, as in the other tests; `--fsync` turns it on).
//! The pg_ha mode needs the extension installed first: `cargo pgrx install --release --pg-config
//! /usr/bin/pg_config` from the repository root.

use std::process::ExitCode;
use std::time::Duration;

use pg_test::bench::{percentile, pgbench, Summary};
use pg_test::{wait_until, Cluster, ClusterSpec, Node};

const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

struct Options {
    runs: usize,
    duration_secs: u64,
    clients: u32,
    plain: bool,
    ha: bool,
    fsync: bool,
}

const USAGE: &str = "usage: bench_commit [--runs N] [--duration SECS] [--clients C] \
                     [--mode both|plain|ha] [--fsync]";

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        runs: 5,
        duration_secs: 10,
        clients: 4,
        plain: true,
        ha: true,
        fsync: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--fsync" {
            o.fsync = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = |_| format!("{flag}: not a positive number: {value}\n{USAGE}");
        match flag.as_str() {
            "--runs" => o.runs = value.parse().map_err(bad)?,
            "--duration" => o.duration_secs = value.parse().map_err(bad)?,
            "--clients" => o.clients = value.parse().map_err(bad)?,
            "--mode" => {
                (o.plain, o.ha) = match value.as_str() {
                    "both" => (true, true),
                    "plain" => (true, false),
                    "ha" => (false, true),
                    _ => return Err(format!("--mode: both, plain or ha, not {value}\n{USAGE}")),
                }
            }
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    if o.runs == 0 || o.duration_secs == 0 || o.clients == 0 {
        return Err(format!(
            "--runs, --duration and --clients must be > 0\n{USAGE}"
        ));
    }
    Ok(o)
}

/// One configuration under test: its cluster and the figures of each of its runs.
struct Config {
    name: &'static str,
    cluster: Cluster,
    runs: Vec<RunFigures>,
}

struct RunFigures {
    tps: f64,
    lat_avg_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn spec(mut spec: ClusterSpec, o: &Options) -> ClusterSpec {
    spec.fsync_off = !o.fsync;
    spec.setup_timeout_secs = SETUP_TIMEOUT.as_secs();
    spec
}

/// Plain streaming replication, quorum commit `ANY 1 (node2, node3)`, both standbys counted as quorum.
fn start_plain(o: &Options) -> pg_test::Result<Cluster> {
    let c = Cluster::start(spec(ClusterSpec::plain(3), o))?;
    let n1 = c.node(0);
    for sql in [
        "ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (node2, node3)'",
        "ALTER SYSTEM SET synchronous_commit = on",
        "SELECT pg_reload_conf()",
    ] {
        n1.query_strings(sql)?;
    }
    wait_until(
        SETUP_TIMEOUT,
        "node2 and node3 to be quorum standbys of node1",
        || {
            Ok(n1
                .query_value(
                    "SELECT count(*) FROM pg_stat_replication \
                     WHERE application_name IN ('node2', 'node3') AND sync_state = 'quorum'",
                )?
                .as_deref()
                == Some("2"))
        },
    )?;
    check_synchronous_commit(n1)?;
    Ok(c)
}

/// pg_ha: bootstrapped, node2 and node3 members, policy `any 1`; checked through `ha.status` and `ha.history`.
fn start_ha(o: &Options) -> pg_test::Result<Cluster> {
    let c = Cluster::start(spec(
        ClusterSpec {
            policy: Some("any 1".into()),
            ..ClusterSpec::ha(3)
        },
        o,
    ))?;
    let n1 = c.node(0);
    let members = "SELECT count(*) FROM ha.status WHERE member AND node_name IN ('node2', 'node3')";
    wait_until(
        SETUP_TIMEOUT,
        "ha.status to list node2 and node3 as members",
        || Ok(n1.query_value(members)?.as_deref() == Some("2")),
    )?;
    let policy = n1
        .query_value("SELECT policy FROM ha.history ORDER BY created_at DESC LIMIT 1")?
        .unwrap_or_default();
    if !policy.trim().eq_ignore_ascii_case("any 1") {
        return Err(format!("the latest ha.history row has policy {policy:?}, not 'any 1'").into());
    }
    check_synchronous_commit(n1)?;
    Ok(c)
}

fn check_synchronous_commit(n: &Node) -> pg_test::Result<()> {
    match n.query_value("SHOW synchronous_commit")?.as_deref() {
        Some("on") => Ok(()),
        other => Err(format!("synchronous_commit is {other:?} on {}, not on", n.name()).into()),
    }
}

/// One timed pgbench run against node1.
fn run_once(c: &Cluster, o: &Options) -> pg_test::Result<RunFigures> {
    let (clients, threads, secs) = (
        o.clients.to_string(),
        o.clients.min(2).to_string(),
        o.duration_secs.to_string(),
    );
    let args = [
        "-n", "-N", "-c", &clients, "-j", &threads, "-T", &secs, "-l",
    ];
    let timeout = Duration::from_secs(o.duration_secs + 120);
    let out = pgbench(c.node(0), &args, timeout)?;
    let lat = &out.tx_latencies_ms;
    let missing = || format!("pgbench wrote no per-transaction log:\n{}", out.stdout);
    Ok(RunFigures {
        tps: out.tps()?,
        lat_avg_ms: out.latency_avg_ms()?,
        p50_ms: percentile(lat, 50.0).ok_or_else(missing)?,
        p99_ms: percentile(lat, 99.0).ok_or_else(missing)?,
    })
}

fn summary(c: &Config, f: impl Fn(&RunFigures) -> f64) -> Summary {
    let v: Vec<f64> = c.runs.iter().map(f).collect();
    Summary::of(&v).expect("at least one run")
}

fn print_table(configs: &[Config], o: &Options) {
    println!(
        "\ncommit overhead, 3 nodes, any 1, pgbench -N -c {} -j {} -T {}, {} runs each, fsync={}",
        o.clients,
        o.clients.min(2),
        o.duration_secs,
        o.runs,
        if o.fsync { "on" } else { "off" }
    );
    println!(
        "{:<8} {:>11} {:>19} {:>18} {:>15} {:>14} {:>14}",
        "config",
        "tps(median)",
        "tps(min..max)",
        "lat_avg_ms(median)",
        "lat_avg(min..max)",
        "p50_ms(median)",
        "p99_ms(median)"
    );
    for c in configs {
        let (tps, lat) = (summary(c, |r| r.tps), summary(c, |r| r.lat_avg_ms));
        println!(
            "{:<8} {:>11.1} {:>19} {:>18.3} {:>15} {:>14.3} {:>14.3}",
            c.name,
            tps.median,
            format!("{:.1}..{:.1}", tps.min, tps.max),
            lat.median,
            format!("{:.2}..{:.2}", lat.min, lat.max),
            summary(c, |r| r.p50_ms).median,
            summary(c, |r| r.p99_ms).median,
        );
    }
    if let [plain, ha] = configs {
        let ratio = |f: fn(&RunFigures) -> f64| summary(ha, f).median / summary(plain, f).median;
        println!(
            "ratio pg_ha/plain (medians): tps {:.3}   latency avg {:.3}   p50 {:.3}   p99 {:.3}",
            ratio(|r| r.tps),
            ratio(|r| r.lat_avg_ms),
            ratio(|r| r.p50_ms),
            ratio(|r| r.p99_ms),
        );
    }
}

fn run(o: &Options) -> Result<(), String> {
    let mut configs = Vec::new();
    if o.plain {
        eprintln!("setting up plain: 3 nodes, synchronous_standby_names = 'ANY 1 (node2, node3)'");
        let cluster =
            start_plain(o).map_err(|e| format!("cannot set up the plain configuration: {e}"))?;
        configs.push(Config {
            name: "plain",
            cluster,
            runs: Vec::new(),
        });
    }
    if o.ha {
        eprintln!(
            "setting up pg_ha: 3 nodes, bootstrap, add_member node2/node3, set_policy('any 1')"
        );
        let cluster = start_ha(o).map_err(|e| {
            format!(
                "cannot set up the pg_ha configuration (is pg_ha installed with `cargo pgrx install \
                 --release --pg-config /usr/bin/pg_config`, and do ha.bootstrap, ha.add_member and \
                 ha.set_policy work?): {e}"
            )
        })?;
        configs.push(Config {
            name: "pg_ha",
            cluster,
            runs: Vec::new(),
        });
    }
    for c in &configs {
        pgbench(
            c.cluster.node(0),
            &["-i", "-s", "1", "-q"],
            Duration::from_secs(300),
        )
        .map_err(|e| format!("{}: pgbench -i failed: {e}", c.name))?;
    }
    for round in 0..o.runs {
        // Alternate which configuration goes first (ABBA...), so linear drift cancels out.
        let mut order: Vec<usize> = (0..configs.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let c = &mut configs[i];
            let f = run_once(&c.cluster, o)
                .map_err(|e| format!("{} run {}: {e}", c.name, round + 1))?;
            eprintln!(
                "{:<6} run {}/{}: {:.1} tps, latency avg {:.3} ms, p50 {:.3} ms, p99 {:.3} ms",
                c.name,
                round + 1,
                o.runs,
                f.tps,
                f.lat_avg_ms,
                f.p50_ms,
                f.p99_ms
            );
            c.runs.push(f);
        }
    }
    print_table(&configs, o);
    Ok(())
}

fn main() -> ExitCode {
    let result = parse_args().and_then(|o| run(&o));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_commit: {e}");
            ExitCode::FAILURE
        }
    }
}
