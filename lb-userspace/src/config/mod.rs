//! The one config model behind the CLI SPECs and `xlb.yaml`.
//!
//! Values are checked while they are deserialized, so serde_yaml can name the line
//! and column of a bad one; unknown keys are rejected the same way.

pub mod access_log;
pub mod acme;
mod announce;
pub mod http;
mod service;
mod socket_lb;
mod spec;
pub mod tls;
pub mod units;

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

pub use announce::Announce;
use anyhow::{Context as _, bail};
use serde::{Deserialize, Deserializer, de};
use service::RawService;
pub use service::{Backend, BackendState, DnsSource, DockerSource, Forwarding, HealthCheck, Method, Protocol, Service};
pub use socket_lb::{SocketLb, Switch};
pub use spec::{Spec, Targets};
use units::duration;
pub use units::{MAX_DURATION, Positive, Prime, Weight, is_prime, parse_duration};

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub dataplane: Dataplane,
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub tls: tls::Tls,
    #[serde(default, deserialize_with = "services")]
    pub services: Vec<Service>,
    /// Automatic certificates; absent: none are ordered.
    pub acme: Option<acme::Acme>,
    /// VIP routes for a routing daemon to announce; absent: none are written.
    pub announce: Option<Announce>,
    /// Absent: no access log.
    pub access_log: Option<access_log::AccessLog>,
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
    /// How long the flows of a backend removed from its service (by a reload, DNS or
    /// Docker) may go on there before they are cut: they end on the backend they began
    /// on, but not never.
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
    /// Socket-level balancing for local callers (fixed at start).
    pub socket_lb: SocketLb,
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
            drain_timeout: Duration::from_secs(5 * 60),
            socket_lb: SocketLb::default(),
        }
    }
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

    /// Every certificate the TLS listeners serve: `tls:`'s files and directory, then those
    /// ACME keeps (`acme.state_dir/certs`).
    pub fn certificate_files(&self) -> Vec<tls::CertFiles> {
        let mut files = self.tls.files();
        files.extend(self.acme.iter().flat_map(|a| tls::directory_pairs(&a.certs_dir())));
        files
    }

    /// The certificate directories, whose changes (a pair added or removed) reload them.
    pub fn certificate_dirs(&self) -> Vec<PathBuf> {
        self.tls.directory.iter().cloned().chain(self.acme.iter().map(acme::Acme::certs_dir)).collect()
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
    listeners: HashMap<(Option<IpAddr>, u16, u8), (String, Protocol, bool)>,
}

impl Seen {
    fn add(&mut self, s: &Service) -> Result<(), String> {
        if !self.names.insert(s.name.clone()) {
            return Err(format!("service name {:?} is used twice", s.name));
        }
        for (port, tls) in s.listeners() {
            match self.listeners.entry((s.vip, port, s.protocol.number())) {
                Entry::Vacant(v) => {
                    v.insert((s.name.clone(), s.protocol, tls));
                }
                Entry::Occupied(o) if o.get().1.shares_listener(s.protocol) && o.get().2 == tls => {}
                Entry::Occupied(o) => {
                    let (other, protocol, other_tls) = o.get();
                    let what = if *other_tls != tls && o.get().1 == s.protocol { format!(" (port {port}: one with TLS, one without)") } else { String::new() };
                    return Err(format!("service {:?}: service {other:?} ({protocol}) already has this VIP, port and protocol{what}", s.name));
                }
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

/// Where a config came from, for reloads.
#[derive(Debug, Clone)]
pub struct Source {
    pub file: Option<PathBuf>,
    pub specs: Vec<Spec>,
    pub interface: Option<String>,
    /// `xlb run --socket-lb`: overrides `dataplane.socket_lb.enabled`.
    pub socket_lb: Option<Switch>,
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
        if let Some(switch) = self.socket_lb {
            config.dataplane.socket_lb.enabled = switch;
        }
        config.with_specs(&self.specs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                "services:\n  - name: a\n    port: 443\n    protocol: http\n  - name: b\n    port: 80\n    protocol: http\n    http: { tls: {} }\n",
                "xlb.yaml:5:5: services[1]: service \"b\": service \"a\" (http) already has this VIP, port and protocol (port 443: one with TLS, one without)",
            ),
            (
                "tls:\n  certificates:\n    - { cert: a.pem, key: a.key, default: true }\n    - { cert: b.pem, key: b.key, default: true }\nservices: []\n",
                "xlb.yaml:2:3: tls: more than one certificate has `default: true`",
            ),
            ("services:\n  - name: a\n    port: 80\n    protocol: http\n    http: { tls: { hsts: forever } }\n", "xlb.yaml:5:26: services[0].http.tls.hsts: bad duration"),
            (
                "services:\n  - name: a\n    port: 443\n    protocol: http\n    http: { tls: { port: 443, passthrough: true } }\n",
                "xlb.yaml:2:5: services[0]: service \"a\": `http.tls.passthrough` routes by the ClientHello's server name: give `http.hosts`",
            ),
            (
                "services:\n  - name: a\n    port: 80\n    protocol: http\n    http: { hosts: [a.test], tls: { passthrough: true } }\n",
                "xlb.yaml:2:5: services[0]: service \"a\": with `http.tls.passthrough` the backends speak TLS, so plain HTTP on port 80 could only redirect: set `http.tls.redirect: true`, or `http.tls.port: 80`",
            ),
            (
                "services:\n  - name: a\n    port: 80\n    backends: [{ address: 10.0.0.1 }, { address: 10.0.0.1 }]\n",
                "xlb.yaml:2:5: services[0]: service \"a\": backend 10.0.0.1 listed twice",
            ),
            ("access_log:\n  format: apache\n", "xlb.yaml:2:11: access_log.format: unknown variant `apache`"),
            ("access_log:\n  path: \"\"\n", "xlb.yaml:2:9: access_log.path: an empty path"),
            ("access_log:\n  buffer: 0\n", "xlb.yaml:2:11: access_log.buffer: buffer 0: expected 1 to 1048576 lines"),
            (
                "services:\n  - name: a\n    port: 80\n    backends:\n      - address: 10.0.0.1\n        weight: 0\n",
                "xlb.yaml:6:17: services[0].backends[0].weight: weight 0 out of range",
            ),
            ("announce:\n  table: 254\n", "xlb.yaml:2:10: announce.table: table 254 is one of the kernel's own"),
            ("announce:\n  table: 0\n", "xlb.yaml:2:10: announce.table: table 0: expected a table number of 1 or more"),
            ("announce:\n  tabel: 100\n", "xlb.yaml:2:3: announce: unknown field `tabel`"),
            ("services:\n  - name: a\n    port: 80\n    forwarding: dsr\n", "xlb.yaml:4:17: services[0].forwarding: unknown variant `dsr`"),
            (
                "services:\n  - name: a\n    port: 80\n    method: round_robin\n    forwarding: tunnel\n",
                "xlb.yaml:2:5: services[0]: service \"a\": `forwarding: tunnel` needs method maglev or source_hash",
            ),
            (
                "services:\n  - name: a\n    port: 80\n    forwarding: direct\n    backends: [{ address: 10.0.0.1, port: 8080 }]\n",
                "xlb.yaml:2:5: services[0]: service \"a\": backend 10.0.0.1: `forwarding: direct` leaves the port as the client sent it",
            ),
            (
                "services:\n  - name: a\n    vip: fd00::1\n    port: 80\n    forwarding: tunnel\n",
                "xlb.yaml:2:5: services[0]: service \"a\": `forwarding: tunnel` is IPv4 only (IPIP), fd00::1 is IPv6",
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
    fn announce_and_forwarding_modes() {
        let text = "announce: { table: 100 }\nservices:\n  - { name: a, vip: 10.0.0.1, port: 80, forwarding: tunnel }\n  - { name: b, port: 81 }\n  - { name: c, vip: fd00::1, port: 80, forwarding: direct, backends: [{ address: \"fd00::2\", port: 80 }] }\n";
        let c = Config::parse(text, Path::new("x")).unwrap();
        assert_eq!(c.announce, Some(Announce { table: 100 }));
        let modes: Vec<Forwarding> = c.services.iter().map(|s| s.forwarding).collect();
        assert_eq!(modes, [Forwarding::Tunnel, Forwarding::Nat, Forwarding::Direct]);
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
    fn the_access_log_is_off_unless_configured() {
        assert_eq!(Config::parse("services: []\n", Path::new("x")).unwrap().access_log, None);
        let on = Config::parse("access_log: {}\n", Path::new("x")).unwrap().access_log.unwrap();
        assert_eq!((on.path, on.format, on.l4_sample), (None, access_log::Format::Combined, 1));
        let json = Config::parse("access_log: { path: /var/log/xlb.log, format: json, l4_sample: 10 }\n", Path::new("x")).unwrap().access_log.unwrap();
        assert_eq!((json.path, json.format, json.l4_sample), (Some(PathBuf::from("/var/log/xlb.log")), access_log::Format::Json, 10));
        assert_eq!(Config::parse("access_log: { path: \"-\" }\n", Path::new("x")).unwrap().access_log.unwrap().path, None);
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537) && is_prime(4099) && !is_prime(65536) && !is_prime(1));
    }
}
