#!/usr/bin/env bash
# Runs the in-memory and layer criterion benches (benches/memory.rs,
# benches/layer.rs, in the workspace member traffik-benches) with short
# measurement times and prints the figures as markdown tables, with traffik / governor ratios.
#
#   scripts/bench.sh                     # warm-up 1 s, measurement 3 s per case
#   WARMUP=3 MEASURE=10 scripts/bench.sh # steadier figures
#   scripts/bench.sh decide_1t           # a criterion filter
#
# Needs python3 for the tables. Figures from a shared or loaded machine are
# noisy: compare cases of the same run only.
set -euo pipefail
cd "$(dirname "$0")/.."

WARMUP="${WARMUP:-1}"
MEASURE="${MEASURE:-3}"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT

for bench in memory layer; do
    echo "== cargo bench -p traffik-benches --bench $bench -- --warm-up-time $WARMUP --measurement-time $MEASURE $*" >&2
    cargo bench -p traffik-benches --bench "$bench" -- --warm-up-time "$WARMUP" --measurement-time "$MEASURE" "$@" 2>&1 \
        | tee -a "$out" | grep -E "time:" >&2 || true
done

python3 - "$out" <<'EOF'
import re, sys

UNITS = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}
res, name = {}, None
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    line = line.rstrip("\n")
    if line.startswith("Benchmarking ") or not line.strip():
        continue
    m = re.match(r"^(\S+)?\s*time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", line)
    if m:
        if m.group(1):
            name = m.group(1)
        if name:
            res[name] = float(m.group(2)) * UNITS[m.group(3)]
        name = None
    elif re.match(r"^\S+$", line) and "/" in line:
        name = line

def f(v):
    if v is None:
        return "–"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"

def ratio(a, b):
    return f"{a / b:.2f}×" if a is not None and b else "–"

strategies = ["token_bucket", "fixed_window", "sliding_window_counter", "sliding_window_log", "gcra"]
if any(k.startswith("decide_") for k in res):
    print("\n### In-memory decision, ns per decision (lower is better)\n")
    print("| threads | keys | " + " | ".join(f"traffik {s}" for s in strategies)
          + " | governor String | governor u64 | governor IpAddr | traffik gcra / governor String |")
    print("|---" * (len(strategies) + 6) + "|")
    for t in (1, 2):
        for n in (1, 100000):
            g = lambda k: res.get(f"decide_{t}t/{k}/{n}")
            row = [g(f"traffik_{s}") for s in strategies]
            gov = [g("governor_string"), g("governor_u64"), g("governor_ip")]
            if all(v is None for v in row + gov):
                continue
            print(f"| {t} | {n:,} | " + " | ".join(f(v) for v in row + gov)
                  + f" | {ratio(g('traffik_gcra'), g('governor_string'))} |")
if any(k.startswith("oversubscribed_16t/") for k in res):
    g = lambda k: res.get(f"oversubscribed_16t/{k}")
    print("\n### One hot key, 16 threads on the machine's cores, ns per decision\n")
    print("| traffik gcra | traffik token_bucket | governor String | traffik gcra / governor String |\n|---|---|---|---|")
    print(f"| {f(g('traffik_gcra'))} | {f(g('traffik_token_bucket'))} | {f(g('governor_string'))} "
          f"| {ratio(g('traffik_gcra'), g('governor_string'))} |")
if any(k.startswith("rates_and_places/") for k in res):
    print("\n### Several rates and in-flight places (in memory, 1 thread), ns\n")
    print("| keys | one rate | two rates | two / one | place taken and given back | place / one rate |\n|---|---|---|---|---|---|")
    for n in (1, 100000):
        g = lambda k: res.get(f"rates_and_places/{k}/{n}")
        one, two, place = g("one_rate"), g("two_rates"), g("place_take_and_give_back")
        print(f"| {n:,} | {f(one)} | {f(two)} | {ratio(two, one)} | {f(place)} | {ratio(place, one)} |")
if any(k.startswith("clock/") for k in res):
    print("\n### Clock reads and decisions without the system clock, ns\n")
    print("| case | ns |\n|---|---|")
    for k, v in res.items():
        if k.startswith("clock/"):
            print(f"| {k[6:]} | {f(v)} |")
if "hit/direct_backend" in res or "hit/scoped_dynamic_backend" in res:
    d, s = res.get("hit/direct_backend"), res.get("hit/scoped_dynamic_backend")
    print("\n### `HttpThrottle::hit`, ns\n")
    print("| fixed `.backend(..)` | `.dynamic_backend()` in `backend::scope` | scoped / fixed |\n|---|---|---|")
    print(f"| {f(d)} | {f(s)} | {ratio(s, d)} |")
groups = [("layer_service_fn", "`tower::service_fn`"), ("layer_axum_router", "axum `Router`, one route")]
if any(f"{g}/bare" in res for g, _ in groups):
    print("\n### Per-request cost of the middleware (never throttled), ns\n")
    print("| inner service | traffik key | bare | + traffik ThrottleLayer | + tower_governor GovernorLayer "
          "| traffik overhead | tower_governor overhead | overhead traffik / tower_governor |")
    print("|---|---|---|---|---|---|---|---|")
    for g, label in groups:
        for case, key in (("traffik", "client, method, route (default)"),
                          ("traffik_per_ip", "client only (`shared_across_routes`)")):
            b, t, gv = (res.get(f"{g}/{k}") for k in ("bare", case, "tower_governor"))
            if b is None or t is None:
                continue
            to = t - b
            go = gv - b if gv is not None else None
            print(f"| {label} | {key} | {f(b)} | {f(t)} | {f(gv)} | {f(to)} | {f(go)} | {ratio(to, go)} |")
if any(k.startswith("anatomy/") for k in res):
    print("\n### Anatomy of one traffik check (in-memory, hot cache), ns\n")
    print("| step | ns |\n|---|---|")
    for k, v in res.items():
        if k.startswith("anatomy/"):
            print(f"| {k[8:]} | {f(v)} |")
EOF
