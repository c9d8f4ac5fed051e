//! Who a request comes from: [`Identity`], client address resolution and
//! [`TrustedProxies`].

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use http::{Extensions, HeaderMap};
use ipnet::IpNet;

use crate::Error;

/// What an identifier returns for a request.
///
/// ```
/// use traffik::Identity;
/// let user = Identity::key("user-42");
/// assert_eq!(user.as_key(), Some("user-42"));
/// assert!(Identity::Unlimited.is_unlimited());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// Counted under this key (a client address, a user id, an API key...).
    Key(String),
    /// Exempt: the request is not throttled and touches no storage (Traffik's
    /// `UNLIMITED`).
    Unlimited,
}

impl Identity {
    /// An identity counted under `key`.
    pub fn key(key: impl Into<String>) -> Identity {
        Identity::Key(key.into())
    }

    /// The identity of a client address, keyed as the HTTP default
    /// identifier keys it: an IPv4-mapped IPv6 address is its IPv4 address,
    /// and IPv6 is masked to its /64 (`2001:db8:1:2::/64`), so that a client
    /// rotating addresses inside its prefix is one client. `From<IpAddr>`
    /// keeps the exact address.
    ///
    /// ```
    /// use traffik::Identity;
    /// let a = Identity::client_ip("2001:db8:1:2::a".parse().unwrap());
    /// let b = Identity::client_ip("2001:db8:1:2:ffff::b".parse().unwrap());
    /// assert_eq!(a, b);
    /// assert_eq!(a.as_key(), Some("2001:db8:1:2::/64"));
    /// assert_eq!(Identity::client_ip("10.0.0.1".parse().unwrap()).as_key(), Some("10.0.0.1"));
    /// ```
    pub fn client_ip(ip: IpAddr) -> Identity {
        let default = AddressIdentity::default();
        Identity::Key(default.text(default.mask(ip)))
    }

    /// The client of a request as the default identity keys it: its peer
    /// address (axum's `ConnectInfo<SocketAddr>`, or a `SocketAddr`
    /// extension), IPv6 grouped by its /64, for a custom identifier that
    /// falls back on it ("an API key, else the client address"). No peer
    /// address is [`Error::AnonymousConnection`]. Behind a reverse proxy,
    /// use [`TrustedProxies::client_identity`].
    ///
    /// ```
    /// use traffik::{HttpThrottle, Identity};
    /// let api = HttpThrottle::builder()
    ///     .rate("100/min")
    ///     .identifier(|parts: &http::request::Parts| {
    ///         let key = parts.headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    ///         let client = Identity::client(parts);
    ///         async move { key.map(|key| Ok(Identity::key(key))).unwrap_or(client) }
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # drop(api);
    /// ```
    pub fn client(parts: &http::request::Parts) -> Result<Identity, Error> {
        TrustedProxies::none().client_identity(parts)
    }

    /// `true` for [`Identity::Unlimited`].
    pub fn is_unlimited(&self) -> bool {
        matches!(self, Identity::Unlimited)
    }

    /// The key, unless unlimited.
    pub fn as_key(&self) -> Option<&str> {
        match self {
            Identity::Key(key) => Some(key),
            Identity::Unlimited => None,
        }
    }
}

/// What an identifier's future gives: an [`Identity`], or a
/// `Result<Identity, Error>` (an error answers the request, as the default
/// identity's [`Error::AnonymousConnection`] does).
pub trait IntoIdentity {
    /// Converts.
    fn into_identity(self) -> Result<Identity, Error>;
}

impl IntoIdentity for Identity {
    fn into_identity(self) -> Result<Identity, Error> {
        Ok(self)
    }
}

impl IntoIdentity for Result<Identity, Error> {
    fn into_identity(self) -> Result<Identity, Error> {
        self
    }
}

impl From<String> for Identity {
    fn from(key: String) -> Self {
        Identity::Key(key)
    }
}

impl From<&str> for Identity {
    fn from(key: &str) -> Self {
        Identity::Key(key.to_owned())
    }
}

/// The exact address as the key (`2001:db8::1`); [`Identity::client_ip`]
/// groups IPv6 clients by their /64 as the HTTP default identity does.
impl From<IpAddr> for Identity {
    fn from(ip: IpAddr) -> Self {
        Identity::Key(ip.to_string())
    }
}

/// Proxies whose forwarding headers (`Forwarded`, `X-Forwarded-For`,
/// `X-Real-IP`) are believed.
///
/// Without trusted proxies (the default) forwarding headers are ignored: any
/// client can write them. With them, a request whose peer is a trusted proxy is
/// attributed to the right-most address of the forwarding chain that is not
/// itself a trusted proxy.
///
/// ```
/// use traffik::TrustedProxies;
/// let proxies = TrustedProxies::new(["10.0.0.0/8", "::1/128", "192.168.1.7"]).unwrap();
/// assert!(proxies.contains("10.1.2.3".parse().unwrap()));
/// let err = TrustedProxies::new(["10.0.0.0/33"]).unwrap_err();
/// assert!(err.to_string().contains("10.0.0.0/33"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
    header: ForwardedHeader,
}

/// Which forwarding header a [`TrustedProxies`] set reads: exactly one.
///
/// Name the one your proxy *writes* (appends to): a proxy that appends to
/// `X-Forwarded-For` usually passes a client-sent `Forwarded` or `X-Real-IP`
/// through untouched (and the other way round), so reading a header the
/// proxy does not write would let clients pick their own identity. Only one
/// header is ever read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (default: what most proxies and load balancers
    /// append to).
    #[default]
    XForwardedFor,
    /// `Forwarded` (RFC 7239, its `for=` parameters).
    Forwarded,
    /// `X-Real-IP` (a single address, set by the proxy).
    XRealIp,
}

impl TrustedProxies {
    /// Parses CIDR networks (`"10.0.0.0/8"`) or single addresses (`"::1"`).
    pub fn new<I, S>(networks: I) -> Result<TrustedProxies, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut parsed = Vec::new();
        for network in networks {
            let text = network.as_ref().trim();
            let net = match text.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => match text.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => {
                        return Err(Error::configuration(format!(
                            "invalid trusted proxy {text:?}: expected a CIDR network like \"10.0.0.0/8\" or an address like \"::1\""
                        )))
                    }
                },
            };
            parsed.extend(canonical_networks(net.trunc()));
        }
        Ok(TrustedProxies {
            networks: parsed,
            header: ForwardedHeader::XForwardedFor,
        })
    }

    /// The header to read (default [`ForwardedHeader::XForwardedFor`]).
    ///
    /// ```
    /// use traffik::{identity::ForwardedHeader, TrustedProxies};
    /// let proxies = TrustedProxies::new(["10.0.0.0/8"]).unwrap().header(ForwardedHeader::Forwarded);
    /// # drop(proxies);
    /// ```
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// No trusted proxy: forwarding headers are ignored (the default).
    pub fn none() -> TrustedProxies {
        TrustedProxies::default()
    }

    /// Whether `ip` belongs to a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.networks.iter().any(|net| net.contains(&ip))
    }

    /// `true` when no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    /// The client of a request whose peer may be one of these proxies, as
    /// the default identity keys it (IPv6 grouped by its /64): for a custom
    /// identifier that falls back on the client address, or a WebSocket
    /// guard's identity behind a proxy (`guard(socket,
    /// proxies.client_identity(&parts)?)`, with the upgrade request's
    /// parts). No peer address is [`Error::AnonymousConnection`].
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use traffik::TrustedProxies;
    ///
    /// let proxies = TrustedProxies::new(["10.0.0.0/8"]).unwrap();
    /// let (parts, ()) = http::Request::builder()
    ///     .header("x-forwarded-for", "203.0.113.7")
    ///     .extension(SocketAddr::from(([10, 0, 0, 2], 443)))
    ///     .body(())
    ///     .unwrap()
    ///     .into_parts();
    /// assert_eq!(proxies.client_identity(&parts).unwrap().as_key(), Some("203.0.113.7"));
    /// ```
    pub fn client_identity(&self, parts: &http::request::Parts) -> Result<Identity, Error> {
        let address = AddressIdentity {
            proxies: self.clone(),
            ipv6_prefix: 64,
        };
        let ip = address.client(&parts.extensions, &parts.headers)?;
        Ok(Identity::Key(address.text(ip)))
    }

    /// The client address of a request whose peer is `peer`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if self.networks.is_empty() || !self.contains(peer) {
            return peer;
        }
        let chain = forwarded_chain(headers, self.header);
        let mut client = peer;
        for hop in chain.iter().rev() {
            match hop {
                Some(ip) => {
                    client = canonical(*ip);
                    if !self.contains(client) {
                        return client;
                    }
                }
                // An entry we cannot read: stop at the last address we trust.
                None => return client,
            }
        }
        client
    }
}

/// A network as [`TrustedProxies::contains`] compares it: addresses are
/// canonical (an IPv4-mapped IPv6 peer is its IPv4 address), so the IPv4
/// part of an IPv6 network (`::ffff:10.0.0.0/104`, or `::/0`) is also
/// stated as IPv4.
fn canonical_networks(net: IpNet) -> impl Iterator<Item = IpNet> {
    const MAPPED_BITS: u8 = 96;
    // The IPv4 part of the network, for each IPv6 form of IPv4 addresses
    // (`::ffff:0:0/96` and NAT64's `64:ff9b::/96`): a network inside one is
    // its IPv4 network, one that holds all of one holds every IPv4 address.
    let forms = [0xffff_u128 << 32, NAT64_PREFIX << 32];
    let v4 = move |form: u128| match net {
        IpNet::V6(v6)
            if v6.prefix_len() >= MAPPED_BITS && u128::from(v6.network()) >> 32 == form >> 32 =>
        {
            let ip = std::net::Ipv4Addr::from(u128::from(v6.network()) as u32);
            ipnet::Ipv4Net::new(ip, v6.prefix_len() - MAPPED_BITS).ok()
        }
        IpNet::V6(v6)
            if v6.prefix_len() < MAPPED_BITS && v6.contains(&std::net::Ipv6Addr::from(form)) =>
        {
            Some(ipnet::Ipv4Net::default())
        }
        _ => None,
    };
    std::iter::once(net).chain(forms.into_iter().filter_map(v4).map(IpNet::V4))
}

/// IPv4-mapped IPv6 addresses, and NAT64 ones (`64:ff9b::/96`, RFC 6052),
/// are their IPv4 address: in keys (every IPv4 client behind NAT64 would
/// otherwise share one /64 counter) and when compared with trusted proxies.
#[inline]
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if u128::from(v6) >> 32 == NAT64_PREFIX => {
            IpAddr::V4(std::net::Ipv4Addr::from(u128::from(v6) as u32))
        }
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The forwarding chain, left (client) to right (nearest proxy), from the
/// chosen header. `None` marks an entry that is not an address (`unknown`, an
/// obfuscated name, garbage).
fn forwarded_chain(headers: &HeaderMap, header: ForwardedHeader) -> Vec<Option<IpAddr>> {
    match header {
        ForwardedHeader::XForwardedFor => x_forwarded_for(headers),
        ForwardedHeader::Forwarded => forwarded(headers),
        ForwardedHeader::XRealIp => x_real_ip(headers),
    }
}

fn forwarded(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let mut chain = Vec::new();
    for value in headers.get_all(http::header::FORWARDED) {
        chain.extend(header_text(value).split(',').map(forwarded_for));
    }
    chain
}

/// The `for=` node of one `Forwarded` element. An element without one is an
/// unreadable hop: the chain stops there.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element
        .split(';')
        .find_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("for")
                .then(|| parse_node(value.trim().trim_matches('"')))
        })
        .flatten()
}

fn x_forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let mut chain = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        chain.extend(
            header_text(value)
                .split(',')
                .map(|entry| parse_node(entry.trim())),
        );
    }
    chain
}

/// Every `X-Real-IP` line, in order, as a chain: a proxy that appends its
/// line (HAProxy's or Apache's `add-header`) leaves a client's own lines
/// before it, and the right-most untrusted entry is the proxy's.
fn x_real_ip(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("x-real-ip")
        .iter()
        .flat_map(|value| {
            // A proxy or CDN may fold repeated lines into one, comma-separated.
            header_text(value)
                .split(',')
                .map(|entry| parse_node(entry.trim()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A header value as text, every byte outside ASCII replaced by U+FFFD (so
/// it can only make its own entry unreadable): a client that puts such
/// bytes in its own entry must not make the proxy's entries after it
/// unreadable too, and no non-ASCII character (a no-break space, say) is
/// trimmed away around an address.
fn header_text(value: &http::HeaderValue) -> std::borrow::Cow<'_, str> {
    match value.to_str() {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => std::borrow::Cow::Owned(
            value
                .as_bytes()
                .iter()
                .map(|&b| {
                    if b.is_ascii() {
                        char::from(b)
                    } else {
                        '\u{FFFD}'
                    }
                })
                .collect(),
        ),
    }
}

/// Parses `1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]`, `[2001:db8::1]:80`, `2001:db8::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    let inner = node.strip_prefix('[')?;
    let end = inner.find(']')?;
    inner[..end].parse().ok()
}

/// The peer address of a request: axum's `ConnectInfo<SocketAddr>`, tonic's
/// `TcpConnectInfo` (feature `tonic`), or a plain `SocketAddr` extension
/// (for Hyper services that insert one).
#[inline]
pub fn peer_addr(extensions: &Extensions) -> Option<SocketAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0);
    }
    // tonic's server inserts it (also under TLS, beside `TlsConnectInfo`).
    #[cfg(feature = "tonic")]
    if let Some(addr) = extensions
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|info| info.remote_addr())
    {
        return Some(addr);
    }
    extensions.get::<SocketAddr>().copied()
}

/// `ip` as a key counts it: IPv6 masked to its first `prefix` bits, NAT64
/// and IPv4-mapped addresses as the IPv4 client they carry.
#[inline]
pub(crate) fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6(mask_v6(v6, prefix)),
        v4 => v4,
    }
}

/// `ip` with only its first `prefix` bits kept (all of them from 128 on).
#[inline]
pub(crate) fn mask_v6(ip: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let mask = u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0);
    (u128::from(ip) & mask).into()
}

/// `64:ff9b::/96`, shifted down by 32 bits.
const NAT64_PREFIX: u128 = 0x0064_ff9b_0000_0000_0000_0000;

/// How the default identifier turns a client address into a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AddressIdentity {
    pub(crate) proxies: TrustedProxies,
    pub(crate) ipv6_prefix: u8,
}

impl Default for AddressIdentity {
    fn default() -> Self {
        AddressIdentity {
            proxies: TrustedProxies::none(),
            ipv6_prefix: 64,
        }
    }
}

impl AddressIdentity {
    /// The client address of a request, masked.
    #[inline]
    pub(crate) fn client(
        &self,
        extensions: &Extensions,
        headers: &HeaderMap,
    ) -> Result<IpAddr, Error> {
        let Some(peer) = peer_addr(extensions) else {
            return Err(Error::AnonymousConnection);
        };
        // No trusted proxy (the common case): the peer, without reading headers.
        let ip = if self.proxies.is_empty() {
            canonical(peer.ip())
        } else {
            self.proxies.client_ip(peer.ip(), headers)
        };
        Ok(self.mask(ip))
    }

    #[inline]
    fn mask(&self, ip: IpAddr) -> IpAddr {
        mask(ip, self.ipv6_prefix)
    }

    /// The text of a client address's identity in keys
    /// (`2001:db8:1:2::/64` for masked IPv6), as the key writes it.
    pub(crate) fn text(&self, ip: IpAddr) -> String {
        crate::key::KeyIdentity::address(ip, self.ipv6_prefix).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    /// Bytes outside ASCII in a client's own entry (hyper accepts them)
    /// make that entry unreadable, not the whole line: the proxy's entry
    /// after it still names the client.
    #[test]
    fn non_ascii_bytes_spoil_only_their_own_entry() {
        let proxies = TrustedProxies::new(["10.0.0.0/8"]).unwrap();
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let client: IpAddr = "203.0.113.9".parse().unwrap();
        let raw = |name: &str, value: &[u8]| {
            let mut map = HeaderMap::new();
            map.insert(
                http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(value).unwrap(),
            );
            map
        };
        let xff = raw("x-forwarded-for", b"\xff\xfe, 203.0.113.9");
        assert_eq!(proxies.client_ip(peer, &xff), client);
        // A valid UTF-8 no-break space is not trimmed into an address: that
        // entry is unreadable, so the chain stops at the last trusted hop.
        let nbsp = raw("x-forwarded-for", b"\xc2\xa0198.51.100.7, 10.0.0.9");
        assert_eq!(
            proxies.client_ip(peer, &nbsp),
            "10.0.0.9".parse::<IpAddr>().unwrap()
        );
        let forwarded = raw("forwarded", b"for=\"\xff\", for=203.0.113.9;proto=http");
        let proxies_forwarded = proxies.clone().header(ForwardedHeader::Forwarded);
        assert_eq!(proxies_forwarded.client_ip(peer, &forwarded), client);
        // Unreadable as a whole: the proxy is the client, as before.
        let real = raw("x-real-ip", b"\xff");
        let proxies_real = proxies.header(ForwardedHeader::XRealIp);
        assert_eq!(proxies_real.client_ip(peer, &real), peer);
    }

    #[test]
    fn forwarding_headers_are_ignored_without_trusted_proxies() {
        let proxies = TrustedProxies::none();
        let h = headers(&[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(
            proxies.client_ip("10.0.0.1".parse().unwrap(), &h),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn ipv4_mapped_networks_match_ipv4_peers() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let proxies = TrustedProxies::new(["::ffff:10.0.0.0/104"]).unwrap();
        assert!(proxies.contains(ip("10.1.2.3")));
        assert!(proxies.contains(ip("::ffff:10.1.2.3")));
        assert!(!proxies.contains(ip("11.0.0.1")));
        assert!(!proxies.contains(ip("::1")));
        let single = TrustedProxies::new(["::ffff:192.0.2.7"]).unwrap();
        assert!(single.contains(ip("192.0.2.7")));
        assert!(!single.contains(ip("192.0.2.8")));
        // A network that holds all of the IPv4-mapped range holds IPv4.
        let all = TrustedProxies::new(["::/0"]).unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        assert!(all.contains(ip("2001:db8::1")));
        let v6_only = TrustedProxies::new(["2001:db8::/32"]).unwrap();
        assert!(!v6_only.contains(ip("203.0.113.9")));
    }

    #[test]
    fn rightmost_untrusted_address_wins() {
        let proxies = TrustedProxies::new(["10.0.0.0/8"]).unwrap();
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 2.2.2.2, 10.0.0.5")]);
        assert_eq!(
            proxies.client_ip("10.0.0.1".parse().unwrap(), &h),
            "2.2.2.2".parse::<IpAddr>().unwrap()
        );
        // An untrusted peer's headers are ignored.
        assert_eq!(
            proxies.client_ip("3.3.3.3".parse().unwrap(), &h),
            "3.3.3.3".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn header_choice() {
        let proxies = TrustedProxies::new(["10.0.0.0/8"]).unwrap();
        let h = headers(&[
            (
                "forwarded",
                "for=192.0.2.60;proto=http, for=\"[2001:db8::1]:4711\"",
            ),
            ("x-forwarded-for", "9.9.9.9"),
            ("x-real-ip", "4.4.4.4"),
        ]);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        // Default: X-Forwarded-For only.
        assert_eq!(
            proxies.client_ip(peer, &h),
            "9.9.9.9".parse::<IpAddr>().unwrap()
        );
        let forwarded = proxies.clone().header(ForwardedHeader::Forwarded);
        assert_eq!(
            forwarded.client_ip(peer, &h),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        let real_ip = proxies.clone().header(ForwardedHeader::XRealIp);
        assert_eq!(
            real_ip.client_ip(peer, &h),
            "4.4.4.4".parse::<IpAddr>().unwrap()
        );
        // Only the chosen header is read: without it, the proxy is the client.
        let only_xff = headers(&[("x-forwarded-for", "9.9.9.9")]);
        assert_eq!(real_ip.client_ip(peer, &only_xff), peer);
        assert_eq!(forwarded.client_ip(peer, &only_xff), peer);
        // A `Forwarded` element without `for=` stops the chain.
        let h = headers(&[("forwarded", "for=6.6.6.6, proto=https")]);
        assert_eq!(forwarded.client_ip(peer, &h), peer);
    }

    #[test]
    fn ipv6_is_masked_to_its_prefix() {
        let identity = AddressIdentity::default();
        let ip = identity.mask("2001:db8:1:2:aaaa:bbbb:cccc:dddd".parse().unwrap());
        assert_eq!(identity.text(ip), "2001:db8:1:2::/64");
        let v4 = identity.mask("1.2.3.4".parse().unwrap());
        assert_eq!(v4.to_string(), "1.2.3.4");
    }

    #[test]
    fn mapped_ipv4_is_ipv4() {
        let proxies = TrustedProxies::new(["10.0.0.0/8"]).unwrap();
        assert!(proxies.contains("::ffff:10.1.1.1".parse().unwrap()));
    }
}
