#!/usr/bin/env bash
# Starts or stops a local Redis Cluster on loopback ports for the Redis
# Cluster tests.
#
#   scripts/redis-cluster.sh start            # 3 masters on 127.0.0.1:7101-7103
#                                             # (tests/redis_cluster.rs), waits for cluster_state:ok
#   scripts/redis-cluster.sh stop             # shuts them down and removes the data dir
#   scripts/redis-cluster.sh start-replicas   # 3 masters + 3 replicas on 127.0.0.1:7211-7216,
#                                             # cluster-node-timeout 1000 ms,
#                                             # cluster-require-full-coverage no, waits until
#                                             # every replica is in sync
#   scripts/redis-cluster.sh stop-replicas
#
# `start` prints one word on stdout: `started` when it created the cluster,
# `running` when it found one already up on these ports (and left it as it
# is). A caller stops only what it started.
#
# Settings (environment):
#   REDIS_CLUSTER_PORTS         the ports (default "7101 7102 7103"; with replicas
#                               "7211 ... 72NN", masters x (1 + replicas) ports)
#   REDIS_CLUSTER_REPLICAS      replicas per master (default 0; start-replicas: 1)
#   REDIS_CLUSTER_NODE_TIMEOUT  cluster-node-timeout in ms (default: Redis's 15000;
#                               with replicas 1000, so that a failover takes seconds)
#   REDIS_SERVER                the server binary (default redis-server; scripts/valkey.sh
#                               passes valkey-server)
#   REDIS_CLUSTER_DIR           data dir (default ${TMPDIR:-/tmp}/traffik-redis-cluster,
#                               or traffik-redis-cluster-replicas with replicas)
# The tests read REDIS_CLUSTER_URLS (default redis://127.0.0.1:7101,...:7102,...:7103).
set -euo pipefail

VERB="${1:-}"
case "$VERB" in
    start-replicas | stop-replicas)
        REPLICAS="${REDIS_CLUSTER_REPLICAS:-1}"
        [ "$REPLICAS" -ge 1 ] || { echo "$0: $VERB needs REDIS_CLUSTER_REPLICAS >= 1" >&2; exit 2; }
        VERB="${VERB%-replicas}"
        ;;
    *) REPLICAS="${REDIS_CLUSTER_REPLICAS:-0}" ;;
esac

MASTERS=3
if [ "$REPLICAS" -gt 0 ]; then
    default_ports="$(seq -s " " 7211 $((7210 + MASTERS * (1 + REPLICAS))))"
    default_dir="${TMPDIR:-/tmp}/traffik-redis-cluster-replicas"
    default_timeout=1000
else
    default_ports="7101 7102 7103"
    default_dir="${TMPDIR:-/tmp}/traffik-redis-cluster"
    default_timeout=""
fi
PORTS=(${REDIS_CLUSTER_PORTS:-$default_ports})
DIR="${REDIS_CLUSTER_DIR:-$default_dir}"
SERVER="${REDIS_SERVER:-redis-server}"
NODE_TIMEOUT="${REDIS_CLUSTER_NODE_TIMEOUT:-$default_timeout}"

log() { echo "redis-cluster.sh: $*" >&2; }

ping() { redis-cli -h 127.0.0.1 -p "$1" ping >/dev/null 2>&1; }

info_of() { redis-cli -h 127.0.0.1 -p "$1" "${@:2}" 2>/dev/null | tr -d '\r'; }

stop() {
    for port in "${PORTS[@]}"; do
        if ping "$port"; then
            redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
        fi
    done
    for port in "${PORTS[@]}"; do
        for _ in $(seq 1 50); do
            ping "$port" || break
            sleep 0.1
        done
    done
    rm -rf "$DIR"
    log "stopped ${PORTS[*]}"
}

# Every node says cluster_state:ok and every replica is in sync with its master.
ready() {
    local port
    for port in "${PORTS[@]}"; do
        info_of "$port" cluster info | grep -q '^cluster_state:ok' || return 1
        local replication
        replication="$(info_of "$port" info replication)"
        if grep -q '^role:slave' <<<"$replication"; then
            grep -q '^master_link_status:up' <<<"$replication" || return 1
        fi
    done
    return 0
}

start() {
    command -v "$SERVER" >/dev/null || { log "$SERVER not found (apt-get install redis-server)"; exit 1; }
    local needed=$((MASTERS * (1 + REPLICAS)))
    if [ "${#PORTS[@]}" -ne "$needed" ]; then
        log "$MASTERS masters with $REPLICAS replica(s) each need $needed ports, got ${#PORTS[*]}"
        exit 2
    fi
    # A cluster already up on these ports (a previous run, another caller) is
    # reused, and left running: `running` tells the caller not to stop it.
    if ping "${PORTS[0]}" && info_of "${PORTS[0]}" cluster info | grep -q '^cluster_state:ok'; then
        log "cluster already running on ${PORTS[*]}"
        echo running
        return 0
    fi
    stop >/dev/null 2>&1 || true
    mkdir -p "$DIR"
    local nodes=() extra=()
    if [ -n "$NODE_TIMEOUT" ]; then
        # A replica takes over however long it was cut off from its master.
        extra=(--cluster-node-timeout "$NODE_TIMEOUT" --cluster-replica-validity-factor 0)
    fi
    if [ "$REPLICAS" -gt 0 ]; then
        # While a failed master's replica is not promoted yet, the other
        # masters keep serving their slots (with the default, yes, every
        # node answers CLUSTERDOWN for every slot meanwhile).
        extra+=(--cluster-require-full-coverage no)
    fi
    for port in "${PORTS[@]}"; do
        "$SERVER" --cluster-enabled yes --port "$port" --bind 127.0.0.1 \
            --cluster-config-file "nodes-$port.conf" --dir "$DIR" \
            --save "" --appendonly no --daemonize yes ${extra[@]+"${extra[@]}"} \
            --logfile "$DIR/redis-$port.log" --pidfile "$DIR/redis-$port.pid"
        nodes+=("127.0.0.1:$port")
    done
    for port in "${PORTS[@]}"; do
        for _ in $(seq 1 100); do
            ping "$port" && break
            sleep 0.1
        done
        ping "$port" || { log "node $port did not start (see $DIR/redis-$port.log)"; exit 1; }
    done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas "$REPLICAS" --cluster-yes >"$DIR/create.log" 2>&1 \
        || { cat "$DIR/create.log" >&2; log "cluster create failed"; exit 1; }
    for _ in $(seq 1 200); do
        if ready; then
            if [ "$REPLICAS" -gt 0 ]; then
                log "cluster_state:ok on ${PORTS[*]}, $REPLICAS replica(s) per master in sync (data in $DIR)"
            else
                log "cluster_state:ok on ${PORTS[*]} (data in $DIR)"
            fi
            echo started
            return 0
        fi
        sleep 0.1
    done
    log "the cluster did not reach cluster_state:ok with its replicas in sync"
    exit 1
}

case "$VERB" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop|start-replicas|stop-replicas" >&2; exit 2 ;;
esac
