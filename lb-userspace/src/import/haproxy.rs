//! HAProxy's configuration: sections (`defaults`, `frontend`, `backend`, `listen`) of
//! keyword lines. A frontend's `bind` port, its Host and path ACLs, `use_backend` and
//! `default_backend` route to backends, whose `balance`, `server`s, `cookie` and checks
//! become an xlb service each time a frontend uses them.

use std::collections::HashMap;

use super::{
    nginx::Directive,
    notes::Notes,
    upstream::{self, Server, Upstream},
    yaml::{self, Health, Http, Service, unique_name},
};

/// Keywords that open a section.
const SECTIONS: &[&str] = &["global", "defaults", "frontend", "backend", "listen", "resolvers", "userlist", "peers", "mailers", "program", "cache", "ring"];

/// A section: its keyword and name, and its lines (as directives: keyword, arguments, line).
struct Section {
    head: Directive,
    lines: Vec<Directive>,
}

fn sections(text: &str, notes: &mut Notes) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let words: Vec<String> = raw.split('#').next().unwrap_or_default().split_whitespace().map(str::to_owned).collect();
        let Some((name, args)) = words.split_first() else { continue };
        let d = Directive { name: name.clone(), args: args.to_vec(), line: i + 1, block: None };
        match out.last_mut() {
            _ if SECTIONS.contains(&name.as_str()) => out.push(Section { head: d, lines: Vec::new() }),
            Some(s) => s.lines.push(d),
            None => notes.add(&d, "outside any section"),
        }
    }
    out
}

/// A backend (or the backend half of a `listen`).
struct Backend {
    name: String,
    http: bool,
    balance: Option<Directive>,
    servers: Vec<Server>,
    cookie: Option<String>,
    health: Option<Health>,
}

/// Settings of `defaults` that sections inherit.
#[derive(Clone, Default)]
struct Defaults {
    http: bool,
    balance: Option<Directive>,
}

/// The services of a whole HAProxy configuration.
pub fn translate(text: &str, notes: &mut Notes) -> Vec<Service> {
    let all = sections(text, notes);
    let mut defaults = Defaults::default();
    let mut backends = HashMap::new();
    for s in &all {
        match (s.head.name.as_str(), s.head.args.first()) {
            ("defaults", _) => defaults = read_defaults(s, defaults.clone(), notes),
            ("backend" | "listen", Some(name)) => {
                backends.insert(name.clone(), backend(name, s, &defaults, notes));
            }
            ("frontend", _) => {}
            _ => notes.add(&s.head, "a section xlb has no use for"),
        }
    }
    let mut services = Vec::new();
    for s in &all {
        match s.head.name.as_str() {
            "frontend" => frontend(s, &defaults, &backends, &mut services, notes),
            "listen" => {
                let b = &backends[&s.head.args[0]];
                let bind = bind(s, notes);
                services.extend(bind.map(|port| service(b, port, Vec::new(), Vec::new(), false, &services, notes)));
            }
            _ => {}
        }
    }
    services
}

fn read_defaults(s: &Section, mut d: Defaults, notes: &mut Notes) -> Defaults {
    for l in &s.lines {
        match l.name.as_str() {
            "mode" => d.http = l.args.first().is_some_and(|m| m == "http"),
            "balance" => d.balance = Some(l.clone()),
            _ => notes.add(l, "no xlb equivalent"),
        }
    }
    d
}

/// A HAProxy time (`2000`: ms, `2s`, `1m`) in xlb's notation.
fn time(s: &str) -> Option<String> {
    yaml::duration(s, "ms")
}

/// A `backend` or `listen` section's balancing, servers, cookie and checks; the lines a
/// frontend reads (`bind`, `acl`...) are left to it.
fn backend(name: &str, s: &Section, defaults: &Defaults, notes: &mut Notes) -> Backend {
    let mut b = Backend { name: name.to_owned(), http: defaults.http, balance: defaults.balance.clone(), servers: Vec::new(), cookie: None, health: None };
    let mut path = None;
    for l in &s.lines {
        let args: Vec<&str> = l.args.iter().map(String::as_str).collect();
        match (l.name.as_str(), args.as_slice()) {
            ("mode", [m]) => b.http = *m == "http",
            ("balance", _) => b.balance = Some(l.clone()),
            ("server", [_, addr, params @ ..]) => b.servers.extend(server(l, addr, params, &mut b.health, notes)),
            ("cookie", [c, "insert", ..]) => b.cookie = Some((*c).to_owned()),
            ("option", ["httpchk", .., p]) if p.starts_with('/') => path = Some((*p).to_owned()),
            ("bind" | "acl" | "use_backend" | "default_backend", _) if s.head.name == "listen" => {}
            _ => notes.add(l, "no xlb equivalent"),
        }
    }
    if let Some(p) = path {
        b.health.get_or_insert_with(Health::default).http = Some(p);
    }
    b
}

/// `server NAME ADDRESS[:PORT] [PARAMS]`; its check settings go to the backend's `health`.
fn server(l: &Directive, addr: &str, params: &[&str], health: &mut Option<Health>, notes: &mut Notes) -> Option<Server> {
    let Some((host, port)) = upstream::address(addr) else {
        notes.add(l, "an address xlb cannot use: expected HOST[:PORT]");
        return None;
    };
    let mut s = Server::new(host, port, l);
    let mut words = params.iter();
    while let Some(&p) = words.next() {
        let mut value = || words.next().copied().unwrap_or_default();
        let ok = match p {
            "weight" => value().parse().ok().filter(|w| (1..=256).contains(w)).map(|w| s.weight = Some(w).filter(|w| *w != 1)).is_some(),
            "maxconn" => value().parse().ok().map(|n| s.max_conns = Some(n).filter(|n| *n != 0)).is_some(),
            "slowstart" => time(value()).map(|t| s.slow_start = Some(t)).is_some(),
            "backup" => {
                s.backup = true;
                true
            }
            "disabled" => {
                s.down = true;
                true
            }
            "check" => {
                health.get_or_insert_with(Health::default);
                true
            }
            "inter" => time(value()).map(|t| health.get_or_insert_with(Health::default).interval = Some(t)).is_some(),
            "rise" => value().parse().ok().map(|n| health.get_or_insert_with(Health::default).rise = Some(n)).is_some(),
            "fall" => value().parse().ok().map(|n| health.get_or_insert_with(Health::default).fall = Some(n)).is_some(),
            // The sticky cookie's value: xlb derives its own from the backend's name.
            "cookie" => !value().is_empty(),
            _ => false,
        };
        if !ok {
            notes.add(l, &format!("parameter {p}: no xlb equivalent or a bad value"));
        }
    }
    Some(s)
}

/// The port of a section's first `bind` (`*:80`, `:80`, `0.0.0.0:80`); others are reported.
fn bind(s: &Section, notes: &mut Notes) -> Option<u16> {
    let mut port = None;
    for l in s.lines.iter().filter(|l| l.name == "bind") {
        let spec = l.args.first().map(String::as_str).unwrap_or_default();
        let p = spec.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).filter(|p| *p != 0);
        if l.args.iter().any(|a| a == "ssl") {
            notes.add(l, "TLS listeners are not translated: the service is made for plain HTTP");
        }
        match (p, port) {
            (None, _) => notes.add(l, "an address xlb cannot listen on"),
            (Some(p), None) => port = Some(p),
            (Some(p), Some(first)) if p != first => notes.add(l, "xlb serves a service on one port: copy the service for this one"),
            _ => {}
        }
    }
    if port.is_none() {
        notes.add(&s.head, "no bind: nothing listens");
    }
    port
}

/// What an ACL matches: hosts, path prefixes, or something xlb does not route by.
#[derive(Clone)]
enum Acl {
    Hosts(Vec<String>),
    Paths(Vec<String>),
}

/// `CRITERION [-flags] VALUES...` of an `acl` line or an inline `{ ... }` condition.
fn acl(words: &[&str]) -> Option<Acl> {
    let (criterion, rest) = words.split_first()?;
    let values: Vec<&str> = rest.iter().copied().filter(|w| !w.starts_with('-')).collect();
    let host = |v: &&str| v.split(':').next().unwrap_or_default().to_ascii_lowercase();
    match *criterion {
        "hdr(host)" | "req.hdr(host)" => Some(Acl::Hosts(values.iter().map(host).collect())),
        "hdr_dom(host)" => Some(Acl::Hosts(values.iter().map(host).flat_map(|h| [format!("*.{h}"), h]).collect())),
        "path_beg" => Some(Acl::Paths(values.iter().map(|v| (*v).to_owned()).collect())),
        _ => None,
    }
}

/// A frontend: one service per `use_backend` rule, and one for `default_backend`.
fn frontend(s: &Section, defaults: &Defaults, backends: &HashMap<String, Backend>, services: &mut Vec<Service>, notes: &mut Notes) {
    let Some(port) = bind(s, notes) else { return };
    let mut acls: HashMap<&str, Option<Acl>> = HashMap::new();
    let mut routed = false;
    for l in &s.lines {
        let args: Vec<&str> = l.args.iter().map(String::as_str).collect();
        match (l.name.as_str(), args.as_slice()) {
            ("bind", _) => {}
            ("mode", [m]) if (*m == "http") == defaults.http => {}
            ("acl", [name, words @ ..]) => {
                let a = acl(words);
                if a.is_none() {
                    notes.add(l, "xlb routes by Host (hdr, hdr_dom) and path prefix (path_beg) only");
                }
                acls.insert(name, a);
            }
            ("use_backend", [b, "if", cond @ ..]) => match (backends.get(*b), condition(cond, &acls)) {
                (Some(b), Some((hosts, paths))) => {
                    routed = true;
                    let svc = service(b, port, hosts, paths, false, services, notes);
                    services.push(svc);
                }
                (None, _) => notes.add(l, "no such backend"),
                (_, None) => notes.add(l, "a condition xlb cannot route by: ACLs on Host or path, joined by `or`"),
            },
            ("default_backend", [b]) => match backends.get(*b) {
                Some(b) => services.push(service(b, port, Vec::new(), Vec::new(), true, services, notes)),
                None => notes.add(l, "no such backend"),
            },
            _ => notes.add(l, "no xlb equivalent"),
        }
    }
    // A default without rules beside it is simply the service of that port.
    if !routed && let Some(last) = services.last_mut().filter(|v| v.port == port).and_then(|v| v.http.as_mut()) {
        last.default = false;
    }
}

/// `ACL [ACL...] [or ACL...]` (names or inline `{ ... }`): the hosts and paths it admits.
fn condition(cond: &[&str], acls: &HashMap<&str, Option<Acl>>) -> Option<(Vec<String>, Vec<String>)> {
    let (mut hosts, mut paths) = (Vec::new(), Vec::new());
    let text = cond.join(" ");
    for alternative in text.split(" or ").flat_map(|a| a.split(" || ")) {
        let mut rest = alternative.trim();
        while !rest.is_empty() {
            let found = if let Some(inner) = rest.strip_prefix('{') {
                let (words, after) = inner.split_once('}')?;
                rest = after.trim_start();
                acl(&words.split_whitespace().collect::<Vec<_>>())?
            } else {
                let (name, after) = rest.split_once(' ').unwrap_or((rest, ""));
                rest = after.trim_start();
                acls.get(name)?.clone()?
            };
            match found {
                Acl::Hosts(h) => hosts.extend(h),
                Acl::Paths(p) => paths.extend(p),
            }
        }
    }
    hosts.dedup();
    Some((hosts, paths))
}

/// The service of backend `b` on `port` for these hosts and paths.
fn service(b: &Backend, port: u16, hosts: Vec<String>, paths: Vec<String>, default: bool, services: &[Service], notes: &mut Notes) -> Service {
    let mut svc =
        Service { name: unique_name(services, &b.name), port, protocol: if b.http { "http" } else { "tcp" }, health: b.health.clone(), ..Service::default() };
    let balance: Vec<&str> = b.balance.iter().flat_map(|d| d.args.iter().map(String::as_str)).collect();
    if b.http {
        let method = match balance.as_slice() {
            [] | ["roundrobin" | "static-rr"] => None,
            ["leastconn"] => Some("least_conn".to_owned()),
            ["source"] => Some("ip_hash".to_owned()),
            ["uri"] => Some("hash uri".to_owned()),
            ["random"] => Some("random".to_owned()),
            [h] if h.starts_with("hdr(") && h.ends_with(')') => Some(format!("hash header:{}", &h[4..h.len() - 1])),
            _ => {
                if let Some(d) = &b.balance {
                    notes.add(d, "no xlb method like it");
                }
                None
            }
        };
        svc.http = Some(Http { hosts, paths, default, method, sticky_cookie: b.cookie.clone(), ..Http::default() });
    } else {
        svc.method = Some(match balance.as_slice() {
            ["source"] => "source_hash",
            ["random"] => "random",
            [] | ["roundrobin" | "static-rr"] => "round_robin",
            _ => {
                b.balance.iter().for_each(|d| notes.add(d, "the kernel balances by round_robin, maglev, random or source_hash only: round_robin kept"));
                "round_robin"
            }
        });
    }
    let up = Upstream { name: b.name.clone(), balancing: None, servers: b.servers.clone() };
    upstream::backends(&up, &mut svc, notes);
    svc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_conditions() {
        assert_eq!((time("2000").as_deref(), time("2s").as_deref(), time("1d")), (Some("2000ms"), Some("2s"), None));
        let acls = HashMap::from([("h", acl(&["hdr(host)", "-i", "a.dev:80"])), ("p", acl(&["path_beg", "/api"])), ("x", None)]);
        assert_eq!(condition(&["h", "or", "{", "hdr_dom(host)", "b.dev", "}"], &acls), Some((vec!["a.dev".into(), "*.b.dev".into(), "b.dev".into()], vec![])));
        assert_eq!(condition(&["h", "p"], &acls), Some((vec!["a.dev".into()], vec!["/api".into()])));
        assert_eq!(condition(&["x"], &acls), None, "an ACL xlb cannot route by");
        assert_eq!(condition(&["missing"], &acls), None);
    }
}
