//! Owns detection (template step 1): a coordinator races only when a majority of the cohort, itself
//! included, has lost the leader. One node's bad network must not depose a healthy leader.

use std::collections::BTreeMap;

use crate::types::NodeId;

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
