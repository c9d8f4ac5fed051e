//! The committed picture of the strategies (`docs/strategies.svg`) is the one
//! `examples/strategy_plot.rs` draws from the crate's current decisions.

#[allow(dead_code)] // `main` is for `cargo run --example strategy_plot`.
#[path = "../examples/strategy_plot.rs"]
mod plot;

use traffik::Strategy;

#[test]
fn committed_svg_matches_the_strategies_decisions() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/strategies.svg");
    let committed = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}; run scripts/plot-strategies.sh"))
        .replace("\r\n", "\n");
    assert!(
        committed == plot::svg(),
        "docs/strategies.svg is not what the strategies decide now: \
         run scripts/plot-strategies.sh and commit the new picture"
    );
}

/// What the picture is drawn to show.
#[test]
fn the_picture_shows_the_differences() {
    let times = plot::requests();
    let decide = |strategy| plot::decisions(strategy, &times);
    let busiest = |strategy| plot::busiest(&times, &decide(strategy), 10_000);
    // GCRA is a token bucket kept in one word: the same decisions.
    assert_eq!(decide(Strategy::Gcra), decide(Strategy::TokenBucket));
    // Only the log holds every 10 s interval to the limit.
    assert_eq!(busiest(Strategy::SlidingWindowLog), 10);
    for strategy in [
        Strategy::TokenBucket,
        Strategy::FixedWindow,
        Strategy::SlidingWindowCounter,
    ] {
        assert!(busiest(strategy) > 10, "{strategy:?}");
    }
}
