//! One term, one attempt (I1): a coordinator that retries may pick a term it already used (it chooses
//! from its view of the peers, which can be stale). Each attempt carries its own id; a node pledges to
//! one attempt per term and is promoted only by the attempt it pledged to, so two attempts in one term
//! cannot both promote a node. The test acts as the coordinator itself (direct RPCs).

use pg_test::{agent_pledge, ha, pb, Cluster, ClusterSpec, Node};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn pledge(c: &Cluster, n: &Node, term: u64, attempt: u64) -> pb::PledgeReply {
    agent_pledge(
        &n.agent_addr(),
        c.token(),
        pb::PledgeRequest {
            term,
            coordinator: "pg_test".into(),
            attempt,
        },
    )
    .unwrap()
}

/// `Promote` for `n` as leader of `term` (cohort node1..node3, `any 1`), from attempt `attempt`.
fn promote(c: &Cluster, n: &Node, term: u64, version: u64, attempt: u64) -> pb::PromoteReply {
    ha::promote(c, n, term, version, attempt).unwrap()
}

/// I1 (issue 12 item 11, first suspicion): coordinator "pg_test" runs attempt 1 in term T+1 (pledges
/// from node2 and node3, promotes node2), then retries as attempt 2 in the same term T+1, as a
/// coordinator choosing its term from stale views could. node3 already pledged to attempt 1 in T+1: it
/// must refuse attempt 2, and a promotion by attempt 2 must fail, or term T+1 has two leaders.
#[test]
fn a_retried_attempt_in_the_same_term_cannot_promote_a_second_leader() {
    let c = Cluster::start(ClusterSpec::ha_any1(3)).unwrap();
    let (n1, n2, n3) = (c.node(0), c.node(1), c.node(2));
    n1.query_strings("SELECT ha.pause(); CREATE TABLE probe(x int)")
        .unwrap();
    c.wait_replayed(n1, T).unwrap();
    let st = n1.agent_status().unwrap();
    let (next, version) = (st.ruleset_term + 1, st.ruleset_version + 1);

    for n in [n2, n3] {
        let r = pledge(&c, n, next, 1);
        assert!(r.accepted, "{} refused attempt 1: {}", n.name(), r.refusal);
    }
    let first = promote(&c, n2, next, version, 1);
    assert!(
        first.ok,
        "attempt 1 could not promote node2: {}",
        first.error
    );

    let again = pledge(&c, n3, next, 2);
    let second = promote(&c, n3, next, version, 2);
    assert!(
        !second.ok,
        "I1: term {next} has two leaders: node2 (attempt 1) and node3 (attempt 2 of the same coordinator; node3's pledge to it was {})",
        if again.accepted {
            "accepted".to_string()
        } else {
            format!("refused: {}", again.refusal)
        }
    );
    assert!(
        !again.accepted,
        "I1: node3 pledged to a second attempt in term {next}"
    );
    assert!(
        second.error.contains("attempt"),
        "the refusal names the attempt: {}",
        second.error
    );
}
