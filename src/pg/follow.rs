//! Following the leader of the newest term (template step 6, pull-based): each node looks at its
//! peers' Status answers; a standby points `primary_conninfo` at the newest leader, and a node whose
//! WAL diverged from it (I4) rejoins through pg_rewind (`rejoin`). A node whose pledge file was lost
//! follows no one until it has relearned its term (I2).

use super::steward::Steward;
use super::{alter_system, catalog, local, rejoin, walrcv};
use crate::proto::StatusReply;
use pg_ha_core::Term;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// A standby pointed at the leader but not streaming for this long is assumed diverged (a timeline
/// fork the switch-point check could not see, e.g. two failovers while it was away).
const STUCK: Duration = Duration::from_secs(10);

impl Steward {
    /// Returns true when this node is (or is becoming) a follower of a newer leader.
    pub(crate) fn follow_newer_leader(
        &mut self,
        wal: &local::WalState,
        newest: Option<&pg_ha_core::Ruleset>,
        peers: &[StatusReply],
    ) -> bool {
        // A rejoin that could not rewind waits for an operator (ha.status says so).
        if let Some(why) = rejoin::failed(&self.data_dir) {
            if !self.rejoin_failed_logged {
                warning!("pg_ha: not following any leader: {why}");
                self.rejoin_failed_logged = true;
            }
            return wal.in_recovery;
        }
        // A lost pledge file: this node may have promised a term above any leader it can see. It
        // follows no one (and stops streaming if it does) until it has relearned its term (I2).
        if self.pledge.must_relearn {
            if wal.in_recovery {
                let conninfo = BackgroundWorker::transaction(|| catalog::show("primary_conninfo"))
                    .unwrap_or_default();
                if !conninfo.is_empty() || walrcv::receiver() != walrcv::Receiver::Stopped {
                    if let Err(e) = self.stop_streaming(
                        "pledge file lost: stopped streaming; following no leader until the highest term is relearned",
                    ) {
                        warning!("pg_ha: pledge file lost, but {e}");
                    }
                }
            }
            return false;
        }
        let my_term = newest.map_or(0, |r| r.term.0);
        // The leader of the newest term among the peers: a primary whose newest row names itself.
        let Some(target) = peers
            .iter()
            .filter(|p| !p.in_recovery && p.role == "leader" && p.leader == p.node_name)
            .filter(|p| p.node_name != self.node)
            .max_by_key(|p| (p.ruleset_term, p.ruleset_version))
        else {
            return false;
        };
        let newer = target.ruleset_term > my_term
            || (target.ruleset_term == my_term
                && newest.is_some_and(|r| r.leader.as_str() == target.node_name));
        if !newer || Term(target.ruleset_term) < self.pledge.term {
            return false;
        }
        if !wal.in_recovery {
            if target.ruleset_term <= my_term {
                return false;
            }
            // A primary of an older term: deposed. If its WAL goes past where the new term began (an
            // unacknowledged tail), it rejoins through pg_rewind; otherwise (a switchover) it only
            // restarts as a follower.
            let rewind = target.term_start_lsn == 0 || wal.flush_lsn > target.term_start_lsn;
            let why = format!(
                "a primary of an older term, WAL up to {} (term {} began at {})",
                local::lsn_text(wal.flush_lsn),
                target.ruleset_term,
                local::lsn_text(target.term_start_lsn)
            );
            self.start_rejoin(target, rewind, &why);
            return true;
        }
        // Learn the term from the leader we follow (a pledge file behind).
        match self.pledge.on_follow(Term(target.ruleset_term)) {
            Ok(Some(next)) => {
                if let Err(e) = self.persist_pledge(next) {
                    warning!("pg_ha: not following {}: {e}", target.node_name);
                    return false;
                }
            }
            Ok(None) => {}
            Err(refusal) => {
                // Checked above; the core has the last word.
                log!("pg_ha: not following {}: {refusal}", target.node_name);
                return false;
            }
        }
        // After a pg_rewind the node starts replaying from a checkpoint of the old timeline, but its
        // control file already says it must reach the new one (minRecoveryPointTLI): that is not a
        // divergence.
        let rewound_to = BackgroundWorker::transaction(|| {
            catalog::select_one::<i32>(
                "SELECT min_recovery_end_timeline FROM pg_control_recovery()",
            )
        })
        .unwrap_or(0)
        .max(0) as u32;
        let diverged = target.timeline > wal.timeline.max(rewound_to)
            && target.term_start_lsn != 0
            && wal.flush_lsn > target.term_start_lsn;
        if diverged {
            let why = format!(
                "holds WAL up to {} on timeline {}, past where term {} began ({})",
                local::lsn_text(wal.flush_lsn),
                wal.timeline,
                target.ruleset_term,
                local::lsn_text(target.term_start_lsn)
            );
            self.start_rejoin(target, true, &why);
            return true;
        }
        let want = format!(
            "{} application_name={}",
            target.conninfo,
            self.stream_name()
        );
        let have =
            BackgroundWorker::transaction(|| catalog::show("primary_conninfo")).unwrap_or_default();
        if have != want {
            BackgroundWorker::transaction(|| alter_system::set("primary_conninfo", Some(&want)));
            log!(
                "pg_ha: following {} (leader of term {}, timeline {}); primary_conninfo updated",
                target.node_name,
                target.ruleset_term,
                target.timeline
            );
            self.following_since = Some((target.node_name.clone(), Instant::now()));
            return true;
        }
        // Pointed at the leader: is WAL flowing?
        let streaming = BackgroundWorker::transaction(|| {
            catalog::select_one::<String>("SELECT status FROM pg_stat_wal_receiver")
        })
        .as_deref()
            == Some("streaming");
        match &self.following_since {
            _ if streaming => {
                self.following_since = Some((target.node_name.clone(), Instant::now()))
            }
            Some((n, since)) if *n == target.node_name && since.elapsed() > STUCK => {
                let why = format!("not streaming from {} for {} s", n, STUCK.as_secs());
                self.start_rejoin(target, true, &why);
            }
            Some((n, _)) if *n == target.node_name => {}
            _ => self.following_since = Some((target.node_name.clone(), Instant::now())),
        }
        true
    }

    fn start_rejoin(&mut self, target: &StatusReply, rewind: bool, why: &str) {
        // pg_rewind (or a re-clone) may leave the node below what it held: record the floor first.
        if rewind {
            if let Err(e) = self.record_rewind_floor(target) {
                warning!("pg_ha: not rejoining {}: {e}", target.node_name);
                return;
            }
        }
        let primary = format!(
            "{} application_name={}",
            target.conninfo,
            self.stream_name()
        );
        log!(
            "pg_ha: rejoining as a follower of {} (leader of term {}): {why}; {}",
            target.node_name,
            target.ruleset_term,
            if rewind {
                "pg_rewind first"
            } else {
                "restart only"
            }
        );
        match rejoin::spawn(&rejoin::Plan {
            data_dir: &self.data_dir,
            node_name: &self.node,
            source_name: &target.node_name,
            source_conninfo: &target.conninfo,
            primary_conninfo: &primary,
            needs_rewind: rewind,
            reclone: self.reclone,
            failpoint: &self.failpoint,
            systemd_unit: &self.systemd_unit,
        }) {
            Ok(what) => {
                log!("pg_ha: rejoin helper started ({what}); see pg_ha_rejoin.log in the data directory");
                self.rejoining = true;
            }
            Err(e) => warning!("pg_ha: cannot start the rejoin helper: {e}"),
        }
    }
}
