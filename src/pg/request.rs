//! Requests from SQL functions to the agent (bootstrap, membership and policy changes): one slot in
//! shared memory. A backend fills it, wakes the agent and waits on its latch for the answer; the agent
//! does the work on its main thread (where the commit rules live) and answers when the change is in
//! force. One request at a time: that is also protocol.md's "at most one change in flight".

use super::gate_shmem;
use super::shmem::FixedStr;
use pgrx::lwlock::PgLwLock;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{pg_shmem_init, pg_sys};
use std::time::Duration;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Bootstrap = 1,
    AddMember = 2,
    RemoveMember = 3,
    SetPolicy = 4,
    Switchover = 5,
    Failover = 6,
    UnsafeForceLeader = 7,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Bootstrap,
            2 => Kind::AddMember,
            3 => Kind::RemoveMember,
            4 => Kind::SetPolicy,
            5 => Kind::Switchover,
            6 => Kind::Failover,
            7 => Kind::UnsafeForceLeader,
            _ => return None,
        })
    }
}

const IDLE: u8 = 0;
const SUBMITTED: u8 = 1;
const TAKEN: u8 = 2;
const DONE: u8 = 3;

#[derive(Copy, Clone)]
#[repr(C)]
pub struct Slot {
    state: u8,
    kind: u8,
    id: u64,
    requester: i32,
    arg: FixedStr<128>,
    ok: bool,
    /// SQLSTATE class of a refusal, as 5 ASCII chars ("" = generic).
    sqlstate: FixedStr<8>,
    message: FixedStr<512>,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            state: IDLE,
            kind: 0,
            id: 0,
            requester: 0,
            arg: FixedStr::default(),
            ok: false,
            sqlstate: FixedStr::default(),
            message: FixedStr::default(),
        }
    }
}

// SAFETY: plain old data.
unsafe impl PGRXSharedMemory for Slot {}

static SLOT: PgLwLock<Slot> = unsafe { PgLwLock::new(c"pg_ha_request") };

pub fn init() {
    pg_shmem_init!(SLOT);
}

/// A refusal or failure, for `ereport`.
pub struct Refusal {
    pub sqlstate: String,
    pub message: String,
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks existence.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// Backend side: submit and wait until the agent answers. Interrupts (cancel, terminate) are serviced
/// while waiting; the agent then finishes the change on its own (it is already a consensus step).
pub fn submit(kind: Kind, arg: &str) -> Result<String, Refusal> {
    let me = std::process::id() as i32;
    let id = {
        let mut s = SLOT.exclusive();
        // DONE: answered; its requester either read it or gave up (cancelled). Both free the slot.
        if s.state != IDLE && s.state != DONE && alive(s.requester) {
            return Err(Refusal {
                sqlstate: "55006".into(), // object_in_use
                message: "another pg_ha cluster change is in progress; retry when it is done"
                    .into(),
            });
        }
        let id = s.id.wrapping_add(1);
        *s = Slot {
            state: SUBMITTED,
            kind: kind as u8,
            id,
            requester: me,
            ..Default::default()
        };
        s.arg.set(arg);
        id
    };
    if gate_shmem::AGENT_PID
        .get()
        .load(std::sync::atomic::Ordering::Acquire)
        <= 0
    {
        SLOT.exclusive().state = IDLE;
        return Err(Refusal {
            sqlstate: "55000".into(),
            message: "the pg_ha agent is not running on this node".into(),
        });
    }
    gate_shmem::wake_agent();
    loop {
        {
            let mut s = SLOT.exclusive();
            if s.id == id && s.state == DONE {
                let result = if s.ok {
                    Ok(s.message.get())
                } else {
                    Err(Refusal {
                        sqlstate: s.sqlstate.get(),
                        message: s.message.get(),
                    })
                };
                s.state = IDLE;
                return result;
            }
        }
        pgrx::check_for_interrupts!();
        // SAFETY: this backend's latch.
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                Duration::from_millis(100).as_millis() as i64,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
    }
}

/// Agent side: take a submitted request, if any.
pub fn take() -> Option<(u64, Kind, String)> {
    let mut s = SLOT.exclusive();
    if s.state != SUBMITTED {
        return None;
    }
    s.state = TAKEN;
    let kind = Kind::from_u8(s.kind)?;
    Some((s.id, kind, s.arg.get()))
}

/// Agent side: answer request `id` and wake its backend.
pub fn answer(id: u64, result: Result<String, (String, String)>) {
    let requester = {
        let mut s = SLOT.exclusive();
        if s.id != id {
            return;
        }
        s.state = DONE;
        match result {
            Ok(msg) => {
                s.ok = true;
                s.message.set(&msg);
            }
            Err((sqlstate, msg)) => {
                s.ok = false;
                s.sqlstate.set(&sqlstate);
                s.message.set(&msg);
            }
        }
        s.requester
    };
    if alive(requester) {
        // SAFETY: SIGUSR1 to a backend sets its latch (procsignal handler).
        unsafe {
            libc::kill(requester, libc::SIGUSR1);
        }
    } else {
        SLOT.exclusive().state = IDLE;
    }
}
