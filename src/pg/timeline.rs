//! Timeline IDs equal to terms. Postgres names the timeline a promotion starts "the newest timeline
//! whose history file exists, plus one". Two candidates of different terms that never saw each other's
//! history (a candidate promoted in an attempt that never established, then another attempt) would
//! both pick the same ID for different histories. pg_rewind then answers "no rewind required" between
//! them, and the follower's own WAL and its leader's disagree at the same positions (found by the fault
//! campaign: a 5-node follower stuck on "record with incorrect prev-link"; worse, a tail that happened
//! to parse would have mixed two histories, against I4).
//!
//! Before promoting for term T, the candidate reserves every timeline ID from the one after its newest
//! up to T-1 with a placeholder history file in pg_wal (a comment line: no parent, so nothing ever
//! follows it), and Postgres picks T. Terms are unique per promotion, so timeline IDs are too. The
//! placeholders stay: a standby that follows the new timeline fetches the history file of every ID in
//! between from its upstream, and a missing one would stop it.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Above this many IDs to reserve, don't (a damaged term; Postgres then picks its own ID).
const MAX_RESERVED: u64 = 100_000;

/// `pg_wal/<TLI>.history`.
fn history_path(pg_wal: &Path, tli: u64) -> PathBuf {
    pg_wal.join(format!("{tli:08X}.history"))
}

/// The IDs to reserve so that a promotion from timeline `current` (with `pg_wal`'s existing history
/// files above it) picks `term`: the contiguous run after the newest existing ID, up to `term - 1`.
pub fn to_reserve(current: u64, term: u64, exists: impl Fn(u64) -> bool) -> Vec<u64> {
    let mut newest = current;
    while exists(newest + 1) {
        newest += 1;
    }
    if term <= newest + 1 || term - newest > MAX_RESERVED || term > u64::from(u32::MAX) {
        return Vec::new();
    }
    (newest + 1..term).collect()
}

/// Writes (and fsyncs) the placeholders that make a promotion from timeline `current` pick `term`, in
/// `data_dir/pg_wal`. Returns how many were written.
pub fn reserve(data_dir: &Path, current: u64, term: u64) -> std::io::Result<usize> {
    let pg_wal = data_dir.join("pg_wal");
    let ids = to_reserve(current, term, |t| history_path(&pg_wal, t).exists());
    for &tli in &ids {
        let path = history_path(&pg_wal, tli);
        let tmp = pg_wal.join(format!("{tli:08X}.history.pg_ha_tmp"));
        let mut f = File::create(&tmp)?;
        writeln!(
            f,
            "# pg_ha: timeline {tli} reserved so that timeline IDs equal terms; no WAL was written on it"
        )?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
    }
    if !ids.is_empty() {
        File::open(&pg_wal)?.sync_all()?;
    }
    Ok(ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_the_ids_between_the_newest_and_the_term() {
        assert_eq!(to_reserve(2, 5, |_| false), vec![3, 4]);
        // An existing newer history (fetched by the walreceiver) counts as the newest.
        assert_eq!(to_reserve(2, 5, |t| t == 3), vec![4]);
        // Nothing to do: the next ID is the term already, or the term is behind (an old cluster).
        assert!(to_reserve(4, 5, |_| false).is_empty());
        assert!(to_reserve(7, 5, |_| false).is_empty());
        assert!(to_reserve(1, 1_000_000, |_| false).is_empty());
    }

    #[test]
    fn writes_comment_only_history_files() {
        let dir = std::env::temp_dir().join(format!("pg_ha_tli_test.{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("pg_wal")).unwrap();
        fs::write(
            dir.join("pg_wal/00000002.history"),
            "1\t0/3000000\tno recovery target specified\n",
        )
        .unwrap();
        assert_eq!(reserve(&dir, 1, 5).unwrap(), 2);
        let text = fs::read_to_string(dir.join("pg_wal/00000003.history")).unwrap();
        assert!(text.starts_with("# pg_ha: timeline 3 reserved"));
        assert!(dir.join("pg_wal/00000004.history").exists());
        assert!(!dir.join("pg_wal/00000005.history").exists());
        assert_eq!(reserve(&dir, 1, 5).unwrap(), 0);
        let _ = fs::remove_dir_all(&dir);
    }
}
