//! Forces Postgres' quorum wait for every commit on a managed leader and holds off a cancel and a
//! terminate while that commit waits (issue 12 item 7: a row is visible to other sessions only once it is
//! durable; I3 as readers see it).
//!
//! Why: Postgres waits for synchronous replication inside `RecordTransactionCommit`, *before*
//! `ProcArrayEndTransaction` makes the commit visible. pg_ha's own gate (`commit_gate`) runs at
//! XACT_EVENT_COMMIT, *after* it. So whenever the gate rather than Postgres' wait does the waiting,
//! readers can see a row that a failover then erases. Two things made that happen:
//! - the writer's `synchronous_commit` (off, local, remote_write): at XACT_EVENT_PRE_COMMIT of a
//!   transaction with an xid, this module does `SET LOCAL synchronous_commit = on` (through the GUC
//!   machinery, so `SyncRepWaitMode` follows; it reverts at transaction end; `remote_apply` stays);
//! - an interrupted wait: `SyncRepWaitForLSN` gives up on a cancel (QueryCancelPending, with a WARNING)
//!   and on a terminate (ProcDiePending), and the commit then becomes visible. From PRE_COMMIT until the
//!   commit (or abort) callback this module replaces the SIGINT and SIGTERM handlers with ones that only
//!   record the request and set the latch, so the wait never sees those flags. Afterwards:
//!   - a cancel (pg_cancel_backend, statement_timeout, lock_timeout: all SIGINT) is dropped: the commit
//!     it arrived during is durable and is acknowledged;
//!   - a terminate takes effect once the commit is durable: the session ends without an answer;
//!   - a terminate sent by the postmaster (fast shutdown) or arriving on a deposed node, where the commit
//!     may never become durable: the backend ends itself with SIGKILL at once, before the commit is
//!     visible. The postmaster then stops (or, outside a shutdown, reinitializes) the whole server without
//!     a shutdown checkpoint: `pg_ctl stop -m fast` with a waiting commit behaves like `-m immediate`.
//!     protocol.md allows this for a node that may be deposed; it comes back fenced.
//!   - postmaster death (PR_SET_PDEATHSIG's SIGPWR, which Postgres arms in every child on Linux): the
//!     backend ends itself with SIGKILL too, instead of letting the wait return and the commit show.
//!
//! What this cannot cover: a policy `synchronous_standby_names` cannot express (`zones K` for K >= 3
//! with two followers outside the leader's zone sharing a zone): there Postgres' wait is a first stage
//! and the gate the rest (see `steward::ssn_for` and the README).

use super::gate_shmem;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::Cell;
use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    /// The handlers are replaced (between PRE_COMMIT and the end of this transaction).
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static OLD_INT: Cell<Option<libc::sigaction>> = const { Cell::new(None) };
    static OLD_TERM: Cell<Option<libc::sigaction>> = const { Cell::new(None) };
    static OLD_PWR: Cell<Option<libc::sigaction>> = const { Cell::new(None) };
}

/// Set by the replacement handlers (signal context: atomics only).
static CANCEL_HELD: AtomicBool = AtomicBool::new(false);
static TERM_HELD: AtomicBool = AtomicBool::new(false);

/// Postgres' postmaster-death signal on Linux (`POSTMASTER_DEATH_SIGNAL` in pmsignal.c).
const PM_DEATH_SIGNAL: c_int = libc::SIGPWR;

/// Write `msg` to stderr (the server log) from a signal handler: write(2) is async-signal-safe.
fn raw_log(msg: &[u8]) {
    // SAFETY: write(2) on fd 2 with a valid buffer.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
    }
}

fn die_now() -> ! {
    // SAFETY: kill(2) and getpid(2) are async-signal-safe; SIGKILL cannot be caught.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
        libc::_exit(2)
    }
}

fn set_latch() {
    // SAFETY: SetLatch on this process' own latch is what Postgres' own handlers do.
    unsafe {
        if !pg_sys::MyLatch.is_null() {
            pg_sys::SetLatch(pg_sys::MyLatch);
        }
    }
}

extern "C" fn on_sigint(_sig: c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let saved = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    CANCEL_HELD.store(true, Ordering::Release);
    set_latch();
    // SAFETY: restore errno as every Postgres handler does.
    unsafe { *libc::__errno_location() = saved };
}

extern "C" fn on_sigterm(_sig: c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let saved = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    // SAFETY: the kernel passes a valid siginfo with SA_SIGINFO; PostmasterPid is set at fork.
    let from_postmaster = !info.is_null() && unsafe { (*info).si_pid() == pg_sys::PostmasterPid };
    if from_postmaster {
        raw_log(b"LOG:  pg_ha: termination requested by the postmaster (shutdown) while a commit waits for durability: this backend ends at once (SIGKILL), unanswered, before the commit is visible\n");
        die_now();
    }
    if gate_shmem::deposed() {
        raw_log(b"LOG:  pg_ha: termination requested while a commit waits for durability on a deposed node: this backend ends at once (SIGKILL), unanswered, before the commit is visible; the postmaster reinitializes\n");
        die_now();
    }
    TERM_HELD.store(true, Ordering::Release);
    set_latch();
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
}

extern "C" fn on_pm_death(_sig: c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: getppid(2) is async-signal-safe.
    if unsafe { libc::getppid() } != unsafe { pg_sys::PostmasterPid } {
        raw_log(b"LOG:  pg_ha: the postmaster died while a commit waits for durability: this backend ends at once (SIGKILL), unanswered, before the commit is visible\n");
        die_now();
    }
}

type Handler = extern "C" fn(c_int, *mut libc::siginfo_t, *mut libc::c_void);

/// Install `h` for `sig`; returns the previous disposition.
fn install(sig: c_int, h: Handler) -> Option<libc::sigaction> {
    // SAFETY: plain sigaction(2) calls with zeroed, then filled, structs.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = h as usize;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut act.sa_mask);
        let mut old: libc::sigaction = std::mem::zeroed();
        (libc::sigaction(sig, &act, &mut old) == 0).then_some(old)
    }
}

fn restore(sig: c_int, old: Option<libc::sigaction>) {
    if let Some(old) = old {
        // SAFETY: restoring the disposition sigaction(2) returned.
        unsafe {
            libc::sigaction(sig, &old, std::ptr::null_mut());
        }
    }
}

/// XACT_EVENT_PRE_COMMIT of a transaction with an xid on a managed node whose fence is open: arm the
/// handlers and force Postgres' quorum wait. An ERROR here aborts the transaction (nothing committed).
pub fn on_pre_commit() {
    if !gate_shmem::managed() {
        return;
    }
    if !ARMED.with(|a| a.replace(true)) {
        CANCEL_HELD.store(false, Ordering::Release);
        TERM_HELD.store(false, Ordering::Release);
        OLD_INT.with(|c| c.set(install(libc::SIGINT, on_sigint)));
        OLD_TERM.with(|c| c.set(install(libc::SIGTERM, on_sigterm)));
        OLD_PWR.with(|c| c.set(install(PM_DEATH_SIGNAL, on_pm_death)));
    }
    // A cancel or terminate that arrived before the handlers changed is serviced now, as if it had come
    // during the statement: the transaction aborts (or the session ends) instead of committing.
    pg_sys::check_for_interrupts!();
    // SAFETY: this backend's own interrupt flags, on its own thread.
    unsafe {
        // Still pending here only if interrupts are held by a caller: keep them for after the commit.
        if pg_sys::QueryCancelPending != 0 {
            pg_sys::QueryCancelPending = 0;
            CANCEL_HELD.store(true, Ordering::Release);
        }
        if pg_sys::ProcDiePending != 0 {
            pg_sys::ProcDiePending = 0;
            TERM_HELD.store(true, Ordering::Release);
        }
        if pg_sys::synchronous_commit
            < pg_sys::SyncCommitLevel::SYNCHRONOUS_COMMIT_REMOTE_FLUSH as c_int
        {
            // SET LOCAL synchronous_commit = on: RecordTransactionCommit then flushes locally and waits
            // in SyncRepWaitForLSN before the commit becomes visible.
            pg_sys::set_config_option(
                c"synchronous_commit".as_ptr(),
                c"on".as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_LOCAL,
                true,
                pg_sys::PGERROR as c_int,
                false,
            );
        }
    }
}

/// XACT_EVENT_COMMIT (before the gate) or XACT_EVENT_ABORT: restore the handlers and act on what they
/// held. Must not raise an ERROR on the commit path (the transaction is committed: it would PANIC).
pub fn on_end(committed: bool) {
    if !ARMED.with(|a| a.replace(false)) {
        return;
    }
    restore(libc::SIGINT, OLD_INT.with(|c| c.take()));
    restore(libc::SIGTERM, OLD_TERM.with(|c| c.take()));
    restore(PM_DEATH_SIGNAL, OLD_PWR.with(|c| c.take()));
    let cancel = CANCEL_HELD.swap(false, Ordering::AcqRel);
    let term = TERM_HELD.swap(false, Ordering::AcqRel);
    if cancel && committed {
        log!("pg_ha: a cancel request arrived while this commit waited for durability: ignored, the commit is durable");
    }
    if term {
        if committed {
            log!("pg_ha: a termination request arrived while this commit waited for durability: the session ends now that the commit is durable, without an answer");
        }
        // SAFETY: this backend's own interrupt state, on its own thread; the die is serviced at the next
        // CHECK_FOR_INTERRUPTS once interrupts are resumed, as if the signal had arrived now.
        unsafe {
            if committed {
                pg_sys::whereToSendOutput = pg_sys::CommandDest::DestNone;
            }
            pg_sys::ProcDiePending = 1;
            pg_sys::InterruptPending = 1;
        }
        set_latch();
    }
}
