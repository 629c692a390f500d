//! Property tests of the predicates on random policies and cohorts of up to 7 nodes (issue item 6).

use std::collections::{BTreeMap, BTreeSet};

use pg_ha_core::pledge::{decode, encode, PledgeRecord, RewindFloor};
use pg_ha_core::quorum::any_k_quorum_size;
use pg_ha_core::{Lsn, NodeId, Policy, Ruleset, Term, Zone};
use proptest::prelude::*;

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        (1u32..7).prop_map(Policy::AnyK),
        (1u32..5).prop_map(Policy::Zones)
    ]
}

/// A ruleset over nodes n0..n(k-1), each in one of up to 4 zones.
fn ruleset() -> impl Strategy<Value = Ruleset> {
    (1usize..=7, policy())
        .prop_flat_map(|(k, p)| (prop::collection::vec(0u8..4, k), Just(p)))
        .prop_map(|(zones, p)| {
            let cohort: BTreeMap<NodeId, Zone> = zones
                .iter()
                .enumerate()
                .map(|(i, z)| (NodeId(format!("n{i}")), Zone(format!("z{z}"))))
                .collect();
            Ruleset::new(Term(1), 1, NodeId("n0".into()), cohort, p).unwrap()
        })
}

fn subset(r: &Ruleset, mask: u32) -> BTreeSet<NodeId> {
    r.cohort
        .keys()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, n)| n.clone())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// I2/I3: every recruit quorum intersects every set that could acknowledge a commit (so discovery sees
    /// every acknowledged commit and the old leader is revoked); I1: two recruit quorums intersect.
    #[test]
    fn quorum_intersects_durable_sets_and_quorums_i1_i2_i3(r in ruleset()) {
        let all = 1u32 << r.n();
        let quorums: Vec<u32> = (0..all).filter(|m| r.recruit_quorum(&subset(&r, *m))).collect();
        let durables: Vec<u32> = (0..all).filter(|m| r.durable(&subset(&r, *m))).collect();
        for q in &quorums {
            for d in &durables {
                prop_assert!(q & d != 0, "quorum {q:b} misses durable set {d:b} under {r}");
            }
            for q2 in &quorums {
                prop_assert!(q & q2 != 0, "quorums {q:b} and {q2:b} are disjoint under {r}");
            }
        }
        // The whole cohort is always a quorum; durable is monotone; satisfiable = durable(cohort).
        prop_assert!(r.recruit_quorum(&subset(&r, all - 1)));
        prop_assert_eq!(r.satisfiable(), r.durable(&subset(&r, all - 1)));
        for a in 0..all {
            if r.durable(&subset(&r, a)) {
                for b in 0..all {
                    prop_assert!((a & b) != a || r.durable(&subset(&r, b)));
                }
            }
        }
        if let Policy::AnyK(k) = r.policy {
            let min = quorums.iter().map(|q| q.count_ones() as usize).min().unwrap();
            prop_assert_eq!(min, any_k_quorum_size(r.n(), k as usize));
        }
    }

    /// I1 across a single-member change (I5): every quorum of the old cohort meets every quorum of the new.
    #[test]
    fn quorums_of_adjacent_cohorts_intersect_i1_i5(r in ruleset(), add in any::<bool>(), z in 0u8..4) {
        let mut next = r.clone();
        if add {
            next.cohort.insert(NodeId("n7".into()), Zone(format!("z{z}")));
        } else if r.n() > 1 {
            let last = next.cohort.keys().last().unwrap().clone();
            next.cohort.remove(&last);
        }
        let nodes: Vec<NodeId> = r.cohort.keys().chain(next.cohort.keys()).cloned().collect::<BTreeSet<_>>().into_iter().collect();
        let set = |m: u32| -> BTreeSet<NodeId> { nodes.iter().enumerate().filter(|(i, _)| m & (1 << i) != 0).map(|(_, n)| n.clone()).collect() };
        let all = 1u32 << nodes.len();
        let old_q: Vec<u32> = (0..all).filter(|m| r.recruit_quorum(&set(*m))).collect();
        let new_q: Vec<u32> = (0..all).filter(|m| next.recruit_quorum(&set(*m))).collect();
        for a in &old_q {
            for b in &new_q {
                prop_assert!(a & b != 0);
            }
        }
    }

    /// The commit gate: durable_lsn is the highest L whose flushed set satisfies the policy (definition).
    #[test]
    fn durable_lsn_matches_definition(r in ruleset(), flushes in prop::collection::vec(prop::option::of(0u64..6), 8)) {
        let mut flushed: BTreeMap<NodeId, Lsn> = BTreeMap::new();
        for (i, f) in flushes.iter().enumerate() {
            if let Some(f) = f {
                flushed.insert(NodeId(format!("n{i}")), Lsn(*f * 16));
            }
        }
        let got = r.durable_lsn(&flushed);
        let at = |l: Lsn| -> BTreeSet<NodeId> { flushed.iter().filter(|(_, f)| **f >= l).map(|(n, _)| n.clone()).collect() };
        let expect = (0..=5u64)
            .map(|x| Lsn(x * 16))
            .filter(|l| *l > Lsn::ZERO && r.durable(&at(*l)))
            .max()
            .unwrap_or(Lsn::ZERO);
        prop_assert_eq!(got, expect);
    }

    #[test]
    fn policy_and_lsn_text_round_trip(p in policy(), l in any::<u64>()) {
        prop_assert_eq!(p.to_string().parse::<Policy>().unwrap(), p);
        let upper = p.to_string().to_uppercase().replace(' ', "  \t");
        prop_assert_eq!(upper.parse::<Policy>().unwrap(), p);
        prop_assert_eq!(Lsn(l).to_string().parse::<Lsn>().unwrap(), Lsn(l));
    }

    /// I1: the pledge file round-trips, and any damage is an error (never a silent term reset).
    #[test]
    fn pledge_codec_round_trip_and_damage_i1(
        term in any::<u64>(), coord in prop::option::of("[ -~]{0,12}"), attempt in any::<u64>(),
        floor in prop::option::of((any::<u64>(), any::<u64>())), relearn in any::<bool>(),
        at in any::<prop::sample::Index>(), bit in 0u8..8,
    ) {
        let rec = PledgeRecord {
            term: Term(term),
            coordinator: coord.map(NodeId),
            attempt,
            floor: floor.map(|(t, l)| RewindFloor { ruleset_term: Term(t), lsn: Lsn(l) }),
            must_relearn: relearn,
        };
        let bytes = encode(&rec);
        prop_assert_eq!(decode(&bytes).unwrap(), rec);
        let mut bad = bytes.clone();
        let i = at.index(bad.len());
        bad[i] ^= 1 << bit;
        prop_assert!(decode(&bad).is_err());
        prop_assert!(decode(&bytes[..at.index(bytes.len())]).is_err());
    }
}
