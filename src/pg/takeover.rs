//! The node side of a leadership change, on the agent's main thread: answering a `Pledge` (refused
//! while the reported position would not cover the local WAL; otherwise persist, then revoke: a
//! standby stops streaming from the old leader, a leader is deposed) and a `Promote` (pg_promote, then
//! the new term's ruleset row; the steward establishes once it is durable).

use super::steward::Steward;
use super::{alter_system, catalog, gate_shmem, local, walrcv};
use crate::agent::wire;
use crate::proto::{PledgeReply, PledgeRequest, PromoteReply, PromoteRequest};
use pg_ha_core::{NodeId, Term};
use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl Steward {
    pub fn handle_pledge(&mut self, req: &PledgeRequest) -> PledgeReply {
        let coordinator = NodeId::new(req.coordinator.clone());
        let next = match self
            .pledge
            .on_pledge_request(Term(req.term), &coordinator, req.attempt)
        {
            Ok(s) => s,
            Err(refusal) => {
                log!(
                    "pg_ha: pledge for term {} from {} refused: {refusal}",
                    req.term,
                    req.coordinator
                );
                return PledgeReply {
                    accepted: false,
                    refusal: refusal.to_string(),
                    current_term: refusal.current_term().0,
                    ..Default::default()
                };
            }
        };
        // The position reported below must cover every WAL record this node holds (I3): not while the
        // startup process is still replaying (or holding) the local WAL it restarted with.
        if let Err(not_yet) = self.position_covers_local_wal() {
            log!(
                "pg_ha: pledge for term {} from {} refused: {not_yet}",
                req.term,
                req.coordinator
            );
            return PledgeReply {
                accepted: false,
                refusal: not_yet.to_string(),
                current_term: self.pledge.term.0,
                ..Default::default()
            };
        }
        let fresh = next != self.pledge;
        if let Err(e) = self.persist_pledge(next) {
            warning!("pg_ha: pledge for term {} not given: {e}", req.term);
            return PledgeReply {
                accepted: false,
                refusal: e,
                current_term: self.pledge.term.0,
                ..Default::default()
            };
        }
        if let Err(e) = self.revoke(req.term) {
            log!("pg_ha: pledge for term {} not answered: {e}", req.term);
            return PledgeReply {
                accepted: false,
                refusal: e,
                current_term: self.pledge.term.0,
                ..Default::default()
            };
        }
        let wal = local::wal_state();
        let newest = BackgroundWorker::transaction(catalog::newest_ruleset);
        if fresh {
            log!(
                "pg_ha: pledged to {} for term {} (attempt {:016x}; flush {}, timeline {}, ruleset v{})",
                req.coordinator,
                req.term,
                req.attempt,
                local::lsn_text(wal.flush_lsn),
                wal.timeline,
                newest.as_ref().map_or(0, |r| r.version)
            );
        }
        PledgeReply {
            accepted: true,
            refusal: String::new(),
            current_term: req.term,
            node_name: self.node.clone(),
            zone: self.zone.clone(),
            pledged_term: req.term,
            ruleset: newest
                .as_ref()
                .and_then(|r| r.to_core())
                .map(|r| wire::ruleset_to_wire(&r)),
            flush_lsn: wal.flush_lsn,
            timeline: wal.timeline,
        }
    }

    /// After pledging to `term`: acknowledge nothing more to a leader of a lower term (I2), and make the
    /// report consistent: the catalog (newest ruleset row) is read at the replay position, so replay
    /// must have reached everything received before the node reports (ruleset, flush) for discovery.
    fn revoke(&mut self, term: u64) -> Result<(), String> {
        let wal = local::wal_state();
        if !wal.in_recovery {
            let led = self
                .rules
                .as_ref()
                .is_some_and(|r| r.current().term.0 < term);
            if led || gate_shmem::fence_open() {
                log!("pg_ha: deposed by term {term}: fence closed; commits still waiting will not be acknowledged");
            }
            // Before the flush position for the reply is read (handle_pledge, after this returns): a
            // backend that commits after it sees the flag and acknowledges nothing (commit_gate).
            gate_shmem::depose();
            return Ok(());
        }
        // A standby: stop streaming (and so acknowledging) until a leader of term >= `term` exists.
        self.stop_streaming(&format!(
            "pledged to term {term}: stopped streaming from the old leader"
        ))?;
        // Replay everything received, so the reported ruleset row (read at the replay position) and
        // flush position agree. The received WAL may end in a partial record that never completes, so
        // "done" is: replay reached the received end, or replay stopped moving while the startup
        // process is not held by a recovery conflict (then it waits for WAL that will not come).
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last: Option<(String, u32)> = None;
        loop {
            let (done, replay, conflict) = BackgroundWorker::transaction(|| {
                (
                    catalog::select_one::<bool>(
                        "SELECT pg_last_wal_receive_lsn() IS NULL OR pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn()",
                    ),
                    catalog::select_one::<String>("SELECT pg_last_wal_replay_lsn()::text"),
                    catalog::select_one::<bool>(
                        "SELECT coalesce(bool_or(wait_event LIKE 'RecoveryConflict%'), false) FROM pg_stat_activity WHERE backend_type = 'startup'",
                    ),
                )
            });
            if done != Some(false) {
                return Ok(());
            }
            let replay = replay.unwrap_or_default();
            let stable = match &mut last {
                Some((l, n)) if *l == replay => {
                    *n += 1;
                    *n
                }
                _ => {
                    last = Some((replay, 0));
                    0
                }
            };
            if stable >= 5 && conflict != Some(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("replay is held behind the WAL received (a recovery conflict); not reporting a position".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A standby stops streaming (and so acknowledging WAL to anyone): clear `primary_conninfo`, and
    /// return only once no WAL receiver runs, connecting ones included. Logs `why` when it cleared the
    /// setting.
    pub(crate) fn stop_streaming(&mut self, why: &str) -> Result<(), String> {
        let conninfo =
            BackgroundWorker::transaction(|| catalog::show("primary_conninfo")).unwrap_or_default();
        if !conninfo.is_empty() {
            BackgroundWorker::transaction(|| alter_system::set("primary_conninfo", Some("")));
            self.following_since = None;
            log!("pg_ha: {why}");
        }
        // On the reload the startup process stops its WAL receiver and starts none. Until no receiver
        // runs, do not return: read the receiver's shared state (pg_stat_wal_receiver hides one that is
        // still connecting, and it would stream and acknowledge once connected), and after a grace
        // period for the startup process, signal the receiver ourselves (the startup process may be busy
        // replaying and not yet have acted on the reload).
        let deadline = Instant::now() + Duration::from_secs(3);
        let started = Instant::now();
        let mut signalled = None;
        loop {
            let pid = match walrcv::receiver() {
                walrcv::Receiver::Stopped => break,
                walrcv::Receiver::Starting => None,
                walrcv::Receiver::Running(pid) => Some(pid),
            };
            if Instant::now() > deadline {
                return Err(match pid {
                    Some(pid) => format!("the WAL receiver (pid {pid}) still runs"),
                    None => "a WAL receiver is still being started".into(),
                });
            }
            if let Some(pid) = pid.filter(|_| started.elapsed() > Duration::from_millis(200)) {
                if signalled != Some(pid) {
                    log!("pg_ha: stopping the WAL receiver (pid {pid}) that still runs");
                    signalled = Some(pid);
                }
                // SAFETY: signalling our own server's WAL receiver (it exits at once, also while
                // connecting).
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    pub fn handle_promote(&mut self, req: &PromoteRequest) -> PromoteReply {
        let fail = |e: String| {
            log!("pg_ha: promotion for term {} refused: {e}", req.term);
            PromoteReply {
                ok: false,
                error: e,
                ..Default::default()
            }
        };
        let coordinator = NodeId::new(req.coordinator.clone());
        if let Err(refusal) = self
            .pledge
            .may_promote(Term(req.term), &coordinator, req.attempt)
        {
            return fail(refusal.to_string());
        }
        let Some(ruleset) = req.ruleset.as_ref().and_then(wire::ruleset_from_wire) else {
            return fail("malformed ruleset".into());
        };
        if ruleset.leader.as_str() != self.node || ruleset.term.0 != req.term {
            return fail(format!(
                "the ruleset names {} for term {}",
                ruleset.leader, ruleset.term
            ));
        }
        let before = local::wal_state();
        if before.in_recovery {
            log!(
                "pg_ha: promoting for term {} (coordinator {})",
                req.term,
                req.coordinator
            );
            let t0 = Instant::now();
            if let Err(e) = promote_for_term(&self.data_dir, before.timeline, req.term) {
                return fail(e);
            }
            log!("pg_ha: promoted in {} ms", t0.elapsed().as_millis());
        }
        let wal = local::wal_state();
        // The new term's WAL begins where this node's history forked: the switch point of its new
        // timeline (its flush before promotion if the history file cannot be read).
        self.term_start_lsn =
            BackgroundWorker::transaction(|| catalog::timeline_switch_point(wal.timeline))
                .unwrap_or(before.flush_lsn);
        gate_shmem::DEPOSED.get().store(false, Ordering::Release);
        let row = catalog::RulesetRow::from_core(&ruleset);
        if let Err(e) = BackgroundWorker::transaction(|| catalog::insert_row(&row, &req.reason)) {
            return fail(format!("cannot write the ruleset row: {e}"));
        }
        // The steward adopts the new rules on its next pass and opens the fence once the row is durable.
        self.rules = None;
        log!(
            "pg_ha: leader of term {} (ruleset v{}, timeline {}); establishing",
            req.term,
            ruleset.version,
            wal.timeline
        );
        PromoteReply {
            ok: true,
            error: String::new(),
            start_lsn: self.term_start_lsn,
            timeline: wal.timeline,
        }
    }
}

/// Promote this standby for `term`, the new timeline's ID being the term (unique per promotion; see
/// timeline.rs): reserve the IDs in between, then `pg_promote` (waiting up to 60 s).
pub(crate) fn promote_for_term(
    data_dir: &std::path::Path,
    timeline: u32,
    term: u64,
) -> Result<(), String> {
    match super::timeline::reserve(data_dir, u64::from(timeline), term) {
        Ok(0) => {}
        Ok(n) => log!(
            "pg_ha: reserved {n} timeline IDs after {timeline} so that the new timeline is {term}"
        ),
        Err(e) => return Err(format!("cannot reserve timeline IDs up to the term: {e}")),
    }
    let ok = BackgroundWorker::transaction(|| {
        catalog::select_one::<bool>("SELECT pg_promote(true, 60)")
    });
    if ok != Some(true) {
        return Err("pg_promote did not complete within 60 s".into());
    }
    // Promoted for a coordinator (or the operator's override): followers must be able to stream from
    // this node for it to establish.
    super::admission::allow_streaming();
    Ok(())
}
