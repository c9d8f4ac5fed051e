#!/usr/bin/env bash
# Redraws docs/strategies.svg, the picture of what each strategy admits from
# the same client (README, "Strategies"), from the crate's own decisions.
# tests/strategy_plot.rs fails until it is rerun after a change to them.
#
#   scripts/plot-strategies.sh
#
# Code: examples/strategy_plot.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo run --quiet --example strategy_plot -- docs/strategies.svg
echo "wrote docs/strategies.svg" >&2
