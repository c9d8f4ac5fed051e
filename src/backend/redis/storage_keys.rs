//! The Redis keys of a throttle's keys: `{prefix}:{{rest}}:{tag}`, hash
//! tagged so that everything a decision touches lives in one Redis Cluster
//! slot, a long key stored as its start and a digest.

use crate::{Quota, Strategy};

/// Longer key texts are stored as their first [`KEPT_OF_LONG_KEY`] bytes in
/// the braces, then `#` and the SHA-1 of the whole.
const MAX_STORED_KEY: usize = 256;
const KEPT_OF_LONG_KEY: usize = 128;

/// Short tag appended to stored keys, so that a throttle whose strategy
/// changes between deployments starts from fresh state instead of misreading
/// another strategy's state.
fn strategy_tag(strategy: Strategy) -> &'static str {
    match strategy {
        Strategy::TokenBucket => "tb",
        Strategy::FixedWindow => "fw",
        Strategy::SlidingWindowCounter => "swc",
        Strategy::SlidingWindowLog => "swl",
        Strategy::Gcra => "gcra",
    }
}

/// The Redis key of one rate of a decision: [`storage_key`], and for a
/// throttle with several rates, the rate (`:{limit}/{period_us}`), so that
/// each rate keeps its counter whatever the order of the others.
pub(super) fn rate_key(prefix: &str, key: &str, quota: &Quota, rates: usize) -> String {
    let mut stored = storage_key(prefix, key, quota.strategy());
    if rates > 1 {
        stored.push_str(&format!(":{}/{}", quota.limit(), quota.period_micros()));
    }
    stored
}

/// `{prefix}:{{rest}}:{tag}`, where `rest` is `key` without its
/// `{prefix}:` (the whole key if it does not start with it).
pub(super) fn storage_key(prefix: &str, key: &str, strategy: Strategy) -> String {
    storage_key_tagged(prefix, key, strategy_tag(strategy))
}

/// [`storage_key`] with another tag (`if`: in-flight places).
pub(super) fn storage_key_tagged(prefix: &str, key: &str, tag: &str) -> String {
    let rest = key
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix(':'))
        .unwrap_or(key);
    // A key is as long as a client makes it (an identity from a header, an
    // unrouted path): past a bound, Redis stores its start and the SHA-1 of
    // the whole, not every byte, the same on every app instance. The digest
    // goes after the closing brace, where no short key's stored form has
    // anything but the tag (`{prefix}:{rest}:{tag}` always has `}:` before
    // its tag): a short key cannot be written to equal a long one's.
    let mut stored =
        String::with_capacity(prefix.len() + rest.len().min(MAX_STORED_KEY) + tag.len() + 48);
    stored.push_str(prefix);
    stored.push_str(":{");
    if rest.len() > MAX_STORED_KEY {
        let mut cut = KEPT_OF_LONG_KEY;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        stored.push_str(&rest[..cut]);
        stored.push_str("}#");
        stored.push_str(&sha1_smol::Sha1::from(rest).digest().to_string());
        stored.push(':');
    } else {
        stored.push_str(rest);
        stored.push_str("}:");
    }
    stored.push_str(tag);
    stored
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A long key is stored as its start and the SHA-1 of the whole: short,
    /// the same for the same text, different for another.
    #[test]
    fn long_keys_are_stored_under_a_digest() {
        let short = "api:10.0.0.1:http:GET:/hello";
        assert_eq!(
            storage_key("p", &format!("p:{short}"), Strategy::Gcra),
            format!("p:{{{short}}}:gcra")
        );
        let long = |fill: &str| format!("p:api:{}:http:GET:/", fill.repeat(100_000));
        let a = storage_key("p", &long("a"), Strategy::TokenBucket);
        assert!(a.len() < 200, "{}", a.len());
        assert!(
            a.starts_with("p:{api:aaaa") && a.contains("}#") && a.ends_with(":tb"),
            "{a}"
        );
        assert_eq!(a, storage_key("p", &long("a"), Strategy::TokenBucket));
        assert_ne!(a, storage_key("p", &long("b"), Strategy::TokenBucket));
        // Two keys with the same start differ by their digest.
        let (x, y) = (long("a") + "x", long("a") + "y");
        assert_ne!(
            storage_key("p", &x, Strategy::TokenBucket),
            storage_key("p", &y, Strategy::TokenBucket)
        );
        // A short key written as a long key's stored form is stored apart.
        let long_key = long("a");
        let rest = &long_key["p:".len()..];
        let forged = format!(
            "p:{}#{}",
            &rest[..128],
            sha1_smol::Sha1::from(rest).digest()
        );
        assert!(forged.len() - 2 <= MAX_STORED_KEY);
        assert_ne!(storage_key("p", &forged, Strategy::TokenBucket), a);
        // Cut at a character boundary.
        let wide = format!("p:api:{}:http:GET:/", "é".repeat(1_000));
        assert!(storage_key("p", &wide, Strategy::Gcra).starts_with("p:{api:é"));
    }

    #[test]
    fn storage_keys_are_hash_tagged() {
        assert_eq!(
            storage_key("traffik", "traffik:api:1.2.3.4:http:GET:/x", Strategy::Gcra),
            "traffik:{api:1.2.3.4:http:GET:/x}:gcra"
        );
        assert_eq!(
            storage_key("p", "other", Strategy::SlidingWindowLog),
            "p:{other}:swl"
        );
    }
}
