//! What the plan hands the HTTP proxy: its services and their backends' states.

use std::net::SocketAddr;

use crate::config::http::{HostPattern, HttpOptions};

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
}

/// An HTTP service, as the owner hands it over.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceView {
    pub name: String,
    /// Where clients connect. Services with the same `listen` share one listener and
    /// are told apart by their routes (`hosts`, `paths`).
    pub listen: SocketAddr,
    pub options: HttpOptions,
    pub backends: Vec<BackendView>,
}
