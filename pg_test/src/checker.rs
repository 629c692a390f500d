//! The checker of a fault campaign: after the faults, bring the cluster to one history, then count what the
//! write load's acknowledgements and every node's final state say about the invariants.
//!
//! - I3: an acknowledged write missing from the converged leader is lost.
//! - I4: a write present on a follower but not on the leader, once everything has replayed, is a divergent
//!   history nobody rewound.
//! - I1: a term with two leaders in `ha.history`, or writes acknowledged by two nodes under one term.
//! - I2 in time: a write acknowledged under term T after (in real time: its INSERT was sent after the
//!   acknowledgement of) a write under a term above T means an old leader still accepted writes when a newer
//!   one already had: two nodes accepting writes in overlapping terms.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use crate::error::{err, Result};
use crate::ha::terms_with_two_leaders;
use crate::load::LoadReport;
use crate::nemesis::Nemesis;
use crate::wait::{wait_until, wait_until_ok};
use crate::Cluster;

/// What the checker found.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    /// The converged leader.
    pub leader: String,
    pub acked: usize,
    pub uncertain: usize,
    pub refused: usize,
    /// I3: acknowledged ids missing on the leader.
    pub lost: Vec<i64>,
    /// I4: per follower, ids it has that the leader lacks.
    pub divergent: BTreeMap<String, Vec<i64>>,
    /// I1: terms of `ha.history` naming two leaders.
    pub history_two_leader_terms: i64,
    /// I1: terms under which two nodes acknowledged writes (term → nodes).
    pub ack_two_nodes: BTreeMap<i64, BTreeSet<String>>,
    /// I1: acknowledgements by a node `ha.history` does not name leader of that term.
    pub ack_not_history_leader: Vec<String>,
    /// I2 in time: examples of an older term acknowledging after a newer one had.
    pub overlaps: Vec<String>,
    pub overlap_count: usize,
    /// Distinct terms that acknowledged writes.
    pub ack_terms: usize,
    /// Rows in the leader's `ha.history`.
    pub history_rows: usize,
}

impl CheckReport {
    /// No invariant violated.
    pub fn ok(&self) -> bool {
        self.lost.is_empty()
            && self.divergent.values().all(Vec::is_empty)
            && self.history_two_leader_terms == 0
            && self.ack_two_nodes.is_empty()
            && self.ack_not_history_leader.is_empty()
            && self.overlap_count == 0
    }

    /// One line: the figures a campaign prints.
    pub fn summary(&self) -> String {
        let divergent: usize = self.divergent.values().map(Vec::len).sum();
        format!(
            "{} acked={} uncertain={} refused={} lost={} divergent={} two_leader_terms={} ack_terms_two_nodes={} ack_not_leader={} overlapping_acks={} ack_terms={} history_rows={} leader={}",
            if self.ok() { "OK" } else { "VIOLATION" },
            self.acked,
            self.uncertain,
            self.refused,
            self.lost.len(),
            divergent,
            self.history_two_leader_terms,
            self.ack_two_nodes.len(),
            self.ack_not_history_leader.len(),
            self.overlap_count,
            self.ack_terms,
            self.history_rows,
            self.leader,
        )
    }

    /// Every violation, spelled out.
    pub fn details(&self) -> String {
        let mut s = String::new();
        if !self.lost.is_empty() {
            s.push_str(&format!(
                "I3 lost acknowledged ids: {:?}\n",
                head(&self.lost)
            ));
        }
        for (n, ids) in self.divergent.iter().filter(|(_, v)| !v.is_empty()) {
            s.push_str(&format!(
                "I4 {n} has ids the leader lacks: {:?}\n",
                head(ids)
            ));
        }
        if self.history_two_leader_terms != 0 {
            s.push_str(&format!(
                "I1 ha.history terms with two leaders: {}\n",
                self.history_two_leader_terms
            ));
        }
        for (t, nodes) in &self.ack_two_nodes {
            s.push_str(&format!("I1 term {t} acknowledged by {nodes:?}\n"));
        }
        for x in &self.ack_not_history_leader {
            s.push_str(&format!("I1 {x}\n"));
        }
        for x in &self.overlaps {
            s.push_str(&format!("I2 overlap: {x}\n"));
        }
        s
    }
}

fn head(v: &[i64]) -> &[i64] {
    &v[..v.len().min(20)]
}

/// The checker's write load: from the client namespace, recording the node and term of every
/// acknowledgement (what [`check`] needs).
pub fn tagged_load(c: &Cluster) -> Result<crate::WriteLoad> {
    crate::write_load_with(
        &c.multi_host_conninfo(),
        crate::LoadOptions {
            netns: c.client_netns(),
            record_term: true,
            statement_timeout: Duration::from_secs(3),
            ..Default::default()
        },
    )
}

/// Wait until the leader accepts a write (out of band, into `probe`); returns its index.
pub fn writable_leader(c: &Cluster, nem: &Nemesis, timeout: Duration) -> Result<usize> {
    wait_until_ok(timeout, "one leader accepting writes", || {
        Ok(nem.leader(c).filter(|&i| {
            c.node(i)
                .query_strings("INSERT INTO probe VALUES (1)")
                .is_ok()
        }))
    })
}

/// Undo every fault and wait until the cluster has one history: one leader that accepts writes (into
/// `probe`, which must exist), every other node its follower, all replayed up to the leader's WAL.
/// Returns the leader's index.
pub fn converge(c: &Cluster, nem: &Nemesis, timeout: Duration) -> Result<usize> {
    nem.recover(c)?;
    let leader = writable_leader(c, nem, timeout)?;
    for (i, n) in c.nodes().iter().enumerate() {
        if i != leader {
            crate::ha::wait_follower(n, timeout)?;
        }
    }
    let l = c.node(leader);
    wait_until(timeout, "every follower to replay the leader's WAL", || {
        c.wait_replayed(l, Duration::from_secs(5)).map(|()| true)
    })?;
    Ok(leader)
}

/// Checks the converged cluster (`leader` from [`converge`]) against what the load saw.
pub fn check(c: &Cluster, leader: usize, load: &LoadReport) -> Result<CheckReport> {
    let l = c.node(leader);
    let ids_on = |i: usize| -> Result<HashSet<i64>> {
        let mut client = c.node(i).connect()?;
        Ok(client
            .query("SELECT id FROM load", &[])?
            .into_iter()
            .map(|r| r.get::<_, i64>(0))
            .collect())
    };
    let on_leader = ids_on(leader)?;
    let mut r = CheckReport {
        leader: l.name().to_string(),
        acked: load.acks.len(),
        uncertain: load.uncertain.len(),
        refused: load.refused.len(),
        ..Default::default()
    };
    r.lost = load
        .acks
        .iter()
        .map(|a| a.id)
        .filter(|id| !on_leader.contains(id))
        .collect();
    r.lost.sort_unstable();
    for i in (0..c.nodes().len()).filter(|&i| i != leader) {
        let mut extra: Vec<i64> = ids_on(i)?.difference(&on_leader).copied().collect();
        extra.sort_unstable();
        r.divergent.insert(c.node(i).name().to_string(), extra);
    }
    r.history_two_leader_terms = terms_with_two_leaders(l)?;

    // Terms of the acknowledgements against ha.history.
    let history: BTreeMap<i64, BTreeSet<String>> = l
        .query_strings("SELECT term, leader FROM ha.history")?
        .into_iter()
        .filter_map(|row| {
            let t = row.first()?.as_ref()?.parse().ok()?;
            Some((t, row.get(1)?.clone()?))
        })
        .fold(BTreeMap::new(), |mut m, (t, n)| {
            m.entry(t).or_insert_with(BTreeSet::new).insert(n);
            m
        });
    r.history_rows = l
        .query_value("SELECT count(*) FROM ha.history")?
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut by_term: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for a in &load.acks {
        let (Some(node), Some(term)) = (&a.node, a.term) else {
            return Err(err(
                "the load did not record terms (LoadOptions::record_term)",
            ));
        };
        by_term.entry(term).or_default().insert(node.clone());
    }
    r.ack_terms = by_term.len();
    for (t, nodes) in &by_term {
        if nodes.len() > 1 {
            r.ack_two_nodes.insert(*t, nodes.clone());
        }
        for n in nodes {
            if !history.get(t).is_some_and(|h| h.contains(n)) {
                r.ack_not_history_leader.push(format!(
                    "{n} acknowledged writes under term {t}, whose leader in ha.history is {:?}",
                    history.get(t)
                ));
            }
        }
    }

    // Real-time order: sweep the writes by send time, knowing the highest term acknowledged before each.
    let mut by_ack: Vec<_> = load.acks.iter().collect();
    by_ack.sort_by_key(|a| a.at);
    let mut by_sent: Vec<_> = load.acks.iter().collect();
    by_sent.sort_by_key(|a| a.sent);
    let (mut k, mut max_before): (usize, Option<&crate::Ack>) = (0, None);
    for b in by_sent {
        while k < by_ack.len() && by_ack[k].at < b.sent {
            if max_before.is_none_or(|m| by_ack[k].term > m.term) {
                max_before = Some(by_ack[k]);
            }
            k += 1;
        }
        if let Some(m) = max_before {
            if m.term > b.term {
                r.overlap_count += 1;
                if r.overlaps.len() < 5 {
                    r.overlaps.push(format!(
                        "id {} acknowledged by {:?} under term {:?} after id {} had been acknowledged by {:?} under term {:?}",
                        b.id, b.node, b.term, m.id, m.node, m.term
                    ));
                }
            }
        }
    }
    Ok(r)
}
