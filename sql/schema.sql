-- pg_ha's catalog: created first by CREATE EXTENSION pg_ha (schema "ha" comes from the control file).

-- Operators who may change the cluster (bootstrap, membership, policy, switchover, pause).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ha_admin') THEN
        CREATE ROLE ha_admin NOLOGIN;
    END IF;
END
$$;

-- The ruleset history (protocol.md, "Where state lives"): written only by the leader, replicated to
-- every node in the WAL. The newest row is the ruleset in force once it is durable under the row
-- before it (I5); how far a node got includes which row it holds. version orders rows (one more per
-- row); term is the leadership that wrote the row.
CREATE TABLE ha.ruleset_history (
    version    bigint      PRIMARY KEY CHECK (version > 0),
    term       bigint      NOT NULL CHECK (term > 0),
    leader     text        NOT NULL,
    cohort     text[]      NOT NULL,   -- member node names
    zones      text[]      NOT NULL,   -- zone of each member, same order as cohort
    policy     text        NOT NULL,   -- 'any K' or 'zones K'
    -- The membership this row's change started from (a change row, or a leadership row built on one
    -- that may not have been acknowledged): establishment must be durable under it too.
    prior_cohort text[],
    prior_zones  text[],
    prior_policy text,
    reason     text        NOT NULL,   -- bootstrap, failover, switchover, add_member, ...
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (cardinality(cohort) = cardinality(zones)),
    CHECK (leader = ANY (cohort))
);
REVOKE ALL ON ha.ruleset_history FROM PUBLIC;

-- Cluster-wide switches, replicated like everything else: 'paused' = 'on' stops automatic failover
-- (ha.pause() / ha.resume()).
CREATE TABLE ha.cluster_settings (
    name       text PRIMARY KEY,
    value      text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON ha.cluster_settings FROM PUBLIC;
