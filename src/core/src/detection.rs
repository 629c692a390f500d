//! Owns detection (template step 1): a coordinator races only when a majority of the cohort, itself
//! included, has lost the leader. One node's bad network must not depose a healthy leader. And its
//! mirror on the leader's side (check-quorum): when the members it cannot hear from could elect a
//! leader without it, the leader stops taking writes.

use std::collections::{BTreeMap, BTreeSet};

use crate::ruleset::Ruleset;
use crate::types::NodeId;

/// Check-quorum, on the leader of `rules`: `heard` are the members it heard from within a failover
/// timeout. True when the others (cohort minus `heard`, minus the leader) form a recruit quorum: they may
/// be electing a new leader right now, so this one should close its fence (it can acknowledge nothing
/// they did not flush anyway; this only stops clients writing into a node that will make them wait).
pub fn leader_may_be_replaced(rules: &Ruleset, heard: &BTreeSet<NodeId>) -> bool {
    let unheard: BTreeSet<NodeId> = rules
        .cohort
        .keys()
        .filter(|m| **m != rules.leader && !heard.contains(*m))
        .cloned()
        .collect();
    !unheard.is_empty() && rules.recruit_quorum(&unheard)
}

/// Should this coordinator start an attempt? `my_view_leader_lost`: this node's own health checks failed
/// for `ha.failover_timeout`; `peer_answers`: what the peers it asked said (`true` = lost the leader, too);
/// `cohort_size`: n. Duplicate answers from one peer count once (its last answer wins).
pub fn should_race(
    my_view_leader_lost: bool,
    peer_answers: &[(NodeId, bool)],
    cohort_size: usize,
) -> bool {
    if !my_view_leader_lost {
        return false;
    }
    let answers: BTreeMap<&NodeId, bool> = peer_answers.iter().map(|(n, l)| (n, *l)).collect();
    let lost = 1 + answers.values().filter(|l| **l).count();
    2 * lost > cohort_size
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use crate::types::{Term, Zone};

    fn rules(n: usize, policy: &str) -> Ruleset {
        let cohort = (1..=n)
            .map(|i| (NodeId::from(format!("n{i}").as_str()), Zone::from("z")))
            .collect();
        Ruleset::new(
            Term(2),
            1,
            NodeId::from("n1"),
            cohort,
            policy.parse::<Policy>().unwrap(),
        )
        .unwrap()
    }

    fn set(v: &[&str]) -> BTreeSet<NodeId> {
        v.iter().map(|n| NodeId::from(*n)).collect()
    }

    /// I1 (no spurious failovers) seen from the leader: it steps aside exactly when the members it cannot
    /// hear from could elect without it.
    #[test]
    fn leader_steps_aside_only_when_the_unheard_could_elect() {
        let r = rules(3, "any 1");
        assert!(leader_may_be_replaced(&r, &set(&[])));
        assert!(!leader_may_be_replaced(&r, &set(&["n2"])));
        assert!(!leader_may_be_replaced(&r, &set(&["n2", "n3"])));
        // `zones 1` (the leader alone): nobody can be elected without the leader.
        assert!(!leader_may_be_replaced(&rules(3, "zones 1"), &set(&[])));
        // 5 nodes, any 2: three unheard followers are a recruit quorum, two are not.
        let r5 = rules(5, "any 2");
        assert!(leader_may_be_replaced(&r5, &set(&["n2"])));
        assert!(!leader_may_be_replaced(&r5, &set(&["n2", "n3"])));
        assert!(!leader_may_be_replaced(&rules(1, "zones 1"), &set(&[])));
    }

    fn a(v: &[(&str, bool)]) -> Vec<(NodeId, bool)> {
        v.iter().map(|(n, l)| (NodeId::from(*n), *l)).collect()
    }

    /// I1 (no spurious failovers): a majority including self must have lost the leader.
    #[test]
    fn majority_of_cohort_including_self() {
        assert!(!should_race(false, &a(&[("b", true), ("c", true)]), 3));
        assert!(!should_race(true, &a(&[]), 3));
        assert!(should_race(true, &a(&[("b", true)]), 3));
        assert!(!should_race(true, &a(&[("b", false), ("c", false)]), 3));
        assert!(!should_race(true, &a(&[("b", true), ("b", true)]), 5));
        assert!(should_race(true, &a(&[("b", true), ("c", true)]), 5));
        assert!(!should_race(true, &a(&[("b", true)]), 4));
    }
}
