//! The affinity phase: what in a request may choose its backend before the balancing
//! method does (a pin header or cookie, a sticky cookie), and what the method hashes
//! (the `hash` key, the client for `ip_hash`).

use std::net::IpAddr;

use hyper::{HeaderMap, header, http::request::Parts};

use crate::config::http::{HashKey, HttpOptions, Method};

pub struct Affinity {
    /// A backend named by `pin_header` or `pin_cookie`.
    pub pinned: Option<String>,
    /// The `sticky_cookie` value.
    pub sticky: Option<String>,
    /// The key of `hash KEY`; `None`: round robin.
    pub hash_key: Option<Vec<u8>>,
    /// The client after trusted proxies, for `ip_hash`.
    pub client: IpAddr,
}

impl Affinity {
    pub fn of(head: &Parts, o: &HttpOptions, client: IpAddr) -> Self {
        let h = &head.headers;
        let pinned = o
            .pin_header
            .as_ref()
            .and_then(|p| h.get(p.as_str()))
            .and_then(|v| v.to_str().ok())
            .or_else(|| o.pin_cookie.as_ref().and_then(|c| cookie(h, c)))
            .map(str::to_owned);
        let sticky = o.sticky_cookie.as_ref().and_then(|s| cookie(h, &s.name)).map(str::to_owned);
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

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
}
