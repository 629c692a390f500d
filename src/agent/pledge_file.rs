//! The pledge file in the data directory: the core's codec (`pg_ha_core::pledge`), written atomically
//! (temp file, fsync, rename, fsync of the directory) before any pledge is answered.
//!
//! The file name carries the node name (`pg_ha.pledge.<node>`): pg_basebackup copies the data
//! directory, and a pledge is a promise of one node, so a copy under another node's name is ignored
//! and removed.

use pg_ha_core::{decode, encode, PledgeState};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub fn path(data_dir: &Path, node: &str) -> PathBuf {
    data_dir.join(format!("pg_ha.pledge.{node}"))
}

/// What was found on disk.
pub enum Loaded {
    Found(PledgeState),
    Missing,
    /// Present but damaged (torn, truncated, bad checksum): the pledge must be treated as lost.
    Corrupt(String),
}

pub fn load(data_dir: &Path, node: &str) -> Loaded {
    let p = path(data_dir, node);
    match fs::read(&p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Loaded::Missing,
        Err(e) => Loaded::Corrupt(format!("cannot read {}: {e}", p.display())),
        Ok(bytes) => match decode(&bytes) {
            Ok(s) => Loaded::Found(s),
            Err(e) => Loaded::Corrupt(format!("{}: {e}", p.display())),
        },
    }
}

/// Remove pledge files of other node names (copied in by pg_basebackup). Returns what was removed.
pub fn remove_foreign(data_dir: &Path, node: &str) -> Vec<String> {
    let mine = format!("pg_ha.pledge.{node}");
    let mut removed = Vec::new();
    if let Ok(entries) = fs::read_dir(data_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("pg_ha.pledge.")
                && name != mine
                && fs::remove_file(e.path()).is_ok()
            {
                removed.push(name);
            }
        }
    }
    removed
}

/// Persist `state` durably: after this returns Ok, a crash cannot bring back an older pledge.
pub fn store(data_dir: &Path, node: &str, state: &PledgeState) -> std::io::Result<()> {
    let final_path = path(data_dir, node);
    let tmp = data_dir.join(format!("pg_ha.pledge.{node}.tmp"));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(&encode(state))?;
        f.sync_all()?;
    }
    fs::rename(&tmp, &final_path)?;
    File::open(data_dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pg_ha_core::{NodeId, Term};

    #[test]
    fn store_load_roundtrip_and_corruption() {
        let dir = std::env::temp_dir().join(format!("pg_ha_pledge_test_{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        assert!(matches!(load(&dir, "n1"), Loaded::Missing));
        let s = PledgeState {
            term: Term(7),
            coordinator: Some(NodeId::new("n2")),
            ..PledgeState::fresh()
        };
        store(&dir, "n1", &s).unwrap();
        match load(&dir, "n1") {
            Loaded::Found(got) => assert_eq!(got, s),
            _ => panic!("not found"),
        }
        // A torn write (truncated file) is corrupt, never term 0.
        let bytes = fs::read(path(&dir, "n1")).unwrap();
        fs::write(path(&dir, "n1"), &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(load(&dir, "n1"), Loaded::Corrupt(_)));
        fs::write(dir.join("pg_ha.pledge.other"), b"x").unwrap();
        assert_eq!(
            remove_foreign(&dir, "n1"),
            vec!["pg_ha.pledge.other".to_string()]
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
