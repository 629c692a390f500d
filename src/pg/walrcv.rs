//! This standby's WAL receiver as Postgres' shared memory (`WalRcv`) describes it: none, about to be
//! started by the postmaster, or a running process (connecting, streaming, waiting or stopping).
//!
//! `pg_stat_wal_receiver` is no substitute: it shows nothing until the receiver has connected
//! (`ready_to_display`), so a receiver still connecting to an old leader, which will stream and
//! acknowledge once connected, is invisible there. Main thread / backend only.

use pgrx::pg_sys;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receiver {
    /// No receiver runs and none is being started.
    Stopped,
    /// The startup process asked the postmaster for one; it has no process yet (it will connect with
    /// the conninfo the startup process gave it, whatever `primary_conninfo` says by then).
    Starting,
    /// A receiver process runs (connecting or connected), with this pid.
    Running(i32),
}

pub fn receiver() -> Receiver {
    // SAFETY: WalRcv is allocated at startup; volatile reads of two aligned words, without the spinlock
    // (as local::wal_receiver_streaming). A torn pair only delays the answer to the next look.
    unsafe {
        let w = pg_sys::WalRcv;
        if w.is_null() {
            return Receiver::Stopped;
        }
        let pid = std::ptr::read_volatile(&(*w).pid);
        let state = std::ptr::read_volatile(&(*w).walRcvState);
        if pid != 0 {
            Receiver::Running(pid)
        } else if state == pg_sys::WalRcvState::WALRCV_STOPPED {
            Receiver::Stopped
        } else {
            Receiver::Starting
        }
    }
}
