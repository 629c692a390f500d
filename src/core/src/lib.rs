//! pg_ha's consensus core: the decisions of protocol.md's template as pure, deterministic code. No
//! Postgres, no network, no clock, no randomness: the agent feeds it what it observed and persists,
//! sends and executes what it returns (etcd raft's shape).
//!
//! One concept per module:
//! - [`types`]: node ids, zones, terms, LSNs (`X/Y`).
//! - [`policy`]: `any K` / `zones K`, parsed and as a predicate.
//! - [`ruleset`]: `(term, version, leader, cohort, policy)`, `durable`, `satisfiable`, `durable_lsn`.
//! - [`quorum`]: the recruit quorum rules and the Won / Pending / Lost tally.
//! - [`pledge`]: the node side (pledge state machine, rewind floor, lost file), `NodeReport`, the
//!   pledge file codec.
//! - [`position`]: whether the WAL position a standby would report covers every record it holds (its
//!   startup process has consumed its local WAL since the restart).
//! - [`coordinator`]: one leadership change (`Attempt`), failover and switchover.
//! - [`candidacy`]: discovery ranking and candidate choice (`Decision`).
//! - [`change`]: membership and policy changes, the leader's commit rules while one is pending.
//! - [`detection`]: when a coordinator may race.
//! - [`sync_quorum`]: what `synchronous_standby_names` says so Postgres' own wait implies the rules
//!   (one ruleset, or the joint rules while a change is in flight).
//! - [`rules`]: the rule switches (safe by default; broken variants exist for the model checker's
//!   mutation tests).

pub mod candidacy;
pub mod change;
pub mod coordinator;
pub mod detection;
pub mod pledge;
pub mod policy;
pub mod position;
pub mod quorum;
pub mod rules;
pub mod ruleset;
pub mod sync_quorum;
pub mod types;

pub use candidacy::{Decision, Discovery, Preferences};
pub use change::{propose, Change, ChangeError, CommitRules, Pending};
pub use coordinator::{Attempt, AttemptKind, ReplyEffect, ReplyError};
pub use detection::{leader_may_be_replaced, should_race};
pub use pledge::{
    decode, encode, CodecError, FollowRefusal, NodeReport, PledgeRecord, PledgeRefusal,
    PledgeState, PromoteRefusal, RewindFloor,
};
pub use policy::{Policy, PolicyParseError};
pub use position::{Consumed, LocalWal, LocalWalWatch, NotConsumed};
pub use quorum::Tally;
pub use rules::{RecruitRule, Rules};
pub use ruleset::{Prior, Ruleset, RulesetError};
pub use sync_quorum::SyncQuorum;
pub use types::{Lsn, LsnParseError, NodeId, Term, Zone};
