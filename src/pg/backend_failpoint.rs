//! Test-only pauses inside client backends, armed by `ha.debug_failpoint` (empty in production).
//!
//! `commit_pause_after_fence`: a transaction with an xid that passed the fence check at
//! XACT_EVENT_PRE_COMMIT (or PRE_PREPARE) waits there, before its commit record is written, until the
//! file `pg_ha.failpoint_release` exists in the data directory (60 s at most). A test uses it to let
//! something happen between the fence check and the commit (e.g. a pledge that deposes the leader).
//!
//! Cost when unset: one read of the setting's pointer per commit with an xid.

use super::gucs;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// The failpoint's name in `ha.debug_failpoint`.
pub const COMMIT_PAUSE_AFTER_FENCE: &str = "commit_pause_after_fence";
/// Relative to the data directory (a backend's working directory).
const RELEASE_FILE: &str = "pg_ha.failpoint_release";
const MAX_PAUSE: Duration = Duration::from_secs(60);

fn armed(name: &str) -> bool {
    gucs::DEBUG_FAILPOINT
        .get()
        .is_some_and(|v| v.as_bytes() == name.as_bytes())
}

/// Called right after the fence check passed for a transaction that will write a commit (or prepare)
/// record.
pub fn after_fence_check() {
    if !armed(COMMIT_PAUSE_AFTER_FENCE) {
        return;
    }
    // SAFETY: this backend's own PID.
    let pid = unsafe { pg_sys::MyProcPid };
    log!("pg_ha: failpoint {COMMIT_PAUSE_AFTER_FENCE}: backend {pid} paused after the fence check until {RELEASE_FILE} exists");
    let start = Instant::now();
    while !std::path::Path::new(RELEASE_FILE).exists() && start.elapsed() < MAX_PAUSE {
        // SAFETY: this backend's latch; the transaction has not committed yet, so exiting on
        // postmaster death (abort processing) is fine here.
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                10,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        pg_sys::check_for_interrupts!();
    }
    log!(
        "pg_ha: failpoint {COMMIT_PAUSE_AFTER_FENCE}: backend {pid} resumed after {} ms",
        start.elapsed().as_millis()
    );
}
