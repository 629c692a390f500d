//! Owns the recruit quorum: which sets of pledged nodes are enough to win a term, and the tally
//! Won / Pending / Lost of a set of answers.
//!
//! protocol.md's two rules for a recruit set S of cohort C (n = |C|):
//! 1. `not durable(C \ S)`: the nodes outside S cannot acknowledge anything alone, so every acknowledged
//!    commit is on a node of S (discovery) and no leader of a lower term can complete a commit without S
//!    (revocation). `durable` does not require the leader (see `Ruleset::durable`): after a crash, C \ S
//!    need not contain the old leader, yet another member of the same cohort may have been promoted by a
//!    coordinator we never heard of and acknowledged with nodes of C \ S.
//! 2. `|S| > n/2`: two recruit sets of one term intersect, and a node pledges once per term (I1).

use std::collections::BTreeSet;
use std::fmt;

use crate::rules::{RecruitRule, Rules};
use crate::ruleset::Ruleset;
use crate::types::NodeId;

/// Where a collection of pledges stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tally {
    /// The recruits are a quorum.
    Won,
    /// Not yet; nodes that have not answered could still complete a quorum.
    Pending,
    /// Even if every node that has not answered pledged, there would be no quorum: back off and retry.
    Lost,
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tally::Won => "won",
            Tally::Pending => "pending",
            Tally::Lost => "lost",
        })
    }
}

/// Is `recruits` (nodes that pledged; outsiders are ignored) a recruit quorum of `ruleset` under `rules`?
pub fn recruit_quorum(ruleset: &Ruleset, recruits: &BTreeSet<NodeId>, rules: &Rules) -> bool {
    let inside: BTreeSet<NodeId> = ruleset
        .cohort
        .keys()
        .filter(|n| recruits.contains(*n))
        .cloned()
        .collect();
    let majority = 2 * inside.len() > ruleset.n();
    match rules.recruit {
        RecruitRule::PolicyAndMajority => {
            let outside: BTreeSet<NodeId> = ruleset
                .cohort
                .keys()
                .filter(|n| !inside.contains(*n))
                .cloned()
                .collect();
            majority && !ruleset.durable(&outside)
        }
        RecruitRule::MajorityOnly => majority,
    }
}

/// Tally the answers for `ruleset`: `recruits` pledged, `refused` will not pledge in this term.
pub fn tally(
    ruleset: &Ruleset,
    recruits: &BTreeSet<NodeId>,
    refused: &BTreeSet<NodeId>,
    rules: &Rules,
) -> Tally {
    if recruit_quorum(ruleset, recruits, rules) {
        return Tally::Won;
    }
    // Quorums are upward closed, so the best case is "everyone who has not refused pledges".
    let best: BTreeSet<NodeId> = ruleset
        .cohort
        .keys()
        .filter(|n| !refused.contains(*n) || recruits.contains(*n))
        .cloned()
        .collect();
    if recruit_quorum(ruleset, &best, rules) {
        Tally::Pending
    } else {
        Tally::Lost
    }
}

/// Smallest recruit quorum size for `any k` on n nodes, protocol.md's closed form
/// `max(n - k, floor(n/2) + 1)`; for reference and tests.
pub fn any_k_quorum_size(n: usize, k: usize) -> usize {
    n.saturating_sub(k).max(n / 2 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use crate::ruleset::cohort_of;
    use crate::types::Term;

    fn set(ns: &[&str]) -> BTreeSet<NodeId> {
        ns.iter().map(|n| NodeId::from(*n)).collect()
    }

    /// I1/I2: Won / Pending / Lost on a 5-node `any 1` cohort (quorum of 4).
    #[test]
    fn tally_three_outcomes() {
        let r = Ruleset::new(
            Term(1),
            1,
            "a".into(),
            cohort_of([("a", "z"), ("b", "z"), ("c", "z"), ("d", "z"), ("e", "z")]),
            Policy::AnyK(1),
        )
        .unwrap();
        let s = Rules::SAFE;
        assert_eq!(tally(&r, &set(&["b", "c"]), &set(&[]), &s), Tally::Pending);
        assert_eq!(
            tally(&r, &set(&["b", "c"]), &set(&["d"]), &s),
            Tally::Pending
        );
        assert_eq!(
            tally(&r, &set(&["b", "c"]), &set(&["d", "e"]), &s),
            Tally::Lost
        );
        assert_eq!(
            tally(&r, &set(&["b", "c", "d", "e"]), &set(&["a"]), &s),
            Tally::Won
        );
        // The broken majority-only rule would call three a quorum.
        let broken = Rules {
            recruit: RecruitRule::MajorityOnly,
            ..Rules::SAFE
        };
        assert_eq!(
            tally(&r, &set(&["b", "c", "d"]), &set(&[]), &broken),
            Tally::Won
        );
    }

    #[test]
    fn closed_form() {
        assert_eq!(any_k_quorum_size(3, 1), 2);
        assert_eq!(any_k_quorum_size(5, 1), 4);
        assert_eq!(any_k_quorum_size(5, 2), 3);
    }
}
