//! The cluster model: nodes with a WAL and a pledge file, coordinators, an unreliable network, commits
//! acknowledged by the leader under its ruleset. Every decision goes through `pg_ha_core`:
//! pledging and following (`PledgeState`), revocation, discovery and candidacy (`Attempt`), the commit
//! gate and ruleset changes (`CommitRules`, `propose`). The invariants are checked with an independent
//! reference definition of the policy, not with the core's code.
//!
//! Modelling choices (the bounds keep the space finite):
//! - The network keeps every pledge reply while its coordinator collects: any reply can be delivered any
//!   number of times, in any order, or never (loss, duplication and reordering). Pledge requests are
//!   idempotent, so "node n handles c's request" is simply enabled while c asks n. Replies and messages
//!   of a coordinator that stopped collecting are dropped (nobody reads them any more).
//! - Only leaders crash: a follower has no volatile state in the model, so its crash and restart is a
//!   pause, which the interleavings already cover. A crashed leader keeps its WAL and pledge file and
//!   restarts as a fenced follower.
//! - WAL streaming is a pull of one entry by a follower from a leader, gated by the follower's pledge
//!   (`on_follow`); a diverged follower first rewinds to the common prefix (I4).
//! - A leader learns its followers' flush positions atomically: a follower's acknowledgement reaches the
//!   leader before the follower pledges to a higher term (the agent drops the replication connection
//!   before answering the pledge); a crashed follower's WAL still counts (it acknowledged before dying).
//! - Coordinator views: `Fresh` starts from the newest ruleset row in any WAL, `Stale` from the initial
//!   ruleset (the seed-002 coordinator that never heard of the change).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use pg_ha_core::change::{propose, Change, CommitRules};
use pg_ha_core::{
    Attempt, AttemptKind, Decision, Lsn, NodeId, NodeReport, PledgeState, Policy, Preferences,
    Prior, Rules, Ruleset, Tally, Term, Zone,
};

use super::checker::Model;

/// A ruleset row, compactly: cohort as a bit mask over node indexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MRules {
    pub term: u8,
    pub version: u8,
    pub leader: u8,
    pub cohort: u8,
    pub policy: Policy,
    /// Prior membership (cohort mask, policy), see `Ruleset::prior`.
    pub prior: Option<(u8, Policy)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entry {
    Rules(MRules),
    /// A client commit: id, term of the leader that wrote it.
    Commit(u8, u8),
}

impl Entry {
    fn term(&self) -> u8 {
        match self {
            Entry::Rules(r) => r.term,
            Entry::Commit(_, t) => *t,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reply {
    Report { ruleset: MRules, flush: u8 },
    Refused { term: u8 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Msg {
    pub coord: u8,
    pub term: u8,
    pub node: u8,
    pub reply: Reply,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lead {
    pub term: u8,
    pub current: MRules,
    /// A change row not yet acknowledged: (new ruleset, LSN of the row).
    pub pending: Option<(MRules, u8)>,
    pub established: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeS {
    pub log: Vec<Entry>,
    pub pledge_term: u8,
    pub pledge_coord: Option<u8>,
    pub up: bool,
    pub lead: Option<Lead>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    Idle,
    Collecting { term: u8, known: MRules },
    Won { term: u8, cand: u8, rules: MRules },
    Done,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CoordS {
    pub phase: Phase,
    /// The last reply delivered from each node (what `Attempt` keeps).
    pub replies: BTreeMap<u8, Reply>,
    /// Nodes this coordinator asks: `nodes_to_ask()` plus those that answered.
    pub ask: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct State {
    pub nodes: Vec<NodeS>,
    pub coords: Vec<CoordS>,
    pub net: BTreeSet<Msg>,
    /// Ghost: every acknowledged entry (commits, and change rows that took effect) with its LSN.
    pub acked: BTreeSet<(u8, Entry)>,
    /// Ghost: (term, coordinator) of every won tally.
    pub wins: BTreeSet<(u8, u8)>,
    /// Ghost: a change took effect without being durable under its previous ruleset (I5).
    pub i5_broken: bool,
    pub writes: u8,
    pub crashes: u8,
    pub changes: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Fresh,
    Stale,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Start { coord: u8, term: u8 },
    Handle { node: u8, coord: u8 },
    Deliver(Msg),
    Promote { coord: u8, node: u8 },
    Pull { node: u8, from: u8 },
    Write { leader: u8, commit: u8 },
    Propose { leader: u8, change: String },
    Crash(u8),
    Restart(u8),
}

#[derive(Clone, Debug)]
pub struct Config {
    pub nodes: u8,
    pub zones: Vec<u8>,
    pub cohort: u8,
    pub policy: Policy,
    pub coords: Vec<View>,
    pub max_writes: u8,
    pub max_crashes: u8,
    /// At most one ruleset change, proposed by any established leader.
    pub change: Option<MChange>,
    /// Rules used by coordinators and leaders (SAFE, or a broken variant).
    pub rules: Rules,
    /// Make `durable` require the leader in the reference model of coordinators (unused by default).
    pub name: &'static str,
}

#[derive(Clone, Copy, Debug)]
pub enum MChange {
    Add(u8),
    Remove(u8),
}

pub struct Cluster {
    pub cfg: Config,
    names: Vec<NodeId>,
    coord_names: Vec<NodeId>,
}

fn bits(mask: u8) -> impl Iterator<Item = u8> {
    (0..8).filter(move |i| mask & (1 << i) != 0)
}

impl Cluster {
    pub fn new(cfg: Config) -> Self {
        let names = (0..cfg.nodes).map(|i| NodeId(format!("n{i}"))).collect();
        let coord_names = (0..cfg.coords.len())
            .map(|i| NodeId(format!("c{i}")))
            .collect();
        Cluster {
            cfg,
            names,
            coord_names,
        }
    }

    fn r0(&self) -> MRules {
        MRules {
            term: 1,
            version: 1,
            leader: 0,
            cohort: self.cfg.cohort,
            policy: self.cfg.policy,
            prior: None,
        }
    }

    fn zone(&self, n: u8) -> Zone {
        Zone(format!("z{}", self.cfg.zones[n as usize]))
    }

    fn cohort_map(&self, mask: u8) -> BTreeMap<NodeId, Zone> {
        bits(mask)
            .map(|i| (self.names[i as usize].clone(), self.zone(i)))
            .collect()
    }

    pub fn to_core(&self, r: &MRules) -> Ruleset {
        Ruleset {
            prior: r.prior.map(|(c, p)| Prior {
                cohort: self.cohort_map(c),
                policy: p,
            }),
            term: Term(r.term as u64),
            version: r.version as u64,
            leader: self.names[r.leader as usize].clone(),
            cohort: bits(r.cohort)
                .map(|i| (self.names[i as usize].clone(), self.zone(i)))
                .collect(),
            policy: r.policy,
        }
    }

    fn mrules_of(&self, r: &Ruleset) -> MRules {
        let idx = |n: &NodeId| self.names.iter().position(|m| m == n).unwrap() as u8;
        MRules {
            term: r.term.0 as u8,
            version: r.version as u8,
            leader: idx(&r.leader),
            cohort: r.cohort.keys().fold(0, |m, n| m | (1 << idx(n))),
            policy: r.policy,
            prior: r
                .prior
                .as_ref()
                .map(|p| (p.cohort.keys().fold(0, |m, n| m | (1 << idx(n))), p.policy)),
        }
    }

    fn node_idx(&self, n: &NodeId) -> u8 {
        self.names.iter().position(|m| m == n).unwrap() as u8
    }

    /// The reference definition of the policy (independent of the core): cohort members of `set` hold K+1
    /// members (`any K`) or span K zones (`zones K`).
    pub fn ref_durable(&self, r: &MRules, set: u8) -> bool {
        let inside = set & r.cohort;
        match r.policy {
            Policy::AnyK(k) => inside.count_ones() > k,
            Policy::Zones(k) => {
                let zones: BTreeSet<u8> =
                    bits(inside).map(|i| self.cfg.zones[i as usize]).collect();
                zones.len() >= k as usize
            }
        }
    }

    fn pledge(&self, n: &NodeS) -> PledgeState {
        PledgeState {
            term: Term(n.pledge_term as u64),
            coordinator: n.pledge_coord.map(|c| self.coord_names[c as usize].clone()),
            // A model coordinator makes one attempt per term: its id is the term.
            attempt: n.pledge_coord.map_or(0, |_| n.pledge_term as u64),
            floor: None,
            must_relearn: false,
        }
    }

    fn set_pledge(&self, n: &mut NodeS, p: &PledgeState) {
        n.pledge_term = p.term.0 as u8;
        n.pledge_coord = p
            .coordinator
            .as_ref()
            .map(|c| self.coord_names.iter().position(|m| m == c).unwrap() as u8);
    }

    fn newest_rules(log: &[Entry]) -> MRules {
        log.iter()
            .rev()
            .find_map(|e| match e {
                Entry::Rules(r) => Some(*r),
                _ => None,
            })
            .expect("every log starts with a ruleset row")
    }

    fn attempt(&self, c: u8, term: u8, known: &MRules, replies: &BTreeMap<u8, Reply>) -> Attempt {
        let mut a = Attempt::new(
            self.coord_names[c as usize].clone(),
            Term(term as u64),
            self.to_core(known),
            AttemptKind::Failover {
                old_leader: self.names[known.leader as usize].clone(),
            },
        )
        .with_rules(self.cfg.rules);
        for (&n, r) in replies {
            match r {
                Reply::Report { ruleset, flush } => {
                    a.on_reply(NodeReport {
                        node: self.names[n as usize].clone(),
                        zone: self.zone(n),
                        pledged_term: Term(term as u64),
                        ruleset: Some(self.to_core(ruleset)),
                        flush_lsn: Lsn(*flush as u64),
                        timeline: 1,
                        reachable: true,
                        priority: 0,
                    })
                    .expect("reply of this term");
                }
                Reply::Refused { term } => {
                    a.on_refusal(self.names[n as usize].clone(), Term(*term as u64))
                }
            }
        }
        a
    }

    fn commit_rules(&self, l: &Lead) -> CommitRules {
        let mut cr = CommitRules::new(self.to_core(&l.current)).with_rules(self.cfg.rules);
        if let Some((to, lsn)) = &l.pending {
            cr.begin(self.to_core(to), Lsn(*lsn as u64)).unwrap();
        }
        cr
    }

    fn common_prefix(a: &[Entry], b: &[Entry]) -> usize {
        a.iter().zip(b).take_while(|(x, y)| x == y).count()
    }

    /// Flush positions a leader counts: nodes (up or down) that have not pledged above its term, as far as
    /// their WAL matches the leader's.
    fn flushed(&self, s: &State, l: u8, term: u8) -> BTreeMap<NodeId, Lsn> {
        let leader_log = &s.nodes[l as usize].log;
        s.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.pledge_term <= term)
            .map(|(i, n)| {
                (
                    self.names[i].clone(),
                    Lsn(Self::common_prefix(&n.log, leader_log) as u64),
                )
            })
            .collect()
    }

    /// Leaders acknowledge as soon as they can (establishment, a pending change taking effect, commits).
    /// Acknowledging eagerly loses no behaviour: while a follower still counts for a leader its flush
    /// only grows, so anything a leader could acknowledge later it could already acknowledge now.
    fn settle(&self, s: &mut State) {
        for l in 0..self.cfg.nodes {
            while self.ack_once(s, l) {}
        }
    }

    fn ack_once(&self, s: &mut State, l: u8) -> bool {
        let node = &s.nodes[l as usize];
        let Some(lead) = node.lead.clone() else {
            return false;
        };
        if !node.up || node.pledge_term > lead.term {
            return false;
        }
        // Nothing left to acknowledge: skip the (comparatively costly) commit gate.
        let waiting = !lead.established
            || lead.pending.is_some()
            || node.log.iter().enumerate().any(|(i, e)| {
                matches!(e, Entry::Commit(_, t) if *t == lead.term)
                    && !s.acked.contains(&((i + 1) as u8, *e))
            });
        if !waiting {
            return false;
        }
        let flushed = self.flushed(s, l, lead.term);
        let mut cr = self.commit_rules(&lead);
        let mut lead2 = lead.clone();
        let mut newly = Vec::new();
        if !lead.established {
            let row = node
                .log
                .iter()
                .position(|e| *e == Entry::Rules(lead.current))
                .unwrap() as u64
                + 1;
            if cr.current().establishment_lsn(&flushed) >= Lsn(row) {
                lead2.established = true;
            }
        } else {
            if let Some((to, lsn)) = lead.pending {
                let before = cr.current().version;
                if let Some(now) = cr.on_flush(&flushed) {
                    assert_eq!(now.version, before + 1);
                    // I5 ghost, with the reference definition: the row is durable under the previous ruleset.
                    let holders = flushed
                        .iter()
                        .filter(|(_, f)| f.0 >= lsn as u64)
                        .fold(0u8, |m, (n, _)| m | (1 << self.node_idx(n)));
                    if !self.ref_durable(&lead.current, holders) {
                        s.i5_broken = true;
                    }
                    lead2.current = to;
                    lead2.pending = None;
                    newly.push((lsn, Entry::Rules(to)));
                }
            }
            let durable = cr.durable_lsn(&flushed).0 as usize;
            for (i, e) in node.log.iter().enumerate().take(durable) {
                if let Entry::Commit(_, ct) = e {
                    if *ct == lead.term {
                        newly.push(((i + 1) as u8, *e));
                    }
                }
            }
        }
        let mut changed = lead2 != lead;
        for a in newly {
            changed |= s.acked.insert(a);
        }
        s.nodes[l as usize].lead = Some(lead2);
        changed
    }

    /// Symmetry reduction: two coordinators with the same view are interchangeable, so a state and the
    /// state with their names swapped are one state; keep the smaller of the two.
    fn canonicalize(&self, s: &mut State) {
        if self.cfg.coords.len() != 2 || self.cfg.coords[0] != self.cfg.coords[1] {
            return;
        }
        let mut w = s.clone();
        let swap = |c: u8| 1 - c;
        w.coords.swap(0, 1);
        for n in &mut w.nodes {
            n.pledge_coord = n.pledge_coord.map(swap);
        }
        w.net = w
            .net
            .iter()
            .map(|m| Msg {
                coord: swap(m.coord),
                ..*m
            })
            .collect();
        w.wins = w.wins.iter().map(|&(t, c)| (t, swap(c))).collect();
        if w < *s {
            *s = w;
        }
    }

    /// A coordinator past collecting never reads replies again: drop its replies and its undelivered
    /// messages, so states that differ only in dead bookkeeping are one state.
    fn collect_garbage(s: &mut State) {
        let mut live = Vec::new();
        for (i, c) in s.coords.iter_mut().enumerate() {
            match c.phase {
                Phase::Collecting { term, .. } => live.push((i as u8, term)),
                _ => {
                    c.replies.clear();
                    c.ask = 0;
                }
            }
        }
        s.net.retain(|m| live.contains(&(m.coord, m.term)));
    }

    /// Could leader `l` ever acknowledge with the nodes in `set` (reference definition; joint while a
    /// change is pending)?
    fn ref_can_ack(&self, lead: &Lead, set: u8) -> bool {
        let prior_ok = lead.established
            || lead.current.prior.is_none_or(|(c, p)| {
                self.ref_durable(
                    &MRules {
                        cohort: c,
                        policy: p,
                        prior: None,
                        ..lead.current
                    },
                    set,
                )
            });
        prior_ok
            && self.ref_durable(&lead.current, set)
            && lead.pending.is_none_or(|(to, _)| {
                !self.cfg.rules.joint_while_pending || self.ref_durable(&to, set)
            })
    }
}

impl Model for Cluster {
    type State = State;
    type Action = Action;

    fn init(&self) -> State {
        let r0 = self.r0();
        let nodes = (0..self.cfg.nodes)
            .map(|i| NodeS {
                log: vec![Entry::Rules(r0)],
                pledge_term: 1,
                pledge_coord: None,
                up: true,
                lead: (i == 0).then_some(Lead {
                    term: 1,
                    current: r0,
                    pending: None,
                    established: true,
                }),
            })
            .collect();
        State {
            nodes,
            coords: self
                .cfg
                .coords
                .iter()
                .map(|_| CoordS {
                    phase: Phase::Idle,
                    replies: BTreeMap::new(),
                    ask: 0,
                })
                .collect(),
            net: BTreeSet::new(),
            acked: BTreeSet::new(),
            wins: BTreeSet::new(),
            i5_broken: false,
            writes: 0,
            crashes: 0,
            changes: 0,
        }
    }

    fn next(&self, s: &State, out: &mut Vec<(Action, State)>) {
        let from = out.len();
        self.next_raw(s, out);
        for (_, t) in &mut out[from..] {
            self.settle(t);
            Self::collect_garbage(t);
            self.canonicalize(t);
        }
    }

    fn check(&self, s: &State) -> Result<(), String> {
        self.check_invariants(s)
    }

    fn show(&self, s: &State) -> String {
        self.render(s)
    }
}

impl Cluster {
    fn next_raw(&self, s: &State, out: &mut Vec<(Action, State)>) {
        let n = self.cfg.nodes;
        // Coordinators.
        for (ci, c) in s.coords.iter().enumerate() {
            let ci = ci as u8;
            match &c.phase {
                Phase::Idle => {
                    let known = match self.cfg.coords[ci as usize] {
                        View::Stale => self.r0(),
                        View::Fresh => s
                            .nodes
                            .iter()
                            .map(|n| Self::newest_rules(&n.log))
                            .max_by_key(|r| (r.term, r.version))
                            .unwrap(),
                    };
                    let seen = s
                        .nodes
                        .iter()
                        .map(|n| Term(n.pledge_term as u64))
                        .chain([Term(known.term as u64)]);
                    let term = Attempt::next_term(seen).0 as u8;
                    let a = self.attempt(ci, term, &known, &BTreeMap::new());
                    let ask = a
                        .nodes_to_ask()
                        .iter()
                        .fold(0u8, |m, x| m | (1 << self.node_idx(x)));
                    let mut t = s.clone();
                    t.coords[ci as usize] = CoordS {
                        phase: Phase::Collecting { term, known },
                        replies: BTreeMap::new(),
                        ask,
                    };
                    out.push((Action::Start { coord: ci, term }, t));
                }
                Phase::Collecting { term, known } => {
                    let (term, known) = (*term, *known);
                    // Nodes handle the (idempotent, re-sent) pledge request.
                    for ni in bits(c.ask) {
                        let node = &s.nodes[ni as usize];
                        if !node.up {
                            continue;
                        }
                        let mut t = s.clone();
                        let reply = match self.pledge(node).on_pledge_request(
                            Term(term as u64),
                            &self.coord_names[ci as usize],
                            term as u64,
                        ) {
                            Ok(p) => {
                                self.set_pledge(&mut t.nodes[ni as usize], &p);
                                Reply::Report {
                                    ruleset: Self::newest_rules(&node.log),
                                    flush: node.log.len() as u8,
                                }
                            }
                            Err(refusal) => Reply::Refused {
                                term: refusal.current_term().0 as u8,
                            },
                        };
                        t.net.insert(Msg {
                            coord: ci,
                            term,
                            node: ni,
                            reply,
                        });
                        if t != *s {
                            out.push((
                                Action::Handle {
                                    node: ni,
                                    coord: ci,
                                },
                                t,
                            ));
                        }
                    }
                    // Replies arrive (any of them, any number of times).
                    for m in s.net.iter().filter(|m| m.coord == ci && m.term == term) {
                        if c.replies.get(&m.node) == Some(&m.reply) {
                            continue;
                        }
                        let mut t = s.clone();
                        let tc = &mut t.coords[ci as usize];
                        tc.replies.insert(m.node, m.reply);
                        let a = self.attempt(ci, term, &known, &tc.replies);
                        tc.ask |= a
                            .nodes_to_ask()
                            .iter()
                            .fold(0u8, |mm, x| mm | (1 << self.node_idx(x)));
                        match a.tally() {
                            Tally::Pending => {}
                            Tally::Lost => tc.phase = Phase::Done,
                            Tally::Won => {
                                t.wins.insert((term, ci));
                                match a.decide(&Preferences::default()) {
                                    Decision::Promote { node, ruleset, .. } => {
                                        tc.phase = Phase::Won {
                                            term,
                                            cand: self.node_idx(&node),
                                            rules: self.mrules_of(&ruleset),
                                        }
                                    }
                                    _ => tc.phase = Phase::Done,
                                }
                            }
                        }
                        out.push((Action::Deliver(*m), t));
                    }
                }
                Phase::Won { term, cand, rules } => {
                    let node = &s.nodes[*cand as usize];
                    if node.up && node.pledge_term == *term && node.pledge_coord == Some(ci) {
                        let mut t = s.clone();
                        let tn = &mut t.nodes[*cand as usize];
                        tn.log.push(Entry::Rules(*rules));
                        tn.lead = Some(Lead {
                            term: *term,
                            current: *rules,
                            pending: None,
                            established: false,
                        });
                        t.coords[ci as usize].phase = Phase::Done;
                        out.push((
                            Action::Promote {
                                coord: ci,
                                node: *cand,
                            },
                            t,
                        ));
                    }
                }
                Phase::Done => {}
            }
        }
        // Nodes.
        for li in 0..n {
            let ln = &s.nodes[li as usize];
            let Some(lead) = &ln.lead else { continue };
            if !ln.up {
                continue;
            }
            // Streaming from this leader.
            for fi in 0..n {
                if fi == li {
                    continue;
                }
                let f = &s.nodes[fi as usize];
                if !f.up {
                    continue;
                }
                if let Some(fl) = &f.lead {
                    if fl.term >= lead.term {
                        continue;
                    }
                }
                let Ok(learn) = self.pledge(f).on_follow(Term(lead.term as u64)) else {
                    continue;
                };
                let p = Self::common_prefix(&f.log, &ln.log);
                let mut t = s.clone();
                let tf = &mut t.nodes[fi as usize];
                if let Some(ps) = learn {
                    self.set_pledge(tf, &ps);
                }
                tf.lead = None;
                // Rewind a diverged tail (I4), then stream everything the leader has.
                tf.log.truncate(p);
                tf.log.extend_from_slice(&ln.log[p..]);
                if t == *s {
                    continue;
                }
                out.push((Action::Pull { node: fi, from: li }, t));
            }
            if ln.pledge_term > lead.term {
                continue; // deposed: pledged to a higher term
            }
            if lead.established && s.writes < self.cfg.max_writes {
                let mut t = s.clone();
                let id = s.writes + 1;
                t.writes = id;
                t.nodes[li as usize].log.push(Entry::Commit(id, lead.term));
                out.push((
                    Action::Write {
                        leader: li,
                        commit: id,
                    },
                    t,
                ));
            }
            if let (true, None, Some(ch), 0) =
                (lead.established, &lead.pending, self.cfg.change, s.changes)
            {
                let known: BTreeSet<NodeId> = self.names.iter().cloned().collect();
                let (change, label) = match ch {
                    MChange::Add(x) => (
                        Change::AddMember {
                            node: self.names[x as usize].clone(),
                            zone: self.zone(x),
                        },
                        format!("add n{x}"),
                    ),
                    MChange::Remove(x) => (
                        Change::RemoveMember(self.names[x as usize].clone()),
                        format!("remove n{x}"),
                    ),
                };
                if let Ok(to) = propose(&self.to_core(&lead.current), None, &known, &change) {
                    let to = self.mrules_of(&to);
                    let mut t = s.clone();
                    t.changes += 1;
                    let tn = &mut t.nodes[li as usize];
                    tn.log.push(Entry::Rules(to));
                    let lsn = tn.log.len() as u8;
                    tn.lead.as_mut().unwrap().pending = Some((to, lsn));
                    out.push((
                        Action::Propose {
                            leader: li,
                            change: label,
                        },
                        t,
                    ));
                }
            }
        }
        // Crashes and restarts.
        for i in 0..n {
            let node = &s.nodes[i as usize];
            // Only a leader has volatile state to lose: a follower's crash and restart is
            // indistinguishable from a pause, which the interleavings already cover.
            if node.up && node.lead.is_some() && s.crashes < self.cfg.max_crashes {
                let mut t = s.clone();
                t.crashes += 1;
                t.nodes[i as usize].up = false;
                t.nodes[i as usize].lead = None;
                out.push((Action::Crash(i), t));
            }
            if !node.up {
                let mut t = s.clone();
                t.nodes[i as usize].up = true;
                out.push((Action::Restart(i), t));
            }
        }
    }

    fn check_invariants(&self, s: &State) -> Result<(), String> {
        // I1: at most one coordinator wins a term.
        let mut terms = BTreeSet::new();
        for (t, c) in &s.wins {
            if !terms.insert(*t) {
                return Err(format!(
                    "I1 violated: two coordinators won term {t} (one is c{c})"
                ));
            }
        }
        // I2: once term w is won, a leader of a lower term cannot complete any commit: the nodes that may
        // still acknowledge to it (pledged no higher than its term, up or down) cannot satisfy its rules.
        if let Some(&(w, c)) = s.wins.iter().next_back() {
            for (i, node) in s.nodes.iter().enumerate() {
                let Some(lead) = &node.lead else { continue };
                if lead.term >= w || node.pledge_term > lead.term {
                    continue;
                }
                let able = s
                    .nodes
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| n.pledge_term <= lead.term)
                    .fold(0u8, |m, (j, _)| m | (1 << j));
                if self.ref_can_ack(lead, able) {
                    return Err(format!(
                        "I2 violated: c{c} won term {w}, yet n{i}, leader of term {}, can still complete commits with {able:0b}",
                        lead.term
                    ));
                }
            }
        }
        // I3: every acknowledged entry is in the history of every later leader.
        for (i, node) in s.nodes.iter().enumerate() {
            let Some(lead) = &node.lead else { continue };
            for (lsn, e) in &s.acked {
                if e.term() < lead.term && node.log.get(*lsn as usize - 1) != Some(e) {
                    return Err(format!(
                        "I3 violated: acknowledged {e:?} at LSN {lsn} is missing from n{i}, leader of term {}",
                        lead.term
                    ));
                }
            }
            // I5: one change in flight, a successor of the effective ruleset.
            if let Some((to, _)) = &lead.pending {
                if to.version != lead.current.version + 1 || to.term != lead.current.term {
                    return Err(format!(
                        "I5 violated: pending {to:?} does not follow {:?}",
                        lead.current
                    ));
                }
            }
        }
        if s.i5_broken {
            return Err("I5 violated: a ruleset change took effect before it was durable under the previous ruleset".into());
        }
        Ok(())
    }

    fn render(&self, s: &State) -> String {
        let mut o = String::new();
        for (i, n) in s.nodes.iter().enumerate() {
            let log: Vec<String> = n
                .log
                .iter()
                .map(|e| match e {
                    Entry::Rules(r) => format!(
                        "R(t{} v{} L=n{} C={:0w$b} {})",
                        r.term,
                        r.version,
                        r.leader,
                        r.cohort,
                        r.policy,
                        w = self.cfg.nodes as usize
                    ),
                    Entry::Commit(id, t) => format!("W{id}(t{t})"),
                })
                .collect();
            let role = match &n.lead {
                Some(l) => format!(
                    " LEADER t{}{}{}",
                    l.term,
                    if l.established {
                        " established"
                    } else {
                        " promoted"
                    },
                    if l.pending.is_some() {
                        " change-pending"
                    } else {
                        ""
                    }
                ),
                None => String::new(),
            };
            let _ = writeln!(
                o,
                "  n{i}{} pledge t{}{}{role}: [{}]",
                if n.up { "" } else { " DOWN" },
                n.pledge_term,
                n.pledge_coord
                    .map(|c| format!("->c{c}"))
                    .unwrap_or_default(),
                log.join(" ")
            );
        }
        for (i, c) in s.coords.iter().enumerate() {
            let _ = writeln!(o, "  c{i}: {:?} replies {:?}", c.phase, c.replies);
        }
        let acked: Vec<String> = s.acked.iter().map(|(l, e)| format!("{e:?}@{l}")).collect();
        let _ = write!(o, "  acked: {}", acked.join(", "));
        o
    }
}
