//! Conditions about pg_ha itself that integration tests and benchmarks wait for or check: a node
//! following, a leader accepting writes, the leader seen lost, a forced failover succeeding, one
//! leader per term. Each waits with a deadline (never a bare sleep).

use crate::error::{err, Result};
use crate::wait::{wait_until, wait_until_ok};
use crate::{Cluster, Node};
use std::time::Duration;

/// Wait until `n` reports itself a follower in `ha.status`.
pub fn wait_follower(n: &Node, timeout: Duration) -> Result<()> {
    wait_until(timeout, &format!("{} to be a follower", n.name()), || {
        Ok(n.query_value("SELECT role FROM ha.status WHERE is_self")?
            .as_deref()
            == Some("follower"))
    })
}

/// Wait until `n` accepts a write (`INSERT INTO probe VALUES (1)`; the table must exist).
pub fn wait_writable(n: &Node, timeout: Duration) -> Result<()> {
    wait_until(timeout, &format!("{} to accept writes", n.name()), || {
        Ok(n.query_strings("INSERT INTO probe VALUES (1)").is_ok())
    })
}

/// Wait until some node other than `not` accepts a write into `probe`; returns it.
pub fn wait_new_leader<'a>(c: &'a Cluster, not: &str, timeout: Duration) -> Result<&'a Node> {
    let name = wait_until_ok(
        timeout,
        &format!("a leader other than {not} to accept writes"),
        || {
            Ok(c.nodes()
                .iter()
                .filter(|n| n.name() != not)
                .find(|n| n.query_strings("INSERT INTO probe VALUES (1)").is_ok())
                .map(|n| n.name().to_string()))
        },
    )?;
    c.node_by_name(&name)
        .ok_or_else(|| err(format!("no node {name}")))
}

/// Wait until `n`'s agent reports that it lost the leader (detection).
pub fn wait_leader_lost(n: &Node, timeout: Duration) -> Result<()> {
    wait_until(
        timeout,
        &format!("{} to see the leader lost", n.name()),
        || Ok(n.agent_status().map(|s| s.leader_lost).unwrap_or(false)),
    )
}

/// Retry `SELECT ha.failover()` on `n` until it names a leader; returns that name.
pub fn failover_until_ok(n: &Node, timeout: Duration) -> Result<String> {
    let answer = wait_until_ok(
        timeout,
        &format!("ha.failover() on {} to succeed", n.name()),
        || Ok(n.query_value("SELECT ha.failover()").ok().flatten()),
    )?;
    Ok(answer
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// How many terms of `n`'s `ha.history` name more than one leader (I1 says 0).
pub fn terms_with_two_leaders(n: &Node) -> Result<i64> {
    let v = n.query_value(
        "SELECT count(*) FROM (SELECT term FROM ha.history GROUP BY term HAVING count(DISTINCT leader) > 1) d",
    )?;
    Ok(v.and_then(|s| s.parse().ok()).unwrap_or(-1))
}

/// On the leader: add `members` (each retried until it has shown up as a caught-up observer), then
/// set `policy`. For clusters started with `add_members: false` that keep some nodes as observers.
pub fn add_members(leader: &Node, members: &[&str], policy: &str, timeout: Duration) -> Result<()> {
    for m in members {
        wait_until(timeout, &format!("add_member {m}"), || {
            Ok(leader
                .query_strings(&format!("SELECT ha.add_member('{m}')"))
                .is_ok())
        })?;
    }
    leader.query_strings(&format!("SELECT ha.set_policy('{policy}')"))?;
    Ok(())
}

/// `n`'s `ha.history`, one `term|leader|cohort|policy|reason` line per row, oldest first.
pub fn history(n: &Node) -> Result<Vec<String>> {
    Ok(n.query_strings(
        "SELECT format('%s|%s|%s|%s|%s', term, leader, cohort, policy, reason) FROM ha.history",
    )?
    .into_iter()
    .map(|r| r[0].clone().unwrap_or_default())
    .collect())
}

/// The number of times `n`'s agent has reloaded its settings.
fn agent_reloads(n: &Node) -> usize {
    n.read_log()
        .matches("pg_ha: configuration reloaded")
        .count()
}

/// Set `ha.debug_failpoint` on `n` (testing only); if `n` runs, reload it and wait until its agent has
/// reloaded the setting (the agent's reload follows the postmaster's, so new sessions see it too).
pub fn set_failpoint(n: &Node, fp: &str, timeout: Duration) -> Result<()> {
    let before = agent_reloads(n);
    n.append_conf(&format!("ha.debug_failpoint = '{fp}'"))?;
    if n.is_running() {
        n.reload()?;
        wait_until(
            timeout,
            &format!("{}'s agent to use failpoint '{fp}'", n.name()),
            || Ok(agent_reloads(n) > before),
        )?;
    }
    Ok(())
}

/// PID of `n`'s WAL receiver once it streams under its node name (the agent repoints
/// `primary_conninfo` at start, which restarts the receiver).
pub fn walreceiver_pid(n: &Node, timeout: Duration) -> Result<i32> {
    let sql = format!(
        "SELECT pid FROM pg_stat_wal_receiver WHERE status = 'streaming' AND conninfo LIKE '%application_name={}%'",
        n.name()
    );
    wait_until_ok(
        timeout,
        &format!("{}'s WAL receiver to stream", n.name()),
        || Ok(n.query_value(&sql)?.and_then(|p| p.parse().ok())),
    )
}

/// The agent's `Promote` RPC to `n` as coordinator "pg_test" (tests that act as the coordinator): leader of
/// `term` with ruleset `version`, cohort every node of `c`, `any 1`, from attempt `attempt`.
#[allow(clippy::result_large_err)]
pub fn promote(
    c: &Cluster,
    n: &Node,
    term: u64,
    version: u64,
    attempt: u64,
) -> std::result::Result<crate::pb::PromoteReply, tonic::Status> {
    let ruleset = crate::pb::Ruleset {
        term,
        version,
        leader: n.name().into(),
        cohort: c.nodes().iter().map(|m| m.name().to_string()).collect(),
        zones: c.nodes().iter().map(|m| m.zone().to_string()).collect(),
        policy: "any 1".into(),
        ..Default::default()
    };
    crate::agent::agent_promote(
        &n.agent_addr(),
        c.token(),
        crate::pb::PromoteRequest {
            term,
            coordinator: "pg_test".into(),
            ruleset: Some(ruleset),
            reason: "failover".into(),
            attempt,
        },
    )
}
