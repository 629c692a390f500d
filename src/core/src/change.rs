//! Owns ruleset changes (membership and policy, seed 002) and the leader's commit rules while one is in
//! flight: `propose` validates a change and produces the new row; `Pending` is that row written at an LSN
//! and not yet acknowledged; `CommitRules` is what the leader's commit gate evaluates.
//!
//! # I5 and joint durability
//! A change row is an ordinary commit that must be durable under the *previous* ruleset before the new
//! one counts (`Pending::acknowledged`); at most one change is in flight (`ChangeError::InFlight`).
//!
//! While a change is pending, a commit is acknowledged only when it is durable under the old AND the new
//! ruleset (joint). Why: a coordinator decides revocation under the newest ruleset its recruits hold and
//! cannot tell whether that row ever took effect. If the recruits hold the pending row, the quorum is
//! checked under the new ruleset only; a commit acknowledged under the old ruleset alone after the row
//! (e.g. by the old leader plus a member the change removes) could then sit entirely outside the
//! recruits and be lost. Joint acknowledgement makes every such commit durable under the newest ruleset
//! any node holding it could report. (In the model checker the leader learns every flush position at once
//! and switches to the new ruleset the instant the row is durable under the old one, so the non-joint
//! variant, `Rules::joint_while_pending = false`, finds no counterexample there; a real leader learns
//! flush positions at different times and can acknowledge under the old ruleset alone in that window.)
//!
//! Only single-member changes exist (add one, remove one, or change the policy over the same cohort):
//! majorities of cohorts differing by one member intersect, which keeps I1 when two coordinators of one
//! term quorum against the old and the new ruleset respectively.

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use crate::policy::Policy;
use crate::rules::Rules;
use crate::ruleset::Ruleset;
use crate::types::{Lsn, NodeId, Zone};

/// A requested ruleset change.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Change {
    /// Make a node (an observer streaming from the leader) a cohort member.
    AddMember { node: NodeId, zone: Zone },
    /// Make a member an observer (or forget it).
    RemoveMember(NodeId),
    /// Replace the policy.
    SetPolicy(Policy),
}

/// Why a change is refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ChangeError {
    #[error("another ruleset change (to v{pending_version}) is in flight: wait until it is acknowledged")]
    InFlight { pending_version: u64 },
    #[error("unknown node {0}: it must be registered (running as an observer) before it can join")]
    UnknownNode(NodeId),
    #[error("{0} is already a cohort member")]
    AlreadyMember(NodeId),
    #[error("{0} is not a cohort member")]
    NotAMember(NodeId),
    #[error("{0} is the leader: switch over to another member before removing it")]
    RemovingLeader(NodeId),
    #[error("policy {policy} cannot be satisfied by the resulting cohort ({members} members in {zones} zones)")]
    Unsatisfiable {
        policy: Policy,
        members: usize,
        zones: usize,
    },
    #[error("the change leaves the ruleset as it is")]
    Unchanged,
}

/// Validate `change` against the current ruleset and produce the new row (same term and leader, version
/// + 1). `known_nodes`: every node registered in the cluster (members and observers).
pub fn propose(
    current: &Ruleset,
    in_flight: Option<&Pending>,
    known_nodes: &BTreeSet<NodeId>,
    change: &Change,
) -> Result<Ruleset, ChangeError> {
    if let Some(p) = in_flight {
        return Err(ChangeError::InFlight {
            pending_version: p.to.version,
        });
    }
    let mut next = current.clone();
    next.version = current.version + 1;
    // The row takes effect once durable under `current`; a leadership row built on it before that must
    // still be established under `current` too (see `Ruleset::establishment_lsn`).
    next.prior = Some(current.as_prior());
    match change {
        Change::AddMember { node, zone } => {
            if current.is_member(node) {
                return Err(ChangeError::AlreadyMember(node.clone()));
            }
            if !known_nodes.contains(node) {
                return Err(ChangeError::UnknownNode(node.clone()));
            }
            next.cohort.insert(node.clone(), zone.clone());
        }
        Change::RemoveMember(node) => {
            if !current.is_member(node) {
                return Err(if known_nodes.contains(node) {
                    ChangeError::NotAMember(node.clone())
                } else {
                    ChangeError::UnknownNode(node.clone())
                });
            }
            if *node == current.leader {
                return Err(ChangeError::RemovingLeader(node.clone()));
            }
            next.cohort.remove(node);
        }
        Change::SetPolicy(p) => {
            if *p == current.policy {
                return Err(ChangeError::Unchanged);
            }
            next.policy = *p;
        }
    }
    if !next.satisfiable() {
        let zones: BTreeSet<&Zone> = next.cohort.values().collect();
        return Err(ChangeError::Unsatisfiable {
            policy: next.policy,
            members: next.n(),
            zones: zones.len(),
        });
    }
    Ok(next)
}

/// A change in flight: announced (the joint rules apply to every commit from then on) and, once its row
/// is written, at `lsn`; not yet acknowledged under `from`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pending {
    pub from: Ruleset,
    pub to: Ruleset,
    /// The LSN of the end of the change row's commit; `None` while the row is not written yet.
    pub lsn: Option<Lsn>,
}

impl Pending {
    /// I5: has the change row become durable under the previous ruleset? Then `to` takes effect. Never
    /// before the row is written.
    pub fn acknowledged(&self, flushed: &BTreeMap<NodeId, Lsn>) -> bool {
        self.lsn
            .is_some_and(|lsn| self.from.durable_lsn(flushed) >= lsn)
    }
}

/// The leader's commit rules: its effective ruleset and the change in flight, if any.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CommitRules {
    current: Ruleset,
    pending: Option<Pending>,
    rules: Rules,
}

impl CommitRules {
    /// From the ruleset the leader established (or found effective at startup).
    pub fn new(current: Ruleset) -> Self {
        CommitRules {
            current,
            pending: None,
            rules: Rules::SAFE,
        }
    }

    /// Tests only: run under (possibly broken) rules.
    pub fn with_rules(mut self, rules: Rules) -> Self {
        self.rules = rules;
        self
    }

    pub fn current(&self) -> &Ruleset {
        &self.current
    }

    pub fn pending(&self) -> Option<&Pending> {
        self.pending.as_ref()
    }

    /// The newest row, effective or not (what a pledge reply reports is the newest row in the WAL).
    pub fn newest(&self) -> &Ruleset {
        self.pending
            .as_ref()
            .map(|p| &p.to)
            .unwrap_or(&self.current)
    }

    /// Validate `change` (see `propose`).
    pub fn propose(
        &self,
        known_nodes: &BTreeSet<NodeId>,
        change: &Change,
    ) -> Result<Ruleset, ChangeError> {
        propose(&self.current, self.pending.as_ref(), known_nodes, change)
    }

    /// The leader wrote the row for `to` (from `propose`), ending at `lsn` (or found it at start).
    pub fn begin(&mut self, to: Ruleset, lsn: Lsn) -> Result<(), ChangeError> {
        self.announce(to)?;
        self.written(lsn);
        Ok(())
    }

    /// I5: the leader is about to write the row for `to`: from now on every commit needs the old and
    /// the new rules (a commit after the row could otherwise be acknowledged under the old rules alone
    /// while a coordinator that finds the row judges under the new ones).
    pub fn announce(&mut self, to: Ruleset) -> Result<(), ChangeError> {
        if let Some(p) = &self.pending {
            return Err(ChangeError::InFlight {
                pending_version: p.to.version,
            });
        }
        self.pending = Some(Pending {
            from: self.current.clone(),
            to,
            lsn: None,
        });
        Ok(())
    }

    /// The announced change's row was written, ending at `lsn`: it can now be acknowledged.
    pub fn written(&mut self, lsn: Lsn) {
        if let Some(p) = self.pending.as_mut() {
            p.lsn = Some(lsn);
        }
    }

    /// The announced change's row could not be written: back to the rules in force alone.
    pub fn withdraw(&mut self) -> Option<Pending> {
        self.pending.take_if(|p| p.lsn.is_none())
    }

    /// Up to which LSN commits are durable: under the current ruleset, and while a change is pending under
    /// both the old and the new one (see the module comment).
    pub fn durable_lsn(&self, flushed: &BTreeMap<NodeId, Lsn>) -> Lsn {
        let old = self.current.durable_lsn(flushed);
        match &self.pending {
            Some(p) if self.rules.joint_while_pending => old.min(p.to.durable_lsn(flushed)),
            _ => old,
        }
    }

    /// `durable_lsn` with the leader's own flush added to the standbys' positions.
    pub fn commit_gate_lsn(&self, leader_flush: Lsn, standbys: &BTreeMap<NodeId, Lsn>) -> Lsn {
        let mut all = standbys.clone();
        all.insert(self.current.leader.clone(), leader_flush);
        self.durable_lsn(&all)
    }

    /// New flush positions arrived: if the pending change is now acknowledged under the old ruleset, it
    /// takes effect; returns the new effective ruleset.
    pub fn on_flush(&mut self, flushed: &BTreeMap<NodeId, Lsn>) -> Option<&Ruleset> {
        if self.pending.as_ref()?.acknowledged(flushed) {
            self.current = self.pending.take().expect("checked").to;
            return Some(&self.current);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::cohort_of;
    use crate::types::Term;

    fn r0() -> Ruleset {
        Ruleset::new(
            Term(1),
            1,
            "a".into(),
            cohort_of([("a", "z1"), ("b", "z2"), ("c", "z3")]),
            Policy::AnyK(1),
        )
        .unwrap()
    }

    fn known() -> BTreeSet<NodeId> {
        ["a", "b", "c", "d"]
            .iter()
            .map(|n| NodeId::from(*n))
            .collect()
    }

    fn flushed(v: &[(&str, u64)]) -> BTreeMap<NodeId, Lsn> {
        v.iter().map(|(n, l)| (NodeId::from(*n), Lsn(*l))).collect()
    }

    /// I5: precise refusals for invalid changes.
    #[test]
    fn propose_errors_i5() {
        let r = r0();
        let k = known();
        let add = |n: &str| Change::AddMember {
            node: n.into(),
            zone: "z4".into(),
        };
        assert_eq!(
            propose(&r, None, &k, &add("b")),
            Err(ChangeError::AlreadyMember("b".into()))
        );
        assert_eq!(
            propose(&r, None, &k, &add("x")),
            Err(ChangeError::UnknownNode("x".into()))
        );
        assert_eq!(
            propose(&r, None, &k, &Change::RemoveMember("d".into())),
            Err(ChangeError::NotAMember("d".into()))
        );
        assert_eq!(
            propose(&r, None, &k, &Change::RemoveMember("x".into())),
            Err(ChangeError::UnknownNode("x".into()))
        );
        assert_eq!(
            propose(&r, None, &k, &Change::RemoveMember("a".into())),
            Err(ChangeError::RemovingLeader("a".into()))
        );
        assert_eq!(
            propose(&r, None, &k, &Change::SetPolicy(Policy::Zones(4))),
            Err(ChangeError::Unsatisfiable {
                policy: Policy::Zones(4),
                members: 3,
                zones: 3
            })
        );
        assert_eq!(
            propose(&r, None, &k, &Change::SetPolicy(Policy::AnyK(1))),
            Err(ChangeError::Unchanged)
        );
        let to = propose(&r, None, &k, &add("d")).unwrap();
        assert_eq!((to.version, to.n(), to.term), (2, 4, Term(1)));
        let p = Pending {
            from: r.clone(),
            to,
            lsn: Some(Lsn(10)),
        };
        assert_eq!(
            propose(&r, Some(&p), &k, &Change::SetPolicy(Policy::AnyK(2))),
            Err(ChangeError::InFlight { pending_version: 2 })
        );
        // Removing down to a cohort that cannot satisfy the policy.
        let r2 = Ruleset {
            policy: Policy::AnyK(2),
            ..r
        };
        assert!(matches!(
            propose(&r2, None, &k, &Change::RemoveMember("c".into())),
            Err(ChangeError::Unsatisfiable { .. })
        ));
    }

    /// I5: the new ruleset counts only after the change is durable under the old one; meanwhile commits
    /// need both (joint).
    #[test]
    fn pending_change_joint_then_effective_i5() {
        let mut cr = CommitRules::new(r0());
        let to = cr
            .propose(
                &known(),
                &Change::AddMember {
                    node: "d".into(),
                    zone: "z4".into(),
                },
            )
            .unwrap();
        cr.begin(to.clone(), Lsn(10)).unwrap();
        assert!(matches!(
            cr.begin(to.clone(), Lsn(11)),
            Err(ChangeError::InFlight { .. })
        ));
        assert_eq!(cr.newest(), &to);
        // d has flushed, b not: durable under new {a,d} but not old (d is not an old member).
        let f = flushed(&[("a", 20), ("d", 20), ("b", 5)]);
        assert_eq!(cr.durable_lsn(&f), Lsn(5));
        assert_eq!(cr.on_flush(&f), None);
        // b flushed the row: acknowledged under old, new ruleset takes effect.
        let f = flushed(&[("a", 20), ("d", 20), ("b", 12)]);
        assert_eq!(cr.on_flush(&f).map(|r| r.version), Some(2));
        assert_eq!(cr.current().n(), 4);
        assert_eq!(cr.durable_lsn(&f), Lsn(20));
        // The broken variant would have acknowledged under the old ruleset alone.
        let mut broken = CommitRules::new(r0()).with_rules(Rules {
            joint_while_pending: false,
            ..Rules::SAFE
        });
        broken.begin(to, Lsn(10)).unwrap();
        assert_eq!(
            broken.durable_lsn(&flushed(&[("a", 20), ("c", 20)])),
            Lsn(20)
        );
        assert_eq!(cr.commit_gate_lsn(Lsn(30), &flushed(&[("d", 25)])), Lsn(25));
    }

    /// I5: an announced change applies the joint rules at once, cannot take effect before its row is
    /// written, and can be withdrawn only then.
    #[test]
    fn announced_change_is_joint_before_its_row_i5() {
        let mut cr = CommitRules::new(r0());
        let to = cr
            .propose(&known(), &Change::SetPolicy(Policy::AnyK(2)))
            .unwrap();
        cr.announce(to.clone()).unwrap();
        assert!(matches!(
            cr.announce(to.clone()),
            Err(ChangeError::InFlight { .. })
        ));
        // b alone flushed: durable under any 1, not under any 2 (joint: not durable).
        let f = flushed(&[("a", 20), ("b", 20), ("c", 5)]);
        assert_eq!(cr.durable_lsn(&f), Lsn(5));
        // Not written yet: never acknowledged, whatever flushed.
        let all = flushed(&[("a", 99), ("b", 99), ("c", 99)]);
        assert_eq!(cr.on_flush(&all), None);
        assert_eq!(cr.clone().withdraw().map(|p| p.to), Some(to.clone()));
        cr.written(Lsn(30));
        assert_eq!(cr.clone().withdraw(), None);
        assert_eq!(cr.on_flush(&f), None);
        assert_eq!(cr.on_flush(&all).map(|r| r.policy), Some(Policy::AnyK(2)));
    }
}
