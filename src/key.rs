//! The key of a decision: which throttle, which client, which scope.
//!
//! A [`Key`] is a typed value. Backends receive it as it is: the in-memory
//! backend stores its parts, Redis and logs use its text,
//! `{prefix}:{uid}:{identity}:{scope}`, which tells apart any two keys whose
//! parts differ (`%` and `:` are escaped in the uid and the scope).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use http::Method;

/// The counter a decision reads and updates: a throttle (its uid), an
/// identity (a client address or an identifier's text) and a scope (where
/// the hits are counted: a route, a WebSocket path, or everywhere).
///
/// ```
/// use traffik::key::{Key, Scope};
///
/// let key = Key::new("api", "user-42", Scope::http(&http::Method::GET, "/items/{id}"));
/// assert_eq!(key.text("traffik"), "traffik:api:user-42:http:GET:/items/{id}");
/// let shared = Key::client("api", "10.0.0.1".parse().unwrap(), 64, Scope::shared());
/// assert_eq!(shared.text("myapp"), "myapp:api:10.0.0.1:http:*");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key<'a> {
    pub(crate) throttle: &'a str,
    pub(crate) identity: KeyIdentity<'a>,
    pub(crate) scope: Scope<'a>,
}

/// Who a key counts: a client address or an identifier's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum KeyIdentity<'a> {
    /// A client address, already masked to `prefix` bits when IPv6.
    Address {
        ip: IpAddr,
        prefix: u8,
    },
    Text(&'a str),
}

/// Where a key's hits are counted.
///
/// ```
/// use traffik::key::Scope;
///
/// // HEAD counts as GET; a made-up method shares one `OTHER` counter.
/// assert_eq!(Scope::http(&http::Method::HEAD, "/"), Scope::http(&http::Method::GET, "/"));
/// let purge = http::Method::from_bytes(b"PURGE").unwrap();
/// let brew = http::Method::from_bytes(b"BREW").unwrap();
/// assert_eq!(Scope::http(&purge, "/"), Scope::http(&brew, "/"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Scope<'a>(pub(crate) ScopeKind<'a>);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ScopeKind<'a> {
    /// Every route a throttle covers (`.shared_across_routes()`).
    Shared,
    /// One method and route.
    Http { method: MethodName, route: &'a str },
    /// A WebSocket path and context.
    WebSocket { path: &'a str, context: &'a str },
}

/// A method as keys count it: HEAD is GET (axum answers HEAD with the GET
/// handler, and a separate counter would double a client's quota), a
/// standard method sent in another case is that method, and every other
/// name shares `OTHER` (methods are case-sensitive tokens, and keying them
/// as sent would give a client a quota per name it makes up on a route that
/// answers any method).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub(crate) enum MethodName {
    Get,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Connect,
    Trace,
    Other,
}

impl MethodName {
    const STANDARD: [(&'static str, MethodName); 9] = [
        ("GET", MethodName::Get),
        ("HEAD", MethodName::Get),
        ("POST", MethodName::Post),
        ("PUT", MethodName::Put),
        ("DELETE", MethodName::Delete),
        ("PATCH", MethodName::Patch),
        ("OPTIONS", MethodName::Options),
        ("CONNECT", MethodName::Connect),
        ("TRACE", MethodName::Trace),
    ];

    #[inline]
    pub(crate) fn of(method: &Method) -> MethodName {
        match *method {
            Method::GET | Method::HEAD => MethodName::Get,
            Method::POST => MethodName::Post,
            Method::PUT => MethodName::Put,
            Method::DELETE => MethodName::Delete,
            Method::PATCH => MethodName::Patch,
            Method::OPTIONS => MethodName::Options,
            Method::CONNECT => MethodName::Connect,
            Method::TRACE => MethodName::Trace,
            _ => Self::other(method.as_str()),
        }
    }

    #[cold]
    fn other(name: &str) -> MethodName {
        Self::STANDARD
            .iter()
            .find(|(standard, _)| standard.eq_ignore_ascii_case(name))
            .map_or(MethodName::Other, |&(_, method)| method)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MethodName::Get => "GET",
            MethodName::Post => "POST",
            MethodName::Put => "PUT",
            MethodName::Delete => "DELETE",
            MethodName::Patch => "PATCH",
            MethodName::Options => "OPTIONS",
            MethodName::Connect => "CONNECT",
            MethodName::Trace => "TRACE",
            MethodName::Other => "OTHER",
        }
    }
}

/// One of the nine methods of RFC 9110 and RFC 5789, in any case.
pub(crate) fn is_standard_method(method: &Method) -> bool {
    MethodName::of(method) != MethodName::Other
}

impl<'a> Key<'a> {
    /// The key of `identity` (an identifier's text) for the throttle `throttle`.
    ///
    /// A text that spells a client address exactly as an address key writes
    /// it (`10.0.0.1`, `2001:db8::/64`) is that address: the key is equal
    /// to [`Key::client`]'s and shares its counter on every backend, as its
    /// text does.
    ///
    /// ```
    /// use traffik::key::{Key, Scope};
    ///
    /// let client = Key::client("api", "10.0.0.1".parse().unwrap(), 64, Scope::shared());
    /// assert_eq!(Key::new("api", "10.0.0.1", Scope::shared()), client);
    /// ```
    pub fn new(throttle: &'a str, identity: &'a str, scope: Scope<'a>) -> Self {
        Key {
            throttle,
            identity: KeyIdentity::text(identity),
            scope,
        }
    }

    /// The key of a client address, as the default identity keys it: IPv6
    /// masked to its first `ipv6_prefix` bits (128 keeps it whole).
    pub fn client(throttle: &'a str, ip: IpAddr, ipv6_prefix: u8, scope: Scope<'a>) -> Self {
        Key {
            throttle,
            identity: KeyIdentity::address(crate::identity::mask(ip, ipv6_prefix), ipv6_prefix),
            scope,
        }
    }

    /// The uid of the throttle counting.
    pub fn throttle(&self) -> &'a str {
        self.throttle
    }

    /// The key's text for a backend of `prefix`:
    /// `{prefix}:{uid}:{identity}:{scope}`.
    pub fn text(&self, prefix: &str) -> String {
        let mut text = String::with_capacity(prefix.len() + self.throttle.len() + 48);
        // Writing into a String cannot fail.
        let _ = self.write_text(prefix, &mut text);
        text
    }

    /// Writes [`text`](Key::text) into `out`.
    pub fn write_text(&self, prefix: &str, out: &mut impl fmt::Write) -> fmt::Result {
        out.write_str(prefix)?;
        out.write_char(':')?;
        write_escaped(out, self.throttle)?;
        out.write_char(':')?;
        write!(out, "{}", self.identity)?;
        match self.scope.0 {
            ScopeKind::Shared => out.write_str(":http:*"),
            ScopeKind::Http { method, route } => {
                out.write_str(":http:")?;
                out.write_str(method.as_str())?;
                out.write_char(':')?;
                write_escaped(out, route)
            }
            ScopeKind::WebSocket { path, context } => {
                // `*` escaped too: a context `*` on the path `http` would
                // read as the HTTP scope `http:*`.
                out.write_str(":ws:")?;
                write_escaped_star(out, path)?;
                out.write_char(':')?;
                write_escaped_star(out, context)
            }
        }
    }

    /// The text for logs, cut when long (see [`Shown`]).
    pub(crate) fn shown<'k>(&'k self, prefix: &'k str) -> Shown<'k> {
        Shown { key: self, prefix }
    }

    /// The key owned (its throttle's uid is `throttle`), for futures that
    /// outlive the request.
    pub(crate) fn owned(self, throttle: &Arc<str>) -> OwnedKey {
        debug_assert_eq!(&**throttle, self.throttle);
        OwnedKey::new(
            Arc::clone(throttle),
            self.identity.into_owned(),
            self.scope.into_owned(),
        )
    }
}

/// The identity's part of the key's text: a text as it is, an address as
/// `10.0.0.1`, or, masked IPv6, as `2001:db8::/64`.
impl fmt::Display for KeyIdentity<'_> {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            KeyIdentity::Address {
                ip: ip @ IpAddr::V6(_),
                prefix,
            } if prefix < 128 => write!(out, "{ip}/{prefix}"),
            KeyIdentity::Address { ip, .. } => write!(out, "{ip}"),
            KeyIdentity::Text(text) => out.write_str(text),
        }
    }
}

impl<'a> KeyIdentity<'a> {
    /// An identifier's text: the client address it spells, when it is
    /// exactly the text of an address key (see [`Key::new`]), else the text.
    pub(crate) fn text(text: &'a str) -> Self {
        spelled_address(text).unwrap_or(KeyIdentity::Text(text))
    }

    /// A client address, already masked (the prefix length matters for
    /// IPv6 only: an IPv4 address keeps 128, so that equal keys compare
    /// equal).
    #[inline]
    pub(crate) fn address(ip: IpAddr, ipv6_prefix: u8) -> Self {
        let prefix = match ip {
            IpAddr::V4(_) => 128,
            IpAddr::V6(_) => ipv6_prefix.min(128),
        };
        KeyIdentity::Address { ip, prefix }
    }

    pub(crate) fn into_owned(self) -> OwnedIdentity {
        match self {
            KeyIdentity::Address { ip, prefix } => OwnedIdentity::Address { ip, prefix },
            KeyIdentity::Text(text) => OwnedIdentity::Text(text.into()),
        }
    }
}

/// The address key whose identity text is `text`, if there is one: the
/// text must read back the same (canonical, IPv6 masked to its prefix), as
/// [`Key::client`] would write it.
fn spelled_address(text: &str) -> Option<KeyIdentity<'static>> {
    // Most identities hold a character no address text has: they end here.
    let address_bytes = |b: u8| b.is_ascii_hexdigit() || matches!(b, b'.' | b':' | b'/');
    if text.is_empty() || text.len() > 43 || !text.bytes().all(address_bytes) {
        return None;
    }
    let identity = match text.split_once('/') {
        // A whole address, as `Key::client` keeps it (IPv4-mapped and NAT64
        // addresses become IPv4, so their IPv6 texts stay texts).
        None => KeyIdentity::address(crate::identity::mask(text.parse().ok()?, 128), 128),
        // A masked IPv6 network, as `Key::client` writes it: masked, not
        // made IPv4 again (`64:ff9b::/64` is a network, not 0.0.0.0).
        Some((ip, prefix)) => {
            let prefix: u8 = prefix.parse().ok().filter(|prefix| *prefix < 128)?;
            let ip = crate::identity::mask_v6(ip.parse().ok()?, prefix);
            KeyIdentity::Address {
                ip: IpAddr::V6(ip),
                prefix,
            }
        }
    };
    // Written back piece by piece against the text, without a copy.
    let mut rest = ReadBack(text);
    let same = fmt::Write::write_fmt(&mut rest, format_args!("{identity}")).is_ok();
    (same && rest.0.is_empty()).then_some(identity)
}

/// A `fmt::Write` that checks what is written against the start of a text,
/// consuming it, and fails at the first difference.
struct ReadBack<'t>(&'t str);

impl fmt::Write for ReadBack<'_> {
    fn write_str(&mut self, piece: &str) -> fmt::Result {
        self.0 = self.0.strip_prefix(piece).ok_or(fmt::Error)?;
        Ok(())
    }
}

impl<'a> Scope<'a> {
    /// One counter for every route the throttle covers (text `http:*`).
    pub fn shared() -> Self {
        Scope(ScopeKind::Shared)
    }

    /// One counter per method and route (text `http:{METHOD}:{route}`).
    #[inline]
    pub fn http(method: &Method, route: &'a str) -> Self {
        Scope(ScopeKind::Http {
            method: MethodName::of(method),
            route,
        })
    }

    /// One counter per WebSocket path and context (text `ws:{path}:{context}`).
    pub fn websocket(path: &'a str, context: &'a str) -> Self {
        Scope(ScopeKind::WebSocket { path, context })
    }

    pub(crate) fn into_owned(self) -> OwnedScope {
        match self.0 {
            ScopeKind::Shared => OwnedScope::Shared,
            ScopeKind::Http { method, route } => OwnedScope::Http {
                method,
                route: route.into(),
            },
            ScopeKind::WebSocket { path, context } => OwnedScope::WebSocket {
                path: path.into(),
                context: context.into(),
            },
        }
    }
}

/// A [`Key`] that owns its parts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct OwnedKey {
    throttle: Arc<str>,
    identity: OwnedIdentity,
    scope: OwnedScope,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum OwnedIdentity {
    Address { ip: IpAddr, prefix: u8 },
    Text(Box<str>),
}

impl OwnedIdentity {
    /// An identifier's text, owned: the client address it spells (see
    /// [`Key::new`]), else the text itself, moved.
    pub(crate) fn from_text(text: String) -> Self {
        match KeyIdentity::text(&text) {
            KeyIdentity::Address { ip, prefix } => OwnedIdentity::Address { ip, prefix },
            KeyIdentity::Text(_) => OwnedIdentity::Text(text.into()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum OwnedScope {
    Shared,
    Http { method: MethodName, route: Box<str> },
    WebSocket { path: Box<str>, context: Box<str> },
}

impl OwnedKey {
    pub(crate) fn new(throttle: Arc<str>, identity: OwnedIdentity, scope: OwnedScope) -> Self {
        OwnedKey {
            throttle,
            identity,
            scope,
        }
    }

    /// The key, borrowed.
    pub(crate) fn as_key(&self) -> Key<'_> {
        Key {
            throttle: &self.throttle,
            identity: match &self.identity {
                OwnedIdentity::Address { ip, prefix } => KeyIdentity::Address {
                    ip: *ip,
                    prefix: *prefix,
                },
                OwnedIdentity::Text(text) => KeyIdentity::Text(text),
            },
            scope: Scope(match &self.scope {
                OwnedScope::Shared => ScopeKind::Shared,
                OwnedScope::Http { method, route } => ScopeKind::Http {
                    method: *method,
                    route,
                },
                OwnedScope::WebSocket { path, context } => ScopeKind::WebSocket { path, context },
            }),
        }
    }
}

/// Writes a key part with `%` written `%25` and `:` written `%3A`, so that
/// the part holds no `:` and the key's parts can be told apart: two keys
/// with different parts are always different (a uid `a:b` with the identity
/// `x` does not share `a`'s counter for the identity `b:x`). Identities are
/// written as they are (an IPv6 address stays readable): the parts around
/// them tell them apart.
fn write_escaped(out: &mut impl fmt::Write, part: &str) -> fmt::Result {
    let mut rest = part;
    while let Some(at) = rest.find([':', '%']) {
        out.write_str(&rest[..at])?;
        out.write_str(if rest.as_bytes()[at] == b':' {
            "%3A"
        } else {
            "%25"
        })?;
        rest = &rest[at + 1..];
    }
    out.write_str(rest)
}

/// [`write_escaped`], with `*` written `%2A`.
fn write_escaped_star(out: &mut impl fmt::Write, part: &str) -> fmt::Result {
    let mut pieces = part.split('*');
    if let Some(first) = pieces.next() {
        write_escaped(out, first)?;
    }
    for piece in pieces {
        out.write_str("%2A")?;
        write_escaped(out, piece)?;
    }
    Ok(())
}

/// A key's text for logs, cut at 256 bytes: a key is as long as a client
/// makes it (an identity from a header, an unrouted path), and one log line
/// must not carry a 300 KB header back.
pub(crate) struct Shown<'k> {
    key: &'k Key<'k>,
    prefix: &'k str,
}

const MAX_SHOWN: usize = 256;

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.key.text(self.prefix);
        if text.len() <= MAX_SHOWN {
            return f.write_str(&text);
        }
        let mut cut = MAX_SHOWN;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        write!(f, "{}… ({} bytes)", &text[..cut], text.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_that_spells_a_client_key_is_that_key() {
        let client =
            |ip: &str, prefix| Key::client("api", ip.parse().unwrap(), prefix, Scope::shared());
        let text = |identity| Key::new("api", identity, Scope::shared());
        assert_eq!(text("10.0.0.1"), client("10.0.0.1", 64));
        assert_eq!(text("2001:db8::/64"), client("2001:db8::5", 64));
        assert_eq!(text("2001:db8::1"), client("2001:db8::1", 128));
        // A /64 inside the NAT64 prefix stays an IPv6 network.
        assert_eq!(text("64:ff9b::/64"), client("64:ff9b::1:0:0:1", 64));
        assert_eq!(text("::/0"), client("2001:db8::1", 0));
        // Texts no client key writes stay texts, and keep their text.
        for other in [
            "user-42",
            "",
            "::A00:1",
            "2001:db8::1/64",
            "2001:db8::/128",
            "10.0.0.1/32",
            "::ffff:10.0.0.1",
            "cafe",
        ] {
            let key = text(other);
            assert_eq!(key.identity, KeyIdentity::Text(other), "{other:?}");
            assert_eq!(key.text("p"), format!("p:api:{other}:http:*"));
        }
    }

    #[test]
    fn keys_name_every_method_and_count_head_as_get() {
        let cases = [
            (Method::GET, "GET"),
            (Method::HEAD, "GET"),
            (Method::POST, "POST"),
            (Method::PUT, "PUT"),
            (Method::DELETE, "DELETE"),
            (Method::PATCH, "PATCH"),
            (Method::OPTIONS, "OPTIONS"),
            (Method::CONNECT, "CONNECT"),
            (Method::TRACE, "TRACE"),
            // Another case is the standard method; made-up names share one.
            (Method::from_bytes(b"get").unwrap(), "GET"),
            (Method::from_bytes(b"Post").unwrap(), "POST"),
            (Method::from_bytes(b"head").unwrap(), "GET"),
            (Method::from_bytes(b"PURGE").unwrap(), "OTHER"),
            (Method::from_bytes(b"M1").unwrap(), "OTHER"),
        ];
        let ip = IpAddr::from([10, 0, 0, 1]);
        for (method, name) in cases {
            let key = Key::client("t", ip, 64, Scope::http(&method, "/items/{id}"));
            assert_eq!(
                key.text("traffik"),
                format!("traffik:t:10.0.0.1:http:{name}:/items/{{id}}")
            );
        }
    }

    #[test]
    fn parts_are_escaped_and_addresses_masked() {
        let v6: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        assert_eq!(
            Key::client("a:b%", v6, 64, Scope::http(&Method::GET, "/x:y")).text("p"),
            "p:a%3Ab%25:2001:db8:1:2::/64:http:GET:/x%3Ay"
        );
        assert_eq!(
            Key::client("t", v6, 128, Scope::shared()).text("p"),
            "p:t:2001:db8:1:2:aaaa::1:http:*"
        );
        assert_eq!(
            Key::new("t", "user:1", Scope::websocket("/chat", "room:1")).text("p"),
            "p:t:user:1:ws:/chat:room%3A1"
        );
        // A WebSocket scope never reads as an HTTP one.
        assert_ne!(
            Key::new("t", "x:ws", Scope::shared()).text("p"),
            Key::new("t", "x", Scope::websocket("http", "*")).text("p")
        );
        assert_eq!(
            Key::new("t", "x", Scope::websocket("/a*", "*")).text("p"),
            "p:t:x:ws:/a%2A:%2A"
        );
        // IPv4 keys do not depend on the IPv6 prefix length.
        let v4 = IpAddr::from([10, 0, 0, 1]);
        assert_eq!(
            Key::client("t", v4, 48, Scope::shared()),
            Key::client("t", v4, 64, Scope::shared())
        );
    }

    #[test]
    fn owned_keys_give_the_same_key_back() {
        let throttle: Arc<str> = "t".into();
        for key in [
            Key::new("t", "user", Scope::websocket("/ws", "")),
            Key::client("t", IpAddr::from([1, 2, 3, 4]), 64, Scope::shared()),
            Key::new("t", "u", Scope::http(&Method::POST, "/r")),
        ] {
            assert_eq!(key.owned(&throttle).as_key(), key);
        }
    }

    #[test]
    fn long_keys_are_cut_in_logs() {
        let short = Key::new("api", "10.0.0.1", Scope::shared());
        assert_eq!(
            short.shown("traffik").to_string(),
            "traffik:api:10.0.0.1:http:*"
        );
        let identity = "é".repeat(200_000);
        let long = Key::new("api", &identity, Scope::shared());
        let shown = long.shown("traffik").to_string();
        assert!(shown.len() < 300, "{}", shown.len());
        assert!(
            shown.ends_with(&format!("… ({} bytes)", long.text("traffik").len())),
            "{shown}"
        );
    }
}
