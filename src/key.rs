//! Building throttle keys without a heap allocation when they are short.

use std::fmt;
use std::net::Ipv4Addr;

use arrayvec::{ArrayString, ArrayVec};

/// Room for keys built on the stack: `traffik:api:10.0.0.1:http:GET:/hello`
/// is 36 bytes; a masked IPv6 address and a long route still fit.
pub(crate) const INLINE: usize = 120;

/// A key: on the stack while it fits, else a `String`.
pub(crate) enum KeyBuf {
    Inline(ArrayString<INLINE>),
    Heap(String),
}

/// The key did not fit in the inline room.
pub(crate) struct Overflow;

/// Where a key is written: [`ArrayString`] (fails when full) or `String`.
pub(crate) trait KeyOut: fmt::Write {
    /// Appends `s`.
    fn put(&mut self, s: &str) -> Result<(), Overflow>;

    /// Appends the first `keep` bytes of `s` (ASCII). Appending all of a
    /// short `s` of a length known when compiling, then cutting it back, is
    /// a few instructions; appending a piece of a length known only at run
    /// time is a call to `memcpy`.
    fn put_first(&mut self, s: &str, keep: usize) -> Result<(), Overflow>;
}

impl KeyOut for ArrayString<INLINE> {
    #[inline]
    fn put(&mut self, s: &str) -> Result<(), Overflow> {
        self.try_push_str(s).map_err(|_| Overflow)
    }

    #[inline]
    fn put_first(&mut self, s: &str, keep: usize) -> Result<(), Overflow> {
        let len = self.len();
        self.try_push_str(s).map_err(|_| Overflow)?;
        self.truncate(len + keep);
        Ok(())
    }
}

impl KeyOut for String {
    #[inline]
    fn put(&mut self, s: &str) -> Result<(), Overflow> {
        self.push_str(s);
        Ok(())
    }

    #[inline]
    fn put_first(&mut self, s: &str, keep: usize) -> Result<(), Overflow> {
        self.push_str(&s[..keep]);
        Ok(())
    }
}

impl KeyBuf {
    /// The key.
    #[inline]
    pub(crate) fn as_str(&self) -> &str {
        match self {
            KeyBuf::Inline(inline) => inline,
            KeyBuf::Heap(heap) => heap,
        }
    }
}

impl From<&str> for KeyBuf {
    fn from(key: &str) -> KeyBuf {
        match ArrayString::from(key) {
            Ok(inline) => KeyBuf::Inline(inline),
            Err(_) => KeyBuf::Heap(key.to_owned()),
        }
    }
}

impl AsRef<str> for KeyBuf {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// The key of one decision, as the two kinds of backends want it.
///
/// * Network and custom backends get the text,
///   `{prefix}:{uid}:{identity}:{scope}`, written only when one asks.
/// * The in-memory backend hashes [`memory_bytes`](DecisionKey::memory_bytes):
///   the text itself, except for the client-address keys of HTTP throttles,
///   whose bytes are a shorter binary form (the address as its 4 or 16
///   bytes, one byte for a standard method, no prefix: each backend has its
///   own table). That form starts with `0xFF`, a byte no text holds, so it never
///   equals the bytes of a text key.
pub(crate) trait DecisionKey {
    /// What the in-memory backend hashes.
    fn memory_bytes(&self) -> &[u8];

    /// Writes the text of the key for a backend of this `prefix` (a key
    /// written with its prefix already ignores it).
    fn write_text(&self, prefix: &str, out: &mut impl KeyOut) -> Result<(), Overflow>;

    /// The text, when the key already is one (no copy to make).
    fn as_text(&self) -> Option<&str> {
        None
    }

    /// The text of the key, on the stack when it fits.
    fn text(&self, prefix: &str) -> KeyBuf {
        let mut inline = ArrayString::<INLINE>::new();
        if self.write_text(prefix, &mut inline).is_ok() {
            return KeyBuf::Inline(inline);
        }
        let mut heap = String::new();
        // A `String` never overflows.
        let _ = self.write_text(prefix, &mut heap);
        KeyBuf::Heap(heap)
    }

    /// The key owned (for futures that outlive the request), on the stack
    /// while it fits, in the one form its backend needs: the binary form
    /// for the in-memory backend when the key has one, else the text.
    fn to_owned_key(&self, prefix: &str, in_memory: bool) -> OwnedKey {
        let bytes = self.memory_bytes();
        if in_memory && bytes.first() == Some(&0xFF) {
            let mut owned = KeyBytes::new();
            owned.put(bytes);
            return OwnedKey::Memory(owned);
        }
        OwnedKey::Text(self.text(prefix))
    }
}

impl DecisionKey for str {
    #[inline]
    fn memory_bytes(&self) -> &[u8] {
        self.as_bytes()
    }

    #[inline]
    fn write_text(&self, _prefix: &str, out: &mut impl KeyOut) -> Result<(), Overflow> {
        out.put(self)
    }

    #[inline]
    fn as_text(&self) -> Option<&str> {
        Some(self)
    }
}

/// A [`DecisionKey`] owned, in the form its backend needs.
pub(crate) enum OwnedKey {
    /// The text, written with its backend's prefix.
    Text(KeyBuf),
    /// The binary form of an HTTP client-address key, for the in-memory
    /// backend; its text (for logs) is read back from it.
    Memory(KeyBytes),
}

impl DecisionKey for OwnedKey {
    fn memory_bytes(&self) -> &[u8] {
        match self {
            OwnedKey::Text(text) => text.as_str().as_bytes(),
            OwnedKey::Memory(bytes) => bytes.as_slice(),
        }
    }

    fn write_text(&self, prefix: &str, out: &mut impl KeyOut) -> Result<(), Overflow> {
        match self {
            OwnedKey::Text(text) => out.put(text.as_str()),
            OwnedKey::Memory(bytes) => {
                crate::throttle::write_memory_key_text(bytes.as_slice(), prefix, out)
            }
        }
    }

    fn as_text(&self) -> Option<&str> {
        match self {
            OwnedKey::Text(text) => Some(text.as_str()),
            OwnedKey::Memory(_) => None,
        }
    }
}

/// Shows a key's text for a backend's prefix (in logs).
pub(crate) struct Shown<'a, K: ?Sized>(pub(crate) &'a K, pub(crate) &'a str);

/// Keys longer than this are cut in logs (a key is as long as a client
/// makes it: one log line must not carry a 300 KB header back).
const MAX_SHOWN: usize = 256;

impl<K: DecisionKey + ?Sized> fmt::Display for Shown<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.text(self.1);
        let text = text.as_str();
        if text.len() <= MAX_SHOWN {
            return f.write_str(text);
        }
        let mut cut = MAX_SHOWN;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        write!(f, "{}… ({} bytes)", &text[..cut], text.len())
    }
}

/// The binary form of a key, on the stack while it fits.
pub(crate) struct KeyBytes {
    inline: ArrayVec<u8, INLINE>,
    heap: Option<Vec<u8>>,
}

impl KeyBytes {
    #[inline]
    pub(crate) fn new() -> Self {
        KeyBytes {
            inline: ArrayVec::new(),
            heap: None,
        }
    }

    /// Appends `bytes`, moving to the heap when the inline room is full.
    #[inline]
    pub(crate) fn put(&mut self, bytes: &[u8]) {
        match &mut self.heap {
            None => {
                if self.inline.try_extend_from_slice(bytes).is_err() {
                    self.spill(bytes);
                }
            }
            Some(heap) => heap.extend_from_slice(bytes),
        }
    }

    #[cold]
    fn spill(&mut self, bytes: &[u8]) {
        let mut heap = Vec::with_capacity(self.inline.len() + bytes.len() + 64);
        heap.extend_from_slice(&self.inline);
        heap.extend_from_slice(bytes);
        self.heap = Some(heap);
    }

    #[inline]
    pub(crate) fn as_slice(&self) -> &[u8] {
        match &self.heap {
            None => &self.inline,
            Some(heap) => heap,
        }
    }
}

/// "0." to "255." in four bytes each, padded with NULs: `"0.\0\01.\0\0…"`.
const OCTETS_PADDED: &str = {
    const BYTES: [u8; 1024] = {
        let mut bytes = [0u8; 1024];
        let mut n = 0;
        while n < 256 {
            let at = n * 4;
            let digits = octet_digits(n as u8);
            let mut i = 0;
            let mut rest = n;
            // Digits right to left, then the dot after them.
            while i < digits {
                bytes[at + digits - 1 - i] = b'0' + (rest % 10) as u8;
                rest /= 10;
                i += 1;
            }
            bytes[at + digits] = b'.';
            n += 1;
        }
        bytes
    };
    match std::str::from_utf8(&BYTES) {
        Ok(text) => text,
        Err(_) => panic!("octet table is ASCII"),
    }
};

/// Decimal digits of `n`.
#[inline]
const fn octet_digits(n: u8) -> usize {
    1 + (n >= 10) as usize + (n >= 100) as usize
}

/// Writes the decimal text of `n`, and a dot after it if `dot`.
#[inline]
fn put_octet(out: &mut impl KeyOut, n: u8, dot: bool) -> Result<(), Overflow> {
    let at = usize::from(n) * 4;
    out.put_first(
        &OCTETS_PADDED[at..at + 4],
        octet_digits(n) + usize::from(dot),
    )
}

/// Whether a key part holds a byte [`put_escaped`] rewrites.
#[inline]
fn needs_escape(part: &str) -> bool {
    part.bytes().any(|byte| byte == b':' || byte == b'%')
}

/// Appends a key part with `%` written `%25` and `:` written `%3A`, so that
/// the part holds no `:` and the key's parts can be told apart: two keys
/// with different parts are always different (a uid `a:b` with the identity
/// `x` does not share `a`'s counter for the identity `b:x`).
#[inline]
pub(crate) fn put_escaped(out: &mut impl KeyOut, part: &str) -> Result<(), Overflow> {
    if !needs_escape(part) {
        return out.put(part);
    }
    put_escaped_slow(out, part)
}

#[cold]
fn put_escaped_slow(out: &mut impl KeyOut, part: &str) -> Result<(), Overflow> {
    let mut rest = part;
    while let Some(at) = rest.find([':', '%']) {
        out.put(&rest[..at])?;
        out.put(if rest.as_bytes()[at] == b':' {
            "%3A"
        } else {
            "%25"
        })?;
        rest = &rest[at + 1..];
    }
    out.put(rest)
}

/// [`put_escaped`] into a new string.
pub(crate) fn escaped(part: &str) -> std::borrow::Cow<'_, str> {
    if !needs_escape(part) {
        return std::borrow::Cow::Borrowed(part);
    }
    let mut out = String::with_capacity(part.len() + 8);
    // Writing into a String cannot overflow.
    let _ = put_escaped_slow(&mut out, part);
    std::borrow::Cow::Owned(out)
}

/// Writes `a.b.c.d` without a call to `memcpy` (about a quarter of the cost
/// of four appends of variable length, a twentieth of `write!`).
#[inline]
pub(crate) fn put_ipv4(out: &mut impl KeyOut, ip: Ipv4Addr) -> Result<(), Overflow> {
    let [a, b, c, d] = ip.octets();
    put_octet(out, a, true)?;
    put_octet(out, b, true)?;
    put_octet(out, c, true)?;
    put_octet(out, d, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octets_are_their_decimal_text() {
        for n in 0..=255u8 {
            for dot in [false, true] {
                let expected = if dot { format!("{n}.") } else { n.to_string() };
                let mut inline = ArrayString::<INLINE>::new();
                assert!(put_octet(&mut inline, n, dot).is_ok());
                assert_eq!(inline.as_str(), expected);
                let mut heap = String::new();
                assert!(put_octet(&mut heap, n, dot).is_ok());
                assert_eq!(heap, expected);
            }
        }
        for ip in [
            "0.0.0.0",
            "10.0.0.1",
            "192.168.100.255",
            "255.255.255.255",
            "1.22.133.4",
        ] {
            let mut inline = ArrayString::<INLINE>::new();
            assert!(inline.put("k:").is_ok());
            assert!(put_ipv4(&mut inline, ip.parse().unwrap()).is_ok());
            assert_eq!(inline.as_str(), format!("k:{ip}"));
            let mut heap = String::new();
            assert!(put_ipv4(&mut heap, ip.parse().unwrap()).is_ok());
            assert_eq!(heap, ip);
        }
    }

    #[test]
    fn an_address_that_does_not_fit_is_refused() {
        // 113 + 8 bytes: one too many. (Within 3 bytes of the end, an
        // address that would just fit is refused too, as an octet is
        // appended four bytes at a time: the key is then built in a String.)
        let mut inline = ArrayString::<INLINE>::new();
        assert!(inline.put(&"a".repeat(INLINE - 7)).is_ok());
        assert!(put_ipv4(&mut inline, "10.0.0.1".parse().unwrap()).is_err());
    }

    #[test]
    fn the_inline_room_refuses_what_does_not_fit() {
        let mut inline = ArrayString::<INLINE>::new();
        assert!(inline.put(&"a".repeat(INLINE)).is_ok());
        assert!(inline.put("b").is_err());
        assert_eq!(inline.len(), INLINE);
    }

    #[test]
    fn escaped_parts_hold_no_colon_and_decode_back() {
        for part in [
            "",
            "plain",
            "a:b",
            "%",
            "%3A",
            "::",
            "a%b:c",
            "2001:db8::/64",
            "é:ü",
        ] {
            let mut inline = ArrayString::<INLINE>::new();
            assert!(put_escaped(&mut inline, part).is_ok());
            let mut heap = String::new();
            assert!(put_escaped(&mut heap, part).is_ok());
            assert_eq!(inline.as_str(), heap);
            assert_eq!(escaped(part), heap.as_str());
            assert!(!heap.contains(':'), "{heap}");
            // Decoding gives the part back: the encoding is one-to-one.
            let back = heap
                .replace("%3A", "\u{1}")
                .replace("%25", "%")
                .replace('\u{1}', ":");
            assert_eq!(back, part, "{heap}");
        }
        assert_eq!(escaped("a:b%c"), "a%3Ab%25c");
        assert_eq!(escaped("%3A"), "%253A");
    }

    #[test]
    fn long_keys_are_cut_in_logs() {
        let short = "traffik:api:10.0.0.1:http:GET:/";
        assert_eq!(Shown(short, "traffik").to_string(), short);
        let long = format!("traffik:api:{}:http:GET:/", "é".repeat(200_000));
        let shown = Shown(long.as_str(), "traffik").to_string();
        assert!(shown.len() < 300, "{}", shown.len());
        assert!(
            shown.ends_with(&format!("… ({} bytes)", long.len())),
            "{shown}"
        );
    }
}
