//! Hooks into every backend, installed by `_PG_init`: the fence (I6) and the commit gate (I3).
//!
//! - ExecutorStart: a data-modifying statement on a node whose fence is closed fails at once with
//!   pg_ha's error (before Postgres' own read-only check on a standby).
//! - XACT_EVENT_PRE_COMMIT: the backstop of the fence for anything else that wrote (DDL, COPY, ...):
//!   the transaction aborts with pg_ha's error.
//! - XACT_EVENT_PRE_COMMIT of a transaction that wrote, then XACT_EVENT_COMMIT/ABORT: `commit_wait`
//!   (Postgres' quorum wait forced, cancel and terminate held off while the commit waits).
//! - XACT_EVENT_COMMIT: the commit gate (`commit_gate`).
//! - ClientAuthentication: a session that starts while the fence is closed gets
//!   `default_transaction_read_only = on`, which libpq reads at connection time, so
//!   `target_session_attrs=read-write` skips this node.
//!
//! Who is subject to them: client backends and background workers of other extensions. Exempt: the
//! pg_ha agent itself (it writes its ruleset rows before the fence opens and waits for their
//! durability on its own terms), autovacuum, walsenders and other auxiliary processes.

use super::{commit_gate, commit_wait, gate_shmem, shmem};
use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set in the agent process: exempt from the fence and the gate.
pub static IS_AGENT: AtomicBool = AtomicBool::new(false);

static mut PREV_EXECUTOR_START: pg_sys::ExecutorStart_hook_type = None;

type ClientAuthHook = Option<unsafe extern "C-unwind" fn(port: *mut c_void, status: c_int)>;

unsafe extern "C-unwind" {
    // libpq/auth.h, not in pgrx's bindings.
    static mut ClientAuthentication_hook: ClientAuthHook;
}
static mut PREV_CLIENT_AUTH: ClientAuthHook = None;

fn subject_to_fence() -> bool {
    if !shmem::available() || IS_AGENT.load(Ordering::Relaxed) {
        return false;
    }
    // SAFETY: process-local global.
    let t = unsafe { pg_sys::MyBackendType };
    t == pg_sys::BackendType::B_BACKEND || t == pg_sys::BackendType::B_BG_WORKER
}

fn refuse_writes() -> ! {
    // SAFETY: plain reads.
    let standby = unsafe { pg_sys::RecoveryInProgress() };
    let term = gate_shmem::KNOWN_TERM.get().load(Ordering::Acquire);
    let why = if standby {
        "this node is a standby".to_string()
    } else if gate_shmem::deposed() {
        format!("this node was deposed (a coordinator of term {term} took over)")
    } else {
        format!("this node is not (yet) the established leader of term {term}")
    };
    pgrx::pg_sys::panic::ErrorReport::new(
        PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
        "pg_ha: writes are refused on this node",
        "pg_ha",
    )
    .set_detail(format!(
        "{why}. Only the established leader of the highest term accepts writes."
    ))
    .set_hint("Connect to the leader, for example with a multi-host connection string and target_session_attrs=read-write.")
    .report(PgLogLevel::ERROR);
    unreachable!()
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_start(query: *mut pg_sys::QueryDesc, eflags: c_int) {
    // SAFETY: Postgres passes a valid QueryDesc.
    unsafe {
        let writes = matches!(
            (*query).operation,
            pg_sys::CmdType::CMD_INSERT
                | pg_sys::CmdType::CMD_UPDATE
                | pg_sys::CmdType::CMD_DELETE
                | pg_sys::CmdType::CMD_MERGE
        ) || (!(*query).plannedstmt.is_null()
            && (*(*query).plannedstmt).hasModifyingCTE);
        if writes
            && eflags & pg_sys::EXEC_FLAG_EXPLAIN_ONLY as c_int == 0
            && subject_to_fence()
            && !gate_shmem::fence_open()
        {
            refuse_writes();
        }
        match PREV_EXECUTOR_START {
            Some(prev) => prev(query, eflags),
            None => pg_sys::standard_ExecutorStart(query, eflags),
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    if !subject_to_fence() {
        return;
    }
    match event {
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT => {
            // SAFETY: inside a transaction on this backend's thread.
            let wrote =
                unsafe { pg_sys::GetTopTransactionIdIfAny() } != pg_sys::InvalidTransactionId;
            if wrote && !gate_shmem::fence_open() {
                refuse_writes();
            }
            commit_gate::on_pre_commit(wrote);
            if wrote {
                commit_wait::on_pre_commit();
            }
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT => {
            commit_wait::on_end(true);
            commit_gate::on_commit();
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT => commit_wait::on_end(false),
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn client_authentication(port: *mut c_void, status: c_int) {
    // SAFETY: chained call with the arguments we were given; SetConfigOption on this backend.
    unsafe {
        if let Some(prev) = PREV_CLIENT_AUTH {
            prev(port, status);
        }
        if shmem::available() && !gate_shmem::fence_open() {
            pg_sys::SetConfigOption(
                c"default_transaction_read_only".as_ptr(),
                c"on".as_ptr(),
                pg_sys::GucContext::PGC_SUSET,
                pg_sys::GucSource::PGC_S_OVERRIDE,
            );
        }
    }
}

/// Install the hooks (postmaster, `_PG_init`; inherited by every backend).
pub fn install() {
    // SAFETY: single-threaded postmaster start; previous hooks are chained.
    unsafe {
        PREV_EXECUTOR_START = pg_sys::ExecutorStart_hook;
        pg_sys::ExecutorStart_hook = Some(executor_start);
        PREV_CLIENT_AUTH = ClientAuthentication_hook;
        ClientAuthentication_hook = Some(client_authentication);
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
    }
}
