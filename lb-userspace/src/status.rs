//! What xlb is doing, as one snapshot: rendered as a table (`xlb status`), as JSON
//! (`/api/v1/services`, `xlb status --json`) and as Prometheus text (`/metrics`).

use std::{collections::HashMap, fmt::Write as _};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub services: Vec<ServiceStatus>,
    /// Kernel drops by reason, summed over CPUs.
    pub drops: Vec<Drop>,
    /// Health transitions seen since start.
    pub health_transitions: u64,
    /// Discovery updates received since start, by source.
    pub discovery_events: HashMap<String, u64>,
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
    let before: HashMap<(&str, &str), &BackendStatus> = prev
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(move |b| ((s.name.as_str(), b.address.as_str()), b)))
        .collect();
    for s in &mut now.services {
        for b in &mut s.backends {
            if let Some(p) = before.get(&(s.name.as_str(), b.address.as_str())) {
                b.new_flows_per_sec = b.new_flows.saturating_sub(p.new_flows) as f64 / elapsed_secs;
                b.bytes_per_sec = b.bytes.saturating_sub(p.bytes) as f64 / elapsed_secs;
            }
        }
    }
}

impl Snapshot {
    /// The `xlb status` table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for s in &self.services {
            if s.protocol == "http" {
                let _ = writeln!(out, "{} {}:{}/{} method={} sources={} requests={}", s.name, s.vip, s.port, s.protocol, s.method, s.sources.join(","), s.requests);
                let _ = writeln!(out, "  {:<28} {:<24} {:<20} {:<10} {:>6} {:>9} {:>10}", "BACKEND", "NAME", "ORIGIN", "STATE", "WEIGHT", "IN FLIGHT", "REQUESTS");
                for b in &s.backends {
                    let _ = writeln!(out, "  {:<28} {:<24} {:<20} {:<10} {:>6.2} {:>9} {:>10}", b.address, b.name, b.origin, b.state, b.weight, b.active_connections, b.requests);
                }
                continue;
            }
            let _ = writeln!(
                out,
                "{} {}:{}/{} method={} sources={} flows={} packets={} bytes={}",
                s.name, s.vip, s.port, s.protocol, s.method, s.sources.join(","), s.new_flows, s.packets, s.bytes
            );
            let _ = writeln!(
                out,
                "  {:<28} {:<24} {:<20} {:<10} {:>6} {:>7} {:>10} {:>12} {:>10}",
                "BACKEND", "NAME", "ORIGIN", "STATE", "WEIGHT", "ACTIVE", "FLOWS/S", "BYTES/S", "FLOWS"
            );
            for b in &s.backends {
                let _ = writeln!(
                    out,
                    "  {:<28} {:<24} {:<20} {:<10} {:>6.2} {:>7} {:>10.1} {:>12.0} {:>10}",
                    b.address, b.name, b.origin, b.state, b.weight, b.active_connections, b.new_flows_per_sec, b.bytes_per_sec, b.new_flows
                );
            }
        }
        let drops: Vec<String> = self.drops.iter().map(|d| format!("{}={}", d.reason, d.packets)).collect();
        let _ = writeln!(out, "drops: {}", drops.join(" "));
        out
    }

    /// Prometheus text exposition format (version 0.0.4), with the HTTP proxy's
    /// counters (`http`, live rather than from the snapshot).
    pub fn metrics(&self, http: &crate::metrics::HttpMetrics) -> String {
        let mut m = Metrics::default();
        for s in &self.services {
            // HTTP services have no kernel counters: their traffic is in xlb_http_*.
            let kernel = s.protocol != "http";
            let l = format!("service=\"{}\",vip=\"{}\",port=\"{}\",protocol=\"{}\"", esc(&s.name), s.vip, s.port, s.protocol);
            if kernel {
                m.add("xlb_service_packets_total", "counter", "Packets from clients to the service.", &l, s.packets as f64);
                m.add("xlb_service_bytes_total", "counter", "Bytes from clients to the service.", &l, s.bytes as f64);
                m.add("xlb_service_flows_total", "counter", "New flows steered by the service.", &l, s.new_flows as f64);
            }
            for b in &s.backends {
                let l = format!("service=\"{}\",backend=\"{}\",name=\"{}\"", esc(&s.name), b.address, esc(&b.name));
                if kernel {
                    m.add("xlb_backend_packets_total", "counter", "Packets steered to the backend.", &l, b.packets as f64);
                    m.add("xlb_backend_bytes_total", "counter", "Bytes steered to the backend.", &l, b.bytes as f64);
                    m.add("xlb_backend_flows_total", "counter", "New flows steered to the backend.", &l, b.new_flows as f64);
                }
                m.add("xlb_backend_active_connections", "gauge", "Flows pinned to the backend in the connection table (HTTP services: requests in flight).", &l, b.active_connections as f64);
                m.add("xlb_backend_up", "gauge", "1 when the backend takes new flows.", &l, f64::from(u8::from(b.state == "healthy")));
                m.add("xlb_backend_health_transitions_total", "counter", "Health changes of the backend since start.", &l, b.health_transitions as f64);
            }
        }
        for d in &self.drops {
            m.add("xlb_drops_total", "counter", "Packets the kernel program dropped, by reason (no_flow and ttl_expired are left to the stack instead).", &format!("reason=\"{}\"", d.reason), d.packets as f64);
        }
        m.add("xlb_health_transitions_total", "counter", "Backend health changes, of backends gone since included.", "", self.health_transitions as f64);
        let mut sources: Vec<_> = self.discovery_events.iter().collect();
        sources.sort();
        for (source, n) in sources {
            m.add("xlb_discovery_events_total", "counter", "Discovery updates received.", &format!("source=\"{source}\""), *n as f64);
        }
        http.render(&mut m);
        m.render()
    }
}

/// Collects samples so each metric's HELP and TYPE lines come once, before its samples.
#[derive(Default)]
pub(crate) struct Metrics {
    order: Vec<&'static str>,
    families: HashMap<&'static str, (&'static str, &'static str, Vec<String>)>,
}

impl Metrics {
    fn add(&mut self, name: &'static str, kind: &'static str, help: &'static str, labels: &str, value: f64) {
        self.sample(name, kind, help, name, labels, value);
    }

    /// A sample of family `family` named `name` (a histogram's samples carry suffixes).
    pub(crate) fn sample(&mut self, family: &'static str, kind: &'static str, help: &'static str, name: &str, labels: &str, value: f64) {
        let samples = &mut self
            .families
            .entry(family)
            .or_insert_with(|| {
                self.order.push(family);
                (kind, help, Vec::new())
            })
            .2;
        let labels = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        samples.push(format!("{name}{labels} {value}"));
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        for name in &self.order {
            let (kind, help, samples) = &self.families[name];
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for s in samples {
                let _ = writeln!(out, "{s}");
            }
        }
        out
    }
}

/// A label value, escaped as the text format wants.
pub(crate) fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// An HTTP service's balancing method as the config writes it (`least_time header inflight`).
pub fn http_method(m: &crate::proxy::config::Method) -> String {
    use crate::proxy::config::{HashKey, Method, TimeMeasure, TwoBy};
    let measure = |t: &TimeMeasure| match t {
        TimeMeasure::Header => "header",
        TimeMeasure::LastByte => "last_byte",
    };
    match m {
        Method::RoundRobin => "round_robin".into(),
        Method::LeastConn => "least_conn".into(),
        Method::IpHash => "ip_hash".into(),
        Method::Random => "random".into(),
        Method::Hash { key, consistent } => {
            let key = match key {
                HashKey::Uri => "uri".into(),
                HashKey::Path => "path".into(),
                HashKey::Client => "client".into(),
                HashKey::Header(h) => format!("header:{h}"),
                HashKey::Cookie(c) => format!("cookie:{c}"),
            };
            format!("hash {key}{}", if *consistent { " consistent" } else { "" })
        }
        Method::RandomTwo { by: TwoBy::LeastConn } => "random two least_conn".into(),
        Method::RandomTwo { by: TwoBy::LeastTime(t) } => format!("random two least_time={}", measure(t)),
        Method::LeastTime { measure: t, inflight } => format!("least_time {}{}", measure(t), if *inflight { " inflight" } else { "" }),
        Method::PeakEwma { decay } => format!("peak_ewma decay={}s", decay.as_secs_f64()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(flows: u64) -> Snapshot {
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
    fn metrics_are_prometheus_text() {
        let text = snapshot(5).metrics(&crate::metrics::HttpMetrics::default());
        assert!(text.contains("# TYPE xlb_backend_flows_total counter\n"), "{text}");
        assert!(text.contains("xlb_backend_flows_total{service=\"web \\\"a\\\"\",backend=\"10.1.0.2:8080\",name=\"b1\"} 5\n"), "{text}");
        assert!(text.contains("xlb_drops_total{reason=\"no_backend\"} 3\n"), "{text}");
        assert!(text.contains("xlb_backend_health_transitions_total{service=\"web \\\"a\\\"\",backend=\"10.1.0.2:8080\",name=\"b1\"} 1\n"), "{text}");
        assert_eq!(text.matches("# HELP xlb_backend_up").count(), 1);
    }

    #[test]
    fn http_methods_read_as_written() {
        for text in ["round_robin", "hash header:x-user consistent", "random two least_time=last_byte", "least_time header inflight", "peak_ewma decay=5s"] {
            let m: crate::proxy::config::Method = text.parse().unwrap();
            assert_eq!(http_method(&m), text);
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
