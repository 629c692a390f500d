//! Shared memory: the agent's latest view of its peers and its own heartbeat, for `ha.status` in any
//! backend. Written only by the agent's main thread, read by backends under the LWLock.

use pgrx::lwlock::PgLwLock;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{pg_shmem_init, pg_sys};

/// Enough for any cohort pg_ha is meant for (policies are evaluated over small sets); peers beyond this
/// are logged and left out of `ha.status`.
pub const MAX_PEERS: usize = 32;
const NAME_LEN: usize = 64;
const TEXT_LEN: usize = 160;

/// Fixed-size, NUL-padded text: shared memory cannot hold heap strings.
#[derive(Copy, Clone)]
#[repr(C)]
pub struct FixedStr<const N: usize>([u8; N]);

impl<const N: usize> Default for FixedStr<N> {
    fn default() -> Self {
        FixedStr([0; N])
    }
}

impl<const N: usize> FixedStr<N> {
    pub fn set(&mut self, s: &str) {
        self.0 = [0; N];
        // Truncate on a char boundary, leaving room for the terminating NUL.
        let mut end = s.len().min(N - 1);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.0[..end].copy_from_slice(&s.as_bytes()[..end]);
    }
    pub fn get(&self) -> String {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(N);
        String::from_utf8_lossy(&self.0[..end]).into_owned()
    }
}

/// What the agent last learned about one peer address.
#[derive(Copy, Clone, Default)]
#[repr(C)]
pub struct PeerSlot {
    pub used: bool,
    /// The last poll got an answer (with the right token and cluster).
    pub reachable: bool,
    /// At least one poll ever succeeded (otherwise name/role are unknown).
    pub ever_seen: bool,
    pub member: bool,
    pub in_recovery: bool,
    pub address: FixedStr<NAME_LEN>,
    pub node_name: FixedStr<NAME_LEN>,
    pub role: FixedStr<16>,
    pub zone: FixedStr<NAME_LEN>,
    pub leader: FixedStr<NAME_LEN>,
    pub last_error: FixedStr<TEXT_LEN>,
    pub term: u64,
    pub timeline: u32,
    pub flush_lsn: u64,
    pub replay_lsn: u64,
    /// Unix time in microseconds of the last successful poll (0 = never).
    pub last_seen_us: i64,
}

#[derive(Copy, Clone)]
#[repr(C)]
pub struct PeerTable {
    /// Unix time in microseconds of the agent's last main-loop pass: `healthy` of this node's own row.
    pub agent_heartbeat_us: i64,
    pub agent_pid: i32,
    pub slots: [PeerSlot; MAX_PEERS],
}

impl Default for PeerTable {
    fn default() -> Self {
        PeerTable {
            agent_heartbeat_us: 0,
            agent_pid: 0,
            slots: [PeerSlot::default(); MAX_PEERS],
        }
    }
}

// SAFETY: plain old data, no pointers.
unsafe impl PGRXSharedMemory for PeerTable {}

pub static PEERS: PgLwLock<PeerTable> = unsafe { PgLwLock::new(c"pg_ha_peers") };

static mut INITIALIZED: bool = false;

/// Request and attach the segment; `_PG_init` calls this only under shared_preload_libraries.
pub fn init() {
    pg_shmem_init!(PEERS);
    // SAFETY: set once in the postmaster before any backend forks.
    unsafe { INITIALIZED = true };
}

/// Whether pg_ha's shared memory exists (false when the library was loaded without preloading).
pub fn available() -> bool {
    // SAFETY: written only in the postmaster before fork.
    unsafe { INITIALIZED && pg_sys::IsUnderPostmaster }
}
