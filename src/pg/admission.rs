//! Who may connect to a primary that has not (re-)established as leader since its postmaster started
//! (protocol.md I4; issue 12 item 9).
//!
//! After a crash Postgres restarts a former primary as a primary, and crash recovery makes every commit
//! in its WAL visible, including a tail that was never acknowledged and that a newer leader does not
//! have. Until the agent has decided (re-establish as leader, or rewind and follow), that tail must
//! reach no one:
//! - application sessions are refused at connection (FATAL, SQLSTATE 57P03) on a primary unless it is
//!   the established leader (fence open), or has established since this postmaster started and has not
//!   been deposed since (a leader that closed its fence on check-quorum keeps serving reads). The same
//!   holds for a freshly promoted candidate until it establishes, and for a deposed leader.
//! - superusers and roles with the REPLICATION attribute are admitted (operators read `ha.status` and
//!   `ha.history`; the rejoin helper of a diverged follower runs pg_rewind and a CHECKPOINT against a
//!   promoted candidate that needs that follower to establish, possibly as a non-superuser role with
//!   pg_rewind's grants); their sessions stay read-only through the fence. They can read the tail:
//!   the README says so.
//! - `replication=database` connections (SQL and logical decoding over the replication protocol) are
//!   refused whatever the role: logical decoding would stream the tail.
//! - physical replication connections wait (up to `HOLD`) until the agent has confirmed that no higher
//!   term exists (a majority of the cohort reports none, the first step of re-establishment), or this
//!   node was promoted by a coordinator; then they stream (establishment needs followers). Without that
//!   confirmation they are refused, and the standby retries.
//!
//! Standbys are not restricted: what a standby holds came from a leader.
//!
//! The flags live in shared memory, which the postmaster creates afresh at every start and every
//! crash-restart, so they are false until the agent sets them.

use super::{gate_shmem, shmem};
use pgrx::atomics::PgAtomic;
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, pg_sys, PgSqlErrorCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a replication connection to an undecided primary waits for the agent's confirmation.
const HOLD: Duration = Duration::from_secs(10);

/// The fence has opened at least once since this postmaster started (this node established as
/// leader in this lifetime).
static ESTABLISHED: PgAtomic<AtomicBool> = unsafe { PgAtomic::new(c"pg_ha_established_once") };
/// The agent confirmed that this primary still leads the highest term (or it was just promoted):
/// standbys may stream from it.
static STREAMING: PgAtomic<AtomicBool> = unsafe { PgAtomic::new(c"pg_ha_streaming_ok") };

pub fn init() {
    pg_shmem_init!(ESTABLISHED = AtomicBool::new(false));
    pg_shmem_init!(STREAMING = AtomicBool::new(false));
}

/// This node was deposed (it pledged to a higher term): what it established before no longer counts.
pub fn forget_established() {
    ESTABLISHED.get().store(false, Ordering::SeqCst);
}

/// The agent opened the fence (established).
pub fn established() {
    ESTABLISHED.get().store(true, Ordering::SeqCst);
    STREAMING.get().store(true, Ordering::SeqCst);
}

/// The agent confirmed no higher term exists, or promoted this node for a coordinator: standbys may
/// stream from it (re-establishment waits for them).
pub fn allow_streaming() {
    STREAMING.get().store(true, Ordering::SeqCst);
}

fn serves_applications() -> bool {
    gate_shmem::fence_open() || (ESTABLISHED.get().load(Ordering::SeqCst) && !gate_shmem::deposed())
}

fn serves_streaming() -> bool {
    serves_applications() || (STREAMING.get().load(Ordering::SeqCst) && !gate_shmem::deposed())
}

/// The start of PostgreSQL 15's `struct Port` (libpq/libpq-be.h) up to `user_name`: pgrx binds Port as
/// an opaque type. The layout differs in other majors (PostgreSQL 17 dropped `canAcceptConnections`):
/// a port to another major needs its own prefix here.
#[repr(C)]
struct PortPrefix {
    sock: std::ffi::c_int,
    noblock: bool,
    proto: u32,
    laddr: pg_sys::SockAddr,
    raddr: pg_sys::SockAddr,
    remote_host: *mut std::ffi::c_char,
    remote_hostname: *mut std::ffi::c_char,
    remote_hostname_resolv: std::ffi::c_int,
    remote_hostname_errcode: std::ffi::c_int,
    remote_port: *mut std::ffi::c_char,
    can_accept_connections: std::ffi::c_uint,
    database_name: *mut std::ffi::c_char,
    user_name: *mut std::ffi::c_char,
}

/// Is the user of this connection a superuser or a role with the REPLICATION attribute? (ClientAuthentication runs inside a transaction with
/// the shared catalogs available: password authentication reads pg_authid the same way.)
///
/// # Safety
/// `port` is the connection's Port, during ClientAuthentication.
unsafe fn is_operator(port: *mut pg_sys::Port) -> bool {
    unsafe {
        if port.is_null() || port != pg_sys::MyProcPort {
            return false;
        }
        let p = port.cast::<PortPrefix>();
        if (*p).user_name.is_null() {
            return false;
        }
        let oid = pg_sys::get_role_oid((*p).user_name, true);
        oid != pg_sys::InvalidOid && (pg_sys::superuser_arg(oid) || pg_sys::has_rolreplication(oid))
    }
}

fn refuse(what: &str) -> ! {
    pgrx::pg_sys::panic::ErrorReport::new(
        PgSqlErrorCode::ERRCODE_CANNOT_CONNECT_NOW,
        format!("pg_ha: this primary does not accept {what} yet"),
        "pg_ha",
    )
    .set_detail(
        "It has not established as the leader of the highest term since it started, so its WAL may hold \
         commits a newer leader does not have. It serves again once it has re-established, or once it has \
         rejoined as a follower.",
    )
    .set_hint("Connect to the leader, for example with a multi-host connection string and target_session_attrs=read-write. Superusers may still connect.")
    .report(PgLogLevel::FATAL);
    unreachable!()
}

/// Called from the ClientAuthentication hook, after authentication succeeded.
///
/// # Safety
/// `port` is the connection's Port.
pub unsafe fn check(port: *mut pg_sys::Port) {
    // SAFETY: plain reads of this backend's globals.
    let (primary, walsender, db_walsender) = unsafe {
        (
            !pg_sys::RecoveryInProgress(),
            pg_sys::am_walsender,
            pg_sys::am_db_walsender,
        )
    };
    if !shmem::available() || !primary || serves_applications() {
        return;
    }
    if walsender && !db_walsender {
        let deadline = Instant::now() + HOLD;
        while !serves_streaming() {
            if Instant::now() >= deadline {
                refuse("replication connections");
            }
            // SAFETY: this backend's latch; a short sleep while the agent decides.
            unsafe {
                pg_sys::WaitLatch(
                    pg_sys::MyLatch,
                    (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH)
                        as i32,
                    10,
                    pg_sys::PG_WAIT_EXTENSION,
                );
                pg_sys::ResetLatch(pg_sys::MyLatch);
                pgrx::check_for_interrupts!();
            }
        }
        return;
    }
    if db_walsender {
        refuse("replication=database connections");
    }
    // SAFETY: `port` is the connection's Port.
    if unsafe { is_operator(port) } {
        return;
    }
    refuse("application sessions");
}
