//! This node's own WAL state, read straight from Postgres (recovery state, timeline, flush and replay
//! positions, system identifier; what the startup process waits on). Main thread / backend only.

use super::catalog;
use pg_ha_core::{LocalWal, Lsn};
use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalState {
    pub in_recovery: bool,
    pub timeline: u32,
    /// Primary: WAL flushed locally. Standby: the larger of WAL received-and-flushed and WAL replayed.
    pub flush_lsn: u64,
    /// Standby: WAL replayed. Primary: same as flush (everything it wrote is applied).
    pub replay_lsn: u64,
    pub system_identifier: u64,
}

pub fn wal_state() -> WalState {
    // SAFETY: plain reads of Postgres' WAL bookkeeping, on the thread that runs Postgres code.
    unsafe {
        let system_identifier = pg_sys::GetSystemIdentifier();
        if pg_sys::RecoveryInProgress() {
            let mut replay_tli: pg_sys::TimeLineID = 0;
            let replay = pg_sys::GetXLogReplayRecPtr(&mut replay_tli);
            let mut recv_tli: pg_sys::TimeLineID = 0;
            let recv = pg_sys::GetWalRcvFlushRecPtr(std::ptr::null_mut(), &mut recv_tli);
            WalState {
                in_recovery: true,
                timeline: replay_tli.max(if recv > replay { recv_tli } else { 0 }),
                flush_lsn: recv.max(replay),
                replay_lsn: replay,
                system_identifier,
            }
        } else {
            let mut tli: pg_sys::TimeLineID = 0;
            let flush = pg_sys::GetFlushRecPtr(&mut tli);
            WalState {
                in_recovery: false,
                timeline: tli,
                flush_lsn: flush,
                replay_lsn: flush,
                system_identifier,
            }
        }
    }
}

/// A look at this node's WAL for `pg_ha_core::position` (does a reported position cover its local
/// WAL?). The receiver's flush position and replay come from shared memory; the startup process' wait
/// event is read (pg_stat_activity, in a transaction) only when `with_wait` says it is needed.
pub fn local_wal(with_wait: impl FnOnce(bool, Lsn) -> bool) -> LocalWal {
    let in_recovery;
    let mut receiver_flush = 0;
    let mut replay = 0;
    // SAFETY: plain reads of Postgres' WAL bookkeeping, on the thread that runs Postgres code.
    unsafe {
        in_recovery = pg_sys::RecoveryInProgress();
        if in_recovery {
            replay = pg_sys::GetXLogReplayRecPtr(std::ptr::null_mut());
            receiver_flush =
                pg_sys::GetWalRcvFlushRecPtr(std::ptr::null_mut(), std::ptr::null_mut());
        }
    }
    let startup_wait = if with_wait(in_recovery, Lsn(receiver_flush)) {
        BackgroundWorker::transaction(|| {
            catalog::select_one::<String>(
                "SELECT wait_event FROM pg_stat_activity WHERE backend_type = 'startup'",
            )
        })
    } else {
        None
    };
    LocalWal {
        in_recovery,
        receiver_flush: Lsn(receiver_flush),
        replay: Lsn(replay),
        startup_wait,
    }
}

/// Whether this standby's WAL receiver is streaming (state `streaming` of `pg_stat_wal_receiver`).
pub fn wal_receiver_streaming() -> bool {
    // SAFETY: WalRcv is allocated at startup; a plain volatile read of one aligned word (the same
    // unlocked read pg_stat_wal_receiver's callers tolerate for observability).
    unsafe {
        let w = pg_sys::WalRcv;
        !w.is_null()
            && std::ptr::read_volatile(&(*w).walRcvState) == pg_sys::WalRcvState::WALRCV_STREAMING
    }
}

/// Postgres' `X/Y` text form of an LSN.
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Microseconds since the Unix epoch, from the system clock (observability only, never decisions).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
