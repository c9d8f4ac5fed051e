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
}

impl KeyOut for ArrayString<INLINE> {
    #[inline]
    fn put(&mut self, s: &str) -> Result<(), Overflow> {
        self.try_push_str(s).map_err(|_| Overflow)
    }
}

impl KeyOut for String {
    #[inline]
    fn put(&mut self, s: &str) -> Result<(), Overflow> {
        self.push_str(s);
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

/// "0" to "255" written one after another.
const OCTETS: &str = concat!(
    "012345678910111213141516171819202122232425262728293031323334353637383940",
    "414243444546474849505152535455565758596061626364656667686970717273747576",
    "777879808182838485868788899091929394959697989910010110210310410510610710",
    "810911011111211311411511611711811912012112212312412512612712812913013113",
    "213313413513613713813914014114214314414514614714814915015115215315415515",
    "615715815916016116216316416516616716816917017117217317417517617717817918",
    "018118218318418518618718818919019119219319419519619719819920020120220320",
    "420520620720820921021121221321421521621721821922022122222322422522622722",
    "822923023123223323423523623723823924024124224324424524624724824925025125",
    "2253254255",
);

/// The decimal text of `n`, without formatting machinery.
#[inline]
fn octet(n: u8) -> &'static str {
    let n = usize::from(n);
    let (start, len) = match n {
        0..=9 => (n, 1),
        10..=99 => (10 + (n - 10) * 2, 2),
        _ => (190 + (n - 100) * 3, 3),
    };
    &OCTETS[start..start + len]
}

/// Writes `a.b.c.d` (a third of the cost of `write!`).
#[inline]
pub(crate) fn put_ipv4(out: &mut impl KeyOut, ip: Ipv4Addr) -> Result<(), Overflow> {
    let [a, b, c, d] = ip.octets();
    out.put(octet(a))?;
    out.put(".")?;
    out.put(octet(b))?;
    out.put(".")?;
    out.put(octet(c))?;
    out.put(".")?;
    out.put(octet(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octets_are_their_decimal_text() {
        for n in 0..=255u8 {
            assert_eq!(octet(n), n.to_string());
        }
        for ip in ["0.0.0.0", "10.0.0.1", "192.168.100.255", "255.255.255.255"] {
            let mut out = String::new();
            assert!(put_ipv4(&mut out, ip.parse().unwrap()).is_ok());
            assert_eq!(out, ip);
        }
    }

    #[test]
    fn the_inline_room_refuses_what_does_not_fit() {
        let mut inline = ArrayString::<INLINE>::new();
        assert!(inline.put(&"a".repeat(INLINE)).is_ok());
        assert!(inline.put("b").is_err());
        assert_eq!(inline.len(), INLINE);
    }
}
