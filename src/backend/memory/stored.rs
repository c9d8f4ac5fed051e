//! The form a key is stored under in the table: its parts as bytes, with
//! the strategies it is decided with.

use smallvec::SmallVec;

use crate::key::{Key, KeyIdentity, ScopeKind};
use crate::Quota;

/// A key as the table stores it: its parts, inline while short (see
/// [`stored_form`]).
pub(super) type StoredKey = SmallVec<[u8; 16]>;

/// Room on the stack for the stored form of a key being looked up.
pub(super) type KeyBuf = SmallVec<[u8; 96]>;

/// Writes the form a key is stored under: the strategies it is decided
/// with (a throttle rebuilt with another strategy must not read the old
/// state), the uid, the identity (a client address as its bytes), the
/// scope. Each part ends where the next can be told to start (`0xFF`, a
/// byte no text holds, after each text but the last), so different keys
/// never share a stored form.
#[inline]
pub(super) fn stored_form(key: &Key<'_>, quotas: &[Quota], out: &mut KeyBuf) {
    if quotas.len() > 1 {
        out.push(quotas.len() as u8);
    }
    out.extend(quotas.iter().map(|quota| quota.strategy() as u8));
    stored_parts(key, out);
}

/// The tag that starts the stored form of an in-flight key (no strategy is
/// numbered this high).
pub(super) const PLACES: u8 = 0xFE;

/// [`stored_form`]'s parts of the key itself.
#[inline]
pub(super) fn stored_parts(key: &Key<'_>, out: &mut KeyBuf) {
    out.extend_from_slice(key.throttle.as_bytes());
    out.push(0xFF);
    match key.identity {
        KeyIdentity::Address {
            ip: std::net::IpAddr::V4(ip),
            ..
        } => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        KeyIdentity::Address {
            ip: std::net::IpAddr::V6(ip),
            prefix,
        } => {
            out.push(6);
            out.push(prefix);
            out.extend_from_slice(&ip.octets());
        }
        KeyIdentity::Text(text) => {
            out.push(b'T');
            out.extend_from_slice(text.as_bytes());
            out.push(0xFF);
        }
    }
    match key.scope.0 {
        ScopeKind::Shared => out.push(b'*'),
        ScopeKind::Http { method, route } => {
            out.push(b'H');
            out.push(method as u8);
            out.extend_from_slice(route.as_bytes());
        }
        ScopeKind::WebSocket { path, context } => {
            out.push(b'W');
            out.extend_from_slice(path.as_bytes());
            out.push(0xFF);
            out.extend_from_slice(context.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Strategy;

    #[test]
    fn stored_forms_tell_keys_apart() {
        let quota = Quota::new("1/s".parse().unwrap(), Strategy::TokenBucket).unwrap();
        let gcra = Quota::new("1/s".parse().unwrap(), Strategy::Gcra).unwrap();
        let get = http::Method::GET;
        let keys = [
            Key::new("a", "x", crate::key::Scope::shared()),
            Key::new("a", "x", crate::key::Scope::http(&get, "/")),
            Key::new("a", "x\u{1}", crate::key::Scope::shared()),
            Key::new("ax", "", crate::key::Scope::shared()),
            Key::new("a", "x", crate::key::Scope::websocket("/", "")),
            Key::new("a", "x", crate::key::Scope::websocket("", "/")),
            Key::client(
                "a",
                "10.0.0.1".parse().unwrap(),
                64,
                crate::key::Scope::shared(),
            ),
            Key::client(
                "a",
                "::a00:1".parse().unwrap(),
                64,
                crate::key::Scope::shared(),
            ),
            Key::client(
                "a",
                "::a00:1".parse().unwrap(),
                48,
                crate::key::Scope::shared(),
            ),
        ];
        let mut forms = Vec::new();
        for key in &keys {
            for quotas in [&[quota][..], &[gcra], &[quota, gcra], &[gcra, quota]] {
                let mut out = KeyBuf::new();
                stored_form(key, quotas, &mut out);
                forms.push(out.to_vec());
            }
        }
        let len = forms.len();
        forms.sort();
        forms.dedup();
        assert_eq!(forms.len(), len);
    }
}
