//! Draws `docs/strategies.svg`: what each [`Strategy`] admits when one client
//! sends the same requests to a limit of 10 per 10 s, decided by
//! [`Quota::decide`] itself.
//!
//! ```sh
//! scripts/plot-strategies.sh                                   # writes docs/strategies.svg
//! cargo run --example strategy_plot -- docs/strategies.svg     # the same
//! cargo run --example strategy_plot                            # prints the SVG
//! ```
//!
//! `tests/strategy_plot.rs` checks that the committed picture is the one this
//! draws, so a change to a strategy's decisions shows up as a failing test
//! until the picture is redrawn.

use std::fmt::Write as _;
use std::time::Duration;

use traffik::strategy::State;
use traffik::{Quota, Rate, Strategy};

/// The limit every lane enforces.
const RATE: &str = "10/10s";
/// The lanes, one per strategy, in this order.
const STRATEGIES: [Strategy; 5] = [
    Strategy::TokenBucket,
    Strategy::FixedWindow,
    Strategy::SlidingWindowCounter,
    Strategy::SlidingWindowLog,
    Strategy::Gcra,
];
/// The time the picture spans, in milliseconds.
const SPAN_MS: u64 = 30_000;
/// When the burst arrives, in milliseconds.
const BURST_AT_MS: u64 = 9_500;
/// Requests in the burst.
const BURST: usize = 20;

/// The client's requests, in order (times in milliseconds): one every 2 s
/// (half the limit), a burst of 20 at 9.5 s, then one every 250 ms (four
/// times the limit) from 10 s to the end.
pub fn requests() -> Vec<u64> {
    let mut times: Vec<u64> = (0..BURST_AT_MS).step_by(2_000).collect();
    times.extend([BURST_AT_MS; BURST]);
    times.extend((10_000..SPAN_MS).step_by(250));
    times
}

/// The decision (`true`: admitted) for each of `times`, by `strategy`, on
/// one key starting fresh.
pub fn decisions(strategy: Strategy, times: &[u64]) -> Vec<bool> {
    let rate: Rate = RATE.parse().expect("a valid rate");
    let quota = Quota::new(rate, strategy).expect("a valid quota");
    let mut state = State::new();
    times
        .iter()
        .map(|&ms| {
            quota
                .decide(&mut state, Duration::from_millis(ms), 1)
                .allowed
        })
        .collect()
}

/// The most requests admitted in any `period_ms`-long interval.
pub fn busiest(times: &[u64], allowed: &[bool], period_ms: u64) -> usize {
    let admitted: Vec<u64> = times
        .iter()
        .zip(allowed)
        .filter(|(_, &a)| a)
        .map(|(&t, _)| t)
        .collect();
    // The busiest interval can be taken to start at an admitted request.
    (0..admitted.len())
        .map(|i| {
            admitted[i..]
                .iter()
                .take_while(|&&t| t < admitted[i] + period_ms)
                .count()
        })
        .max()
        .unwrap_or(0)
}

// Layout, in pixels.
const WIDTH: f64 = 800.0;
const LEFT: f64 = 30.0;
const RIGHT: f64 = 770.0;
/// Top of the first lane.
const TOP: f64 = 86.0;
/// Height of one lane (label line, stacked marks, gap).
const LANE: f64 = 74.0;
/// Side of one request's square, and the distance between stacked squares.
const MARK: f64 = 4.0;
const PITCH: f64 = 5.0;
/// Simultaneous requests stack in columns of this many.
const COLUMN: usize = 10;

const FONT: &str = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
const ADMITTED: &str = "#1f9d55";
const REFUSED: &str = "#9aa1a9";
const SENT: &str = "#4a5568";
const TEXT: &str = "#1a202c";
const MUTED: &str = "#5a6270";

fn x_of(ms: u64) -> f64 {
    LEFT + (RIGHT - LEFT) * ms as f64 / SPAN_MS as f64
}

/// The top-left corner of each request's square in a lane whose marks stand
/// on `baseline`: requests at the same instant stack upwards in columns of
/// [`COLUMN`], side by side, centred on their time.
fn positions(times: &[u64], baseline: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(times.len());
    let mut i = 0;
    while i < times.len() {
        let same = times[i..].iter().take_while(|&&t| t == times[i]).count();
        let columns = same.div_ceil(COLUMN);
        let first_x = x_of(times[i]) - (columns as f64 * PITCH - (PITCH - MARK)) / 2.0;
        for k in 0..same {
            let (column, row) = (k / COLUMN, k % COLUMN);
            out.push((
                first_x + column as f64 * PITCH,
                baseline - MARK - row as f64 * PITCH,
            ));
        }
        i += same;
    }
    out
}

/// An SVG path drawing a [`MARK`]-wide square at each of `corners`, filled
/// (`outline` false) or as a 1 px outline inside the same bounds.
fn squares<'a>(corners: impl IntoIterator<Item = &'a (f64, f64)>, outline: bool) -> String {
    let (inset, side) = if outline {
        (0.5, MARK - 1.0)
    } else {
        (0.0, MARK)
    };
    let mut d = String::new();
    for (x, y) in corners {
        let (x, y) = (x + inset, y + inset);
        let _ = write!(d, "M{x:.1} {y:.1}h{side}v{side}h-{side}z");
    }
    d
}

/// The whole picture, as SVG text.
pub fn svg() -> String {
    let times = requests();
    let lanes = 1 + STRATEGIES.len();
    let axis = TOP + lanes as f64 * LANE;
    let height = axis + 34.0;
    let mut s = String::new();
    let w = &mut s;

    let _ = writeln!(
        w,
        r#"<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="{FONT}" font-size="12" fill="{TEXT}">"#
    );
    let _ = writeln!(
        w,
        "<!-- Generated by examples/strategy_plot.rs (scripts/plot-strategies.sh) from traffik's own decisions; do not edit. -->"
    );
    let _ = writeln!(
        w,
        "<title>What each traffik strategy admits from the same client</title>"
    );
    let _ = writeln!(
        w,
        r##"<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        w,
        r#"<text x="{LEFT}" y="30" font-size="17" font-weight="600">What each strategy admits from the same client</text>"#
    );
    let _ = writeln!(
        w,
        r#"<text x="{LEFT}" y="52" fill="{MUTED}">Limit 10 per 10 s. One client sends a request every 2 s, a burst of 20 at 9.5 s, then 4 a second from 10 s.</text>"#
    );

    // Legend.
    let legend_y = 68.0;
    let _ = writeln!(
        w,
        r#"<path d="{}" fill="{ADMITTED}"/><text x="{:.1}" y="{:.1}" fill="{MUTED}">admitted</text>"#,
        squares(&[(LEFT, legend_y - MARK)], false),
        LEFT + 8.0,
        legend_y
    );
    let _ = writeln!(
        w,
        r##"<path d="{}" fill="#ffffff" stroke="{REFUSED}"/><text x="{:.1}" y="{:.1}" fill="{MUTED}">refused</text>"##,
        squares(&[(LEFT + 80.0, legend_y - MARK)], true),
        LEFT + 88.0,
        legend_y
    );
    let _ = writeln!(
        w,
        r#"<path d="M{:.1} {:.1}v-9" stroke="{REFUSED}" stroke-dasharray="2 2" fill="none"/><text x="{:.1}" y="{:.1}" fill="{MUTED}">window boundary</text>"#,
        LEFT + 160.5,
        legend_y + 1.0,
        LEFT + 166.0,
        legend_y
    );
    let _ = writeln!(
        w,
        r#"<text x="{RIGHT}" y="{legend_y}" text-anchor="end" fill="{MUTED}">Requests sent at the same instant are stacked.</text>"#
    );

    // Faint grid every 5 s, behind the lanes.
    let grid: String = (0..=SPAN_MS)
        .step_by(5_000)
        .map(|ms| format!("M{:.1} {TOP}V{axis}", x_of(ms)))
        .collect();
    let _ = writeln!(w, r##"<path d="{grid}" stroke="#edf0f3" fill="none"/>"##);

    for lane in 0..lanes {
        let top = TOP + lane as f64 * LANE;
        let baseline = top + 18.0 + COLUMN as f64 * PITCH;
        let at = positions(&times, baseline);
        let _ = writeln!(
            w,
            r##"<path d="M{LEFT} {:.1}H{RIGHT}" stroke="#d5dae0" fill="none"/>"##,
            baseline + 1.5
        );
        if lane == 0 {
            let _ = writeln!(
                w,
                r#"<text x="{LEFT}" y="{:.1}" font-weight="600">Sent</text><text x="{RIGHT}" y="{:.1}" text-anchor="end" fill="{MUTED}">{} requests</text>"#,
                top + 11.0,
                top + 11.0,
                times.len()
            );
            let _ = writeln!(w, r#"<path d="{}" fill="{SENT}"/>"#, squares(&at, false));
            continue;
        }
        let strategy = STRATEGIES[lane - 1];
        let allowed = decisions(strategy, &times);
        let admitted = allowed.iter().filter(|&&a| a).count();
        let name = format!("{strategy:?}");
        let busiest = busiest(&times, &allowed, 10_000);
        let (note, windows) = match strategy {
            Strategy::TokenBucket => ("holds 10, refills one a second", false),
            Strategy::FixedWindow => ("10 per window, from the first request", true),
            Strategy::SlidingWindowCounter => {
                ("two windows at multiples of 10 s, the last weighted", true)
            }
            Strategy::SlidingWindowLog => ("a timestamp per admitted request", false),
            Strategy::Gcra => ("one a second, bursts of up to 10", false),
            _ => ("", false),
        };
        let _ = writeln!(
            w,
            r#"<text x="{LEFT}" y="{:.1}"><tspan font-weight="600">{name}</tspan><tspan dx="8" fill="{MUTED}">{note}</tspan></text><text x="{RIGHT}" y="{:.1}" text-anchor="end" fill="{MUTED}">{admitted} admitted, at most {busiest} in any 10 s</text>"#,
            top + 11.0,
            top + 11.0
        );
        if windows {
            let lines: String = (10_000..SPAN_MS)
                .step_by(10_000)
                .map(|ms| format!("M{:.1} {:.1}V{:.1}", x_of(ms), top + 16.0, baseline + 1.5))
                .collect();
            let _ = writeln!(
                w,
                r#"<path d="{lines}" stroke="{REFUSED}" stroke-dasharray="2 2" fill="none"/>"#
            );
        }
        let marks = |admitted: bool| {
            let corners = at.iter().zip(&allowed).filter(move |(_, &a)| a == admitted);
            squares(corners.map(|(corner, _)| corner), !admitted)
        };
        let _ = writeln!(
            w,
            r##"<path d="{}" fill="#ffffff" stroke="{REFUSED}"/>"##,
            marks(false)
        );
        let _ = writeln!(w, r#"<path d="{}" fill="{ADMITTED}"/>"#, marks(true));
    }

    // Time axis.
    let ticks: String = (0..=SPAN_MS)
        .step_by(1_000)
        .map(|ms| {
            let long = if ms % 5_000 == 0 { 6 } else { 3 };
            format!("M{:.1} {axis}v{long}", x_of(ms))
        })
        .collect();
    let _ = writeln!(
        w,
        r#"<path d="M{LEFT} {axis}H{RIGHT}{ticks}" stroke="{MUTED}" fill="none"/>"#
    );
    for ms in (0..=SPAN_MS).step_by(5_000) {
        let _ = writeln!(
            w,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="{MUTED}">{} s</text>"#,
            x_of(ms),
            axis + 20.0,
            ms / 1_000
        );
    }
    let _ = writeln!(w, "</svg>");
    s
}

fn main() -> std::io::Result<()> {
    let svg = svg();
    match std::env::args_os().nth(1) {
        Some(path) => std::fs::write(path, svg),
        None => {
            print!("{svg}");
            Ok(())
        }
    }
}
