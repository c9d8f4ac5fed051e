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

/// "0." to "255." written one after another.
const OCTETS_DOT: &str = concat!(
    "0.1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.17.18.19.20.21.22.23.24.25.26.27.",
    "28.29.30.31.32.33.34.35.36.37.38.39.40.41.42.43.44.45.46.47.48.49.50.51.52.",
    "53.54.55.56.57.58.59.60.61.62.63.64.65.66.67.68.69.70.71.72.73.74.75.76.77.",
    "78.79.80.81.82.83.84.85.86.87.88.89.90.91.92.93.94.95.96.97.98.99.100.101.",
    "102.103.104.105.106.107.108.109.110.111.112.113.114.115.116.117.118.119.120.",
    "121.122.123.124.125.126.127.128.129.130.131.132.133.134.135.136.137.138.139.",
    "140.141.142.143.144.145.146.147.148.149.150.151.152.153.154.155.156.157.158.",
    "159.160.161.162.163.164.165.166.167.168.169.170.171.172.173.174.175.176.177.",
    "178.179.180.181.182.183.184.185.186.187.188.189.190.191.192.193.194.195.196.",
    "197.198.199.200.201.202.203.204.205.206.207.208.209.210.211.212.213.214.215.",
    "216.217.218.219.220.221.222.223.224.225.226.227.228.229.230.231.232.233.234.",
    "235.236.237.238.239.240.241.242.243.244.245.246.247.248.249.250.251.252.253.",
    "254.255.",
);

/// The decimal text of `n` followed by a dot.
#[inline]
fn octet_dot(n: u8) -> &'static str {
    let n = usize::from(n);
    let (start, len) = match n {
        0..=9 => (n * 2, 2),
        10..=99 => (20 + (n - 10) * 3, 3),
        _ => (290 + (n - 100) * 4, 4),
    };
    &OCTETS_DOT[start..start + len]
}

/// The decimal text of `n`.
#[inline]
fn octet(n: u8) -> &'static str {
    let with_dot = octet_dot(n);
    &with_dot[..with_dot.len() - 1]
}

/// Writes `a.b.c.d` in four pieces (a fifth of the cost of `write!`).
#[inline]
pub(crate) fn put_ipv4(out: &mut impl KeyOut, ip: Ipv4Addr) -> Result<(), Overflow> {
    let [a, b, c, d] = ip.octets();
    out.put(octet_dot(a))?;
    out.put(octet_dot(b))?;
    out.put(octet_dot(c))?;
    out.put(octet(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octets_are_their_decimal_text() {
        for n in 0..=255u8 {
            assert_eq!(octet(n), n.to_string());
            assert_eq!(octet_dot(n), format!("{n}."));
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
