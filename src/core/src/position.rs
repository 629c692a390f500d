//! Owns one question about a node's own WAL: does the position it would report in a pledge cover every
//! WAL record it holds (I3)? A standby reports `max(WAL received and flushed, WAL replayed)`. After a
//! restart there is no WAL receiver yet and the startup process replays what is in pg_wal: until it has
//! consumed that, the replay position is below WAL the node holds (and may have acknowledged), so the
//! node must not pledge.
//!
//! What Postgres 15 shows (xlogrecovery.c `WaitForWALToBecomeAvailable`): in standby mode the startup
//! process reads pg_wal (and the archive) first and moves on to streaming only when they hold no
//! further valid record; only then does it request a WAL receiver (`RequestXLogStreaming`, which sets
//! the receiver's flush position, zero until then since the postmaster started), and only then does it
//! wait for WAL (wait event `RecoveryWalStream` while a receiver is requested, or
//! `RecoveryRetrieveRetryInterval` when `primary_conninfo` is empty). Replay held by
//! `recovery_min_apply_delay` (`RecoveryApplyDelay`) or by a recovery conflict does neither. So "the
//! startup process has run out of local WAL at least once since this postmaster started" is observable,
//! and from then on every new WAL record arrives through the receiver, whose flush position is reported.
//! The agent keeps that fact ([`LocalWalWatch`]) for as long as it runs; an agent restarted under the
//! same postmaster finds it again (the receiver's position lives in shared memory, and a startup
//! process that had nowhere to stream from is still waiting).

use std::fmt;

use thiserror::Error;

use crate::types::Lsn;

/// The startup process' wait events that mean "waiting for WAL that is not in pg_wal".
pub const WAITING_FOR_WAL: [&str; 2] = ["RecoveryRetrieveRetryInterval", "RecoveryWalStream"];

/// One look at this node's WAL state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalWal {
    pub in_recovery: bool,
    /// The WAL receiver's flush position (`GetWalRcvFlushRecPtr`): non-zero once the startup process
    /// requested streaming since the postmaster started.
    pub receiver_flush: Lsn,
    pub replay: Lsn,
    /// The startup process' wait event (`pg_stat_activity`), if it waits on one.
    pub startup_wait: Option<String>,
}

/// How the node knows its reported position covers its local WAL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Consumed {
    /// A primary reports its own flush position: everything it holds.
    Primary,
    /// The startup process requested a WAL receiver: it had replayed pg_wal to its end first.
    ReceiverRequested { replay: Lsn },
    /// The startup process was seen waiting for WAL that pg_wal does not have.
    StartupWaitedForWal { replay: Lsn, wait_event: String },
}

impl fmt::Display for Consumed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Consumed::Primary => write!(f, "a primary reports its own flush position"),
            Consumed::ReceiverRequested { replay } => write!(
                f,
                "the startup process replayed its local WAL (to {replay}) and requested a WAL receiver"
            ),
            Consumed::StartupWaitedForWal { replay, wait_event } => write!(
                f,
                "the startup process replayed its local WAL (to {replay}) and waits for more ({wait_event})"
            ),
        }
    }
}

/// Why the node's position does not yet cover its local WAL.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("the startup process has not replayed this node's local WAL to its end yet (replay at {replay}, startup process {}): the position it would report may be below WAL it holds; no pledge until it has", describe(.startup_wait))]
pub struct NotConsumed {
    pub replay: Lsn,
    pub startup_wait: Option<String>,
}

fn describe(wait: &Option<String>) -> String {
    match wait.as_deref() {
        None => "replaying".into(),
        Some("RecoveryApplyDelay") => "holding replay for recovery_min_apply_delay".into(),
        Some(w) if w.starts_with("RecoveryConflict") => {
            format!("held by a recovery conflict ({w})")
        }
        Some(w) => format!("waiting on {w}"),
    }
}

/// Does this single look prove that the local WAL has been consumed?
pub fn consumed(w: &LocalWal) -> Result<Consumed, NotConsumed> {
    if !w.in_recovery {
        return Ok(Consumed::Primary);
    }
    if w.receiver_flush > Lsn::ZERO {
        return Ok(Consumed::ReceiverRequested { replay: w.replay });
    }
    match w.startup_wait.as_deref() {
        Some(e) if WAITING_FOR_WAL.contains(&e) => Ok(Consumed::StartupWaitedForWal {
            replay: w.replay,
            wait_event: e.to_string(),
        }),
        _ => Err(NotConsumed {
            replay: w.replay,
            startup_wait: w.startup_wait.clone(),
        }),
    }
}

/// What the agent remembers while it runs: once the local WAL was consumed, it stays consumed (new WAL
/// only arrives through the receiver, whose flush position is reported). A promotion needs no memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalWalWatch {
    seen: Option<Consumed>,
}

impl LocalWalWatch {
    /// Take a look. `Some(how)` the first time it proves the local WAL consumed (log it).
    pub fn observe(&mut self, w: &LocalWal) -> Option<Consumed> {
        if self.seen.is_some() {
            return None;
        }
        let c = consumed(w).ok()?;
        if c == Consumed::Primary {
            return None; // nothing to remember: a primary is always covered
        }
        self.seen = Some(c.clone());
        Some(c)
    }

    /// Needs the agent a fresh look (`startup_wait`) before it can decide? Only while nothing proved
    /// the local WAL consumed and the cheap signals do not either.
    pub fn needs_startup_wait(&self, in_recovery: bool, receiver_flush: Lsn) -> bool {
        in_recovery && self.seen.is_none() && receiver_flush == Lsn::ZERO
    }

    /// May the node report its position now (the pledge path)? Takes the look into account first.
    pub fn check(&mut self, w: &LocalWal) -> Result<Consumed, NotConsumed> {
        self.observe(w);
        if !w.in_recovery {
            return Ok(Consumed::Primary);
        }
        match &self.seen {
            Some(c) => Ok(c.clone()),
            None => consumed(w),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standby(receiver_flush: u64, replay: u64, wait: Option<&str>) -> LocalWal {
        LocalWal {
            in_recovery: true,
            receiver_flush: Lsn(receiver_flush),
            replay: Lsn(replay),
            startup_wait: wait.map(String::from),
        }
    }

    /// I3: a restarted standby still replaying its pg_wal, or held by an apply delay or a recovery
    /// conflict, has not consumed its local WAL; a primary always has.
    #[test]
    fn replay_in_progress_or_held_is_not_consumed_i3() {
        for wait in [
            None,
            Some("RecoveryApplyDelay"),
            Some("RecoveryConflictSnapshot"),
            Some("RecoveryPause"),
            Some("WALRead"),
        ] {
            let e = consumed(&standby(0, 500, wait)).unwrap_err();
            assert_eq!(e.replay, Lsn(500));
            assert!(e.to_string().starts_with(
                "the startup process has not replayed this node's local WAL to its end yet (replay at 0/1F4"
            ));
        }
        assert!(consumed(&standby(0, 500, Some("RecoveryApplyDelay")))
            .unwrap_err()
            .to_string()
            .contains("recovery_min_apply_delay"));
        let primary = LocalWal {
            in_recovery: false,
            ..LocalWal::default()
        };
        assert_eq!(consumed(&primary), Ok(Consumed::Primary));
    }

    /// I3: a receiver was requested, or the startup process waits for WAL pg_wal lacks: consumed,
    /// whatever replay does afterwards (an apply delay set later holds replay behind the receiver,
    /// whose flush is reported).
    #[test]
    fn receiver_requested_or_waiting_for_wal_is_consumed_i3() {
        assert_eq!(
            consumed(&standby(0x100_0000, 500, Some("RecoveryApplyDelay"))),
            Ok(Consumed::ReceiverRequested { replay: Lsn(500) })
        );
        for w in WAITING_FOR_WAL {
            assert_eq!(
                consumed(&standby(0, 500, Some(w))),
                Ok(Consumed::StartupWaitedForWal {
                    replay: Lsn(500),
                    wait_event: w.into()
                })
            );
        }
    }

    /// The watch remembers the first proof (reported once) and keeps it; a fresh watch (an agent
    /// restarted under the same postmaster) decides from a new look.
    #[test]
    fn watch_is_sticky_and_reports_once() {
        let mut w = LocalWalWatch::default();
        assert!(w.needs_startup_wait(true, Lsn::ZERO));
        assert!(!w.needs_startup_wait(true, Lsn(1)));
        assert!(!w.needs_startup_wait(false, Lsn::ZERO));
        assert_eq!(w.observe(&standby(0, 10, None)), None);
        assert!(w.check(&standby(0, 10, None)).is_err());
        let first = w.observe(&standby(0, 20, Some("RecoveryRetrieveRetryInterval")));
        assert!(matches!(
            first,
            Some(Consumed::StartupWaitedForWal {
                replay: Lsn(20),
                ..
            })
        ));
        assert_eq!(w.observe(&standby(0, 30, None)), None);
        assert!(!w.needs_startup_wait(true, Lsn::ZERO));
        // Replay later held (a conflict), no receiver: still covered, by the first proof.
        assert!(matches!(
            w.check(&standby(0, 30, Some("RecoveryConflictLock"))),
            Ok(Consumed::StartupWaitedForWal {
                replay: Lsn(20),
                ..
            })
        ));
        let primary = LocalWal {
            in_recovery: false,
            ..LocalWal::default()
        };
        let mut fresh = LocalWalWatch::default();
        assert_eq!(fresh.observe(&primary), None);
        assert_eq!(fresh.check(&primary), Ok(Consumed::Primary));
        assert!(fresh.check(&standby(0, 5, None)).is_err());
    }
}
