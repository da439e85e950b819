//! What the plan hands the HTTP proxy: its services and their backends' states.

use std::net::{IpAddr, SocketAddr};

use crate::{
    config::{
        Service,
        http::{HostPattern, HttpOptions, UpstreamOptions},
        tls::ServiceTls,
    },
    discovery::TlsLabels,
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
    /// What its labels ask of TLS: its `hosts` served over TLS too (`xlb.tls`), passed
    /// through, the protocol to it (`xlb.upstream`).
    pub tls: TlsLabels,
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
/// those containers' hosts alone: passed through to them when they say
/// `passthrough` (then they alone are on it, and the plain view goes without them).
/// A service whose config sets no `http.upstream` takes its containers' `xlb.upstream`
/// (the first that has one).
pub fn views(s: &Service, vip: IpAddr, mut options: HttpOptions, mut backends: Vec<BackendView>, tls_port: u16) -> Vec<ServiceView> {
    if options.upstream == UpstreamOptions::default()
        && let Some(u) = backends.iter().find_map(|b| b.tls.upstream.clone())
    {
        options.upstream = u;
    }
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
    let mut labelled: Vec<BackendView> = backends.iter().filter(|b| b.tls.serve && !b.hosts.is_empty()).cloned().collect();
    let passthrough = labelled.iter().any(|b| b.tls.passthrough);
    let mut tls = None;
    if passthrough {
        // They speak TLS: no plain request can go to them.
        labelled.retain(|b| b.tls.passthrough);
        backends.retain(|b| !b.tls.passthrough);
        tls = Some(ServiceTls { port: tls_port, passthrough: true, ..ServiceTls::default() });
    }
    let mut out = Vec::new();
    if !labelled.is_empty() && tls_port != s.port {
        // Only the labelled hosts: the service's own routes stay plain.
        out.push(view(tls_port, true, None, HttpOptions { hosts: Vec::new(), paths: Vec::new(), default: false, tls, ..options.clone() }, labelled));
    }
    out.insert(0, view(s.port, false, None, options, backends));
    out
}
