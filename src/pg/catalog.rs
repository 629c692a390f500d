//! Reads and writes of pg_ha's own catalog (schema `ha`) through SPI: the ruleset rows this node holds.
//! Callers run inside a transaction (a backend's, or `BackgroundWorker::transaction` in the agent).

use pg_ha_core::ruleset::Prior;
use pg_ha_core::{NodeId, Policy, Ruleset, Term, Zone};
use pgrx::prelude::*;
use std::collections::BTreeMap;

/// A ruleset row as stored (`ha.ruleset_history`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RulesetRow {
    pub version: i64,
    pub term: i64,
    pub leader: String,
    pub cohort: Vec<String>,
    pub zones: Vec<String>,
    pub policy: String,
    /// The prior membership (cohort, zones, policy), if the row has one.
    pub prior: Option<(Vec<String>, Vec<String>, String)>,
}

fn cohort_map(names: &[String], zones: &[String]) -> BTreeMap<NodeId, Zone> {
    names
        .iter()
        .zip(zones.iter())
        .map(|(n, z)| (NodeId::new(n.clone()), Zone::new(z.clone())))
        .collect()
}

impl RulesetRow {
    /// The core's form; `None` if the row is malformed (it was validated when written).
    pub fn to_core(&self) -> Option<Ruleset> {
        let policy: Policy = self.policy.parse().ok()?;
        let mut r = Ruleset::new(
            Term(self.term.max(0) as u64),
            self.version.max(0) as u64,
            NodeId::new(self.leader.clone()),
            cohort_map(&self.cohort, &self.zones),
            policy,
        )
        .ok()?;
        if let Some((c, z, p)) = &self.prior {
            r.prior = Some(Prior {
                cohort: cohort_map(c, z),
                policy: p.parse().ok()?,
            });
        }
        Some(r)
    }

    pub fn from_core(r: &Ruleset) -> RulesetRow {
        RulesetRow {
            version: r.version as i64,
            term: r.term.0 as i64,
            leader: r.leader.as_str().to_string(),
            cohort: r.cohort.keys().map(|n| n.as_str().to_string()).collect(),
            zones: r.cohort.values().map(|z| z.0.clone()).collect(),
            policy: r.policy.to_string(),
            prior: r.prior.as_ref().map(|p| {
                (
                    p.cohort.keys().map(|n| n.as_str().to_string()).collect(),
                    p.cohort.values().map(|z| z.0.clone()).collect(),
                    p.policy.to_string(),
                )
            }),
        }
    }
}

/// Whether `CREATE EXTENSION pg_ha` has run in this database.
pub fn extension_installed() -> bool {
    select_one::<bool>("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_ha')")
        .unwrap_or(false)
}

/// One value from a read-only query. Unlike `Spi::get_one` (which marks the transaction as writing
/// and so asks for a transaction id), this works on a standby.
pub fn select_one<T: FromDatum + IntoDatum>(sql: &str) -> Option<T> {
    Spi::connect(|client| {
        let rows = client.select(sql, Some(1), &[]).ok()?;
        rows.first().get_one::<T>().ok().flatten()
    })
}

/// The newest `limit` rows, newest first.
pub fn newest_rows(limit: i64) -> Vec<RulesetRow> {
    if !extension_installed() {
        return Vec::new();
    }
    Spi::connect(|client| {
        let Ok(rows) = client.select(
            &format!(
                "SELECT version, term, leader, cohort, zones, policy, prior_cohort, prior_zones, prior_policy
                 FROM ha.ruleset_history ORDER BY version DESC LIMIT {limit}"
            ),
            None,
            &[],
        ) else {
            return Vec::new();
        };
        rows.into_iter()
            .filter_map(|row| {
                Some(RulesetRow {
                    version: row.get::<i64>(1).ok()??,
                    term: row.get::<i64>(2).ok()??,
                    leader: row.get::<String>(3).ok()??,
                    cohort: row.get::<Vec<String>>(4).ok()??,
                    zones: row.get::<Vec<String>>(5).ok()??,
                    policy: row.get::<String>(6).ok()??,
                    prior: match (
                        row.get::<Vec<String>>(7).ok().flatten(),
                        row.get::<Vec<String>>(8).ok().flatten(),
                        row.get::<String>(9).ok().flatten(),
                    ) {
                        (Some(c), Some(z), Some(p)) => Some((c, z, p)),
                        _ => None,
                    },
                })
            })
            .collect()
    })
}

/// The newest ruleset row this node holds.
pub fn newest_ruleset() -> Option<RulesetRow> {
    newest_rows(1).into_iter().next()
}

/// Leadership changes in the ruleset history this node holds (for the metrics endpoint).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HistoryStats {
    pub failovers: u64,
    pub switchovers: u64,
    /// Unix time (s) of the first row of the newest term.
    pub newest_term_began: Option<f64>,
}

pub fn history_stats() -> HistoryStats {
    if !extension_installed() {
        return HistoryStats::default();
    }
    Spi::connect(|client| {
        let Ok(rows) = client.select(
            "SELECT count(*) FILTER (WHERE reason = 'failover'),
                    count(*) FILTER (WHERE reason = 'switchover'),
                    (SELECT extract(epoch FROM min(created_at))::float8 FROM ha.ruleset_history
                      WHERE term = (SELECT max(term) FROM ha.ruleset_history))
             FROM ha.ruleset_history",
            Some(1),
            &[],
        ) else {
            return HistoryStats::default();
        };
        let row = rows.first();
        HistoryStats {
            failovers: row.get::<i64>(1).ok().flatten().unwrap_or(0).max(0) as u64,
            switchovers: row.get::<i64>(2).ok().flatten().unwrap_or(0).max(0) as u64,
            newest_term_began: row.get::<f64>(3).ok().flatten(),
        }
    })
}

/// Insert a ruleset row in the current transaction (the agent's, with synchronous_commit = local: the
/// agent itself waits for the row's durability under the previous rules).
pub fn insert_row(row: &RulesetRow, reason: &str) -> Result<(), pgrx::spi::SpiError> {
    Spi::connect_mut(|client| {
        client.update("SET LOCAL synchronous_commit = local", None, &[])?;
        client.update(
            "INSERT INTO ha.ruleset_history
                (version, term, leader, cohort, zones, policy, reason, prior_cohort, prior_zones, prior_policy)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            None,
            &[
                row.version.into(),
                row.term.into(),
                row.leader.clone().into(),
                row.cohort.clone().into(),
                row.zones.clone().into(),
                row.policy.clone().into(),
                reason.into(),
                row.prior.as_ref().map(|p| p.0.clone()).into(),
                row.prior.as_ref().map(|p| p.1.clone()).into(),
                row.prior.as_ref().map(|p| p.2.clone()).into(),
            ],
        )?;
        Ok(())
    })
}

/// (walsender pid, application_name) of every walsender (for naming flush positions).
pub fn walsenders() -> Vec<(i32, String)> {
    Spi::connect(|client| {
        let Ok(rows) = client.select(
            "SELECT pid, application_name FROM pg_stat_replication WHERE pid IS NOT NULL",
            None,
            &[],
        ) else {
            return Vec::new();
        };
        rows.into_iter()
            .filter_map(|r| Some((r.get::<i32>(1).ok()??, r.get::<String>(2).ok()??)))
            .collect()
    })
}

/// (application_name, sync_priority) of every walsender: the priority is what the walsender computed
/// from its own `synchronous_standby_names`, so it shows which setting it runs under.
pub fn walsender_priorities() -> Vec<(String, u32)> {
    Spi::connect(|client| {
        let Ok(rows) = client.select(
            "SELECT application_name, sync_priority FROM pg_stat_replication WHERE pid IS NOT NULL",
            None,
            &[],
        ) else {
            return Vec::new();
        };
        rows.into_iter()
            .filter_map(|r| {
                Some((
                    r.get::<String>(1).ok()??,
                    r.get::<i32>(2).ok()??.max(0) as u32,
                ))
            })
            .collect()
    })
}

/// Current value of a setting.
pub fn show(name: &str) -> Option<String> {
    select_one::<String>(&format!("SELECT current_setting('{name}', true)"))
}

/// Where timeline `tli` forked from its parent (the last line of its history file), if it has one.
pub fn timeline_switch_point(tli: u32) -> Option<u64> {
    if tli <= 1 {
        return None;
    }
    let text = select_one::<String>(&format!(
        "SELECT pg_read_file('pg_wal/{tli:08X}.history', 0, 1000000, true)"
    ))?;
    let last = text.lines().rev().find(|l| !l.trim().is_empty())?;
    let lsn = last.split_whitespace().nth(1)?;
    let (hi, lo) = lsn.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Whether maintenance mode is on (`ha.pause()`).
pub fn paused() -> bool {
    extension_installed()
        && select_one::<bool>("SELECT value = 'on' FROM ha.cluster_settings WHERE name = 'paused'")
            .unwrap_or(false)
}
