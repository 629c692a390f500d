//! The nemesis: faults a test or the campaign injects into a cluster whose nodes live on hosts of their own
//! ([`crate::ClusterSpec::netns`]): cut links (a node from all others, the leader from its followers while
//! clients still reach it, one-way cuts), heal, freeze and thaw, kill, restart; and the recovery that brings
//! every node back (heal, thaw, start what is down). Process faults also work on loopback clusters.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use crate::error::{err, Result};
use crate::netns::Cut;
use crate::wait::wait_until;
use crate::Cluster;

/// What the nemesis did to a cluster, so recovery can undo it.
#[derive(Default)]
pub struct Nemesis {
    frozen: Mutex<BTreeSet<usize>>,
}

impl Nemesis {
    pub fn new() -> Nemesis {
        Nemesis::default()
    }

    /// Cuts node `i` off from every other node (clients still reach it).
    pub fn isolate(&self, c: &Cluster, i: usize) -> Result<()> {
        let cuts: Vec<Cut> = (0..c.nodes().len())
            .filter(|&j| j != i)
            .map(|j| Cut::Both(i, j))
            .collect();
        net(c)?.cut(&cuts)
    }

    /// Splits the nodes into `groups`: nothing crosses from one group to another (clients reach all).
    pub fn partition(&self, c: &Cluster, groups: &[&[usize]]) -> Result<()> {
        let mut cuts = Vec::new();
        for (gi, a) in groups.iter().enumerate() {
            for b in &groups[gi + 1..] {
                for &x in a.iter() {
                    for &y in b.iter() {
                        cuts.push(Cut::Both(x, y));
                    }
                }
            }
        }
        net(c)?.cut(&cuts)
    }

    /// Node `from` can no longer reach node `to`; `to` still reaches `from`.
    pub fn cut_one_way(&self, c: &Cluster, from: usize, to: usize) -> Result<()> {
        net(c)?.cut(&[Cut::OneWay { from, to }])
    }

    /// Removes every cut.
    pub fn heal(&self, c: &Cluster) -> Result<()> {
        match c.net() {
            Some(n) => n.heal(),
            None => Ok(()),
        }
    }

    /// SIGSTOP every process of node `i` (its agent included). A node that is down at this moment (its
    /// agent is rewinding it) is left as it is.
    pub fn freeze(&self, c: &Cluster, i: usize) -> Result<()> {
        if !c.node(i).is_running() {
            return Ok(());
        }
        c.node(i).sigstop()?;
        self.lock_frozen().insert(i);
        Ok(())
    }

    /// SIGCONT node `i`.
    pub fn thaw(&self, c: &Cluster, i: usize) -> Result<()> {
        self.lock_frozen().remove(&i);
        c.node(i).sigcont()
    }

    /// Whether node `i` is frozen now (SQL to it would hang until its connect timeout).
    pub fn is_frozen(&self, i: usize) -> bool {
        self.lock_frozen().contains(&i)
    }

    /// SIGKILL node `i`'s postmaster (a crash). A node that is down at this moment (its agent is
    /// rewinding it) is left as it is.
    pub fn kill(&self, c: &Cluster, i: usize) -> Result<()> {
        self.lock_frozen().remove(&i);
        let n = c.node(i);
        match n.kill9() {
            Err(_) if !n.is_running() => Ok(()),
            r => r,
        }
    }

    /// Restart node `i` (fast shutdown, start), or wait for the agent's own restart if it is rewinding
    /// the node meanwhile.
    pub fn restart(&self, c: &Cluster, i: usize) -> Result<()> {
        let n = c.node(i);
        if n.is_running() {
            if let Err(e) = n.stop() {
                if n.is_running() {
                    return Err(e);
                }
            }
        }
        start_unless_restarted(n)
    }

    /// Undoes every fault: heal the network, thaw frozen nodes, start nodes that are down.
    pub fn recover(&self, c: &Cluster) -> Result<()> {
        self.heal(c)?;
        let frozen: Vec<usize> = self.lock_frozen().iter().copied().collect();
        for i in frozen {
            self.thaw(c, i)?;
        }
        for n in c.nodes() {
            if !n.is_running() {
                start_unless_restarted(n)?;
            }
        }
        Ok(())
    }

    /// The node that is leader now: of the nodes that answer (frozen ones are skipped) and call themselves
    /// leader in `ha.status`, the one with the highest term.
    pub fn leader(&self, c: &Cluster) -> Option<usize> {
        let mut best: Option<(i64, usize)> = None;
        for (i, n) in c.nodes().iter().enumerate() {
            if self.is_frozen(i) || !n.is_running() {
                continue;
            }
            let Ok(Some(row)) = n
                .query_strings("SELECT role, term FROM ha.status WHERE is_self")
                .map(|r| r.into_iter().next())
            else {
                continue;
            };
            if row.first().cloned().flatten().as_deref() != Some("leader") {
                continue;
            }
            let term: i64 = row
                .get(1)
                .cloned()
                .flatten()
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            if best.is_none_or(|(t, _)| term > t) {
                best = Some((term, i));
            }
        }
        best.map(|(_, i)| i)
    }

    fn lock_frozen(&self) -> std::sync::MutexGuard<'_, BTreeSet<usize>> {
        self.frozen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn net(c: &Cluster) -> Result<&crate::netns::Net> {
    c.net().ok_or_else(|| {
        err("network faults need a cluster on hosts of their own (ClusterSpec::netns)")
    })
}

/// Starts `n`, unless its agent's rejoin helper is at work on it (then waits for the helper to finish, which
/// starts the server itself) or restarts it meanwhile.
fn start_unless_restarted(n: &crate::Node) -> Result<()> {
    let env = format!("PGDATA={}", n.data_dir().display());
    wait_until(
        Duration::from_secs(120),
        &format!("{}'s rejoin helper to finish", n.name()),
        || {
            // The helper is a bash script that waits for each of its steps; the server it starts also
            // carries PGDATA, hence the filter.
            let helper = crate::procs::pids_with_env(&env, false)
                .into_iter()
                .any(|p| crate::procs::cmdline(p).starts_with("/bin/bash"));
            Ok(n.is_running() || !helper)
        },
    )?;
    if n.is_running() {
        return Ok(());
    }
    match n.start() {
        Ok(()) => Ok(()),
        Err(e) => wait_until(
            Duration::from_secs(60),
            &format!("{} to run again (start failed: {e})", n.name()),
            || Ok(n.is_running() && n.accepts_connections()),
        ),
    }
}
