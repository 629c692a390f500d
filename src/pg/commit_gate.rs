//! The commit gate (protocol.md, I3 and "Postgres traps"): a commit is acknowledged to its client only
//! when the nodes that flushed it satisfy the commit rules in force, and never because a wait was
//! cancelled.
//!
//! How: Postgres' own synchronous replication (`synchronous_standby_names`, kept by the agent in step
//! with the ruleset) does the efficient blocking inside `RecordTransactionCommit`. Then, in the
//! XACT_EVENT_COMMIT callback (after the commit is durable locally, before the client is sent
//! CommandComplete, with interrupts held), this module checks the commit's LSN against the standbys'
//! flush positions with the core's `CommitRules::commit_gate_lsn`. Normally that already holds and costs
//! a few microseconds. When it does not (the sync-rep wait was cancelled, `zones K` that `ANY K` cannot
//! express, a ruleset change in flight), the backend keeps waiting here: a cancel is swallowed; a
//! termination, a deposed leader or postmaster death ends the backend without sending the client
//! anything (unknown outcome, never a false success); on postmaster death it leaves with `_exit`, as
//! abort processing of a committed transaction would PANIC and send that message.
//!
//! Two-phase commit is gated too: PREPARE TRANSACTION at XACT_EVENT_PREPARE (at the flush position,
//! which covers the prepare record), COMMIT PREPARED and ROLLBACK PREPARED at XACT_EVENT_COMMIT of the
//! statement's transaction (it has no xid; its XactLastCommitEnd is the end of the record it wrote).
//!
//! Deposition is checked first, on every path (I2, protocol.md: a pledged node acknowledges nothing
//! beyond the position it reported). The pledge handler sets the deposed flag and then reads the flush
//! position F it reports; the backend flushes its commit record C locally and then reads the flag, both
//! sides with sequentially consistent ordering. So a backend that sees "not deposed" has C <= F (the
//! coordinator's discovery accounts for C), and one that sees "deposed" acknowledges nothing, even when
//! a follower that has not pledged yet released Postgres' own quorum wait. The flag can be cleared
//! again (the deposed leader is promoted again, or establishes), so the backend also compares the
//! deposition epoch it read before its fence check with the one at the gate: any deposition in
//! between ends the commit unanswered.

use super::{gate_shmem, local, walsnd};
use pg_ha_core::{CommitRules, Lsn};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::sync::atomic::{fence, Ordering};

/// How long one wait-latch sleep lasts while a commit waits here (the slow path only).
const POLL_MS: i64 = 1;

thread_local! {
    /// Set at PRE_COMMIT when the transaction has an xid (it wrote data) or runs COMMIT/ROLLBACK
    /// PREPARED, and at PRE_PREPARE. A transaction without an xid can still have written WAL (HOT
    /// pruning, hint-bit full-page images with checksums) and so set XactLastCommitEnd, but it
    /// committed nothing a client could lose: it is not gated.
    static GATED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Set by the ProcessUtility hook for COMMIT PREPARED / ROLLBACK PREPARED: the statement's own
    /// transaction has no xid, but the record it wrote (XactLastRecEnd, then XactLastCommitEnd) ends a
    /// prepared transaction.
    static FINISHING_PREPARED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The last commit LSN this backend gated: a transaction that wrote no commit record leaves
    /// XactLastCommitEnd unchanged and needs no gate.
    static LAST_GATED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// The deposition epoch read before this transaction's fence check (`note_epoch`).
    static EPOCH: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Decoded commit rules, keyed by the shared generation counter.
    static RULES: RefCell<(u64, Option<CommitRules>)> = const { RefCell::new((0, None)) };
    static NAMES: RefCell<(u64, Vec<(i32, String)>)> = const { RefCell::new((0, Vec::new())) };
}

fn rules() -> Option<CommitRules> {
    let gen = gate_shmem::RULES_GEN.get().load(Ordering::Acquire);
    RULES.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != gen {
            *c = (gen, gate_shmem::read_rules());
        }
        c.1.clone()
    })
}

fn names() -> Vec<(i32, String)> {
    let gen = gate_shmem::WALSND_GEN.get().load(Ordering::Acquire);
    NAMES.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != gen {
            *c = (gen, gate_shmem::read_walsenders());
        }
        c.1.clone()
    })
}

/// Is `lsn` durable under the rules in force? No rules on an unmanaged node (no cluster bootstrapped
/// yet): nothing to wait for. No rules on a managed node (it stopped leading while this commit waited):
/// never.
fn durable(lsn: u64) -> bool {
    let Some(rules) = rules() else {
        return !gate_shmem::managed();
    };
    let standbys = walsnd::standby_flush_positions(&names());
    // The leader's own flush: the commit record is flushed before this callback runs.
    rules.commit_gate_lsn(Lsn(lsn), &standbys) >= Lsn(lsn)
}

/// Called at XACT_EVENT_PRE_COMMIT: remember whether this transaction is gated (it has an xid, or it
/// finishes a prepared transaction).
pub fn on_pre_commit(has_xid: bool) {
    let finishing = FINISHING_PREPARED.with(|c| c.replace(false));
    GATED.with(|c| c.set(has_xid || finishing));
}

/// Called before a fence check that admits a commit (PRE_COMMIT, PRE_PREPARE, COMMIT/ROLLBACK
/// PREPARED): remember the deposition epoch. A deposition after this point, even one whose flag a
/// promotion or an establishment has cleared again by the time the commit reaches the gate, ends the
/// commit unanswered: its record may lie above the flush position the pledge reported.
pub fn note_epoch() {
    EPOCH.with(|c| c.set(gate_shmem::depose_epoch()));
}

/// Whether this transaction runs COMMIT/ROLLBACK PREPARED (its epoch was noted before that statement).
pub fn finishing_prepared_now() -> bool {
    FINISHING_PREPARED.with(|c| c.get())
}

/// Called at XACT_EVENT_PRE_PREPARE: PREPARE TRANSACTION is gated (a transaction manager relies on an
/// acknowledged prepare surviving).
pub fn on_pre_prepare() {
    GATED.with(|c| c.set(true));
}

/// Called by the ProcessUtility hook before COMMIT PREPARED / ROLLBACK PREPARED runs.
pub fn finishing_prepared() {
    FINISHING_PREPARED.with(|c| c.set(true));
}

/// Called at XACT_EVENT_ABORT: nothing of this transaction is gated.
pub fn on_abort() {
    GATED.with(|c| c.set(false));
    FINISHING_PREPARED.with(|c| c.set(false));
}

/// Called at XACT_EVENT_COMMIT for client backends. Must not raise an ERROR (the transaction is already
/// committed: an ERROR here is a PANIC).
pub fn on_commit() {
    // SAFETY: reads of this backend's globals on its own thread.
    gate_once(unsafe { pg_sys::XactLastCommitEnd });
}

/// Called at XACT_EVENT_PREPARE, after EndPrepare flushed the prepare record (and Postgres' own quorum
/// wait ran) and reset XactLastRecEnd: the flush position covers the record. Must not raise an ERROR
/// (the transaction is prepared).
pub fn on_prepare() {
    // SAFETY: GetFlushRecPtr on a primary (PREPARE runs only there), on this backend's thread.
    gate_once(unsafe { pg_sys::GetFlushRecPtr(std::ptr::null_mut()) });
}

fn gate_once(lsn: u64) {
    if !GATED.with(|c| c.replace(false)) {
        return;
    }
    if lsn == 0 || LAST_GATED.with(|c| c.get()) >= lsn {
        return;
    }
    LAST_GATED.with(|c| c.set(lsn));
    gate(lsn);
}

/// Acknowledge the commit ending at `lsn` only when it is durable and this node was not deposed.
fn gate(lsn: u64) {
    // SAFETY: XLogFlush on this backend's thread, outside recovery (a transaction with an xid ran
    // here); it returns at once when `lsn` is already flushed (synchronous_commit local or above).
    // An asynchronous commit is flushed now: it would wait for the standbys' flush anyway.
    unsafe { pg_sys::XLogFlush(lsn) };
    // Pairs with the fence in gate_shmem::depose (see the module comment).
    fence(Ordering::SeqCst);
    loop {
        if gate_shmem::deposed() || gate_shmem::depose_epoch() != EPOCH.with(|c| c.get()) {
            end_unanswered(lsn, "this node was deposed by a higher term");
            return;
        }
        if durable(lsn) {
            return;
        }
        // SAFETY: this backend's own interrupt flags and latch, on its own thread; interrupts are held
        // by CommitTransaction, so none of these is serviced behind our back.
        unsafe {
            if pg_sys::ProcDiePending != 0 {
                end_unanswered(lsn, "the session was terminated");
                return;
            }
            // A cancel (pg_cancel_backend, statement_timeout) must not turn into an acknowledgement:
            // swallow it and keep waiting.
            pg_sys::QueryCancelPending = 0;
            let rc = pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_POSTMASTER_DEATH) as i32,
                POLL_MS,
                pg_sys::PG_WAIT_EXTENSION,
            );
            if rc & pg_sys::WL_POSTMASTER_DEATH as i32 != 0 {
                exit_on_postmaster_death(lsn);
            }
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
    }
}

/// The postmaster died while this commit waited: durability can no longer be proven. Leave at once
/// without telling the client anything. Not through proc_exit (WL_EXIT_ON_PM_DEATH): its abort
/// processing would find the transaction committed and PANIC, and the client would receive that
/// message ("cannot abort transaction N, it was already committed", which reads like a success).
/// `_exit` skips it; nothing is flushed to the client (DestNone first, and the socket just closes).
/// The postmaster is gone, so no one is left to clean shared memory up for: every child exits.
fn exit_on_postmaster_death(lsn: u64) -> ! {
    // SAFETY: this backend's own global, on its own thread; then _exit, which does not return.
    unsafe {
        pg_sys::whereToSendOutput = pg_sys::CommandDest::DestNone;
    }
    log!(
        "pg_ha: the postmaster died while the commit at {} waited for durability; ending the session without an answer",
        local::lsn_text(lsn)
    );
    // SAFETY: ends the process; see above.
    unsafe { libc::_exit(1) }
}

/// End this backend without an answer: DestNone stops CommandComplete and any later message; the
/// pending die (set here if needed) ends the backend once interrupts are resumed.
fn end_unanswered(lsn: u64, why: &str) {
    // SAFETY: this backend's own globals, on its own thread.
    unsafe {
        pg_sys::whereToSendOutput = pg_sys::CommandDest::DestNone;
        pg_sys::ProcDiePending = 1;
        pg_sys::InterruptPending = 1;
    }
    log!(
        "pg_ha: commit at {} not acknowledged: {why}; ending the session without an answer",
        local::lsn_text(lsn)
    );
}
