#!/usr/bin/env bash
# Redis decisions/s: traffik's RedisBackend (criterion bench benches/redis.rs,
# 1 and 64 callers in flight on one connection) beside the server's ceiling
# for the very same token-bucket script, measured in the same run with
#   redis-benchmark -P 16 -n 200000 EVALSHA <sha> 1 <key> <args>
#
#   scripts/bench-redis.sh                 # REDIS_URL, default redis://127.0.0.1:6379
#   TRAFFIK_BENCH_SECS=5 scripts/bench-redis.sh
#   scripts/bench-redis.sh --quick         # extra arguments go to criterion
set -euo pipefail
cd "$(dirname "$0")/.."

REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export REDIS_URL
for tool in redis-cli redis-benchmark; do
    command -v "$tool" >/dev/null || { echo "bench-redis.sh: $tool not found (apt-get install redis-tools)" >&2; exit 1; }
done
redis-cli -u "$REDIS_URL" ping >/dev/null || { echo "bench-redis.sh: no Redis at $REDIS_URL" >&2; exit 1; }

out="$(mktemp)"
script="$(mktemp)"
trap 'rm -f "$out" "$script"' EXIT

echo "== cargo bench -p traffik-benches --features redis --bench redis $*"
cargo bench -p traffik-benches --features redis --bench redis -- "$@" 2>&1 | tee "$out"

# The script exactly as the backend sends it: prelude, strategy body and
# driver, joined by newlines (src/backend/redis.rs, `script`).
{
    cat src/backend/redis/prelude.lua; printf '\n'
    cat src/backend/redis/token_bucket.lua; printf '\n'
    cat src/backend/redis/driver.lua
} >"$script"
sha="$(redis-cli -u "$REDIS_URL" -x SCRIPT LOAD <"$script")"
expected="$(sed -n 's/^redis-bench: token_bucket script sha //p' "$out" | head -n1)"
if [ -n "$expected" ] && [ "$sha" != "$expected" ]; then
    echo "bench-redis.sh: SCRIPT LOAD gave $sha but the backend runs $expected" >&2
    exit 1
fi
key='traffik-bench:{bench:redis-benchmark:http:GET:/hello}:tb'
# ARGV (driver.lua): op, cost, refunded hit's time (0), then the rate's limit,
# period_us, capacity: a hit of 1 at 1,000,000/s, as in the bench.
echo
echo "== redis-benchmark -P 16 -n 200000 EVALSHA $sha 1 $key hit 1 0 1000000 1000000 1000000"
ceiling_line="$(redis-benchmark -u "$REDIS_URL" -P 16 -n 200000 -q \
    EVALSHA "$sha" 1 "$key" hit 1 0 1000000 1000000 1000000 | tr '\r' '\n' | grep -E 'requests per second' | tail -n1)"
echo "$ceiling_line"
redis-cli -u "$REDIS_URL" del "$key" >/dev/null

ceiling="$(echo "$ceiling_line" | sed -E 's/.*: ([0-9.]+) requests per second.*/\1/')"
ours="$(awk '$1 == "redis-bench:" && $2 == "token_bucket" && $3 == "64" { print $4 }' "$out")"

echo
echo "== summary"
grep '^redis-bench:' "$out" || true
echo "redis-benchmark -P 16 EVALSHA (same script, the server's ceiling): ${ceiling} decisions/s"
if [ -n "$ours" ] && [ -n "$ceiling" ]; then
    awk -v a="$ours" -v b="$ceiling" 'BEGIN { printf "RedisBackend token_bucket, 64 in flight, one connection: %.0f decisions/s = %.1f%% of the ceiling\n", a, 100 * a / b }'
fi
