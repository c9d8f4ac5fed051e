#!/usr/bin/env bash
# Instructions per request through the middleware (callgrind), never
# throttled and throttled, around a tower::service_fn and an axum Router:
# traffik's ThrottleLayer beside tower_governor's GovernorLayer and a layer
# that does nothing. Unlike wall-clock benches, the counts repeat exactly
# from run to run and do not depend on the machine's load.
#
#   scripts/callgrind-layer.sh          # 2000 requests per case
#   N=500 scripts/callgrind-layer.sh    # quicker
#
# Needs valgrind (apt-get install -y valgrind) and python3.
# Code: benches/examples/callgrind_layer.rs (its docs name the modes).
set -euo pipefail
cd "$(dirname "$0")/.."

N="${N:-2000}"
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install -y valgrind)" >&2; exit 1; }
cargo build -p traffik-benches --release --example callgrind_layer >&2
bin="${CARGO_TARGET_DIR:-target}/release/examples/callgrind_layer"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

for mode in bare pass none ip default two governor ip429 governor429 \
            rbare rpass rnone rip rdefault rgovernor; do
    valgrind --tool=callgrind --toggle-collect='callgrind_layer::measured*' \
        --callgrind-out-file="$out/$mode.out" "$bin" "$mode" "$N" 2>"$out/$mode.log" >/dev/null
    refs=$(grep -o "refs: *[0-9,]*" "$out/$mode.log" | tr -dc 0-9)
    echo "$mode $((refs / N))" | tee -a "$out/counts" >&2
done

python3 - "$out/counts" <<'PY'
import sys
c = dict(line.split() for line in open(sys.argv[1]))
c = {k: int(v) for k, v in c.items()}
print("| inner service | bare | pass-through layer | traffik, no rule | traffik, one rule (client) | traffik, one rule (default key) | tower_governor | traffik (client) / tower_governor |")
print("|---|---|---|---|---|---|---|---|")
for name, p in (("`tower::service_fn`", ""), ("axum `Router`", "r")):
    bare = c[p + "bare"]
    over = lambda m: c[p + m] - bare
    print(f"| {name} | {bare:,} | +{over('pass'):,} | +{over('none'):,} | +{over('ip'):,} | +{over('default'):,} "
          f"| +{over('governor'):,} | {over('ip') / over('governor'):.2f}× |")
print()
print(f"Two rates decided all or nothing (one rule keyed by client), `service_fn`: "
      f"+{c['two'] - c['bare']:,} against +{c['ip'] - c['bare']:,} for one rate.")
print()
print(f"Rejections (429), `service_fn`: traffik {c['ip429']:,} instructions a request, "
      f"tower_governor {c['governor429']:,}.")
PY
