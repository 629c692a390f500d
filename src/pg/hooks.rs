//! Hooks into every backend, installed by `_PG_init`: the fence (I6) and the commit gate (I3).
//!
//! - ExecutorStart: a data-modifying statement on a node whose fence is closed fails at once with
//!   pg_ha's error (before Postgres' own read-only check on a standby).
//! - XACT_EVENT_PRE_COMMIT: the backstop of the fence for anything else that wrote (DDL, COPY, ...):
//!   the transaction aborts with pg_ha's error.
//! - XACT_EVENT_PRE_COMMIT of a transaction that wrote (and COMMIT/ROLLBACK PREPARED), then
//!   XACT_EVENT_COMMIT/ABORT: `commit_wait` (Postgres' quorum wait forced, cancel and terminate held
//!   off while the commit waits).
//! - XACT_EVENT_PRE_PREPARE: the fence for PREPARE TRANSACTION (which never reaches PRE_COMMIT).
//! - ProcessUtility: the fence for COMMIT PREPARED / ROLLBACK PREPARED (no xid in their session), and
//!   marking them for the gate.
//! - XACT_EVENT_COMMIT and XACT_EVENT_PREPARE: the commit gate (`commit_gate`).
//! - ClientAuthentication: a primary that has not established since it started admits no application
//!   session and holds replication connections (`admission`); a session that starts while the fence is
//!   closed gets `default_transaction_read_only = on`, which libpq reads at connection time, so
//!   `target_session_attrs=read-write` skips this node.
//!
//! Who is subject to them: client backends, background workers of other extensions, and walsenders of
//! `replication=database` connections (they run SQL). Exempt: the pg_ha agent itself (it writes its
//! ruleset rows before the fence opens and waits for their durability on its own terms), autovacuum,
//! physical walsenders and other auxiliary processes.

use super::{admission, backend_failpoint, commit_gate, commit_wait, gate_shmem, shmem};
use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};
use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set in the agent process: exempt from the fence and the gate.
pub static IS_AGENT: AtomicBool = AtomicBool::new(false);

static mut PREV_EXECUTOR_START: pg_sys::ExecutorStart_hook_type = None;
static mut PREV_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;

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
    // SAFETY: process-local globals.
    let (t, db_walsender) = unsafe { (pg_sys::MyBackendType, pg_sys::am_db_walsender) };
    t == pg_sys::BackendType::B_BACKEND
        || t == pg_sys::BackendType::B_BG_WORKER
        // A `replication=database` connection runs SQL like any session. Streaming itself (physical
        // or logical) commits no transaction with an xid, so it never meets these checks.
        || (t == pg_sys::BackendType::B_WAL_SENDER && db_walsender)
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
            if !commit_gate::finishing_prepared_now() {
                commit_gate::note_epoch();
            }
            // SAFETY: inside a transaction on this backend's thread.
            let wrote =
                unsafe { pg_sys::GetTopTransactionIdIfAny() } != pg_sys::InvalidTransactionId;
            if wrote && !gate_shmem::fence_open() {
                refuse_writes();
            }
            if wrote {
                backend_failpoint::after_fence_check();
            }
            commit_gate::on_pre_commit(wrote);
            if wrote {
                commit_wait::on_pre_commit();
            }
        }
        pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE => {
            commit_gate::note_epoch();
            // PrepareTransaction always assigns an xid and writes a prepare record.
            if !gate_shmem::fence_open() {
                refuse_writes();
            }
            backend_failpoint::after_fence_check();
            commit_gate::on_pre_prepare();
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT => {
            commit_wait::on_end(true);
            commit_gate::on_commit();
        }
        pg_sys::XactEvent::XACT_EVENT_PREPARE => commit_gate::on_prepare(),
        pg_sys::XactEvent::XACT_EVENT_ABORT => {
            commit_wait::on_end(false);
            commit_gate::on_abort();
        }
        _ => {}
    }
}

/// COMMIT PREPARED and ROLLBACK PREPARED write a record that ends a prepared transaction from a
/// transaction without an xid: the fence refuses them here, and the gate is told to wait for them.
#[pg_guard]
#[allow(clippy::too_many_arguments)] // Postgres' hook signature
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: Postgres passes a valid PlannedStmt; a T_TransactionStmt node is a TransactionStmt.
    unsafe {
        let stmt = (*pstmt).utilityStmt;
        if !stmt.is_null()
            && (*stmt).type_ == pg_sys::NodeTag::T_TransactionStmt
            && subject_to_fence()
        {
            let kind = (*(stmt as *mut pg_sys::TransactionStmt)).kind;
            if kind == pg_sys::TransactionStmtKind::TRANS_STMT_COMMIT_PREPARED
                || kind == pg_sys::TransactionStmtKind::TRANS_STMT_ROLLBACK_PREPARED
            {
                commit_gate::note_epoch();
                if !gate_shmem::fence_open() {
                    refuse_writes();
                }
                commit_gate::finishing_prepared();
                // The record it writes becomes visible right after Postgres' quorum wait: force that
                // wait and hold off cancel/terminate during it, as for any commit (issue 12 item 7).
                commit_wait::on_pre_commit();
            }
        }
        match PREV_PROCESS_UTILITY {
            Some(prev) => prev(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
            None => pg_sys::standard_ProcessUtility(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn client_authentication(port: *mut c_void, status: c_int) {
    // SAFETY: chained call with the arguments we were given; SetConfigOption on this backend.
    unsafe {
        if let Some(prev) = PREV_CLIENT_AUTH {
            prev(port, status);
        }
        // STATUS_OK: authentication succeeded (a failure is reported by Postgres itself).
        if status == 0 {
            admission::check(port.cast());
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
        PREV_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
        PREV_CLIENT_AUTH = ClientAuthentication_hook;
        ClientAuthentication_hook = Some(client_authentication);
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
    }
}
