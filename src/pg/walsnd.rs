//! Flush positions of the standbys streaming from this node, read from the walsenders' shared state
//! and named through the agent's PID-to-node map. Backend or main thread only.

use super::gate_shmem;
use pg_ha_core::{Lsn, NodeId};
use pgrx::pg_sys;
use std::collections::BTreeMap;

/// Flush position per node name, for the walsenders currently streaming (state STREAMING).
///
/// Fields are read without the per-walsender spinlock: each is an aligned 8-byte word (atomic on the
/// platforms Postgres 15 supports for this), and a slot reused by another walsender is caught by
/// reading its PID before and after.
pub fn standby_flush_positions(names: &[(i32, String)]) -> BTreeMap<NodeId, Lsn> {
    let mut out = BTreeMap::new();
    // SAFETY: WalSndCtl is allocated at startup with max_wal_senders slots; plain volatile reads.
    unsafe {
        let ctl = pg_sys::WalSndCtl;
        if ctl.is_null() {
            return out;
        }
        let n = (pg_sys::max_wal_senders.max(0) as usize).min(gate_shmem::MAX_WALSND * 4);
        let base = (*ctl).walsnds.as_ptr();
        for i in 0..n {
            let w = base.add(i);
            let pid = std::ptr::read_volatile(&(*w).pid);
            if pid == 0 {
                continue;
            }
            let state = std::ptr::read_volatile(&(*w).state);
            let flush = std::ptr::read_volatile(&(*w).flush);
            if std::ptr::read_volatile(&(*w).pid) != pid
                || state != pg_sys::WalSndState::WALSNDSTATE_STREAMING
            {
                continue;
            }
            if let Some((_, name)) = names.iter().find(|(p, _)| *p == pid) {
                let e = out.entry(NodeId::new(name.clone())).or_insert(Lsn(0));
                // Two walsenders for one name (a reconnect racing the old one): count the lower.
                *e = if e.0 == 0 {
                    Lsn(flush)
                } else {
                    (*e).min(Lsn(flush))
                };
            }
        }
    }
    out
}
