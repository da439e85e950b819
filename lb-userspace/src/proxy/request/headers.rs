//! The request head a backend gets: hop-by-hop headers removed, `Host` kept (from
//! `:authority` for HTTP/2), X-Forwarded-* set or extended by the peer's trust.

use hyper::{
    HeaderMap,
    header::{self, HeaderName, HeaderValue},
};

use super::client::{Client, X_FORWARDED_FOR};
use crate::proxy::hop_by_hop::{HOP_BY_HOP, connection_has};

const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// The headers that say who the client is. xlb sets them (or, from a trusted peer,
/// extends them), so they are never hop-by-hop: a `Connection` naming one does not
/// remove it, else a client could strip what a backend relies on.
const FORWARDING: [HeaderName; 5] = [X_FORWARDED_FOR, X_REAL_IP, X_FORWARDED_HOST, X_FORWARDED_PROTO, FORWARDED];

/// The request headers a backend gets, rewritten from the client's own map (`src`):
/// only when a field must go is the map copied without it (a removal would reorder the
/// rest). `raw_host`: the host the client named (`Target::raw_host`). `buffered`: the
/// whole body is here, so the backend has nothing to agree to (`Expect` dropped).
/// `tls`: the client came over TLS (`X-Forwarded-Proto: https`).
pub fn upstream(src: HeaderMap, raw_host: Option<&HeaderValue>, upgrade: bool, client: &Client, buffered: bool, tls: bool) -> HeaderMap {
    let keep = |name: &HeaderName| {
        let forwarding = FORWARDING.contains(name);
        !(HOP_BY_HOP.contains(name) || (!forwarding && connection_has(&src, name.as_str())) || (!client.peer_trusted && forwarding))
    };
    let upgrade_value = upgrade.then(|| src.get(header::UPGRADE).cloned()).flatten();
    let mut out = if src.keys().all(keep) {
        src
    } else {
        let mut out = HeaderMap::with_capacity(src.len() + 6);
        for (name, value) in src.iter().filter(|(name, _)| keep(name)) {
            out.append(name.clone(), value.clone());
        }
        out
    };
    // HTTP/2 (and absolute-form) carry the host in the URI.
    if let Some(h) = raw_host {
        out.insert(header::HOST, h.clone());
    }
    forwarded(&mut out, raw_host, client, tls);
    if upgrade {
        out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(u) = upgrade_value {
            out.insert(header::UPGRADE, u);
        }
    }
    if buffered {
        out.remove(header::EXPECT);
    }
    out
}

/// `X-Forwarded-For` (extended when the peer is trusted), `X-Real-IP`, and
/// `X-Forwarded-Host`/`-Proto` unless a trusted peer set them.
fn forwarded(out: &mut HeaderMap, raw_host: Option<&HeaderValue>, client: &Client, tls: bool) {
    // Several `X-Forwarded-For` fields are one list in order (RFC 9110 5.3), as
    // `Client::identify` reads them: keep every hop, not just the first field's.
    let xff = if client.peer_trusted && out.contains_key(&X_FORWARDED_FOR) {
        let prev: Vec<&str> = out.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty()).collect();
        if prev.is_empty() { Some(client.peer_header.clone()) } else { HeaderValue::from_str(&format!("{}, {}", prev.join(", "), client.peer)).ok() }
    } else {
        Some(client.peer_header.clone())
    };
    if let Some(v) = xff {
        out.insert(X_FORWARDED_FOR, v);
    } else {
        out.remove(&X_FORWARDED_FOR);
    }
    // The client is the peer unless a trusted proxy named another: one string then.
    let real = if client.ip == client.peer { Some(client.peer_header.clone()) } else { HeaderValue::from_str(&client.ip.to_string()).ok() };
    if let Some(v) = real {
        out.insert(X_REAL_IP, v);
    }
    if !out.contains_key(&X_FORWARDED_HOST)
        && let Some(h) = raw_host
    {
        out.insert(X_FORWARDED_HOST, h.clone());
    }
    if !out.contains_key(&X_FORWARDED_PROTO) {
        out.insert(X_FORWARDED_PROTO, HeaderValue::from_static(if tls { "https" } else { "http" }));
    }
}
