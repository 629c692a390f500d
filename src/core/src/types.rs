//! Owns the protocol's basic vocabulary: node ids, zones, terms and WAL positions (LSNs).
//!
//! Everything here is a plain value: cheap to clone, totally ordered, printable the way an operator would
//! write it (an LSN prints as Postgres prints it, `X/Y` in hex).

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// The name of one node (one PostgreSQL instance with its agent). Coordinators are named by the node whose
/// agent runs them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub String);

impl NodeId {
    pub fn new(name: impl Into<String>) -> Self {
        NodeId(name.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        NodeId(s.to_owned())
    }
}

/// A failure domain (availability zone, rack, data centre). `zones K` policies count distinct zones.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Zone(pub String);

impl Zone {
    pub fn new(name: impl Into<String>) -> Self {
        Zone(name.into())
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Zone {
    fn from(s: &str) -> Self {
        Zone(s.to_owned())
    }
}

/// A term: strictly increasing; each coordinator attempt and each leadership uses one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Term(pub u64);

impl Term {
    pub const ZERO: Term = Term(0);
    /// The next term. Saturates: a cluster will not live through 2^64 attempts.
    pub fn next(self) -> Term {
        Term(self.0.saturating_add(1))
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A WAL position. Displays and parses in Postgres' `X/Y` form (two hex numbers: the high and low 32 bits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);
    pub const MAX: Lsn = Lsn(u64::MAX);
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Why a text is not an LSN.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum LsnParseError {
    #[error("LSN {0:?} has no '/': expected the form X/Y in hex, e.g. 0/16B3748")]
    MissingSlash(String),
    #[error("LSN {text:?}: {part:?} is not a hex number of at most 8 digits")]
    BadHalf { text: String, part: String },
}

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let (hi, lo) = t
            .split_once('/')
            .ok_or_else(|| LsnParseError::MissingSlash(s.to_owned()))?;
        let half = |p: &str| -> Result<u64, LsnParseError> {
            let ok = !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(LsnParseError::BadHalf {
                    text: s.to_owned(),
                    part: p.to_owned(),
                });
            }
            Ok(u64::from_str_radix(p, 16).expect("checked hex digits"))
        };
        Ok(Lsn((half(hi)? << 32) | half(lo)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_form_matches_postgres() {
        assert_eq!(Lsn(0x16B3748).to_string(), "0/16B3748");
        assert_eq!(Lsn((1 << 32) | 0xA).to_string(), "1/A");
        assert_eq!("0/16B3748".parse::<Lsn>().unwrap(), Lsn(0x16B3748));
        assert_eq!(
            "ff/ffffffff".parse::<Lsn>().unwrap(),
            Lsn((0xff << 32) | 0xffff_ffff)
        );
        assert_eq!("FFFFFFFF/FFFFFFFF".parse::<Lsn>().unwrap(), Lsn::MAX);
        for v in [0u64, 1, 0xFFFF_FFFF, 1 << 32, u64::MAX, 0x1234_5678_9ABC] {
            assert_eq!(Lsn(v).to_string().parse::<Lsn>().unwrap(), Lsn(v));
        }
    }

    #[test]
    fn lsn_rejects_bad_text() {
        assert!(matches!(
            "16B3748".parse::<Lsn>(),
            Err(LsnParseError::MissingSlash(_))
        ));
        assert!(matches!(
            "0/".parse::<Lsn>(),
            Err(LsnParseError::BadHalf { .. })
        ));
        assert!(matches!(
            "0/xyz".parse::<Lsn>(),
            Err(LsnParseError::BadHalf { .. })
        ));
        assert!(matches!(
            "100000000/0".parse::<Lsn>(),
            Err(LsnParseError::BadHalf { .. })
        ));
        assert!(matches!(
            "-1/0".parse::<Lsn>(),
            Err(LsnParseError::BadHalf { .. })
        ));
    }
}
