//! What the data plane should hold, from the config, the discovered backends and
//! their health: one place that decides every backend's state and weight.

mod http;
mod kernel;

pub use http::{BackendView, PeerState, ServiceView};
pub use kernel::{Desired, DesiredBackend};

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::bail;

use lb_common::ServiceKey;

use crate::{
    config::{BackendState, Config, Forwarding, Service, http::HostPattern},
    discovery::{Registry, TlsLabels},
    netdev,
};

/// Weights are scaled so slow start can ramp in small steps.
pub const WEIGHT_SCALE: u32 = 100;

/// What is known of one backend's health and age.
#[derive(Debug, Clone, Copy, Default)]
pub struct Vitals {
    /// Active probe verdict; `None` until the first probe (or when none is configured).
    pub probe: Option<bool>,
    /// Since when the backend has been serving (healthy, or first seen).
    pub since: Option<Instant>,
}

/// The result of a plan: the services the kernel steers, those the HTTP proxy serves,
/// and whether a weight is still ramping up (the caller re-plans until none is).
pub struct Plan {
    pub services: Vec<Desired>,
    pub http: Vec<ServiceView>,
    pub ramping: bool,
}

/// Resolves every configured service. `vitals` answers for (service name, backend).
pub fn plan(config: &Config, iface: &str, registry: &Registry, now: Instant, vitals: impl Fn(&str, SocketAddr) -> Vitals) -> anyhow::Result<Plan> {
    let mut plan = Plan { services: Vec::new(), http: Vec::new(), ramping: false };
    // Parsing tells listeners apart as written; only here is a missing VIP the interface's.
    let mut listeners: HashMap<(IpAddr, u16, u8), &Service> = HashMap::new();
    for s in &config.services {
        let vip = vip(s, iface, registry)?;
        match listeners.entry((vip, s.port, s.protocol.number())) {
            Entry::Occupied(o) if !o.get().protocol.shares_listener(s.protocol) => bail!(
                "services {:?} ({}) and {:?} ({}) both take {vip} port {} (a service without a VIP takes the address of {iface})",
                o.get().name,
                o.get().protocol,
                s.name,
                s.protocol,
                s.port
            ),
            Entry::Occupied(_) => {}
            Entry::Vacant(v) => {
                v.insert(s);
            }
        }
        let (backends, ramp) = backends(s, registry, now, &vitals);
        plan.ramping |= ramp;
        if let Some(b) = backends.iter().find(|b| b.addr.ip().is_ipv4() != vip.is_ipv4()) {
            bail!("service {:?}: backend {} is not of the VIP's family ({vip})", s.name, b.addr);
        }
        if s.forwarding == Forwarding::Tunnel && vip.is_ipv6() {
            bail!("service {:?}: `forwarding: tunnel` is IPv4 only, its VIP is {vip} (the address of {iface})", s.name);
        }
        match s.http_options() {
            Some(options) => plan.http.extend(http::views(s, vip, options, backends.into_iter().map(Planned::into_view).collect(), config.tls.port)),
            None => plan.services.push(Desired {
                name: s.name.clone(),
                key: ServiceKey::new(vip, s.port, s.protocol.number()),
                method: s.method,
                socket_lb: s.socket_lb && registry.backends(&s.name).iter().all(|d| d.socket_lb),
                forwarding: s.forwarding,
                backends: backends.iter().map(Planned::to_kernel).collect(),
            }),
        }
    }
    Ok(plan)
}

/// One backend's decided state, before it is shaped for the kernel or the proxy.
struct Planned {
    name: String,
    addr: SocketAddr,
    weight: u32,
    backup: bool,
    /// Takes new flows (the kernel's view: a backup only while no primary is up).
    takes_new: bool,
    /// Stopping or drained by the operator: finishes what it has.
    draining: bool,
    /// Taken out by the operator (`down`): nothing new, not even pinned requests.
    down: bool,
    /// A probe or Docker's health check says it fails.
    unhealthy: bool,
    max_conns: Option<u32>,
    /// Pinning names besides `name` (hostname, `xlb.name`), for the HTTP proxy.
    aliases: Vec<String>,
    /// Host names it serves (`xlb.host`), for the HTTP proxy.
    hosts: Vec<HostPattern>,
    /// What its labels ask of TLS (`xlb.tls`, `xlb.upstream`).
    tls: TlsLabels,
}

impl Planned {
    fn to_kernel(&self) -> DesiredBackend {
        DesiredBackend {
            addr: self.addr.ip(),
            port: self.addr.port(),
            weight: self.weight,
            state: if self.takes_new { BackendState::Active } else { BackendState::Draining },
        }
    }

    /// The proxy fails over to backups per request, so it gets the facts, not the
    /// kernel's verdict.
    fn into_view(self) -> BackendView {
        let state = if self.down {
            PeerState::Down
        } else if self.draining {
            PeerState::Draining
        } else if self.unhealthy {
            PeerState::Down
        } else {
            PeerState::Active
        };
        BackendView {
            name: self.name,
            aliases: self.aliases,
            hosts: self.hosts,
            addr: self.addr,
            weight: self.weight,
            backup: self.backup,
            state,
            max_conns: self.max_conns,
            tls: self.tls,
        }
    }
}

fn vip(s: &Service, iface: &str, registry: &Registry) -> anyhow::Result<IpAddr> {
    if let Some(v) = s.vip {
        return Ok(v);
    }
    let first = s.backends.first().map(|b| b.address).or_else(|| registry.backends(&s.name).first().map(|d| d.addr));
    netdev::first_address(iface, first.is_some_and(|a| a.is_ipv6()))
}

/// A backend before its state is decided.
struct Candidate {
    name: String,
    addr: SocketAddr,
    weight: u32,
    backup: bool,
    draining: bool,
    down: bool,
    max_conns: Option<u32>,
    /// Docker's HEALTHCHECK verdict.
    docker_healthy: Option<bool>,
    aliases: Vec<String>,
    hosts: Vec<HostPattern>,
    tls: TlsLabels,
}

fn backends(s: &Service, registry: &Registry, now: Instant, vitals: &impl Fn(&str, SocketAddr) -> Vitals) -> (Vec<Planned>, bool) {
    let mut seen = HashSet::new();
    let statics = s.backends.iter().map(|b| Candidate {
        name: b.address.to_string(),
        addr: SocketAddr::new(b.address, s.backend_port(b)),
        weight: b.weight.0,
        backup: b.backup,
        draining: b.state == BackendState::Draining,
        down: b.down,
        max_conns: b.max_conns,
        docker_healthy: None,
        aliases: Vec::new(),
        hosts: Vec::new(),
        tls: TlsLabels::default(),
    });
    let discovered = registry.backends(&s.name).iter().map(|d| Candidate {
        name: d.name.clone(),
        addr: SocketAddr::new(d.addr, d.port.unwrap_or(s.port)),
        weight: d.weight,
        backup: d.backup,
        draining: d.draining,
        down: false,
        max_conns: None,
        docker_healthy: d.healthy,
        aliases: d.aliases.clone(),
        hosts: host_patterns(&d.name, &d.hosts),
        tls: d.tls.clone(),
    });
    // A static entry wins over a discovered one for the same address.
    let candidates: Vec<(Candidate, Vitals)> = statics
        .chain(discovered)
        .filter(|c| seen.insert(c.addr))
        .map(|c| {
            let v = vitals(&s.name, c.addr);
            (c, v)
        })
        .collect();
    // With probes configured, a backend serves once its first probe passed: a container
    // just started may not listen yet.
    let probed = s.probes().is_some();
    let probe_ok = |v: &Vitals| {
        if probed { v.probe == Some(true) } else { v.probe != Some(false) }
    };
    let healthy = |c: &Candidate, v: &Vitals| c.docker_healthy != Some(false) && probe_ok(v);
    let usable = |c: &Candidate, v: &Vitals| !c.draining && !c.down && healthy(c, v);
    let primary_up = candidates.iter().any(|(c, v)| !c.backup && usable(c, v));
    let mut ramping = false;
    let out = candidates
        .into_iter()
        .map(|(c, v)| {
            // Not usable, or a backup while a primary is up: no new flows, but the
            // flows it has continue (a failed probe may be a blip; a stop drains).
            let takes_new = usable(&c, &v) && (!c.backup || !primary_up);
            let weight = ramp(c.weight, s.slow_start, v.since, now);
            ramping |= takes_new && weight < c.weight * WEIGHT_SCALE;
            Planned {
                takes_new,
                unhealthy: !healthy(&c, &v),
                draining: c.draining,
                down: c.down,
                max_conns: c.max_conns,
                name: c.name,
                addr: c.addr,
                weight,
                backup: c.backup,
                aliases: c.aliases,
                hosts: c.hosts,
                tls: c.tls,
            }
        })
        .collect();
    (out, ramping)
}

/// A container's `xlb.host` names as routes; a name that is not a host is left out.
fn host_patterns(backend: &str, names: &[String]) -> Vec<HostPattern> {
    names.iter().filter_map(|n| n.parse().map_err(|e| tracing::debug!(backend, "xlb.host ignored: {e}")).ok()).collect()
}

/// Slow start: the weight grows linearly from 1% to 100% over `period` after `since`.
fn ramp(weight: u32, period: Duration, since: Option<Instant>, now: Instant) -> u32 {
    let full = weight * WEIGHT_SCALE;
    match since {
        Some(t) if !period.is_zero() && now.duration_since(t) < period => {
            let frac = now.duration_since(t).as_secs_f64() / period.as_secs_f64();
            ((full as f64 * frac) as u32).max(1)
        }
        _ => full,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{
        config::http::{Protocol, UpstreamOptions},
        discovery::{Discovered, SourceKind, Update},
    };

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("t.yaml")).unwrap()
    }

    fn discovered(addr: &str, backup: bool, draining: bool, healthy: Option<bool>) -> Discovered {
        Discovered {
            addr: addr.parse().unwrap(),
            port: None,
            weight: 1,
            backup,
            name: addr.into(),
            aliases: vec![],
            hosts: vec![],
            tls: TlsLabels::default(),
            draining,
            healthy,
            origin: "test".into(),
            socket_lb: true,
        }
    }

    /// A registry in which the Docker source found `backends` for `service`.
    fn docker(service: &str, backends: Vec<Discovered>) -> Registry {
        let mut r = Registry::default();
        r.apply(Update { service: service.into(), source: SourceKind::Docker, backends });
        r
    }

    fn states(p: &Plan) -> Vec<(String, BackendState, u32)> {
        p.services[0].backends.iter().map(|b| (format!("{}:{}", b.addr, b.port), b.state, b.weight)).collect()
    }

    const PASSED: Vitals = Vitals { probe: Some(true), since: None };

    const SVC: &str = "services:\n  - name: api\n    vip: 10.0.0.1\n    port: 80\n    docker: { name: api }\n";

    /// A service without a VIP takes the interface's address, so it collides with one that
    /// names that address: rejected, as is TCP beside HTTP there; HTTP beside HTTP shares.
    #[test]
    fn services_resolving_to_one_listener_are_rejected() {
        let svc = |name: &str, vip: &str, protocol: &str| {
            let vip = if vip.is_empty() { String::new() } else { format!("    vip: {vip}\n") };
            format!("  - name: {name}\n{vip}    port: 80\n    protocol: {protocol}\n    backends: [{{ address: 127.0.0.2 }}]\n")
        };
        let plan_of = |services: &[String]| {
            let c = config(&format!("services:\n{}", services.concat()));
            plan(&c, "lo", &Registry::default(), Instant::now(), |_, _| Vitals::default()).map(|p| (p.services.len(), p.http.len()))
        };
        let e = plan_of(&[svc("a", "", "tcp"), svc("b", "127.0.0.1", "tcp")]).unwrap_err().to_string();
        assert_eq!(e, "services \"a\" (tcp) and \"b\" (tcp) both take 127.0.0.1 port 80 (a service without a VIP takes the address of lo)");
        let e = plan_of(&[svc("a", "127.0.0.1", "http"), svc("b", "", "tcp")]).unwrap_err().to_string();
        assert!(e.starts_with("services \"a\" (http) and \"b\" (tcp) both take 127.0.0.1 port 80"), "{e}");
        assert_eq!(plan_of(&[svc("a", "", "http"), svc("b", "127.0.0.1", "http")]).unwrap(), (0, 2));
        assert_eq!(plan_of(&[svc("a", "", "tcp"), svc("b", "127.0.0.1", "udp")]).unwrap(), (2, 0));
    }

    /// Socket balancing per service: the config's switch, and any container's label.
    #[test]
    fn socket_lb_follows_the_config_and_the_containers() {
        let socket_lb = |text: &str, label_off: bool| {
            let d = Discovered { socket_lb: !label_off, ..discovered("10.1.0.1", false, false, None) };
            let r = docker("api", vec![d, discovered("10.1.0.2", false, false, None)]);
            plan(&config(text), "lo", &r, Instant::now(), |_, _| PASSED).unwrap().services[0].socket_lb
        };
        assert!(socket_lb(SVC, false));
        assert!(!socket_lb(SVC, true));
        assert!(!socket_lb(&format!("{SVC}    socket_lb: false\n"), false));
    }

    #[test]
    fn backups_serve_only_when_no_primary_is_up() {
        let c = config(SVC);
        let r = docker("api", vec![discovered("10.1.0.1", false, false, None), discovered("10.1.0.2", true, false, None)]);
        // Containers get a TCP probe by default: none serves before its first pass.
        let p = plan(&c, "lo", &r, Instant::now(), |_, _| Vitals::default()).unwrap();
        assert_eq!(states(&p).iter().map(|s| s.1).collect::<Vec<_>>(), [BackendState::Draining, BackendState::Draining]);
        let p = plan(&c, "lo", &r, Instant::now(), |_, _| PASSED).unwrap();
        assert_eq!(states(&p).iter().map(|s| s.1).collect::<Vec<_>>(), [BackendState::Active, BackendState::Draining]);
        let p = plan(&c, "lo", &r, Instant::now(), |_, a| Vitals { probe: Some(a.ip().to_string() != "10.1.0.1"), since: None }).unwrap();
        assert_eq!(states(&p).iter().map(|s| s.1).collect::<Vec<_>>(), [BackendState::Draining, BackendState::Active]);
    }

    #[test]
    fn stopping_or_unhealthy_containers_drain() {
        let c = config(SVC);
        let r = docker(
            "api",
            vec![discovered("10.1.0.1", false, true, None), discovered("10.1.0.2", false, false, Some(false)), discovered("10.1.0.3", false, false, Some(true))],
        );
        let p = plan(&c, "lo", &r, Instant::now(), |_, _| PASSED).unwrap();
        let s: Vec<_> = states(&p).into_iter().map(|s| s.1).collect();
        assert_eq!(s, [BackendState::Draining, BackendState::Draining, BackendState::Active]);
    }

    #[test]
    fn slow_start_ramps_weights() {
        let c = config("services:\n  - name: api\n    vip: 10.0.0.1\n    port: 80\n    slow_start: 10s\n    backends: [{ address: 10.1.0.1, weight: 2 }]\n");
        let t0 = Instant::now();
        let at = |secs| {
            let p = plan(&c, "lo", &Registry::default(), t0 + Duration::from_secs(secs), |_, _| Vitals { probe: None, since: Some(t0) }).unwrap();
            (states(&p)[0].2, p.ramping)
        };
        assert_eq!(at(0), (1, true));
        assert_eq!(at(5), (100, true));
        assert_eq!(at(10), (200, false));
    }

    #[test]
    fn container_hosts_reach_the_http_view() {
        let c = config("services:\n  - name: api\n    vip: 10.0.0.1\n    port: 80\n    protocol: http\n    docker: { name: api }\n");
        let mut d = discovered("10.1.0.1", false, false, None);
        d.hosts = vec!["api.app.dev".into(), "not a host".into(), "*.eu.app.dev".into()];
        let r = docker("api", vec![d]);
        let p = plan(&c, "lo", &r, Instant::now(), |_, _| PASSED).unwrap();
        assert!(p.services.is_empty());
        let want: Vec<HostPattern> = ["api.app.dev", "*.eu.app.dev"].iter().map(|h| h.parse().unwrap()).collect();
        assert_eq!(p.http[0].backends[0].hosts, want);
    }

    #[test]
    fn tls_views_from_the_service_and_from_labels() {
        let c = config("services:\n  - name: a\n    vip: 10.0.0.1\n    port: 80\n    protocol: http\n    http: { tls: { port: 8443, redirect: true } }\n  - name: b\n    vip: 10.0.0.2\n    port: 80\n    protocol: http\n    docker: { name: b }\n    http: { hosts: [b.dev] }\n");
        let mut labelled = discovered("10.1.0.1", false, false, None);
        (labelled.hosts, labelled.tls.serve) = (vec!["secure.b.dev".into()], true);
        let plain = discovered("10.1.0.2", false, false, None);
        let r = docker("b", vec![labelled, plain]);
        let p = plan(&c, "lo", &r, Instant::now(), |_, _| PASSED).unwrap();
        let views: Vec<(&str, String, bool, Option<u16>, usize)> = p.http.iter().map(|v| (v.name.as_str(), v.listen.to_string(), v.tls, v.redirect, v.backends.len())).collect();
        assert_eq!(
            views,
            [("a", "10.0.0.1:80".into(), false, Some(8443), 0), ("a", "10.0.0.1:8443".into(), true, None, 0), ("b", "10.0.0.2:80".into(), false, None, 2), ("b", "10.0.0.2:443".into(), true, None, 1)]
        );
        assert!(p.http[3].options.hosts.is_empty(), "the label's TLS view serves the labelled hosts alone");
    }

    #[test]
    fn passthrough_and_upstream_from_labels() {
        let c = config("services:\n  - name: b\n    vip: 10.0.0.2\n    port: 80\n    protocol: http\n    docker: { name: b }\n    http: { hosts: [b.dev] }\n");
        let mut r = Registry::default();
        let mut pass = discovered("10.1.0.1", false, false, None);
        (pass.hosts, pass.tls.serve, pass.tls.passthrough) = (vec!["vault.b.dev".into()], true, true);
        let mut h2 = discovered("10.1.0.2", false, false, None);
        h2.tls.upstream = Some(UpstreamOptions { protocol: Protocol::H2c, tls: None });
        r.apply(Update { service: "b".into(), source: SourceKind::Docker, backends: vec![pass, h2] });
        let p = plan(&c, "lo", &r, Instant::now(), |_, _| PASSED).unwrap();
        let views: Vec<(String, bool, Vec<String>)> =
            p.http.iter().map(|v| (v.listen.to_string(), v.tls, v.backends.iter().map(|b| b.name.clone()).collect())).collect();
        assert_eq!(
            views,
            [("10.0.0.2:80".into(), false, vec!["10.1.0.2".into()]), ("10.0.0.2:443".into(), true, vec!["10.1.0.1".into()])],
            "the passthrough container is on the TLS port alone"
        );
        assert!(p.http[1].options.tls.as_ref().is_some_and(|t| t.passthrough && t.port == 443));
        assert_eq!(p.http[0].options.upstream.protocol, Protocol::H2c, "a container's xlb.upstream is the service's");
    }

    #[test]
    fn container_aliases_reach_the_http_view_and_statics_have_none() {
        let c = config(
            "services:\n  - name: api\n    vip: 10.0.0.1\n    port: 80\n    protocol: http\n    docker: { name: api }\n    backends: [{ address: 10.1.0.9 }]\n",
        );
        let mut d = discovered("10.1.0.1", false, false, None);
        d.name = "api-1".into();
        d.aliases = vec!["app2".into(), "host-2".into()];
        let r = docker("api", vec![d]);
        let p = plan(&c, "lo", &r, Instant::now(), |_, _| PASSED).unwrap();
        let v: Vec<_> = p.http[0].backends.iter().map(|b| (b.name.as_str(), b.aliases.clone())).collect();
        assert_eq!(v, [("10.1.0.9", vec![]), ("api-1", vec!["app2".to_string(), "host-2".to_string()])]);
    }

    #[test]
    fn static_backup_down_and_max_conns() {
        let c = config(
            "services:\n  - name: api\n    vip: 10.0.0.1\n    port: 80\n    protocol: http\n    backends:\n      - { address: 10.1.0.1, max_conns: 3 }\n      - { address: 10.1.0.2, down: true }\n      - { address: 10.1.0.3, backup: true }\n",
        );
        let p = plan(&c, "lo", &Registry::default(), Instant::now(), |_, _| Vitals::default()).unwrap();
        let v: Vec<_> = p.http[0].backends.iter().map(|b| (b.state, b.backup, b.max_conns)).collect();
        assert_eq!(v, [(PeerState::Active, false, Some(3)), (PeerState::Down, false, None), (PeerState::Active, true, None)]);
        // The kernel's view of the same: down and an idle backup take no new flows.
        let c = config(
            "services:\n  - name: api\n    vip: 10.0.0.1\n    port: 80\n    backends:\n      - { address: 10.1.0.1, down: true }\n      - { address: 10.1.0.2, backup: true }\n      - { address: 10.1.0.3 }\n",
        );
        let p = plan(&c, "lo", &Registry::default(), Instant::now(), |_, _| Vitals::default()).unwrap();
        assert_eq!(states(&p).iter().map(|s| s.1).collect::<Vec<_>>(), [BackendState::Draining, BackendState::Draining, BackendState::Active]);
        let c = config(
            "services:\n  - name: api\n    vip: 10.0.0.1\n    port: 80\n    backends:\n      - { address: 10.1.0.1, down: true }\n      - { address: 10.1.0.2, backup: true }\n",
        );
        let p = plan(&c, "lo", &Registry::default(), Instant::now(), |_, _| Vitals::default()).unwrap();
        assert_eq!(
            states(&p).iter().map(|s| s.1).collect::<Vec<_>>(),
            [BackendState::Draining, BackendState::Active],
            "the backup serves while the primary is down"
        );
    }

    #[test]
    fn static_entries_win_and_ports_default() {
        let c = config(
            "services:\n  - name: api\n    vip: 10.0.0.1\n    port: 80\n    docker: { name: api }\n    backends: [{ address: 10.1.0.1, port: 8080, state: draining }]\n",
        );
        let mut d = discovered("10.1.0.1", false, false, None);
        d.port = Some(8080);
        let r = docker("api", vec![d, discovered("10.1.0.2", false, false, None)]);
        let p = plan(&c, "lo", &r, Instant::now(), |_, _| PASSED).unwrap();
        assert_eq!(states(&p), [("10.1.0.1:8080".to_string(), BackendState::Draining, 100), ("10.1.0.2:80".to_string(), BackendState::Active, 100)]);
    }
}
