//! The services an import produces, written as xlb's YAML (only the keys that differ from
//! xlb's defaults, in the order of xlb.example.yaml).

use std::{fmt::Write as _, net::IpAddr};

/// One xlb service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Service {
    pub name: String,
    pub vip: Option<IpAddr>,
    pub port: u16,
    /// tcp, udp or http.
    pub protocol: &'static str,
    /// The kernel's method (L4 services); HTTP methods are in `http`.
    pub method: Option<&'static str>,
    pub backends: Vec<Backend>,
    /// Containers followed by name, and their port.
    pub docker: Option<(String, u16)>,
    /// A DNS name followed, and its port.
    pub dns: Option<(String, u16)>,
    pub slow_start: Option<String>,
    pub health: Option<Health>,
    pub http: Option<Http>,
}

/// Active health probes: a TCP connect, or a GET of `http`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    pub http: Option<String>,
    pub interval: Option<String>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    pub address: IpAddr,
    pub port: u16,
    pub weight: Option<u32>,
    pub backup: bool,
    pub down: bool,
    pub max_conns: Option<u32>,
}

/// The `http:` block.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Http {
    pub hosts: Vec<String>,
    pub paths: Vec<String>,
    pub default: bool,
    pub method: Option<String>,
    pub pin_header: Option<String>,
    pub pin_cookie: Option<String>,
    /// The name of a sticky-session cookie.
    pub sticky_cookie: Option<String>,
    pub max_fails: Option<u32>,
    pub fail_timeout: Option<String>,
}

/// `base`, or `base-2`, `base-3`...: service names are unique.
/// A count with an optional unit (`ms`, `s`, `m`, `h`) in xlb's duration notation; a bare
/// count is in `bare_unit` (nginx: seconds, HAProxy: milliseconds).
pub fn duration(s: &str, bare_unit: &str) -> Option<String> {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    digits.parse::<u64>().ok()?;
    match &s[digits.len()..] {
        "" => Some(format!("{digits}{bare_unit}")),
        unit @ ("ms" | "s" | "m" | "h") => Some(format!("{digits}{unit}")),
        _ => None,
    }
}

pub fn unique_name(services: &[Service], base: &str) -> String {
    let taken = |n: &str| services.iter().any(|s| s.name == n);
    (1..).map(|i| if i == 1 { base.to_owned() } else { format!("{base}-{i}") }).find(|n| !taken(n)).unwrap_or_default()
}

/// A YAML string: always quoted, so that no name or value is read as another type.
fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn list(items: &[String]) -> String {
    format!("[{}]", items.iter().map(|s| q(s)).collect::<Vec<_>>().join(", "))
}

/// The config file: a header comment naming the source, then `services:`.
pub fn render(source: &str, services: &[Service]) -> String {
    let mut y = format!("# Translated by `xlb import` from {source}: check it with `xlb check`.\nservices:\n");
    for s in services {
        service(&mut y, s);
    }
    y
}

fn service(y: &mut String, s: &Service) {
    let _ = writeln!(y, "  - name: {}", q(&s.name));
    if let Some(vip) = s.vip {
        let _ = writeln!(y, "    vip: {}", q(&vip.to_string()));
    }
    let _ = writeln!(y, "    port: {}\n    protocol: {}", s.port, s.protocol);
    if let Some(m) = s.method {
        let _ = writeln!(y, "    method: {m}");
    }
    if !s.backends.is_empty() {
        y.push_str("    backends:\n");
    }
    for b in &s.backends {
        let mut fields = vec![format!("address: {}", q(&b.address.to_string())), format!("port: {}", b.port)];
        fields.extend(b.weight.map(|w| format!("weight: {w}")));
        fields.extend(b.backup.then(|| "backup: true".to_owned()));
        fields.extend(b.down.then(|| "down: true".to_owned()));
        fields.extend(b.max_conns.map(|m| format!("max_conns: {m}")));
        let _ = writeln!(y, "      - {{ {} }}", fields.join(", "));
    }
    if let Some((name, port)) = &s.docker {
        let _ = writeln!(y, "    docker: {{ name: {}, port: {port} }}", q(name));
    }
    if let Some((name, port)) = &s.dns {
        let _ = writeln!(y, "    dns: {{ name: {}, port: {port} }}", q(name));
    }
    if let Some(t) = &s.slow_start {
        let _ = writeln!(y, "    slow_start: {t}");
    }
    if let Some(h) = &s.health {
        let mut fields = Vec::new();
        fields.extend(h.http.as_ref().map(|p| format!("http: {}", q(p))));
        fields.extend(h.interval.as_ref().map(|i| format!("interval: {i}")));
        fields.extend(h.rise.map(|r| format!("rise: {r}")));
        fields.extend(h.fall.map(|f| format!("fall: {f}")));
        let _ = writeln!(y, "    health: {{ {} }}", fields.join(", "));
    }
    if let Some(h) = &s.http {
        http(y, h);
    }
}

fn http(y: &mut String, h: &Http) {
    let mut fields = Vec::new();
    if !h.hosts.is_empty() {
        fields.push(format!("hosts: {}", list(&h.hosts)));
    }
    if !h.paths.is_empty() {
        fields.push(format!("paths: {}", list(&h.paths)));
    }
    if h.default {
        fields.push("default: true".into());
    }
    fields.extend(h.method.as_ref().map(|m| format!("method: {}", q(m))));
    fields.extend(h.pin_header.as_ref().map(|p| format!("pin_header: {}", q(p))));
    fields.extend(h.pin_cookie.as_ref().map(|p| format!("pin_cookie: {}", q(p))));
    fields.extend(h.sticky_cookie.as_ref().map(|c| format!("sticky_cookie: {{ name: {} }}", q(c))));
    fields.extend(h.max_fails.map(|m| format!("max_fails: {m}")));
    fields.extend(h.fail_timeout.as_ref().map(|t| format!("fail_timeout: {t}")));
    if fields.is_empty() {
        y.push_str("    http: {}\n");
        return;
    }
    y.push_str("    http:\n");
    for f in fields {
        let _ = writeln!(y, "      {f}");
    }
}
