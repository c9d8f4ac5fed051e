#!/usr/bin/env bash
# HTTP throughput of a minimal Axum app with and without traffik's
# ThrottleLayer (in-memory, a limit never reached), loaded with wrk over
# loopback: benches/examples/load_server.rs.
#
#   scripts/load.sh                       # 10 s per run, 3 rounds, 64 connections
#   DURATION=5 ROUNDS=1 scripts/load.sh
#   CONNECTIONS=128 scripts/load.sh
#   PEER=governor scripts/load.sh         # tower_governor's layer too, same rounds
#
# With 2+ CPUs the server is pinned to CPU 0 (one Tokio worker) and wrk to
# CPU 1, so that they do not fight for the same core; the order of the sides
# rotates between rounds (none, traffik, then traffik, none, ...) so that
# drift in a shared machine's load hits every side alike. Reported: each side's best run and mean, and the
# median of the per-round ratios.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-64}"
PORT="${PORT:-3917}"

if ! command -v wrk >/dev/null; then
    echo "load.sh: wrk not found; installing it (apt-get install -y wrk)" >&2
    apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
fi

cargo build -p traffik-benches --release --example load_server
server_bin="${CARGO_TARGET_DIR:-target}/release/examples/load_server"

cpus="$(nproc)"
server_cpu=() wrk_cpu=() threads=()
if [ "$cpus" -ge 2 ] && command -v taskset >/dev/null; then
    server_cpu=(taskset -c 0)
    wrk_cpu=(taskset -c 1)
    threads=(--threads 1)
fi

server_pid=""
cleanup() { if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi; }
trap cleanup EXIT

# run LAYER -> prints requests/s
run() {
    local layer="$1"
    PORT="$PORT" "${server_cpu[@]}" "$server_bin" --layer "$layer" "${threads[@]}" >/dev/null &
    server_pid=$!
    for _ in $(seq 50); do
        curl -sf "http://127.0.0.1:$PORT/hello" >/dev/null 2>&1 && break
        sleep 0.1
    done
    local status
    status="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/hello")"
    [ "$status" = 200 ] || { echo "load.sh: server ($layer) answered $status" >&2; exit 1; }
    # Warm-up, then the measured run.
    "${wrk_cpu[@]}" wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$PORT/hello" >/dev/null
    local out
    out="$("${wrk_cpu[@]}" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "http://127.0.0.1:$PORT/hello")"
    if grep -q "Non-2xx" <<<"$out"; then
        echo "load.sh: non-2xx responses with layer $layer:" >&2
        echo "$out" >&2
        exit 1
    fi
    kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
    awk '/^Requests\/sec:/ {print $2}' <<<"$out"
}

# Sides measured in each round: the plain app, traffik, and with
# PEER=governor tower_governor's GovernorLayer (peer-IP key) as well. The
# order rotates between rounds, so that a bias of the first or last run of a
# round hits every side alike.
sides=(none traffik)
[ "${PEER:-}" = governor ] && sides+=(governor)
declare -A rps
for round in $(seq "$ROUNDS"); do
    n=${#sides[@]}
    for k in $(seq 0 $((n - 1))); do
        side="${sides[$(((k + round - 1) % n))]}"
        r="$(run "$side")"
        rps[$side]+="$r "
        echo "round $round  $side: $r req/s"
    done
done

# On a shared machine other jobs steal CPU from some runs: the best run of
# each side approximates its uncontended capacity, and each round's ratio
# (runs back to back) is less sensitive to slow drifts than the means.
max() { printf '%s\n' "$@" | sort -g | tail -n1 | awk '{printf "%.0f", $1}'; }
mean() { printf '%s\n' "$@" | awk '{s+=$1} END {printf "%.0f", s/NR}'; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else printf "%.1f", (v[NR/2]+v[NR/2+1])/2}'; }
read -r -a none_rps <<<"${rps[none]}"
none_best="$(max "${none_rps[@]}")"

echo
echo "wrk -t1 -c$CONNECTIONS -d${DURATION}s, loopback, GET /hello, $ROUNDS round(s) each, $cpus CPU(s)${threads:+, server pinned to CPU 0 with 1 worker, wrk to CPU 1}"
declare -A label=([traffik]="Axum + traffik ThrottleLayer (in-memory)" [governor]="Axum + tower_governor GovernorLayer")
rows=()
for side in "${sides[@]:1}"; do
    read -r -a side_rps <<<"${rps[$side]}"
    ratios=()
    for i in "${!none_rps[@]}"; do
        ratios+=("$(awk -v a="${side_rps[$i]}" -v b="${none_rps[$i]}" 'BEGIN {printf "%.1f", 100*a/b}')")
    done
    echo "per-round ratios, $side / none: ${ratios[*]} %"
    best="$(max "${side_rps[@]}")"
    best_ratio="$(awk -v a="$best" -v b="$none_best" 'BEGIN {printf "%.1f", 100*a/b}')"
    rows+=("| ${label[$side]} | $best | $(mean "${side_rps[@]}") | ${best_ratio}% | $(median "${ratios[@]}")% |")
done
echo
echo "| app | best requests/s | mean requests/s | best / best without | median of per-round ratios |"
echo "|---|---|---|---|---|"
echo "| Axum, no layer | $none_best | $(mean "${none_rps[@]}") | | |"
printf '%s\n' "${rows[@]}"
