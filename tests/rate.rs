//! `Rate` parsing, display and validation; `Quota` configuration errors.

use std::time::Duration;

use traffik::{Error, Quota, Rate, Strategy};

/// Every strategy (`Strategy` is `#[non_exhaustive]` and keeps no public list).
const STRATEGIES: [Strategy; 5] = [
    Strategy::TokenBucket,
    Strategy::FixedWindow,
    Strategy::SlidingWindowCounter,
    Strategy::SlidingWindowLog,
    Strategy::Gcra,
];

fn rate(text: &str) -> Rate {
    text.parse()
        .unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
}

/// The configuration message of a failed parse (panics on success or another variant).
fn parse_error(text: &str) -> String {
    match text.parse::<Rate>() {
        Ok(rate) => panic!("{text:?} should not parse, got {rate}"),
        Err(Error::Configuration(message)) => message,
        Err(other) => panic!("{text:?}: expected Error::Configuration, got {other:?}"),
    }
}

fn config_error<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
    match result {
        Ok(value) => panic!("expected a configuration error, got {value:?}"),
        Err(Error::Configuration(message)) => message,
        Err(other) => panic!("expected Error::Configuration, got {other:?}"),
    }
}

const SEC: Duration = Duration::from_secs(1);

#[test]
fn parses_the_documented_forms() {
    let cases: &[(&str, u64, Duration)] = &[
        ("100/min", 100, Duration::from_secs(60)),
        ("5/s", 5, SEC),
        ("2/5s", 2, Duration::from_secs(5)),
        ("1000/500ms", 1000, Duration::from_millis(500)),
        ("10 per second", 10, SEC),
        ("3/d", 3, Duration::from_secs(86_400)),
        ("7/h", 7, Duration::from_secs(3600)),
        ("1/us", 1, Duration::from_micros(1)),
        ("1/µs", 1, Duration::from_micros(1)),
        ("4/250us", 4, Duration::from_micros(250)),
        ("9/m", 9, Duration::from_secs(60)),
        ("9/2m", 9, Duration::from_secs(120)),
        ("12/hour", 12, Duration::from_secs(3600)),
        ("12/3hours", 12, Duration::from_secs(3 * 3600)),
        ("1/day", 1, Duration::from_secs(86_400)),
        ("1/7days", 1, Duration::from_secs(7 * 86_400)),
        ("60/minute", 60, Duration::from_secs(60)),
        ("60/10minutes", 60, Duration::from_secs(600)),
        ("8/sec", 8, SEC),
        ("8/secs", 8, SEC),
        ("8/seconds", 8, SEC),
        ("8/30seconds", 8, Duration::from_secs(30)),
        ("5/millisecond", 5, Duration::from_millis(1)),
        ("5/ms", 5, Duration::from_millis(1)),
        ("5 per 10 seconds", 5, Duration::from_secs(10)),
        ("5 per 10s", 5, Duration::from_secs(10)),
        ("5 per min", 5, Duration::from_secs(60)),
        ("18446744073709551615/s", u64::MAX, SEC),
    ];
    for &(text, limit, period) in cases {
        let r = rate(text);
        assert_eq!(r.limit(), limit, "{text:?}");
        assert_eq!(r.period(), period, "{text:?}");
        assert!(!r.is_unlimited(), "{text:?}");
        assert_eq!(r, Rate::new(limit, period).unwrap(), "{text:?}");
    }
}

#[test]
fn whitespace_and_case_variants() {
    let expected = Rate::new(10, SEC).unwrap();
    for text in [
        "10/s",
        " 10/s ",
        "10 / s",
        "\t10/s\n",
        "10/S",
        "10/Sec",
        "10/SECOND",
        "10 PER SECOND",
        "10 Per Second",
        "  10   per   second  ",
        "10 per s",
        "10/1s",
        "10/1 s",
    ] {
        assert_eq!(rate(text), expected, "{text:?}");
    }
    assert_eq!(
        rate("2 / 5 s"),
        Rate::new(2, Duration::from_secs(5)).unwrap()
    );
    assert_eq!(rate("100/MIN"), Rate::per_minute(100).unwrap());
    assert_eq!(
        rate("1000/500MS"),
        Rate::new(1000, Duration::from_millis(500)).unwrap()
    );
}

#[test]
fn unlimited_parses_and_displays() {
    for text in ["unlimited", "UNLIMITED", " Unlimited "] {
        let r = rate(text);
        assert!(r.is_unlimited());
        assert_eq!(r, Rate::unlimited());
    }
    assert_eq!(Rate::unlimited().to_string(), "unlimited");
    assert_eq!(Rate::unlimited().limit(), 0);
    assert_eq!(Rate::unlimited().period(), Duration::ZERO);
}

#[test]
fn constructors() {
    assert_eq!(Rate::per_second(5).unwrap(), rate("5/s"));
    assert_eq!(Rate::per_minute(5).unwrap(), rate("5/min"));
    assert_eq!(Rate::per_hour(5).unwrap(), rate("5/h"));
    assert_eq!(Rate::per_day(5).unwrap(), rate("5/d"));
    assert_eq!(Rate::try_from("5/s").unwrap(), rate("5/s"));
    assert_eq!(Rate::try_from(String::from("5/s")).unwrap(), rate("5/s"));
    assert_eq!(Rate::try_from(&String::from("5/s")).unwrap(), rate("5/s"));
    assert!(Rate::per_second(0).is_err());
}

#[test]
fn display_uses_the_largest_whole_unit() {
    let cases: &[(&str, &str)] = &[
        ("100/min", "100/min"),
        ("5/s", "5/s"),
        ("2/5s", "2/5s"),
        ("1000/500ms", "1000/500ms"),
        ("10 per second", "10/s"),
        ("3/d", "3/d"),
        ("3/24h", "3/d"),
        ("3/60s", "3/min"),
        ("3/90s", "3/90s"),
        ("3/1000ms", "3/s"),
        ("3/1500ms", "3/1500ms"),
        ("3/250us", "3/250us"),
        ("3/2d", "3/2d"),
        ("1/us", "1/us"),
    ];
    for &(text, shown) in cases {
        assert_eq!(rate(text).to_string(), shown, "{text:?}");
        assert_eq!(format!("{:?}", rate(text)), shown, "Debug of {text:?}");
    }
}

#[test]
fn display_round_trips() {
    let periods = [
        Duration::from_micros(1),
        Duration::from_micros(7),
        Duration::from_micros(1_500),
        Duration::from_millis(1),
        Duration::from_millis(999),
        Duration::from_millis(1_001),
        Duration::from_secs(1),
        Duration::from_secs(59),
        Duration::from_secs(61),
        Duration::from_secs(3600),
        Duration::from_secs(86_400),
        Duration::from_secs(86_401),
        Duration::from_secs(365 * 86_400),
        Duration::from_secs(100 * 365 * 86_400),
        // Not a whole millisecond and longer than u32::MAX microseconds.
        Duration::from_micros(5_000_000_001),
        // Not a whole second and longer than u32::MAX milliseconds.
        Duration::from_millis(5_000_000_001),
        Duration::from_micros(100 * 365 * 86_400 * 1_000_000 - 1),
    ];
    for period in periods {
        for limit in [1, 2, 1000, u64::MAX] {
            let r = Rate::new(limit, period).unwrap();
            let text = r.to_string();
            let back: Rate = text
                .parse()
                .unwrap_or_else(|e| panic!("{text:?} (from {period:?}) does not parse back: {e}"));
            assert_eq!(back, r, "{text:?}");
        }
    }
    assert_eq!(
        rate("unlimited").to_string().parse::<Rate>().unwrap(),
        Rate::unlimited()
    );
}

#[test]
fn zero_limit_is_an_error() {
    let message = parse_error("0/s");
    assert!(message.contains("\"0/s\""), "{message}");
    assert!(
        message.contains("rate limit must be at least 1"),
        "{message}"
    );
    assert!(message.contains("Rate::unlimited()"), "{message}");

    let message = config_error(Rate::new(0, SEC));
    assert!(
        message.contains("rate limit must be at least 1"),
        "{message}"
    );
    assert!(message.contains("Rate::unlimited()"), "{message}");

    let message = parse_error("0 per minute");
    assert!(
        message.contains("rate limit must be at least 1"),
        "{message}"
    );
}

#[test]
fn zero_period_is_an_error() {
    let message = parse_error("5/0s");
    assert!(message.contains("\"5/0s\""), "{message}");
    assert!(
        message.contains("rate period must be longer than zero"),
        "{message}"
    );

    let message = config_error(Rate::new(5, Duration::ZERO));
    assert!(
        message.contains("rate period must be longer than zero"),
        "{message}"
    );
    assert!(message.contains("5/min"), "suggests a form: {message}");

    let message = parse_error("5/0ms");
    assert!(
        message.contains("rate period must be longer than zero"),
        "{message}"
    );
}

#[test]
fn bad_unit_is_an_error() {
    for text in [
        "5/fortnight",
        "5/",
        "5/ ",
        "5/10",
        "5/1.5s",
        "5/sx",
        "5/-1s",
        "5 per 3",
        "5 per  x",
        "5/yr",
    ] {
        let message = parse_error(text);
        assert!(message.contains("unknown time unit"), "{text:?}: {message}");
        assert!(
            message.contains(&format!("{text:?}")),
            "names the input: {message}"
        );
        assert!(
            message.contains("\"100/min\""),
            "shows an example: {message}"
        );
        assert!(
            message.contains(ACCEPTED_UNITS),
            "lists the accepted units: {message}"
        );
    }
    // The list is true: every unit it names parses, and so do the plurals
    // of the words.
    for unit in [
        "us", "ms", "s", "sec", "second", "m", "min", "minute", "h", "hr", "hour", "d", "day",
    ] {
        assert!(format!("1/{unit}").parse::<Rate>().is_ok(), "{unit}");
        if unit.len() > 2 {
            assert!(format!("1/{unit}s").parse::<Rate>().is_ok(), "{unit}s");
        }
    }
}

/// The units a bad-unit message lists, as `src/rate.rs` writes them.
const ACCEPTED_UNITS: &str =
    "(accepted: us, ms, s, sec, second, m, min, minute, h, hr, hour, d, day, and their plurals)";

#[test]
fn missing_separator_is_an_error() {
    for text in [
        "5",
        "5s",
        "",
        "   ",
        "5 s",
        "5 every second",
        "5per second",
        "5 persecond",
        "5 per",
        "5 per  ",
    ] {
        let message = parse_error(text);
        assert!(
            message.contains("missing '/' or 'per'"),
            "{text:?}: {message}"
        );
        assert!(
            message.contains("\"10 per second\""),
            "shows an example: {message}"
        );
    }
}

#[test]
fn non_numeric_limit_is_an_error() {
    for text in ["abc/s", "/s", "five/s", "1.5/s", "-1/s", "1e3/s", "1 0/s"] {
        let message = parse_error(text);
        let limit = text.split('/').next().unwrap();
        assert!(
            message.contains(&format!("the limit {limit:?} is not a whole number")),
            "{text:?}: {message}"
        );
    }
    // Words after the number: the message shows what was read as the limit.
    let message = parse_error("5 requests per minute");
    assert!(
        message.contains("the limit \"5 requests\" is not a whole number"),
        "{message}"
    );
    // A number too large for a u64 is named as such.
    let message = parse_error("18446744073709551616/s");
    assert!(
        message
            .contains("the limit 18446744073709551616 is too large (at most 18446744073709551615)"),
        "{message}"
    );
    let message = parse_error("1/99999999999999999999s");
    assert!(
        message.contains("the period count 99999999999999999999 is too large"),
        "{message}"
    );
}

#[test]
fn error_display_says_configuration() {
    let err = "nope".parse::<Rate>().unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.starts_with("traffik configuration error: "),
        "{shown}"
    );
    assert!(shown.contains("invalid rate \"nope\""), "{shown}");
}

#[test]
fn period_bounds() {
    let message = config_error(Rate::new(1, Duration::from_nanos(999)));
    assert!(message.contains("1 microsecond"), "{message}");
    // Periods are whole microseconds: a fraction would be silently truncated by
    // the strategies and would not survive a display round trip.
    let message = config_error(Rate::new(1, Duration::from_nanos(1_500)));
    assert!(message.contains("microsecond"), "{message}");
    Rate::new(1, Duration::from_secs(100 * 365 * 86_400)).unwrap();
    let message = config_error(Rate::new(1, Duration::from_secs(100 * 365 * 86_400 + 1)));
    assert!(message.contains("100 years"), "{message}");
    let message = parse_error("1/36501d");
    assert!(message.contains("100 years"), "{message}");
    let message = parse_error("1/99999999999999999999999s");
    assert!(
        message.contains("\"1/99999999999999999999999s\""),
        "{message}"
    );
}

#[test]
fn quota_rejects_unlimited_rates() {
    for strategy in STRATEGIES {
        let message = config_error(Quota::new(Rate::unlimited(), strategy));
        assert!(message.contains("unlimited"), "{strategy}: {message}");
    }
}

#[test]
fn quota_burst_only_for_bucket_strategies() {
    let r = rate("10/s");
    for strategy in [
        Strategy::FixedWindow,
        Strategy::SlidingWindowCounter,
        Strategy::SlidingWindowLog,
    ] {
        let quota = Quota::new(r, strategy).unwrap();
        let message = config_error(quota.with_burst(20));
        assert!(message.contains("burst(20)"), "{message}");
        assert!(message.contains("TokenBucket"), "{message}");
        assert!(message.contains(&format!("{strategy:?}")), "{message}");
    }
    for strategy in [Strategy::TokenBucket, Strategy::Gcra] {
        let quota = Quota::new(r, strategy).unwrap();
        assert_eq!(quota.capacity(), 10);
        let burst = quota.with_burst(20).unwrap();
        assert_eq!(burst.capacity(), 20);
        assert_eq!(burst.limit(), 10);
        assert_eq!(quota.with_burst(3).unwrap().capacity(), 3);
        let message = config_error(quota.with_burst(0));
        assert!(message.contains("burst must be at least 1"), "{message}");
    }
}

#[test]
fn quota_gcra_at_most_one_hit_per_microsecond() {
    let message = config_error(Quota::new(rate("1001/ms"), Strategy::Gcra));
    assert!(message.contains("too fast for Strategy::Gcra"), "{message}");
    assert!(message.contains("1001/ms"), "names the rate: {message}");
    let message = config_error(Quota::new(rate("2/us"), Strategy::Gcra));
    assert!(message.contains("too fast"), "{message}");
    // Exactly one per microsecond is fine.
    let quota = Quota::new(rate("1000/ms"), Strategy::Gcra).unwrap();
    assert_eq!(quota.emission_interval(), 1);
    // Other strategies take fast rates.
    for strategy in [
        Strategy::TokenBucket,
        Strategy::FixedWindow,
        Strategy::SlidingWindowCounter,
    ] {
        Quota::new(rate("2/us"), strategy).unwrap();
    }
}

#[test]
fn quota_too_large_for_exact_arithmetic() {
    let huge = Rate::new(u64::MAX, Duration::from_secs(86_400)).unwrap();
    for strategy in [
        Strategy::TokenBucket,
        Strategy::SlidingWindowCounter,
        Strategy::SlidingWindowLog,
    ] {
        let message = config_error(Quota::new(huge, strategy));
        assert!(
            message.contains("too large for exact arithmetic"),
            "{strategy}: {message}"
        );
    }
    // Each message names a fix that helps: for the log, only the limit counts.
    let log = Rate::new(1_000_000_000, Duration::from_secs(1)).unwrap();
    let message = config_error(Quota::new(log, Strategy::SlidingWindowLog));
    assert!(
        message.contains("use a smaller limit, or Strategy::SlidingWindowCounter"),
        "{message}"
    );
    assert!(!message.contains("shorter period"), "{message}");
    let message = config_error(Quota::new(
        Rate::new(u64::from(u32::MAX) + 1, Duration::from_millis(1)).unwrap(),
        Strategy::SlidingWindowCounter,
    ));
    assert!(message.contains("use a smaller limit"), "{message}");
    assert!(!message.contains("shorter period"), "{message}");
    // Fixed window only counts.
    Quota::new(huge, Strategy::FixedWindow).unwrap();
    let message = config_error(
        Quota::new(rate("10/s"), Strategy::TokenBucket)
            .unwrap()
            .with_burst(u64::MAX / 2),
    );
    assert!(message.contains("too large"), "{message}");
}

#[test]
fn quota_accessors() {
    let quota = Quota::new(rate("3/10s"), Strategy::Gcra).unwrap();
    assert_eq!(quota.rate(), rate("3/10s"));
    assert_eq!(quota.strategy(), Strategy::Gcra);
    assert_eq!(quota.limit(), 3);
    assert_eq!(quota.capacity(), 3);
    assert_eq!(quota.period_micros(), 10_000_000);
    assert_eq!(quota.emission_interval(), 3_333_333);
    assert_eq!(Strategy::default(), Strategy::TokenBucket);
    let names: Vec<String> = STRATEGIES.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        names,
        [
            "token_bucket",
            "fixed_window",
            "sliding_window_counter",
            "sliding_window_log",
            "gcra"
        ]
    );
}
