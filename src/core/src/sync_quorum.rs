//! Owns what `synchronous_standby_names` says on the leader: a quorum of followers whose flush makes
//! Postgres' own wait end. That wait runs before a commit becomes visible to other sessions, so the quorum
//! must imply the commit rules in force (I3 as readers see it), and while a ruleset change is in flight it
//! must imply both the old and the new rules (I5).
//!
//! - One ruleset (`for_ruleset`): `any K` is `ANY K (followers)`, exact. `zones K` is
//!   `ANY K-1 (followers outside the leader's zone)`: exact for K <= 2, and for any K when no two of those
//!   followers share a zone; otherwise (e.g. two followers in one other zone under `zones 3`) Postgres'
//!   `ANY`/`FIRST` cannot say "K distinct zones" and this is only a first stage: a row can become visible
//!   once K-1 followers outside the leader's zone flushed it, and the commit gate holds the acknowledgement
//!   until K zones have it.
//! - A change in flight (`joint`): `FIRST m (markers..., L)` with every m-subset of L satisfying both
//!   rulesets' quorums. `FIRST` rather than `ANY` because a walsender reports its own parsed setting only
//!   as `sync_standby_priority`, which under `ANY` is 1 for every listed name whatever the count: under
//!   `FIRST`, with never-connecting marker names in front, a listed follower's priority is its position,
//!   which no `ANY` setting and not the previous joint setting (the number of markers alternates with the
//!   row version) produce, so the leader can confirm every walsender loaded it before it writes the row.
//!   `FIRST m` ends the wait once m listed followers flushed, so it is at least as strong as `ANY m`.

use std::collections::BTreeSet;

use crate::policy::Policy;
use crate::ruleset::Ruleset;
use crate::types::NodeId;

/// A quorum of followers: `num` of `names` must have flushed. With `markers > 0`, written in `FIRST`
/// form behind that many marker names that no standby uses.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SyncQuorum {
    pub num: u32,
    pub names: Vec<NodeId>,
    pub markers: u32,
    /// The version of the row the markers are named after.
    pub version: u64,
}

fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

impl SyncQuorum {
    /// Nothing to wait for (the leader alone satisfies the rules).
    pub fn none() -> SyncQuorum {
        SyncQuorum {
            num: 0,
            names: Vec::new(),
            markers: 0,
            version: 0,
        }
    }

    /// The `synchronous_standby_names` text ("" when there is nothing to wait for).
    pub fn setting(&self) -> String {
        if self.num == 0 || self.names.is_empty() {
            return String::new();
        }
        let names: Vec<String> = self.names.iter().map(|n| q(n.as_str())).collect();
        if self.markers == 0 {
            return format!("ANY {} ({})", self.num, names.join(", "));
        }
        let markers: Vec<String> = (1..=self.markers)
            .map(|i| q(&format!("pg_ha_joint_v{}_{i}", self.version)))
            .collect();
        format!(
            "FIRST {} ({}, {})",
            self.num,
            markers.join(", "),
            names.join(", ")
        )
    }

    /// `sync_standby_priority` a walsender streaming to `node` reports once it has loaded `setting()`.
    pub fn priority_of(&self, node: &NodeId) -> u32 {
        if self.num == 0 {
            return 0;
        }
        match self.names.iter().position(|n| n == node) {
            None => 0,
            Some(_) if self.markers == 0 => 1,
            Some(i) => self.markers + i as u32 + 1,
        }
    }
}

/// (count, followers) of one ruleset's quorum.
fn quorum_of(r: &Ruleset) -> (u32, BTreeSet<NodeId>) {
    let followers = r.cohort.iter().filter(|(n, _)| **n != r.leader);
    match r.policy {
        Policy::AnyK(k) => (k, followers.map(|(n, _)| n.clone()).collect()),
        Policy::Zones(k) => {
            let lz = r.cohort.get(&r.leader);
            (
                k.saturating_sub(1),
                followers
                    .filter(|(_, z)| Some(*z) != lz)
                    .map(|(n, _)| n.clone())
                    .collect(),
            )
        }
    }
}

/// The quorum for one ruleset (see the module comment).
pub fn for_ruleset(r: &Ruleset) -> SyncQuorum {
    let (k, names) = quorum_of(r);
    if k == 0 || names.is_empty() {
        return SyncQuorum::none();
    }
    SyncQuorum {
        num: k.min(names.len() as u32),
        names: names.into_iter().collect(),
        markers: 0,
        version: r.version,
    }
}

/// A quorum at least as strong as both `old`'s and `new`'s (a change from `old` to `new` in flight), in
/// `FIRST` form with markers; `None` if no single list and count can say it (then Postgres' wait keeps
/// `old`'s quorum and only the commit gate enforces the joint rules).
///
/// Among lists L made of followers in both quorums' lists plus some in only one, with m the least count
/// such that every m of L satisfy both quorums, it picks the one that tolerates the most missing
/// followers (|L| - m), then the smallest m.
pub fn joint(old: &Ruleset, new: &Ruleset) -> Option<SyncQuorum> {
    let (k1, l1) = quorum_of(old);
    let (k2, l2) = quorum_of(new);
    let version = new.version;
    if k1 == 0 && k2 == 0 {
        return Some(SyncQuorum::none());
    }
    let both: Vec<&NodeId> = l1.intersection(&l2).collect();
    let only1: Vec<&NodeId> = l1.difference(&l2).collect();
    let only2: Vec<&NodeId> = l2.difference(&l1).collect();
    // Every m-subset S of L has |S ∩ Li| >= ki iff m >= ki + |L \ Li| (for ki > 0).
    let need = |k: u32, outside: usize| if k == 0 { 0 } else { k as usize + outside };
    let mut best: Option<(usize, usize, usize, usize)> = None; // (tolerance, m, a, b)
    for a in 0..=only1.len() {
        for b in 0..=only2.len() {
            let len = both.len() + a + b;
            let m = need(k1, b).max(need(k2, a));
            if m == 0 || m > len {
                continue;
            }
            let tol = len - m;
            let better = match best {
                None => true,
                Some((t, bm, _, _)) => tol > t || (tol == t && m < bm),
            };
            if better {
                best = Some((tol, m, a, b));
            }
        }
    }
    let (_, m, a, b) = best?;
    let mut names: Vec<NodeId> = both.into_iter().cloned().collect();
    names.extend(only1.into_iter().take(a).cloned());
    names.extend(only2.into_iter().take(b).cloned());
    names.sort();
    Some(SyncQuorum {
        num: m as u32,
        names,
        markers: 1 + (version % 2) as u32,
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::cohort_of;
    use crate::types::Term;

    fn rs(version: u64, members: &[(&str, &str)], policy: Policy) -> Ruleset {
        Ruleset::new(
            Term(1),
            version,
            "a".into(),
            cohort_of(members.iter().copied()),
            policy,
        )
        .unwrap()
    }

    const FIVE: [(&str, &str); 5] = [
        ("a", "z1"),
        ("b", "z1"),
        ("c", "z2"),
        ("d", "z2"),
        ("e", "z3"),
    ];

    /// Every subset of `names` of size `num` satisfies `r`'s policy together with the leader.
    fn implies(q: &SyncQuorum, r: &Ruleset) -> bool {
        let n = q.names.len();
        (0u32..1 << n).filter(|s| s.count_ones() == q.num).all(|s| {
            let mut set: BTreeSet<NodeId> = (0..n)
                .filter(|i| s & (1 << i) != 0)
                .map(|i| q.names[i].clone())
                .collect();
            set.insert(r.leader.clone());
            r.durable(&set)
        })
    }

    /// I3: one ruleset's setting, as before (`any K` exact, `zones 2` exact).
    #[test]
    fn single_ruleset_settings() {
        let r = rs(1, &FIVE, Policy::AnyK(2));
        assert_eq!(
            for_ruleset(&r).setting(),
            "ANY 2 (\"b\", \"c\", \"d\", \"e\")"
        );
        let r = rs(1, &FIVE, Policy::Zones(2));
        let q = for_ruleset(&r);
        assert_eq!(q.setting(), "ANY 1 (\"c\", \"d\", \"e\")");
        assert!(implies(&q, &r));
        assert_eq!(for_ruleset(&rs(1, &FIVE, Policy::Zones(1))).setting(), "");
        // zones 3 with c and d sharing z2: a first stage only (c + d are 2 zones with the leader).
        let r = rs(1, &FIVE, Policy::Zones(3));
        let q = for_ruleset(&r);
        assert_eq!(q.setting(), "ANY 2 (\"c\", \"d\", \"e\")");
        assert!(!implies(&q, &r));
        // zones 3 with one follower per other zone: exact.
        let r = rs(
            1,
            &[("a", "z1"), ("b", "z2"), ("c", "z3")],
            Policy::Zones(3),
        );
        assert!(implies(&for_ruleset(&r), &r));
        assert_eq!(q.priority_of(&"c".into()), 1);
        assert_eq!(q.priority_of(&"b".into()), 0);
    }

    /// I5: the joint quorum implies both rulesets, is satisfiable, and its priorities tell it apart from
    /// any `ANY` setting and from the previous joint setting.
    #[test]
    fn joint_implies_both_i5() {
        let any1 = rs(4, &FIVE, Policy::AnyK(1));
        let any2 = rs(5, &FIVE, Policy::AnyK(2));
        let q = joint(&any1, &any2).unwrap();
        assert_eq!(
            q.setting(),
            "FIRST 2 (\"pg_ha_joint_v5_1\", \"pg_ha_joint_v5_2\", \"b\", \"c\", \"d\", \"e\")"
        );
        assert!(implies(&q, &any1) && implies(&q, &any2));
        assert_eq!(q.priority_of(&"b".into()), 3);
        assert_eq!(q.priority_of(&"a".into()), 0);
        let back = rs(6, &FIVE, Policy::AnyK(1));
        let q6 = joint(&any2, &back).unwrap();
        assert_eq!(q6.markers, 1);
        assert_ne!(q6.priority_of(&"b".into()), q.priority_of(&"b".into()));

        let four = rs(2, &FIVE[..4], Policy::AnyK(1));
        let five = rs(3, &FIVE, Policy::AnyK(1));
        let q = joint(&four, &five).unwrap();
        assert_eq!((q.num, q.names.len()), (1, 3), "{q:?}");
        assert!(implies(&q, &four) && implies(&q, &five));
        let q = joint(&five, &four).unwrap();
        assert!(implies(&q, &four) && implies(&q, &five));

        // any 2 <-> zones 2 over one cohort: the out-of-zone list is too short for 2 of it alone.
        let three = [("a", "z1"), ("b", "z1"), ("c", "z1"), ("d", "z2")];
        let a2 = rs(2, &three, Policy::AnyK(2));
        let z2 = rs(3, &three, Policy::Zones(2));
        let q = joint(&a2, &z2).unwrap();
        assert!(implies(&q, &a2) && implies(&q, &z2), "{q:?}");
        assert_eq!(q.num as usize, q.names.len());

        // zones 1 -> any 1: only the new quorum matters.
        let zl = rs(2, &FIVE[..3], Policy::Zones(1));
        let a1 = rs(3, &FIVE[..3], Policy::AnyK(1));
        let q = joint(&zl, &a1).unwrap();
        assert_eq!((q.num, q.names.len()), (1, 2));
        // Nothing to wait for under either.
        let z1b = rs(3, &FIVE[..2], Policy::Zones(1));
        assert_eq!(
            joint(&rs(2, &FIVE[..1], Policy::Zones(1)), &z1b),
            Some(SyncQuorum::none())
        );
    }

    /// Exhaustive over small cohorts: whenever `joint` answers, its quorum implies both rulesets.
    #[test]
    fn joint_is_sound_on_small_cohorts_i5() {
        let zones = ["z1", "z2", "z3"];
        let names = ["a", "b", "c", "d", "e"];
        for n in 2..=5usize {
            for zmask in 0..3usize.pow(n as u32) {
                let members: Vec<(&str, &str)> = (0..n)
                    .map(|i| (names[i], zones[(zmask / 3usize.pow(i as u32)) % 3]))
                    .collect();
                let policies = [
                    Policy::AnyK(1),
                    Policy::AnyK(2),
                    Policy::Zones(1),
                    Policy::Zones(2),
                ];
                for p1 in policies {
                    for p2 in policies {
                        let (Ok(r1), Ok(r2)) = (
                            Ruleset::new(
                                Term(1),
                                1,
                                "a".into(),
                                cohort_of(members.iter().copied()),
                                p1,
                            ),
                            Ruleset::new(
                                Term(1),
                                2,
                                "a".into(),
                                cohort_of(members.iter().copied()),
                                p2,
                            ),
                        ) else {
                            continue;
                        };
                        if !r1.satisfiable() || !r2.satisfiable() {
                            continue;
                        }
                        if let Some(q) = joint(&r1, &r2) {
                            if q.num > 0 {
                                assert!(
                                    implies(&q, &r1) && implies(&q, &r2),
                                    "{r1:?} {r2:?} {q:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
