#!/usr/bin/env bash
# Runs the whole test suite, starting what it needs:
#   - a Redis server on 127.0.0.1:6379 (or $REDIS_URL), installed with apt-get if missing;
#   - a 3-master Redis Cluster on loopback ports (scripts/redis-cluster.sh), stopped on exit
#     when this script started it.
# Without Redis (and without CI=true) the Redis tests skip with a loud message.
set -euo pipefail
cd "$(dirname "$0")/.."

REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export REDIS_URL

if ! command -v redis-server >/dev/null 2>&1; then
    echo "test.sh: redis-server not found; installing it with apt-get" >&2
    if command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >&2 || true
    fi
fi

if command -v redis-server >/dev/null 2>&1; then
    if ! redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1; then
        echo "test.sh: no Redis answers at $REDIS_URL; starting one on 127.0.0.1:6379" >&2
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
            --logfile /tmp/traffik-redis.log
        for _ in $(seq 1 50); do
            redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1 && break
            sleep 0.1
        done
    fi
    if [ -x scripts/redis-cluster.sh ]; then
        # Stopped on exit only when started here: a cluster already running
        # (someone else's) is used and left as it is.
        cluster="$(scripts/redis-cluster.sh start)"
        if [ "$cluster" = started ]; then
            trap 'scripts/redis-cluster.sh stop || true' EXIT
        fi
    fi
else
    echo "test.sh: WARNING: no redis-server available; Redis tests will skip (or fail under CI=true)" >&2
fi

# The crate and the workspace members (benches/, integrations/).
cargo test --workspace --all-features "$@"
