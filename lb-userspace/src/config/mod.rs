//! The one config model behind the CLI SPECs and `xlb.yaml`.
//!
//! Values are checked while they are deserialized, so serde_yaml can name the line
//! and column of a bad one; unknown keys are rejected the same way.

pub mod http;
pub mod units;

use units::{Checked, duration};
pub use units::{MAX_DURATION, Positive, Prime, Weight, is_prime, parse_duration};

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Deserializer, de};

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub dataplane: Dataplane,
    #[serde(default)]
    pub admin: Admin,
    #[serde(default, deserialize_with = "services")]
    pub services: Vec<Service>,
}

/// The admin HTTP endpoint (`/api/v1/services`, `/metrics`) that `xlb status` reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    pub address: std::net::SocketAddr,
    /// When set, every request needs `Authorization: Bearer TOKEN`.
    #[serde(deserialize_with = "token")]
    pub token: Option<String>,
}

impl Default for Admin {
    fn default() -> Self {
        Self { address: ([127, 0, 0, 1], 9100).into(), token: None }
    }
}

/// An admin token: an empty one would read as "set" while admitting `Bearer ` alone.
fn token<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<String>::deserialize(d)? {
        Some(t) if t.trim().is_empty() => Err(de::Error::custom("an empty token: leave admin.token out for no authentication")),
        Some(t) if t.chars().any(|c| c.is_whitespace() || c.is_control()) => Err(de::Error::custom("a token without spaces or control characters")),
        t => Ok(t),
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dataplane {
    /// Interface clients reach the VIPs on (`--iface` overrides it).
    pub interface: Option<String>,
    pub conntrack_size: Positive,
    pub table_size: Prime,
    /// Same seed on several nodes makes them pick the same backend for a flow.
    pub hash_seed: u32,
    pub max_services: Positive,
    #[serde(deserialize_with = "duration")]
    pub tcp_idle_timeout: Duration,
    /// How long a TCP flow's entries live after a FIN or RST went either way (late
    /// retransmits and the last ACK still find their backend).
    #[serde(deserialize_with = "duration")]
    pub tcp_closed_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub udp_idle_timeout: Duration,
}

impl Default for Dataplane {
    fn default() -> Self {
        Self {
            interface: None,
            conntrack_size: Positive(lb_common::DEFAULT_CONNTRACK_SIZE),
            table_size: Prime(lb_common::DEFAULT_TABLE_SIZE),
            hash_seed: 0,
            max_services: Positive(lb_common::DEFAULT_MAX_SERVICES),
            tcp_idle_timeout: Duration::from_secs(15 * 60),
            tcp_closed_timeout: Duration::from_secs(10),
            udp_idle_timeout: Duration::from_secs(60),
        }
    }
}

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

fn one_second() -> Duration {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
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
        };
        s.validate()?;
        Ok(s)
    }
}

impl Service {
    fn validate(&self) -> Result<(), String> {
        if self.port == 0 {
            return Err(format!("service {:?}: port must be 1-65535", self.name));
        }
        if self.http.is_some() && self.protocol != Protocol::Http {
            return Err(format!("service {:?}: `http` options need `protocol: http`", self.name));
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

    /// The port a backend listens on: its own, else the service's.
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

impl Config {
    /// Reads and validates a YAML file. Errors read `file:line:column: message`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> anyhow::Result<Self> {
        let config: Config = serde_yaml::from_str(text).map_err(|e| positioned(path, &e))?;
        config.check().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(config)
    }

    /// Adds CLI SPECs to the services of the file.
    pub fn with_specs(mut self, specs: &[Spec]) -> anyhow::Result<Self> {
        self.services.extend(specs.iter().map(Spec::to_service));
        self.check()?;
        Ok(self)
    }

    /// Checks across services: unique names and listeners, and that the kernel's
    /// services fit the data plane.
    fn check(&self) -> anyhow::Result<()> {
        let mut seen = Seen::default();
        for s in &self.services {
            seen.add(s).map_err(|e| anyhow::anyhow!(e))?;
        }
        let kernel = self.services.iter().filter(|s| s.protocol != Protocol::Http).count();
        if kernel > self.dataplane.max_services.0 as usize {
            bail!("{kernel} kernel services, but dataplane.max_services is {}", self.dataplane.max_services.0);
        }
        Ok(())
    }
}

/// A port from 1 to 65535, checked at its value.
fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    d.deserialize_u32(Checked(|v: u32| u16::try_from(v).ok().filter(|p| *p != 0).ok_or_else(|| format!("port {v}: expected 1 to 65535"))))
}

/// The `services` list. Each service is checked inside its own map visitor, against
/// itself and the services before it, so an error carries that service's line and
/// column (an error raised after an element is read points at the list).
fn services<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Service>, D::Error> {
    struct List;
    impl<'de> de::Visitor<'de> for List {
        type Value = Vec<Service>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of services")
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Service>, A::Error> {
            let mut seen = Seen::default();
            let mut out = Vec::new();
            while let Some(s) = seq.next_element_seed(One(&mut seen))? {
                out.push(s);
            }
            Ok(out)
        }
    }
    struct One<'a>(&'a mut Seen);
    impl<'de> de::DeserializeSeed<'de> for One<'_> {
        type Value = Service;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Service, D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> de::Visitor<'de> for One<'_> {
        type Value = Service;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a service")
        }
        fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Service, A::Error> {
            let raw = RawService::deserialize(de::value::MapAccessDeserializer::new(map))?;
            let s = Service::try_from(raw).map_err(de::Error::custom)?;
            self.0.add(&s).map_err(de::Error::custom)?;
            Ok(s)
        }
    }
    d.deserialize_seq(List)
}

/// Names and listeners already taken by earlier services, each listener with the
/// service that took it.
#[derive(Default)]
struct Seen {
    names: HashSet<String>,
    listeners: HashMap<(Option<IpAddr>, u16, u8), (String, Protocol)>,
}

impl Seen {
    fn add(&mut self, s: &Service) -> Result<(), String> {
        if !self.names.insert(s.name.clone()) {
            return Err(format!("service name {:?} is used twice", s.name));
        }
        match self.listeners.entry((s.vip, s.port, s.protocol.number())) {
            Entry::Vacant(v) => {
                v.insert((s.name.clone(), s.protocol));
            }
            Entry::Occupied(o) if o.get().1.shares_listener(s.protocol) => {}
            Entry::Occupied(o) => {
                let (other, protocol) = o.get();
                return Err(format!("service {:?}: service {other:?} ({protocol}) already has this VIP, port and protocol", s.name));
            }
        }
        Ok(())
    }
}

fn positioned(path: &Path, e: &serde_yaml::Error) -> anyhow::Error {
    // serde_yaml appends " at line L column C"; we lead with it instead.
    let msg = e.to_string();
    let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
    match e.location() {
        Some(l) => anyhow::anyhow!("{}:{}:{}: {msg}", path.display(), l.line(), l.column()),
        None => anyhow::anyhow!("{}: {msg}", path.display()),
    }
}

/// A service from the command line: `[VIP:]PORT:TARGET[,TARGET...][:TARGETPORT][/tcp|/udp|/http]`,
/// with IPv6 addresses in brackets and an optional `@WEIGHT` on each target.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub vip: Option<IpAddr>,
    pub port: u16,
    pub targets: Targets,
    pub target_port: Option<u16>,
    pub protocol: Protocol,
}

/// A SPEC's backends: addresses, or one name that resolves to Docker containers
/// first, then to DNS records.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    Addresses(Vec<(IpAddr, Weight)>),
    Name(String),
}

impl Spec {
    fn to_service(&self) -> Service {
        let vip = self.vip.map(|v| v.to_string()).unwrap_or_default();
        let (backends, name) = match &self.targets {
            Targets::Addresses(list) => (
                list.iter()
                    .map(|&(address, weight)| Backend {
                        address,
                        port: self.target_port,
                        weight,
                        state: BackendState::Active,
                        backup: false,
                        down: false,
                        max_conns: None,
                    })
                    .collect(),
                None,
            ),
            Targets::Name(n) => (Vec::new(), Some(n.clone())),
        };
        Service {
            name: format!("{vip}:{}/{}", self.port, self.protocol).trim_start_matches(':').to_owned(),
            vip: self.vip,
            port: self.port,
            protocol: self.protocol,
            method: Method::default(),
            backends,
            docker: name.clone().map(|name| DockerSource { name, project: None, network: None, port: self.target_port }),
            dns: name.map(|name| DnsSource { name, port: self.target_port, interval: one_second(), server: None }),
            health: None,
            slow_start: Duration::ZERO,
            http: None,
        }
    }

    /// The port backends listen on.
    pub fn target_port(&self) -> u16 {
        self.target_port.unwrap_or(self.port)
    }
}

impl FromStr for Spec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let err = |why: &str| format!("bad SPEC {s:?}: {why} (expected [VIP:]PORT:TARGET[,TARGET...][:TARGETPORT][/tcp|/udp|/http])");
        let (body, protocol) = match s.rsplit_once('/') {
            Some((b, "tcp")) => (b, Protocol::Tcp),
            Some((b, "udp")) => (b, Protocol::Udp),
            Some((b, "http")) => (b, Protocol::Http),
            Some(_) => return Err(err("protocol must be tcp, udp or http")),
            None => (s, Protocol::Tcp),
        };
        let fields = split_fields(body).map_err(|e| err(&e))?;
        let port = |f: &str| f.parse::<u16>().ok().filter(|p| *p != 0);
        // The target list is the first field after the port that is not a number.
        let (vip, port_idx) = match fields.as_slice() {
            [first, ..] if port(first).is_some() => (None, 0),
            [first, ..] => (Some(parse_addr(first).map_err(|e| err(&e))?), 1),
            [] => return Err(err("empty")),
        };
        let listen = fields.get(port_idx).and_then(|f| port(f)).ok_or_else(|| err("missing or bad PORT"))?;
        let targets_field = fields.get(port_idx + 1).ok_or_else(|| err("missing TARGET"))?;
        let target_port = match fields.get(port_idx + 2) {
            Some(f) => Some(port(f).ok_or_else(|| err("bad TARGETPORT"))?),
            None => None,
        };
        if fields.len() > port_idx + 3 {
            return Err(err("too many fields"));
        }
        let is_name = |t: &str| t.starts_with(|c: char| c.is_ascii_alphabetic()) && !t.contains(['@', ',']) && t.parse::<IpAddr>().is_err();
        if is_name(targets_field) {
            if !targets_field.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(err("a TARGET name may hold letters, digits, '-', '_' and '.'"));
            }
            return Ok(Spec { vip, port: listen, targets: Targets::Name(targets_field.to_string()), target_port, protocol });
        }
        let targets = targets_field
            .split(',')
            .map(|t| {
                let (addr, weight) = match t.split_once('@') {
                    Some((a, w)) => {
                        let w = w.parse().map_err(|_| format!("bad weight {w:?}"))?;
                        (a, Weight::new(w)?)
                    }
                    None => (t, Weight::default()),
                };
                Ok((parse_addr(addr)?, weight))
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| err(&e))?;
        let spec = Spec { vip, port: listen, targets: Targets::Addresses(targets), target_port, protocol };
        spec.to_service().validate().map_err(|e| err(&e))?;
        Ok(spec)
    }
}

/// Splits on ':' outside brackets, so `[fd00::1]:80` is two fields.
fn split_fields(s: &str) -> Result<Vec<&str>, String> {
    let mut fields = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' if depth == 0 => return Err("unbalanced ']'".into()),
            ']' => depth -= 1,
            ':' if depth == 0 => {
                fields.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '['".into());
    }
    fields.push(&s[start..]);
    Ok(fields)
}

fn parse_addr(s: &str) -> Result<IpAddr, String> {
    let bare = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(s);
    bare.parse().map_err(|_| format!("{s:?} is not an IP address"))
}

/// Where a config came from, for reloads.
#[derive(Debug, Clone)]
pub struct Source {
    pub file: Option<PathBuf>,
    pub specs: Vec<Spec>,
    pub interface: Option<String>,
}

impl Source {
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut config = match &self.file {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if self.interface.is_some() {
            config.dataplane.interface.clone_from(&self.interface);
        }
        config.with_specs(&self.specs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> Spec {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn specs_in_the_dns_proxy_style() {
        let s = spec("80:10.0.0.2:8080");
        assert_eq!((s.vip, s.port, s.target_port, s.protocol), (None, 80, Some(8080), Protocol::Tcp));
        let s = spec("10.9.0.1:53:10.0.0.2@3,10.0.0.3/udp");
        assert_eq!(s.vip, Some("10.9.0.1".parse().unwrap()));
        let Targets::Addresses(t) = &s.targets else { panic!("{s:?}") };
        assert_eq!((t.len(), t[0].1), (2, Weight(3)));
        assert_eq!(s.protocol, Protocol::Udp);
        let s = spec("[fd00::100]:80:[fd00:1::2],[fd00:1::3]:8080");
        assert_eq!(s.vip, Some("fd00::100".parse().unwrap()));
        let Targets::Addresses(t) = &s.targets else { panic!("{s:?}") };
        assert_eq!(t[1].0, "fd00:1::3".parse::<IpAddr>().unwrap());
        assert_eq!(s.target_port, Some(8080));
        let s = spec("81:graphite:8081");
        assert_eq!((s.targets.clone(), s.target_port()), (Targets::Name("graphite".into()), 8081));
        let svc = s.to_service();
        assert_eq!(svc.docker.map(|d| d.name), Some("graphite".into()));
        assert_eq!(svc.dns.map(|d| d.name), Some("graphite".into()));
    }

    #[test]
    fn bad_specs_say_why() {
        for bad in [
            "",
            "80",
            "x:80:10.0.0.1",
            "80:10.0.0.1/sctp",
            "80:10.0.0.1:0",
            "80:10.0.0.1@0",
            "[fd00::1:80:::1",
            "10.0.0.1:80:[fd00::2]",
            "80:web/app:8080",
            "80:10.0.0.1,web",
        ] {
            let e = bad.parse::<Spec>().unwrap_err();
            assert!(e.contains("bad SPEC"), "{bad}: {e}");
        }
    }

    #[test]
    fn yaml_errors_carry_file_line_column() {
        let path = Path::new("xlb.yaml");
        let cases = [
            ("services:\n  - name: a\n    port: 80\n    colour: red\n", "xlb.yaml:4:5: services[0]: unknown field `colour`"),
            ("dataplane:\n  table_size: 65536\n", "xlb.yaml:2:15: dataplane.table_size: 65536: expected a prime"),
            ("services:\n  - name: a\n    port: 80\n    vip: 10.0.0.256\n", "xlb.yaml:4:10: services[0].vip: invalid IP address syntax"),
            ("dataplane:\n  udp_idle_timeout: 5 minutes\n", "xlb.yaml:2:21: dataplane.udp_idle_timeout: bad duration"),
            ("services:\n  - name: a\n    port: 80\n    method: fastest\n", "xlb.yaml:4:13: services[0].method: unknown variant `fastest`"),
            ("services:\n  - name: a\n    port: 80\n  - name: b\n    port: 0\n", "xlb.yaml:5:11: services[1].port: port 0: expected 1 to 65535"),
            ("services:\n  - name: a\n    port: 80\n  - name: a\n    port: 81\n", "xlb.yaml:4:5: services[1]: service name \"a\" is used twice"),
            (
                "services:\n  - name: a\n    port: 80\n  - name: b\n    port: 80\n",
                "xlb.yaml:4:5: services[1]: service \"b\": service \"a\" (tcp) already has this VIP",
            ),
            (
                "services:\n  - name: a\n    port: 80\n    protocol: http\n  - name: b\n    port: 80\n",
                "xlb.yaml:5:5: services[1]: service \"b\": service \"a\" (http) already has this VIP",
            ),
            (
                "services:\n  - name: a\n    vip: 10.0.0.1\n    port: 80\n  - name: b\n    vip: 10.0.0.1\n    port: 80\n    protocol: http\n",
                "xlb.yaml:5:5: services[1]: service \"b\": service \"a\" (tcp) already has this VIP",
            ),
            (
                "dataplane:\n  udp_idle_timeout: 99999999999999999h\n",
                "xlb.yaml:2:21: dataplane.udp_idle_timeout: bad duration \"99999999999999999h\": at most 8760h",
            ),
            ("dataplane:\n  udp_idle_timeout: 31536000001ms\n", "xlb.yaml:2:21: dataplane.udp_idle_timeout: bad duration \"31536000001ms\": at most 8760h"),
            (
                "services:\n  - name: a\n    port: 80\n    backends: [{ address: 10.0.0.1 }, { address: 10.0.0.1 }]\n",
                "xlb.yaml:2:5: services[0]: service \"a\": backend 10.0.0.1 listed twice",
            ),
            (
                "services:\n  - name: a\n    port: 80\n    backends:\n      - address: 10.0.0.1\n        weight: 0\n",
                "xlb.yaml:6:17: services[0].backends[0].weight: weight 0 out of range",
            ),
        ];
        for (text, want) in cases {
            let got = Config::parse(text, path).unwrap_err().to_string();
            assert!(got.starts_with(want), "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn a_full_config_parses() {
        let text = "dataplane:\n  interface: eth0\n  table_size: 4099\n  hash_seed: 7\n  udp_idle_timeout: 30s\nservices:\n  - name: web\n    vip: 10.0.0.100\n    port: 80\n    method: round_robin\n    backends:\n      - address: 10.1.0.2\n        port: 8080\n        weight: 2\n      - address: 10.1.0.3\n        state: draining\n";
        let c = Config::parse(text, Path::new("x")).unwrap();
        assert_eq!(c.dataplane.table_size, Prime(4099));
        assert_eq!(c.dataplane.udp_idle_timeout, Duration::from_secs(30));
        assert_eq!(c.services[0].method, Method::RoundRobin);
        assert_eq!(c.services[0].backend_port(&c.services[0].backends[1]), 80);
        assert_eq!(c.services[0].backends[1].state, BackendState::Draining);
    }

    #[test]
    fn backend_backup_down_and_max_conns() {
        let svc = |proto: &str| {
            format!(
                "services:\n  - name: a\n    port: 80\n    protocol: {proto}\n    backends:\n      - {{ address: 10.0.0.1, backup: true, down: true, max_conns: 5 }}\n      - {{ address: 10.0.0.2 }}\n"
            )
        };
        let c = Config::parse(&svc("http"), Path::new("x")).unwrap();
        let b = &c.services[0].backends;
        assert!(b[0].backup && b[0].down && b[0].max_conns == Some(5));
        assert!(!b[1].backup && !b[1].down && b[1].max_conns.is_none());
        let e = Config::parse(&svc("tcp"), Path::new("x")).unwrap_err().to_string();
        assert!(e.contains("`max_conns` needs `protocol: http`"), "{e}");
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537) && is_prime(4099) && !is_prime(65536) && !is_prime(1));
    }
}
