//! The coordinator (template steps 1-5, then 6-7 through the candidate): every agent runs one. It
//! watches the leader through the peer poller's answers; when the leader has been unreachable for
//! `ha.failover_timeout` and a majority of the cohort (itself included) says the same, it races for a
//! new term: pledges from the members, revocation and discovery decided by the core's `Attempt`, then
//! `Promote` on the chosen candidate. Losers back off with jitter. Every step is reported to the main
//! thread as a log line.

use super::poller::channel_for;
use super::wire;
use super::{auth, Event, Events, Shared};
use crate::config::AgentAddr;
use crate::proto::agent_client::AgentClient;
use crate::proto::{PledgeReply, PledgeRequest, PromoteReply, PromoteRequest};
use pg_ha_core::{should_race, Attempt, AttemptKind, Decision, NodeId, Preferences, Ruleset, Term};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn log(events: &Events, msg: String) {
    let _ = events.send(Event::Log(msg));
}

/// A jitter in [0, max): coordinators that lost a race should not collide again.
fn jitter(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    let n = h.finish();
    Duration::from_micros(n % (max.as_micros().max(1) as u64))
}

fn request<T>(token: &str, body: T, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(body);
    req.set_timeout(timeout);
    if let Ok(v) = auth::bearer(token).parse() {
        req.metadata_mut().insert(auth::METADATA_KEY, v);
    }
    req
}

/// A fresh attempt id: random (the process' hash seed, the clock, a counter), never 0. Two attempts of
/// one coordinator in one term must differ (a node pledges to one attempt per term, I1).
fn new_attempt_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish().max(1)
}

async fn pledge_call(
    addr: AgentAddr,
    token: String,
    term: Term,
    attempt: u64,
    me: String,
    timeout: Duration,
) -> Result<PledgeReply, String> {
    let ch = channel_for(&addr, timeout)?;
    let mut c = AgentClient::new(ch);
    let req = request(
        &token,
        PledgeRequest {
            term: term.0,
            coordinator: me,
            attempt,
        },
        timeout,
    );
    match tokio::time::timeout(timeout, c.pledge(req)).await {
        Err(_) => Err("no answer".into()),
        Ok(Err(s)) => Err(s.message().to_string()),
        Ok(Ok(r)) => Ok(r.into_inner()),
    }
}

async fn promote_call(
    addr: AgentAddr,
    token: String,
    req: PromoteRequest,
    timeout: Duration,
) -> Result<PromoteReply, String> {
    let ch = channel_for(&addr, timeout)?;
    let mut c = AgentClient::new(ch);
    match tokio::time::timeout(timeout, c.promote(request(&token, req, timeout))).await {
        Err(_) => Err("no answer".into()),
        Ok(Err(s)) => Err(s.message().to_string()),
        Ok(Ok(r)) => Ok(r.into_inner()),
    }
}

/// When `leader` last answered this agent as an established leader of a term this node may still
/// follow (a pledge above its term means this node no longer acknowledges it: for us it is lost).
fn leader_last_healthy(shared: &Shared, leader: &str) -> Option<Instant> {
    let pledged = shared.snapshot.read().reply.pledged_term;
    shared
        .peer_views
        .read()
        .values()
        .filter(|v| {
            v.reply.as_ref().is_some_and(|r| {
                r.node_name == leader
                    && r.role == "leader"
                    && r.established
                    && !r.in_recovery
                    && r.ruleset_term >= pledged
            })
        })
        .filter_map(|v| v.last_ok)
        .max()
}

/// Is `leader` healthy from here: it answered recently as an established leader?
fn leader_ok(shared: &Shared, leader: &str, timeout: Duration) -> bool {
    leader_last_healthy(shared, leader).is_some_and(|t| t.elapsed() < timeout)
}

pub async fn run(
    shared: Arc<Shared>,
    events: Events,
    me: String,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff_until = Instant::now();
    // The leader we watch and when it was last seen healthy (answering, established).
    let mut watched: Option<(String, Instant)> = None;
    // Since when pledges above the known term have been seen without a new leader.
    let mut racing_since: Option<Instant> = None;
    loop {
        let interval = *shared.poll_interval.read();
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let timeout = *shared.failover_timeout.read();
        let snap = shared.snapshot.read().clone();
        let Some(known) = snap.ruleset.clone() else {
            shared.leader_lost.store(false, Ordering::Relaxed);
            continue;
        };
        // The leader of the newest ruleset anyone reports: a node restarted with an old catalog must
        // not keep watching (or being) a leader the cluster has moved on from.
        let mut leader = known.leader.as_str().to_string();
        let mut newest = (snap.reply.ruleset_term, snap.reply.ruleset_version);
        for v in shared.peer_views.read().values() {
            let fresh = v.last_ok.is_some_and(|t| t.elapsed() < timeout);
            if let Some(r) = v.reply.as_ref().filter(|_| fresh) {
                if (r.ruleset_term, r.ruleset_version) > newest && !r.leader.is_empty() {
                    newest = (r.ruleset_term, r.ruleset_version);
                    leader = r.leader.clone();
                }
            }
        }
        let i_lead = snap.reply.role == "leader" && leader == me;
        // Lost = no healthy answer from the leader for `timeout` (counted from the last healthy
        // answer, or from when this agent started watching this leader).
        match &watched {
            Some((l, _)) if *l == leader => {}
            _ => watched = Some((leader.clone(), Instant::now())),
        }
        if let (Some(t), Some((_, since))) =
            (leader_last_healthy(&shared, &leader), watched.as_mut())
        {
            if t > *since {
                *since = t;
            }
        }
        let lost = !i_lead
            && watched
                .as_ref()
                .is_some_and(|(_, t)| t.elapsed() >= timeout);
        shared.leader_lost.store(lost, Ordering::Relaxed);
        if !lost || !known.is_member(&NodeId::new(me.clone())) || snap.reply.paused {
            continue;
        }
        if Instant::now() < backoff_until {
            continue;
        }
        // Detection: race only if a majority of the cohort, this node included, lost the leader too.
        let answers: Vec<(NodeId, bool)> = shared
            .peer_views
            .read()
            .values()
            .filter(|v| v.last_ok.is_some_and(|t| t.elapsed() < timeout))
            .filter_map(|v| v.reply.as_ref())
            .filter(|r| known.is_member(&NodeId::new(r.node_name.clone())))
            .map(|r| (NodeId::new(r.node_name.clone()), r.leader_lost))
            .collect();
        if !should_race(true, &answers, known.n()) {
            continue;
        }
        // Jitter before racing so that simultaneous detectors rarely collide; re-check afterwards.
        tokio::time::sleep(jitter((timeout / 8).min(Duration::from_millis(250)))).await;
        if leader_ok(&shared, &leader, timeout) {
            continue;
        }
        // Another coordinator is already racing (this node or a peer pledged above the ruleset's
        // term): give it time to finish instead of deposing its fresh leader.
        let racing = shared.snapshot.read().reply.pledged_term > known.term.0
            || shared.peer_views.read().values().any(|v| {
                v.last_ok.is_some_and(|t| t.elapsed() < timeout)
                    && v.reply
                        .as_ref()
                        .is_some_and(|r| r.pledged_term > known.term.0)
            });
        // ...but not forever: an attempt that gathered pledges and then died (its coordinator or
        // candidate crashed) leaves them behind; after two timeouts, race above them.
        if racing {
            let since = *racing_since.get_or_insert_with(Instant::now);
            if since.elapsed() < timeout * 2 {
                log(
                    &events,
                    format!(
                        "coordinator {me}: another coordinator is racing above term {}; watching",
                        known.term
                    ),
                );
                backoff_until = Instant::now() + timeout;
                continue;
            }
            log(
                &events,
                format!("coordinator {me}: pledges above term {} have produced no leader for {} ms; racing above them", known.term, since.elapsed().as_millis()),
            );
        }
        racing_since = None;
        let kind = AttemptKind::Failover {
            old_leader: NodeId::new(leader.clone()),
        };
        let outcome = attempt(&shared, &events, &me, known, kind, timeout)
            .await
            .is_ok();
        watched = None;
        if !outcome {
            let wait = timeout + jitter(timeout);
            log(
                &events,
                format!("coordinator: backing off for {} ms", wait.as_millis()),
            );
            backoff_until = Instant::now() + wait;
        } else {
            backoff_until = Instant::now() + timeout;
        }
    }
}

/// One attempt (failover or switchover); Ok(new leader) if a candidate was promoted.
pub async fn attempt(
    shared: &Arc<Shared>,
    events: &Events,
    me: &str,
    known: Ruleset,
    kind: AttemptKind,
    timeout: Duration,
) -> Result<String, String> {
    let Some(token) = shared.token.read().clone() else {
        return Err("this agent has no cluster token".into());
    };
    let what = match &kind {
        AttemptKind::Failover { old_leader } => format!(
            "leader {old_leader} lost for {} ms on a majority",
            timeout.as_millis()
        ),
        AttemptKind::Switchover { leader, target } => format!(
            "switchover from {leader} to {}",
            target
                .as_ref()
                .map(|t| t.as_str())
                .unwrap_or("the best member")
        ),
    };
    let reason = match &kind {
        AttemptKind::Failover { .. } => "failover",
        AttemptKind::Switchover { .. } => "switchover",
    };
    let started = Instant::now();
    let mut seen: Vec<Term> = vec![known.term];
    for v in shared.peer_views.read().values() {
        if let Some(r) = &v.reply {
            seen.push(Term(r.term));
            seen.push(Term(r.pledged_term));
        }
    }
    seen.push(Term(shared.snapshot.read().reply.term));
    // Never a term this agent already raced for: the views above may not show its pledges yet.
    seen.push(Term(shared.highest_term_used.load(Ordering::Acquire)));
    let term = Attempt::next_term(seen);
    shared.highest_term_used.fetch_max(term.0, Ordering::AcqRel);
    let attempt_id = new_attempt_id();
    let mut att = Attempt::new(NodeId::new(me), term, known.clone(), kind);
    log(
        events,
        format!(
            "coordinator {me}: {what}; racing for term {term} (attempt {attempt_id:016x}) under ruleset v{} (cohort [{}], policy {})",
            known.version,
            known.cohort.keys().map(|n| n.as_str()).collect::<Vec<_>>().join(", "),
            known.policy
        ),
    );
    let deadline = Instant::now() + timeout.max(Duration::from_secs(2)) * 2;
    let rpc_timeout = (timeout / 2).clamp(Duration::from_millis(300), Duration::from_secs(2));
    let mut answered: BTreeSet<NodeId> = BTreeSet::new();
    loop {
        // Ask every node the attempt needs that has not answered yet (the cohort, plus members of any
        // newer ruleset a recruit reported).
        let mut ask: BTreeSet<NodeId> = att.nodes_to_ask();
        ask.extend(att.known().cohort.keys().cloned());
        let calls: Vec<_> = ask
            .iter()
            .filter(|n| !answered.contains(*n))
            .filter_map(|n| {
                let addr = if n.as_str() == me {
                    Some(shared.own_address.clone())
                } else {
                    shared.address_of(n.as_str())
                }?;
                let (token, me) = (token.clone(), me.to_string());
                let node = n.clone();
                Some(async move {
                    (
                        node,
                        pledge_call(addr, token, term, attempt_id, me, rpc_timeout).await,
                    )
                })
            })
            .collect();
        for (node, r) in futures_join_all(calls).await {
            match r {
                Ok(rep) if rep.accepted => {
                    let report = wire::report_from_wire(&rep);
                    log(
                        events,
                        format!("coordinator {me}: term {term}: pledge from {report}"),
                    );
                    answered.insert(node);
                    if let Ok(e) = att.on_reply(report) {
                        if e.newer_ruleset {
                            log(events, format!(
                                "coordinator {me}: term {term}: a recruit holds a newer ruleset (v{}); revocation now checked against it",
                                att.quorum_ruleset().version
                            ));
                        }
                    }
                }
                Ok(rep) => {
                    log(
                        events,
                        format!(
                            "coordinator {me}: term {term}: {node} refused: {} (its term {})",
                            rep.refusal, rep.current_term
                        ),
                    );
                    answered.insert(node.clone());
                    att.on_refusal(node, Term(rep.current_term));
                }
                Err(e) => log(
                    events,
                    format!("coordinator {me}: term {term}: no pledge from {node}: {e}"),
                ),
            }
        }
        let decision = att.decide(&Preferences::default());
        match decision {
            Decision::Wait { .. } if Instant::now() < deadline => {
                tokio::time::sleep(rpc_timeout / 2).await;
                continue;
            }
            Decision::Wait { ask } => {
                let msg = format!(
                    "term {term}: no recruit quorum before the deadline (still missing {{{}}})",
                    ask.iter()
                        .map(|n| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                log(events, format!("coordinator {me}: {msg}"));
                return Err(msg);
            }
            Decision::CatchUp { .. } if Instant::now() < deadline => {
                log(events, format!("coordinator {me}: term {term}: {decision}"));
                // A re-pledge is idempotent and reports the new position.
                answered.clear();
                tokio::time::sleep(rpc_timeout / 2).await;
                continue;
            }
            Decision::Promote { node, ruleset, why } => {
                log(
                    events,
                    format!(
                        "coordinator {me}: term {term}: recruits [{}]; {}; candidate {node}: {why}",
                        att.recruits()
                            .iter()
                            .map(|n| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        att.discovery().map(|d| d.to_string()).unwrap_or_default()
                    ),
                );
                if shared.failpoint.read().as_str() == "coordinator_stall_after_pledges" {
                    log(events, format!("coordinator {me}: term {term}: failpoint coordinator_stall_after_pledges: stalling 60 s before promoting {node}"));
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                let addr = if node.as_str() == me {
                    Some(shared.own_address.clone())
                } else {
                    shared.address_of(node.as_str())
                };
                let Some(addr) = addr else {
                    let msg = format!("term {term}: no address for candidate {node}");
                    log(events, format!("coordinator {me}: {msg}"));
                    return Err(msg);
                };
                let req = PromoteRequest {
                    term: term.0,
                    coordinator: me.to_string(),
                    ruleset: Some(wire::ruleset_to_wire(&ruleset)),
                    reason: reason.into(),
                    attempt: attempt_id,
                };
                let result = match promote_call(addr, token.clone(), req, Duration::from_secs(60))
                    .await
                {
                    Ok(r) if r.ok => {
                        log(events, format!(
                            "coordinator {me}: term {term}: {node} promoted (timeline {}, term starts at {}); {reason} took {} ms so far",
                            r.timeline,
                            pg_ha_core::Lsn(r.start_lsn),
                            started.elapsed().as_millis()
                        ));
                        return Ok(node.as_str().to_string());
                    }
                    Ok(r) => r.error,
                    Err(e) => e,
                };
                let msg = format!("term {term}: promotion of {node} failed: {result}");
                log(events, format!("coordinator {me}: {msg}"));
                return Err(msg);
            }
            other => {
                log(events, format!("coordinator {me}: term {term}: {other}"));
                return Err(format!("term {term}: {other}"));
            }
        }
    }
}

/// Run the futures concurrently and collect their outputs (tokio has no join_all of its own).
async fn futures_join_all<F, T>(futs: Vec<F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// A planned switchover, run by the leader's agent for `ha.switchover()`. The leader's fence is
/// already closed (no new writes); wait until the target has flushed everything the leader has, then
/// the template with the live leader pledging too. Ok(new leader name).
pub async fn switchover(
    shared: Arc<Shared>,
    events: Events,
    me: String,
    known: Ruleset,
    target: String,
) -> Result<String, String> {
    let timeout = *shared.failover_timeout.read();
    let token = shared
        .token
        .read()
        .clone()
        .ok_or("this agent has no cluster token")?;
    let addr = shared
        .address_of(&target)
        .ok_or_else(|| format!("no agent address known for {target}"))?;
    // Catch-up: the target streams from us until it has our final position (it stops moving once
    // writes are fenced; background WAL such as a checkpoint is simply included).
    let deadline = Instant::now() + timeout.max(Duration::from_secs(5));
    loop {
        let leader_flush = shared.snapshot.read().reply.flush_lsn;
        let ch = channel_for(&addr, timeout)?;
        let st = super::poller::status_call(ch, Some(&token), &me, timeout).await?;
        if st.flush_lsn >= leader_flush && shared.snapshot.read().reply.flush_lsn == leader_flush {
            log(
                &events,
                format!(
                    "coordinator {me}: switchover: {target} has flushed the leader's final position {}",
                    pg_ha_core::Lsn(leader_flush)
                ),
            );
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{target} did not catch up to {} within {} ms (it is at {})",
                pg_ha_core::Lsn(leader_flush),
                deadline.elapsed().as_millis(),
                pg_ha_core::Lsn(st.flush_lsn)
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let kind = AttemptKind::Switchover {
        leader: NodeId::new(me.clone()),
        target: Some(NodeId::new(target)),
    };
    attempt(&shared, &events, &me, known, kind, timeout).await
}

/// `ha.failover(target)`: an attempt now (the leader is unreachable from here). Two operators (or an
/// operator and an automatic coordinator) racing both lose a term now and then; retry a few times with
/// jitter, and stop as soon as some coordinator has established a leader above the term we started from.
pub async fn forced_failover(
    shared: Arc<Shared>,
    events: Events,
    me: String,
    known: Ruleset,
    target: String,
) -> Result<String, String> {
    let timeout = *shared.failover_timeout.read();
    let mut last_err = String::new();
    for _ in 0..5 {
        let kind = AttemptKind::Failover {
            old_leader: known.leader.clone(),
        };
        match attempt(&shared, &events, &me, known.clone(), kind, timeout).await {
            Ok(leader) if target.is_empty() || leader == target => return Ok(leader),
            Ok(leader) => {
                return Ok(format!(
                "{leader} (not {target}: {leader} held the most advanced WAL among the recruits)"
            ))
            }
            Err(e) => last_err = e,
        }
        tokio::time::sleep(jitter(timeout / 2) + Duration::from_millis(50)).await;
        let established = shared.peer_views.read().values().find_map(|v| {
            v.reply
                .as_ref()
                .filter(|r| r.role == "leader" && r.established && r.ruleset_term > known.term.0)
                .map(|r| r.node_name.clone())
        });
        if let Some(l) = established {
            log(
                &events,
                format!(
                    "coordinator {me}: {l} was established by another coordinator; standing back"
                ),
            );
            return Ok(l);
        }
    }
    Err(last_err)
}
