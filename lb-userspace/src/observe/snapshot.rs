//! The snapshot's types: what `/api/v1/services` serves and `xlb status` reads.

use std::collections::HashMap;

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
    /// Certificates ordered by ACME, by name.
    #[serde(default)]
    pub acme: Vec<CertStatus>,
    /// TLS certificate sources: names, expiry, the last load's error.
    #[serde(default)]
    pub certificates: Vec<crate::proxy::tls::CertStatus>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Conntrack {
    pub entries: u64,
    /// Entries the table pushed out to make room (LRU) since start: a flow that loses its
    /// entry this way may be reset or, for UDP, move.
    pub evicted: u64,
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
    /// healthy, unhealthy, draining, backup.
    pub state: String,
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
                packets: 10,
                bytes: 1000,
                new_flows: flows,
                requests: 0,
                backends: vec![BackendStatus {
                    address: "10.1.0.2:8080".into(),
                    name: "b1".into(),
                    origin: "static".into(),
                    state: "healthy".into(),
                    weight: 1.0,
                    active_connections: 2,
                    packets: 10,
                    bytes: 1000,
                    new_flows: flows,
                    new_flows_per_sec: 0.0,
                    bytes_per_sec: 0.0,
                    requests: 0,
                    health_transitions: 1,
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
}
