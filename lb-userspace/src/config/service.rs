//! One service as the config describes it: listener, method, backends and where more
//! backends come from, health checks; checked on its own as it is read.

use std::{collections::HashSet, fmt, net::IpAddr, time::Duration};

use serde::{Deserialize, Deserializer};

use super::{
    http,
    units::{Checked, Positive, Weight, duration},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    /// Served by the user-space HTTP proxy, not the kernel.
    Http,
}

impl Protocol {
    /// The IP protocol on the wire.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp | Self::Http => lb_common::IPPROTO_TCP,
            Self::Udp => lb_common::IPPROTO_UDP,
        }
    }

    /// Whether two services of these protocols may take one VIP, port and IP protocol:
    /// only HTTP beside HTTP, told apart by their routes. Any other pair would fight over
    /// one kernel key, or the kernel would take the proxy's packets.
    pub fn shares_listener(self, other: Protocol) -> bool {
        self == Self::Http && other == Self::Http
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Http => "http",
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    #[default]
    Maglev,
    RoundRobin,
    Random,
    SourceHash,
}

impl From<Method> for lb_common::Method {
    fn from(m: Method) -> Self {
        match m {
            Method::Maglev => Self::Maglev,
            Method::RoundRobin => Self::RoundRobin,
            Method::Random => Self::Random,
            Method::SourceHash => Self::SourceHash,
        }
    }
}

/// How the kernel hands a flow to its backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// Destination NAT: replies come back through xlb, which rewrites their source.
    #[default]
    Nat,
    /// Direct server return on one L2 segment: the packet goes unchanged to the backend's
    /// MAC; the backend holds the VIP itself (on `lo`, not answering ARP for it) and
    /// answers the client directly.
    Direct,
    /// Direct server return through IPIP: the unchanged packet inside an IPv4 header to
    /// the backend, which decapsulates it (an `ipip` device) and holds the VIP; backends
    /// may be on any routed network.
    Tunnel,
}

impl Forwarding {
    /// Direct and tunnel: no reply passes xlb, so any node with the same tables can carry
    /// any flow, and a TCP segment of a flow this node does not know is steered by the
    /// selection table instead of being left to the stack (several nodes behind ECMP).
    pub fn returns_directly(self) -> bool {
        self != Self::Nat
    }
}

impl fmt::Display for Forwarding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Nat => "nat",
            Self::Direct => "direct",
            Self::Tunnel => "tunnel",
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    /// `None`: the first address of the data plane interface.
    pub vip: Option<IpAddr>,
    pub port: u16,
    pub protocol: Protocol,
    pub method: Method,
    pub backends: Vec<Backend>,
    pub docker: Option<DockerSource>,
    pub dns: Option<DnsSource>,
    pub health: Option<HealthCheck>,
    /// A backend that becomes healthy ramps its weight up over this period.
    pub slow_start: Duration,
    /// HTTP proxy options (`protocol: http` only).
    pub http: Option<http::HttpOptions>,
    /// Local callers in `dataplane.socket_lb.cgroup` are balanced at connect() (default);
    /// `false` leaves them to the packet path. A container label `xlb.socket_lb=false`
    /// on any of its backends turns it off too.
    pub socket_lb: bool,
    pub forwarding: Forwarding,
}

/// Containers that join the service (see `discovery::DockerWatch`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerSource {
    /// `xlb.service` label, compose service, container name or network alias.
    pub name: String,
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub network: Option<String>,
    /// Target port; a container's `xlb.port` label wins over it.
    #[serde(default)]
    pub port: Option<u16>,
}

/// A DNS name whose A/AAAA records are the backends.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSource {
    pub name: String,
    /// Target port; default: the service port.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "one_second", deserialize_with = "duration")]
    pub interval: Duration,
    /// Resolver to ask, `host:port`; default: the system's.
    #[serde(default)]
    pub server: Option<std::net::SocketAddr>,
}

/// Active health probes. TCP connect unless `http` names a path to GET.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default)]
    pub http: Option<String>,
    #[serde(default = "status_200")]
    pub expect_status: u16,
    #[serde(default = "two_seconds", deserialize_with = "duration")]
    pub interval: Duration,
    #[serde(default = "one_second", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Successes in a row that make an unhealthy backend healthy.
    #[serde(default = "two")]
    pub rise: Positive,
    /// Failures in a row that make a healthy backend unhealthy.
    #[serde(default = "three")]
    pub fall: Positive,
}

pub(super) fn one_second() -> Duration {
    Duration::from_secs(1)
}
fn two_seconds() -> Duration {
    Duration::from_secs(2)
}
fn status_200() -> u16 {
    200
}
fn two() -> Positive {
    Positive(2)
}
fn three() -> Positive {
    Positive(3)
}

/// A service as written; `Service::try_from` runs its own checks on it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    name: String,
    #[serde(default)]
    vip: Option<IpAddr>,
    #[serde(deserialize_with = "port")]
    port: u16,
    #[serde(default = "tcp")]
    protocol: Protocol,
    #[serde(default)]
    method: Method,
    #[serde(default)]
    backends: Vec<Backend>,
    #[serde(default)]
    docker: Option<DockerSource>,
    #[serde(default)]
    dns: Option<DnsSource>,
    #[serde(default)]
    health: Option<HealthCheck>,
    #[serde(default, deserialize_with = "duration")]
    slow_start: Duration,
    #[serde(default, deserialize_with = "http::deserialize_checked")]
    http: Option<http::HttpOptions>,
    #[serde(default = "yes")]
    socket_lb: bool,
    #[serde(default)]
    forwarding: Forwarding,
}

fn yes() -> bool {
    true
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

impl TryFrom<RawService> for Service {
    type Error = String;

    fn try_from(r: RawService) -> Result<Self, String> {
        let s = Service {
            name: r.name,
            vip: r.vip,
            port: r.port,
            protocol: r.protocol,
            method: r.method,
            backends: r.backends,
            docker: r.docker,
            dns: r.dns,
            health: r.health,
            slow_start: r.slow_start,
            http: r.http,
            socket_lb: r.socket_lb,
            forwarding: r.forwarding,
        };
        s.validate()?;
        Ok(s)
    }
}

impl Service {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.port == 0 {
            return Err(format!("service {:?}: port must be 1-65535", self.name));
        }
        if self.http.is_some() && self.protocol != Protocol::Http {
            return Err(format!("service {:?}: `http` options need `protocol: http`", self.name));
        }
        if let Some(http) = &self.http
            && let Some(tls) = http.tls.as_ref().filter(|t| t.passthrough)
        {
            let name = &self.name;
            if http.hosts.is_empty() {
                return Err(format!("service {name:?}: `http.tls.passthrough` routes by the ClientHello's server name: give `http.hosts`"));
            }
            if !http.paths.is_empty() {
                return Err(format!("service {name:?}: `http.paths` with `http.tls.passthrough`: the requests pass unread"));
            }
            if tls.hsts.is_some() {
                return Err(format!("service {name:?}: `http.tls.hsts` with `passthrough`: the responses pass unread, set HSTS at the backends"));
            }
            if tls.port != self.port && !tls.redirect {
                return Err(format!(
                    "service {name:?}: with `http.tls.passthrough` the backends speak TLS, so plain HTTP on port {} could only redirect: set `http.tls.redirect: true`, or `http.tls.port: {}`",
                    self.port, self.port
                ));
            }
        }
        if self.forwarding.returns_directly() {
            self.validate_direct()?;
        }
        let mut seen = HashSet::new();
        for b in &self.backends {
            if let Some(vip) = self.vip
                && vip.is_ipv4() != b.address.is_ipv4()
            {
                return Err(format!("service {:?}: backend {} is not of the VIP's family ({vip})", self.name, b.address));
            }
            if !seen.insert((b.address, b.port)) {
                return Err(format!("service {:?}: backend {} listed twice", self.name, b.address));
            }
            if b.max_conns.is_some() && self.protocol != Protocol::Http {
                return Err(format!("service {:?}: backend {}: `max_conns` needs `protocol: http`", self.name, b.address));
            }
        }
        Ok(())
    }

    /// Direct server return: the nodes must agree on a flow's backend without sharing
    /// state (a hashed method), the packet keeps its destination port (the backend serves
    /// the service's), and tunnels are IPv4 in IPv4.
    fn validate_direct(&self) -> Result<(), String> {
        let (name, mode) = (&self.name, self.forwarding);
        if self.protocol == Protocol::Http {
            return Err(format!("service {name:?}: `forwarding: {mode}` is for kernel services (tcp, udp), not http"));
        }
        if !matches!(self.method, Method::Maglev | Method::SourceHash) {
            return Err(format!("service {name:?}: `forwarding: {mode}` needs method maglev or source_hash, which every node computes alike"));
        }
        if let Some(b) = self.backends.iter().find(|b| b.port.is_some_and(|p| p != self.port)) {
            return Err(format!(
                "service {name:?}: backend {}: `forwarding: {mode}` leaves the port as the client sent it, so a backend serves port {}",
                b.address, self.port
            ));
        }
        if mode == Forwarding::Tunnel
            && let Some(a) = self.vip.iter().chain(self.backends.iter().map(|b| &b.address)).find(|a| a.is_ipv6())
        {
            return Err(format!("service {name:?}: `forwarding: tunnel` is IPv4 only (IPIP), {a} is IPv6"));
        }
        Ok(())
    }

    /// The probes that apply: the configured ones, else, for containers, a TCP connect
    /// check, so that a container just started serves once it accepts connections.
    pub fn probes(&self) -> Option<HealthCheck> {
        self.health.clone().or_else(|| {
            self.docker.as_ref().map(|_| HealthCheck {
                http: None,
                expect_status: 200,
                interval: two_seconds(),
                timeout: one_second(),
                rise: Positive(1),
                fall: three(),
            })
        })
    }

    /// The proxy's options for an HTTP service (defaults when none are given).
    pub fn http_options(&self) -> Option<http::HttpOptions> {
        (self.protocol == Protocol::Http).then(|| self.http.clone().unwrap_or_default())
    }

    /// The ports it listens on, each with whether it is TLS: the plain `port` (unless
    /// `http.tls.port` is the same: TLS only), and `http.tls.port`.
    pub fn listeners(&self) -> Vec<(u16, bool)> {
        match self.http.as_ref().and_then(|h| h.tls.as_ref()) {
            Some(t) if t.port == self.port => vec![(self.port, true)],
            Some(t) => vec![(self.port, false), (t.port, true)],
            None => vec![(self.port, false)],
        }
    }

    /// Where a service's backends come from: static, docker:NAME, dns:NAME.
    pub fn sources(&self) -> Vec<String> {
        let mut sources = Vec::new();
        if !self.backends.is_empty() {
            sources.push("static".to_owned());
        }
        sources.extend(self.docker.as_ref().map(|d| format!("docker:{}", d.name)));
        sources.extend(self.dns.as_ref().map(|d| format!("dns:{}", d.name)));
        sources
    }

    /// The port a backend listens on: its own, else the service's.
    pub fn backend_port(&self, b: &Backend) -> u16 {
        b.port.unwrap_or(self.port)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub address: IpAddr,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub weight: Weight,
    #[serde(default)]
    pub state: BackendState,
    /// Serves only while no other backend of the service can (nginx's `backup`).
    #[serde(default)]
    pub backup: bool,
    /// Takes nothing new at all (nginx's `down`): unlike `draining`, not even the HTTP
    /// proxy's pinned requests or sticky sessions. Connections it has finish.
    #[serde(default)]
    pub down: bool,
    /// HTTP services: most requests in flight to this backend (overrides the service's
    /// `http.max_conns`).
    #[serde(default)]
    pub max_conns: Option<u32>,
}

/// What the operator asks of a backend; health and discovery may add to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    #[default]
    Active,
    /// No new flows; existing flows continue.
    Draining,
}

/// A port from 1 to 65535, checked at its value.
pub(super) fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    d.deserialize_u32(Checked(|v: u32| u16::try_from(v).ok().filter(|p| *p != 0).ok_or_else(|| format!("port {v}: expected 1 to 65535"))))
}
