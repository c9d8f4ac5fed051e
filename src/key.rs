//! Building throttle keys without a heap allocation when they are short.

use std::fmt;
use std::net::Ipv4Addr;

use arrayvec::ArrayString;

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
}
