//! The agent's asynchronous side: the tonic server for the peer service, the peer poller, the token
//! check, and the HTTP responder for metrics and health endpoints. Runs on tokio threads and never calls Postgres: it reads a [`Shared`] snapshot the main
//! thread publishes and reports [`Event`]s back to the main thread through a channel.

pub mod auth;
pub mod coordinator;
pub mod http;
pub mod metrics;
pub mod pledge_file;
pub mod poller;
pub mod runtime;
pub mod server;
pub mod wire;

use crate::config::AgentAddr;
use crate::proto::{PledgeReply, PledgeRequest, PromoteReply, PromoteRequest, StatusReply};
use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::mpsc::Sender;
use std::time::Instant;

/// This node as the main thread last saw it; served by the `Status` RPC.
#[derive(Clone, Debug, Default)]
pub struct NodeSnapshot {
    pub reply: StatusReply,
    /// False until the main thread has published a first snapshot.
    pub ready: bool,
    /// The newest ruleset row this node holds, in the core's form (what a coordinator starts from).
    pub ruleset: Option<pg_ha_core::Ruleset>,
    /// What only the main thread can read, for `/metrics` and the health endpoints.
    pub facts: LocalFacts,
}

/// Facts about this node beyond the `Status` reply, published with each snapshot for the metrics
/// endpoint (which must not touch Postgres itself).
#[derive(Clone, Debug, Default)]
pub struct LocalFacts {
    /// When the main thread published this snapshot (a stale one means its loop is stuck).
    pub published: Option<Instant>,
    /// Rows of the replicated ruleset history this node holds with reason `failover` / `switchover`.
    pub failovers: u64,
    pub switchovers: u64,
    /// Unix time (s) of the first row of the newest term: when the current leadership began.
    pub last_leadership_change: Option<f64>,
    /// Pledge requests this agent refused since it started.
    pub pledges_refused: u64,
    /// Leader only: flush position of each standby streaming from it, by node name (walsenders).
    pub follower_flush: BTreeMap<String, u64>,
    /// Standby: the WAL receiver is streaming.
    pub wal_receiver_streaming: bool,
    /// A failed rejoin left `pg_ha.rejoin_failed`: its text (the node is unhealthy).
    pub rejoin_failed: Option<String>,
}

/// What this agent last heard from one peer address (written by the poller).
#[derive(Clone, Debug, Default)]
pub struct PeerView {
    pub reply: Option<StatusReply>,
    /// When the last successful answer arrived.
    pub last_ok: Option<Instant>,
    /// The latest poll got an answer (`reply` may be older when this is false).
    pub reachable: bool,
}

/// Work only the main thread can do (it touches Postgres or the pledge file); the answer goes back
/// on the oneshot.
#[derive(Debug)]
pub enum Command {
    Pledge {
        req: PledgeRequest,
        reply: tokio::sync::oneshot::Sender<PledgeReply>,
    },
    Promote {
        req: Box<PromoteRequest>,
        reply: tokio::sync::oneshot::Sender<PromoteReply>,
    },
}

/// State shared between the main thread (writer) and the tokio tasks (readers).
pub struct Shared {
    pub snapshot: RwLock<NodeSnapshot>,
    /// The cluster token; `None` while `ha.auth_token_file` is unset or unreadable (then every call is
    /// rejected and nothing is sent to peers).
    pub token: RwLock<Option<String>>,
    pub peers: RwLock<Vec<AgentAddr>>,
    pub own_address: AgentAddr,
    pub poll_interval: RwLock<std::time::Duration>,
    pub failover_timeout: RwLock<std::time::Duration>,
    pub peer_views: RwLock<BTreeMap<AgentAddr, PeerView>>,
    pub commands: Mutex<Sender<Command>>,
    /// This agent's detection view, served in Status (`leader_lost`).
    pub leader_lost: AtomicBool,
    /// The highest term this agent's coordinator has raced for: its next attempt goes above it even when
    /// the peers' views are stale (one agent never reuses a term; the nodes' one-attempt-per-term rule
    /// makes a reuse after a restart harmless, I1).
    pub highest_term_used: AtomicU64,
    pub started: Instant,
    /// `ha.debug_failpoint` (testing only).
    pub failpoint: RwLock<String>,
    /// `ha.metrics_address` (`None` = off); the HTTP responder rebinds when it changes.
    pub metrics_address: tokio::sync::watch::Sender<Option<AgentAddr>>,
}

impl Shared {
    /// Wake the main thread now (tokio threads block every signal, so the process' SIGUSR1 lands on
    /// the main thread, whose handler sets its latch).
    pub fn wake_main(&self) {
        // SAFETY: signalling our own process.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGUSR1);
        }
    }

    /// Hand a command to the main thread.
    pub fn command(&self, c: Command) {
        let _ = self.commands.lock().send(c);
        self.wake_main();
    }

    /// The reachable peer that says it is `name`.
    pub fn address_of(&self, name: &str) -> Option<AgentAddr> {
        self.peer_views
            .read()
            .iter()
            .find(|(_, v)| v.reply.as_ref().is_some_and(|r| r.node_name == name))
            .map(|(a, _)| a.clone())
    }
}

/// What the tokio side tells the main thread.
#[derive(Debug)]
pub enum Event {
    Listening(String),
    PeerAnswered {
        addr: AgentAddr,
        reply: StatusReply,
    },
    PeerFailed {
        addr: AgentAddr,
        error: String,
    },
    AuthRejected {
        remote: String,
        rpc: &'static str,
        reason: &'static str,
    },
    /// A coordinator decision or step, logged by the main thread as `LOG: pg_ha: ...`.
    Log(String),
    /// A switchover or forced failover asked by SQL finished: answer request `id`.
    RequestDone {
        id: u64,
        result: Result<String, String>,
    },
    /// A task cannot go on (bind failure, panic): the main loop exits so the postmaster restarts it.
    Fatal(String),
}

pub type Events = Sender<Event>;
