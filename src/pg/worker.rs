//! The agent's main thread: the background worker entry point. It owns everything that touches
//! Postgres (signals, GUCs, SPI, shared memory, logging), runs the tokio side (`crate::agent`) on a
//! runtime whose threads never see a signal, and talks to it through a snapshot and an event channel.

use super::{catalog, gate_shmem, gucs, hooks, local, shmem, steward::Steward};
use crate::agent::{self, Command, Event, LocalFacts, NodeSnapshot, Shared};
use crate::config::AgentAddr;
use crate::proto::StatusReply;
use parking_lot::RwLock;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use std::collections::HashMap;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Main-loop period: how quickly events from the tokio side are handled.
const TICK: Duration = Duration::from_millis(50);

/// Register the agent with the postmaster (from `_PG_init`, under shared_preload_libraries).
pub fn register() {
    BackgroundWorkerBuilder::new("pg_ha agent")
        .set_type("pg_ha agent")
        .set_function("pg_ha_agent_main")
        .set_library("pg_ha")
        .enable_spi_access()
        // After enable_spi_access (which forces RecoveryFinished): the agent must run on standbys too.
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(Duration::from_secs(2)))
        .load();
}

fn poll_interval(failover_timeout_ms: u64) -> Duration {
    Duration::from_millis((failover_timeout_ms / 8).clamp(50, 500))
}

fn load_token(settings: &gucs::AgentSettings) -> Option<String> {
    match &settings.auth_token_file {
        None => {
            warning!("pg_ha: ha.auth_token_file is not set: every agent RPC will be refused and peers will not be polled");
            None
        }
        Some(path) => match agent::auth::read_token_file(std::path::Path::new(path)) {
            Ok(t) => Some(t),
            Err(e) => {
                warning!("pg_ha: ha.auth_token_file: {e}; every agent RPC will be refused");
                None
            }
        },
    }
}

/// Failpoint `agent_hold_at_start` (testing only): the agent does nothing until the file
/// `pg_ha_failpoint_release` appears in the data directory (it is then removed), so a test can look at a
/// node whose agent has not decided anything yet. False if the agent was asked to stop meanwhile.
fn hold_at_start() -> bool {
    // SAFETY: DataDir is set before any worker starts; plain read.
    let data_dir = unsafe { std::ffi::CStr::from_ptr(pg_sys::DataDir) }
        .to_string_lossy()
        .into_owned();
    let release = std::path::Path::new(&data_dir).join("pg_ha_failpoint_release");
    log!(
        "pg_ha: failpoint agent_hold_at_start: holding until {} exists",
        release.display()
    );
    while !release.exists() {
        if !BackgroundWorker::wait_latch(Some(Duration::from_millis(50))) {
            return false;
        }
    }
    let _ = std::fs::remove_file(&release);
    log!("pg_ha: failpoint agent_hold_at_start: released");
    true
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_ha_agent_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(Some("postgres"), None);
    hooks::IS_AGENT.store(true, std::sync::atomic::Ordering::Relaxed);

    let settings = match gucs::agent_settings() {
        Ok(s) => s,
        Err(e) => {
            // Not restartable into something better: say so clearly and wait for a reload or shutdown.
            warning!("pg_ha: agent cannot start: {e}");
            while BackgroundWorker::wait_latch(Some(Duration::from_secs(5))) {
                if BackgroundWorker::sighup_received() {
                    // SAFETY: main thread.
                    unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
                    if gucs::agent_settings().is_ok() {
                        log!("pg_ha: settings fixed; restarting the agent");
                        // Exit non-zero so the postmaster restarts us with the new settings.
                        unsafe { pg_sys::proc_exit(1) };
                    }
                }
            }
            return;
        }
    };
    log!(
        "pg_ha: agent starting: node {} zone {} listening on {}, peers [{}], failover_timeout {} ms",
        settings.node_name,
        settings.zone,
        settings.agent_address,
        settings
            .peers
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        settings.failover_timeout_ms
    );

    if settings.failpoint == "agent_hold_at_start" && !hold_at_start() {
        return;
    }
    let (cmd_tx, cmd_rx) = std::sync::mpsc::channel::<Command>();
    let shared = Arc::new(Shared {
        snapshot: RwLock::new(NodeSnapshot::default()),
        token: RwLock::new(load_token(&settings)),
        peers: RwLock::new(settings.peers.clone()),
        own_address: settings.agent_address.clone(),
        poll_interval: RwLock::new(poll_interval(settings.failover_timeout_ms)),
        failover_timeout: RwLock::new(Duration::from_millis(settings.failover_timeout_ms)),
        peer_views: RwLock::new(Default::default()),
        commands: parking_lot::Mutex::new(cmd_tx),
        leader_lost: std::sync::atomic::AtomicBool::new(false),
        highest_term_used: std::sync::atomic::AtomicU64::new(0),
        started: Instant::now(),
        failpoint: RwLock::new(settings.failpoint.clone()),
        metrics_address: tokio::sync::watch::Sender::new(settings.metrics_address.clone()),
    });
    let (ev_tx, ev_rx) = std::sync::mpsc::channel::<Event>();
    let rt = match agent::runtime::build() {
        Ok(rt) => rt,
        Err(e) => {
            pgrx::error!("pg_ha: cannot start the agent's runtime: {e}");
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    agent::runtime::spawn_supervised(
        &rt,
        "server",
        ev_tx.clone(),
        agent::server::serve(shared.clone(), ev_tx.clone(), stop_rx.clone()),
    );
    agent::runtime::spawn_supervised(
        &rt,
        "poller",
        ev_tx.clone(),
        agent::poller::run(
            shared.clone(),
            ev_tx.clone(),
            settings.node_name.clone(),
            stop_rx.clone(),
        ),
    );

    agent::runtime::spawn_supervised(
        &rt,
        "coordinator",
        ev_tx.clone(),
        agent::coordinator::run(
            shared.clone(),
            ev_tx.clone(),
            settings.node_name.clone(),
            stop_rx.clone(),
        ),
    );
    agent::runtime::spawn_supervised(
        &rt,
        "metrics",
        ev_tx.clone(),
        agent::http::run(shared.clone(), ev_tx.clone(), stop_rx.clone()),
    );
    let mut steward = Steward::new(&settings.node_name, &settings.zone);
    steward.failpoint = settings.failpoint.clone();
    steward.reclone = settings.reclone_on_rewind_failure;
    steward.systemd_unit = settings.systemd_unit.clone();
    steward.failover_timeout = Duration::from_millis(settings.failover_timeout_ms);
    if !settings.failpoint.is_empty() {
        warning!(
            "pg_ha: ha.debug_failpoint = '{}' (testing only)",
            settings.failpoint
        );
    }
    gate_shmem::AGENT_PID.get().store(
        std::process::id() as i32,
        std::sync::atomic::Ordering::Release,
    );
    let mut state = MainLoop {
        events: ev_tx.clone(),
        settings,
        shared,
        steward,
        rows: Vec::new(),
        peer_state: HashMap::new(),
        auth_log: HashMap::new(),
        history: None,
        pledges_refused: 0,
    };
    {
        let mut t = shmem::PEERS.exclusive();
        *t = shmem::PeerTable::default();
        t.agent_pid = std::process::id() as i32;
    }

    // Exit code 1 even on SIGTERM: a worker that exits 0 is never restarted, and an agent stopped by
    // pg_terminate_backend must come back. At shutdown the postmaster restarts nothing anyway.
    let exit_code = 1;
    while BackgroundWorker::wait_latch(Some(TICK)) {
        if BackgroundWorker::sighup_received() {
            state.reload();
        }
        state.refresh_self();
        if let Err(fatal) = state.drain(&ev_rx) {
            pgrx::log!("pg_ha: agent stopping after a fatal error: {fatal}");
            break;
        }
        while let Ok(cmd) = cmd_rx.try_recv() {
            match cmd {
                Command::Pledge { req, reply } => {
                    let answer = state.steward.handle_pledge(&req);
                    if !answer.accepted {
                        state.pledges_refused += 1;
                    }
                    let _ = reply.send(answer);
                }
                Command::Promote { req, reply } => {
                    let answer = state.steward.handle_promote(&req);
                    let promoted = answer.ok;
                    let _ = reply.send(answer);
                    if promoted {
                        // The new term's row was just written: this pass must not act on the rows read
                        // before it (a re-elected leader would adopt its old ruleset and, its pledge
                        // being above that row's term, depose itself).
                        state.refresh_self();
                    }
                }
            }
        }
        let fresh = state.fresh_peers();
        state.steward.peers_heard = state.peers_heard();
        state.steward.tick(&state.rows, &fresh);
        let peers = shmem::PEERS.share().slots;
        state.steward.handle_request(&peers, &fresh);
        state.spawn_leadership_changes(rt.handle());
        shmem::PEERS.exclusive().agent_heartbeat_us = local::now_us();
    }
    gate_shmem::AGENT_PID
        .get()
        .store(0, std::sync::atomic::Ordering::Release);
    let _ = stop_tx.send(true);
    agent::runtime::shutdown(rt);
    shmem::PEERS.exclusive().agent_heartbeat_us = 0;
    log!("pg_ha: agent stopped");
    // SAFETY: main thread; a non-zero exit makes the postmaster restart the worker after its restart
    // time.
    unsafe { pg_sys::proc_exit(exit_code) };
}

struct MainLoop {
    events: agent::Events,
    settings: gucs::AgentSettings,
    shared: Arc<Shared>,
    steward: Steward,
    /// The newest two ruleset rows, newest first (re-read every pass).
    rows: Vec<catalog::RulesetRow>,
    /// Per peer address: reachable or not at the last report (to log only transitions).
    peer_state: HashMap<AgentAddr, bool>,
    /// Per remote: when a rejection was last logged, and how many were suppressed since.
    auth_log: HashMap<String, (Instant, u64)>,
    /// Leadership changes in the history, for the metrics endpoint; re-read only when the newest row
    /// (version, term) changes.
    history: Option<((i64, i64), catalog::HistoryStats)>,
    /// Pledge requests refused since this agent started (metrics).
    pledges_refused: u64,
}

impl MainLoop {
    fn reload(&mut self) {
        // SAFETY: main thread.
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        match gucs::agent_settings() {
            Ok(s) => {
                if s.peers != self.settings.peers {
                    log!(
                        "pg_ha: ha.peers changed to [{}]",
                        s.peers
                            .iter()
                            .map(|p| p.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    // Forget what we knew about addresses no longer listed.
                    let mut t = shmem::PEERS.exclusive();
                    for slot in t.slots.iter_mut() {
                        if slot.used && !s.peers.iter().any(|p| p.to_string() == slot.address.get())
                        {
                            *slot = shmem::PeerSlot::default();
                        }
                    }
                    self.peer_state.retain(|a, _| s.peers.contains(a));
                }
                *self.shared.peers.write() = s.peers.clone();
                *self.shared.poll_interval.write() = poll_interval(s.failover_timeout_ms);
                *self.shared.failover_timeout.write() =
                    Duration::from_millis(s.failover_timeout_ms);
                *self.shared.token.write() = load_token(&s);
                *self.shared.failpoint.write() = s.failpoint.clone();
                if s.metrics_address != self.settings.metrics_address {
                    log!(
                        "pg_ha: ha.metrics_address changed to '{}'",
                        s.metrics_address
                            .as_ref()
                            .map(|a| a.to_string())
                            .unwrap_or_default()
                    );
                    self.shared
                        .metrics_address
                        .send_replace(s.metrics_address.clone());
                }
                self.steward.failpoint = s.failpoint.clone();
                self.steward.reclone = s.reclone_on_rewind_failure;
                self.steward.systemd_unit = s.systemd_unit.clone();
                self.steward.failover_timeout = Duration::from_millis(s.failover_timeout_ms);
                self.settings = s;
                log!("pg_ha: configuration reloaded");
            }
            Err(e) => warning!("pg_ha: configuration reload ignored: {e}"),
        }
    }

    /// Run a switchover or forced failover asked through SQL on the agent's runtime.
    fn spawn_leadership_changes(&mut self, rt: &tokio::runtime::Handle) {
        let known = self.shared.snapshot.read().ruleset.clone();
        if let Some((id, target)) = self.steward.switch_request.take() {
            let (shared, events, me) = (
                self.shared.clone(),
                self.events.clone(),
                self.settings.node_name.clone(),
            );
            match known {
                Some(known) => {
                    rt.spawn(async move {
                        let result = agent::coordinator::switchover(
                            shared,
                            events.clone(),
                            me,
                            known,
                            target,
                        )
                        .await;
                        let _ = events.send(Event::RequestDone { id, result });
                    });
                }
                None => self.steward.request_done(id, Err("no ruleset".into())),
            }
            return;
        }
        if let Some((id, target)) = self.steward.failover_request.take() {
            let (shared, events, me) = (
                self.shared.clone(),
                self.events.clone(),
                self.settings.node_name.clone(),
            );
            let Some(known) = self.shared.snapshot.read().ruleset.clone() else {
                self.steward.request_done(id, Err("no ruleset".into()));
                return;
            };
            if !self
                .shared
                .leader_lost
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                self.steward.request_done(
                    id,
                    Err(format!("the leader {} is reachable from here; use ha.switchover() for a planned change", known.leader)),
                );
                return;
            }
            rt.spawn(async move {
                let result =
                    agent::coordinator::forced_failover(shared, events.clone(), me, known, target)
                        .await;
                let _ = events.send(Event::RequestDone { id, result });
            });
        }
    }

    /// Every configured peer has answered or failed at least once since the agent started (or one
    /// failover timeout has passed: a peer whose calls hang never reports a failure).
    fn peers_heard(&self) -> bool {
        self.shared.started.elapsed() >= Duration::from_millis(self.settings.failover_timeout_ms)
            || self
                .settings
                .peers
                .iter()
                .filter(|a| **a != self.settings.agent_address)
                .all(|a| self.peer_state.contains_key(a))
    }

    /// Peers' latest answers that are recent enough to act on.
    fn fresh_peers(&self) -> Vec<StatusReply> {
        let limit = Duration::from_millis(self.settings.failover_timeout_ms);
        self.shared
            .peer_views
            .read()
            .values()
            .filter(|v| v.last_ok.is_some_and(|t| t.elapsed() < limit))
            .filter_map(|v| v.reply.clone())
            .collect()
    }

    /// Publish this node's own state for the `Status` RPC and the metrics endpoint.
    fn refresh_self(&mut self) {
        let cached = self.history;
        let (rows, paused, history) = BackgroundWorker::transaction(|| {
            let rows = catalog::newest_rows(2);
            let key = rows.first().map_or((0, 0), |r| (r.version, r.term));
            let history = match cached {
                Some((k, h)) if k == key => (k, h),
                _ => (key, catalog::history_stats()),
            };
            (rows, catalog::paused(), history)
        });
        self.rows = rows;
        self.history = Some(history);
        let newest = self.rows.first();
        let wal = local::wal_state();
        let member = newest.is_some_and(|r| r.cohort.contains(&self.settings.node_name));
        let role = if !wal.in_recovery {
            "leader"
        } else if member {
            "follower"
        } else {
            "observer"
        };
        let ruleset_term = newest.map_or(0, |r| r.term.max(0) as u64);
        let reply = StatusReply {
            node_name: self.settings.node_name.clone(),
            role: role.into(),
            term: ruleset_term.max(self.steward.pledge.term.0),
            timeline: wal.timeline,
            flush_lsn: wal.flush_lsn,
            replay_lsn: wal.replay_lsn,
            zone: self.settings.zone.clone(),
            member,
            in_recovery: wal.in_recovery,
            agent_address: self.settings.agent_address.to_string(),
            conninfo: self.settings.conninfo.clone(),
            system_identifier: wal.system_identifier,
            leader: newest.map(|r| r.leader.clone()).unwrap_or_default(),
            pledged_term: self.steward.pledge.term.0,
            ruleset_version: newest.map_or(0, |r| r.version.max(0) as u64),
            leader_lost: self
                .shared
                .leader_lost
                .load(std::sync::atomic::Ordering::Relaxed),
            established: !wal.in_recovery
                && gate_shmem::fence_open()
                && newest.is_some_and(|r| r.leader == self.settings.node_name),
            term_start_lsn: self.steward.term_start_lsn,
            paused,
            ruleset_term,
        };
        let ruleset = newest.and_then(|r| r.to_core());
        let facts = LocalFacts {
            published: Some(Instant::now()),
            failovers: history.1.failovers,
            switchovers: history.1.switchovers,
            last_leadership_change: history.1.newest_term_began,
            pledges_refused: self.pledges_refused,
            follower_flush: self.steward.follower_flush(),
            wal_receiver_streaming: wal.in_recovery && local::wal_receiver_streaming(),
            rejoin_failed: super::rejoin::failed(&self.steward.data_dir),
        };
        *self.shared.snapshot.write() = NodeSnapshot {
            reply,
            ready: true,
            ruleset,
            facts,
        };
    }

    fn drain(&mut self, rx: &Receiver<Event>) -> Result<(), String> {
        while let Ok(ev) = rx.try_recv() {
            match ev {
                Event::Listening(addr) => log!("pg_ha: agent listening on {addr}"),
                Event::Log(msg) => log!("pg_ha: {msg}"),
                Event::RequestDone { id, result } => self.steward.request_done(id, result),
                Event::Fatal(msg) => return Err(msg),
                Event::AuthRejected {
                    remote,
                    rpc,
                    reason,
                } => self.log_rejection(remote, rpc, reason),
                Event::PeerAnswered { addr, reply } => {
                    let own = self.shared.snapshot.read().reply.system_identifier;
                    if reply.system_identifier != own {
                        self.peer_failed(
                            addr,
                            format!(
                                "belongs to another cluster (system identifier {} is not ours, {})",
                                reply.system_identifier, own
                            ),
                        );
                    } else {
                        self.peer_answered(addr, reply);
                    }
                }
                Event::PeerFailed { addr, error } => self.peer_failed(addr, error),
            }
        }
        Ok(())
    }

    fn log_rejection(&mut self, remote: String, rpc: &str, reason: &str) {
        let now = Instant::now();
        let entry = self.auth_log.entry(remote.clone()).or_insert((now, 0));
        if entry.1 == 0 || now.duration_since(entry.0) >= Duration::from_secs(60) {
            let suppressed = if entry.1 > 1 {
                format!(" ({} more since the last report)", entry.1 - 1)
            } else {
                String::new()
            };
            log!("pg_ha: rejected {rpc} RPC from {remote}: {reason}{suppressed}");
            *entry = (now, 1);
        } else {
            entry.1 += 1;
        }
    }

    fn peer_answered(&mut self, addr: AgentAddr, r: StatusReply) {
        self.steward
            .peer_terms
            .insert(r.node_name.clone(), r.pledged_term);
        gate_shmem::KNOWN_TERM
            .get()
            .fetch_max(r.ruleset_term, std::sync::atomic::Ordering::AcqRel);
        if self.peer_state.insert(addr.clone(), true) != Some(true) {
            log!(
                "pg_ha: peer {} at {} is reachable: {} (term {}, timeline {}, flush {})",
                r.node_name,
                addr,
                r.role,
                r.term,
                r.timeline,
                local::lsn_text(r.flush_lsn)
            );
        }
        let mut t = shmem::PEERS.exclusive();
        let Some(slot) = slot_for(&mut t, &addr) else {
            return;
        };
        slot.reachable = true;
        slot.ever_seen = true;
        slot.member = r.member;
        slot.in_recovery = r.in_recovery;
        slot.node_name.set(&r.node_name);
        slot.role.set(&r.role);
        slot.zone.set(&r.zone);
        slot.leader.set(&r.leader);
        slot.last_error.set("");
        slot.term = r.term;
        slot.timeline = r.timeline;
        slot.flush_lsn = r.flush_lsn;
        slot.replay_lsn = r.replay_lsn;
        slot.last_seen_us = local::now_us();
    }

    fn peer_failed(&mut self, addr: AgentAddr, error: String) {
        // A peer that does not answer confirms nothing about terms.
        let name = shmem::PEERS
            .share()
            .slots
            .iter()
            .find(|s| s.used && s.address.get() == addr.to_string())
            .map(|s| s.node_name.get());
        if let Some(n) = name {
            self.steward.peer_terms.remove(&n);
        }
        if self.peer_state.insert(addr.clone(), false) != Some(false) {
            log!("pg_ha: peer at {addr} is unreachable: {error}");
        }
        let mut t = shmem::PEERS.exclusive();
        if let Some(slot) = slot_for(&mut t, &addr) {
            slot.reachable = false;
            slot.last_error.set(&error);
        }
    }
}

fn slot_for<'a>(t: &'a mut shmem::PeerTable, addr: &AgentAddr) -> Option<&'a mut shmem::PeerSlot> {
    let key = addr.to_string();
    let idx = t
        .slots
        .iter()
        .position(|s| s.used && s.address.get() == key)
        .or_else(|| t.slots.iter().position(|s| !s.used))?;
    let slot = &mut t.slots[idx];
    if !slot.used {
        *slot = shmem::PeerSlot::default();
        slot.used = true;
        slot.address.set(&key);
    }
    Some(slot)
}
