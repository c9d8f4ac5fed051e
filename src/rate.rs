//! [`Rate`]: a number of hits allowed over a period.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::Error;

/// A rate limit: `limit` hits per `period`, or unlimited.
///
/// ```
/// use std::time::Duration;
/// use traffik::Rate;
///
/// let a: Rate = "100/min".parse().unwrap();
/// let b = Rate::new(100, Duration::from_secs(60)).unwrap();
/// assert_eq!(a, b);
/// assert_eq!("2/5s".parse::<Rate>().unwrap().period(), Duration::from_secs(5));
/// assert_eq!("10 per second".parse::<Rate>().unwrap().limit(), 10);
/// assert!("0/s".parse::<Rate>().is_err());
/// assert!(Rate::unlimited().is_unlimited());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    limit: u64,
    period: Duration,
    unlimited: bool,
}

impl Rate {
    /// `limit` hits per `period`. Zero limit or zero period is
    /// [`Error::Configuration`]; a period must be a whole number of microseconds
    /// no longer than 100 years.
    pub fn new(limit: u64, period: Duration) -> Result<Rate, Error> {
        if limit == 0 {
            return Err(Error::configuration(format!(
                "rate limit must be at least 1 (got 0 per {period:?}); use Rate::unlimited() for no limit"
            )));
        }
        if period.is_zero() {
            return Err(Error::configuration(format!(
                "rate period must be longer than zero (got {limit} per 0s); set one with .seconds(n), .minutes(n), ... or a string like \"{limit}/min\""
            )));
        }
        if period < Duration::from_micros(1) {
            return Err(Error::configuration(format!(
                "rate period {period:?} is shorter than the 1 microsecond resolution of traffik"
            )));
        }
        if !period.subsec_nanos().is_multiple_of(1_000) {
            return Err(Error::configuration(format!(
                "rate period {period:?} is not a whole number of microseconds (the resolution of traffik)"
            )));
        }
        if period > Duration::from_secs(100 * 365 * 86_400) {
            return Err(Error::configuration(format!(
                "rate period {period:?} is longer than 100 years"
            )));
        }
        Ok(Rate {
            limit,
            period,
            unlimited: false,
        })
    }

    /// `limit` hits per second.
    pub fn per_second(limit: u64) -> Result<Rate, Error> {
        Rate::new(limit, Duration::from_secs(1))
    }

    /// `limit` hits per minute.
    pub fn per_minute(limit: u64) -> Result<Rate, Error> {
        Rate::new(limit, Duration::from_secs(60))
    }

    /// `limit` hits per hour.
    pub fn per_hour(limit: u64) -> Result<Rate, Error> {
        Rate::new(limit, Duration::from_secs(3600))
    }

    /// `limit` hits per day.
    pub fn per_day(limit: u64) -> Result<Rate, Error> {
        Rate::new(limit, Duration::from_secs(86_400))
    }

    /// No limit: hits are never counted and never touch a backend.
    pub const fn unlimited() -> Rate {
        Rate {
            limit: 0,
            period: Duration::ZERO,
            unlimited: true,
        }
    }

    /// `true` for [`Rate::unlimited`].
    pub fn is_unlimited(&self) -> bool {
        self.unlimited
    }

    /// Hits allowed per period (0 when unlimited).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The period (zero when unlimited).
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The period in whole microseconds.
    pub(crate) fn period_micros(&self) -> u64 {
        self.period.as_micros() as u64
    }
}

impl fmt::Debug for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.unlimited {
            return f.write_str("unlimited");
        }
        let micros = self.period.as_micros();
        let units: [(u128, &str); 6] = [
            (86_400_000_000, "d"),
            (3_600_000_000, "h"),
            (60_000_000, "min"),
            (1_000_000, "s"),
            (1_000, "ms"),
            (1, "us"),
        ];
        for (size, name) in units {
            if micros.is_multiple_of(size) {
                let n = micros / size;
                return if n == 1 {
                    write!(f, "{}/{name}", self.limit)
                } else {
                    write!(f, "{}/{n}{name}", self.limit)
                };
            }
        }
        write!(f, "{}/{}us", self.limit, micros)
    }
}

/// Parses a time unit name into its length.
pub(crate) fn unit_duration(unit: &str) -> Option<Duration> {
    let unit = unit.to_ascii_lowercase();
    let d = match unit.as_str() {
        "us" | "µs" | "micro" | "micros" | "microsecond" | "microseconds" => {
            Duration::from_micros(1)
        }
        "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => Duration::from_millis(1),
        "s" | "sec" | "secs" | "second" | "seconds" => Duration::from_secs(1),
        "m" | "min" | "mins" | "minute" | "minutes" => Duration::from_secs(60),
        "h" | "hr" | "hrs" | "hour" | "hours" => Duration::from_secs(3600),
        "d" | "day" | "days" => Duration::from_secs(86_400),
        _ => return None,
    };
    Some(d)
}

impl FromStr for Rate {
    type Err = Error;

    /// Parses `"<limit>/<period>"` or `"<limit> per <period>"`, where period is
    /// an optional count followed by a unit: `us`, `ms`, `s`/`sec`/`second`,
    /// `m`/`min`/`minute`, `h`/`hour`, `d`/`day` (plurals accepted).
    /// `"unlimited"` parses to [`Rate::unlimited`].
    fn from_str(input: &str) -> Result<Rate, Error> {
        let bad = |why: &str| {
            Error::configuration(format!(
                "invalid rate {input:?}: {why}; expected forms like \"100/min\", \"5/s\", \"2/5s\", \"1000/500ms\", \"10 per second\" or \"3/d\""
            ))
        };
        let text = input.trim();
        if text.eq_ignore_ascii_case("unlimited") {
            return Ok(Rate::unlimited());
        }
        let (limit_part, period_part) = if let Some((l, p)) = text.split_once('/') {
            (l, p)
        } else if let Some(index) = text.to_ascii_lowercase().find(" per ") {
            (&text[..index], &text[index + 5..])
        } else {
            return Err(bad("missing '/' or 'per'"));
        };
        let number = |part: &str, what: &str| -> Result<u64, Error> {
            part.parse()
                .map_err(|error: std::num::ParseIntError| match error.kind() {
                    std::num::IntErrorKind::PosOverflow => bad(&format!(
                        "the {what} {part} is too large (at most {})",
                        u64::MAX
                    )),
                    _ => bad(&format!("the {what} {part:?} is not a whole number")),
                })
        };
        let limit = number(limit_part.trim(), "limit")?;
        let period_part = period_part.trim();
        let split = period_part
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(period_part.len());
        let (count, unit) = period_part.split_at(split);
        // u64, not u32: `Display` writes counts such as "5000000001ms".
        let count: u64 = if count.is_empty() {
            1
        } else {
            number(count, "period count")?
        };
        let unit = unit_duration(unit.trim()).ok_or_else(|| {
            bad(&format!(
                "unknown time unit {:?} (accepted: us, ms, s, sec, second, m, min, minute, h, hr, \
                 hour, d, day, and their plurals)",
                unit.trim()
            ))
        })?;
        let period = u64::try_from(unit.as_micros())
            .ok()
            .and_then(|micros| micros.checked_mul(count))
            .map(Duration::from_micros)
            .ok_or_else(|| bad("the period is too long"))?;
        Rate::new(limit, period).map_err(|e| match e {
            Error::Configuration(message) => {
                Error::configuration(format!("invalid rate {input:?}: {message}"))
            }
            other => other,
        })
    }
}

impl TryFrom<&str> for Rate {
    type Error = Error;
    fn try_from(value: &str) -> Result<Rate, Error> {
        value.parse()
    }
}

impl TryFrom<String> for Rate {
    type Error = Error;
    fn try_from(value: String) -> Result<Rate, Error> {
        value.parse()
    }
}

impl TryFrom<&String> for Rate {
    type Error = Error;
    fn try_from(value: &String) -> Result<Rate, Error> {
        value.parse()
    }
}

/// Anything `.rate(..)` accepts: a [`Rate`] or a string such as `"100/min"`.
pub trait IntoRate {
    /// Converts into a rate, or a configuration error.
    fn into_rate(self) -> Result<Rate, Error>;
}

/// What a dynamic rate's future gives: one [`Rate`], or several (a
/// `Vec<Rate>` or an array) decided all or nothing.
pub trait IntoRates {
    /// Converts.
    fn into_rates(self) -> Vec<Rate>;
}

impl IntoRates for Rate {
    fn into_rates(self) -> Vec<Rate> {
        vec![self]
    }
}

impl IntoRates for Vec<Rate> {
    fn into_rates(self) -> Vec<Rate> {
        self
    }
}

impl<const N: usize> IntoRates for [Rate; N] {
    fn into_rates(self) -> Vec<Rate> {
        self.into()
    }
}

impl IntoRate for Rate {
    fn into_rate(self) -> Result<Rate, Error> {
        Ok(self)
    }
}

impl IntoRate for &str {
    fn into_rate(self) -> Result<Rate, Error> {
        self.parse()
    }
}

impl IntoRate for String {
    fn into_rate(self) -> Result<Rate, Error> {
        self.parse()
    }
}

impl IntoRate for &String {
    fn into_rate(self) -> Result<Rate, Error> {
        self.parse()
    }
}

impl IntoRate for Result<Rate, Error> {
    fn into_rate(self) -> Result<Rate, Error> {
        self
    }
}
