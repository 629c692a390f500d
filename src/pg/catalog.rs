//! Reads of pg_ha's own catalog (schema `ha`) through SPI: the newest ruleset row this node holds.
//! Callers run inside a transaction (a backend's, or `BackgroundWorker::transaction` in the agent).

use pgrx::prelude::*;

/// The newest ruleset row in this node's copy of `ha.ruleset_history` (it travels in the WAL).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RulesetRow {
    pub term: i64,
    pub leader: String,
    pub cohort: Vec<String>,
    pub policy: String,
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

pub fn newest_ruleset() -> Option<RulesetRow> {
    if !extension_installed() {
        return None;
    }
    Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT term, leader, cohort, policy FROM ha.ruleset_history ORDER BY seq DESC LIMIT 1",
                None,
                &[],
            )
            .ok()?;
        let row = rows.into_iter().next()?;
        Some(RulesetRow {
            term: row.get::<i64>(1).ok()??,
            leader: row.get::<String>(2).ok()??,
            cohort: row.get::<Vec<String>>(3).ok()??,
            policy: row.get::<String>(4).ok()??,
        })
    })
}
