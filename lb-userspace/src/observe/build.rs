//! The status snapshot, built from what the controller holds: the config, the last
//! plan, discovery, health, the kernel's counters and the proxy's.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use super::{Announced, BackendStatus, Conntrack, Drop, Reloads, ServiceStatus, Snapshot, Transitions, snapshot::service_state, unix_ms};
use crate::{
    access_log::AccessLog,
    acme::CertStatus,
    config::{BackendState, Config, HealthCheck, Service},
    dataplane::Stats,
    discovery::{Discovered, Registry},
    health::{self, Health},
    plan::{Desired, PeerState, ServiceView, WEIGHT_SCALE},
    proxy::{
        BackendCounters, Proxy,
        metrics::{Backend, Counts},
    },
};

/// What a snapshot is read from.
pub struct Inputs<'a> {
    pub config: &'a Config,
    /// The services as last written to the maps.
    pub kernel: &'a [Desired],
    /// The HTTP services as last handed to the proxy.
    pub http: &'a [ServiceView],
    pub registry: &'a Registry,
    pub health: &'a Health,
    pub stats: &'a Stats,
    pub proxy: &'a Proxy,
    /// Health changes per service and backend address.
    pub backend_transitions: &'a Transitions,
    /// Kernel backends left out of the maps, and why (no route to them, say).
    pub unroutable: &'a BTreeMap<IpAddr, String>,
    pub discovery_events: &'a HashMap<String, u64>,
    pub reloads: &'a Reloads,
    /// Each ACME name's certificate.
    pub acme: Vec<CertStatus>,
    pub access_log: Option<&'a AccessLog>,
    pub announced: Option<Announced>,
}

/// Builds the status snapshot from the config, the last plan, discovery, health
/// and the kernel's counters, and hands it to the admin endpoint.
pub fn snapshot(inp: &Inputs) -> Snapshot {
    let stats = inp.stats;
    let mut services = kernel_services(inp);
    // By name, once: a host with a thousand services must not compare every pair.
    let answered = inp.proxy.metrics().counts();
    let mut series: HashMap<&str, Vec<(&Option<Backend>, &Counts)>> = HashMap::new();
    for (name, b, c) in &answered {
        series.entry(name.as_str()).or_default().push((b, c));
    }
    let mut configured: HashMap<&str, &Service> = HashMap::new();
    for s in &inp.config.services {
        configured.entry(s.name.as_str()).or_insert(s);
    }
    let in_flight = inp.proxy.counters();
    let mut listed: HashSet<String> = services.iter().map(|s| s.name.clone()).collect();
    for v in inp.http {
        // A service with a plain and a TLS listener is one service.
        let Some(s) = configured.get(v.name.as_str()).filter(|s| !listed.contains(&s.name)) else {
            continue;
        };
        listed.insert(s.name.clone());
        let none = BackendCounters::new();
        let status = http_status(inp, s, v, series.get(v.name.as_str()).map_or(&[], Vec::as_slice), in_flight.get(&v.name).unwrap_or(&none));
        services.push(status);
    }
    Snapshot {
        services,
        drops: stats.drops.iter().map(|(r, n)| Drop { reason: (*r).to_owned(), packets: *n }).collect(),
        conntrack: Conntrack { entries: stats.conns.live, evicted: stats.conns.evicted, half_open_created: stats.conns.half_open },
        health_transitions: inp.backend_transitions.total(),
        discovery_events: inp.discovery_events.clone(),
        taken_ms: unix_ms(),
        recent_health: inp.backend_transitions.recent(),
        reloads: inp.reloads.list(),
        certificates: inp.proxy.certificates(),
        acme: inp.acme.clone(),
        access_log_dropped: inp.access_log.map(AccessLog::dropped),
        announced: inp.announced.clone(),
    }
}

/// The services the kernel balances, with their backends as the kernel, discovery and
/// health see them.
fn kernel_services(inp: &Inputs) -> Vec<ServiceStatus> {
    let stats = inp.stats;
    let mut services = Vec::new();
    for d in inp.kernel {
        let Some(s) = inp.config.services.iter().find(|s| s.name == d.name) else {
            continue;
        };
        let counters = stats.services.iter().find(|(k, _)| *k == d.key).map(|(_, c)| *c).unwrap_or_default();
        let discovered = inp.registry.backends(&s.name);
        let backends = d
            .backends
            .iter()
            .map(|b| {
                let c = stats.backends.iter().find(|x| x.service == d.key && x.addr == b.addr && x.port == b.port);
                let found = discovered.iter().find(|x| x.addr == b.addr && x.port.unwrap_or(s.port) == b.port);
                let probe = inp.health.healthy(&health::Target { service: s.name.clone(), addr: SocketAddr::new(b.addr, b.port) });
                let state = match (b.state, probe, found) {
                    _ if inp.unroutable.contains_key(&b.addr) => "unroutable",
                    (BackendState::Active, _, _) => "healthy",
                    (_, Some(false), _) => "unhealthy",
                    (_, _, Some(f)) if f.healthy == Some(false) => "unhealthy",
                    (_, _, Some(f)) if f.backup && !f.draining => "backup",
                    _ => "draining",
                };
                let counters = c.map(|c| c.counters).unwrap_or_default();
                BackendStatus {
                    address: SocketAddr::new(b.addr, b.port).to_string(),
                    name: found.map_or_else(|| b.addr.to_string(), |f| f.name.clone()),
                    origin: found.map_or_else(|| "static".to_owned(), |f| f.origin.clone()),
                    state: state.to_owned(),
                    reason: reason(inp, s, SocketAddr::new(b.addr, b.port), state, found),
                    weight: f64::from(b.weight) / f64::from(WEIGHT_SCALE),
                    active_connections: c.map_or(0, |c| c.active),
                    packets: counters.packets,
                    bytes: counters.bytes,
                    new_flows: counters.new_flows,
                    new_flows_per_sec: 0.0,
                    bytes_per_sec: 0.0,
                    requests: 0,
                    health_transitions: inp.backend_transitions.get(&s.name, SocketAddr::new(b.addr, b.port)),
                    errors: 0,
                    response_secs: 0.0,
                }
            })
            .collect::<Vec<_>>();
        services.push(ServiceStatus {
            name: s.name.clone(),
            vip: d.key.ip().to_string(),
            port: s.port,
            protocol: s.protocol.to_string(),
            method: format!("{:?}", s.method).to_lowercase(),
            sources: s.sources(),
            state: service_state(&backends).to_owned(),
            packets: counters.packets,
            bytes: counters.bytes,
            new_flows: counters.new_flows,
            requests: 0,
            backends,
        });
    }
    services
}

/// An HTTP service's status: the proxy's view of its backends, `in_flight` (its
/// requests in flight and sent, by backend name), and `answered`, its series counted
/// for `/metrics` (by backend; `None`: xlb's own answers).
fn http_status(inp: &Inputs, s: &Service, v: &ServiceView, answered: &[(&Option<Backend>, &Counts)], in_flight: &BackendCounters) -> ServiceStatus {
    let discovered = inp.registry.backends(&s.name);
    let backends = v
        .backends
        .iter()
        .map(|b| {
            let found = discovered.iter().find(|x| x.addr == b.addr.ip() && x.port.unwrap_or(s.port) == b.addr.port());
            let probe = inp.health.healthy(&health::Target { service: s.name.clone(), addr: b.addr });
            let state = match b.state {
                // Taken out by the proxy after failures (the plan leaves passive health to it).
                PeerState::Active if probe == Some(false) => "unhealthy",
                PeerState::Active if b.backup => "backup",
                PeerState::Active => "healthy",
                PeerState::Draining => "draining",
                PeerState::Down if probe == Some(false) || found.is_some_and(|f| f.healthy == Some(false)) => "unhealthy",
                PeerState::Down => "down",
            };
            let mine = || answered.iter().filter(|(r, _)| r.as_ref().is_some_and(|r| r.addr == b.addr && r.name == b.name)).map(|(_, c)| c);
            BackendStatus {
                address: b.addr.to_string(),
                name: b.name.clone(),
                origin: found.map_or_else(|| "static".to_owned(), |f| f.origin.clone()),
                state: state.to_owned(),
                reason: reason(inp, s, b.addr, state, found),
                weight: f64::from(b.weight) / f64::from(WEIGHT_SCALE),
                active_connections: in_flight.get(&b.name).map_or(0, |c| u64::from(c.0)),
                packets: 0,
                bytes: 0,
                new_flows: 0,
                new_flows_per_sec: 0.0,
                bytes_per_sec: 0.0,
                requests: mine().map(|c| c.count).sum(),
                health_transitions: inp.backend_transitions.get(&s.name, b.addr),
                errors: mine().flat_map(|c| c.codes.iter().filter(|(code, _)| **code >= 500).map(|(_, n)| n)).sum(),
                response_secs: mine().map(|c| c.sum_secs).sum(),
            }
        })
        .collect::<Vec<_>>();
    ServiceStatus {
        name: s.name.clone(),
        vip: v.listen.ip().to_string(),
        port: v.listen.port(),
        protocol: s.protocol.to_string(),
        method: v.options.method.to_string(),
        sources: s.sources(),
        state: service_state(&backends).to_owned(),
        packets: 0,
        bytes: 0,
        new_flows: 0,
        requests: answered.iter().map(|(_, c)| c.count).sum(),
        backends,
    }
}

/// Why a backend in `state` takes no new traffic, in words; empty when it does.
fn reason(inp: &Inputs, s: &Service, addr: SocketAddr, state: &str, found: Option<&Discovered>) -> String {
    let target = health::Target { service: s.name.clone(), addr };
    let configured = s.backends.iter().find(|b| b.address == addr.ip() && s.backend_port(b) == addr.port());
    let probe = match s.probes() {
        Some(HealthCheck { http: Some(path), expect_status, .. }) => format!("its health probe (GET {path}, expecting {expect_status}) fails"),
        _ => "its health probe (a TCP connect) fails".to_owned(),
    };
    match state {
        "unroutable" => format!("left out of the data plane: {}", inp.unroutable.get(&addr.ip()).map_or("no route to it", String::as_str)),
        "unhealthy" if inp.health.probed(&target) == Some(false) => probe,
        "unhealthy" if found.is_some_and(|f| f.healthy == Some(false)) => "Docker's HEALTHCHECK says unhealthy".to_owned(),
        "unhealthy" => "taken out after failed requests (passive check: http.max_fails), for http.fail_timeout".to_owned(),
        "backup" => "a backup: serves only while no other backend can".to_owned(),
        _ if state == "healthy" => String::new(),
        _ if configured.is_some_and(|b| b.down) => "down: true in the config".to_owned(),
        _ if configured.is_some_and(|b| b.state == BackendState::Draining) => "state: draining in the config: its connections finish, no new ones".to_owned(),
        _ if found.is_some_and(|f| f.draining) => "its container is stopping: its connections finish, no new ones".to_owned(),
        _ if s.probes().is_some() && inp.health.probed(&target).is_none() => "waiting for its first health probe".to_owned(),
        _ => format!("{state}: takes no new connections"),
    }
}
