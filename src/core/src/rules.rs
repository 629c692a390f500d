//! Owns the switches that select the protocol's rules. Production code uses `Rules::SAFE` (the default);
//! the other settings are deliberately broken variants that exist so the model checker can show it has
//! teeth (issue item 7): run the same model with a broken rule and it must find a counterexample.

/// Which recruit sets are enough to win a term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecruitRule {
    /// protocol.md: `not durable(C \ S)` and `|S| > n/2`. The only safe choice.
    PolicyAndMajority,
    /// BROKEN, tests only: `|S| > n/2` alone. Loses commits when the policy needs fewer than a majority
    /// (e.g. `any 1` on 5 nodes).
    MajorityOnly,
}

/// The rule set used by a coordinator's attempt and by a leader's commit gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rules {
    pub recruit: RecruitRule,
    /// Decide revocation under the newest ruleset any recruit reports (true, safe). False = BROKEN, tests
    /// only: keep using the ruleset the coordinator started with (the seed-002 bug).
    pub newest_ruleset: bool,
    /// While a ruleset change is pending, a commit needs to be durable under the old AND the new ruleset
    /// (true, safe). False = BROKEN, tests only: the old ruleset alone.
    pub joint_while_pending: bool,
}

impl Rules {
    /// The rules of protocol.md.
    pub const SAFE: Rules = Rules {
        recruit: RecruitRule::PolicyAndMajority,
        newest_ruleset: true,
        joint_while_pending: true,
    };

    /// Is this the safe rule set?
    pub fn is_safe(&self) -> bool {
        *self == Rules::SAFE
    }
}

impl Default for Rules {
    fn default() -> Self {
        Rules::SAFE
    }
}
