//! The `http` and `stream` blocks: each `server`'s locations that `proxy_pass` to an upstream
//! (or one host) become an xlb service on the server's port, its `server_name`s the
//! service's hosts, the location its path; `stream` servers become L4 services.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use super::{
    nginx::Directive,
    notes::Notes,
    upstream::{self, Host, Upstream},
    yaml::{Http, Service},
};

/// Request headers xlb sets as these directives do (docs/proxy.md), so they need no
/// translation.
const SAME_HEADERS: &[(&str, &str)] = &[
    ("host", "$host"),
    ("host", "$http_host"),
    ("x-real-ip", "$remote_addr"),
    ("x-forwarded-for", "$proxy_add_x_forwarded_for"),
    ("x-forwarded-for", "$remote_addr"),
    ("x-forwarded-host", "$host"),
    ("x-forwarded-host", "$server_name"),
    ("x-forwarded-proto", "$scheme"),
];

/// The services of a whole configuration.
pub fn translate(tree: &[Directive], notes: &mut Notes) -> Vec<Service> {
    let mut out = Out::default();
    for d in tree {
        match d.name.as_str() {
            "http" => block(d, false, &mut out, notes),
            "stream" => block(d, true, &mut out, notes),
            _ => notes.add(d, "a setting of the nginx process: xlb has none like it"),
        }
    }
    out.services
}

/// The services made so far, and the ports that have a default server.
#[derive(Default)]
struct Out {
    services: Vec<Service>,
    defaults: HashSet<u16>,
}

impl Out {
    fn name(&self, base: &str) -> String {
        super::yaml::unique_name(&self.services, base)
    }
}

/// A `map $SOURCE $TARGET { KEY VALUE; ... }`.
struct Map {
    source: String,
    entries: Vec<(String, String)>,
}

/// An `http` or `stream` block.
fn block(d: &Directive, l4: bool, out: &mut Out, notes: &mut Notes) {
    let mut upstreams = HashMap::new();
    let mut maps = HashMap::new();
    for c in d.children() {
        match (c.name.as_str(), c.args.as_slice()) {
            ("upstream", [_]) => {
                let up = upstream::parse(c, notes);
                upstreams.insert(up.name.clone(), up);
            }
            ("map", [source, target]) => {
                let entries = c.children().iter().filter(|e| e.args.len() == 1).map(|e| (e.name.clone(), e.args[0].clone())).collect();
                maps.insert(target.clone(), Map { source: source.clone(), entries });
            }
            _ => {}
        }
    }
    for c in d.children() {
        match c.name.as_str() {
            "upstream" | "map" => {}
            "server" if l4 => stream_server(c, &upstreams, out, notes),
            "server" => server(c, &upstreams, &maps, out, notes),
            _ => notes.add(c, "no xlb equivalent"),
        }
    }
}

/// Where a server listens: its VIP (none: the interface's address), port, whether it is
/// the port's default server, and UDP (stream servers).
struct Listen {
    vip: Option<IpAddr>,
    port: u16,
    default: bool,
    udp: bool,
}

/// A server's `listen` directives: the first one; another on the same port (`[::]:80`
/// beside `80`) adds nothing, one on another port is reported.
fn listen(d: &Directive, notes: &mut Notes) -> Listen {
    let mut first: Option<Listen> = None;
    for l in d.children().iter().filter(|c| c.name == "listen") {
        let Some(spec) = l.args.first() else { continue };
        let (vip, port) = match spec.parse::<u16>() {
            Ok(port) => (None, Some(port)),
            Err(_) => match upstream::address(spec.trim_start_matches("*:")) {
                Some((Host::Ip(ip), port)) => (Some(ip).filter(|ip| !ip.is_unspecified()), Some(port)),
                _ => (None, spec.strip_prefix("*:").and_then(|p| p.parse().ok())),
            },
        };
        let Some(port) = port else {
            notes.add(l, "an address xlb cannot listen on");
            continue;
        };
        let flags = &l.args[1..];
        if flags.iter().any(|f| f == "ssl" || f == "http2" || f == "quic") {
            notes.add(l, "TLS and HTTP/2 listeners are not translated: the service is made for plain HTTP");
        }
        match &first {
            None => first = Some(Listen { vip, port, default: flags.iter().any(|f| f == "default_server"), udp: flags.iter().any(|f| f == "udp") }),
            Some(f) if f.port == port => {}
            Some(_) => notes.add(l, "xlb serves a service on one port: copy the service for this one"),
        }
    }
    first.unwrap_or(Listen { vip: None, port: 80, default: false, udp: false })
}

/// A `server` of `http`: one service per proxying location.
fn server(d: &Directive, upstreams: &HashMap<String, Upstream>, maps: &HashMap<String, Map>, out: &mut Out, notes: &mut Notes) {
    let listen = listen(d, notes);
    let mut hosts = Vec::new();
    for c in d.children() {
        match c.name.as_str() {
            "listen" => {}
            "server_name" => hosts.extend(c.args.iter().filter_map(|h| host(h, c, notes)).flatten()),
            "location" => {}
            _ => notes.add(c, "no xlb equivalent"),
        }
    }
    // nginx's default server takes the hosts no other server names: the first on a port.
    let default = (listen.default || !out.defaults.contains(&listen.port)) && !hosts.is_empty();
    out.defaults.insert(listen.port);
    let site = Site { listen, hosts, default, upstreams, maps };
    for loc in d.children().iter().filter(|c| c.name == "location") {
        location(loc, &site, out, notes);
    }
}

/// What the locations of one `server` share.
struct Site<'a> {
    listen: Listen,
    hosts: Vec<String>,
    default: bool,
    upstreams: &'a HashMap<String, Upstream>,
    maps: &'a HashMap<String, Map>,
}

/// A `server_name` as xlb hosts: `_` and `""` are none (any host), `.app.dev` is the name
/// and its subdomains; regular expressions are reported.
fn host(h: &str, d: &Directive, notes: &mut Notes) -> Option<Vec<String>> {
    match h {
        "" | "_" => None,
        h if h.starts_with('~') => {
            notes.add(d, &format!("{h}: xlb matches exact and wildcard host names, not regular expressions"));
            None
        }
        h if h.starts_with('.') => Some(vec![h[1..].to_owned(), format!("*{h}")]),
        h if h.parse::<crate::config::http::HostPattern>().is_ok() => Some(vec![h.to_owned()]),
        h => {
            notes.add(d, &format!("{h}: not a host name xlb matches"));
            None
        }
    }
}

/// Header and cookie pinning written as nginx `if`s: the header (or cookie) and the backend
/// names that the `if`s proxy to, with where each was written.
#[derive(Default)]
struct Pins {
    header: Option<String>,
    cookie: Option<String>,
    to: Vec<(String, usize, String)>,
}

/// A `location PREFIX { ... proxy_pass ...; }`: its services.
fn location(loc: &Directive, site: &Site, out: &mut Out, notes: &mut Notes) {
    let path = match loc.args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [p] | ["^~", p] => p.to_string(),
        _ => return notes.add(loc, "exact and regular-expression locations: xlb routes by path prefix"),
    };
    let Ok(prefix) = path.parse::<crate::config::http::PathPrefix>() else {
        return notes.add(loc, "not a path prefix xlb routes by");
    };
    let mut pass = None;
    let mut pins = Pins::default();
    for c in loc.children() {
        match c.name.as_str() {
            "proxy_pass" => pass = Some(c),
            "if" => pin(c, &mut pins, notes),
            "proxy_set_header" if c.args.len() == 2 && SAME_HEADERS.contains(&(c.args[0].to_ascii_lowercase().as_str(), c.args[1].as_str())) => {}
            "proxy_redirect" if c.args == ["off"] => {}
            "proxy_http_version" if c.args == ["1.1"] => {}
            _ => notes.add(c, "no xlb equivalent"),
        }
    }
    let Some(pass) = pass else {
        return notes.add(loc, "proxies nowhere (no proxy_pass): nothing to balance");
    };
    let paths = if prefix.0 == "/" { Vec::new() } else { vec![prefix.0] };
    for (up, hosts, default) in targets(pass, &path, site, notes) {
        let mut http = Http { hosts: hosts.unwrap_or_else(|| site.hosts.clone()), paths: paths.clone(), default, ..Http::default() };
        (http.pin_header, http.pin_cookie) = (pins.header.clone(), pins.cookie.clone());
        if let Some(b) = &up.balancing {
            match upstream::http_method(b) {
                Ok(m) => http.method = Some(m),
                Err(why) => notes.add(b, &why),
            }
        }
        let mut svc =
            Service { name: out.name(&up.name), vip: site.listen.vip, port: site.listen.port, protocol: "http", http: Some(http), ..Service::default() };
        upstream::backends(&up, &mut svc, notes);
        for (to, line, text) in &pins.to {
            if !up.servers.iter().any(|s| s.host == Host::Name(to.clone())) {
                notes.at(*line, text, &format!("xlb pins to the service's own backends by name: {to} is not a server of {}", up.name));
            }
        }
        out.services.push(svc);
    }
}

/// `if ($http_NAME = VALUE) { proxy_pass http://VALUE; }` (or `$cookie_NAME`): the request
/// names its backend, which xlb's `pin_header` (`pin_cookie`) does for backends of the
/// service by container name, hostname or `xlb.name` label.
fn pin(d: &Directive, pins: &mut Pins, notes: &mut Notes) {
    let cond = d.args.join(" ");
    let words: Vec<&str> = cond.trim_start_matches('(').trim_end_matches(')').split_whitespace().collect();
    let target = match d.children() {
        [p] if p.name == "proxy_pass" => p.args.first().and_then(|a| a.strip_prefix("http://")).map(|t| t.trim_end_matches('/')),
        _ => None,
    };
    let (slot, name) = match words.as_slice() {
        [var, "=", value] if target == Some(*value) => match (var.strip_prefix("$http_"), var.strip_prefix("$cookie_")) {
            (Some(h), _) => (&mut pins.header, h.replace('_', "-")),
            (_, Some(c)) => (&mut pins.cookie, c.to_owned()),
            _ => return notes.add(d, "xlb pins by a header or cookie that names the backend; this condition is another kind"),
        },
        _ => {
            return notes
                .add(d, "xlb pins by a header or cookie that names the backend (`if ($http_NAME = B) { proxy_pass http://B; }`); this is another kind");
        }
    };
    match slot {
        Some(other) if *other != name => notes.add(d, &format!("xlb pins by one header and one cookie per service; {other} is kept")),
        _ => *slot = Some(name),
    }
    pins.to.push((words[2].to_owned(), d.line, d.text()));
}

/// What a `proxy_pass` proxies to: an upstream, a host, or (through a `map` of `$host`)
/// one upstream per host name; each with the hosts it serves (`None`: the server's) and
/// whether it takes the hosts no other service names.
fn targets(pass: &Directive, path: &str, site: &Site, notes: &mut Notes) -> Vec<(Upstream, Option<Vec<String>>, bool)> {
    let Some(rest) = pass.args.first().and_then(|a| a.strip_prefix("http://")) else {
        notes.add(pass, "xlb proxies plain http:// to backends");
        return Vec::new();
    };
    let (target, uri) = rest.split_once('/').map_or((rest, None), |(t, u)| (t, Some(u)));
    if uri.is_some_and(|u| !u.is_empty() || path != "/") {
        notes.add(pass, "a URI in proxy_pass replaces the location's prefix in nginx; xlb passes the path as it came");
    }
    let Some(var) = target.strip_prefix('$') else {
        return single(target, pass, site, notes).map(|up| (up, None, site.default)).into_iter().collect();
    };
    match site.maps.get(&format!("${var}")) {
        Some(m) if m.source == "$host" || m.source == "$http_host" => m
            .entries
            .iter()
            .filter_map(|(key, value)| {
                let up = single(value, pass, site, notes)?;
                Some(if key == "default" { (up, None, true) } else { (up, Some(vec![key.clone()]), false) })
            })
            .collect(),
        _ => {
            notes.add(pass, "a variable xlb cannot follow: only a `map $host` of upstreams is translated");
            Vec::new()
        }
    }
}

/// The upstream called `target`, else the one host (and port) it names.
fn single(target: &str, d: &Directive, site: &Site, notes: &mut Notes) -> Option<Upstream> {
    if let Some(up) = site.upstreams.get(target) {
        return Some(up.clone());
    }
    let Some((host, port)) = upstream::address(target) else {
        notes.add(d, &format!("{target}: neither an upstream nor a host"));
        return None;
    };
    let name = match &host {
        Host::Ip(ip) => ip.to_string(),
        Host::Name(n) => n.clone(),
    };
    let server = upstream::Server::new(host, port, d);
    Some(Upstream { name, balancing: None, servers: vec![server] })
}

/// A `server` of `stream`: an L4 service (UDP with `listen ... udp`).
fn stream_server(d: &Directive, upstreams: &HashMap<String, Upstream>, out: &mut Out, notes: &mut Notes) {
    let listen = listen(d, notes);
    let mut pass = None;
    for c in d.children() {
        match c.name.as_str() {
            "listen" => {}
            "proxy_pass" => pass = Some(c),
            _ => notes.add(c, "no xlb equivalent"),
        }
    }
    let Some(pass) = pass else {
        return notes.add(d, "proxies nowhere (no proxy_pass): nothing to balance");
    };
    let site = Site { listen, hosts: Vec::new(), default: false, upstreams, maps: &HashMap::new() };
    let Some(up) = pass.args.first().and_then(|t| single(t, pass, &site, notes)) else { return };
    let method = match &up.balancing {
        None => "round_robin",
        Some(b) => upstream::l4_method(b).unwrap_or_else(|why| {
            notes.add(b, &why);
            "round_robin"
        }),
    };
    let protocol = if site.listen.udp { "udp" } else { "tcp" };
    let mut svc = Service { name: out.name(&up.name), vip: site.listen.vip, port: site.listen.port, protocol, method: Some(method), ..Service::default() };
    upstream::backends(&up, &mut svc, notes);
    out.services.push(svc);
}
