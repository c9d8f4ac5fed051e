#!/usr/bin/env bash
# Builds the docs as docs.rs does (nightly, `--cfg docsrs`, every feature)
# and checks that each feature's items carry their "Available on crate
# feature ... only" mark. Needs a nightly toolchain (`rustup toolchain
# install nightly`); without one it says so and does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "docsrs.sh: SKIPPED: no nightly toolchain (rustup toolchain install nightly)" >&2
    exit 0
fi
target="${CARGO_TARGET_DIR:-target}/docsrs"
RUSTDOCFLAGS="--cfg docsrs -D warnings" CARGO_TARGET_DIR="$target" \
    cargo +nightly doc --all-features --no-deps --quiet
features="$(sed -n '/^\[features\]/,/^\[/p' Cargo.toml | grep -oE '^[a-z0-9-]+ =' | cut -d' ' -f1 | grep -v '^default$')"
missing=0
for feature in $features; do
    if ! grep -rqF "crate feature <code>$feature</code>" "$target/doc/traffik"; then
        echo "docsrs.sh: no item is marked as needing the feature $feature" >&2
        missing=1
    fi
done
[ "$missing" = 0 ] && echo "docsrs.sh: every feature's items are marked: $(echo $features)"
exit "$missing"
