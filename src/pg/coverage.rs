//! Whether the WAL position this node would report in a pledge covers every WAL record it holds (I3):
//! the agent's side of `pg_ha_core::position`. Every pass of the main loop takes a cheap look (the
//! startup process' wait event only while nothing else proves it) and logs once when the startup
//! process has consumed the local WAL since the server started; a pledge is refused until then.

use super::local;
use super::steward::Steward;
use pg_ha_core::{LocalWal, NotConsumed};
use pgrx::prelude::*;

impl Steward {
    /// Look at the local WAL; remember (and log, once) that the startup process consumed it.
    pub(crate) fn watch_local_wal(&mut self) -> LocalWal {
        let watch = &mut self.local_wal;
        let look = local::local_wal(|in_recovery, receiver_flush| {
            watch.needs_startup_wait(in_recovery, receiver_flush)
        });
        if let Some(how) = watch.observe(&look) {
            log!("pg_ha: the WAL position this node reports now covers its local WAL: {how}; it may pledge");
        }
        look
    }

    /// The pledge path: may this node report its position now?
    pub(crate) fn position_covers_local_wal(&mut self) -> Result<(), NotConsumed> {
        let look = self.watch_local_wal();
        self.local_wal.check(&look).map(|_| ())
    }
}
