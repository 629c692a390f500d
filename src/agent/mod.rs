//! The agent's asynchronous side: the tonic server for the peer service, the peer poller, and the
//! token check. Runs on tokio threads and never calls Postgres: it reads a [`Shared`] snapshot the main
//! thread publishes and reports [`Event`]s back to the main thread through a channel.

pub mod auth;
pub mod pledge_file;
pub mod poller;
pub mod runtime;
pub mod server;

use crate::config::AgentAddr;
use crate::proto::StatusReply;
use parking_lot::RwLock;
use std::sync::mpsc::Sender;

/// This node as the main thread last saw it; served by the `Status` RPC.
#[derive(Clone, Debug, Default)]
pub struct NodeSnapshot {
    pub reply: StatusReply,
    /// False until the main thread has published a first snapshot.
    pub ready: bool,
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
    /// A task cannot go on (bind failure, panic): the main loop exits so the postmaster restarts it.
    Fatal(String),
}

pub type Events = Sender<Event>;
