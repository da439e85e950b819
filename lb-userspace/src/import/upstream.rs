//! nginx `upstream` blocks: their servers (address, weight, failures, backup...) and their
//! balancing directive, and how they become an xlb service's backends and method.

use std::net::IpAddr;

use super::{nginx::Directive, notes::Notes, yaml};
use crate::config::http::Method;

/// A server's address: an IP, or a name (a compose service or a DNS name).
#[derive(Debug, Clone, PartialEq)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

/// One `server` line of an upstream.
#[derive(Debug, Clone)]
pub struct Server {
    pub host: Host,
    pub port: u16,
    pub weight: Option<u32>,
    pub max_fails: Option<u32>,
    pub fail_timeout: Option<String>,
    pub backup: bool,
    pub down: bool,
    pub max_conns: Option<u32>,
    pub slow_start: Option<String>,
    pub line: usize,
    pub text: String,
}

impl Server {
    /// `host:port` from directive `d`, with none of its parameters set yet.
    pub fn new(host: Host, port: u16, d: &Directive) -> Self {
        Server {
            host,
            port,
            weight: None,
            max_fails: None,
            fail_timeout: None,
            backup: false,
            down: false,
            max_conns: None,
            slow_start: None,
            line: d.line,
            text: d.text(),
        }
    }
}

/// An upstream, or the one server a `proxy_pass` names directly.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    /// Its balancing directive (`least_conn`, `hash $cookie_x consistent`...).
    pub balancing: Option<Directive>,
    pub servers: Vec<Server>,
}

/// `host[:port]` (IPv6 in brackets); nginx's default port is 80.
pub fn address(s: &str) -> Option<(Host, u16)> {
    let (host, port) = match s.strip_prefix('[') {
        Some(rest) => {
            let (h, after) = rest.split_once(']')?;
            (h, after.strip_prefix(':'))
        }
        None => match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().ok().filter(|p| *p != 0)?,
        None => 80,
    };
    let host = match host.parse::<IpAddr>() {
        Ok(ip) => Host::Ip(ip),
        Err(_) if !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) => Host::Name(host.to_owned()),
        Err(_) => return None,
    };
    Some((host, port))
}

/// An nginx time (`10`, `10s`, `1m`, `500ms`) in xlb's notation.
pub fn duration(s: &str) -> Option<String> {
    yaml::duration(s, "s")
}

/// Reads an `upstream NAME { ... }` block.
pub fn parse(d: &Directive, notes: &mut Notes) -> Upstream {
    let mut up = Upstream { name: d.args.first().cloned().unwrap_or_default(), balancing: None, servers: Vec::new() };
    for c in d.children() {
        match c.name.as_str() {
            "server" => up.servers.extend(server(c, notes)),
            "least_conn" | "ip_hash" | "hash" | "random" | "least_time" => up.balancing = Some(c.clone()),
            "keepalive" | "keepalive_timeout" | "keepalive_requests" => notes.add(c, "xlb keeps and reuses connections to backends by itself"),
            _ => notes.add(c, "no xlb equivalent"),
        }
    }
    up
}

/// One `server ADDRESS [PARAMS]` line; `None` (reported) when its address is not one xlb can use.
fn server(d: &Directive, notes: &mut Notes) -> Option<Server> {
    let Some((host, port)) = d.args.first().and_then(|a| address(a)) else {
        notes.add(d, "an address xlb cannot use (a UNIX socket?): expected HOST[:PORT]");
        return None;
    };
    let mut s = Server::new(host, port, d);
    for p in &d.args[1..] {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        let ok = match k {
            "weight" => v.parse().ok().filter(|w| (1..=1000).contains(w)).map(|w| s.weight = Some(w).filter(|w| *w != 1)).is_some(),
            "max_fails" => v.parse().ok().map(|n| s.max_fails = Some(n)).is_some(),
            "fail_timeout" => duration(v).map(|t| s.fail_timeout = Some(t)).is_some(),
            "max_conns" => v.parse().ok().map(|n| s.max_conns = Some(n).filter(|n| *n != 0)).is_some(),
            "slow_start" => duration(v).map(|t| s.slow_start = Some(t)).is_some(),
            "backup" => {
                s.backup = true;
                true
            }
            "down" => {
                s.down = true;
                true
            }
            _ => false,
        };
        if !ok {
            notes.add(d, &format!("parameter {p}: no xlb equivalent or a bad value"));
        }
    }
    Some(s)
}

/// The HTTP method for an upstream's balancing directive (nginx's names are xlb's).
pub fn http_method(d: &Directive) -> Result<String, String> {
    let text = match (d.name.as_str(), d.args.first().map(String::as_str)) {
        ("hash", Some(key)) => {
            let key = if let Some(h) = key.strip_prefix("$http_") {
                format!("header:{}", h.replace('_', "-"))
            } else if let Some(c) = key.strip_prefix("$cookie_") {
                format!("cookie:{c}")
            } else {
                key.to_owned()
            };
            std::iter::once(format!("hash {key}")).chain(d.args[1..].iter().cloned()).collect::<Vec<_>>().join(" ")
        }
        _ => d.text(),
    };
    text.parse::<Method>().map(|_| text.clone()).map_err(|e| format!("no xlb method like it ({e})"))
}

/// The kernel's method for an L4 upstream: client-address hashes become `source_hash`.
pub fn l4_method(d: &Directive) -> Result<&'static str, String> {
    match (d.name.as_str(), d.args.iter().map(String::as_str).collect::<Vec<_>>().as_slice()) {
        ("hash", ["$remote_addr" | "$binary_remote_addr", ..]) | ("ip_hash", []) => Ok("source_hash"),
        ("random", []) => Ok("random"),
        _ => Err("the kernel balances by round_robin, maglev, random or source_hash only: round_robin kept".into()),
    }
}

/// Fills `svc`'s backends (and docker or dns source, failure settings) from `up`'s servers.
pub fn backends(up: &Upstream, svc: &mut yaml::Service, notes: &mut Notes) {
    let http = svc.protocol == "http";
    let mut names = Vec::new();
    for s in &up.servers {
        if let (Some(n), Some(h)) = (s.max_fails, svc.http.as_mut()) {
            settle(&mut h.max_fails, n, s, "max_fails", notes);
        }
        if let (Some(t), Some(h)) = (&s.fail_timeout, svc.http.as_mut()) {
            settle(&mut h.fail_timeout, t.clone(), s, "fail_timeout", notes);
        }
        if !http && (s.max_fails.is_some() || s.fail_timeout.is_some()) {
            notes.at(s.line, &s.text, "max_fails, fail_timeout: xlb's passive checks are HTTP only; add a `health:` probe");
        }
        if let Some(t) = &s.slow_start {
            settle(&mut svc.slow_start, t.clone(), s, "slow_start", notes);
        }
        match &s.host {
            Host::Ip(address) => {
                if s.max_conns.is_some() && !http {
                    notes.at(s.line, &s.text, "max_conns: HTTP services only");
                }
                let max_conns = s.max_conns.filter(|_| http);
                svc.backends.push(yaml::Backend { address: *address, port: s.port, weight: s.weight, backup: s.backup, down: s.down, max_conns });
            }
            Host::Name(name) => {
                if s.weight.is_some() || s.backup || s.down || s.max_conns.is_some() {
                    notes.at(s.line, &s.text, "weight, backup, down, max_conns of a name: give its containers the labels xlb.weight, xlb.backup");
                }
                names.push((name.clone(), s));
            }
        }
    }
    follow(up, &names, svc, notes);
}

/// The first value a setting takes across an upstream's servers; a different one later is
/// reported, as xlb has it once per service.
fn settle<T: PartialEq>(slot: &mut Option<T>, value: T, s: &Server, what: &str, notes: &mut Notes) {
    match slot {
        None => *slot = Some(value),
        Some(v) if *v == value => {}
        Some(_) => notes.at(s.line, &s.text, &format!("{what}: xlb has one per service; the first server's is kept")),
    }
}

/// Servers named by host name: one is followed as a Docker name (a bare name, as compose
/// services are) or a DNS name; several are followed as the containers labelled with the
/// upstream's name, which each of them is told to carry.
fn follow(up: &Upstream, names: &[(String, &Server)], svc: &mut yaml::Service, notes: &mut Notes) {
    let Some((first, s)) = names.first() else { return };
    if names.iter().any(|(_, o)| o.port != s.port) {
        notes.at(s.line, &s.text, "servers by name on different ports: xlb follows them on one (the first's); set xlb.port labels");
    }
    match names {
        [_] if first.contains('.') => svc.dns = Some((first.clone(), s.port)),
        [_] => svc.docker = Some((first.clone(), s.port)),
        _ => {
            svc.docker = Some((up.name.clone(), s.port));
            for (name, s) in names {
                notes.at(s.line, &s.text, &format!("xlb follows one name per service: label the containers of {name} xlb.service={}", up.name));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_durations() {
        assert_eq!(address("10.0.0.1:8080"), Some((Host::Ip("10.0.0.1".parse().unwrap()), 8080)));
        assert_eq!(address("[fd00::1]"), Some((Host::Ip("fd00::1".parse().unwrap()), 80)));
        assert_eq!(address("app1:80"), Some((Host::Name("app1".into()), 80)));
        assert_eq!(address("backend1.example.com"), Some((Host::Name("backend1.example.com".into()), 80)));
        for bad in ["unix:/tmp/x.sock", "a:0", "a:99999", ""] {
            assert_eq!(address(bad), None, "{bad}");
        }
        assert_eq!((duration("30").as_deref(), duration("500ms").as_deref(), duration("1d")), (Some("30s"), Some("500ms"), None));
    }

    #[test]
    fn balancing_directives_become_methods() {
        let d = |name: &str, args: &[&str]| Directive { name: name.into(), args: args.iter().map(|a| a.to_string()).collect(), line: 1, block: None };
        assert_eq!(http_method(&d("least_conn", &[])).as_deref(), Ok("least_conn"));
        assert_eq!(http_method(&d("hash", &["$cookie_x", "consistent"])).as_deref(), Ok("hash cookie:x consistent"));
        assert_eq!(http_method(&d("hash", &["$http_x_user"])).as_deref(), Ok("hash header:x-user"));
        assert_eq!(http_method(&d("hash", &["$request_uri", "consistent"])).as_deref(), Ok("hash $request_uri consistent"));
        assert!(http_method(&d("hash", &["$host$uri"])).is_err());
        assert_eq!(l4_method(&d("hash", &["$remote_addr", "consistent"])), Ok("source_hash"));
        assert!(l4_method(&d("least_conn", &[])).is_err());
    }
}
