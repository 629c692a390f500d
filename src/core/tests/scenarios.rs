//! Scenario tests of the core's public API: the seed-002 race, switchover, candidacy preferences,
//! order independence of an attempt. Each names the invariant it checks.

use std::collections::{BTreeMap, BTreeSet};

use pg_ha_core::ruleset::cohort_of;
use pg_ha_core::{
    Attempt, AttemptKind, CommitRules, Decision, Lsn, NodeId, NodeReport, Policy, Preferences,
    Rules, Ruleset, Tally, Term, Zone,
};

fn n(s: &str) -> NodeId {
    NodeId::from(s)
}

fn r0() -> Ruleset {
    Ruleset::new(
        Term(1),
        1,
        n("a"),
        cohort_of([("a", "z1"), ("b", "z2"), ("c", "z3")]),
        Policy::AnyK(1),
    )
    .unwrap()
}

fn report(node: &str, zone: &str, term: u64, ruleset: &Ruleset, flush: u64) -> NodeReport {
    NodeReport {
        node: n(node),
        zone: Zone::from(zone),
        pledged_term: Term(term),
        ruleset: Some(ruleset.clone()),
        flush_lsn: Lsn(flush),
        timeline: 1,
        reachable: true,
        priority: 0,
    }
}

fn flushed(v: &[(&str, u64)]) -> BTreeMap<NodeId, Lsn> {
    v.iter().map(|(k, l)| (n(k), Lsn(*l))).collect()
}

/// Seed 002, I3 and I5: the leader adds d (acknowledged under the old ruleset), a write is acknowledged
/// with d's help, the leader crashes, and a coordinator that only knows the old ruleset fails over. The
/// newer ruleset reported by b makes it ask d, and d (holding the write) is promoted. With the broken
/// rule (no restart on a newer ruleset) the same replies promote b and the write is lost.
#[test]
fn seed_002_stale_coordinator_never_loses_the_write_i3_i5() {
    // The leader a adds d: the row (LSN 10) must be durable under the old ruleset first.
    let mut leader = CommitRules::new(r0());
    let known: BTreeSet<NodeId> = ["a", "b", "c", "d"].iter().map(|x| n(x)).collect();
    let r1 = leader
        .propose(
            &known,
            &pg_ha_core::Change::AddMember {
                node: n("d"),
                zone: Zone::from("z4"),
            },
        )
        .unwrap();
    leader.begin(r1.clone(), Lsn(10)).unwrap();
    // d streamed the row but is not an old member: not yet acknowledged.
    assert!(leader.on_flush(&flushed(&[("a", 10), ("d", 10)])).is_none());
    // b flushed it: acknowledged under the old ruleset, the new one counts.
    assert_eq!(
        leader.on_flush(&flushed(&[("a", 10), ("b", 10), ("d", 10)])),
        Some(&r1)
    );
    // The write at LSN 20 is acknowledged with d's help (a and d flushed it; b and c did not).
    let at = flushed(&[("b", 10), ("c", 5), ("d", 20)]);
    assert_eq!(leader.commit_gate_lsn(Lsn(20), &at), Lsn(20));

    // a crashes. Coordinator x only knows r0.
    let replies = [
        report("b", "z2", 2, &r1, 10),
        report("c", "z3", 2, &r0(), 5),
    ];
    let mut att = Attempt::new(
        n("x"),
        Term(2),
        r0(),
        AttemptKind::Failover { old_leader: n("a") },
    );
    let e = att.on_reply(replies[0].clone()).unwrap();
    assert!(e.newer_ruleset, "b holds the change row");
    att.on_reply(replies[1].clone()).unwrap();
    // Under r1 (4 members, any 1) three recruits are needed; d was never in x's view, it is asked now.
    assert_eq!(att.tally(), Tally::Pending);
    assert!(att.nodes_to_ask().contains(&n("d")));
    println!("{}", att.describe());
    att.on_reply(report("d", "z4", 2, &r1, 20)).unwrap();
    assert_eq!(att.tally(), Tally::Won);
    match att.decide(&Preferences::default()) {
        Decision::Promote { node, ruleset, why } => {
            println!("promote {node}: {why}");
            assert_eq!(node, n("d"), "only d holds the write");
            assert_eq!(ruleset.term, Term(2));
            assert_eq!(ruleset.cohort.len(), 4);
            assert_eq!(
                ruleset.prior, r1.prior,
                "establishment also under the old membership"
            );
        }
        d => panic!("unexpected {d}"),
    }

    // The mutation: no restart under the newer ruleset. b and c are a quorum of r0, b is the top, the
    // write at LSN 20 is lost.
    let mut broken = Attempt::new(
        n("x"),
        Term(2),
        r0(),
        AttemptKind::Failover { old_leader: n("a") },
    )
    .with_rules(Rules {
        newest_ruleset: false,
        ..Rules::SAFE
    });
    for r in &replies {
        broken.on_reply(r.clone()).unwrap();
    }
    assert_eq!(broken.tally(), Tally::Won);
    match broken.decide(&Preferences::default()) {
        Decision::Promote { node, .. } => {
            assert_eq!(node, n("b"));
            assert!(
                replies[0].flush_lsn < Lsn(20),
                "the broken rule loses the write"
            );
        }
        d => panic!("unexpected {d}"),
    }
}

/// I3 (switchover): the live leader pledges and reports its final LSN; the target catches up to exactly
/// it before being promoted; a refusing leader makes the attempt Lost.
#[test]
fn switchover_target_catches_up_to_final_lsn_i3() {
    let kind = AttemptKind::Switchover {
        leader: n("a"),
        target: Some(n("c")),
    };
    let mut att = Attempt::new(n("a"), Term(2), r0(), kind.clone());
    att.on_reply(report("b", "z2", 2, &r0(), 100)).unwrap();
    att.on_reply(report("c", "z3", 2, &r0(), 90)).unwrap();
    assert_eq!(
        att.tally(),
        Tally::Pending,
        "the live leader must pledge too"
    );
    att.on_reply(report("a", "z1", 2, &r0(), 120)).unwrap();
    assert_eq!(att.tally(), Tally::Won);
    match att.decide(&Preferences::default()) {
        Decision::CatchUp { node, to, from, .. } => {
            assert_eq!((node, to, from), (n("c"), (Term(1), Lsn(120)), n("a")));
        }
        d => panic!("unexpected {d}"),
    }
    // c caught up and answered again (idempotent re-pledge).
    att.on_reply(report("c", "z3", 2, &r0(), 120)).unwrap();
    let d = att.decide(&Preferences::default());
    println!("{d}");
    match d {
        Decision::Promote { node, ruleset, .. } => {
            assert_eq!(node, n("c"));
            assert_eq!(
                (ruleset.term, ruleset.version, ruleset.leader),
                (Term(2), 2, n("c"))
            );
        }
        d => panic!("unexpected {d}"),
    }
    let mut refused = Attempt::new(n("a"), Term(2), r0(), kind);
    refused.on_reply(report("b", "z2", 2, &r0(), 100)).unwrap();
    refused.on_reply(report("c", "z3", 2, &r0(), 100)).unwrap();
    refused.on_refusal(n("a"), Term(5));
    assert_eq!(refused.tally(), Tally::Lost);
    assert_eq!(
        refused.decide(&Preferences::default()),
        Decision::BackOff {
            retry_above: Term(5)
        }
    );
}

/// I3 (candidacy): among nodes tied at the top prefer zone, then priority, then name; an unreachable top
/// forces a catch-up; a proposal the reachable members cannot satisfy is refused.
#[test]
fn candidacy_preferences_and_satisfiability_i3() {
    let five = Ruleset::new(
        Term(1),
        1,
        n("a"),
        cohort_of([
            ("a", "z1"),
            ("b", "z2"),
            ("c", "z3"),
            ("d", "z2"),
            ("e", "z3"),
        ]),
        Policy::AnyK(1),
    )
    .unwrap();
    let mut att = Attempt::new(
        n("x"),
        Term(3),
        five.clone(),
        AttemptKind::Failover { old_leader: n("a") },
    );
    for (node, zone, flush) in [
        ("b", "z2", 50),
        ("c", "z3", 50),
        ("d", "z2", 50),
        ("e", "z3", 40),
    ] {
        att.on_reply(report(node, zone, 3, &five, flush)).unwrap();
    }
    let top = att.discovery().unwrap();
    assert_eq!(top.top, (Term(1), Lsn(50)));
    assert_eq!(top.tied.len(), 3);
    let prefs = Preferences {
        zone_order: vec![Zone::from("z3")],
    };
    assert!(matches!(att.decide(&prefs), Decision::Promote { node, .. } if node == n("c")));
    // Without a zone preference, priority then name: d has priority.
    let mut with_prio = att.clone();
    let mut d = report("d", "z2", 3, &five, 50);
    d.priority = 5;
    with_prio.on_reply(d).unwrap();
    assert!(
        matches!(with_prio.decide(&Preferences::default()), Decision::Promote { node, .. } if node == n("d"))
    );
    // All nodes at the top unreachable: the best reachable one catches up first.
    let mut unreach = att.clone();
    unreach.on_reply(report("d", "z2", 3, &five, 45)).unwrap();
    for (node, zone) in [("b", "z2"), ("c", "z3")] {
        let mut r = report(node, zone, 3, &five, 50);
        r.reachable = false;
        unreach.on_reply(r).unwrap();
    }
    match unreach.decide(&Preferences::default()) {
        Decision::CatchUp { node, to, from, .. } => {
            assert_eq!((node, to, from), (n("d"), (Term(1), Lsn(50)), n("b")))
        }
        d => panic!("unexpected {d}"),
    }
    // Only e reachable: one member cannot satisfy `any 1`.
    let mut alone = unreach.clone();
    let mut d = report("d", "z2", 3, &five, 45);
    d.reachable = false;
    alone.on_reply(d).unwrap();
    assert!(matches!(
        alone.decide(&Preferences::default()),
        Decision::Unsatisfiable { .. }
    ));
    // zones 3 with only z2 and z3 reachable: unsatisfiable.
    let zones = Ruleset {
        policy: Policy::Zones(3),
        ..five
    };
    let mut z = Attempt::new(
        n("x"),
        Term(3),
        zones.clone(),
        AttemptKind::Failover { old_leader: n("a") },
    );
    for (node, zone) in [("b", "z2"), ("c", "z3"), ("d", "z2"), ("e", "z3")] {
        z.on_reply(report(node, zone, 3, &zones, 50)).unwrap();
    }
    assert!(matches!(
        z.decide(&Preferences::default()),
        Decision::Unsatisfiable { .. }
    ));
}

/// I1: an attempt is a function of the answers: order and duplicates do not matter, replies for another
/// term are rejected, and a node never counts twice.
#[test]
fn attempt_is_order_independent_i1() {
    let replies = [
        report("b", "z2", 4, &r0(), 30),
        report("c", "z3", 4, &r0(), 20),
        report("b", "z2", 4, &r0(), 30),
    ];
    let mut outcomes = BTreeSet::new();
    for perm in [[0, 1, 2], [2, 1, 0], [1, 0, 2], [1, 2, 0]] {
        let mut a = Attempt::new(
            n("x"),
            Term(4),
            r0(),
            AttemptKind::Failover { old_leader: n("a") },
        );
        for i in perm {
            a.on_reply(replies[i].clone()).unwrap();
        }
        outcomes.insert(format!(
            "{:?} {}",
            a.tally(),
            a.decide(&Preferences::default())
        ));
    }
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    let mut a = Attempt::new(
        n("x"),
        Term(4),
        r0(),
        AttemptKind::Failover { old_leader: n("a") },
    );
    assert!(a.on_reply(report("b", "z2", 3, &r0(), 30)).is_err());
    a.on_reply(report("b", "z2", 4, &r0(), 30)).unwrap();
    a.on_refusal(n("c"), Term(4));
    assert_eq!(a.tally(), Tally::Pending, "a may still pledge");
    a.on_refusal(n("a"), Term(6));
    assert_eq!(a.tally(), Tally::Lost);
    assert_eq!(a.highest_term_seen(), Term(6));
    assert_eq!(Attempt::next_term([Term(3), Term(6), Term(1)]), Term(7));
}

/// I5: a leadership row built on a change that may not have taken effect is established only when durable
/// under the prior membership too.
#[test]
fn establishment_on_unacknowledged_change_needs_prior_i5() {
    let known: BTreeSet<NodeId> = ["a", "b", "c", "d"].iter().map(|x| n(x)).collect();
    let r1 = pg_ha_core::propose(
        &r0(),
        None,
        &known,
        &pg_ha_core::Change::AddMember {
            node: n("d"),
            zone: Zone::from("z4"),
        },
    )
    .unwrap();
    let t2 = Ruleset {
        term: Term(2),
        version: 3,
        prior: r1.prior.clone(),
        ..r1.clone()
    };
    // a and d alone satisfy the new cohort but not the prior one.
    let f = flushed(&[("a", 30), ("d", 30)]);
    assert_eq!(t2.durable_lsn(&f), Lsn(30));
    assert_eq!(t2.establishment_lsn(&f), Lsn::ZERO);
    assert_eq!(
        t2.establishment_lsn(&flushed(&[("a", 30), ("d", 30), ("b", 30)])),
        Lsn(30)
    );
    assert!(t2.to_string().contains("prior any 1 {a, b, c}"));
}
