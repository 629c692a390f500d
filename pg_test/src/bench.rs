//! Helpers for the benchmark binaries: summaries of repeated measurements (median, min, max, percentiles)
//! and running `pgbench` against a node as the postgres account.

use std::path::Path;
use std::time::Duration;

use crate::error::{err, Result};
use crate::node::Node;
use crate::pgcmd::{pg_command, run};
use crate::random::random_hex;

/// Median, minimum and maximum of repeated measurements of one figure.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Number of measurements.
    pub n: usize,
}

impl Summary {
    /// The summary of `values`; `None` if there are none (NaNs are ignored).
    pub fn of(values: &[f64]) -> Option<Summary> {
        let sorted = sorted(values);
        let n = sorted.len();
        if n == 0 {
            return None;
        }
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            n,
        })
    }

    /// The summary of durations, in seconds.
    pub fn of_durations(values: &[Duration]) -> Option<Summary> {
        let secs: Vec<f64> = values.iter().map(Duration::as_secs_f64).collect();
        Summary::of(&secs)
    }
}

/// `values` without NaNs, ascending.
fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The `q`-th percentile (0..=100) of `values` by the nearest-rank method; `None` if there are none.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    let v = sorted(values);
    if v.is_empty() {
        return None;
    }
    let rank = ((q / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// What one `pgbench` invocation printed, and the per-transaction latencies of its `-l` logs, if any.
#[derive(Clone, Debug, Default)]
pub struct PgbenchOutput {
    pub stdout: String,
    pub stderr: String,
    /// Latency of every logged transaction in ms (column 3 of the `-l` logs, which is in µs), in no
    /// particular order. Empty without `-l`.
    pub tx_latencies_ms: Vec<f64>,
}

impl PgbenchOutput {
    /// `tps = X (without initial connection time)`.
    pub fn tps(&self) -> Result<f64> {
        self.figure("tps = ")
    }

    /// `latency average = X ms`.
    pub fn latency_avg_ms(&self) -> Result<f64> {
        self.figure("latency average = ")
    }

    /// The number following `prefix` at the start of a summary line.
    fn figure(&self, prefix: &str) -> Result<f64> {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|x| x.parse().ok())
            .ok_or_else(|| {
                err(format!(
                    "no \"{prefix}<number>\" line in pgbench's output:\n{}{}",
                    self.stdout, self.stderr
                ))
            })
    }
}

/// Runs `pgbench ARGS -h HOST -p PORT -U postgres postgres` against `node` as the postgres account, in a
/// fresh directory under the node's directory (where `-l` writes its `pgbench_log.*` files, which are read
/// and then removed with it). Fails if pgbench exits non-zero or takes longer than `timeout`.
pub fn pgbench(node: &Node, args: &[&str], timeout: Duration) -> Result<PgbenchOutput> {
    let dir = node.dir.join(format!("pgbench.{}", random_hex(4)));
    std::fs::create_dir(&dir).map_err(|e| err(format!("create {}: {e}", dir.display())))?;
    let result = (|| {
        node.user.chown(&dir)?;
        let mut cmd = pg_command(&node.user, "pgbench", &dir);
        cmd.args(args)
            .args(["-h", &node.host, "-p", &node.pg_port.to_string()])
            .args(["-U", "postgres", "postgres"]);
        let out = run(cmd, timeout)?;
        Ok(PgbenchOutput {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            tx_latencies_ms: read_tx_logs(&dir)?,
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The latencies (ms) in every `pgbench_log.*` file in `dir`. A log line is
/// `client_id transaction_no time script_no time_epoch time_us [...]`, `time` being the transaction's
/// latency in µs; failed or skipped transactions (a word instead of a number there) are left out.
fn read_tx_logs(dir: &Path) -> Result<Vec<f64>> {
    let mut lat = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("pgbench_log.")
        {
            continue;
        }
        let text = std::fs::read_to_string(entry.path())?;
        lat.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<f64>().ok())
                .map(|us| us / 1000.0),
        );
    }
    Ok(lat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_odd_even_empty() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = Summary::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[f64::NAN]), None);
    }

    #[test]
    fn percentile_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn parses_pgbench_summary() {
        let out = PgbenchOutput {
            stdout: "transaction type: <builtin: simple update>\nscaling factor: 1\n\
                     number of transactions actually processed: 12345\n\
                     number of failed transactions: 0 (0.000%)\n\
                     latency average = 3.241 ms\ninitial connection time = 5.123 ms\n\
                     tps = 1234.567890 (without initial connection time)\n"
                .into(),
            ..Default::default()
        };
        assert_eq!(out.tps().unwrap(), 1234.56789);
        assert_eq!(out.latency_avg_ms().unwrap(), 3.241);
        assert!(PgbenchOutput::default().tps().is_err());
    }
}
