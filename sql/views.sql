-- pg_ha's views (interface.md), created after the functions they read.

-- One row per known node: this node from its own state, the others from the agent's latest view
-- of its peers (shared memory). lag_bytes is how far a node's replay is behind the leader's flush.
CREATE VIEW ha.status AS
WITH s AS (SELECT * FROM ha.status_rows()),
     leader AS (SELECT max(flush_lsn::pg_lsn) AS flush FROM s WHERE role = 'leader')
SELECT s.node_name,
       s.role,
       s.member,
       s.zone,
       s.term,
       s.timeline,
       s.flush_lsn::pg_lsn  AS flush_lsn,
       s.replay_lsn::pg_lsn AS replay_lsn,
       CASE WHEN s.replay_lsn IS NULL OR leader.flush IS NULL THEN NULL
            ELSE greatest(pg_wal_lsn_diff(leader.flush, s.replay_lsn::pg_lsn), 0)::bigint END AS lag_bytes,
       s.healthy,
       CASE WHEN s.last_seen_us IS NULL THEN NULL ELSE to_timestamp(s.last_seen_us / 1e6) END AS last_seen,
       s.agent_address,
       s.is_self,
       s.last_error
FROM s CROSS JOIN leader
ORDER BY s.node_name;

CREATE VIEW ha.history AS
SELECT term, leader, cohort, policy, reason, created_at
FROM ha.ruleset_history
ORDER BY version;

REVOKE ALL ON FUNCTION ha.status_rows() FROM PUBLIC;
GRANT USAGE ON SCHEMA ha TO pg_monitor, ha_admin;
GRANT EXECUTE ON FUNCTION ha.status_rows() TO pg_monitor, ha_admin;
GRANT SELECT ON ha.status, ha.history TO pg_monitor, ha_admin;
GRANT SELECT ON ha.ruleset_history TO pg_monitor, ha_admin;

REVOKE ALL ON FUNCTION ha.bootstrap(), ha.add_member(text), ha.remove_member(text), ha.set_policy(text),
    ha.switchover(text), ha.failover(text), ha.pause(), ha.resume() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ha.bootstrap(), ha.add_member(text), ha.remove_member(text), ha.set_policy(text),
    ha.switchover(text), ha.failover(text), ha.pause(), ha.resume() TO ha_admin;
GRANT SELECT ON ha.cluster_settings TO pg_monitor, ha_admin;
-- The majority-loss override may discard acknowledged writes: superusers only, never ha_admin.
REVOKE ALL ON FUNCTION ha.unsafe_force_leader(text) FROM PUBLIC;
