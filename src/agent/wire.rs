//! Conversions between the core's types and their protobuf form.

use crate::proto;
use pg_ha_core::{Lsn, NodeId, NodeReport, Policy, Ruleset, Term, Zone};
use std::collections::BTreeMap;

pub fn ruleset_to_wire(r: &Ruleset) -> proto::Ruleset {
    proto::Ruleset {
        term: r.term.0,
        version: r.version,
        leader: r.leader.as_str().to_string(),
        cohort: r.cohort.keys().map(|n| n.as_str().to_string()).collect(),
        zones: r.cohort.values().map(|z| z.0.clone()).collect(),
        policy: r.policy.to_string(),
        prior_cohort: r
            .prior
            .as_ref()
            .map(|p| p.cohort.keys().map(|n| n.as_str().to_string()).collect())
            .unwrap_or_default(),
        prior_zones: r
            .prior
            .as_ref()
            .map(|p| p.cohort.values().map(|z| z.0.clone()).collect())
            .unwrap_or_default(),
        prior_policy: r
            .prior
            .as_ref()
            .map(|p| p.policy.to_string())
            .unwrap_or_default(),
    }
}

pub fn ruleset_from_wire(w: &proto::Ruleset) -> Option<Ruleset> {
    let policy: Policy = w.policy.parse().ok()?;
    if w.cohort.len() != w.zones.len() {
        return None;
    }
    let cohort: BTreeMap<NodeId, Zone> = w
        .cohort
        .iter()
        .zip(&w.zones)
        .map(|(n, z)| (NodeId::new(n.clone()), Zone::new(z.clone())))
        .collect();
    let mut r = Ruleset::new(
        Term(w.term),
        w.version,
        NodeId::new(w.leader.clone()),
        cohort,
        policy,
    )
    .ok()?;
    if !w.prior_policy.is_empty() {
        if w.prior_cohort.len() != w.prior_zones.len() {
            return None;
        }
        r.prior = Some(pg_ha_core::ruleset::Prior {
            cohort: w
                .prior_cohort
                .iter()
                .zip(&w.prior_zones)
                .map(|(n, z)| (NodeId::new(n.clone()), Zone::new(z.clone())))
                .collect(),
            policy: w.prior_policy.parse().ok()?,
        });
    }
    Some(r)
}

/// The core's report from an accepted pledge reply.
pub fn report_from_wire(r: &proto::PledgeReply) -> NodeReport {
    NodeReport {
        node: NodeId::new(r.node_name.clone()),
        zone: Zone::new(r.zone.clone()),
        pledged_term: Term(r.pledged_term),
        ruleset: r.ruleset.as_ref().and_then(ruleset_from_wire),
        flush_lsn: Lsn(r.flush_lsn),
        timeline: r.timeline,
        reachable: true,
        priority: 0,
    }
}
