//! The figures `/metrics` serves (Prometheus text exposition format 0.0.4) and the answers of the
//! health endpoints, computed from what the agent already holds: the main thread's snapshot of this
//! node and the poller's views of its peers. Pure functions of a [`View`]: no I/O, no Postgres.

use super::{NodeSnapshot, PeerView, Shared};
use crate::config::AgentAddr;
use std::collections::BTreeMap;
use std::fmt::{Display, Write};
use std::time::{Duration, Instant};

/// A snapshot older than this means the main loop is stuck: this node is unhealthy (the same bound
/// `ha.status` applies to the agent's heartbeat).
pub const STALE: Duration = Duration::from_secs(2);

/// Roles a node can show; `unreachable` only for peers.
const ROLES: [&str; 4] = ["leader", "follower", "observer", "unreachable"];

/// Everything the endpoints read, copied out of [`Shared`] at once.
#[derive(Clone, Debug)]
pub struct View {
    pub me: NodeSnapshot,
    pub peers: Vec<(AgentAddr, PeerView)>,
    pub now: Instant,
    /// A peer's answer older than this does not make it healthy (`ha.failover_timeout`).
    pub peer_fresh: Duration,
}

impl View {
    pub fn of(shared: &Shared) -> View {
        View {
            me: shared.snapshot.read().clone(),
            peers: shared
                .peer_views
                .read()
                .iter()
                .map(|(a, v)| (a.clone(), v.clone()))
                .collect(),
            now: Instant::now(),
            peer_fresh: *shared.failover_timeout.read(),
        }
    }

    /// The peer's latest poll was answered, and within `peer_fresh`. (A poll that hangs is abandoned
    /// without a failure report, so `reachable` alone can stay true for a frozen peer.)
    pub fn answered(&self, pv: &PeerView) -> bool {
        pv.reachable
            && pv
                .last_ok
                .is_some_and(|t| self.now.saturating_duration_since(t) < self.peer_fresh)
    }

    /// The main thread published a snapshot recently.
    pub fn fresh(&self) -> bool {
        self.me.ready
            && self
                .me
                .facts
                .published
                .is_some_and(|t| self.now.saturating_duration_since(t) < STALE)
    }
}

/// One known node as this agent sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeRow {
    pub name: String,
    pub zone: String,
    /// `leader`, `follower`, `observer` (as the node reports itself), or `unreachable`.
    pub role: String,
    /// In the cohort of the newest ruleset row this node holds.
    pub member: bool,
    pub healthy: bool,
    pub term: u64,
    pub flush_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
    pub is_self: bool,
}

/// This node, every peer of this cluster that ever answered, and every cohort member never heard
/// from (unreachable), by name.
pub fn nodes(v: &View) -> Vec<NodeRow> {
    let me = &v.me.reply;
    let cohort: Vec<(String, String)> =
        v.me.ruleset
            .as_ref()
            .map(|r| {
                r.cohort
                    .iter()
                    .map(|(n, z)| (n.as_str().to_string(), z.0.clone()))
                    .collect()
            })
            .unwrap_or_default();
    let is_member = |name: &str| cohort.iter().any(|(n, _)| n == name);
    let mut rows: BTreeMap<String, NodeRow> = BTreeMap::new();
    rows.insert(
        me.node_name.clone(),
        NodeRow {
            name: me.node_name.clone(),
            zone: me.zone.clone(),
            role: me.role.clone(),
            member: is_member(&me.node_name),
            healthy: v.fresh() && v.me.facts.rejoin_failed.is_none(),
            term: me.term,
            flush_lsn: Some(me.flush_lsn),
            replay_lsn: Some(me.replay_lsn),
            is_self: true,
        },
    );
    for (_, pv) in &v.peers {
        let Some(r) = &pv.reply else { continue };
        if r.system_identifier != me.system_identifier || r.node_name == me.node_name {
            continue; // another cluster, or this node listed in ha.peers
        }
        let healthy = v.answered(pv);
        let row = NodeRow {
            name: r.node_name.clone(),
            zone: r.zone.clone(),
            role: if healthy {
                r.role.clone()
            } else {
                "unreachable".into()
            },
            member: is_member(&r.node_name),
            healthy,
            term: r.term,
            flush_lsn: Some(r.flush_lsn),
            replay_lsn: Some(r.replay_lsn),
            is_self: false,
        };
        // Two addresses answering with one name (a stale address list): keep the healthy one.
        match rows.get(&row.name) {
            Some(old) if old.healthy || !row.healthy => {}
            _ => {
                rows.insert(row.name.clone(), row);
            }
        }
    }
    for (name, zone) in cohort {
        rows.entry(name.clone()).or_insert(NodeRow {
            name,
            zone,
            role: "unreachable".into(),
            member: true,
            healthy: false,
            term: 0,
            flush_lsn: None,
            replay_lsn: None,
            is_self: false,
        });
    }
    rows.into_values().collect()
}

/// The flush position of the leader named by the newest ruleset row this node holds, if this agent
/// can see it (itself, or a healthy peer that says it leads).
pub fn leader_flush(v: &View, rows: &[NodeRow]) -> Option<u64> {
    let leader = &v.me.reply.leader;
    rows.iter()
        .find(|r| &r.name == leader && r.healthy && r.role == "leader")
        .and_then(|r| r.flush_lsn)
}

/// Bytes `row` has still to replay to reach the leader's flush (none for the leader itself).
pub fn lag(row: &NodeRow, leader_flush: Option<u64>, leader: &str) -> Option<u64> {
    if row.name == leader {
        return None;
    }
    Some(leader_flush?.saturating_sub(row.replay_lsn?))
}

/// Prometheus' escaping of a label value.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl Display) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }
}

fn b(x: bool) -> u8 {
    u8::from(x)
}

/// The `/metrics` body.
pub fn render(v: &View) -> String {
    let mut o = Out(String::new());
    o.gauge(
        "pg_ha_up",
        "1 when the agent's main loop published its state within the last 2 s.",
        b(v.fresh()),
    );
    if !v.me.ready {
        return o.0;
    }
    let me = &v.me.reply;
    let f = &v.me.facts;
    let rows = nodes(v);
    o.gauge(
        "pg_ha_term",
        "Highest term this node knows (its newest ruleset row or its pledge).",
        me.term,
    );
    o.gauge(
        "pg_ha_pledged_term",
        "Highest term this node pledged to.",
        me.pledged_term,
    );
    o.gauge(
        "pg_ha_ruleset_version",
        "Version of the newest ruleset row this node holds.",
        me.ruleset_version,
    );
    o.gauge("pg_ha_timeline", "This node's WAL timeline.", me.timeline);
    o.family(
        "pg_ha_role",
        "gauge",
        "This node's role: 1 for the current one (leader = not in recovery, as in ha.status).",
    );
    for role in &ROLES[..3] {
        o.sample("pg_ha_role", &[("role", role)], b(me.role == *role));
    }
    o.gauge(
        "pg_ha_established",
        "1 when this node is the established leader of its term and accepts writes (fence open).",
        b(me.established && !me.in_recovery),
    );
    o.family(
        "pg_ha_leader",
        "gauge",
        "The leader named by the newest ruleset row this node holds.",
    );
    if !me.leader.is_empty() {
        o.sample("pg_ha_leader", &[("node", &me.leader)], 1);
    }
    o.gauge(
        "pg_ha_leader_lost",
        "1 when this agent has not heard from an established leader for ha.failover_timeout.",
        b(me.leader_lost),
    );
    o.gauge(
        "pg_ha_paused",
        "1 while automatic failover is paused (ha.pause()).",
        b(me.paused),
    );
    o.gauge(
        "pg_ha_wal_receiver_streaming",
        "1 when this standby's WAL receiver is streaming.",
        b(f.wal_receiver_streaming),
    );
    let members = rows.iter().filter(|r| r.member).count();
    o.gauge(
        "pg_ha_members",
        "Cohort size of the newest ruleset row this node holds.",
        members,
    );
    o.gauge(
        "pg_ha_members_healthy",
        "Cohort members that are healthy as this agent sees them.",
        rows.iter().filter(|r| r.member && r.healthy).count(),
    );
    o.family(
        "pg_ha_node_member",
        "gauge",
        "Per known node: 1 if it is in the cohort of the newest ruleset row.",
    );
    for r in &rows {
        o.sample(
            "pg_ha_node_member",
            &[("node", &r.name), ("zone", &r.zone)],
            b(r.member),
        );
    }
    o.family(
        "pg_ha_node_healthy",
        "gauge",
        "Per known node: 1 if healthy (this node: main loop running, no failed rejoin; a peer: answered within ha.failover_timeout).",
    );
    for r in &rows {
        o.sample("pg_ha_node_healthy", &[("node", &r.name)], b(r.healthy));
    }
    o.family(
        "pg_ha_node_role",
        "gauge",
        "Per known node: 1 for the role it reports (unreachable when it does not answer).",
    );
    for r in &rows {
        for role in ROLES {
            o.sample(
                "pg_ha_node_role",
                &[("node", &r.name), ("role", role)],
                b(r.role == role),
            );
        }
    }
    o.family(
        "pg_ha_node_term",
        "gauge",
        "Per known node: the term it reported last.",
    );
    for r in rows.iter().filter(|r| r.flush_lsn.is_some()) {
        o.sample("pg_ha_node_term", &[("node", &r.name)], r.term);
    }
    let lf = leader_flush(v, &rows);
    o.family(
        "pg_ha_replication_lag_bytes",
        "gauge",
        "Per node other than the leader: bytes between the leader's flush and the node's replay, as this agent sees them (the lag_bytes of ha.status).",
    );
    for r in &rows {
        if let Some(l) = lag(r, lf, &me.leader) {
            o.sample("pg_ha_replication_lag_bytes", &[("node", &r.name)], l);
        }
    }
    o.family(
        "pg_ha_follower_flush_lag_bytes",
        "gauge",
        "Leader only: per standby streaming from it, bytes between the leader's flush and the standby's flush (what the commit gate counts).",
    );
    for (name, flush) in &f.follower_flush {
        o.sample(
            "pg_ha_follower_flush_lag_bytes",
            &[("node", name)],
            me.flush_lsn.saturating_sub(*flush),
        );
    }
    o.family(
        "pg_ha_failovers_total",
        "counter",
        "Failovers in the replicated ruleset history this node holds (cluster-wide; ha.history reason 'failover').",
    );
    o.sample("pg_ha_failovers_total", &[], f.failovers);
    o.family(
        "pg_ha_switchovers_total",
        "counter",
        "Switchovers in the replicated ruleset history this node holds (cluster-wide; reason 'switchover').",
    );
    o.sample("pg_ha_switchovers_total", &[], f.switchovers);
    if let Some(t) = f.last_leadership_change {
        o.gauge(
            "pg_ha_last_leadership_change_timestamp_seconds",
            "Unix time of the first ruleset row of the newest term (when the current leadership began).",
            t,
        );
    }
    o.family(
        "pg_ha_pledges_refused_total",
        "counter",
        "Pledge requests this node refused since its agent started.",
    );
    o.sample("pg_ha_pledges_refused_total", &[], f.pledges_refused);
    o.family(
        "pg_ha_peer_up",
        "gauge",
        "Per address in ha.peers: 1 if its latest Status poll was answered within ha.failover_timeout.",
    );
    for (addr, pv) in &v.peers {
        o.sample(
            "pg_ha_peer_up",
            &[("address", &addr.to_string())],
            b(v.answered(pv)),
        );
    }
    o.0
}

/// What a health endpoint checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The agent runs (its main loop published recently).
    Health,
    /// The established leader accepting writes.
    Leader,
    /// A healthy streaming standby, optionally within `max_lag_bytes` of the leader.
    Replica { max_lag_bytes: Option<u64> },
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The answer of a health endpoint: whether it passes, and a one-line JSON body saying why.
pub fn probe(v: &View, p: Probe) -> (bool, String) {
    let me = &v.me.reply;
    let f = &v.me.facts;
    let lag_bytes = if me.in_recovery {
        let rows = nodes(v);
        let lf = leader_flush(v, &rows);
        rows.iter()
            .find(|r| r.is_self)
            .and_then(|r| lag(r, lf, &me.leader))
    } else {
        None
    };
    let failed: Option<String> = if !v.me.ready {
        Some("agent is starting".into())
    } else if !v.fresh() {
        Some("agent main loop has not published its state for 2 s".into())
    } else {
        match p {
            Probe::Health => None,
            _ if f.rejoin_failed.is_some() => Some(format!(
                "rejoin failed: {}",
                f.rejoin_failed.as_deref().unwrap_or_default()
            )),
            Probe::Leader if me.in_recovery => Some("standby".into()),
            Probe::Leader if !me.established => {
                Some("not the established leader (fence closed)".into())
            }
            Probe::Leader => None,
            Probe::Replica { .. } if !me.in_recovery => Some("not a standby".into()),
            Probe::Replica { .. } if !f.wal_receiver_streaming => {
                Some("WAL receiver is not streaming".into())
            }
            Probe::Replica {
                max_lag_bytes: Some(max),
            } => match lag_bytes {
                None => Some("lag unknown: the leader is not visible from here".into()),
                Some(l) if l > max => Some(format!("{l} bytes behind the leader (max {max})")),
                Some(_) => None,
            },
            Probe::Replica { .. } => None,
        }
    };
    let mut body = format!(
        "{{\"ok\":{},\"node\":{},\"role\":{},\"term\":{},\"leader\":{},\"established\":{}",
        failed.is_none(),
        json_str(&me.node_name),
        json_str(&me.role),
        me.term,
        json_str(&me.leader),
        me.established && !me.in_recovery,
    );
    if let Some(l) = lag_bytes {
        let _ = write!(body, ",\"lag_bytes\":{l}");
    }
    if let Some(why) = &failed {
        let _ = write!(body, ",\"reason\":{}", json_str(why));
    }
    body.push_str("}\n");
    (failed.is_none(), body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::LocalFacts;
    use crate::proto::StatusReply;
    use pg_ha_core::{NodeId, Policy, Ruleset, Term, Zone};

    fn reply(name: &str, role: &str, flush: u64) -> StatusReply {
        StatusReply {
            node_name: name.into(),
            role: role.into(),
            term: 3,
            flush_lsn: flush,
            replay_lsn: flush,
            zone: "z".into(),
            in_recovery: role != "leader",
            system_identifier: 7,
            leader: "n1".into(),
            established: role == "leader",
            ..Default::default()
        }
    }

    fn view(me: StatusReply, peers: Vec<StatusReply>) -> View {
        let now = Instant::now();
        let cohort = ["n1", "n2", "n3"]
            .iter()
            .map(|n| (NodeId::new(*n), Zone::new("z")))
            .collect();
        View {
            me: NodeSnapshot {
                reply: me,
                ready: true,
                ruleset: Some(
                    Ruleset::new(Term(3), 5, NodeId::new("n1"), cohort, Policy::AnyK(1)).unwrap(),
                ),
                facts: LocalFacts {
                    published: Some(now),
                    switchovers: 2,
                    last_leadership_change: Some(1700000000.25),
                    wal_receiver_streaming: true,
                    ..Default::default()
                },
            },
            peers: peers
                .into_iter()
                .enumerate()
                .map(|(i, r)| {
                    (
                        AgentAddr {
                            host: "127.0.0.1".into(),
                            port: 1000 + i as u16,
                        },
                        PeerView {
                            reply: Some(r),
                            last_ok: Some(now),
                            reachable: true,
                        },
                    )
                })
                .collect(),
            now,
            peer_fresh: Duration::from_secs(2),
        }
    }

    #[test]
    fn rows_cover_self_peers_and_silent_members() {
        let v = view(
            reply("n2", "follower", 90),
            vec![reply("n1", "leader", 100)],
        );
        let rows = nodes(&v);
        let names: Vec<_> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["n1", "n2", "n3"]);
        assert!(rows[0].healthy && rows[1].healthy && !rows[2].healthy);
        assert_eq!(rows[2].role, "unreachable");
        assert_eq!(leader_flush(&v, &rows), Some(100));
        assert_eq!(lag(&rows[1], Some(100), "n1"), Some(10));
        assert_eq!(lag(&rows[0], Some(100), "n1"), None);
    }

    #[test]
    fn a_stale_or_foreign_peer_is_not_healthy() {
        let mut foreign = reply("n3", "follower", 1);
        foreign.system_identifier = 8;
        let mut v = view(
            reply("n2", "follower", 90),
            vec![reply("n1", "leader", 100), foreign],
        );
        v.peers[0].1.last_ok = Some(v.now - Duration::from_secs(5));
        let rows = nodes(&v);
        assert!(!rows[0].healthy, "n1 answered 5 s ago");
        assert_eq!(rows[0].role, "unreachable");
        assert_eq!(rows[2].term, 0, "n3 from another cluster is ignored");
        assert!(render(&v)
            .lines()
            .any(|l| l == "pg_ha_peer_up{address=\"127.0.0.1:1000\"} 0"));
    }

    #[test]
    fn render_has_help_type_and_series() {
        let v = view(
            reply("n1", "leader", 100),
            vec![reply("n2", "follower", 90), reply("n3", "follower", 100)],
        );
        let text = render(&v);
        for line in [
            "# TYPE pg_ha_term gauge",
            "pg_ha_term 3",
            "pg_ha_role{role=\"leader\"} 1",
            "pg_ha_role{role=\"follower\"} 0",
            "pg_ha_established 1",
            "pg_ha_leader{node=\"n1\"} 1",
            "pg_ha_members 3",
            "pg_ha_members_healthy 3",
            "pg_ha_node_healthy{node=\"n2\"} 1",
            "pg_ha_node_role{node=\"n3\",role=\"follower\"} 1",
            "pg_ha_replication_lag_bytes{node=\"n2\"} 10",
            "# TYPE pg_ha_switchovers_total counter",
            "pg_ha_switchovers_total 2",
            "pg_ha_failovers_total 0",
            "pg_ha_last_leadership_change_timestamp_seconds 1700000000.25",
            "pg_ha_pledges_refused_total 0",
            "pg_ha_peer_up{address=\"127.0.0.1:1000\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(!text.contains("pg_ha_replication_lag_bytes{node=\"n1\"}"));
        // Every sample's family has HELP and TYPE lines.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn probes() {
        let leader = view(
            reply("n1", "leader", 100),
            vec![reply("n2", "follower", 90)],
        );
        assert!(probe(&leader, Probe::Leader).0);
        assert!(
            !probe(
                &leader,
                Probe::Replica {
                    max_lag_bytes: None
                }
            )
            .0
        );
        let mut fenced = leader.clone();
        fenced.me.reply.established = false;
        let (ok, body) = probe(&fenced, Probe::Leader);
        assert!(!ok && body.contains("fence closed"), "{body}");

        let follower = view(
            reply("n2", "follower", 90),
            vec![reply("n1", "leader", 100)],
        );
        assert!(!probe(&follower, Probe::Leader).0);
        let (ok, body) = probe(
            &follower,
            Probe::Replica {
                max_lag_bytes: None,
            },
        );
        assert!(ok, "{body}");
        assert!(body.contains("\"lag_bytes\":10"), "{body}");
        assert!(
            !probe(
                &follower,
                Probe::Replica {
                    max_lag_bytes: Some(5)
                }
            )
            .0
        );
        let mut not_streaming = follower.clone();
        not_streaming.me.facts.wal_receiver_streaming = false;
        assert!(
            !probe(
                &not_streaming,
                Probe::Replica {
                    max_lag_bytes: None
                }
            )
            .0
        );

        let mut stale = follower.clone();
        stale.me.facts.published = Some(stale.now - Duration::from_secs(3));
        let (ok, body) = probe(&stale, Probe::Health);
        assert!(!ok && body.contains("main loop"), "{body}");
        assert!(probe(&follower, Probe::Health).0);
        let (_, body) = probe(&follower, Probe::Health);
        assert_eq!(body.lines().count(), 1);
        assert!(body.starts_with("{\"ok\":true,\"node\":\"n2\",\"role\":\"follower\",\"term\":3"));
    }
}
