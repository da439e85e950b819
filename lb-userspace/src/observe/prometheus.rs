//! `/metrics`: the snapshot and the proxy's live HTTP counters as Prometheus text.

use std::{collections::HashMap, fmt::Write as _};

use super::Snapshot;
use crate::proxy::metrics::{BUCKETS, Backend, HttpMetrics};

impl Snapshot {
    /// Prometheus text exposition format (version 0.0.4), with the HTTP proxy's
    /// counters (`http`, live rather than from the snapshot).
    pub fn metrics(&self, http: &HttpMetrics) -> String {
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
                m.add(
                    "xlb_backend_active_connections",
                    "gauge",
                    "Flows pinned to the backend in the connection table (HTTP services: requests in flight).",
                    &l,
                    b.active_connections as f64,
                );
                m.add("xlb_backend_up", "gauge", "1 when the backend takes new flows.", &l, f64::from(u8::from(b.state == "healthy")));
                m.add("xlb_backend_health_transitions_total", "counter", "Health changes of the backend since start.", &l, b.health_transitions as f64);
            }
        }
        for d in &self.drops {
            m.add(
                "xlb_drops_total",
                "counter",
                "Packets the kernel program dropped, by reason (no_flow, ttl_expired and fragment are left to the stack instead).",
                &format!("reason=\"{}\"", d.reason),
                d.packets as f64,
            );
        }
        m.add("xlb_conntrack_entries", "gauge", "Entries in the kernel's connection table (two per flow) at the last expiry pass.", "", self.conntrack.entries as f64);
        m.add("xlb_conntrack_evictions_total", "counter", "Connection entries the full table pushed out to make room.", "", self.conntrack.evicted as f64);
        m.add("xlb_conntrack_half_open_created_total", "counter", "Entries added to the half-open table (two a SYN that opened a TCP flow).", "", self.conntrack.half_open_created as f64);
        if let Some(n) = self.access_log_dropped {
            m.add("xlb_access_log_dropped_total", "counter", "Access log lines dropped because the writer was behind (access_log.buffer).", "", n as f64);
        }
        for vip in self.announced.iter().flat_map(|a| a.vips.iter().map(move |v| (a.table, v))) {
            let labels = format!("vip=\"{}\",table=\"{}\"", vip.1, vip.0);
            m.add("xlb_vip_announced", "gauge", "VIPs whose route this node holds in the announce table (1 each).", &labels, 1.0);
        }
        m.add("xlb_health_transitions_total", "counter", "Backend health changes, of backends gone since included.", "", self.health_transitions as f64);
        let mut sources: Vec<_> = self.discovery_events.iter().collect();
        sources.sort();
        for (source, n) in sources {
            m.add("xlb_discovery_events_total", "counter", "Discovery updates received.", &format!("source=\"{source}\""), *n as f64);
        }
        for c in &self.acme {
            let name = format!("name=\"{}\"", c.name);
            if let Some(expires) = c.expires {
                m.add("xlb_acme_certificate_expiry_timestamp_seconds", "gauge", "Expiry of the certificate held for an ACME name (Unix time).", &name, expires as f64);
            }
            m.add("xlb_acme_order_failures", "gauge", "Failed orders in a row for an ACME name (0 once one succeeds).", &name, f64::from(c.failures));
        }
        http_series(http, &mut m);
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

/// Adds `xlb_http_requests_total` (counter) and `xlb_http_request_duration_seconds`
/// (histogram) to `m`.
fn http_series(http: &HttpMetrics, m: &mut Metrics) {
    const REQUESTS: &str = "xlb_http_requests_total";
    const DURATION: &str = "xlb_http_request_duration_seconds";
    let counts = http.counts();
    for (service, backend, c) in &counts {
        let mut codes: Vec<_> = c.codes.iter().collect();
        codes.sort();
        for (code, n) in codes {
            let labels = labels(service, backend, &format!("code=\"{code}\""));
            m.sample(
                REQUESTS,
                "counter",
                "HTTP responses of the proxy, by service, backend (empty: xlb answered itself) and status code.",
                REQUESTS,
                &labels,
                *n as f64,
            );
        }
    }
    const HELP: &str = "Time from an HTTP request to the end of its response (retries and body included).";
    for (service, backend, c) in &counts {
        let mut cumulative = 0;
        for (i, n) in c.buckets.iter().enumerate() {
            cumulative += n;
            let le = BUCKETS.get(i).map_or_else(|| "+Inf".to_owned(), f64::to_string);
            m.sample(
                DURATION,
                "histogram",
                HELP,
                "xlb_http_request_duration_seconds_bucket",
                &labels(service, backend, &format!("le=\"{le}\"")),
                cumulative as f64,
            );
        }
        let l = labels(service, backend, "");
        m.sample(DURATION, "histogram", HELP, "xlb_http_request_duration_seconds_sum", &l, c.sum_secs);
        m.sample(DURATION, "histogram", HELP, "xlb_http_request_duration_seconds_count", &l, c.count as f64);
    }
}

fn labels(service: &str, backend: &Option<Backend>, more: &str) -> String {
    let sep = if more.is_empty() { "" } else { "," };
    let (addr, name) = backend.as_ref().map_or((String::new(), ""), |b| (b.addr.to_string(), b.name.as_str()));
    format!("service=\"{}\",backend=\"{addr}\",name=\"{}\"{sep}{more}", esc(service), esc(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    use crate::observe::snapshot::tests::snapshot;

    #[test]
    fn metrics_are_prometheus_text() {
        let text = snapshot(5).metrics(&HttpMetrics::default());
        assert!(text.contains("# TYPE xlb_backend_flows_total counter\n"), "{text}");
        assert!(text.contains("xlb_backend_flows_total{service=\"web \\\"a\\\"\",backend=\"10.1.0.2:8080\",name=\"b1\"} 5\n"), "{text}");
        assert!(text.contains("xlb_drops_total{reason=\"no_backend\"} 3\n"), "{text}");
        assert!(text.contains("xlb_backend_health_transitions_total{service=\"web \\\"a\\\"\",backend=\"10.1.0.2:8080\",name=\"b1\"} 1\n"), "{text}");
        assert_eq!(text.matches("# HELP xlb_backend_up").count(), 1);
    }

    fn rendered(h: &HttpMetrics) -> String {
        let mut m = Metrics::default();
        http_series(h, &mut m);
        m.render()
    }

    fn b(n: u8) -> Option<(SocketAddr, &'static str)> {
        let name = ["b0", "b1", "b2"][n as usize];
        Some((SocketAddr::from(([10, 0, 0, n], 8080)), name))
    }

    #[test]
    fn counts_by_code_and_cumulative_buckets() {
        let h = HttpMetrics::default();
        h.record("web", b(1), 200, 0.0005);
        h.record("web", b(1), 200, 0.003);
        h.record("web", b(1), 404, 20.0);
        h.record("web", None, 502, 0.2);
        let text = rendered(&h);
        let b1 = "service=\"web\",backend=\"10.0.0.1:8080\",name=\"b1\"";
        assert!(text.contains("# TYPE xlb_http_requests_total counter\n"), "{text}");
        assert!(text.contains(&format!("xlb_http_requests_total{{{b1},code=\"200\"}} 2\n")), "{text}");
        assert!(text.contains(&format!("xlb_http_requests_total{{{b1},code=\"404\"}} 1\n")), "{text}");
        assert!(text.contains("xlb_http_requests_total{service=\"web\",backend=\"\",name=\"\",code=\"502\"} 1\n"), "{text}");
        assert_eq!(text.matches("# TYPE xlb_http_request_duration_seconds histogram\n").count(), 1, "{text}");
        for (le, n) in [("0.001", 1), ("0.005", 2), ("10", 2), ("+Inf", 3)] {
            assert!(text.contains(&format!("xlb_http_request_duration_seconds_bucket{{{b1},le=\"{le}\"}} {n}\n")), "le {le}: {text}");
        }
        assert!(text.contains(&format!("xlb_http_request_duration_seconds_count{{{b1}}} 3\n")), "{text}");
        let sum = text.lines().find_map(|l| l.strip_prefix(&format!("xlb_http_request_duration_seconds_sum{{{b1}}} "))).and_then(|v| v.parse::<f64>().ok());
        assert!(sum.is_some_and(|s| (s - 20.0035).abs() < 1e-9), "{sum:?}\n{text}");
    }

    #[test]
    fn retain_drops_what_left() {
        let h = HttpMetrics::default();
        for (s, b) in [("web", b(1)), ("web", b(2)), ("web", None), ("api", b(0)), ("", None)] {
            h.record(s, b, 200, 0.01);
        }
        h.retain([("web", SocketAddr::from(([10, 0, 0, 1], 8080)), "b1")]);
        let text = rendered(&h);
        for kept in ["service=\"web\",backend=\"10.0.0.1:8080\"", "service=\"web\",backend=\"\"", "service=\"\",backend=\"\""] {
            assert!(text.contains(kept), "{kept} dropped:\n{text}");
        }
        for gone in ["name=\"b2\"", "service=\"api\""] {
            assert!(!text.contains(gone), "{gone} kept:\n{text}");
        }
    }
}
