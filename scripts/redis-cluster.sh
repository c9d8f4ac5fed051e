#!/usr/bin/env bash
# Starts or stops a local 3-master Redis Cluster on loopback ports for the
# Redis Cluster tests (tests/redis_cluster.rs).
#
#   scripts/redis-cluster.sh start   # 127.0.0.1:7101-7103, waits for cluster_state:ok
#   scripts/redis-cluster.sh stop    # shuts them down and removes the data dir
#
# Ports: REDIS_CLUSTER_PORTS (default "7101 7102 7103").
# Server binary: REDIS_SERVER (default redis-server; scripts/valkey.sh passes valkey-server).
# Data dir: REDIS_CLUSTER_DIR (default ${TMPDIR:-/tmp}/traffik-redis-cluster).
# The tests read REDIS_CLUSTER_URLS (default redis://127.0.0.1:7101,...:7102,...:7103).
set -euo pipefail

PORTS=(${REDIS_CLUSTER_PORTS:-7101 7102 7103})
SERVER="${REDIS_SERVER:-redis-server}"
DIR="${REDIS_CLUSTER_DIR:-${TMPDIR:-/tmp}/traffik-redis-cluster}"

log() { echo "redis-cluster.sh: $*" >&2; }

ping() { redis-cli -h 127.0.0.1 -p "$1" ping >/dev/null 2>&1; }

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

start() {
    command -v "$SERVER" >/dev/null || { log "$SERVER not found (apt-get install redis-server)"; exit 1; }
    # A cluster already up on these ports (a previous run) is reused.
    if ping "${PORTS[0]}" && redis-cli -h 127.0.0.1 -p "${PORTS[0]}" cluster info 2>/dev/null | grep -q 'cluster_state:ok'; then
        log "cluster already running on ${PORTS[*]}"
        return 0
    fi
    stop >/dev/null 2>&1 || true
    mkdir -p "$DIR"
    local nodes=()
    for port in "${PORTS[@]}"; do
        "$SERVER" --cluster-enabled yes --port "$port" --bind 127.0.0.1 \
            --cluster-config-file "nodes-$port.conf" --dir "$DIR" \
            --save "" --appendonly no --daemonize yes \
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
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$DIR/create.log" 2>&1 \
        || { cat "$DIR/create.log" >&2; log "cluster create failed"; exit 1; }
    for _ in $(seq 1 100); do
        local ok=1
        for port in "${PORTS[@]}"; do
            redis-cli -h 127.0.0.1 -p "$port" cluster info 2>/dev/null | grep -q 'cluster_state:ok' || ok=0
        done
        if [ "$ok" = 1 ]; then
            log "cluster_state:ok on ${PORTS[*]} (data in $DIR)"
            return 0
        fi
        sleep 0.1
    done
    log "the cluster did not reach cluster_state:ok"
    exit 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
