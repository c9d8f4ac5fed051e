//! The form a key is stored under in the table: its parts as bytes, with
//! what it counts (the strategies it is decided with, or in-flight places).
//!
//! [`write_stored`] writes the form part by part to a [`Sink`]: the
//! backend's hasher, a comparison with a key in the table ([`SameAs`]), or,
//! for a key the table does not hold yet, its stored copy. A lookup that
//! finds its key builds no copy of it.

use std::hash::{DefaultHasher, Hasher};

use smallvec::SmallVec;

use crate::key::{Key, KeyIdentity, ScopeKind};
use crate::Quota;

/// A key as the table stores it: its stored form, inline up to 24 bytes (a
/// client-address key with a short uid and route, such as `api` and `GET
/// /hello`, is 18), on the heap when longer. Inline up to 24 rather than 16
/// bytes, an entry grows by 8 bytes and such keys need no heap copy: 120
/// bytes a key at 1M client-address keys instead of 151 (`memory_per_key`).
pub(super) type StoredKey = SmallVec<[u8; 24]>;

/// What a stored key counts.
#[derive(Clone, Copy)]
pub(super) enum Counts<'q> {
    /// Rates decided with the strategies of these quotas (a throttle
    /// rebuilt with another strategy must not read the old state).
    Rates(&'q [Quota]),
    /// In-flight places.
    Places,
}

/// The tag of in-flight places where rates have their strategy (no
/// strategy is numbered this high).
const PLACES: u8 = 0xFE;

/// Where the parts of a stored form go, in order.
pub(super) trait Sink {
    fn put(&mut self, part: &[u8]);
}

/// Hashing: std's SipHash is a streaming hasher (its `write`s add up to
/// one `write` of their concatenation, which `stored_forms_hash_as_one_write`
/// checks), so a stored copy hashed in one `write`, when the table grows,
/// lands where the parts of its key did.
impl Sink for DefaultHasher {
    #[inline]
    fn put(&mut self, part: &[u8]) {
        self.write(part);
    }
}

impl Sink for StoredKey {
    fn put(&mut self, part: &[u8]) {
        self.extend_from_slice(part);
    }
}

/// Compares parts with a stored form, in place.
pub(super) struct SameAs<'s> {
    rest: &'s [u8],
    same: bool,
}

impl<'s> SameAs<'s> {
    #[inline]
    pub(super) fn new(stored: &'s [u8]) -> Self {
        SameAs {
            rest: stored,
            same: true,
        }
    }

    /// Whether the parts put were the whole stored form.
    #[inline]
    pub(super) fn finish(self) -> bool {
        self.same && self.rest.is_empty()
    }
}

impl Sink for SameAs<'_> {
    #[inline]
    fn put(&mut self, part: &[u8]) {
        match self.rest.split_at_checked(part.len()) {
            Some((start, rest)) if start == part => self.rest = rest,
            _ => {
                self.same = false;
                self.rest = &[];
            }
        }
    }
}

/// Whether `stored` is the stored form of `key` for `counts`.
#[inline]
pub(super) fn is_stored_form(stored: &[u8], key: &Key<'_>, counts: Counts<'_>) -> bool {
    let mut same = SameAs::new(stored);
    write_stored(key, counts, &mut same);
    same.finish()
}

/// The stored copy of `key` for `counts`, for a key new to the table.
pub(super) fn stored_copy(key: &Key<'_>, counts: Counts<'_>) -> StoredKey {
    let mut copy = StoredKey::new();
    write_stored(key, counts, &mut copy);
    copy
}

/// Writes the form `key` is stored under for `counts` to `sink`: the uid,
/// `0xFF` (a byte no text holds), what the key counts, the identity (a
/// client address as its bytes), the scope. Each part ends where the next
/// can be told to start (`0xFF` after each text but the last), so
/// different keys never share a stored form.
///
/// The fixed-size parts between two texts go to the sink in one piece
/// ([`Head`]): a client-address key is two pieces (uid, head), which keeps
/// the hasher's work close to one `write` (112 fewer instructions per
/// request than a piece per part, `scripts/callgrind-layer.sh`, mode ip).
/// Always inlined, so that each sink's calls are direct.
#[inline(always)]
pub(super) fn write_stored(key: &Key<'_>, counts: Counts<'_>, sink: &mut impl Sink) {
    sink.put(key.throttle.as_bytes());
    let mut head = Head::new();
    match counts {
        Counts::Rates([quota]) => head.extend(&[0xFF, quota.strategy() as u8]),
        Counts::Places => head.extend(&[0xFF, PLACES]),
        Counts::Rates(quotas) => {
            sink.put(&[0xFF, quotas.len() as u8]);
            for quota in quotas {
                sink.put(&[quota.strategy() as u8]);
            }
        }
    }
    match key.identity {
        KeyIdentity::Address {
            ip: std::net::IpAddr::V4(ip),
            ..
        } => {
            head.extend(&[4]);
            head.extend(&ip.octets());
        }
        KeyIdentity::Address {
            ip: std::net::IpAddr::V6(ip),
            prefix,
        } => {
            head.extend(&[6, prefix]);
            head.extend(&ip.octets());
        }
        KeyIdentity::Text(text) => {
            head.extend(b"T");
            head.flush(sink);
            sink.put(text.as_bytes());
            head.extend(&[0xFF]);
        }
    }
    match key.scope.0 {
        ScopeKind::Shared => {
            head.extend(b"*");
            head.flush(sink);
        }
        ScopeKind::Http { method, route } => {
            head.extend(&[b'H', method as u8]);
            head.flush(sink);
            sink.put(route.as_bytes());
        }
        ScopeKind::WebSocket { path, context } => {
            head.extend(b"W");
            head.flush(sink);
            sink.put(path.as_bytes());
            sink.put(&[0xFF]);
            sink.put(context.as_bytes());
        }
    }
}

/// The fixed-size parts of a stored form between two texts, gathered on the
/// stack: at most `0xFF`, a strategy, an IPv6 address with its tag and
/// prefix, a scope tag and a method (22 bytes).
struct Head {
    bytes: [u8; 24],
    len: usize,
}

impl Head {
    #[inline]
    fn new() -> Self {
        Head {
            bytes: [0; 24],
            len: 0,
        }
    }

    #[inline]
    fn extend(&mut self, part: &[u8]) {
        self.bytes[self.len..self.len + part.len()].copy_from_slice(part);
        self.len += part.len();
    }

    /// Puts what was gathered, and starts afresh.
    #[inline]
    fn flush(&mut self, sink: &mut impl Sink) {
        sink.put(&self.bytes[..self.len]);
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::LazyLock;

    use super::*;
    use crate::key::Scope;
    use crate::Strategy;

    static GET: http::Method = http::Method::GET;
    static QUOTAS: LazyLock<[Quota; 2]> = LazyLock::new(|| {
        [
            Quota::new("1/s".parse().unwrap(), Strategy::TokenBucket).unwrap(),
            Quota::new("1/s".parse().unwrap(), Strategy::Gcra).unwrap(),
        ]
    });

    /// Keys whose parts differ in every way the stored form tells apart,
    /// each with every kind of count, and their stored copies.
    fn forms() -> Vec<(Key<'static>, Counts<'static>, StoredKey)> {
        let keys = [
            Key::new("a", "x", Scope::shared()),
            Key::new("a", "x", Scope::http(&GET, "/")),
            Key::new("a", "x\u{1}", Scope::shared()),
            Key::new("ax", "", Scope::shared()),
            Key::new("a", "x", Scope::websocket("/", "")),
            Key::new("a", "x", Scope::websocket("", "/")),
            Key::client("a", "10.0.0.1".parse().unwrap(), 64, Scope::shared()),
            Key::client("a", "10.0.0.1".parse().unwrap(), 64, Scope::http(&GET, "/")),
            Key::client("a", "::a00:1".parse().unwrap(), 64, Scope::shared()),
            Key::client("a", "::a00:1".parse().unwrap(), 48, Scope::shared()),
            Key::client(
                "a-longer-uid",
                "2001:db8::1".parse().unwrap(),
                128,
                Scope::http(&GET, "/a/longer/route/{id}"),
            ),
        ];
        let [quota, gcra] = &*QUOTAS;
        let counts = [
            Counts::Rates(std::slice::from_ref(quota)),
            Counts::Rates(std::slice::from_ref(gcra)),
            Counts::Rates(&QUOTAS[..]),
            Counts::Places,
        ];
        let mut forms = Vec::new();
        for key in keys {
            for counts in counts {
                forms.push((key, counts, stored_copy(&key, counts)));
            }
        }
        forms
    }

    #[test]
    fn stored_forms_tell_keys_apart() {
        let forms = forms();
        let mut copies: Vec<_> = forms.iter().map(|(_, _, copy)| copy.to_vec()).collect();
        copies.sort();
        copies.dedup();
        assert_eq!(copies.len(), forms.len());
        // Compared in place, a key is its own stored form and no other.
        for (i, (key, counts, _)) in forms.iter().enumerate() {
            for (j, (_, _, copy)) in forms.iter().enumerate() {
                assert_eq!(is_stored_form(copy, key, *counts), i == j);
            }
        }
    }

    /// A key hashed part by part (a lookup) lands where its stored copy
    /// hashed in one write (the table growing or shrinking) does.
    #[test]
    fn stored_forms_hash_as_one_write() {
        let state = RandomState::new();
        for (key, counts, copy) in forms() {
            let mut parts = state.build_hasher();
            write_stored(&key, counts, &mut parts);
            let mut whole = state.build_hasher();
            whole.write(&copy);
            assert_eq!(parts.finish(), whole.finish());
        }
    }
}
