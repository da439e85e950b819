//! The `xlb status` table.

use std::fmt::Write as _;

use super::Snapshot;

impl Snapshot {
    /// The `xlb status` table: first what is asked first (is each service up, how many
    /// backends serve, why the others do not), then each service's backends and counters.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{:<24} {:<9} {:>8}  LISTEN", "SERVICE", "STATE", "HEALTHY");
        for s in &self.services {
            let healthy = format!("{}/{}", s.backends.iter().filter(|b| b.state == "healthy").count(), s.backends.len());
            let _ = writeln!(out, "{:<24} {:<9} {healthy:>8}  {}:{}/{}", s.name, s.state, s.vip, s.port, s.protocol);
            for b in s.backends.iter().filter(|b| !b.reason.is_empty()) {
                let _ = writeln!(out, "  {} ({}) {}: {}", b.address, b.name, b.state, b.reason);
            }
        }
        out.push('\n');
        for s in &self.services {
            if s.protocol == "http" {
                let _ =
                    writeln!(out, "{} {}:{}/{} method={} sources={} requests={}", s.name, s.vip, s.port, s.protocol, s.method, s.sources.join(","), s.requests);
                let _ =
                    writeln!(out, "  {:<28} {:<24} {:<20} {:<10} {:>6} {:>9} {:>10}", "BACKEND", "NAME", "ORIGIN", "STATE", "WEIGHT", "IN FLIGHT", "REQUESTS");
                for b in &s.backends {
                    let _ = writeln!(
                        out,
                        "  {:<28} {:<24} {:<20} {:<10} {:>6.2} {:>9} {:>10}",
                        b.address, b.name, b.origin, b.state, b.weight, b.active_connections, b.requests
                    );
                }
                continue;
            }
            let _ = writeln!(
                out,
                "{} {}:{}/{} method={} sources={} flows={} packets={} bytes={}",
                s.name,
                s.vip,
                s.port,
                s.protocol,
                s.method,
                s.sources.join(","),
                s.new_flows,
                s.packets,
                s.bytes
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
        let _ = writeln!(out, "conntrack: {} entries, {} evicted", self.conntrack.entries, self.conntrack.evicted);
        if let Some(a) = &self.announced {
            let vips: Vec<String> = a.vips.iter().map(ToString::to_string).collect();
            let _ = writeln!(out, "announced (table {}): {}", a.table, if vips.is_empty() { "none".to_owned() } else { vips.join(" ") });
        }
        for c in &self.certificates {
            let expires = c.not_after.map_or("-".to_owned(), |t| format!("{t} (unix)"));
            let default = if c.default { " default" } else { "" };
            let _ = writeln!(out, "tls: {}{default} names={} expires={expires}", c.cert.display(), c.names.join(","));
            if let Some(e) = &c.error {
                let _ = writeln!(out, "  error: {e}");
            }
        }
        if !self.acme.is_empty() {
            let _ = writeln!(out, "certificates (ACME):\n  {:<32} {:<9} {:<12} {:>8}  ERROR", "NAME", "STATE", "EXPIRES IN", "FAILURES");
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            for c in &self.acme {
                let expires = c.expires.map_or_else(|| "-".to_owned(), |e| format!("{:.1}d", e.saturating_sub(now) as f64 / 86400.0));
                let error = c.error.as_deref().unwrap_or("");
                let _ = writeln!(out, "  {:<32} {:<9} {:<12} {:>8}  {error}", c.name, c.state, expires, c.failures);
            }
        }
        out
    }
}
