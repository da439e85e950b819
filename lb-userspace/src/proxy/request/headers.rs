//! The request head a backend gets: hop-by-hop headers removed, `Host` kept (from
//! `:authority` for HTTP/2), X-Forwarded-* set or extended by the peer's trust.

use hyper::{
    HeaderMap,
    header::{self, HeaderName, HeaderValue},
};

use super::client::{Client, X_FORWARDED_FOR};
use crate::proxy::hop_by_hop::{HOP_BY_HOP, connection_tokens};

const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// The headers that say who the client is. xlb sets them (or, from a trusted peer,
/// extends them), so they are never hop-by-hop: a `Connection` naming one does not
/// remove it, else a client could strip what a backend relies on.
const FORWARDING: [HeaderName; 5] = [X_FORWARDED_FOR, X_REAL_IP, X_FORWARDED_HOST, X_FORWARDED_PROTO, FORWARDED];

/// The request headers a backend gets. `buffered`: the whole body is here, so the
/// backend has nothing to agree to (`Expect` dropped). `tls`: the client came over TLS
/// (`X-Forwarded-Proto: https`).
pub fn upstream(src: &HeaderMap, raw_host: Option<&str>, upgrade: bool, client: &Client, buffered: bool, tls: bool) -> HeaderMap {
    let named = connection_tokens(src);
    let mut out = HeaderMap::with_capacity(src.len() + 6);
    for (name, value) in src {
        let forwarding = FORWARDING.contains(name);
        if HOP_BY_HOP.contains(name) || (named.contains(name) && !forwarding) {
            continue;
        }
        if !client.peer_trusted && forwarding {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    // HTTP/2 (and absolute-form) carry the host in the URI.
    if let Some(h) = raw_host
        && let Ok(v) = HeaderValue::from_str(h)
    {
        out.insert(header::HOST, v);
    }
    forwarded(&mut out, raw_host, client, tls);
    if upgrade {
        out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(u) = src.get(header::UPGRADE) {
            out.insert(header::UPGRADE, u.clone());
        }
    }
    if buffered {
        out.remove(header::EXPECT);
    }
    out
}

/// `X-Forwarded-For` (extended when the peer is trusted), `X-Real-IP`, and
/// `X-Forwarded-Host`/`-Proto` unless a trusted peer set them.
fn forwarded(out: &mut HeaderMap, raw_host: Option<&str>, client: &Client, tls: bool) {
    let peer = client.peer;
    // Several `X-Forwarded-For` fields are one list in order (RFC 9110 5.3), as
    // `Client::identify` reads them: keep every hop, not just the first field's.
    let prev: Vec<&str> = out.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty()).collect();
    let xff = if client.peer_trusted && !prev.is_empty() { format!("{}, {peer}", prev.join(", ")) } else { peer.to_string() };
    out.remove(&X_FORWARDED_FOR);
    if let Ok(v) = HeaderValue::from_str(&xff) {
        out.insert(X_FORWARDED_FOR, v);
    }
    if let Ok(v) = HeaderValue::from_str(&client.ip.to_string()) {
        out.insert(X_REAL_IP, v);
    }
    if !out.contains_key(&X_FORWARDED_HOST)
        && let Some(h) = raw_host.and_then(|h| HeaderValue::from_str(h).ok())
    {
        out.insert(X_FORWARDED_HOST, h);
    }
    if !out.contains_key(&X_FORWARDED_PROTO) {
        out.insert(X_FORWARDED_PROTO, HeaderValue::from_static(if tls { "https" } else { "http" }));
    }
}
