//! A fault campaign: a cluster on hosts of its own, a write load from the client namespace that records the
//! node and term of every acknowledgement, and rounds of random faults drawn from a seed, each followed by
//! recovery; then the checker ([`crate::checker`]) on the healed, converged cluster. The same seed draws the
//! same faults, so a failure can be replayed (`cargo run -p pg_test --bin campaign -- --seed N`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::checker::{check, converge, tagged_load, writable_leader, CheckReport};
use crate::error::{err, Result};
use crate::nemesis::Nemesis;
use crate::wait::{wait_until, wait_until_ok};
use crate::{Cluster, ClusterSpec};

/// The faults a round can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL the leader.
    KillLeader,
    /// SIGKILL a follower.
    KillFollower,
    /// SIGSTOP the leader (all its processes), SIGCONT at the end of the round.
    FreezeLeader,
    /// Cut the leader off from every follower; clients still reach it.
    IsolateLeader,
    /// Cut a follower off from every other node.
    IsolateFollower,
    /// A follower cannot reach the leader; the leader still reaches it.
    OneWayFollowerToLeader,
    /// The leader cannot reach a follower; the follower still reaches it.
    OneWayLeaderToFollower,
    /// SIGKILL the leader, then cut off the first node seen racing for the next term (a coordinator
    /// mid-failover).
    CutCoordinatorMidFailover,
    /// SIGKILL the leader, then a follower 0.2–0.8 s later.
    KillTwoQuickly,
    /// Restart a random node (fast shutdown, start).
    Restart,
}

/// Every fault, equally likely.
pub const ALL: [Fault; 10] = [
    Fault::KillLeader,
    Fault::KillFollower,
    Fault::FreezeLeader,
    Fault::IsolateLeader,
    Fault::IsolateFollower,
    Fault::OneWayFollowerToLeader,
    Fault::OneWayLeaderToFollower,
    Fault::CutCoordinatorMidFailover,
    Fault::KillTwoQuickly,
    Fault::Restart,
];

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    pub faults: usize,
    pub nodes: usize,
    pub policy: String,
    pub failover_timeout_ms: u64,
    /// How long a fault lasts: drawn between these (ms).
    pub hold_ms: (u64, u64),
    /// Deadline for a leader to accept writes again after a round's recovery.
    pub recovery_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seed: 1,
            faults: 20,
            nodes: 3,
            policy: "any 1".into(),
            failover_timeout_ms: 1500,
            hold_ms: (1000, 5000),
            recovery_timeout: Duration::from_secs(90),
        }
    }
}

/// What a campaign found.
pub struct Outcome {
    pub check: CheckReport,
    pub mix: BTreeMap<String, usize>,
    pub elapsed: Duration,
    /// One line per campaign: seed, faults, the checker's figures.
    pub summary: String,
}

/// splitmix64: a tiny deterministic generator, so a seed replays the same faults.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
}

/// Runs a campaign; `Err` for a setup failure or a cluster that did not recover (liveness), `Ok` with the
/// checker's report otherwise (which may show violations: see [`CheckReport::ok`]).
pub fn run(opts: &Options) -> Result<Outcome> {
    let t0 = Instant::now();
    eprintln!(
        "campaign: seed {} faults {} nodes {} policy '{}' failover_timeout {} ms",
        opts.seed, opts.faults, opts.nodes, opts.policy, opts.failover_timeout_ms
    );
    let c = Cluster::start(ClusterSpec {
        policy: Some(opts.policy.clone()),
        failover_timeout_ms: Some(opts.failover_timeout_ms),
        netns: true,
        // As an unattended deployment would run: a rewind the fault interrupted half-way leaves a data
        // directory only a new base backup repairs (otherwise the node waits for an operator, by design).
        extra_conf: vec!["ha.reclone_on_rewind_failure = on".into()],
        ..ClusterSpec::ha(opts.nodes)
    })?;
    c.node(0).query_strings("CREATE TABLE probe(x int)")?;
    let nem = Nemesis::new();
    let load = tagged_load(&c)?;
    let mut rng = Rng(opts.seed);
    let mut mix: BTreeMap<String, usize> = BTreeMap::new();
    for round in 1..=opts.faults {
        let fault = ALL[rng.below(ALL.len() as u64) as usize];
        let hold = Duration::from_millis(rng.between(opts.hold_ms.0, opts.hold_ms.1));
        let leader = leader_accepting_writes(&c, &nem, opts.recovery_timeout)
            .map_err(|e| diagnose(&c, opts, round, &format!("before the fault: {e}")))?;
        let acks_before = load.acked_count();
        let started = Instant::now();
        let what = inject(&c, &nem, &mut rng, fault, leader, hold)
            .map_err(|e| diagnose(&c, opts, round, &format!("injecting {fault:?}: {e}")))?;
        nem.recover(&c)
            .map_err(|e| diagnose(&c, opts, round, &format!("recovering: {e}")))?;
        let after = leader_accepting_writes(&c, &nem, opts.recovery_timeout)
            .map_err(|e| diagnose(&c, opts, round, &format!("after {what}: {e}")))?;
        // Every fifth round, and before the end: wait for the whole cluster to converge.
        if round % 5 == 0 {
            converge(&c, &nem, opts.recovery_timeout)
                .map_err(|e| diagnose(&c, opts, round, &format!("converging: {e}")))?;
        }
        *mix.entry(format!("{fault:?}")).or_default() += 1;
        eprintln!(
            "campaign: round {round}/{}: {what}; leader {} -> {}; {} acks; {:.1?}",
            opts.faults,
            c.node(leader).name(),
            c.node(after).name(),
            load.acked_count() - acks_before,
            started.elapsed()
        );
    }
    let report = load.stop_report();
    let leader = converge(&c, &nem, opts.recovery_timeout)
        .map_err(|e| diagnose(&c, opts, opts.faults, &format!("final convergence: {e}")))?;
    let check = check(&c, leader, &report)?;
    let elapsed = t0.elapsed();
    let summary = format!(
        "campaign seed={} faults={} nodes={} policy='{}' secs={} {}",
        opts.seed,
        opts.faults,
        opts.nodes,
        opts.policy,
        elapsed.as_secs(),
        check.summary()
    );
    Ok(Outcome {
        check,
        mix,
        elapsed,
        summary,
    })
}

/// The leader once it accepts writes and every node runs (a node the agent is rewinding is down for a
/// moment; faults pick among running nodes).
fn leader_accepting_writes(c: &Cluster, nem: &Nemesis, timeout: Duration) -> Result<usize> {
    wait_until(timeout, "every node running", || {
        Ok(c.nodes().iter().all(|n| n.is_running()))
    })?;
    writable_leader(c, nem, timeout)
}

/// Injects `fault` (around the current `leader`) and holds it for `hold`; returns what it did.
fn inject(
    c: &Cluster,
    nem: &Nemesis,
    rng: &mut Rng,
    fault: Fault,
    leader: usize,
    hold: Duration,
) -> Result<String> {
    let n = c.nodes().len();
    let followers: Vec<usize> = (0..n).filter(|&i| i != leader).collect();
    let follower = followers[rng.below(followers.len() as u64) as usize];
    let name = |i: usize| c.node(i).name().to_string();
    let what = match fault {
        Fault::KillLeader => {
            nem.kill(c, leader)?;
            format!("SIGKILL leader {}", name(leader))
        }
        Fault::KillFollower => {
            nem.kill(c, follower)?;
            format!("SIGKILL follower {}", name(follower))
        }
        Fault::FreezeLeader => {
            nem.freeze(c, leader)?;
            format!("SIGSTOP leader {}", name(leader))
        }
        Fault::IsolateLeader => {
            nem.isolate(c, leader)?;
            format!("cut leader {} off from its followers", name(leader))
        }
        Fault::IsolateFollower => {
            nem.isolate(c, follower)?;
            format!("cut follower {} off from all nodes", name(follower))
        }
        Fault::OneWayFollowerToLeader => {
            nem.cut_one_way(c, follower, leader)?;
            format!("{} cannot reach leader {}", name(follower), name(leader))
        }
        Fault::OneWayLeaderToFollower => {
            nem.cut_one_way(c, leader, follower)?;
            format!("leader {} cannot reach {}", name(leader), name(follower))
        }
        Fault::CutCoordinatorMidFailover => {
            let marks: Vec<usize> = c.nodes().iter().map(|x| x.read_log().len()).collect();
            nem.kill(c, leader)?;
            let racing = wait_until_ok(Duration::from_secs(20), "a coordinator racing", || {
                Ok(followers.iter().copied().find(|&i| {
                    let log = c.node(i).read_log();
                    log.get(marks[i]..)
                        .is_some_and(|l| l.contains("racing for term"))
                }))
            });
            match racing {
                Ok(co) => {
                    nem.isolate(c, co)?;
                    format!(
                        "SIGKILL leader {}, then cut coordinator {} off mid-failover",
                        name(leader),
                        name(co)
                    )
                }
                Err(_) => format!(
                    "SIGKILL leader {} (no coordinator seen racing)",
                    name(leader)
                ),
            }
        }
        Fault::KillTwoQuickly => {
            nem.kill(c, leader)?;
            std::thread::sleep(Duration::from_millis(rng.between(200, 800))); // the fault's own spacing
            nem.kill(c, follower)?;
            format!(
                "SIGKILL leader {} then follower {}",
                name(leader),
                name(follower)
            )
        }
        Fault::Restart => {
            let i = rng.below(n as u64) as usize;
            nem.restart(c, i)?;
            format!("restart {}", name(i))
        }
    };
    std::thread::sleep(hold); // the fault lasts this long (drawn from the seed)
    Ok(what)
}

/// A liveness failure: the error, with each node's view and log tail.
fn diagnose(c: &Cluster, opts: &Options, round: usize, what: &str) -> crate::Error {
    let mut s = format!(
        "campaign seed {} round {round}: {what}\n(reproduce: cargo run -p pg_test --bin campaign -- --seed {} --faults {} --nodes {} --policy '{}')",
        opts.seed, opts.seed, opts.faults, opts.nodes, opts.policy
    );
    for n in c.nodes() {
        let status = n
            .query_strings("SELECT node_name, role, member, term, flush_lsn, healthy, last_error FROM ha.status")
            .map(|rows| format!("{rows:?}"))
            .unwrap_or_else(|e| e.to_string());
        s.push_str(&format!(
            "\n--- {}: ha.status {status}\n{}",
            n.name(),
            n.log_tail(25)
        ));
    }
    err(s)
}
