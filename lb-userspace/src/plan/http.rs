//! What the plan hands the HTTP proxy: its services and their backends' states.

use std::net::{IpAddr, SocketAddr};

use crate::config::{
    Service,
    http::{HostPattern, HttpOptions},
};

/// What the rest of xlb says of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeerState {
    /// Takes new requests.
    #[default]
    Active,
    /// No new requests, except those pinned to it or carrying its sticky cookie
    /// (sessions drain, as nginx's `drain`).
    Draining,
    /// Takes nothing (unhealthy, or `down`).
    Down,
}

/// A backend of an HTTP service, as the owner hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendView {
    /// Stable name: the container name for discovered backends, else `addr` as text.
    /// Sticky cookies and consistent hashing follow it, so a container that comes back
    /// with another address keeps its sessions and keys.
    pub name: String,
    /// More names a pin header or cookie may use (hostname, `xlb.name` label).
    pub aliases: Vec<String>,
    /// Host names this backend serves (a container's `xlb.host` label). They are added
    /// to the service's routes, and a request for one of them goes only to the backends
    /// that name it; backends without names serve the service's other hosts.
    pub hosts: Vec<HostPattern>,
    pub addr: SocketAddr,
    /// Selection weight (any scale: slow start's ramped weights do).
    pub weight: u32,
    /// Used only while no primary backend is usable.
    pub backup: bool,
    pub state: PeerState,
    /// Overrides the service's `max_conns` for this backend.
    pub max_conns: Option<u32>,
    /// Its `hosts` are served over TLS too (Docker's `xlb.tls` label).
    pub tls: bool,
}

/// An HTTP service, as the owner hands it over.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceView {
    pub name: String,
    /// Where clients connect. Services with the same `listen` share one listener and
    /// are told apart by their routes (`hosts`, `paths`).
    pub listen: SocketAddr,
    /// The listener terminates TLS (every service sharing it must agree).
    pub tls: bool,
    /// Answer every request with `308` to `https://` on this port instead of proxying.
    pub redirect: Option<u16>,
    pub options: HttpOptions,
    pub backends: Vec<BackendView>,
}

/// The views of one HTTP service: one per listener of `Service::listeners` (the plain
/// one redirecting when `http.tls.redirect` says so). A service without `http.tls`
/// whose containers carry `xlb.tls` also gets a TLS view at `tls_port` that serves
/// those containers' hosts alone.
pub fn views(s: &Service, vip: IpAddr, options: HttpOptions, backends: Vec<BackendView>, tls_port: u16) -> Vec<ServiceView> {
    let view = |port: u16, tls: bool, redirect: Option<u16>, options: HttpOptions, backends: Vec<BackendView>| ServiceView {
        name: s.name.clone(),
        listen: SocketAddr::new(vip, port),
        tls,
        redirect,
        options,
        backends,
    };
    if let Some(t) = options.tls.clone() {
        let redirect = t.redirect.then_some(t.port);
        return s.listeners().into_iter().map(|(port, tls)| view(port, tls, redirect.filter(|_| !tls), options.clone(), backends.clone())).collect();
    }
    let labelled: Vec<BackendView> = backends.iter().filter(|b| b.tls && !b.hosts.is_empty()).cloned().collect();
    let mut out = Vec::new();
    if !labelled.is_empty() && tls_port != s.port {
        // Only the labelled hosts: the service's own routes stay plain.
        out.push(view(tls_port, true, None, HttpOptions { hosts: Vec::new(), paths: Vec::new(), default: false, ..options.clone() }, labelled));
    }
    out.insert(0, view(s.port, false, None, options, backends));
    out
}
