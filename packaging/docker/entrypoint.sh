#!/usr/bin/env bash
# pg_ha container entrypoint (runs as postgres under tini). It owns a node's first start and its
# supervision; pg_ha owns everything after (leadership, following, rejoin).
#
# Environment (packaging/k8s/pg-ha.yaml sets all of them):
#   HA_PEER_HOSTS           space- or comma-separated host names of every node, this one included
#   HA_HOST                 the name peers reach this node by (default: hostname -f)
#   HA_NODE_NAME            ha.node_name (default: the host name with - turned into _)
#   HA_ZONE                 ha.zone; if empty and NODE_NAME is set, read from the node's
#                           topology.kubernetes.io/zone label through the Kubernetes API
#   HA_FAILOVER_TIMEOUT     ha.failover_timeout in ms (default 2000)
#   HA_TOKEN_SOURCE         the shared token, e.g. a mounted Secret (default /etc/pg_ha/token)
#   HA_REPLICATION_PASSWORD password of the replicator role (from a Secret)
#   HA_POLICY               policy a joining node asks for once it is a member (default 'any 1')
#   HA_AGENT_PORT, HA_METRICS_PORT, PGPORT: 5480, 9187, 5432
#
# First start (empty $PGDATA):
#   - a leader answers GET /leader on some peer: clone it with pg_basebackup, start, then ask the
#     leader to add this node as a member (ha.add_member) and set HA_POLICY;
#   - else, on the first pod (ordinal 0) when no peer's agent answers at all: initdb, start,
#     CREATE EXTENSION pg_ha, ha.bootstrap();
#   - else wait (up to 5 minutes, then exit so Kubernetes restarts the container).
#   An ordinal-0 pod never initializes while another agent answers: that would be a second cluster.
#
# Postgres is started with pg_ctl, not exec'ed in the foreground: pg_ha's rejoin helper stops and
# restarts the postmaster (pg_rewind), and a container whose main process is the postmaster would end
# at that stop, killing the helper mid-rewind. This script stays the container's process instead, and
# exits (Kubernetes restarts the container) only when the server is down and no rejoin helper runs.
set -euo pipefail

HA_AGENT_PORT=${HA_AGENT_PORT:-5480}
HA_METRICS_PORT=${HA_METRICS_PORT:-9187}
PGPORT=${PGPORT:-5432}
HA_HOST=${HA_HOST:-$(hostname -f)}
HOSTNAME=${HOSTNAME:-$(hostname)}              # the pod name in Kubernetes: pg-ha-N
HA_NODE_NAME=${HA_NODE_NAME:-$(echo "${HOSTNAME%%.*}" | tr -- '-' '_')}
HA_FAILOVER_TIMEOUT=${HA_FAILOVER_TIMEOUT:-2000}
HA_TOKEN_SOURCE=${HA_TOKEN_SOURCE:-/etc/pg_ha/token}
HA_POLICY=${HA_POLICY:-any 1}
PEERS=$(echo "${HA_PEER_HOSTS:?set HA_PEER_HOSTS to every node\'s host name}" | tr ',' ' ')
HOME_DIR=${HA_HOME:-/var/lib/postgresql}       # token copy, .pgpass, server log
export PGPASSFILE=$HOME_DIR/.pgpass
TOKEN=$HOME_DIR/pg_ha.token
LOG=$HOME_DIR/postgresql.log
ORDINAL=${HOSTNAME##*-}

log() { echo "pg-ha-entrypoint: $*" >&2; }
die() { log "$*"; exit 1; }

# Wait for a condition, with a deadline (seconds).
wait_for() {
  local what=$1 deadline=$(( $(date +%s) + $2 )); shift 2
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || die "gave up waiting for $what"
    sleep 2
  done
}

http_code() { curl -s -m 2 -o /dev/null -w '%{http_code}' "http://$1:$HA_METRICS_PORT$2" || true; }

# The host of the established leader, if any peer says it is one.
find_leader() {
  local h
  for h in $PEERS; do
    [ "$h" = "$HA_HOST" ] && continue
    if [ "$(http_code "$h" /leader)" = 200 ]; then echo "$h"; return 0; fi
  done
  return 1
}

# True if any other node's agent answers HTTP at all (a cluster exists, whatever its state).
any_agent_answers() {
  local h
  for h in $PEERS; do
    [ "$h" = "$HA_HOST" ] && continue
    [ "$(http_code "$h" /health)" != 000 ] && return 0
  done
  return 1
}

# ha.zone from the node's topology label (needs get on nodes: see the ClusterRole in pg-ha.yaml).
node_zone() {
  local sa=/var/run/secrets/kubernetes.io/serviceaccount
  [ -n "${NODE_NAME:-}" ] && [ -r "$sa/token" ] || { echo default; return; }
  curl -sf -m 5 --cacert "$sa/ca.crt" -H "Authorization: Bearer $(cat "$sa/token")" \
    "https://kubernetes.default.svc/api/v1/nodes/$NODE_NAME" \
    | jq -r '.metadata.labels["topology.kubernetes.io/zone"] // "default"'
}

# Settings regenerated at every start from the environment; postgresql.conf includes this file
# (pg_basebackup and pg_rewind carry that include line; pg_ha's rejoin keeps each node's *.conf).
write_settings() {
  local zone=${HA_ZONE:-$(node_zone)} peers="" h
  for h in $PEERS; do peers+="${peers:+,}$h:$HA_AGENT_PORT"; done
  cat > "$PGDATA/pg_ha_env.conf" <<EOF
# Written by pg-ha-entrypoint at every start; edit the environment, not this file.
listen_addresses = '*'
port = $PGPORT
wal_level = replica
hot_standby = on
wal_log_hints = on
max_wal_senders = 16
max_replication_slots = 16
wal_keep_size = '1GB'
shared_preload_libraries = 'pg_ha'
ha.node_name = '$HA_NODE_NAME'
ha.agent_address = '$HA_HOST:$HA_AGENT_PORT'
ha.peers = '$peers'
ha.conninfo = 'host=$HA_HOST port=$PGPORT user=replicator dbname=postgres'
ha.zone = '$zone'
ha.failover_timeout = $HA_FAILOVER_TIMEOUT
ha.auth_token_file = '$TOKEN'
ha.metrics_address = '0.0.0.0:$HA_METRICS_PORT'
EOF
  grep -q "^include_if_exists = 'pg_ha_env.conf'" "$PGDATA/postgresql.conf" \
    || echo "include_if_exists = 'pg_ha_env.conf'" >> "$PGDATA/postgresql.conf"
}

psql_local() { psql -X -q -v ON_ERROR_STOP=1 -h /run/postgresql -p "$PGPORT" -d postgres "$@"; }
server_up() { pg_ctl -D "$PGDATA" status >/dev/null 2>&1; }
rejoin_running() { pgrep -u postgres -f 'pg_ha: rejoin' >/dev/null; }

# Ask the leader to make this node a member once it is a caught-up observer, then set the policy.
join_cluster() {
  local leader
  for _ in $(seq 1 60); do
    sleep 5
    leader=$(find_leader) || continue
    if [ "$(psql -X -qtA -h "$leader" -U replicator -d postgres \
          -c "SELECT member FROM ha.status WHERE node_name = '$HA_NODE_NAME'" 2>/dev/null)" = t ]; then
      [ "$(psql -X -qtA -h "$leader" -U replicator -d postgres \
            -c "SELECT policy FROM ha.ruleset_history ORDER BY version DESC LIMIT 1")" = "$HA_POLICY" ] \
        || psql -X -q -h "$leader" -U replicator -d postgres -c "SELECT ha.set_policy('$HA_POLICY')" \
        || log "policy '$HA_POLICY' not set (see the error above); set it by hand"
      return 0
    fi
    psql -X -q -h "$leader" -U replicator -d postgres -c "SELECT ha.add_member('$HA_NODE_NAME')" \
      || log "add_member not accepted yet; retrying"
  done
  log "not a member after 5 minutes; run SELECT ha.add_member('$HA_NODE_NAME') on the leader"
  return 1
}

# --- setup -----------------------------------------------------------------------------------------
[ -r "$HA_TOKEN_SOURCE" ] || die "no token at $HA_TOKEN_SOURCE (mount the pg-ha Secret)"
install -m 600 "$HA_TOKEN_SOURCE" "$TOKEN"          # pg_ha refuses a token others can read
: "${HA_REPLICATION_PASSWORD:?set HA_REPLICATION_PASSWORD (from the pg-ha Secret)}"
echo "*:*:*:replicator:$HA_REPLICATION_PASSWORD" > "$PGPASSFILE"
chmod 600 "$PGPASSFILE"
# The agent binds ha.agent_address, so this pod's own name must resolve (headless Service).
wait_for "$HA_HOST to resolve" 120 getent hosts "$HA_HOST"

new_cluster=no
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  deadline=$(( $(date +%s) + 300 ))
  while true; do
    if leader=$(find_leader); then
      log "cloning from the leader $leader"
      rm -rf "$PGDATA" && mkdir -p "$PGDATA" && chmod 700 "$PGDATA"
      pg_basebackup -h "$leader" -p "$PGPORT" -U replicator -D "$PGDATA" -R -X stream -c fast
      break
    elif [ "$ORDINAL" = 0 ] && ! any_agent_answers; then
      log "no pg_ha agent answers: initializing a new cluster"
      initdb -D "$PGDATA" --data-checksums -U postgres --auth-local=peer --auth-host=scram-sha-256
      cat >> "$PGDATA/pg_hba.conf" <<EOF
# pg_ha: peers stream, rewind and call ha.* functions as replicator (narrow to the pod CIDR)
host replication replicator 0.0.0.0/0 scram-sha-256
host postgres    replicator 0.0.0.0/0 scram-sha-256
EOF
      new_cluster=yes
      break
    fi
    [ "$(date +%s)" -lt "$deadline" ] || die "no leader found and not the first pod; giving up"
    log "waiting for a leader"
    sleep 5
  done
fi
write_settings

# --- start and supervise ---------------------------------------------------------------------------
stop() { log "stopping"; pg_ctl -D "$PGDATA" -m fast -w stop || true; exit 0; }
trap stop TERM INT
touch "$LOG"
tail -n 0 -F "$LOG" &                  # the server log to the container's output (kubectl logs)
trap 'kill $(jobs -p) 2>/dev/null' EXIT   # tail, and join_cluster if it still runs
pg_ctl -D "$PGDATA" -l "$LOG" -w -t 300 start

if [ "$new_cluster" = yes ]; then
  psql_local -c "CREATE ROLE replicator LOGIN REPLICATION SUPERUSER PASSWORD '${HA_REPLICATION_PASSWORD//\'/\'\'}'"
  psql_local -c "CREATE EXTENSION pg_ha" -c "SELECT ha.bootstrap()"
elif [ ! -f "$PGDATA/pg_ha.joined" ]; then
  join_cluster && touch "$PGDATA/pg_ha.joined" &
fi

down_since=""
while true; do
  sleep 5 & wait $!                      # wait, so that SIGTERM is handled at once
  if server_up || rejoin_running; then down_since=""; continue; fi
  # Down and no rejoin helper at work (it restarts the server itself): give a starting helper a moment.
  down_since=${down_since:-$(date +%s)}
  if [ $(( $(date +%s) - down_since )) -ge 15 ]; then
    die "the server is down and no pg_ha rejoin is running (see $LOG); exiting so the container restarts"
  fi
done
