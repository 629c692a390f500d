//! Owns the operator's durability policy: its text form (`any K`, `zones K`), parsing with precise errors,
//! and its meaning as a predicate over a set of cohort nodes (see `Policy::holds`).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::types::Zone;

/// When is a commit durable? A predicate over the set of cohort members that flushed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Policy {
    /// `any K`: the leader and at least K followers of the cohort flushed it (K + 1 cohort members in all).
    AnyK(u32),
    /// `zones K`: the cohort members that flushed it (leader included) span at least K distinct zones.
    Zones(u32),
}

impl Policy {
    /// The predicate itself, over the cohort members of a set: `members` is how many there are, `zones`
    /// the distinct zones they span. Nodes outside the cohort must already be filtered out by the caller
    /// (see `Ruleset::durable`).
    ///
    /// The leader is deliberately not special here: `any K` asks for K + 1 members, whoever leads. A set
    /// that flushed a commit always contains the leader that wrote it, so for acknowledgement this is
    /// exactly "leader plus K followers"; and for the recruit rule `not durable(C \ S)` it asks "could the
    /// nodes outside S acknowledge a commit under *some* leader of this cohort", which is what revocation
    /// and discovery need (see `quorum.rs`).
    pub fn holds(&self, members: usize, zones: usize) -> bool {
        match *self {
            Policy::AnyK(k) => members > k as usize,
            Policy::Zones(k) => zones >= k as usize,
        }
    }

    /// `holds` for a set given by its members' zones.
    pub fn holds_for<'a>(&self, zones_of_members: impl IntoIterator<Item = &'a Zone>) -> bool {
        let mut n = 0;
        let mut distinct = BTreeSet::new();
        for z in zones_of_members {
            n += 1;
            distinct.insert(z);
        }
        self.holds(n, distinct.len())
    }

    /// The K of the policy.
    pub fn k(&self) -> u32 {
        match *self {
            Policy::AnyK(k) | Policy::Zones(k) => k,
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::AnyK(k) => write!(f, "any {k}"),
            Policy::Zones(k) => write!(f, "zones {k}"),
        }
    }
}

/// Why a text is not a policy. Each message names what was expected.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PolicyParseError {
    #[error("empty policy: expected `any K` or `zones K`")]
    Empty,
    #[error("unknown policy kind {0:?}: expected `any K` or `zones K`")]
    UnknownKind(String),
    #[error("policy `{0}` lacks its count: expected `{0} K` with K >= 1")]
    MissingCount(String),
    #[error("policy count {0:?} is not a whole number: expected K >= 1")]
    BadCount(String),
    #[error(
        "policy count must be at least 1 (got 0): `{0} 0` would make every commit durable at once"
    )]
    ZeroCount(String),
    #[error("unexpected text {0:?} after the policy count")]
    Trailing(String),
}

impl FromStr for Policy {
    type Err = PolicyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut words = s.split_whitespace();
        let kind = words.next().ok_or(PolicyParseError::Empty)?;
        let kind_lc = kind.to_ascii_lowercase();
        let make: fn(u32) -> Policy = match kind_lc.as_str() {
            "any" => Policy::AnyK,
            "zones" => Policy::Zones,
            _ => return Err(PolicyParseError::UnknownKind(kind.to_owned())),
        };
        let count = words
            .next()
            .ok_or_else(|| PolicyParseError::MissingCount(kind_lc.clone()))?;
        if let Some(extra) = words.next() {
            return Err(PolicyParseError::Trailing(extra.to_owned()));
        }
        if !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PolicyParseError::BadCount(count.to_owned()));
        }
        let k: u32 = count
            .parse()
            .map_err(|_| PolicyParseError::BadCount(count.to_owned()))?;
        if k == 0 {
            return Err(PolicyParseError::ZeroCount(kind_lc));
        }
        Ok(make(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_round_trips() {
        assert_eq!("any 1".parse::<Policy>().unwrap(), Policy::AnyK(1));
        assert_eq!(
            "  ZONES\t 3 \n".parse::<Policy>().unwrap(),
            Policy::Zones(3)
        );
        assert_eq!("Any 12".parse::<Policy>().unwrap(), Policy::AnyK(12));
        for p in [Policy::AnyK(1), Policy::AnyK(7), Policy::Zones(2)] {
            assert_eq!(p.to_string().parse::<Policy>().unwrap(), p);
        }
    }

    #[test]
    fn precise_errors() {
        use PolicyParseError::*;
        assert_eq!("".parse::<Policy>(), Err(Empty));
        assert_eq!("   ".parse::<Policy>(), Err(Empty));
        assert_eq!("all 2".parse::<Policy>(), Err(UnknownKind("all".into())));
        assert_eq!("any".parse::<Policy>(), Err(MissingCount("any".into())));
        assert_eq!("any two".parse::<Policy>(), Err(BadCount("two".into())));
        assert_eq!("any -1".parse::<Policy>(), Err(BadCount("-1".into())));
        assert_eq!("any +1".parse::<Policy>(), Err(BadCount("+1".into())));
        assert_eq!(
            "any 99999999999".parse::<Policy>(),
            Err(BadCount("99999999999".into()))
        );
        assert_eq!("zones 0".parse::<Policy>(), Err(ZeroCount("zones".into())));
        assert_eq!("any 1 2".parse::<Policy>(), Err(Trailing("2".into())));
        // Messages are readable on their own.
        assert!(ZeroCount("any".into()).to_string().contains("at least 1"));
    }

    #[test]
    fn predicate() {
        assert!(!Policy::AnyK(1).holds(1, 1));
        assert!(Policy::AnyK(1).holds(2, 1));
        assert!(!Policy::Zones(2).holds(5, 1));
        assert!(Policy::Zones(2).holds(2, 2));
        let (a, b) = (Zone::from("a"), Zone::from("b"));
        assert!(Policy::Zones(2).holds_for([&a, &a, &b]));
        assert!(!Policy::Zones(2).holds_for([&a, &a]));
    }
}
