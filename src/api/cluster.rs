//! Cluster-changing SQL functions: `ha.bootstrap()`, `ha.add_member()`, `ha.remove_member()`,
//! `ha.set_policy()`, `ha.switchover()`, `ha.failover()`, and the override `ha.unsafe_force_leader()`.
//! Each hands the request to this node's agent (which keeps the commit rules) and returns when the
//! change is in force, or raises the agent's precise refusal. Execution is granted to `ha_admin` (and
//! superusers) in sql/views.sql, except the override, which is for superusers only.

use crate::pg::{request, shmem};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

fn run(kind: request::Kind, arg: &str) -> String {
    if !shmem::available() {
        error!("pg_ha: the pg_ha library is not in shared_preload_libraries");
    }
    match request::submit(kind, arg) {
        Ok(msg) => msg,
        Err(r) => {
            let code = match r.sqlstate.as_str() {
                "22023" => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "55006" => PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
                "58000" => PgSqlErrorCode::ERRCODE_SYSTEM_ERROR,
                "XX000" => PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                _ => PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            };
            pgrx::pg_sys::panic::ErrorReport::new(code, format!("pg_ha: {}", r.message), "pg_ha")
                .report(PgLogLevel::ERROR);
            unreachable!()
        }
    }
}

/// Make this node the leader of term 1 of a new cluster, itself the only member (policy `zones 1`: the leader alone).
#[pg_extern(volatile, parallel_unsafe)]
fn bootstrap() -> String {
    run(request::Kind::Bootstrap, "")
}

/// Add a caught-up observer to the cohort (a ruleset change, in force once durable under the current
/// ruleset).
#[pg_extern(volatile, parallel_unsafe)]
fn add_member(node: &str) -> String {
    run(request::Kind::AddMember, node)
}

/// Remove a member (not the leader) from the cohort.
#[pg_extern(volatile, parallel_unsafe)]
fn remove_member(node: &str) -> String {
    run(request::Kind::RemoveMember, node)
}

/// Replace the policy (`any K` or `zones K`); refused when the cohort cannot satisfy it.
#[pg_extern(volatile, parallel_unsafe)]
fn set_policy(policy: &str) -> String {
    run(request::Kind::SetPolicy, policy)
}

/// Planned leadership change to `target` (or the healthiest follower): no acknowledged commit is lost;
/// returns the new leader's name.
#[pg_extern(volatile, parallel_unsafe)]
fn switchover(target: default!(Option<&str>, "NULL")) -> String {
    run(request::Kind::Switchover, target.unwrap_or(""))
}

/// Operator-forced failover, only when the leader is unreachable from this node; same safety as an
/// automatic one (the most advanced recruit is promoted). Returns the new leader's name.
#[pg_extern(volatile, parallel_unsafe)]
fn failover(target: default!(Option<&str>, "NULL")) -> String {
    run(request::Kind::Failover, target.unwrap_or(""))
}

/// OPERATOR OVERRIDE for a permanently lost majority: make this surviving member the leader of a new,
/// higher term with a cohort of itself alone (`zones 1`), without a quorum. Commits the old leader
/// acknowledged beyond this node's flushed WAL may be lost. `confirm` must be exactly
/// `I accept losing acknowledged writes`. Superusers only.
#[pg_extern(volatile, parallel_unsafe)]
fn unsafe_force_leader(confirm: &str) -> String {
    run(request::Kind::UnsafeForceLeader, confirm)
}
