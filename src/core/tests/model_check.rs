//! Model checks of the consensus core (issue 3, item 6 and 7): exhaustive exploration of small clusters,
//! invariants I1, I2, I3 and I5 checked in every reachable state; and mutations (deliberately broken
//! rules) that the checker must catch with a counterexample.
//!
//! Run with `--nocapture` to see the state counts and the counterexamples.

mod model;

use model::checker::{check, Outcome};
use model::cluster::{Action, Cluster, Config, MChange, View};
use pg_ha_core::{Policy, RecruitRule, Rules};

/// A safety net: every model below is exhausted well before this many states.
const LIMIT: usize = 2_000_000;

fn run(cfg: Config) -> Outcome<Action> {
    let name = cfg.name;
    let started = std::time::Instant::now();
    let out = check(&Cluster::new(cfg), LIMIT);
    println!(
        "model {name}: {} states, depth {}, complete {}, {:.1}s",
        out.states,
        out.max_depth,
        out.complete,
        started.elapsed().as_secs_f64()
    );
    out
}

fn expect_safe(cfg: Config) {
    let out = run(cfg);
    if let Some(v) = out.violation {
        panic!("{}\ncounterexample:\n{}", v.invariant, v.rendered);
    }
    assert!(
        out.complete,
        "state space not exhausted within {LIMIT} states"
    );
}

fn expect_counterexample(cfg: Config, invariant: &str) {
    let out = run(cfg);
    let v = out
        .violation
        .expect("the broken rule must produce a counterexample");
    println!(
        "counterexample ({} steps): {}\n{}",
        v.trace.len(),
        v.invariant,
        v.rendered
    );
    assert!(v.invariant.starts_with(invariant), "{}", v.invariant);
}

fn three_nodes() -> Config {
    Config {
        name: "3 nodes, any 1, 2 coordinators, 1 write, 1 crash",
        nodes: 3,
        zones: vec![0, 1, 2],
        cohort: 0b111,
        policy: Policy::AnyK(1),
        coords: vec![View::Fresh, View::Fresh],
        max_writes: 1,
        max_crashes: 1,
        change: None,
        rules: Rules::SAFE,
    }
}

fn four_nodes_add() -> Config {
    Config {
        name: "4 nodes, any 1, add n3 in flight, stale coordinator, 1 write, 1 crash",
        nodes: 4,
        zones: vec![0, 1, 2, 3],
        cohort: 0b0111,
        policy: Policy::AnyK(1),
        coords: vec![View::Stale],
        max_writes: 1,
        max_crashes: 1,
        change: Some(MChange::Add(3)),
        rules: Rules::SAFE,
    }
}

fn four_nodes_remove() -> Config {
    Config {
        name: "4 nodes, any 1, remove n3 in flight, 1 coordinator, 1 write",
        nodes: 4,
        zones: vec![0, 1, 2, 3],
        cohort: 0b1111,
        policy: Policy::AnyK(1),
        coords: vec![View::Stale],
        max_writes: 1,
        max_crashes: 0,
        change: Some(MChange::Remove(3)),
        rules: Rules::SAFE,
    }
}

/// I1, I2, I3, I5 in every reachable state: 3 nodes, 2 racing coordinators, message loss/duplication/
/// reordering, a crash and restart, 2 commits.
#[test]
fn model_i1_i2_i3_i5_three_nodes_two_coordinators() {
    expect_safe(three_nodes());
}

/// I1, I2, I3, I5 in every reachable state with a membership change in flight (seed 002 generalised):
/// 4 nodes, n3 added by the leader, a coordinator that only knows the initial ruleset, a leader crash.
#[test]
fn model_i1_i2_i3_i5_four_nodes_add_member_stale_coordinator() {
    expect_safe(four_nodes_add());
}

/// I1, I2, I3, I5 with a membership change in flight, seen by a coordinator that starts from the newest
/// ruleset row in any WAL.
#[test]
fn model_i1_i2_i3_i5_four_nodes_add_member_fresh_coordinator() {
    expect_safe(Config {
        name: "4 nodes, any 1, add n3 in flight, fresh coordinator, 1 write, 1 crash",
        coords: vec![View::Fresh],
        ..four_nodes_add()
    });
}

/// I1, I2, I3, I5: two stale coordinators racing during a membership change on 4 nodes (this model found
/// the establishment-under-prior rule). Millions of states: too slow for a debug `cargo test`; run it with
/// `--ignored` in an optimized build (about 60 s).
#[test]
#[ignore]
fn model_i1_i2_i3_i5_four_nodes_add_member_two_stale_coordinators() {
    // Bounded: the first 2,000,000 states (every state up to depth 14, where the core without the prior
    // rule failed) are checked; the space is not exhausted.
    let out = run(Config {
        name: "4 nodes, any 1, add n3 in flight, 2 stale coordinators, 1 write",
        coords: vec![View::Stale, View::Stale],
        max_crashes: 0,
        ..four_nodes_add()
    });
    if let Some(v) = out.violation {
        panic!("{}\ncounterexample:\n{}", v.invariant, v.rendered);
    }
    assert!(out.max_depth >= 14);
}

/// I3, I5: removing a member while commits continue (joint durability during the pending change).
#[test]
fn model_i3_i5_four_nodes_remove_member_in_flight() {
    expect_safe(four_nodes_remove());
}

/// Mutation (a), I2 (and then I3): majority-only recruitment for `any 1` on 5 nodes wins a term while the
/// old leader can still complete commits with a node outside the recruits.
#[test]
fn mutation_majority_only_recruitment_breaks_i2() {
    expect_counterexample(
        Config {
            name: "MUTATION majority-only recruit, 5 nodes any 1",
            nodes: 5,
            zones: vec![0, 1, 2, 3, 4],
            cohort: 0b11111,
            policy: Policy::AnyK(1),
            coords: vec![View::Fresh],
            max_writes: 1,
            max_crashes: 0,
            change: None,
            rules: Rules {
                recruit: RecruitRule::MajorityOnly,
                ..Rules::SAFE
            },
        },
        "I2",
    );
}

/// Mutation (b), I2 (and then I3, see the seed-002 scenario test): a coordinator that keeps quorum-checking
/// its stale ruleset after a recruit reported a newer one wins while the leader can still complete commits
/// with the new member.
#[test]
fn mutation_no_newer_ruleset_restart_breaks_i2() {
    expect_counterexample(
        Config {
            name: "MUTATION no newer-ruleset restart, 4 nodes add n3",
            rules: Rules {
                newest_ruleset: false,
                ..Rules::SAFE
            },
            ..four_nodes_add()
        },
        "I2",
    );
}

/// Not a check: sizes a variant of the 3-node model from MODEL_PROBE="writes,crashes,coordinators".
#[test]
#[ignore]
fn model_size_probe() {
    let v: Vec<u8> = std::env::var("MODEL_PROBE")
        .unwrap_or("1,0,1".into())
        .split(',')
        .map(|x| x.parse().unwrap())
        .collect();
    let out = run(Config {
        name: "probe",
        max_writes: v[0],
        max_crashes: v[1],
        coords: vec![View::Fresh; v[2] as usize],
        ..three_nodes()
    });
    assert!(out.violation.is_none());
}

/// Not a check: sizes variants of the 4-node add model from MODEL_PROBE4="crashes,stale coordinators,fresh coordinators".
#[test]
#[ignore]
fn model_size_probe4() {
    let v: Vec<usize> = std::env::var("MODEL_PROBE4")
        .unwrap_or("0,1,0".into())
        .split(',')
        .map(|x| x.parse().unwrap())
        .collect();
    let mut coords = vec![View::Stale; v[1]];
    coords.extend(vec![View::Fresh; v[2]]);
    expect_safe(Config {
        name: "probe4",
        max_crashes: v[0] as u8,
        coords,
        ..four_nodes_add()
    });
}
