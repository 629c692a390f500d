//! Sessions a test drives from the side: a statement running in a thread while the test watches what
//! its backend waits for.

use crate::error::Result;
use crate::Node;
use std::sync::mpsc::Receiver;

/// Run `setup` on a new connection to `n`, then `sql` in a thread. Returns the receiver of the outcome
/// (`Ok(())` once acknowledged, `Err(text)` on an error or a lost connection) and the backend's PID.
pub fn spawn_sql(n: &Node, setup: &str, sql: &str) -> Result<(Receiver<Result<(), String>>, i32)> {
    let mut client = n.connect()?;
    client
        .batch_execute(setup)
        .map_err(|e| crate::error::err(format!("{setup}: {e}")))?;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .map_err(|e| crate::error::err(format!("pg_backend_pid(): {e}")))?
        .get(0);
    let (tx, rx) = std::sync::mpsc::channel();
    let sql = sql.to_string();
    std::thread::spawn(move || {
        let r = client.batch_execute(&sql).map_err(|e| format!("{e:?}"));
        let _ = tx.send(r);
    });
    Ok((rx, pid))
}

/// Whether the backend `pid` on `n` waits in `wait_event` (e.g. `SyncRep`, or `Extension` for pg_ha's
/// gate).
pub fn waits_in(n: &Node, pid: i32, event: &str) -> Result<bool> {
    Ok(n.query_value(&format!(
        "SELECT wait_event FROM pg_stat_activity WHERE pid = {pid}"
    ))?
    .as_deref()
        == Some(event))
}
