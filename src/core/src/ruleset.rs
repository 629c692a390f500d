//! Owns the ruleset `(term, version, leader, cohort, policy)`: the concrete statement of when a commit is
//! durable, and the predicates over it: `durable`, `satisfiable`, `recruit_quorum` and `durable_lsn` (the
//! commit gate's question "up to which LSN may commits be acknowledged").
//!
//! A ruleset row lives in the WAL (table `ha.ruleset`). Rows are ordered by `(term, version)`: `term` is
//! the leadership term that wrote the row, `version` counts rows along the history (a leadership change and
//! each membership/policy change add one), so two rows of one term (a change made by that term's leader)
//! are still ordered.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use thiserror::Error;

use crate::policy::Policy;
use crate::quorum;
use crate::rules::Rules;
use crate::types::{Lsn, NodeId, Term, Zone};

/// When a commit is durable, concretely.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ruleset {
    /// The term of the leadership that wrote this row.
    pub term: Term,
    /// Position of the row in the ruleset history; orders rows written in one term.
    pub version: u64,
    /// The leader of `term`. Always a cohort member.
    pub leader: NodeId,
    /// Members whose acknowledgements count, with their zones (carried in the row so that every
    /// coordinator evaluates zone policies the same way).
    pub cohort: BTreeMap<NodeId, Zone>,
    pub policy: Policy,
    /// The membership this row continues from when that membership may not have acknowledged it yet:
    /// set on a change row (the ruleset it changes), and inherited by a leadership row built on such a
    /// row. A row with a prior is established only once durable under both (`establishment_lsn`).
    pub prior: Option<Prior>,
}

/// The cohort and policy of an earlier ruleset that a row must also be durable under.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Prior {
    pub cohort: BTreeMap<NodeId, Zone>,
    pub policy: Policy,
}

impl Prior {
    /// As a ruleset (for its predicates); the leader field is irrelevant to them.
    fn as_ruleset(&self, leader: &NodeId) -> Ruleset {
        Ruleset {
            term: Term::ZERO,
            version: 0,
            leader: leader.clone(),
            cohort: self.cohort.clone(),
            policy: self.policy,
            prior: None,
        }
    }
}

/// Why a ruleset cannot exist.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RulesetError {
    #[error("leader {0} is not a member of the cohort")]
    LeaderNotMember(NodeId),
    #[error("the cohort is empty")]
    EmptyCohort,
}

impl Ruleset {
    /// A ruleset; the leader must be a cohort member. (It may still be unsatisfiable: see `satisfiable`.)
    pub fn new(
        term: Term,
        version: u64,
        leader: NodeId,
        cohort: BTreeMap<NodeId, Zone>,
        policy: Policy,
    ) -> Result<Self, RulesetError> {
        if cohort.is_empty() {
            return Err(RulesetError::EmptyCohort);
        }
        if !cohort.contains_key(&leader) {
            return Err(RulesetError::LeaderNotMember(leader));
        }
        Ok(Ruleset {
            term,
            version,
            leader,
            cohort,
            policy,
            prior: None,
        })
    }

    /// The order of rows: `(term, version)`.
    pub fn order_key(&self) -> (Term, u64) {
        (self.term, self.version)
    }

    /// Is `self` a newer row than `other`?
    pub fn is_newer_than(&self, other: &Ruleset) -> bool {
        self.order_key() > other.order_key()
    }

    /// n = |C|.
    pub fn n(&self) -> usize {
        self.cohort.len()
    }

    pub fn is_member(&self, node: &NodeId) -> bool {
        self.cohort.contains_key(node)
    }

    /// `durable(S)`: do the cohort members of `set` satisfy the policy? Nodes outside the cohort never count.
    ///
    /// Defined over an arbitrary set, without requiring the leader (see `Policy::holds`): for a set that
    /// flushed a commit the leader is always in it, and for `not durable(C \ S)` the question must be
    /// "could C \ S acknowledge under *any* leader of this cohort", because after a crash a later
    /// coordinator may promote another member with the same cohort and policy. A leader-requiring
    /// definition would make `durable(C \ S)` vacuously false whenever the old leader pledged, and then a
    /// bare majority that includes the old leader would "win" although a newer leader elsewhere could have
    /// acknowledged commits with members outside S.
    pub fn durable(&self, set: &BTreeSet<NodeId>) -> bool {
        self.policy
            .holds_for(set.iter().filter_map(|n| self.cohort.get(n)))
    }

    /// Could the cohort ever satisfy the policy (everyone flushed)?
    pub fn satisfiable(&self) -> bool {
        self.policy.holds_for(self.cohort.values())
    }

    /// Could the members in `reachable` alone satisfy the policy?
    pub fn satisfiable_with(&self, reachable: &BTreeSet<NodeId>) -> bool {
        self.durable(reachable)
    }

    /// Is the recruit set enough under protocol.md's two rules: `not durable(C \ S)` and `|S| > n/2`?
    pub fn recruit_quorum(&self, recruits: &BTreeSet<NodeId>) -> bool {
        quorum::recruit_quorum(self, recruits, &Rules::SAFE)
    }

    /// The highest LSN L such that the cohort members with `flushed[m] >= L` satisfy the policy; `Lsn::ZERO`
    /// when no position is durable. Members missing from `flushed` count as having flushed nothing: the
    /// caller includes the leader's own flush (or uses `commit_gate_lsn`).
    pub fn durable_lsn(&self, flushed: &BTreeMap<NodeId, Lsn>) -> Lsn {
        // durable() is monotone in the set, so the answer is one of the members' own positions: try them
        // from the highest down and stop at the first that holds.
        let mut positions: Vec<(Lsn, &Zone)> = flushed
            .iter()
            .filter_map(|(n, l)| self.cohort.get(n).map(|z| (*l, z)))
            .collect();
        positions.sort_by_key(|p| std::cmp::Reverse(p.0));
        for i in 0..positions.len() {
            let l = positions[i].0;
            if i + 1 < positions.len() && positions[i + 1].0 == l {
                continue; // include every member at this position before judging it
            }
            if self
                .policy
                .holds_for(positions[..=i].iter().map(|(_, z)| *z))
            {
                return l;
            }
        }
        Lsn::ZERO
    }

    /// The commit gate's view: the leader has flushed up to `leader_flush` locally; `standbys` are the
    /// flush positions the standbys reported. Returns the highest LSN whose commits may be acknowledged.
    pub fn commit_gate_lsn(&self, leader_flush: Lsn, standbys: &BTreeMap<NodeId, Lsn>) -> Lsn {
        let mut all = standbys.clone();
        all.insert(self.leader.clone(), leader_flush);
        self.durable_lsn(&all)
    }

    /// Establishment (template step 7): up to which LSN the new leader's WAL is durable for the purpose of
    /// establishing this row: under this ruleset and, when the row continues a possibly unacknowledged
    /// change, under the prior membership too. Without the prior, a coordinator that recruited only nodes
    /// holding the older row would quorum under it, while this leader established (and then acknowledged
    /// commits) with the new member alone: the model checker found exactly that (I2, then I3).
    pub fn establishment_lsn(&self, flushed: &BTreeMap<NodeId, Lsn>) -> Lsn {
        let own = self.durable_lsn(flushed);
        match &self.prior {
            Some(p) => own.min(p.as_ruleset(&self.leader).durable_lsn(flushed)),
            None => own,
        }
    }

    /// The cohort and policy of this row, as a prior for a row that changes it.
    pub fn as_prior(&self) -> Prior {
        Prior {
            cohort: self.cohort.clone(),
            policy: self.policy,
        }
    }

    /// The ruleset as one log-friendly line.
    pub fn describe(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Ruleset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ruleset term {} v{}: leader {}, policy {}, cohort {{",
            self.term, self.version, self.leader, self.policy
        )?;
        for (i, (n, z)) in self.cohort.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{n}@{z}")?;
        }
        f.write_str("}")?;
        if let Some(p) = &self.prior {
            let names: Vec<&str> = p.cohort.keys().map(|n| n.as_str()).collect();
            write!(f, ", prior {} {{{}}}", p.policy, names.join(", "))?;
        }
        Ok(())
    }
}

/// Test and example helper: a cohort from `(node, zone)` pairs.
pub fn cohort_of<'a>(
    members: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> BTreeMap<NodeId, Zone> {
    members
        .into_iter()
        .map(|(n, z)| (NodeId::from(n), Zone::from(z)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ns: &[&str]) -> BTreeSet<NodeId> {
        ns.iter().map(|n| NodeId::from(*n)).collect()
    }

    fn rs(policy: &str, members: &[(&str, &str)]) -> Ruleset {
        Ruleset::new(
            Term(1),
            1,
            NodeId::from(members[0].0),
            cohort_of(members.iter().copied()),
            policy.parse().unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn leader_must_be_member() {
        let e = Ruleset::new(
            Term(1),
            1,
            "x".into(),
            cohort_of([("a", "z")]),
            Policy::AnyK(1),
        );
        assert_eq!(e, Err(RulesetError::LeaderNotMember("x".into())));
        assert_eq!(
            Ruleset::new(Term(1), 1, "x".into(), BTreeMap::new(), Policy::AnyK(1)),
            Err(RulesetError::EmptyCohort)
        );
    }

    #[test]
    fn durable_any_and_zones_ignore_outsiders() {
        let r = rs("any 1", &[("a", "z1"), ("b", "z2"), ("c", "z3")]);
        assert!(r.durable(&set(&["a", "b"])));
        assert!(!r.durable(&set(&["a", "observer"])));
        assert!(!r.durable(&set(&["a"])));
        let z = rs("zones 2", &[("a", "z1"), ("b", "z1"), ("c", "z2")]);
        assert!(!z.durable(&set(&["a", "b"])));
        assert!(z.durable(&set(&["a", "c"])));
        assert!(z.satisfiable());
        assert!(!rs("zones 3", &[("a", "z1"), ("b", "z1"), ("c", "z2")]).satisfiable());
        assert!(!rs("any 3", &[("a", "z1"), ("b", "z1"), ("c", "z2")]).satisfiable());
        assert!(rs("any 2", &[("a", "z1"), ("b", "z1"), ("c", "z2")]).satisfiable());
    }

    /// I2/I3: the recruit rule matches protocol.md's closed form for `any k`.
    #[test]
    fn recruit_quorum_any_k_sizes() {
        let five: Vec<(&str, &str)> =
            vec![("a", "z"), ("b", "z"), ("c", "z"), ("d", "z"), ("e", "z")];
        let r1 = rs("any 1", &five);
        assert!(!r1.recruit_quorum(&set(&["b", "c", "d"])));
        assert!(r1.recruit_quorum(&set(&["b", "c", "d", "e"])));
        let r2 = rs("any 2", &five);
        assert!(r2.recruit_quorum(&set(&["c", "d", "e"])));
        assert!(!r2.recruit_quorum(&set(&["d", "e"])));
        let r3 = rs("any 1", &five[..3]);
        assert!(r3.recruit_quorum(&set(&["b", "c"])));
        assert!(!r3.recruit_quorum(&set(&["b"])));
        // Outsiders never help.
        assert!(!r3.recruit_quorum(&set(&["b", "x", "y"])));
    }

    #[test]
    fn durable_lsn_examples() {
        let r = rs("any 1", &[("a", "z1"), ("b", "z2"), ("c", "z3")]);
        let f = |v: &[(&str, u64)]| -> BTreeMap<NodeId, Lsn> {
            v.iter().map(|(n, l)| (NodeId::from(*n), Lsn(*l))).collect()
        };
        assert_eq!(
            r.durable_lsn(&f(&[("a", 100), ("b", 50), ("c", 70)])),
            Lsn(70)
        );
        assert_eq!(r.durable_lsn(&f(&[("a", 100)])), Lsn::ZERO);
        assert_eq!(r.durable_lsn(&f(&[("a", 100), ("x", 100)])), Lsn::ZERO);
        assert_eq!(r.commit_gate_lsn(Lsn(100), &f(&[("b", 90)])), Lsn(90));
        let z = rs("zones 2", &[("a", "z1"), ("b", "z1"), ("c", "z2")]);
        assert_eq!(
            z.commit_gate_lsn(Lsn(100), &f(&[("b", 90), ("c", 20)])),
            Lsn(20)
        );
    }

    #[test]
    fn display() {
        let r = rs("zones 2", &[("a", "z1"), ("b", "z2")]);
        assert_eq!(
            r.to_string(),
            "ruleset term 1 v1: leader a, policy zones 2, cohort {a@z1, b@z2}"
        );
    }
}
