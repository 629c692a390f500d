//! Owns one leadership change as seen by one coordinator (template steps 2 to 5): the `Attempt` collects
//! pledge replies and refusals for its term, decides revocation under the newest ruleset any recruit
//! reports, ranks the recruits (discovery) and chooses the candidate (candidacy). Failover and switchover
//! are the same machine; a switchover additionally needs the live leader's pledge and final LSN.
//!
//! The attempt is a pure function of what it was told: feeding the same replies in any order, any number
//! of times, gives the same tally and decision (the model checker relies on it).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use thiserror::Error;

use crate::candidacy::{discover, Candidacy, Decision, Discovery, Preferences};
use crate::pledge::NodeReport;
use crate::quorum::{self, Tally};
use crate::rules::Rules;
use crate::ruleset::Ruleset;
use crate::types::{NodeId, Term};

/// Which leadership change.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AttemptKind {
    /// The leader is lost (detection said so on a majority).
    Failover { old_leader: NodeId },
    /// Planned: the live `leader` pledges too, stops taking writes and reports its final LSN; `target` (or
    /// the best other member) catches up to exactly that LSN and is promoted.
    Switchover {
        leader: NodeId,
        target: Option<NodeId>,
    },
}

/// A reply that does not belong to this attempt.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ReplyError {
    #[error("reply from {node} is for term {got}, this attempt is term {expected}")]
    WrongTerm {
        node: NodeId,
        expected: Term,
        got: Term,
    },
}

/// What a reply changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyEffect {
    /// The reply carried a ruleset newer than any seen before: the quorum is now checked against it, and
    /// `nodes_to_ask()` may have grown.
    pub newer_ruleset: bool,
}

/// One coordinator's attempt at one term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    coordinator: NodeId,
    term: Term,
    known: Ruleset,
    kind: AttemptKind,
    rules: Rules,
    reports: BTreeMap<NodeId, NodeReport>,
    refusals: BTreeMap<NodeId, Term>,
}

impl Attempt {
    /// Start an attempt at `term` (see `next_term`) from the newest ruleset this coordinator knows.
    pub fn new(coordinator: NodeId, term: Term, known: Ruleset, kind: AttemptKind) -> Self {
        Attempt {
            coordinator,
            term,
            known,
            kind,
            rules: Rules::SAFE,
            reports: BTreeMap::new(),
            refusals: BTreeMap::new(),
        }
    }

    /// Tests only: run the attempt under (possibly broken) rules.
    pub fn with_rules(mut self, rules: Rules) -> Self {
        self.rules = rules;
        self
    }

    /// A term above every term seen on the cohort.
    pub fn next_term(seen: impl IntoIterator<Item = Term>) -> Term {
        seen.into_iter().max().unwrap_or(Term::ZERO).next()
    }

    pub fn term(&self) -> Term {
        self.term
    }
    pub fn coordinator(&self) -> &NodeId {
        &self.coordinator
    }
    pub fn kind(&self) -> &AttemptKind {
        &self.kind
    }
    pub fn known(&self) -> &Ruleset {
        &self.known
    }
    pub fn reports(&self) -> &BTreeMap<NodeId, NodeReport> {
        &self.reports
    }

    /// A node pledged and reported its position. A later report from the same node replaces the earlier
    /// one (a re-pledge after catching up).
    pub fn on_reply(&mut self, report: NodeReport) -> Result<ReplyEffect, ReplyError> {
        if report.pledged_term != self.term {
            return Err(ReplyError::WrongTerm {
                node: report.node,
                expected: self.term,
                got: report.pledged_term,
            });
        }
        let before = self.quorum_ruleset().order_key();
        self.reports.insert(report.node.clone(), report);
        Ok(ReplyEffect {
            newer_ruleset: self.quorum_ruleset().order_key() > before,
        })
    }

    /// A node refused; `their_term` is its current term (retry above it).
    pub fn on_refusal(&mut self, node: NodeId, their_term: Term) {
        let t = self.refusals.entry(node).or_insert(their_term);
        *t = (*t).max(their_term);
    }

    /// Nodes that pledged.
    pub fn recruits(&self) -> BTreeSet<NodeId> {
        self.reports.keys().cloned().collect()
    }

    /// Nodes that refused and never pledged.
    fn refused(&self) -> BTreeSet<NodeId> {
        self.refusals
            .keys()
            .filter(|n| !self.reports.contains_key(*n))
            .cloned()
            .collect()
    }

    /// The ruleset revocation is decided under: the newest ruleset any recruit reports (template step 3),
    /// or the known one before any recruit reported one.
    ///
    /// Deliberately not "the newest of known and reported": a ruleset the coordinator knows but that no
    /// recruit holds may never have taken effect (a pending change), and commits acknowledged under its
    /// predecessor could then all sit outside the recruits. The newest ruleset the recruits hold is the
    /// one that matters: any newer effective row was acknowledged under it, so a recruit would hold it.
    pub fn quorum_ruleset(&self) -> &Ruleset {
        if !self.rules.newest_ruleset {
            return &self.known;
        }
        self.reports
            .values()
            .filter_map(|r| r.ruleset.as_ref())
            .max_by_key(|r| r.order_key())
            .unwrap_or(&self.known)
    }

    /// Everyone who should be asked and has not answered: the cohorts of the known ruleset and of every
    /// reported ruleset (a newer ruleset may name members this coordinator never knew), and the live
    /// leader of a switchover.
    pub fn nodes_to_ask(&self) -> BTreeSet<NodeId> {
        let mut all: BTreeSet<NodeId> = self.known.cohort.keys().cloned().collect();
        for r in self.reports.values().filter_map(|r| r.ruleset.as_ref()) {
            all.extend(r.cohort.keys().cloned());
        }
        if let AttemptKind::Switchover { leader, .. } = &self.kind {
            all.insert(leader.clone());
        }
        all.retain(|n| !self.reports.contains_key(n) && !self.refusals.contains_key(n));
        all
    }

    /// Won / Pending / Lost under `quorum_ruleset()`. A switchover also needs the live leader's pledge
    /// (it must stop taking writes and report its final LSN): Lost if it refused, Pending until then.
    pub fn tally(&self) -> Tally {
        let t = quorum::tally(
            self.quorum_ruleset(),
            &self.recruits(),
            &self.refused(),
            &self.rules,
        );
        if let AttemptKind::Switchover { leader, .. } = &self.kind {
            if !self.reports.contains_key(leader) {
                return if self.refused().contains(leader) || t == Tally::Lost {
                    Tally::Lost
                } else {
                    Tally::Pending
                };
            }
        }
        t
    }

    /// The highest term seen: this attempt's and every term a refusal reported. Retry above it.
    pub fn highest_term_seen(&self) -> Term {
        self.refusals
            .values()
            .copied()
            .chain([self.term])
            .max()
            .unwrap_or(self.term)
    }

    /// Discovery over the recruits (meaningful once the tally is Won).
    pub fn discovery(&self) -> Option<Discovery> {
        discover(&self.reports)
    }

    /// The next step: wait, back off, catch a candidate up, or promote it with the ruleset to establish.
    pub fn decide(&self, prefs: &Preferences) -> Decision {
        match self.tally() {
            Tally::Pending => {
                return Decision::Wait {
                    ask: self.nodes_to_ask(),
                }
            }
            Tally::Lost => {
                return Decision::BackOff {
                    retry_above: self.highest_term_seen(),
                }
            }
            Tally::Won => {}
        }
        let discovery = self.discovery().expect("a won tally has recruits");
        let (excluded, target) = match &self.kind {
            AttemptKind::Failover { .. } => (None, None),
            AttemptKind::Switchover { leader, target } => (Some(leader), target.as_ref()),
        };
        Candidacy {
            term: self.term,
            base: self.quorum_ruleset(),
            reports: &self.reports,
            discovery: &discovery,
            excluded,
            target,
            prefs,
        }
        .decide()
    }

    /// The attempt as text, for the agent's log: term, ruleset, tally, recruits and their positions.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let kind = match &self.kind {
            AttemptKind::Failover { old_leader } => format!("failover from {old_leader}"),
            AttemptKind::Switchover { leader, target } => match target {
                Some(t) => format!("switchover {leader} -> {t}"),
                None => format!("switchover from {leader}"),
            },
        };
        let _ = writeln!(
            s,
            "attempt by {} in term {} ({kind}): tally {}",
            self.coordinator,
            self.term,
            self.tally()
        );
        let _ = writeln!(s, "  quorum under {}", self.quorum_ruleset());
        if self.quorum_ruleset() != &self.known {
            let _ = writeln!(s, "  started from {}", self.known);
        }
        for r in self.reports.values() {
            let _ = writeln!(s, "  recruit {r}");
        }
        for (n, t) in &self.refusals {
            if !self.reports.contains_key(n) {
                let _ = writeln!(s, "  refused {n} (at term {t})");
            }
        }
        let ask = self.nodes_to_ask();
        if !ask.is_empty() {
            let names: Vec<&str> = ask.iter().map(|n| n.as_str()).collect();
            let _ = writeln!(s, "  to ask {}", names.join(", "));
        }
        s
    }
}
