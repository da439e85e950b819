//! Hop-by-hop headers (RFC 9110 7.6.1): what a proxy never passes on, in either direction.

use hyper::{
    HeaderMap,
    header::{self, HeaderName},
};

/// Headers that describe one connection, never forwarded (RFC 9110 7.6.1), plus
/// `Proxy-Connection` and `Trailer`.
pub const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The header names listed in `Connection`, which are hop-by-hop too. Tokens are read
/// as bytes, so a value that is not UTF-8 still names the headers it can.
pub fn connection_tokens(h: &HeaderMap) -> Vec<HeaderName> {
    h.get_all(header::CONNECTION).iter().flat_map(|v| v.as_bytes().split(|&b| b == b',')).filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok()).collect()
}

/// Whether `Connection` lists `token` (case-insensitively).
pub fn connection_has(h: &HeaderMap, token: &str) -> bool {
    h.get_all(header::CONNECTION).iter().any(|v| v.as_bytes().split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes())))
}

/// Removes every hop-by-hop header, those `Connection` names included. Only the named
/// fields present are looked for by name: a token naming none (`close`, `keep-alive`)
/// costs no new header name.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h.keys().filter(|k| connection_has(h, k.as_str())).cloned().collect();
    for n in HOP_BY_HOP.iter().chain(&named) {
        h.remove(n);
    }
}
