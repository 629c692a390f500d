//! The rewind floor (protocol.md, "Postgres traps"): a rewound or re-cloned node goes back to a
//! checkpoint before the fork and replays forward, so for a while it may hold less WAL than it held,
//! reported or acknowledged before. Before the rejoin helper runs pg_rewind (or re-clones), the agent
//! records in the pledge file what the node held: (term of its newest ruleset row, flush LSN). Until
//! the node holds that again:
//! - it does not pledge (the core's `BelowRewindFloor` refusal);
//! - it does not count toward durability: it streams under `<node>.uncounted` instead of its node
//!   name, so neither the leader's `synchronous_standby_names` nor the commit gate's walsender map
//!   (both by application_name) counts its flushes. (`wal_receiver_status_interval = 0` would not do:
//!   a walreceiver still answers the walsender's reply requests with its flush position.)
//!
//! Once past, the floor is cleared in the pledge file (logged) and the node streams under its name
//! again. The test-only failpoint `rewind_floor_ahead` records a floor 48 MiB ahead, at the new
//! leader's term, so that tests can watch it being enforced and passed.

use super::steward::Steward;
use super::{catalog, local};
use crate::proto::StatusReply;
use pg_ha_core::{Lsn, RewindFloor, Term};
use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;

/// How far ahead the `rewind_floor_ahead` failpoint puts the floor.
const FAILPOINT_AHEAD: u64 = 48 * 1024 * 1024;

/// The application_name of a node that does not count toward durability.
pub fn uncounted_name(node: &str) -> String {
    format!("{node}.uncounted")
}

impl Steward {
    /// The application_name this node streams under: its node name, unless it must not count toward
    /// durability (below its rewind floor, or its pledge file lost).
    pub(crate) fn stream_name(&self) -> String {
        if self.pledge.counts_toward_durability() {
            self.node.clone()
        } else {
            uncounted_name(&self.node)
        }
    }

    /// (term of the newest ruleset row held, flush LSN): what the node holds now.
    fn held(&self) -> (Term, Lsn) {
        let term = BackgroundWorker::transaction(catalog::newest_ruleset)
            .map_or(0, |r| r.term.max(0) as u64);
        (Term(term), Lsn(local::wal_state().flush_lsn))
    }

    /// Before the rejoin helper may rewind or re-clone this node (following `target`): persist the
    /// floor. An error means the helper must not run.
    pub(crate) fn record_rewind_floor(&mut self, target: &StatusReply) -> Result<(), String> {
        let (term, lsn) = self.held();
        let mut floor = RewindFloor {
            ruleset_term: term,
            lsn,
        };
        if self.failpoint == "rewind_floor_ahead" {
            floor = RewindFloor {
                ruleset_term: term.max(Term(target.ruleset_term)),
                lsn: Lsn(lsn.0.max(target.flush_lsn) + FAILPOINT_AHEAD),
            };
            log!("pg_ha: failpoint rewind_floor_ahead: the floor is put 48 MiB ahead, at the new leader's term");
        }
        // An earlier floor not yet passed (a rejoin retried) stays if it is higher.
        if let Some(old) = self.pledge.floor {
            if (old.ruleset_term, old.lsn) > (floor.ruleset_term, floor.lsn) {
                floor = old;
            }
        }
        self.persist_pledge(self.pledge.with_floor(floor))?;
        log!(
            "pg_ha: rewind floor recorded: holds ruleset term {term} up to {lsn}; until it holds ruleset term {} up to {} again it will not pledge and streams as {} (not counted)",
            floor.ruleset_term,
            floor.lsn,
            uncounted_name(&self.node)
        );
        Ok(())
    }

    /// Each pass: clear the floor once the node holds it again.
    pub(crate) fn check_rewind_floor(&mut self) {
        if self.pledge.floor.is_none() {
            return;
        }
        let (term, lsn) = self.held();
        let Some(next) = self.pledge.passed_floor(term, lsn) else {
            return;
        };
        let floor = self.pledge.floor.expect("checked");
        match self.persist_pledge(next) {
            Ok(()) => log!(
                "pg_ha: passed the rewind floor (ruleset term {}, {}): holds ruleset term {term} up to {lsn}; it may pledge again and streams as {}",
                floor.ruleset_term,
                floor.lsn,
                self.stream_name()
            ),
            Err(e) => warning!("pg_ha: {e}"),
        }
    }
}
