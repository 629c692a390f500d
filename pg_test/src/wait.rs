//! Waiting for conditions with deadlines: the only way tests wait (no bare sleeps).

use std::time::{Duration, Instant};

use crate::error::{err, Result};

/// Polls `cond` until it returns `Ok(true)`, at a short interval, for at most `timeout`.
///
/// `Ok(false)` and `Err(_)` both mean "not yet"; when the deadline passes the error names `what` and the
/// last error seen (or that the condition stayed false).
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> Result<bool>,
) -> Result<()> {
    wait_until_ok(timeout, what, || match cond() {
        Ok(true) => Ok(Some(())),
        Ok(false) => Ok(None),
        Err(e) => Err(e),
    })
}

/// Like [`wait_until`], but the condition yields a value once it holds (`Ok(Some(v))`), which is returned.
pub fn wait_until_ok<T>(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut interval = Duration::from_millis(10);
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        let last_err = match cond() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        };
        let now = Instant::now();
        if now >= deadline {
            let last = match last_err {
                Some(e) => format!("last error: {e}"),
                None => "the condition was still false".to_string(),
            };
            return Err(err(format!(
                "timed out after {:.1?} ({attempts} attempts) waiting for {what}; {last}",
                now - start
            )));
        }
        std::thread::sleep(interval.min(deadline - now));
        interval = (interval * 2).min(Duration::from_millis(100));
    }
}
