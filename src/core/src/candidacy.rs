//! Owns discovery and candidacy (template steps 4 and 5): ranking the recruits by
//! (term of the newest ruleset row held, flushed LSN), and choosing the node to promote among those tied
//! at the top, or the one to catch up first, with the proposed ruleset to establish.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::pledge::NodeReport;
use crate::ruleset::Ruleset;
use crate::types::{Lsn, NodeId, Term, Zone};

/// The recruits, best first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovery {
    /// Every recruit with its position (ruleset term, flush), best first; ties by name.
    pub ranking: Vec<(NodeId, (Term, Lsn))>,
    /// The top position: it holds every acknowledged commit.
    pub top: (Term, Lsn),
    /// The recruits at exactly the top position (any of them is safe).
    pub tied: BTreeSet<NodeId>,
}

/// Rank the recruits' reports. `None` when there are none.
pub fn discover(reports: &BTreeMap<NodeId, NodeReport>) -> Option<Discovery> {
    let mut ranking: Vec<(NodeId, (Term, Lsn))> = reports
        .values()
        .map(|r| (r.node.clone(), r.position()))
        .collect();
    ranking.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let top = ranking.first()?.1;
    let tied = ranking
        .iter()
        .filter(|(_, p)| *p == top)
        .map(|(n, _)| n.clone())
        .collect();
    Some(Discovery { ranking, top, tied })
}

impl fmt::Display for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "discovery: top (ruleset term {}, {})",
            self.top.0, self.top.1
        )?;
        for (n, (t, l)) in &self.ranking {
            write!(f, "; {n}: ({t}, {l})")?;
        }
        Ok(())
    }
}

/// The agent's candidacy preferences beyond what the reports carry (reachability and priority).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Preferences {
    /// Preferred zones, best first; zones not listed come after, in name order.
    pub zone_order: Vec<Zone>,
}

/// What the coordinator does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No quorum yet: keep asking these nodes.
    Wait { ask: BTreeSet<NodeId> },
    /// No quorum possible in this term: back off with jitter, retry with a term above `retry_above`.
    BackOff { retry_above: Term },
    /// Bring `node` to exactly `to` (ruleset term and LSN of the top, streaming from `from`), then let it
    /// answer again (a re-pledge is idempotent) and decide again.
    CatchUp {
        node: NodeId,
        to: (Term, Lsn),
        from: NodeId,
        why: String,
    },
    /// Promote `node` under the attempt's term and establish `ruleset` (template steps 6 and 7).
    Promote {
        node: NodeId,
        ruleset: Ruleset,
        why: String,
    },
    /// The reachable members cannot satisfy the policy of the proposed ruleset: promoting would block
    /// every commit. The agent should not promote; report it and retry later.
    Unsatisfiable {
        ruleset: Ruleset,
        reachable: BTreeSet<NodeId>,
    },
    /// No eligible member (e.g. the switchover target is not a reachable recruit).
    NoCandidate { why: String },
}

impl Decision {
    /// One log line.
    pub fn describe(&self) -> String {
        self.to_string()
    }
}

fn names(s: &BTreeSet<NodeId>) -> String {
    s.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Wait { ask } => write!(f, "wait: no quorum yet, asking {{{}}}", names(ask)),
            Decision::BackOff { retry_above } => {
                write!(
                    f,
                    "back off: no quorum possible, retry above term {retry_above}"
                )
            }
            Decision::CatchUp {
                node,
                to,
                from,
                why,
            } => write!(
                f,
                "catch up {node} to (ruleset term {}, {}) from {from} before promoting: {why}",
                to.0, to.1
            ),
            Decision::Promote { node, ruleset, why } => {
                write!(f, "promote {node}: {why}; establish {ruleset}")
            }
            Decision::Unsatisfiable { ruleset, reachable } => write!(
                f,
                "unsatisfiable: reachable members {{{}}} cannot satisfy {ruleset}",
                names(reachable)
            ),
            Decision::NoCandidate { why } => write!(f, "no candidate: {why}"),
        }
    }
}

/// Inputs of candidacy, gathered by the attempt.
pub(crate) struct Candidacy<'a> {
    pub term: Term,
    pub base: &'a Ruleset,
    pub reports: &'a BTreeMap<NodeId, NodeReport>,
    pub discovery: &'a Discovery,
    /// Never chosen (the live leader of a switchover).
    pub excluded: Option<&'a NodeId>,
    /// Chosen if at all possible (the switchover target).
    pub target: Option<&'a NodeId>,
    pub prefs: &'a Preferences,
}

impl Candidacy<'_> {
    fn zone_rank(&self, node: &NodeId) -> usize {
        let zone = &self.base.cohort[node];
        self.prefs
            .zone_order
            .iter()
            .position(|z| z == zone)
            .unwrap_or(self.prefs.zone_order.len())
    }

    /// Best first: preferred zone, then higher priority, then name (deterministic).
    fn sort(&self, nodes: &mut [NodeId]) {
        nodes.sort_by(|a, b| {
            let (ra, rb) = (&self.reports[a], &self.reports[b]);
            self.zone_rank(a)
                .cmp(&self.zone_rank(b))
                .then(rb.priority.cmp(&ra.priority))
                .then(a.cmp(b))
        });
    }

    fn proposal(&self, node: &NodeId) -> Ruleset {
        Ruleset {
            term: self.term,
            version: self.base.version + 1,
            leader: node.clone(),
            cohort: self.base.cohort.clone(),
            policy: self.base.policy,
            // The base may be a change that never took effect: establishment must then also be durable
            // under the membership it changed from.
            prior: self.base.prior.clone(),
        }
    }

    fn top_node(&self) -> NodeId {
        self.discovery.ranking[0].0.clone()
    }

    pub fn decide(&self) -> Decision {
        let top = self.discovery.top;
        let reachable: BTreeSet<NodeId> = self
            .reports
            .values()
            .filter(|r| r.reachable)
            .map(|r| r.node.clone())
            .collect();
        // Eligible: reachable recruits that are cohort members of the ruleset being continued.
        let eligible: Vec<NodeId> = reachable
            .iter()
            .filter(|n| self.base.is_member(n) && Some(*n) != self.excluded)
            .cloned()
            .collect();
        // Reachability of the whole proposed cohort: every reachable member may follow the new leader,
        // including the excluded old leader of a switchover (it becomes a follower).
        let reachable_members: BTreeSet<NodeId> = reachable
            .iter()
            .filter(|n| self.base.is_member(n))
            .cloned()
            .collect();

        let chosen: Option<(NodeId, &'static str)> = match self.target {
            Some(t) => {
                if !eligible.contains(t) {
                    return Decision::NoCandidate {
                        why: format!(
                            "switchover target {t} is not a reachable recruit and cohort member"
                        ),
                    };
                }
                Some((t.clone(), "requested switchover target"))
            }
            None => {
                let mut at_top: Vec<NodeId> = eligible
                    .iter()
                    .filter(|n| self.discovery.tied.contains(*n))
                    .cloned()
                    .collect();
                self.sort(&mut at_top);
                if let Some(n) = at_top.into_iter().next() {
                    Some((n, "tied at the top; preferred by zone, priority, name"))
                } else {
                    let mut behind = eligible.clone();
                    self.sort(&mut behind);
                    behind
                        .into_iter()
                        .next()
                        .map(|n| (n, "no reachable member at the top; best reachable member"))
                }
            }
        };
        let Some((node, reason)) = chosen else {
            return Decision::NoCandidate {
                why: "no reachable recruit is a member of the cohort".into(),
            };
        };
        let ruleset = self.proposal(&node);
        if !ruleset.satisfiable_with(&reachable_members) {
            return Decision::Unsatisfiable {
                ruleset,
                reachable: reachable_members,
            };
        }
        let pos = self.reports[&node].position();
        if pos != top {
            return Decision::CatchUp {
                node,
                to: top,
                from: self.top_node(),
                why: format!("{reason}; it is at ({}, {})", pos.0, pos.1),
            };
        }
        Decision::Promote {
            why: format!("{reason}; at the top ({}, {})", top.0, top.1),
            node,
            ruleset,
        }
    }
}
