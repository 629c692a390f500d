//! A write load that records every acknowledged commit, and a check of which acknowledged writes a node lacks.
//!
//! The load inserts unique ids into `load(id bigint primary key)`, one autocommit INSERT at a time, through a
//! libpq-style conninfo (normally [`crate::Cluster::multi_host_conninfo`], multi-host with
//! `target_session_attrs=read-write`). An id counts as acknowledged only when the server answered its COMMIT.
//! On any error it reconnects and carries on with a fresh id (an id is never retried). Each statement has a
//! client-side deadline, so a frozen or cut-off server cannot hang the load.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{err, Result};
use crate::node::Node;
use crate::wait::wait_until;

/// One acknowledged write.
#[derive(Clone, Debug)]
pub struct Ack {
    pub id: i64,
    /// When the INSERT was sent.
    pub sent: Instant,
    /// When the acknowledgement arrived.
    pub at: Instant,
    /// With [`LoadOptions::record_term`]: the acknowledging node's `ha.node_name` and the term it reported
    /// (`ha.status`) while running the INSERT.
    pub node: Option<String>,
    pub term: Option<i64>,
    /// `inet_server_port()` of the server that acknowledged it.
    pub server_port: Option<u16>,
}

/// What a load saw.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Acknowledged writes, in order.
    pub acks: Vec<Ack>,
    /// Ids whose outcome is unknown (connection lost or deadline passed before an answer): may or may not be
    /// committed.
    pub uncertain: Vec<i64>,
    /// Ids the server refused with an error (not committed).
    pub refused: Vec<i64>,
    /// Number of failed connection attempts.
    pub connect_failures: usize,
    /// The last error seen, if any.
    pub last_error: Option<String>,
}

impl LoadReport {
    /// The acknowledged ids.
    pub fn acked_ids(&self) -> Vec<i64> {
        self.acks.iter().map(|a| a.id).collect()
    }
}

/// A running write load (a background thread); [`WriteLoad::stop`] ends it. Dropping it stops it too.
pub struct WriteLoad {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<LoadReport>>,
    handle: Option<JoinHandle<()>>,
}

/// Tuning of [`write_load_with`].
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Client-side deadline of connecting plus one INSERT.
    pub statement_timeout: Duration,
    /// Pause between two INSERTs (keeps a 2-core machine usable); zero for as fast as possible.
    pub pause: Duration,
    /// Run the clients inside this network namespace (a cluster's [`crate::Cluster::client_netns`]).
    pub netns: Option<String>,
    /// Record which node and term acknowledged each write (`INSERT ... RETURNING` from `ha.status`; needs
    /// pg_ha).
    pub record_term: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            statement_timeout: Duration::from_secs(5),
            pause: Duration::from_millis(2),
            netns: None,
            record_term: false,
        }
    }
}

/// Starts a write load on `conninfo` with default options. Creates the table first (failing if that fails).
pub fn write_load(conninfo: &str) -> Result<WriteLoad> {
    write_load_with(conninfo, LoadOptions::default())
}

/// Starts a write load on `conninfo`.
pub fn write_load_with(conninfo: &str, opts: LoadOptions) -> Result<WriteLoad> {
    let stop = Arc::new(AtomicBool::new(false));
    let report = Arc::new(Mutex::new(LoadReport::default()));
    let (stop2, report2, conninfo) = (stop.clone(), report.clone(), conninfo.to_string());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<i64>>();
    let handle = std::thread::Builder::new()
        .name("pg_test-write-load".into())
        .spawn(move || {
            // The namespace first: every socket this thread opens from now on is a client's.
            let first_id = opts
                .netns
                .as_deref()
                .map_or(Ok(()), crate::netns::enter)
                .and_then(|()| prepare(&conninfo));
            let first_id = match first_id {
                Ok(id) => {
                    let _ = ready_tx.send(Ok(id));
                    id
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(run_load(conninfo, opts, first_id, stop2, report2));
        })?;
    let first = ready_rx
        .recv()
        .unwrap_or_else(|_| Err(err("write_load thread died")));
    if let Err(e) = first {
        let _ = handle.join();
        return Err(e);
    }
    Ok(WriteLoad {
        stop,
        report,
        handle: Some(handle),
    })
}

/// Creates the table; returns the first id to use.
fn prepare(conninfo: &str) -> Result<i64> {
    let mut client = postgres::Client::connect(conninfo, postgres::NoTls)
        .map_err(|e| err(format!("write_load: connect {conninfo}: {e}")))?;
    client.batch_execute("CREATE TABLE IF NOT EXISTS load(id bigint primary key)")?;
    Ok(client
        .query_one("SELECT coalesce(max(id), 0) + 1 FROM load", &[])?
        .get(0))
}

async fn run_load(
    conninfo: String,
    opts: LoadOptions,
    first_id: i64,
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<LoadReport>>,
) {
    let record = |f: &mut dyn FnMut(&mut LoadReport)| {
        f(&mut report.lock().unwrap_or_else(|p| p.into_inner()))
    };
    let mut next_id = first_id;
    let mut conn: Option<(tokio_postgres::Client, Option<u16>)> = None;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            let all_hosts = PER_HOST_CONNECT * per_host(&conninfo).len() as u32;
            match tokio::time::timeout(opts.statement_timeout.max(all_hosts), connect(&conninfo))
                .await
            {
                Ok(Ok(c)) => conn = Some(c),
                Ok(Err(e)) => {
                    record(&mut |r| {
                        r.connect_failures += 1;
                        r.last_error = Some(e.clone());
                    });
                }
                Err(_) => {
                    record(&mut |r| {
                        r.connect_failures += 1;
                        r.last_error = Some("connect timed out".into());
                    });
                }
            }
            if conn.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await; // reconnect retry interval
                continue;
            }
        }
        let (client, port) = conn.as_ref().expect("connected");
        let port = *port;
        let id = next_id;
        next_id += 1;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
        let sql = if opts.record_term {
            "INSERT INTO load(id) VALUES ($1) RETURNING current_setting('ha.node_name'), \
             (SELECT term FROM ha.status WHERE is_self)"
        } else {
            "INSERT INTO load(id) VALUES ($1)"
        };
        let sent = Instant::now();
        let insert = client.query(sql, &params);
        match tokio::time::timeout(opts.statement_timeout, insert).await {
            Ok(Ok(rows)) => {
                let at = Instant::now();
                let (node, term) = match rows.first() {
                    Some(row) if opts.record_term => (
                        row.try_get::<_, String>(0).ok(),
                        row.try_get::<_, i64>(1).ok(),
                    ),
                    _ => (None, None),
                };
                record(&mut |r| {
                    r.acks.push(Ack {
                        id,
                        sent,
                        at,
                        node: node.clone(),
                        term,
                        server_port: port,
                    })
                })
            }
            Ok(Err(e)) => {
                let refused = e.as_db_error().is_some();
                let msg = e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string());
                record(&mut |r| {
                    if refused {
                        r.refused.push(id);
                    } else {
                        r.uncertain.push(id);
                    }
                    r.last_error = Some(msg.clone());
                });
                conn = None;
            }
            Err(_) => {
                record(&mut |r| {
                    r.uncertain.push(id);
                    r.last_error = Some(format!("INSERT {id} timed out"));
                });
                conn = None;
            }
        }
        if !opts.pause.is_zero() {
            tokio::time::sleep(opts.pause).await; // pacing interval between inserts
        }
    }
}

/// How long one host of a multi-host conninfo may take to answer a connection attempt.
const PER_HOST_CONNECT: Duration = Duration::from_millis(1500);

/// A multi-host conninfo (`host=a,b port=1,2 rest...`) split into one single-host conninfo per host, in
/// order; a single-host one as it is.
pub(crate) fn per_host(conninfo: &str) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    let mut ports: Vec<String> = Vec::new();
    let mut rest: Vec<&str> = Vec::new();
    for kv in conninfo.split_whitespace() {
        match kv.split_once('=') {
            Some(("host", v)) => hosts = v.split(',').map(str::to_string).collect(),
            Some(("port", v)) => ports = v.split(',').map(str::to_string).collect(),
            _ => rest.push(kv),
        }
    }
    if hosts.len() <= 1 {
        return vec![conninfo.to_string()];
    }
    hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let p = ports.get(i).or(ports.first()).cloned().unwrap_or_default();
            format!("host={h} port={p} {}", rest.join(" "))
        })
        .collect()
}

/// Connects, runs the connection task, and learns which server it reached. Each host of a multi-host
/// conninfo gets its own deadline, as libpq's `connect_timeout` does (tokio-postgres' covers only the TCP
/// connect, so a frozen server that accepts the connection would otherwise hold the load forever).
async fn connect(conninfo: &str) -> Result<(tokio_postgres::Client, Option<u16>), String> {
    let mut last = String::from("no host");
    for one in per_host(conninfo) {
        match tokio::time::timeout(PER_HOST_CONNECT, connect_one(&one)).await {
            Ok(Ok(c)) => return Ok(c),
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("{one}: timed out"),
        }
    }
    Err(last)
}

async fn connect_one(conninfo: &str) -> Result<(tokio_postgres::Client, Option<u16>), String> {
    let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    // Make sure the table exists on whichever node this is (idempotent).
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS load(id bigint primary key)")
        .await
        .map_err(|e| e.to_string())?;
    let row = client
        .query_one("SELECT inet_server_port()", &[])
        .await
        .map_err(|e| e.to_string())?;
    let port: Option<i32> = row.get(0);
    Ok((client, port.and_then(|p| u16::try_from(p).ok())))
}

impl WriteLoad {
    /// A copy of what the load saw so far.
    pub fn snapshot(&self) -> LoadReport {
        self.report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Number of acknowledged writes so far.
    pub fn acked_count(&self) -> usize {
        self.report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .acks
            .len()
    }

    /// The latest acknowledged write.
    pub fn last_ack(&self) -> Option<Ack> {
        self.report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .acks
            .last()
            .cloned()
    }

    /// Waits until `n` more writes than now are acknowledged.
    pub fn wait_for_more_acks(&self, n: usize, timeout: Duration) -> Result<()> {
        let target = self.acked_count() + n;
        wait_until(timeout, &format!("{target} acknowledged writes"), || {
            let r = self.snapshot();
            if r.acks.len() >= target {
                Ok(true)
            } else {
                Err(err(format!(
                    "{} acknowledged; last error: {:?}",
                    r.acks.len(),
                    r.last_error
                )))
            }
        })
    }

    /// Stops the load; returns the acknowledged ids.
    pub fn stop(self) -> Vec<i64> {
        self.stop_report().acked_ids()
    }

    /// Stops the load; returns everything it saw.
    pub fn stop_report(mut self) -> LoadReport {
        self.halt();
        self.snapshot()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for WriteLoad {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The acknowledged ids missing from `node`'s `load` table (sorted). Empty means nothing was lost there.
pub fn count_lost(node: &Node, acked: &[i64]) -> Result<Vec<i64>> {
    let mut client = node.connect()?;
    let present: HashSet<i64> = client
        .query("SELECT id FROM load", &[])?
        .into_iter()
        .map(|row| row.get::<_, i64>(0))
        .collect();
    let mut lost: Vec<i64> = acked
        .iter()
        .copied()
        .filter(|id| !present.contains(id))
        .collect();
    lost.sort_unstable();
    Ok(lost)
}

#[cfg(test)]
mod tests {
    #[test]
    fn multi_host_conninfo_splits_into_one_per_host() {
        let v = super::per_host(
            "host=10.0.0.1,10.0.0.2 port=5432,5433 user=postgres target_session_attrs=read-write",
        );
        assert_eq!(
            v,
            vec![
                "host=10.0.0.1 port=5432 user=postgres target_session_attrs=read-write",
                "host=10.0.0.2 port=5433 user=postgres target_session_attrs=read-write"
            ]
        );
        assert_eq!(super::per_host("host=a port=1"), vec!["host=a port=1"]);
    }
}
