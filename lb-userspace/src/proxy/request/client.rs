//! The client identity phase: who is asking, for `X-Forwarded-For`, `X-Real-IP`,
//! `ip_hash` and `hash client`.

use std::net::IpAddr;

use hyper::{
    HeaderMap,
    header::{HeaderName, HeaderValue},
};

use crate::{
    config::http::{Cidr, canonical},
    proxy::listen::guard::shared::ConnShared,
};

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The peer of the connection and the client behind it.
pub struct Client {
    pub peer: IpAddr,
    /// `peer` as a header value (the connection's, shared).
    pub peer_header: HeaderValue,
    /// The peer is in `trusted_networks`: its X-Forwarded-* are believed.
    pub peer_trusted: bool,
    /// The client after trusted proxies.
    pub ip: IpAddr,
}

impl Client {
    pub fn identify(h: &HeaderMap, conn: &ConnShared, trusted_networks: &[Cidr]) -> Self {
        let trusted = |ip: IpAddr| trusted_networks.iter().any(|n| n.contains(ip));
        let peer = canonical(conn.peer.ip());
        Self { peer, peer_header: conn.peer_header.clone(), peer_trusted: trusted(peer), ip: real_client(h, peer, &trusted) }
    }
}

/// The client behind trusted proxies: the rightmost `X-Forwarded-For` entry that is
/// not a trusted network (nginx's `real_ip_recursive on`).
fn real_client(h: &HeaderMap, peer: IpAddr, trusted: &impl Fn(IpAddr) -> bool) -> IpAddr {
    if !trusted(peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = h
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok().map(canonical))
        .collect();
    hops.iter().rev().find(|&&ip| !trusted(ip)).or(hops.first()).copied().unwrap_or(peer)
}
