//! Shared memory for durability and fencing: the commit rules in force (current ruleset and the change
//! in flight), whether this node's fence is open, the highest term it knows, and the map from walsender
//! PIDs to node names. Written by the agent's main thread; read by every backend at commit.

use super::shmem::FixedStr;
use pg_ha_core::{CommitRules, Lsn, NodeId, Policy, Ruleset, Term, Zone};
use pgrx::atomics::PgAtomic;
use pgrx::lwlock::PgLwLock;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{pg_shmem_init, pg_sys};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

/// Cohorts are small (policies are evaluated over a handful of nodes); 16 leaves room.
pub const MAX_MEMBERS: usize = 16;
/// Walsenders tracked by name; `max_wal_senders` above this is capped for counting purposes.
pub const MAX_WALSND: usize = 64;
const NAME: usize = 64;

#[derive(Copy, Clone)]
#[repr(C)]
pub struct ShRuleset {
    pub valid: bool,
    pub term: u64,
    pub version: u64,
    pub leader: FixedStr<NAME>,
    pub n: u32,
    pub members: [FixedStr<NAME>; MAX_MEMBERS],
    pub zones: [FixedStr<NAME>; MAX_MEMBERS],
    /// 0 = `any K`, 1 = `zones K`.
    pub policy_kind: u8,
    pub k: u32,
}

impl Default for ShRuleset {
    fn default() -> Self {
        ShRuleset {
            valid: false,
            term: 0,
            version: 0,
            leader: FixedStr::default(),
            n: 0,
            members: [FixedStr::default(); MAX_MEMBERS],
            zones: [FixedStr::default(); MAX_MEMBERS],
            policy_kind: 0,
            k: 0,
        }
    }
}

impl ShRuleset {
    pub fn from_core(r: &Ruleset) -> ShRuleset {
        let mut s = ShRuleset {
            valid: true,
            term: r.term.0,
            version: r.version,
            ..Default::default()
        };
        s.leader.set(r.leader.as_str());
        for (i, (m, z)) in r.cohort.iter().take(MAX_MEMBERS).enumerate() {
            s.members[i].set(m.as_str());
            s.zones[i].set(&z.0);
            s.n = i as u32 + 1;
        }
        let (kind, k) = match r.policy {
            Policy::AnyK(k) => (0, k),
            Policy::Zones(k) => (1, k),
        };
        s.policy_kind = kind;
        s.k = k;
        s
    }

    pub fn to_core(&self) -> Option<Ruleset> {
        if !self.valid {
            return None;
        }
        let cohort: BTreeMap<NodeId, Zone> = (0..self.n as usize)
            .map(|i| {
                (
                    NodeId::new(self.members[i].get()),
                    Zone::new(self.zones[i].get()),
                )
            })
            .collect();
        let policy = if self.policy_kind == 0 {
            Policy::AnyK(self.k)
        } else {
            Policy::Zones(self.k)
        };
        Ruleset::new(
            Term(self.term),
            self.version,
            NodeId::new(self.leader.get()),
            cohort,
            policy,
        )
        .ok()
    }
}

#[derive(Copy, Clone, Default)]
#[repr(C)]
pub struct WalSndName {
    pub pid: i32,
    pub name: FixedStr<NAME>,
}

#[derive(Copy, Clone)]
#[repr(C)]
pub struct GateShared {
    pub current: ShRuleset,
    pub pending: ShRuleset,
    /// 0 while the pending change's row is not written yet.
    pub pending_lsn: u64,
    pub walsnd: [WalSndName; MAX_WALSND],
}

impl Default for GateShared {
    fn default() -> Self {
        GateShared {
            current: ShRuleset::default(),
            pending: ShRuleset::default(),
            pending_lsn: 0,
            walsnd: [WalSndName::default(); MAX_WALSND],
        }
    }
}

// SAFETY: plain old data.
unsafe impl PGRXSharedMemory for GateShared {}

pub static GATE: PgLwLock<GateShared> = unsafe { PgLwLock::new(c"pg_ha_gate") };
/// Bumped after every change of the commit rules in `GATE`, so backends can cache the decoded rules.
pub static RULES_GEN: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"pg_ha_rules_gen") };
/// Bumped after every change of the walsender name map.
pub static WALSND_GEN: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"pg_ha_walsnd_gen") };
/// I6: application writes may commit only while this is true (established leader of the highest
/// known term). False at every postmaster start and after every crash-restart, until the agent opens it.
pub static FENCE_OPEN: PgAtomic<AtomicBool> = unsafe { PgAtomic::new(c"pg_ha_fence_open") };
/// Set when the agent pledged to a higher term than the one it leads: commits still waiting for
/// durability must never be acknowledged; their backends end without answering.
pub static DEPOSED: PgAtomic<AtomicBool> = unsafe { PgAtomic::new(c"pg_ha_deposed") };
/// Bumped by every deposition, never lowered (see `depose`).
pub static DEPOSE_EPOCH: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"pg_ha_depose_epoch") };
/// The highest term this node knows (pledged or led).
pub static KNOWN_TERM: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"pg_ha_known_term") };
/// This node belongs to a pg_ha cluster (it pledged, or holds a ruleset row). A managed node with no
/// published commit rules acknowledges nothing that waits in the gate (it is not the leader).
pub static MANAGED: PgAtomic<AtomicBool> = unsafe { PgAtomic::new(c"pg_ha_managed") };
/// The agent's PID, for waking it (SIGUSR1 sets a background worker's latch).
pub static AGENT_PID: PgAtomic<AtomicI32> = unsafe { PgAtomic::new(c"pg_ha_agent_pid") };

pub fn init() {
    pg_shmem_init!(GATE);
    pg_shmem_init!(RULES_GEN = AtomicU64::new(1));
    pg_shmem_init!(WALSND_GEN = AtomicU64::new(1));
    pg_shmem_init!(FENCE_OPEN = AtomicBool::new(false));
    pg_shmem_init!(DEPOSED = AtomicBool::new(false));
    pg_shmem_init!(DEPOSE_EPOCH = AtomicU64::new(0));
    pg_shmem_init!(KNOWN_TERM = AtomicU64::new(0));
    pg_shmem_init!(MANAGED = AtomicBool::new(false));
    pg_shmem_init!(AGENT_PID = AtomicI32::new(0));
}

pub fn fence_open() -> bool {
    FENCE_OPEN.get().load(Ordering::Acquire)
}

/// Open or close the fence. An open fence also counts as established for admission (a leader whose
/// fence opened when it was bootstrapped, or as an unmanaged primary, never passes establishment).
pub fn set_fence(open: bool) {
    FENCE_OPEN.get().store(open, Ordering::Release);
    if open {
        super::admission::established();
    }
}

pub fn managed() -> bool {
    MANAGED.get().load(Ordering::Acquire)
}

/// This node learned that it no longer leads the newest term: commits still waiting in the gate
/// must never be acknowledged. A pledge reads the flush position it reports after this returns: every
/// commit a backend may still acknowledge is below it (commit_gate's module comment).
///
/// The fence closes first, then the epoch moves: a backend that reads the new epoch before its fence
/// check sees the fence closed (commit_gate::note_epoch). The flag can be cleared again (a promotion,
/// an establishment); the epoch only grows, so a commit that was on its way when a deposition happened
/// is ended even if the flag is clear by the time it reaches the gate.
pub fn depose() {
    set_fence(false);
    DEPOSED.get().store(true, Ordering::SeqCst);
    DEPOSE_EPOCH.get().fetch_add(1, Ordering::SeqCst);
    super::admission::forget_established();
    // Pairs with the fence in commit_gate::gate (flush, fence, read the flag and the epoch).
    std::sync::atomic::fence(Ordering::SeqCst);
}

/// How many times this node has been deposed since the postmaster started.
pub fn depose_epoch() -> u64 {
    DEPOSE_EPOCH.get().load(Ordering::SeqCst)
}

/// This node is now the established leader of the highest term it knows: open the fence, and forget
/// a deposition seen on the way there (a steward pass that still read the previous term's row deposes
/// a freshly promoted leader; left set, it would make the gate end every commit of the new term).
pub fn open_as_established() {
    DEPOSED.get().store(false, Ordering::SeqCst);
    set_fence(true);
}

pub fn deposed() -> bool {
    DEPOSED.get().load(Ordering::SeqCst)
}

/// Publish the leader's commit rules (agent main thread).
pub fn publish_rules(rules: Option<&CommitRules>) {
    {
        let mut g = GATE.exclusive();
        match rules {
            None => {
                g.current = ShRuleset::default();
                g.pending = ShRuleset::default();
                g.pending_lsn = 0;
            }
            Some(r) => {
                g.current = ShRuleset::from_core(r.current());
                match r.pending() {
                    Some(p) => {
                        g.pending = ShRuleset::from_core(&p.to);
                        g.pending_lsn = p.lsn.map_or(0, |l| l.0);
                    }
                    None => {
                        g.pending = ShRuleset::default();
                        g.pending_lsn = 0;
                    }
                }
            }
        }
    }
    RULES_GEN.get().fetch_add(1, Ordering::AcqRel);
}

/// Read the commit rules in force (any backend).
pub fn read_rules() -> Option<CommitRules> {
    let g = GATE.share();
    let current = g.current.to_core()?;
    let mut rules = CommitRules::new(current);
    if let Some(to) = g.pending.to_core() {
        // The pending row was validated when it was proposed; these only refuse a second one.
        // pending_lsn 0: announced, row not written yet (the joint rules apply all the same).
        let _ = match g.pending_lsn {
            0 => rules.announce(to),
            lsn => rules.begin(to, Lsn(lsn)),
        };
    }
    Some(rules)
}

/// Publish which walsender PID streams to which node (agent main thread, from pg_stat_replication).
pub fn publish_walsenders(map: &[(i32, String)]) {
    {
        let mut g = GATE.exclusive();
        g.walsnd = [WalSndName::default(); MAX_WALSND];
        for (i, (pid, name)) in map.iter().take(MAX_WALSND).enumerate() {
            g.walsnd[i].pid = *pid;
            g.walsnd[i].name.set(name);
        }
    }
    WALSND_GEN.get().fetch_add(1, Ordering::AcqRel);
}

pub fn read_walsenders() -> Vec<(i32, String)> {
    let g = GATE.share();
    g.walsnd
        .iter()
        .filter(|w| w.pid != 0)
        .map(|w| (w.pid, w.name.get()))
        .collect()
}

/// Wake the agent's main loop now (backend side of a request).
pub fn wake_agent() {
    let pid = AGENT_PID.get().load(Ordering::Acquire);
    if pid > 0 {
        // SAFETY: SIGUSR1 on a background worker runs procsignal_sigusr1_handler, which sets its latch.
        unsafe {
            libc::kill(pid, libc::SIGUSR1);
        }
    }
}
