//! `ha.status_rows()`, the function behind the `ha.status` view: this node's row from its own state,
//! and one row per peer address from the agent's view in shared memory.

use crate::pg::{catalog, gucs, local, shmem};
use pgrx::prelude::*;

/// The agent's heartbeat must be this fresh for this node's own row to say healthy.
const AGENT_STALE_US: i64 = 2_000_000;

#[allow(clippy::type_complexity)] // the tuple is the view's column list
#[pg_extern(volatile, parallel_unsafe)]
fn status_rows() -> TableIterator<
    'static,
    (
        name!(node_name, String),
        name!(role, String),
        name!(member, bool),
        name!(zone, String),
        name!(term, i64),
        name!(timeline, Option<i32>),
        name!(flush_lsn, Option<String>),
        name!(replay_lsn, Option<String>),
        name!(healthy, bool),
        name!(last_seen_us, Option<i64>),
        name!(agent_address, String),
        name!(is_self, bool),
        name!(last_error, Option<String>),
    ),
> {
    if !shmem::available() {
        error!("pg_ha: the pg_ha library is not in shared_preload_libraries; ha.status needs its agent");
    }
    let me = gucs::node_name();
    let ruleset = catalog::newest_ruleset();
    let wal = local::wal_state();
    let member = ruleset.as_ref().is_some_and(|r| r.cohort.contains(&me));
    let role = if !wal.in_recovery {
        "leader"
    } else if member {
        "follower"
    } else {
        "observer"
    };
    let now = local::now_us();
    let table = *shmem::PEERS.share();
    let agent_alive =
        table.agent_heartbeat_us != 0 && now - table.agent_heartbeat_us < AGENT_STALE_US;
    // A rejoin that could not rewind: unhealthy until an operator re-clones the node.
    // SAFETY: DataDir is set for every backend.
    let data_dir = unsafe { std::ffi::CStr::from_ptr(pgrx::pg_sys::DataDir) }
        .to_string_lossy()
        .into_owned();
    let rejoin_failed = crate::pg::rejoin::failed(std::path::Path::new(&data_dir));
    let agent_alive = agent_alive && rejoin_failed.is_none();
    let own_address = gucs::agent_settings()
        .map(|s| s.agent_address.to_string())
        .unwrap_or_default();
    let mut rows = vec![(
        me,
        role.into(),
        member,
        gucs::zone(),
        ruleset.as_ref().map_or(0, |r| r.term),
        Some(wal.timeline as i32),
        Some(local::lsn_text(wal.flush_lsn)),
        Some(local::lsn_text(wal.replay_lsn)),
        agent_alive,
        Some(now),
        own_address,
        true,
        if let Some(why) = rejoin_failed {
            Some(why)
        } else if agent_alive {
            None
        } else {
            Some("pg_ha agent is not running".into())
        },
    )];
    // A peer counts as reachable only if it answered within a failover timeout: a frozen peer's calls
    // hang rather than fail, so its slot may never be marked unreachable.
    let fresh_us = gucs::failover_timeout_ms() as i64 * 1000;
    for s in table.slots.iter().filter(|s| s.used) {
        let seen = s.ever_seen;
        let reachable = s.reachable && s.last_seen_us != 0 && now - s.last_seen_us < fresh_us;
        rows.push((
            if seen {
                s.node_name.get()
            } else {
                format!("? {}", s.address.get())
            },
            if reachable {
                s.role.get()
            } else {
                "unreachable".into()
            },
            s.member,
            if seen { s.zone.get() } else { String::new() },
            s.term as i64,
            seen.then_some(s.timeline as i32),
            seen.then(|| local::lsn_text(s.flush_lsn)),
            seen.then(|| local::lsn_text(s.replay_lsn)),
            reachable && agent_alive,
            (s.last_seen_us != 0).then_some(s.last_seen_us),
            s.address.get(),
            false,
            {
                let e = s.last_error.get();
                (!e.is_empty()).then_some(e)
            },
        ));
    }
    TableIterator::new(rows)
}
