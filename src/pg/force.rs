//! `ha.unsafe_force_leader(confirm)`: the operator's override when a majority of the cohort is
//! permanently lost (no coordinator can recruit a quorum, so no failover happens: I1/I2 at work).
//!
//! It deliberately bypasses the consensus core's invariants: no pledge quorum, no revocation of the old
//! leader, no discovery beyond the members this node can reach. Commits the old leader acknowledged
//! beyond this node's flushed WAL are lost. Everything here runs on the agent's main thread.
//!
//! Refused (nothing changes) when: the confirmation text is wrong; there is no cluster; this node is
//! not a member of its newest ruleset; an established leader is reachable from here; a reachable member
//! has flushed more WAL than this node. Otherwise: a term 1000 above every term this node knows or pledged
//! (the pledge is persisted first), promotion if this node is a standby, and a ruleset row naming this
//! node the leader of a cohort of itself alone under `zones 1` (the bootstrap shape).

use super::steward::Steward;
use super::{catalog, gate_shmem, local};
use crate::proto::StatusReply;
use pg_ha_core::{NodeId, PledgeState, Policy, Ruleset, Term, Zone};
use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use std::collections::BTreeMap;

/// How far above every term this node knows the forced term lies.
pub const FORCED_TERM_JUMP: u64 = 1000;
use std::sync::atomic::Ordering;

/// The exact text `confirm` must carry.
pub const CONFIRM: &str = "I accept losing acknowledged writes";

type Refusal = (&'static str, String);

impl Steward {
    /// Check, then force. `fresh` are the peers' recent Status answers.
    pub(crate) fn unsafe_force_leader(
        &mut self,
        confirm: &str,
        fresh: &[StatusReply],
    ) -> Result<Option<String>, Refusal> {
        if confirm != CONFIRM {
            return Err(("22023", format!(
                "ha.unsafe_force_leader() needs the confirmation '{CONFIRM}' (got '{confirm}'); nothing changed"
            )));
        }
        let Some(row) = BackgroundWorker::transaction(catalog::newest_ruleset) else {
            return Err((
                "55000",
                "the cluster is not bootstrapped (no ruleset row); nothing to force".into(),
            ));
        };
        let Some(old) = row.to_core() else {
            return Err(("XX000", format!("ruleset v{} is malformed", row.version)));
        };
        if !old.is_member(&NodeId::new(self.node.clone())) {
            return Err(("55000", format!(
                "{} is not a member of the cohort [{}] (ruleset v{} term {}); run it on a surviving member",
                self.node,
                names(&old),
                old.version,
                old.term
            )));
        }
        if self.rules.is_some() && gate_shmem::fence_open() {
            return Err((
                "55000",
                format!(
                    "{} is already the established leader of term {}",
                    self.node, old.term
                ),
            ));
        }
        if let Some(l) = fresh
            .iter()
            .find(|p| p.established && !p.in_recovery && p.leader == p.node_name)
        {
            return Err(("55000", format!(
                "the established leader {} (term {}) is reachable and healthy from here: this is not a majority loss; use ha.switchover() for a planned change",
                l.node_name, l.ruleset_term
            )));
        }
        let wal = local::wal_state();
        if let Some(ahead) = fresh
            .iter()
            .filter(|p| old.is_member(&NodeId::new(p.node_name.clone())))
            .filter(|p| p.flush_lsn > wal.flush_lsn)
            .max_by_key(|p| p.flush_lsn)
        {
            return Err(("55000", format!(
                "member {} is reachable and has flushed WAL up to {}, ahead of this node ({}): run ha.unsafe_force_leader() on {} instead",
                ahead.node_name,
                local::lsn_text(ahead.flush_lsn),
                local::lsn_text(wal.flush_lsn),
                ahead.node_name
            )));
        }
        let highest = fresh
            .iter()
            .flat_map(|p| [p.term, p.pledged_term, p.ruleset_term])
            .chain([
                old.term.0,
                self.pledge.term.0,
                gate_shmem::KNOWN_TERM.get().load(Ordering::Acquire),
            ])
            .max()
            .unwrap_or(0);
        // Far above: the lost members may have gone on electing leaders this node never heard of (each
        // election adds one), e.g. behind a partition the operator took for a loss. When they come back
        // they must see a higher term and defer, never tie with this one.
        let term = Term(highest + FORCED_TERM_JUMP);
        let me = NodeId::new(self.node.clone());
        let cohort: BTreeMap<NodeId, Zone> = [(me.clone(), Zone::new(self.zone.clone()))].into();
        let new = Ruleset::new(term, old.version + 1, me.clone(), cohort, Policy::Zones(1))
            .map_err(|e| ("XX000", e.to_string()))?;
        // The pledge first: from here on this node refuses every pledge at or below the forced term.
        self.persist_pledge(PledgeState {
            term,
            coordinator: Some(me),
            ..PledgeState::fresh()
        })
        .map_err(|e| ("58000", e))?;
        warning!(
            "pg_ha: unsafe_force_leader: {} takes term {term} WITHOUT a quorum (operator override); old ruleset v{} term {} leader {} cohort [{}] policy {}; this node's flush LSN {} (timeline {}); commits acknowledged by the old leader beyond {} may be lost",
            self.node,
            old.version,
            old.term,
            old.leader,
            names(&old),
            old.policy,
            local::lsn_text(wal.flush_lsn),
            wal.timeline,
            local::lsn_text(wal.flush_lsn)
        );
        if wal.in_recovery {
            warning!("pg_ha: unsafe_force_leader: promoting this standby");
            if let Err(e) = super::takeover::promote_for_term(&self.data_dir, wal.timeline, term.0)
            {
                return Err((
                    "58000",
                    format!("{e}; the pledge for term {term} is kept, no ruleset row was written"),
                ));
            }
        }
        let after = local::wal_state();
        self.term_start_lsn =
            BackgroundWorker::transaction(|| catalog::timeline_switch_point(after.timeline))
                .unwrap_or(wal.flush_lsn);
        gate_shmem::DEPOSED.get().store(false, Ordering::Release);
        BackgroundWorker::transaction(|| {
            catalog::insert_row(&catalog::RulesetRow::from_core(&new), "unsafe_force_leader")
        })
        .map_err(|e| ("XX000", format!("cannot write the ruleset row: {e}")))?;
        // The steward adopts the new row on its next pass and establishes (a cohort of one).
        self.rules = None;
        warning!(
            "pg_ha: unsafe_force_leader: {} is leader of term {term} (ruleset v{}, timeline {}), cohort [{}] policy zones 1; re-add members with ha.add_member()",
            self.node,
            new.version,
            after.timeline,
            self.node
        );
        Ok(Some(format!(
            "{} is leader of term {term} without a quorum (was term {} led by {}, cohort [{}], policy {}); commits acknowledged by the old leader beyond this node's flush LSN {} may be lost; cohort is now [{}] with policy zones 1: re-add members with ha.add_member()",
            self.node,
            old.term,
            old.leader,
            names(&old),
            old.policy,
            local::lsn_text(wal.flush_lsn),
            self.node
        )))
    }
}

fn names(r: &Ruleset) -> String {
    r.cohort
        .keys()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
