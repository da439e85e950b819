//! What a source is asked to watch, and what it reports.

use std::{net::IpAddr, time::Duration};

use crate::config::http::UpstreamOptions;

/// A backend as a source reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub addr: IpAddr,
    /// `None`: the service's target port.
    pub port: Option<u16>,
    pub weight: u32,
    /// Takes traffic only when no primary backend is healthy.
    pub backup: bool,
    /// Stable name: the container name, else the address.
    pub name: String,
    /// More names a pin header or cookie may use (a container's hostname and `xlb.name`
    /// label), lowercased.
    pub aliases: Vec<String>,
    /// Host names for HTTP routing (`xlb.host`).
    pub hosts: Vec<String>,
    /// What its labels ask of TLS and of the protocol to it.
    pub tls: TlsLabels,
    /// The container is stopping (`kill`/`stop` seen, or paused): no new flows.
    pub draining: bool,
    /// Docker's HEALTHCHECK verdict, when the container has one.
    pub healthy: Option<bool>,
    /// Where the address came from (Docker network name, DNS name), for `xlb status`.
    pub origin: String,
    /// False when the container opts its service out of socket-level balancing
    /// (`xlb.socket_lb=false`).
    pub socket_lb: bool,
}

/// What a container's labels ask of TLS (`xlb.tls`) and of the protocol xlb speaks to
/// it (`xlb.upstream`, `xlb.upstream_verify`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsLabels {
    /// Its `xlb.host` names are served on the TLS listener too.
    pub serve: bool,
    /// ... and passed to it unread there (`xlb.tls: passthrough`): it terminates TLS.
    pub passthrough: bool,
    /// How xlb speaks to it, when its service's config does not say.
    pub upstream: Option<UpstreamOptions>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    Docker,
    Dns,
}

/// A source's complete view of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub service: String,
    pub source: SourceKind,
    pub backends: Vec<Discovered>,
}

/// What the Docker source looks for on behalf of one xlb service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerWatch {
    /// The xlb service the containers join.
    pub service: String,
    /// Matches the `xlb.service` label, the compose service, a container name or a
    /// network alias.
    pub name: String,
    /// Restricts compose-service matches to one compose project.
    pub project: Option<String>,
    /// Network whose address to use (else the `xlb.network` label, else the first
    /// reachable network by name).
    pub network: Option<String>,
    /// The operator's target port: used when a container has no `xlb.port` label.
    pub port: Option<u16>,
}

/// What the DNS source resolves on behalf of one xlb service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsWatch {
    pub service: String,
    pub name: String,
    pub port: Option<u16>,
    pub interval: Duration,
    /// Resolver to ask (`host:port`); `None`: the system's (/etc/resolv.conf).
    pub server: Option<std::net::SocketAddr>,
}
