//! pg_test: the multi-node harness of pg_ha.
//!
//! It runs real PostgreSQL 15 clusters on loopback ports in a temp dir under /tmp, as the `postgres` OS account
//! (initdb and postgres refuse to run as root), and tears them down by PID, also when a test panics.
//!
//! ```no_run
//! use pg_test::{Cluster, ClusterSpec};
//! let cluster = Cluster::start(ClusterSpec::plain(3)).unwrap();
//! cluster.node(0).query_strings("CREATE TABLE t(x int)").unwrap();
//! ```
//!
//! Environment: `PG_TEST_KEEP=1` keeps the temp dir (and prints where it is); `PG_TEST_BINDIR` overrides
//! `/usr/lib/postgresql/15/bin`; `PG_TEST_OS_USER` overrides the `postgres` account.

pub mod agent;
pub mod bench;
pub mod campaign;
pub mod checker;
mod cluster;
mod conf;
mod error;
pub mod ha;
pub mod http;
mod load;
pub mod nemesis;
pub mod netns;
mod node;
mod pgcmd;
mod ports;
pub mod procs;
mod random;
pub mod session;
mod spec;
mod teardown;
mod wait;

pub use agent::{agent_pledge, agent_promote, agent_status, agent_status_async, pb, StatusReply};
pub use cluster::Cluster;
pub use error::{Error, Result};
pub use http::{http_get, HttpResponse, Metrics};
pub use load::{count_lost, write_load, write_load_with, Ack, LoadOptions, LoadReport, WriteLoad};
pub use nemesis::Nemesis;
pub use node::Node;
pub use ports::free_port;
pub use random::random_hex;
pub use spec::ClusterSpec;
pub use wait::{wait_until, wait_until_ok};
