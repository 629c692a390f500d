//! Owns the node side of the race: the pledge state machine (when a node may pledge, follow a leader, or
//! count toward durability), what a pledge reply reports (`NodeReport`), and the pledge file's codec.
//!
//! The agent persists the state returned by `on_pledge_request` (write temp, fsync, rename, fsync dir)
//! *before* it answers the coordinator; this module never touches the disk.
//!
//! # Pledge file format (text, version 2)
//! Seven lines, each ending in `\n`, ASCII:
//! ```text
//! pg_ha pledge v2
//! term 7
//! coordinator node-b          ("-" when the term was learned by following a leader, not pledged)
//! attempt 9f3a0c2e11d4b705    (the coordinator's attempt, 16 lowercase hex digits; 0 when none)
//! floor 6 0/3000060           ("floor -" when no rewind floor is set: ruleset term, then LSN)
//! relearn no                  ("yes": the file was lost; relearn the highest term before pledging)
//! crc32 1c291ca3              (CRC-32/IEEE of every byte before this line, 8 lowercase hex digits)
//! ```
//! Version 1 (written before attempts were recorded) has no `attempt` line and reads as attempt 0.
//! A node name is written with `%XX` escapes for any byte outside `A-Z a-z 0-9 . _ : @ + -` (and the
//! name `-` itself is written `%2D`). Anything else (a torn, truncated, corrupted or unknown-version file)
//! is a `CodecError`: the agent must then treat the pledge as lost (`PledgeState::lost`), never as term 0.

use std::fmt;

use thiserror::Error;

use crate::ruleset::Ruleset;
use crate::types::{Lsn, NodeId, Term, Zone};

/// Recorded before a pg_rewind: the node may hold less WAL than it reported or acknowledged until it is
/// back at `(ruleset_term, lsn)` (newest ruleset row term held, flushed LSN), so it neither pledges nor
/// counts toward durability until then.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RewindFloor {
    pub ruleset_term: Term,
    pub lsn: Lsn,
}

/// What a node must persist about pledges: the highest term it knows and to whom it pledged in it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PledgeState {
    /// Highest term pledged to, or learned by following its leader.
    pub term: Term,
    /// The coordinator pledged to in `term`; `None` when `term` was learned by following (or is 0).
    pub coordinator: Option<NodeId>,
    /// The coordinator's attempt pledged to in `term` (one per term, I1): 0 when none, or read from a
    /// version 1 file.
    pub attempt: u64,
    /// Set before a rewind, cleared by `passed_floor`.
    pub floor: Option<RewindFloor>,
    /// The pledge file was lost: the node does not know which terms it promised. It must not pledge,
    /// follow or count toward durability until `relearn`.
    pub must_relearn: bool,
}

/// The persisted form of the pledge state: the same thing.
pub type PledgeRecord = PledgeState;

/// Why a node will not pledge. Each refusal carries the node's current term so the coordinator can
/// retry above it.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PledgeRefusal {
    #[error("term {asked} is below the pledged term {current}")]
    LowerTerm { asked: Term, current: Term },
    #[error("already pledged in term {current} to {pledged_to}")]
    TermTaken { current: Term, pledged_to: String },
    #[error("already pledged in term {current} to another attempt of {coordinator} (attempt {pledged:016x}, not {asked:016x})")]
    AttemptTaken {
        current: Term,
        coordinator: String,
        pledged: u64,
        asked: u64,
    },
    #[error(
        "pledge file lost: the highest term (at least {current}) must be relearned before pledging"
    )]
    MustRelearn { current: Term },
    #[error("rewound below its floor (ruleset term {}, {}): will not pledge until it has passed it", floor.ruleset_term, floor.lsn)]
    BelowRewindFloor { current: Term, floor: RewindFloor },
}

impl PledgeRefusal {
    /// The refusing node's current term.
    pub fn current_term(&self) -> Term {
        match self {
            PledgeRefusal::LowerTerm { current, .. }
            | PledgeRefusal::TermTaken { current, .. }
            | PledgeRefusal::AttemptTaken { current, .. }
            | PledgeRefusal::MustRelearn { current }
            | PledgeRefusal::BelowRewindFloor { current, .. } => *current,
        }
    }
}

/// Why a node will not be promoted by a coordinator's attempt.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PromoteRefusal {
    #[error("not pledged to {coordinator} in term {term} (pledged term {current})")]
    NotPledged {
        term: Term,
        coordinator: String,
        current: Term,
    },
    #[error("pledged to attempt {pledged:016x} of {coordinator} in term {term}, not to attempt {asked:016x}")]
    OtherAttempt {
        term: Term,
        coordinator: String,
        pledged: u64,
        asked: u64,
    },
}

/// Why a node will not stream from (acknowledge WAL to) a leader.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum FollowRefusal {
    #[error("leader term {leader_term} is below the pledged term {current}")]
    LowerTerm { leader_term: Term, current: Term },
    #[error("pledge file lost: relearn the highest term first")]
    MustRelearn,
}

impl PledgeState {
    /// A node that never pledged (new data directory).
    pub fn fresh() -> Self {
        PledgeState {
            term: Term::ZERO,
            coordinator: None,
            attempt: 0,
            floor: None,
            must_relearn: false,
        }
    }

    /// A node whose data directory exists but whose pledge file is missing or unreadable.
    pub fn lost() -> Self {
        PledgeState {
            must_relearn: true,
            ..PledgeState::fresh()
        }
    }

    /// A pledge request for `term` from `coordinator`'s attempt `attempt`. `Ok(new state)`: persist it,
    /// then answer with a `NodeReport`; from then on acknowledge no WAL to leaders of a lower term (drop
    /// the replication connection). Accepted iff `term` is above the pledged term, or it is the very
    /// same pledge again (idempotent, so a duplicated request gets the same answer). Another attempt of
    /// the same coordinator in the same term is refused: a coordinator that retries may reuse a term,
    /// and two attempts that both gathered a quorum could promote two nodes (I1).
    pub fn on_pledge_request(
        &self,
        term: Term,
        coordinator: &NodeId,
        attempt: u64,
    ) -> Result<PledgeState, PledgeRefusal> {
        if self.must_relearn {
            return Err(PledgeRefusal::MustRelearn { current: self.term });
        }
        if let Some(floor) = self.floor {
            return Err(PledgeRefusal::BelowRewindFloor {
                current: self.term,
                floor,
            });
        }
        if term < self.term {
            return Err(PledgeRefusal::LowerTerm {
                asked: term,
                current: self.term,
            });
        }
        if term == self.term {
            return if self.coordinator.as_ref() == Some(coordinator) && self.attempt == attempt {
                Ok(self.clone())
            } else if self.coordinator.as_ref() == Some(coordinator) {
                Err(PledgeRefusal::AttemptTaken {
                    current: self.term,
                    coordinator: coordinator.to_string(),
                    pledged: self.attempt,
                    asked: attempt,
                })
            } else {
                Err(PledgeRefusal::TermTaken {
                    current: self.term,
                    pledged_to: self
                        .coordinator
                        .as_ref()
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "the established leader (learned by following)".into()),
                })
            };
        }
        Ok(PledgeState {
            term,
            coordinator: Some(coordinator.clone()),
            attempt,
            floor: self.floor,
            must_relearn: false,
        })
    }

    /// May `coordinator`'s attempt `attempt` promote this node as leader of `term`? Only the attempt it
    /// pledged to in exactly that term (I1: one attempt per term gathers a quorum, and it promotes one
    /// node).
    pub fn may_promote(
        &self,
        term: Term,
        coordinator: &NodeId,
        attempt: u64,
    ) -> Result<(), PromoteRefusal> {
        if self.term != term || self.coordinator.as_ref() != Some(coordinator) {
            return Err(PromoteRefusal::NotPledged {
                term,
                coordinator: coordinator.to_string(),
                current: self.term,
            });
        }
        if self.attempt != attempt {
            return Err(PromoteRefusal::OtherAttempt {
                term,
                coordinator: coordinator.to_string(),
                pledged: self.attempt,
                asked: attempt,
            });
        }
        Ok(())
    }

    /// May this node stream from (and acknowledge WAL to) a leader of `leader_term`? `Ok(Some(state))`:
    /// yes, after persisting `state` (the node learned a higher term: it will not pledge below or at it
    /// again); `Ok(None)`: yes, nothing to persist.
    pub fn on_follow(&self, leader_term: Term) -> Result<Option<PledgeState>, FollowRefusal> {
        if self.must_relearn {
            return Err(FollowRefusal::MustRelearn);
        }
        if leader_term < self.term {
            return Err(FollowRefusal::LowerTerm {
                leader_term,
                current: self.term,
            });
        }
        if leader_term == self.term {
            return Ok(None);
        }
        Ok(Some(PledgeState {
            term: leader_term,
            coordinator: None,
            attempt: 0,
            ..self.clone()
        }))
    }

    /// The agent relearned `highest`, the highest term reported by `relearn_quorum` other members of the
    /// cohort (asked after the loss). The node takes it as its own term without a coordinator, so it will only pledge to terms
    /// strictly above it. (A coordinator whose request was answered before the loss and whose term is
    /// above what the majority reports can still race this node: the agent should also wait at least one
    /// coordinator attempt timeout before answering pledges.)
    pub fn relearn(&self, highest: Term) -> PledgeState {
        PledgeState {
            term: self.term.max(highest),
            coordinator: None,
            attempt: 0,
            floor: self.floor,
            must_relearn: false,
        }
    }

    /// How many of the *other* cohort members must report their terms before a node of a cohort of
    /// `cohort_size` that lost its pledge file may `relearn`. A recruit quorum holds more than half the
    /// cohort, so at least `floor(n/2)` of its recruits are other nodes; any `ceil(n/2)` of the `n - 1`
    /// others include one of them, which remembers the term it pledged to. This node itself must not
    /// count: it is the recruit that forgot. A cohort of one has nobody to ask (0).
    pub fn relearn_quorum(cohort_size: usize) -> usize {
        cohort_size.div_ceil(2).min(cohort_size.saturating_sub(1))
    }

    /// The state to persist before running pg_rewind.
    pub fn with_floor(&self, floor: RewindFloor) -> PledgeState {
        PledgeState {
            floor: Some(floor),
            ..self.clone()
        }
    }

    /// The node now holds `(ruleset_term, flush)`; if that is at or past its floor, the state to persist.
    pub fn passed_floor(&self, ruleset_term: Term, flush: Lsn) -> Option<PledgeState> {
        let floor = self.floor?;
        ((ruleset_term, flush) >= (floor.ruleset_term, floor.lsn)).then(|| PledgeState {
            floor: None,
            ..self.clone()
        })
    }

    /// May the leader count this node's flush position toward durability?
    pub fn counts_toward_durability(&self) -> bool {
        !self.must_relearn && self.floor.is_none()
    }
}

/// What a pledge reply carries: where the node got to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeReport {
    pub node: NodeId,
    pub zone: Zone,
    /// The term the node pledged in (the attempt's term for a valid reply).
    pub pledged_term: Term,
    /// The newest ruleset row in the node's WAL.
    pub ruleset: Option<Ruleset>,
    pub flush_lsn: Lsn,
    pub timeline: u32,
    /// The agent's view: can the coordinator reach this node for promotion?
    pub reachable: bool,
    /// Operator priority for candidacy (higher is preferred).
    pub priority: i32,
}

impl NodeReport {
    /// Discovery's ranking key: (term of the newest ruleset row held, flushed LSN).
    pub fn position(&self) -> (Term, Lsn) {
        (
            self.ruleset.as_ref().map(|r| r.term).unwrap_or(Term::ZERO),
            self.flush_lsn,
        )
    }
}

impl fmt::Display for NodeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (rt, lsn) = self.position();
        write!(
            f,
            "{}@{} pledged {} holds ruleset term {} flush {} tl {}",
            self.node, self.zone, self.pledged_term, rt, lsn, self.timeline
        )
    }
}

/// Why pledge file bytes are not a pledge record.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum CodecError {
    #[error("pledge file is empty")]
    Empty,
    #[error("pledge file is not valid UTF-8")]
    NotUtf8,
    #[error("pledge file does not start with `pg_ha pledge v`: not a pledge file")]
    BadMagic,
    #[error("pledge file version {0:?} is not supported (this build reads v1)")]
    UnsupportedVersion(String),
    #[error("pledge file is truncated (no complete crc32 line)")]
    Truncated,
    #[error("pledge file checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("pledge file line {line}: expected {expected}, found {found:?}")]
    Malformed {
        line: usize,
        expected: &'static str,
        found: String,
    },
}

const MAGIC: &str = "pg_ha pledge v";

/// Serialize a pledge record to the file format above.
pub fn encode(rec: &PledgeRecord) -> Vec<u8> {
    let mut body = String::new();
    body.push_str("pg_ha pledge v2\n");
    body.push_str(&format!("term {}\n", rec.term.0));
    match &rec.coordinator {
        Some(c) => body.push_str(&format!("coordinator {}\n", escape(c.as_str()))),
        None => body.push_str("coordinator -\n"),
    }
    body.push_str(&format!("attempt {:016x}\n", rec.attempt));
    match rec.floor {
        Some(f) => body.push_str(&format!("floor {} {}\n", f.ruleset_term.0, f.lsn)),
        None => body.push_str("floor -\n"),
    }
    body.push_str(if rec.must_relearn {
        "relearn yes\n"
    } else {
        "relearn no\n"
    });
    let crc = crc32(body.as_bytes());
    body.push_str(&format!("crc32 {crc:08x}\n"));
    body.into_bytes()
}

/// Parse a pledge file; any damage is an error (never a silent reset to term 0).
pub fn decode(bytes: &[u8]) -> Result<PledgeRecord, CodecError> {
    if bytes.is_empty() {
        return Err(CodecError::Empty);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| CodecError::NotUtf8)?;
    if !text.starts_with(MAGIC) {
        return Err(CodecError::BadMagic);
    }
    let first = text.lines().next().unwrap_or("");
    let v2 = match first {
        "pg_ha pledge v1" => false,
        "pg_ha pledge v2" => true,
        _ => {
            return Err(CodecError::UnsupportedVersion(
                first[MAGIC.len()..].to_owned(),
            ))
        }
    };
    if !text.ends_with('\n') {
        return Err(CodecError::Truncated);
    }
    let without_nl = &text[..text.len() - 1];
    let crc_start = without_nl.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let crc_line = &without_nl[crc_start..];
    let stored = crc_line
        .strip_prefix("crc32 ")
        .filter(|h| {
            h.len() == 8
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or(CodecError::Truncated)?;
    let body = &text[..crc_start];
    let computed = crc32(body.as_bytes());
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed });
    }
    let lines: Vec<&str> = body.lines().collect();
    let bad = |line: usize, expected: &'static str| CodecError::Malformed {
        line: line + 1,
        expected,
        found: lines.get(line).copied().unwrap_or("<missing>").to_owned(),
    };
    let (count, expected) = if v2 {
        (6, "exactly 6 lines before crc32")
    } else {
        (5, "exactly 5 lines before crc32")
    };
    if lines.len() != count {
        return Err(bad(lines.len().min(count), expected));
    }
    let attempt = if v2 {
        lines[3]
            .strip_prefix("attempt ")
            .filter(|h| {
                h.len() == 16
                    && h.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .ok_or_else(|| bad(3, "`attempt` and 16 lowercase hex digits"))?
    } else {
        0
    };
    // The floor and relearn lines come after the attempt line in version 2.
    let (fl, rl) = if v2 { (4, 5) } else { (3, 4) };
    let term = lines[1]
        .strip_prefix("term ")
        .and_then(parse_u64)
        .map(Term)
        .ok_or_else(|| bad(1, "`term N`"))?;
    let coordinator = match lines[2].strip_prefix("coordinator ") {
        Some("-") => None,
        Some(name) => {
            Some(NodeId(unescape(name).ok_or_else(|| {
                bad(2, "`coordinator NAME` or `coordinator -`")
            })?))
        }
        None => return Err(bad(2, "`coordinator NAME` or `coordinator -`")),
    };
    let floor = match lines[fl].strip_prefix("floor ") {
        Some("-") => None,
        Some(rest) => {
            let (t, l) = rest
                .split_once(' ')
                .ok_or_else(|| bad(fl, "`floor TERM X/Y` or `floor -`"))?;
            let ruleset_term = parse_u64(t).ok_or_else(|| bad(fl, "`floor TERM X/Y`"))?;
            let lsn = l.parse().map_err(|_| bad(fl, "`floor TERM X/Y`"))?;
            Some(RewindFloor {
                ruleset_term: Term(ruleset_term),
                lsn,
            })
        }
        None => return Err(bad(fl, "`floor TERM X/Y` or `floor -`")),
    };
    let must_relearn = match lines[rl] {
        "relearn yes" => true,
        "relearn no" => false,
        _ => return Err(bad(rl, "`relearn yes` or `relearn no`")),
    };
    Ok(PledgeRecord {
        term,
        coordinator,
        attempt,
        floor,
        must_relearn,
    })
}

fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b".-_:@+".contains(&b)
}

fn escape(name: &str) -> String {
    if name == "-" {
        return "%2D".into();
    }
    let mut out = String::new();
    for &b in name.as_bytes() {
        if is_plain(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        // An empty name still needs a token on the line; "%" alone is not valid, so use an empty escape.
        out.push_str("%00");
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    if s == "%00" {
        return Some(String::new());
    }
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else if is_plain(b[i]) {
            out.push(b[i]);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// CRC-32/IEEE (the zlib/PNG one), bitwise: pledge files are tiny.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeId {
        NodeId::from(s)
    }

    /// I1: a node pledges at most once per term: higher accepted, same pledge idempotent, others refused.
    #[test]
    fn pledge_state_machine_i1() {
        let s0 = PledgeState::fresh();
        let s1 = s0.on_pledge_request(Term(3), &n("c1"), 7).unwrap();
        assert_eq!((s1.term, s1.coordinator.clone()), (Term(3), Some(n("c1"))));
        assert_eq!(s1.on_pledge_request(Term(3), &n("c1"), 7).unwrap(), s1);
        let e = s1.on_pledge_request(Term(3), &n("c2"), 7).unwrap_err();
        assert_eq!(e.current_term(), Term(3));
        assert!(matches!(e, PledgeRefusal::TermTaken { .. }));
        let e = s1.on_pledge_request(Term(2), &n("c1"), 7).unwrap_err();
        assert_eq!(
            e,
            PledgeRefusal::LowerTerm {
                asked: Term(2),
                current: Term(3)
            }
        );
        let s2 = s1.on_pledge_request(Term(4), &n("c2"), 1).unwrap();
        assert_eq!(s2.term, Term(4));
    }

    /// I1: a coordinator that retries in a term it already used (another attempt) gets no second
    /// pledge, and only the attempt a node pledged to may promote it.
    #[test]
    fn one_attempt_per_term_i1() {
        let s = PledgeState::fresh()
            .on_pledge_request(Term(3), &n("c1"), 7)
            .unwrap();
        assert_eq!(s.attempt, 7);
        assert_eq!(
            s.on_pledge_request(Term(3), &n("c1"), 8),
            Err(PledgeRefusal::AttemptTaken {
                current: Term(3),
                coordinator: "c1".into(),
                pledged: 7,
                asked: 8
            })
        );
        assert_eq!(s.may_promote(Term(3), &n("c1"), 7), Ok(()));
        assert!(matches!(
            s.may_promote(Term(3), &n("c1"), 8),
            Err(PromoteRefusal::OtherAttempt { .. })
        ));
        assert!(matches!(
            s.may_promote(Term(3), &n("c2"), 7),
            Err(PromoteRefusal::NotPledged { .. })
        ));
        assert!(matches!(
            s.may_promote(Term(2), &n("c1"), 7),
            Err(PromoteRefusal::NotPledged { .. })
        ));
        // A later term takes a new attempt; learning a term by following records none.
        let t = s.on_pledge_request(Term(4), &n("c1"), 8).unwrap();
        assert_eq!((t.term, t.attempt), (Term(4), 8));
        let f = t.on_follow(Term(5)).unwrap().unwrap();
        assert_eq!((f.coordinator.clone(), f.attempt), (None, 0));
        assert!(f.may_promote(Term(5), &n("c1"), 0).is_err());
    }

    /// I2/I6: following a leader requires its term to be at least the pledged one, and teaches the term.
    #[test]
    fn follow_rules_i2() {
        let s = PledgeState::fresh()
            .on_pledge_request(Term(3), &n("c1"), 1)
            .unwrap();
        assert!(s.on_follow(Term(2)).is_err());
        assert_eq!(s.on_follow(Term(3)), Ok(None));
        let t = s.on_follow(Term(5)).unwrap().unwrap();
        assert_eq!((t.term, t.coordinator.clone()), (Term(5), None));
        // Learned by following: nobody may get this node's pledge in term 5.
        assert!(t.on_pledge_request(Term(5), &n("c1"), 1).is_err());
        assert!(t.on_pledge_request(Term(6), &n("c1"), 1).is_ok());
    }

    /// I3 (Postgres trap): a rewound node neither pledges nor counts until it passed its floor; a node that
    /// lost its pledge file does nothing until it relearned the term.
    #[test]
    fn floor_and_lost_file_i3() {
        let s = PledgeState::fresh()
            .on_pledge_request(Term(3), &n("c1"), 1)
            .unwrap();
        let floor = RewindFloor {
            ruleset_term: Term(3),
            lsn: Lsn(500),
        };
        let f = s.with_floor(floor);
        assert!(!f.counts_toward_durability());
        assert!(matches!(
            f.on_pledge_request(Term(9), &n("c2"), 1),
            Err(PledgeRefusal::BelowRewindFloor { .. })
        ));
        assert_eq!(f.passed_floor(Term(3), Lsn(499)), None);
        let g = f.passed_floor(Term(3), Lsn(500)).unwrap();
        assert!(g.counts_toward_durability());
        assert!(f.passed_floor(Term(4), Lsn(10)).is_some());

        let lost = PledgeState::lost();
        assert!(!lost.counts_toward_durability());
        assert!(matches!(
            lost.on_pledge_request(Term(100), &n("c"), 1),
            Err(PledgeRefusal::MustRelearn { .. })
        ));
        assert_eq!(lost.on_follow(Term(100)), Err(FollowRefusal::MustRelearn));
        let r = lost.relearn(Term(7));
        assert!(r.on_pledge_request(Term(7), &n("c"), 1).is_err());
        assert!(r.on_pledge_request(Term(8), &n("c"), 1).is_ok());
    }

    /// I2: whatever recruit quorum pledged to a term this node forgot, the others it relearns from
    /// include one of its recruits (other than this node), and one fewer would not always.
    #[test]
    fn relearn_quorum_meets_every_recruit_quorum_i2() {
        for n in 2..=7usize {
            let need = PledgeState::relearn_quorum(n);
            // Node 0 lost its file; quorums are bit sets over 0..n with more than n/2 members.
            let quorums: Vec<u32> = (0u32..1 << n)
                .filter(|q| q.count_ones() as usize * 2 > n)
                .collect();
            let others = |a: u32| a & 1 == 0;
            let answer_sets = |k: usize| {
                (0u32..1 << n).filter(move |a| others(*a) && a.count_ones() as usize == k)
            };
            for a in answer_sets(need) {
                for q in &quorums {
                    assert!(a & q & !1 != 0, "n={n}: answers {a:b} miss quorum {q:b}");
                }
            }
            let short = answer_sets(need - 1).any(|a| quorums.iter().any(|q| a & q & !1 == 0));
            assert!(short, "n={n}: {} answers would do", need - 1);
        }
        assert_eq!(PledgeState::relearn_quorum(1), 0);
        assert_eq!(PledgeState::relearn_quorum(3), 2);
        assert_eq!(PledgeState::relearn_quorum(5), 3);
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn codec_round_trip_and_format() {
        let rec = PledgeRecord {
            term: Term(7),
            coordinator: Some(n("node-b")),
            attempt: 0x9f3a_0c2e_11d4_b705,
            floor: Some(RewindFloor {
                ruleset_term: Term(6),
                lsn: Lsn(0x300_0060),
            }),
            must_relearn: false,
        };
        let bytes = encode(&rec);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(
            "pg_ha pledge v2\nterm 7\ncoordinator node-b\nattempt 9f3a0c2e11d4b705\nfloor 6 0/3000060\nrelearn no\ncrc32 "
        ));
        assert_eq!(decode(&bytes).unwrap(), rec);
        // Version 1 (before attempts were recorded) reads as attempt 0.
        let v1 = "pg_ha pledge v1\nterm 7\ncoordinator node-b\nfloor 6 0/3000060\nrelearn no\n";
        let v1 = format!("{v1}crc32 {:08x}\n", crc32(v1.as_bytes()));
        assert_eq!(
            decode(v1.as_bytes()).unwrap(),
            PledgeRecord { attempt: 0, ..rec }
        );
        for rec in [
            PledgeState::fresh(),
            PledgeState::lost(),
            PledgeState {
                term: Term(u64::MAX),
                coordinator: Some(n("weird name\n%-")),
                attempt: u64::MAX,
                floor: None,
                must_relearn: false,
            },
            PledgeState {
                term: Term(1),
                coordinator: Some(n("-")),
                attempt: 1,
                floor: None,
                must_relearn: true,
            },
            PledgeState {
                term: Term(1),
                coordinator: Some(n("")),
                attempt: 0,
                floor: None,
                must_relearn: false,
            },
        ] {
            assert_eq!(decode(&encode(&rec)).unwrap(), rec);
        }
    }

    /// I1: a torn or corrupted pledge file is an error, never a silent term reset.
    #[test]
    fn codec_detects_damage_i1() {
        let rec = PledgeRecord {
            term: Term(42),
            coordinator: Some(n("c1")),
            attempt: 42,
            floor: None,
            must_relearn: false,
        };
        let bytes = encode(&rec);
        // Every truncation fails.
        for cut in 0..bytes.len() {
            assert!(
                decode(&bytes[..cut]).is_err(),
                "prefix of {cut} bytes decoded"
            );
        }
        // Every single-bit flip fails (CRC-32 detects all 1-bit errors).
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(decode(&b).is_err(), "flip byte {i} bit {bit} decoded");
            }
        }
        assert_eq!(decode(b""), Err(CodecError::Empty));
        assert_eq!(decode(b"hello"), Err(CodecError::BadMagic));
        assert!(matches!(
            decode(b"pg_ha pledge v3\n"),
            Err(CodecError::UnsupportedVersion(v)) if v == "3"
        ));
        let mut extra = bytes.clone();
        extra.extend_from_slice(b"x\n");
        assert!(decode(&extra).is_err());
        // A well-checksummed file with a bad field is still rejected, with the line named.
        let body = "pg_ha pledge v1\nterm x\ncoordinator -\nfloor -\nrelearn no\n";
        let f = format!("{body}crc32 {:08x}\n", crc32(body.as_bytes()));
        assert!(matches!(
            decode(f.as_bytes()),
            Err(CodecError::Malformed { line: 2, .. })
        ));
    }
}
