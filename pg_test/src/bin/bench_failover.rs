//! bench_failover: how long the cluster refuses writes when the leader dies (issue 5, "Done when").
//!
//! Each run starts a fresh 3-node cluster (pg_ha bootstrapped on node1, node2 and node3 members, policy
//! `any 1`, `ha.failover_timeout` left at the extension's default unless `--failover-timeout MS` is given),
//! runs `pg_test::write_load` through the cluster's libpq multi-host conninfo (`target_session_attrs=
//! read-write`, one autocommit INSERT at a time, 2 ms apart), waits for 100 acknowledged writes, then
//! SIGKILLs node1's postmaster.
//!
//! What is measured, per run:
//! - **failover time**: from just before the SIGKILL is sent to the moment the load receives the first
//!   commit acknowledgement from a server other than node1 (the load's `Ack { at, server_port }`). It therefore
//!   includes failure detection (`ha.failover_timeout`), the race, promotion and establishment, plus the
//!   client's own reconnect latency: after a failed connect the load retries every 50 ms, so the figure
//!   is up to ~50 ms (plus one connect) above the instant the new leader opened for writes.
//! - **lost**: acknowledged ids (by any server, before or after the kill) missing from the new leader's
//!   `load` table after the load is stopped. Must be 0 (I3).
//!
//! Then, on fresh clusters under the same load, `ha.switchover('node2')` on node1:
//! - **switchover window**: from the last write acknowledged by node1 to the first acknowledged by node2
//!   (the client-visible write unavailability, reconnect latency included);
//! - **call**: how long `SELECT ha.switchover('node2')` took to return;
//! - **lost**: as above, on node2.
//!
//! Run: `cargo run -p pg_test --bin bench_failover -- [--runs 5] [--failover-timeout MS]`. Needs pg_ha
//! installed: `cargo pgrx install --release --pg-config /usr/bin/pg_config` from the repository root.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use pg_test::bench::Summary;
use pg_test::{count_lost, wait_until_ok, write_load, Cluster, ClusterSpec};

/// Deadline for setup steps and for the new leader's first acknowledged write.
const T: Duration = Duration::from_secs(60);
/// Acknowledged writes before the kill.
const WARMUP_ACKS: usize = 100;
/// Acknowledged writes on the new leader after the first one, before the load stops.
const AFTER_ACKS: usize = 50;

const USAGE: &str = "usage: bench_failover [--runs N] [--failover-timeout MS]";

struct Options {
    runs: usize,
    failover_timeout_ms: Option<u64>,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        runs: 5,
        failover_timeout_ms: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = |_| format!("{flag}: not a positive number: {value}\n{USAGE}");
        match flag.as_str() {
            "--runs" => o.runs = value.parse().map_err(bad)?,
            "--failover-timeout" => o.failover_timeout_ms = Some(value.parse().map_err(bad)?),
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    if o.runs == 0 || o.failover_timeout_ms == Some(0) {
        return Err(format!(
            "--runs and --failover-timeout must be > 0\n{USAGE}"
        ));
    }
    Ok(o)
}

/// The figures of one run.
struct Run {
    /// `SHOW ha.failover_timeout` on node1.
    setting: String,
    failover: Duration,
    new_leader: String,
    acked: usize,
    lost: usize,
    uncertain: usize,
}

fn one_run(o: &Options) -> Result<Run, String> {
    let c = Cluster::start(ClusterSpec {
        policy: Some("any 1".into()),
        failover_timeout_ms: o.failover_timeout_ms,
        ..ClusterSpec::ha(3)
    })
    .map_err(|e| {
        format!(
            "cannot start the cluster (is pg_ha installed, and do ha.bootstrap, ha.add_member and \
             ha.set_policy work?): {e}"
        )
    })?;
    let old = c.node(0);
    let setting = old
        .query_value("SHOW ha.failover_timeout")
        .map_err(|e| format!("SHOW ha.failover_timeout: {e}"))?
        .unwrap_or_default();
    let load = write_load(&c.multi_host_conninfo()).map_err(|e| format!("write load: {e}"))?;
    load.wait_for_more_acks(WARMUP_ACKS, T)
        .map_err(|e| format!("before the kill: {e}"))?;
    if let Some(a) = load.last_ack() {
        if a.server_port != Some(old.pg_port()) {
            return Err(format!(
                "the load writes to port {:?}, not to node1 ({})",
                a.server_port,
                old.pg_port()
            ));
        }
    }

    // The clock starts just before the signal: kill9 sends SIGKILL at once, then waits for the processes.
    let killed_at = Instant::now();
    old.kill9().map_err(|e| format!("SIGKILL node1: {e}"))?;
    let first = wait_until_ok(
        T,
        "the first write acknowledged by a node other than node1",
        || {
            Ok(load
                .snapshot()
                .acks
                .into_iter()
                .find(|a| a.at >= killed_at && a.server_port != Some(old.pg_port())))
        },
    )
    .map_err(|e| format!("{e}; load's last error: {:?}", load.snapshot().last_error))?;
    let failover = first.at - killed_at;
    let new = c
        .nodes()
        .iter()
        .find(|n| Some(n.pg_port()) == first.server_port)
        .ok_or_else(|| format!("no node has port {:?}", first.server_port))?;
    load.wait_for_more_acks(AFTER_ACKS, T)
        .map_err(|e| format!("after the failover: {e}"))?;
    let report = load.stop_report();
    let acked = report.acked_ids();
    let lost = count_lost(new, &acked).map_err(|e| format!("count_lost on {}: {e}", new.name()))?;
    if !lost.is_empty() {
        eprintln!(
            "I3 VIOLATED: {} acknowledged ids missing on {}: {:?}",
            lost.len(),
            new.name(),
            &lost[..lost.len().min(20)]
        );
    }
    Ok(Run {
        setting,
        failover,
        new_leader: new.name().to_string(),
        acked: acked.len(),
        lost: lost.len(),
        uncertain: report.uncertain.len(),
    })
}

fn run(o: &Options) -> Result<bool, String> {
    let timeout = match o.failover_timeout_ms {
        Some(ms) => format!("{ms} ms (--failover-timeout)"),
        None => "the extension's default".into(),
    };
    eprintln!(
        "bench_failover: {} runs; each: fresh 3-node cluster, any 1, ha.failover_timeout = {timeout}",
        o.runs
    );
    let mut runs = Vec::new();
    for i in 1..=o.runs {
        let r = one_run(o).map_err(|e| format!("run {i}: {e}"))?;
        eprintln!(
            "run {i}/{}: ha.failover_timeout {}: failover {:.0} ms to {}, {} acknowledged, {} uncertain, lost {}",
            o.runs,
            r.setting,
            r.failover.as_secs_f64() * 1000.0,
            r.new_leader,
            r.acked,
            r.uncertain,
            r.lost
        );
        runs.push(r);
    }
    let ms: Vec<f64> = runs
        .iter()
        .map(|r| r.failover.as_secs_f64() * 1000.0)
        .collect();
    let s = Summary::of(&ms).expect("at least one run");
    println!(
        "\nfailover: SIGKILL of the leader's postmaster -> first INSERT acknowledged by another node \
         (client: libpq multi-host, target_session_attrs=read-write, reconnect every 50 ms)"
    );
    let settings: Vec<&str> = runs.iter().map(|r| r.setting.as_str()).collect();
    println!(
        "3 nodes, policy any 1, ha.failover_timeout = {timeout} (SHOW: {}), {} runs",
        settings.first().copied().unwrap_or("?"),
        s.n
    );
    println!(
        "failover ms: median {:.0}   min {:.0}   max {:.0}",
        s.median, s.min, s.max
    );
    println!(
        "{:<5} {:>12} {:>11} {:>8} {:>10} {:>5}",
        "run", "failover_ms", "new_leader", "acked", "uncertain", "lost"
    );
    for (i, r) in runs.iter().enumerate() {
        println!(
            "{:<5} {:>12.0} {:>11} {:>8} {:>10} {:>5}",
            i + 1,
            r.failover.as_secs_f64() * 1000.0,
            r.new_leader,
            r.acked,
            r.uncertain,
            r.lost
        );
    }
    let lost: usize = runs.iter().map(|r| r.lost).sum();
    println!("acknowledged writes lost on the new leader, all runs: {lost}");

    let mut sw = Vec::new();
    for i in 1..=o.runs {
        let r = one_switchover(o).map_err(|e| format!("switchover run {i}: {e}"))?;
        eprintln!(
            "switchover run {i}/{}: window {:.0} ms, call {:.0} ms, lost {}",
            o.runs,
            r.0.as_secs_f64() * 1000.0,
            r.1.as_secs_f64() * 1000.0,
            r.2
        );
        sw.push(r);
    }
    let win: Vec<f64> = sw.iter().map(|r| r.0.as_secs_f64() * 1000.0).collect();
    let call: Vec<f64> = sw.iter().map(|r| r.1.as_secs_f64() * 1000.0).collect();
    let (w, c) = (
        Summary::of(&win).expect("runs"),
        Summary::of(&call).expect("runs"),
    );
    let sw_lost: usize = sw.iter().map(|r| r.2).sum();
    println!(
        "\nswitchover: ha.switchover('node2') on node1 under the same load; window = last write acknowledged \
         by node1 -> first acknowledged by node2"
    );
    println!(
        "switchover window ms: median {:.0}   min {:.0}   max {:.0}   ({} runs)",
        w.median, w.min, w.max, w.n
    );
    println!(
        "ha.switchover() call ms: median {:.0}   min {:.0}   max {:.0}",
        c.median, c.min, c.max
    );
    println!("acknowledged writes lost after switchovers, all runs: {sw_lost}");
    Ok(lost == 0 && sw_lost == 0)
}

/// One switchover run: (write-unavailability window, ha.switchover() call duration, lost).
fn one_switchover(o: &Options) -> Result<(Duration, Duration, usize), String> {
    let c = Cluster::start(ClusterSpec {
        policy: Some("any 1".into()),
        failover_timeout_ms: o.failover_timeout_ms,
        ..ClusterSpec::ha(3)
    })
    .map_err(|e| format!("cannot start the cluster: {e}"))?;
    let (old, new) = (c.node(0), c.node(1));
    let load = write_load(&c.multi_host_conninfo()).map_err(|e| format!("write load: {e}"))?;
    load.wait_for_more_acks(WARMUP_ACKS, T)
        .map_err(|e| format!("before the switchover: {e}"))?;
    let started = Instant::now();
    let got = old
        .query_value("SELECT ha.switchover('node2')")
        .map_err(|e| format!("ha.switchover: {e}"))?;
    let call = started.elapsed();
    if got.as_deref() != Some("node2") {
        return Err(format!("ha.switchover returned {got:?}"));
    }
    let first = wait_until_ok(T, "the first write acknowledged by node2", || {
        Ok(load
            .snapshot()
            .acks
            .into_iter()
            .find(|a| a.server_port == Some(new.pg_port())))
    })
    .map_err(|e| e.to_string())?;
    load.wait_for_more_acks(AFTER_ACKS, T)
        .map_err(|e| format!("after the switchover: {e}"))?;
    let report = load.stop_report();
    let last_old = report
        .acks
        .iter()
        .filter(|a| a.server_port == Some(old.pg_port()))
        .map(|a| a.at)
        .max()
        .ok_or("no write acknowledged by node1")?;
    let acked = report.acked_ids();
    let lost = count_lost(new, &acked).map_err(|e| format!("count_lost: {e}"))?;
    Ok((
        first.at.saturating_duration_since(last_old),
        call,
        lost.len(),
    ))
}

fn main() -> ExitCode {
    match parse_args().and_then(|o| run(&o)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("bench_failover: acknowledged writes were lost (I3)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("bench_failover: {e}");
            ExitCode::FAILURE
        }
    }
}
