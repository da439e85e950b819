//! The snapshot's types: what `/api/v1/services` serves and `xlb status` reads.

use std::{collections::HashMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::acme::CertStatus;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub services: Vec<ServiceStatus>,
    /// Kernel drops by reason, summed over CPUs.
    pub drops: Vec<Drop>,
    /// The kernel's connection table, as the last expiry pass found it.
    #[serde(default)]
    pub conntrack: Conntrack,
    /// Health transitions seen since start.
    pub health_transitions: u64,
    /// Discovery updates received since start, by source.
    pub discovery_events: HashMap<String, u64>,
    /// When the snapshot was built (Unix ms): the dashboard's rates are counter differences
    /// between two snapshots over the time between them.
    #[serde(default)]
    pub taken_ms: u64,
    /// The latest health changes, oldest first (a bounded list).
    #[serde(default)]
    pub recent_health: Vec<HealthEvent>,
    /// The latest config reloads, oldest first (a bounded list).
    #[serde(default)]
    pub reloads: Vec<ReloadEvent>,
    /// TLS certificate sources: names, expiry, the last load's error.
    #[serde(default)]
    pub certificates: Vec<crate::proxy::tls::CertStatus>,
    /// Certificates ordered by ACME, by name.
    #[serde(default)]
    pub acme: Vec<CertStatus>,
    /// Access log lines dropped because its writer was behind (none: no access log).
    #[serde(default)]
    pub access_log_dropped: Option<u64>,
    /// The VIPs whose routes xlb holds in the `announce` table (none: no announce table).
    #[serde(default)]
    pub announced: Option<Announced>,
}

/// What this node announces: the routing table a daemon exports, and the VIPs in it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Announced {
    pub table: u32,
    pub vips: Vec<IpAddr>,
}

/// One backend's health change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthEvent {
    /// Unix ms.
    pub at_ms: u64,
    pub service: String,
    pub backend: String,
    pub healthy: bool,
}

/// One reload of the config (SIGHUP or the file watcher).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadEvent {
    /// Unix ms.
    pub at_ms: u64,
    /// applied, rejected (the file did not parse or fit), rolled_back (its changes could not
    /// be applied): in the last two cases the previous config kept serving.
    pub outcome: String,
    /// What was applied, or why not.
    pub detail: String,
}

/// Now, in Unix ms (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Conntrack {
    pub entries: u64,
    /// Entries the table pushed out to make room (LRU) since start: a flow that loses its
    /// entry this way may be reset or, for UDP, move.
    pub evicted: u64,
    /// Entries added to the half-open table since start (two a SYN that opened a flow):
    /// SYNs live there until their handshake completes, so a flood never evicts flows.
    #[serde(default)]
    pub half_open_created: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Drop {
    pub reason: String,
    pub packets: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: String,
    pub port: u16,
    pub protocol: String,
    pub method: String,
    /// Where backends come from: static, docker:NAME, dns:NAME.
    pub sources: Vec<String>,
    /// up (every backend healthy or a backup), degraded (some unhealthy or unroutable),
    /// down (none healthy).
    #[serde(default)]
    pub state: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// HTTP services: requests answered, xlb's own answers (404, 502...) included.
    #[serde(default)]
    pub requests: u64,
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: String,
    /// Container name, or the address for static and DNS backends.
    pub name: String,
    /// static, docker:NETWORK, dns:NAME.
    pub origin: String,
    /// healthy, unhealthy, draining, backup, down, unroutable.
    pub state: String,
    /// Why it takes no new traffic, in words (empty when healthy).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Configured weight, lower while a slow start ramps.
    pub weight: f64,
    /// Flows pinned to it in the connection table (until their idle timeout: the
    /// kernel does not track connection close); HTTP services: requests in flight.
    pub active_connections: u64,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub new_flows_per_sec: f64,
    pub bytes_per_sec: f64,
    /// HTTP services: requests it answered.
    #[serde(default)]
    pub requests: u64,
    /// Health changes seen since start (probes, Docker's verdict, passive failures).
    #[serde(default)]
    pub health_transitions: u64,
    /// HTTP services: its answers with a 5xx status.
    #[serde(default)]
    pub errors: u64,
    /// HTTP services: the seconds its answered requests took, summed (with `requests`, a
    /// mean latency over any interval).
    #[serde(default)]
    pub response_secs: f64,
}

/// A service's state from its backends' (see `ServiceStatus::state`).
pub fn service_state(backends: &[BackendStatus]) -> &'static str {
    if !backends.iter().any(|b| b.state == "healthy") {
        "down"
    } else if backends.iter().any(|b| b.state == "unhealthy" || b.state == "unroutable") {
        "degraded"
    } else {
        "up"
    }
}

/// Fills per-second rates from the previous snapshot.
pub fn rates(now: &mut Snapshot, prev: &Snapshot, elapsed_secs: f64) {
    if elapsed_secs <= 0.0 {
        return;
    }
    let before: HashMap<(&str, &str), &BackendStatus> =
        prev.services.iter().flat_map(|s| s.backends.iter().map(move |b| ((s.name.as_str(), b.address.as_str()), b))).collect();
    for s in &mut now.services {
        for b in &mut s.backends {
            if let Some(p) = before.get(&(s.name.as_str(), b.address.as_str())) {
                b.new_flows_per_sec = b.new_flows.saturating_sub(p.new_flows) as f64 / elapsed_secs;
                b.bytes_per_sec = b.bytes.saturating_sub(p.bytes) as f64 / elapsed_secs;
            }
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub(crate) fn snapshot(flows: u64) -> Snapshot {
        Snapshot {
            services: vec![ServiceStatus {
                name: "web \"a\"".into(),
                vip: "10.0.0.1".into(),
                port: 80,
                protocol: "tcp".into(),
                method: "maglev".into(),
                sources: vec!["static".into()],
                state: "up".into(),
                packets: 10,
                bytes: 1000,
                new_flows: flows,
                requests: 0,
                backends: vec![BackendStatus {
                    address: "10.1.0.2:8080".into(),
                    name: "b1".into(),
                    origin: "static".into(),
                    state: "healthy".into(),
                    reason: String::new(),
                    weight: 1.0,
                    active_connections: 2,
                    packets: 10,
                    bytes: 1000,
                    new_flows: flows,
                    new_flows_per_sec: 0.0,
                    bytes_per_sec: 0.0,
                    requests: 0,
                    health_transitions: 1,
                    errors: 0,
                    response_secs: 0.0,
                }],
            }],
            drops: vec![Drop { reason: "no_backend".into(), packets: 3 }],
            ..Default::default()
        }
    }

    #[test]
    fn rates_come_from_the_previous_snapshot() {
        let mut now = snapshot(30);
        rates(&mut now, &snapshot(10), 2.0);
        assert_eq!(now.services[0].backends[0].new_flows_per_sec, 10.0);
        assert!(now.table().contains("10.1.0.2:8080"));
    }

    #[test]
    fn the_table_leads_with_each_service_state_and_why_backends_are_out() {
        let mut s = snapshot(3);
        let b = s.services[0].backends[0].clone();
        s.services[0].backends.push(BackendStatus {
            address: "10.1.0.3:8080".into(),
            name: "b2".into(),
            state: "unhealthy".into(),
            reason: "its health probe (a TCP connect) fails".into(),
            ..b
        });
        s.services[0].state = service_state(&s.services[0].backends).into();
        let table = s.table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("SERVICE") && lines[1].starts_with("web \"a\"") && lines[1].contains("degraded") && lines[1].contains("1/2"), "{table}");
        assert_eq!(lines[2], "  10.1.0.3:8080 (b2) unhealthy: its health probe (a TCP connect) fails", "{table}");
        assert_eq!(service_state(&s.services[0].backends[1..]), "down");
        assert_eq!(service_state(&s.services[0].backends[..1]), "up");
    }
}
