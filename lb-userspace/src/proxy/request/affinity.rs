//! The affinity phase: what in a request may choose its backend before the balancing
//! method does (a pin header or cookie, a sticky cookie), and what the method hashes
//! (the `hash` key, the client for `ip_hash`).

use std::{net::IpAddr, ops::Deref, ops::Range};

use hyper::{
    HeaderMap,
    header::{self, HeaderValue},
    http::request::Parts,
};

use crate::config::http::{HashKey, HttpOptions, Method};

pub struct Affinity {
    /// A backend named by `pin_header` or `pin_cookie`.
    pub pinned: Option<HeaderSlice>,
    /// The `sticky_cookie` value.
    pub sticky: Option<HeaderSlice>,
    /// The key of `hash KEY`; `None`: round robin.
    pub hash_key: Option<Vec<u8>>,
    /// The client after trusted proxies, for `ip_hash`.
    pub client: IpAddr,
}

impl Affinity {
    pub fn of(head: &Parts, o: &HttpOptions, client: IpAddr) -> Self {
        let h = &head.headers;
        let pinned =
            o.pin_header.as_ref().and_then(|p| h.get(p.as_str())).and_then(HeaderSlice::whole).or_else(|| o.pin_cookie.as_ref().and_then(|c| cookie(h, c)));
        let sticky = o.sticky_cookie.as_ref().and_then(|s| cookie(h, &s.name));
        let hash_key = match &o.method {
            Method::Hash { key, .. } => match key {
                HashKey::Uri => Some(head.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes().to_vec()),
                HashKey::Path => Some(head.uri.path().as_bytes().to_vec()),
                HashKey::Client => Some(client.to_string().into_bytes()),
                HashKey::Header(name) => h.get(name.as_str()).map(|v| v.as_bytes().to_vec()),
                HashKey::Cookie(c) => cookie(h, c).map(|v| v.as_bytes().to_vec()),
            },
            _ => None,
        };
        Self { pinned, sticky, hash_key, client }
    }
}

/// Text in a request header, kept without a copy: the value is a clone of the
/// header's (it shares the bytes the request was read into), and a range of it.
pub struct HeaderSlice {
    value: HeaderValue,
    range: Range<usize>,
}

impl HeaderSlice {
    /// The whole value, if it is text.
    fn whole(v: &HeaderValue) -> Option<Self> {
        v.to_str().ok()?;
        Some(Self { value: v.clone(), range: 0..v.len() })
    }
}

impl Deref for HeaderSlice {
    type Target = str;

    /// Text by construction: a range of a value `to_str` accepted (visible ASCII).
    fn deref(&self) -> &str {
        std::str::from_utf8(&self.value.as_bytes()[self.range.clone()]).unwrap_or_default()
    }
}

/// A cookie's value from the request's `Cookie` headers: found in place, not copied.
pub fn cookie(h: &HeaderMap, name: &str) -> Option<HeaderSlice> {
    h.get_all(header::COOKIE).iter().find_map(|v| {
        let text = v.to_str().ok()?;
        let found = text.split(';').filter_map(|pair| pair.trim().split_once('=')).find(|(k, _)| k.trim() == name)?.1.trim().trim_matches('"');
        let start = found.as_ptr() as usize - text.as_ptr() as usize;
        Some(HeaderSlice { value: v.clone(), range: start..start + found.len() })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_in_place() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; srv=\"web-2\" ;route=abc"));
        h.append(header::COOKIE, HeaderValue::from_static("late=x;  spaced = y "));
        let found = |name| cookie(&h, name).map(|c| c.to_string());
        assert_eq!(found("srv").as_deref(), Some("web-2"));
        assert_eq!(found("route").as_deref(), Some("abc"));
        assert_eq!(found("a").as_deref(), Some("1"));
        assert_eq!(found("spaced").as_deref(), Some("y"), "a later Cookie header");
        assert_eq!(found("rout"), None);
        assert_eq!(found("x"), None);
    }
}
