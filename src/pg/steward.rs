//! The agent's ruleset steward (main thread): it keeps this node's durability and fencing state in step
//! with the ruleset rows in its catalog and with its pledge.
//!
//! - On the leader: the commit rules (`CommitRules`: the ruleset in force and the change in flight),
//!   published to shared memory for the commit gate; `synchronous_standby_names` derived from them; the
//!   walsender-to-node map; establishment (the fence opens only when this node is the leader of the
//!   highest term it knows and a majority of the cohort has not pledged to a higher term); ruleset
//!   changes requested through `ha.bootstrap/add_member/remove_member/set_policy`, each announced
//!   first (joint old-and-new rules in the gate and in `synchronous_standby_names`, confirmed in every
//!   walsender), then written as a row, and in force only once durable under the previous rules (I5).
//! - On any other node: no commit rules, fence closed; a standby makes sure it streams under its node
//!   name (`application_name` in `primary_conninfo`).
//!
//! Every decision is logged as `pg_ha: ...`.

use super::request::{self, Kind};
use super::{alter_system, catalog, gate_shmem, local, shmem, walsnd};
use crate::agent::pledge_file::{self, Loaded};
use pg_ha_core::{
    sync_quorum, Change, CommitRules, LocalWalWatch, Lsn, NodeId, PledgeState, Policy, Ruleset,
    SyncQuorum, Term, Zone,
};
use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// A standby within this many bytes of the leader's flush counts as caught up (may join the cohort).
const CAUGHT_UP_BYTES: u64 = 16 * 1024 * 1024;

/// A change the leader announced or wrote and waits on (I5), with the request that asked for it.
struct InFlight {
    request: Option<u64>,
    reason: String,
    started: Instant,
    stage: Stage,
}

/// Where a change in flight stands.
enum Stage {
    /// The joint rules are published to the gate and `synchronous_standby_names`; the row (`to`) is
    /// written once every walsender reports the joint setting.
    Announced(Ruleset),
    /// Failpoint `change_pause_after_row`: the row is written at this LSN; the change goes on once the
    /// failpoint is cleared.
    Paused(u64),
    /// The row is written: in force once durable under the previous rules.
    Written,
}

/// How long a change waits for every walsender to load the joint `synchronous_standby_names` before it
/// is given up (walsenders reload within milliseconds of the postmaster's SIGHUP).
const SSN_CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct Steward {
    pub(crate) node: String,
    pub(crate) zone: String,
    pub(crate) data_dir: PathBuf,
    pub pledge: PledgeState,
    /// Whether the startup process has consumed its local WAL since the server started (a pledge is
    /// refused until then; coverage.rs).
    pub(crate) local_wal: LocalWalWatch,
    /// Leader side: the commit rules, when this node is the leader named by its newest row.
    pub(crate) rules: Option<CommitRules>,
    in_flight: Option<InFlight>,
    applied_ssn: Option<String>,
    walsenders: Vec<(i32, String)>,
    /// The leader's flush when it adopted the rules: establishment waits until this is durable under
    /// them (the new term's ruleset row, or whatever a restarted leader held).
    establish_lsn: u64,
    /// Where this leader's term began (timeline switch point), for followers' divergence checks.
    pub term_start_lsn: u64,
    /// The rejoin helper has been started (the server is about to stop).
    pub(crate) rejoining: bool,
    /// When this standby was pointed at its current leader (for the stuck-streaming fallback).
    pub(crate) following_since: Option<(String, Instant)>,
    /// A switchover (request id, target) or forced failover (request id, target or "") the worker
    /// must run on the agent's runtime.
    pub switch_request: Option<(u64, String)>,
    pub failover_request: Option<(u64, String)>,
    /// A switchover is in progress: the fence stays closed.
    pub switching: bool,
    /// When the last switchover answered its caller: the deposed primary waits a moment before it
    /// restarts as a follower, so the caller receives the answer.
    pub(crate) answered_at: Option<Instant>,
    /// `ha.debug_failpoint` (testing only).
    pub failpoint: String,
    /// `ha.reclone_on_rewind_failure`.
    pub reclone: bool,
    /// `ha.systemd_unit` (empty: bare pg_ctl).
    pub systemd_unit: String,
    /// `ha.failover_timeout`.
    pub failover_timeout: std::time::Duration,
    /// Since when the pledge file has been known lost (waiting to relearn the highest term).
    relearn_since: Option<Instant>,
    /// "cannot relearn yet" was logged for this loss.
    relearn_wait_logged: bool,
    pub(crate) rejoin_failed_logged: bool,
    /// Cohort members' pledged terms from the latest Status answers (filled by the worker).
    pub peer_terms: BTreeMap<String, u64>,
    /// Every configured peer has been heard from (answer or failure) since the agent started.
    pub peers_heard: bool,
}

/// `synchronous_standby_names` for one ruleset: Postgres' quorum wait, which ends before a commit becomes
/// visible, does the blocking; the commit gate checks the policy exactly (see `pg_ha_core::sync_quorum`).
pub fn ssn_for(r: &Ruleset) -> String {
    sync_quorum::for_ruleset(r).setting()
}

impl Steward {
    pub fn new(node: &str, zone: &str) -> Steward {
        // SAFETY: DataDir is set before any worker starts; plain read.
        let data_dir = unsafe { std::ffi::CStr::from_ptr(pg_sys::DataDir) }
            .to_string_lossy()
            .into_owned();
        let data_dir = PathBuf::from(data_dir);
        for f in pledge_file::remove_foreign(&data_dir, node) {
            log!("pg_ha: removed {f}: a pledge file of another node (copied by pg_basebackup)");
        }
        let newest = BackgroundWorker::transaction(catalog::newest_ruleset);
        let member = newest
            .as_ref()
            .is_some_and(|r| r.cohort.iter().any(|c| c == node));
        let pledge = match pledge_file::load(&data_dir, node) {
            Loaded::Found(s) => s,
            Loaded::Missing if member => {
                warning!("pg_ha: pledge file missing although {node} is a cohort member: it will not pledge until it relearns the highest term");
                PledgeState::lost()
            }
            Loaded::Missing => PledgeState::fresh(),
            Loaded::Corrupt(e) => {
                warning!("pg_ha: pledge file damaged ({e}): treating the pledge as lost; it will not pledge until it relearns the highest term");
                PledgeState::lost()
            }
        };
        log!(
            "pg_ha: pledge state: term {}{}{}",
            pledge.term,
            if pledge.must_relearn {
                " (must relearn)"
            } else {
                ""
            },
            pledge
                .floor
                .map(|f| format!(
                    " (rewind floor: ruleset term {} up to {})",
                    f.ruleset_term, f.lsn
                ))
                .unwrap_or_default()
        );
        gate_shmem::KNOWN_TERM
            .get()
            .fetch_max(pledge.term.0, Ordering::AcqRel);
        Steward {
            node: node.to_string(),
            zone: zone.to_string(),
            data_dir,
            pledge,
            local_wal: LocalWalWatch::default(),
            rules: None,
            in_flight: None,
            applied_ssn: None,
            walsenders: Vec::new(),
            establish_lsn: 0,
            term_start_lsn: 0,
            rejoining: false,
            following_since: None,
            switch_request: None,
            failover_request: None,
            switching: false,
            answered_at: None,
            failpoint: String::new(),
            reclone: false,
            systemd_unit: String::new(),
            failover_timeout: std::time::Duration::from_secs(2),
            relearn_since: None,
            relearn_wait_logged: false,
            rejoin_failed_logged: false,
            peer_terms: BTreeMap::new(),
            peers_heard: false,
        }
    }

    /// The pledge file was lost: relearn the highest term the other cohort members report before
    /// pledging or following again, from enough of them to meet every recruit quorum
    /// (`PledgeState::relearn_quorum`; this node does not count, it is the one that forgot). Wait two
    /// failover timeouts first, so that an attempt this node answered before the loss has finished (its
    /// term then shows up in the peers' answers).
    fn relearn(&mut self, newest: Option<&Ruleset>) {
        let since = *self.relearn_since.get_or_insert_with(Instant::now);
        let Some(r) = newest else { return };
        if since.elapsed() < self.failover_timeout * 2 {
            return;
        }
        let answers: Vec<u64> = r
            .cohort
            .keys()
            .filter(|m| m.as_str() != self.node)
            .filter_map(|m| self.peer_terms.get(m.as_str()).copied())
            .collect();
        let others = r.cohort.keys().filter(|m| m.as_str() != self.node).count();
        let need = PledgeState::relearn_quorum(r.n());
        if answers.len() < need {
            if !self.relearn_wait_logged {
                log!(
                    "pg_ha: pledge file lost: cannot relearn the highest term yet: {} of the {others} other members answered, {need} needed; following no leader and pledging to no one",
                    answers.len()
                );
                self.relearn_wait_logged = true;
            }
            return;
        }
        let highest = answers
            .iter()
            .copied()
            .chain([
                r.term.0,
                gate_shmem::KNOWN_TERM.get().load(Ordering::Acquire),
            ])
            .max()
            .unwrap_or(0);
        let next = self.pledge.relearn(Term(highest));
        match self.persist_pledge(next) {
            Ok(()) => {
                log!(
                    "pg_ha: pledge file relearned: the highest term reported by {} of the {others} other members is {highest}",
                    answers.len()
                );
                self.relearn_since = None;
                self.relearn_wait_logged = false;
            }
            Err(e) => warning!("pg_ha: {e}"),
        }
    }

    pub(crate) fn persist_pledge(&mut self, s: PledgeState) -> Result<(), String> {
        pledge_file::store(&self.data_dir, &self.node, &s)
            .map_err(|e| format!("cannot write the pledge file: {e}"))?;
        gate_shmem::KNOWN_TERM
            .get()
            .fetch_max(s.term.0, Ordering::AcqRel);
        self.pledge = s;
        Ok(())
    }

    /// One main-loop pass.
    pub fn tick(&mut self, rows: &[catalog::RulesetRow], peers: &[crate::proto::StatusReply]) {
        if self.rejoining {
            gate_shmem::set_fence(false);
            return;
        }
        self.watch_local_wal();
        self.check_rewind_floor();
        let just_answered = self
            .answered_at
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_millis(500));
        if self.switching || just_answered {
            // A switchover is running here, or just answered its caller: stay put for now.
            return;
        }
        let wal = local::wal_state();
        let newest = rows.first().and_then(|r| r.to_core());
        if self.pledge.must_relearn {
            self.relearn(newest.as_ref());
        }
        let leads = !wal.in_recovery
            && newest
                .as_ref()
                .is_some_and(|r| r.leader.as_str() == self.node);
        // A newer leader elsewhere: this node follows it (a standby repoints, a stale primary rejoins).
        let managed = newest.is_some() || self.pledge.term.0 > 0 || self.pledge.must_relearn;
        gate_shmem::MANAGED.get().store(managed, Ordering::Release);
        if self.follow_newer_leader(&wal, newest.as_ref(), peers) {
            // Depose before withdrawing the rules: a commit waiting in the gate must end unanswered.
            gate_shmem::depose();
            if self.rules.take().is_some() {
                gate_shmem::publish_rules(None);
            }
            return;
        }
        if !leads {
            if self.rules.take().is_some() {
                gate_shmem::depose();
                gate_shmem::publish_rules(None);
                log!("pg_ha: no longer leading; commit rules withdrawn");
            }
            let unmanaged_primary = !wal.in_recovery && newest.is_none() && self.pledge.term.0 == 0;
            // A primary no ruleset knows about (before ha.bootstrap) is not fenced: pg_ha manages
            // nothing yet. Every other non-leader is.
            gate_shmem::set_fence(unmanaged_primary);
            // (Not while the pledge is lost: its primary_conninfo was cleared, and this agent may not
            // have reloaded it yet.)
            if wal.in_recovery && self.following_since.is_none() && !self.pledge.must_relearn {
                self.ensure_application_name();
            }
            return;
        }
        let newest = newest.expect("leads implies a ruleset");
        if self.rules.is_none() {
            self.adopt(rows, &newest, wal.flush_lsn);
            self.establish_lsn = wal.flush_lsn;
            if self.term_start_lsn == 0 {
                self.term_start_lsn =
                    BackgroundWorker::transaction(|| catalog::timeline_switch_point(wal.timeline))
                        .unwrap_or(0);
            }
        }
        self.refresh_walsenders();
        self.progress_change();
        self.advance(wal.flush_lsn);
        self.check_quorum(&newest, peers);
        self.maybe_establish(&newest);
    }

    /// Check-quorum: a leader whose unheard members (no answer within a failover timeout) could elect a
    /// leader without it may already have been replaced. Its commits cannot be acknowledged anyway (the
    /// gate), but clients would keep writing into a node that only makes them wait: close the fence, so
    /// new sessions are read-only and `target_session_attrs=read-write` moves on. The fence reopens only
    /// through establishment (a majority again reporting no higher term).
    fn check_quorum(&mut self, newest: &Ruleset, peers: &[crate::proto::StatusReply]) {
        let heard: BTreeSet<NodeId> = peers
            .iter()
            .map(|p| NodeId::new(p.node_name.clone()))
            .collect();
        if gate_shmem::fence_open() && pg_ha_core::leader_may_be_replaced(newest, &heard) {
            gate_shmem::set_fence(false);
            // Re-establishment must hear from them again (not reuse an answer from before the silence).
            self.peer_terms
                .retain(|m, _| heard.contains(&NodeId::new(m.clone())));
            log!(
                "pg_ha: fence closed: this leader of term {} has not heard from [{}] within {} ms, enough to elect another leader; writes are refused until a majority answers again",
                newest.term,
                newest
                    .cohort
                    .keys()
                    .filter(|m| m.as_str() != self.node && !heard.contains(*m))
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                self.failover_timeout.as_millis()
            );
        }
    }

    /// Become the keeper of the rules after a start or promotion: the row before the newest is in force,
    /// and the newest is pending until it is durable under it (we cannot know whether it already was).
    fn adopt(&mut self, rows: &[catalog::RulesetRow], newest: &Ruleset, flush: u64) {
        // A change announced under rules this node no longer keeps never writes its row.
        if let Some(f) = self.in_flight.take() {
            if let (Stage::Announced(_), Some(id)) = (&f.stage, f.request) {
                log!(
                    "pg_ha: {}: given up: leadership changed before its row was written",
                    f.reason
                );
                request::answer(
                    id,
                    Err((
                        "55000".into(),
                        format!("{}: given up: leadership changed before its row was written; retry on the leader", f.reason),
                    )),
                );
            }
        }
        let previous = rows.get(1).and_then(|r| r.to_core());
        let rules = match previous {
            Some(prev) if prev.term == newest.term => {
                let mut r = CommitRules::new(prev);
                let _ = r.begin(newest.clone(), Lsn(flush));
                self.in_flight = Some(InFlight {
                    request: None,
                    reason: "found at start".into(),
                    started: Instant::now(),
                    stage: Stage::Written,
                });
                r
            }
            _ => CommitRules::new(newest.clone()),
        };
        log!(
            "pg_ha: leading: ruleset v{} term {} cohort [{}] policy {}{}",
            newest.version,
            newest.term,
            newest
                .cohort
                .keys()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            newest.policy,
            if rules.pending().is_some() {
                " (pending until durable under the previous row)"
            } else {
                ""
            }
        );
        gate_shmem::publish_rules(Some(&rules));
        self.rules = Some(rules);
        self.sync_ssn();
    }

    fn refresh_walsenders(&mut self) {
        let ws = BackgroundWorker::transaction(catalog::walsenders);
        if ws != self.walsenders {
            gate_shmem::publish_walsenders(&ws);
            self.walsenders = ws;
        }
    }

    /// Leader only: the flush position of each standby streaming from this node, by name (metrics).
    pub fn follower_flush(&self) -> BTreeMap<String, u64> {
        if self.rules.is_none() {
            return BTreeMap::new();
        }
        walsnd::standby_flush_positions(&self.walsenders)
            .into_iter()
            .map(|(n, l)| (n.as_str().to_string(), l.0))
            .collect()
    }

    fn flushed(&self, own_flush: u64) -> BTreeMap<NodeId, Lsn> {
        let mut m = walsnd::standby_flush_positions(&self.walsenders);
        m.insert(NodeId::new(self.node.clone()), Lsn(own_flush));
        m
    }

    /// A pending change takes effect once durable under the previous rules.
    fn advance(&mut self, own_flush: u64) {
        let flushed = self.flushed(own_flush);
        let Some(rules) = self.rules.as_mut() else {
            return;
        };
        if let Some(now) = rules.on_flush(&flushed).cloned() {
            let took = self
                .in_flight
                .take()
                .map(|f| (f.request, f.reason, f.started.elapsed()));
            log!(
                "pg_ha: ruleset v{} in force (acknowledged under the previous ruleset{}): cohort [{}] policy {}",
                now.version,
                took.as_ref()
                    .map(|t| format!(" after {} ms", t.2.as_millis()))
                    .unwrap_or_default(),
                now.cohort.keys().map(|n| n.as_str()).collect::<Vec<_>>().join(", "),
                now.policy
            );
            gate_shmem::publish_rules(self.rules.as_ref());
            self.sync_ssn();
            if let Some((Some(id), reason, _)) = took {
                request::answer(
                    id,
                    Ok(format!("{reason}: ruleset v{} in force", now.version)),
                );
            }
        }
    }

    /// The quorum Postgres' wait must express: the rules in force, or while a change is in flight a
    /// quorum that implies the old and the new rules (I5; always exists for satisfiable rulesets).
    fn wanted_quorum(&self) -> Option<SyncQuorum> {
        let rules = self.rules.as_ref()?;
        Some(match rules.pending() {
            Some(p) => sync_quorum::joint(&p.from, &p.to)
                .unwrap_or_else(|| sync_quorum::for_ruleset(&p.from)),
            None => sync_quorum::for_ruleset(rules.current()),
        })
    }

    fn sync_ssn(&mut self) {
        let Some(want) = self.wanted_quorum().map(|q| q.setting()) else {
            return;
        };
        let have = match &self.applied_ssn {
            Some(s) => s.clone(),
            None => BackgroundWorker::transaction(|| catalog::show("synchronous_standby_names"))
                .unwrap_or_default(),
        };
        if have != want {
            BackgroundWorker::transaction(|| {
                alter_system::set("synchronous_standby_names", Some(&want))
            });
            log!("pg_ha: synchronous_standby_names set to '{want}' (was '{have}')");
        }
        self.applied_ssn = Some(want);
    }

    fn maybe_establish(&mut self, newest: &Ruleset) {
        let known = gate_shmem::KNOWN_TERM.get().load(Ordering::Acquire);
        let deposed = self.pledge.term > newest.term || known > newest.term.0;
        if deposed {
            if gate_shmem::fence_open() {
                log!(
                    "pg_ha: fence closed: a higher term ({known}) than this leader's ({}) exists",
                    newest.term
                );
            }
            gate_shmem::depose();
            return;
        }
        // A leader that lost its pledge file may have pledged to a higher term before: until it has
        // relearned its term, it is as good as deposed (it neither lets standbys stream nor counts
        // itself toward a majority that confirms its term).
        if self.pledge.must_relearn {
            gate_shmem::depose();
            return;
        }
        if gate_shmem::fence_open() || self.switching {
            return;
        }
        if self.failpoint == "candidate_never_establish" {
            return;
        }
        // A leader restarted after it was replaced while down (a failover, or ha.unsafe_force_leader
        // on a survivor) must hear every peer once before members of its old cohort, which may not
        // have seen the newer term yet either, can confirm it: the newer leader's answer deposes it.
        if !self.peers_heard {
            return;
        }
        // A majority of the cohort (this node included) must report no pledge above our term: then no
        // coordinator can have recruited a quorum for a higher term (recruit quorums are majorities).
        let n = newest.cohort.len();
        let agreeing = 1 + newest
            .cohort
            .keys()
            .filter(|m| m.as_str() != self.node)
            .filter(|m| {
                self.peer_terms
                    .get(m.as_str())
                    .is_some_and(|t| *t <= newest.term.0)
            })
            .count();
        if agreeing * 2 > n {
            // No higher term can exist: standbys may stream from this node (establishment needs them;
            // a restarted primary holds replication connections until now, see admission.rs).
            super::admission::allow_streaming();
        }
        // The rules must also hold for what this leader already has (its term's ruleset row, I5/step 7):
        // under the commit rules in force, and under the newest row and its prior membership (a row
        // built on a change that may not have been acknowledged; found by the model checker).
        let flushed = self.flushed(local::wal_state().flush_lsn);
        let durable = self
            .rules
            .as_ref()
            .map(|r| {
                r.durable_lsn(&flushed)
                    .min(newest.establishment_lsn(&flushed))
            })
            .unwrap_or(Lsn::ZERO);
        if durable < Lsn(self.establish_lsn) {
            return;
        }
        if agreeing * 2 > n {
            gate_shmem::open_as_established();
            super::admission::established();
            log!(
                "pg_ha: established as leader of term {} (ruleset v{}); {} of {} members confirm no higher term; writes allowed",
                newest.term,
                newest.version,
                agreeing,
                n
            );
        }
    }

    /// A standby streams under its node name, so the leader's walsender (and `synchronous_standby_names`)
    /// can tell who flushed what; below its rewind floor under a name that does not count (floor.rs).
    fn ensure_application_name(&mut self) {
        let conninfo =
            BackgroundWorker::transaction(|| catalog::show("primary_conninfo")).unwrap_or_default();
        if conninfo.is_empty() {
            return;
        }
        let want = format!("application_name={}", self.stream_name());
        if conninfo.split_whitespace().any(|kv| kv == want) {
            return;
        }
        let fixed: Vec<&str> = conninfo
            .split_whitespace()
            .filter(|kv| !kv.starts_with("application_name="))
            .collect();
        let new = format!("{} {want}", fixed.join(" "));
        BackgroundWorker::transaction(|| alter_system::set("primary_conninfo", Some(&new)));
        if self.pledge.counts_toward_durability() {
            log!("pg_ha: primary_conninfo now names this node ({want}) so its flushes count under its name");
        } else {
            log!("pg_ha: primary_conninfo now streams as {want}: this node's flushes must not count toward durability");
        }
    }

    /// Handle a request from a SQL function (at most one at a time).
    pub fn handle_request(
        &mut self,
        peers: &[shmem::PeerSlot],
        fresh: &[crate::proto::StatusReply],
    ) {
        let Some((id, kind, arg)) = request::take() else {
            return;
        };
        log!("pg_ha: request {kind:?}({arg})");
        let result = match kind {
            Kind::Bootstrap => self.bootstrap(),
            Kind::Switchover => self.begin_switchover(id, &arg, peers),
            Kind::Failover => self.begin_failover(id, &arg),
            Kind::UnsafeForceLeader => self.unsafe_force_leader(&arg, fresh),
            _ => self.change(id, kind, &arg, peers),
        };
        match result {
            Ok(Some(msg)) => request::answer(id, Ok(msg)),
            Ok(None) => {} // answered when the change is in force
            Err((state, msg)) => {
                log!("pg_ha: request {kind:?}({arg}) refused: {msg}");
                request::answer(id, Err((state.to_string(), msg)));
            }
        }
    }

    /// `ha.switchover(target)`: check, close the fence, and let the worker run the switchover.
    fn begin_switchover(
        &mut self,
        id: u64,
        target: &str,
        peers: &[shmem::PeerSlot],
    ) -> Result<Option<String>, (&'static str, String)> {
        let Some(rules) = self.rules.as_ref() else {
            return Err((
                "55000",
                "this node is not the leader; run ha.switchover() on the leader".into(),
            ));
        };
        if !gate_shmem::fence_open() {
            return Err((
                "55000",
                "this node is not (yet) the established leader".into(),
            ));
        }
        if rules.pending().is_some() {
            return Err((
                "55006",
                "a ruleset change is in flight; retry when it is in force".into(),
            ));
        }
        let current = rules.current().clone();
        let own_flush = local::wal_state().flush_lsn;
        let flushed = self.flushed(own_flush);
        let reachable: BTreeSet<String> = peers
            .iter()
            .filter(|p| p.used && p.reachable)
            .map(|p| p.node_name.get())
            .collect();
        // Healthy followers: members, reachable, streaming from this leader, caught up.
        let healthy: Vec<(String, u64)> = current
            .cohort
            .keys()
            .filter(|m| m.as_str() != self.node && reachable.contains(m.as_str()))
            .filter_map(|m| {
                flushed
                    .get(m)
                    .map(|l| (m.as_str().to_string(), own_flush.saturating_sub(l.0)))
            })
            .filter(|(_, lag)| *lag <= CAUGHT_UP_BYTES)
            .collect();
        let target = if target.is_empty() {
            healthy
                .iter()
                .min_by_key(|(n, lag)| (*lag, n.clone()))
                .map(|(n, _)| n.clone())
                .ok_or(("55000", "no healthy follower to switch over to".to_string()))?
        } else {
            if target == self.node {
                return Err(("22023", format!("{target} is already the leader")));
            }
            if !current.is_member(&NodeId::new(target)) {
                return Err(("22023", format!("{target} is not a cohort member")));
            }
            match healthy.iter().find(|(n, _)| n == target) {
                Some(_) => target.to_string(),
                None => {
                    let why = match flushed.get(&NodeId::new(target)) {
                        Some(l) => format!("{} bytes behind", own_flush.saturating_sub(l.0)),
                        None => "not streaming from the leader".into(),
                    };
                    return Err((
                        "55000",
                        format!("{target} is not a healthy follower ({why})"),
                    ));
                }
            }
        };
        // The new cohort must be able to commit: the reachable members (this node included, it will
        // follow) must satisfy the policy.
        let mut can: BTreeSet<NodeId> = healthy
            .iter()
            .map(|(n, _)| NodeId::new(n.clone()))
            .collect();
        can.insert(NodeId::new(self.node.clone()));
        if !current.satisfiable_with(&can) {
            return Err(("55000", format!(
                "the healthy members {{{}}} cannot satisfy policy {}; no switchover while the cohort cannot commit",
                can.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", "),
                current.policy
            )));
        }
        log!("pg_ha: switchover to {target}: fence closed (no new writes); waiting for {target} to catch up");
        gate_shmem::set_fence(false);
        self.switching = true;
        self.switch_request = Some((id, target));
        Ok(None)
    }

    /// `ha.failover(target)`: only when this node cannot reach an established leader.
    fn begin_failover(
        &mut self,
        id: u64,
        target: &str,
    ) -> Result<Option<String>, (&'static str, String)> {
        if self.rules.is_some() && gate_shmem::fence_open() {
            return Err((
                "55000",
                "this node is the established leader; use ha.switchover()".into(),
            ));
        }
        self.failover_request = Some((id, target.to_string()));
        Ok(None)
    }

    /// The worker reports how a switchover or forced failover ended.
    pub fn request_done(&mut self, id: u64, result: Result<String, String>) {
        self.switching = false;
        self.answered_at = Some(Instant::now());
        match result {
            Ok(leader) => {
                log!("pg_ha: leadership change done: {leader} leads");
                request::answer(id, Ok(leader));
            }
            Err(e) => {
                log!("pg_ha: leadership change failed: {e}");
                request::answer(id, Err(("55000".into(), e)));
            }
        }
    }

    fn bootstrap(&mut self) -> Result<Option<String>, (&'static str, String)> {
        let wal = local::wal_state();
        if wal.in_recovery {
            return Err((
                "55000",
                "ha.bootstrap() must run on a primary, and this node is a standby".into(),
            ));
        }
        let existing = BackgroundWorker::transaction(catalog::newest_ruleset);
        if let Some(r) = existing {
            return Err((
                "55000",
                format!(
                    "a pg_ha cluster already exists: ruleset v{} term {} led by {}",
                    r.version, r.term, r.leader
                ),
            ));
        }
        if self.pledge.term.0 != 0 || self.pledge.must_relearn {
            return Err(("55000", format!(
                "this node already belongs to a pg_ha cluster (pledged to term {}); refusing a second bootstrap",
                self.pledge.term
            )));
        }
        let cohort: BTreeMap<NodeId, Zone> =
            [(NodeId::new(self.node.clone()), Zone::new(self.zone.clone()))].into();
        let r = Ruleset::new(
            Term(1),
            1,
            NodeId::new(self.node.clone()),
            cohort,
            Policy::Zones(1),
        )
        .map_err(|e| ("XX000", e.to_string()))?;
        // The pledge first: from here on this node is managed (fenced at every start until established).
        self.persist_pledge(PledgeState {
            term: Term(1),
            coordinator: Some(NodeId::new(self.node.clone())),
            ..PledgeState::fresh()
        })
        .map_err(|e| ("58000", e))?;
        BackgroundWorker::transaction(|| {
            catalog::insert_row(&catalog::RulesetRow::from_core(&r), "bootstrap")
        })
        .map_err(|e| ("XX000", format!("cannot write the ruleset row: {e}")))?;
        log!(
            "pg_ha: bootstrap: {} is leader of term 1, cohort [{}], policy zones 1 (the leader alone)",
            self.node,
            self.node
        );
        Ok(Some(format!("{} is leader of term 1", self.node)))
    }

    fn change(
        &mut self,
        id: u64,
        kind: Kind,
        arg: &str,
        peers: &[shmem::PeerSlot],
    ) -> Result<Option<String>, (&'static str, String)> {
        let Some(rules) = self.rules.as_ref() else {
            return Err((
                "55000",
                "this node is not the leader; run cluster changes on the leader".into(),
            ));
        };
        if !gate_shmem::fence_open() {
            return Err((
                "55000",
                "this node is not (yet) the established leader".into(),
            ));
        }
        let own_flush = local::wal_state().flush_lsn;
        let flushed = self.flushed(own_flush);
        // Nodes that may join: members, and observers streaming from this leader that are caught up.
        let mut known: BTreeSet<NodeId> = rules.current().cohort.keys().cloned().collect();
        let mut zones: BTreeMap<String, String> = BTreeMap::new();
        let mut lagging: BTreeMap<String, u64> = BTreeMap::new();
        for p in peers
            .iter()
            .filter(|p| p.used && p.ever_seen && p.reachable)
        {
            let name = p.node_name.get();
            zones.insert(name.clone(), p.zone.get());
            match flushed.get(&NodeId::new(name.clone())) {
                Some(l) if own_flush.saturating_sub(l.0) <= CAUGHT_UP_BYTES => {
                    known.insert(NodeId::new(name));
                }
                Some(l) => {
                    lagging.insert(name, own_flush.saturating_sub(l.0));
                }
                None => {}
            }
        }
        let change = match kind {
            Kind::AddMember => {
                if let Some(bytes) = lagging.get(arg) {
                    return Err(("55000", format!(
                        "{arg} is {bytes} bytes behind the leader; it can join once it has caught up (within {CAUGHT_UP_BYTES} bytes)"
                    )));
                }
                if !known.contains(&NodeId::new(arg)) && zones.contains_key(arg) {
                    return Err(("55000", format!(
                        "{arg} is reachable but does not stream from this leader under its name; it cannot join yet"
                    )));
                }
                Change::AddMember {
                    node: NodeId::new(arg),
                    zone: Zone::new(zones.get(arg).cloned().unwrap_or_else(|| "default".into())),
                }
            }
            Kind::RemoveMember => Change::RemoveMember(NodeId::new(arg)),
            Kind::SetPolicy => Change::SetPolicy(
                arg.parse::<Policy>()
                    .map_err(|e| ("22023", format!("invalid policy {arg:?}: {e}")))?,
            ),
            Kind::Bootstrap | Kind::Switchover | Kind::Failover | Kind::UnsafeForceLeader => {
                unreachable!()
            }
        };
        let next = rules
            .propose(&known, &change)
            .map_err(|e| ("55000", e.to_string()))?;
        // The members that can acknowledge now (this leader and the caught-up followers) must satisfy
        // the new ruleset, or every commit would wait until some return.
        let mut healthy: BTreeSet<NodeId> = known
            .iter()
            .filter(|n| {
                flushed
                    .get(*n)
                    .is_some_and(|l| own_flush.saturating_sub(l.0) <= CAUGHT_UP_BYTES)
            })
            .cloned()
            .collect();
        healthy.insert(NodeId::new(self.node.clone()));
        if !next.satisfiable_with(&healthy) {
            return Err(("55000", format!(
                "the healthy members {{{}}} cannot satisfy policy {} over cohort {{{}}}; commits would wait until more members return",
                healthy.iter().filter(|n| next.is_member(n)).map(|n| n.as_str()).collect::<Vec<_>>().join(", "),
                next.policy,
                next.cohort.keys().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        let reason = match &change {
            Change::AddMember { node, .. } => format!("add_member {node}"),
            Change::RemoveMember(n) => format!("remove_member {n}"),
            Change::SetPolicy(p) => format!("set_policy {p}"),
        };
        // I5: the joint rules first (gate and synchronous_standby_names), the row only once every
        // walsender runs under them (progress_change): no commit after the row can be acknowledged, or
        // become visible, under the old rules alone.
        let rules = self.rules.as_mut().expect("checked");
        rules
            .announce(next.clone())
            .map_err(|e| ("55000", e.to_string()))?;
        gate_shmem::publish_rules(Some(rules));
        let from = rules.current().version;
        self.sync_ssn();
        log!(
            "pg_ha: {reason}: ruleset v{} announced: every commit now needs v{from} and v{}; the row is written once every walsender runs under synchronous_standby_names '{}'",
            next.version,
            next.version,
            self.applied_ssn.clone().unwrap_or_default()
        );
        self.in_flight = Some(InFlight {
            request: Some(id),
            reason,
            started: Instant::now(),
            stage: Stage::Announced(next),
        });
        self.progress_change();
        Ok(None)
    }

    /// Every walsender has loaded the wanted `synchronous_standby_names`: its own parsed setting shows
    /// as `pg_stat_replication.sync_priority` (`sync_state` is computed with the caller's setting).
    fn walsenders_run(&self, q: &SyncQuorum) -> Result<(), String> {
        let rows = BackgroundWorker::transaction(catalog::walsender_priorities);
        let behind: Vec<String> = rows
            .iter()
            .filter(|(name, prio)| *prio != q.priority_of(&NodeId::new(name.clone())))
            .map(|(name, prio)| {
                format!(
                    "{name} (priority {prio}, wants {})",
                    q.priority_of(&NodeId::new(name.clone()))
                )
            })
            .collect();
        if behind.is_empty() {
            Ok(())
        } else {
            Err(behind.join(", "))
        }
    }

    /// Move an announced change on: write its row once the walsenders run under the joint setting;
    /// give it up if they do not within `SSN_CONFIRM_TIMEOUT`; hold it at the failpoint.
    fn progress_change(&mut self) {
        let Some(f) = self.in_flight.as_ref() else {
            return;
        };
        match &f.stage {
            Stage::Written => {}
            Stage::Paused(lsn) => {
                if self.failpoint != "change_pause_after_row" {
                    let lsn = *lsn;
                    self.row_written(lsn);
                }
            }
            Stage::Announced(next) => {
                let next = next.clone();
                let (reason, started) = (f.reason.clone(), f.started);
                let Some(q) = self.wanted_quorum() else {
                    return; // not keeping the rules (cannot happen on the leading path)
                };
                if let Err(behind) = self.walsenders_run(&q) {
                    if started.elapsed() > SSN_CONFIRM_TIMEOUT {
                        self.give_up_change(format!(
                            "walsenders did not load synchronous_standby_names '{}' within {} s: {behind}",
                            q.setting(),
                            SSN_CONFIRM_TIMEOUT.as_secs()
                        ));
                    }
                    return;
                }
                let row = catalog::RulesetRow::from_core(&next);
                let written = BackgroundWorker::transaction(|| {
                    catalog::insert_row(&row, &reason).map(|_| ())
                })
                .map(|_| unsafe { pg_sys::XactLastCommitEnd });
                let lsn = match written {
                    Ok(lsn) => lsn,
                    Err(e) => {
                        self.give_up_change(format!("cannot write the ruleset row: {e}"));
                        return;
                    }
                };
                if self.failpoint == "change_pause_after_row" {
                    log!(
                        "pg_ha: failpoint change_pause_after_row: {reason}: ruleset v{} written at {}; the change goes on once ha.debug_failpoint is cleared",
                        next.version,
                        Lsn(lsn)
                    );
                    if let Some(f) = self.in_flight.as_mut() {
                        f.stage = Stage::Paused(lsn);
                    }
                    return;
                }
                self.row_written(lsn);
            }
        }
    }

    /// An announced change cannot go on: withdraw the joint rules and answer its request.
    fn give_up_change(&mut self, why: String) {
        let Some(f) = self.in_flight.take() else {
            return;
        };
        if let Some(rules) = self.rules.as_mut() {
            rules.withdraw();
            gate_shmem::publish_rules(Some(rules));
        }
        self.sync_ssn();
        log!("pg_ha: {}: given up: {why}", f.reason);
        if let Some(id) = f.request {
            request::answer(id, Err(("55000".into(), format!("{}: {why}", f.reason))));
        }
    }

    /// The change's row is written at `lsn`: it is in flight until durable under the rules in force.
    fn row_written(&mut self, lsn: u64) {
        let Some(rules) = self.rules.as_mut() else {
            return;
        };
        rules.written(Lsn(lsn));
        gate_shmem::publish_rules(Some(rules));
        let (from, to) = (
            rules.current().version,
            rules.pending().map(|p| p.to.version).unwrap_or_default(),
        );
        let reason = match self.in_flight.as_mut() {
            Some(f) => {
                f.stage = Stage::Written;
                f.reason.clone()
            }
            None => String::new(),
        };
        log!(
            "pg_ha: {reason}: wrote ruleset v{to} at {}; in force once durable under v{from}",
            Lsn(lsn)
        );
    }
}
