//! Which service of a listener a request is for: by host, then by path prefix; and
//! which backends of that service serve the host, when backends name hosts of their own.
//!
//! Host tiers, tried in order: exact names, then wildcards (longest suffix first), then
//! services without hosts. Within a tier the longest matching path prefix wins; a tier
//! with no matching path passes to the next. Then the listener's `default` service;
//! else nothing (the caller answers 404). Prefixes match whole segments: `/api`
//! matches `/api`, `/api/` and `/api/v1`, not `/apis`. Paths are compared as sent (no
//! percent-decoding or dot-segment removal): routing only chooses among the
//! configured services, it never opens a way to anything else.

use std::collections::HashMap;

use crate::config::http::{HostPattern, HttpOptions};

/// Path prefixes and their services, sorted longest first by `Router::new`: the first that
/// matches is the longest.
type Paths = Vec<(String, usize)>;

/// Values by host pattern, compiled once per config: the exact name is one hash
/// lookup; wildcards are looked up by the host's own suffixes (`a.b.app.dev` asks for
/// `.b.app.dev`, then `.app.dev`, then `.dev`), so the cost grows with the host's
/// labels, never with the number of routes.
#[derive(Debug)]
struct HostTable<T> {
    exact: HashMap<String, T>,
    /// By suffix, with its leading dot.
    wildcard: HashMap<String, T>,
}

impl<T> Default for HostTable<T> {
    fn default() -> Self {
        Self { exact: HashMap::new(), wildcard: HashMap::new() }
    }
}

impl<T: Default> HostTable<T> {
    fn entry(&mut self, h: &HostPattern) -> &mut T {
        match h {
            HostPattern::Exact(name) => self.exact.entry(name.clone()).or_default(),
            HostPattern::Wildcard(suffix) => self.wildcard.entry(suffix.clone()).or_default(),
        }
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.exact.values_mut().chain(self.wildcard.values_mut())
    }

    /// The values for a normalized host, most specific first: the exact name, then the
    /// wildcards, longest suffix first (only suffixes shorter than the host: `*.app.dev`
    /// does not match `app.dev`).
    fn lookup<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a T> + 'a {
        let suffixes = (!self.wildcard.is_empty()).then_some(host).into_iter().flat_map(|h| h.match_indices('.')).filter(|(i, _)| *i > 0);
        self.exact.get(host).into_iter().chain(suffixes.filter_map(move |(i, _)| self.wildcard.get(&host[i..])))
    }
}

#[derive(Debug, Default)]
pub struct Router {
    hosts: HostTable<Paths>,
    any: Paths,
    default: Option<usize>,
}

impl Router {
    /// Routes for the services of one listener (indexes into `services`). Returns the
    /// router and the conflicts found (the first service listed keeps the route).
    pub fn new(services: &[&HttpOptions]) -> (Self, Vec<String>) {
        let mut r = Router::default();
        let mut conflicts = Vec::new();
        let add = |paths: &mut Paths, prefix: &str, svc: usize, what: &str, conflicts: &mut Vec<String>| {
            if let Some((_, other)) = paths.iter().find(|(p, _)| p == prefix) {
                if *other != svc {
                    conflicts.push(format!("{what} path {prefix}: already routed to another service"));
                }
                return;
            }
            paths.push((prefix.to_owned(), svc));
        };
        for (svc, o) in services.iter().enumerate() {
            let prefixes: Vec<&str> = if o.paths.is_empty() { vec!["/"] } else { o.paths.iter().map(|p| p.0.as_str()).collect() };
            if o.default {
                match r.default {
                    Some(_) => conflicts.push("two default services on one listener".into()),
                    None => r.default = Some(svc),
                }
            }
            if o.hosts.is_empty() {
                for p in &prefixes {
                    add(&mut r.any, p, svc, "any host", &mut conflicts);
                }
            }
            for h in &o.hosts {
                let paths = r.hosts.entry(h);
                for p in &prefixes {
                    add(paths, p, svc, &format!("host {h}"), &mut conflicts);
                }
            }
        }
        for paths in r.hosts.values_mut().chain(std::iter::once(&mut r.any)) {
            paths.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        }
        (r, conflicts)
    }

    /// The service for a normalized host (see [`normalize_host`]) and a path.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<usize> {
        let by_host = host.into_iter().flat_map(|h| self.hosts.lookup(h));
        by_host.chain(std::iter::once(&self.any)).find_map(|paths| longest_prefix(paths, path)).or(self.default)
    }
}

/// Which backends of a service serve which host, when some backends carry host names
/// of their own (`xlb.host`): a backend with names serves only requests for the most
/// specific of them that matches (exact, then the longest wildcard, as routes); a
/// backend without names serves every other host of the service.
#[derive(Debug, Default)]
pub struct BackendHosts {
    named: HostTable<Vec<usize>>,
    unnamed: Vec<usize>,
    all: Vec<usize>,
}

impl BackendHosts {
    /// From each backend's names, in backend order.
    pub fn new<'a>(backends: impl IntoIterator<Item = &'a [HostPattern]>) -> Self {
        let mut t = BackendHosts::default();
        for (i, hosts) in backends.into_iter().enumerate() {
            t.all.push(i);
            if hosts.is_empty() {
                t.unnamed.push(i);
            }
            for h in hosts {
                t.named.entry(h).push(i);
            }
        }
        t
    }

    /// The backends that must not serve a request for `host` (a normalized host).
    pub fn excluded(&self, host: Option<&str>) -> Vec<usize> {
        if self.unnamed.len() == self.all.len() {
            return Vec::new();
        }
        let serving = host.and_then(|h| self.named.lookup(h).next()).unwrap_or(&self.unnamed);
        self.all.iter().copied().filter(|i| !serving.contains(i)).collect()
    }
}

/// The service of the longest prefix of `path` (`paths` sorted longest first).
fn longest_prefix(paths: &Paths, path: &str) -> Option<usize> {
    paths.iter().find(|(p, _)| prefix_matches(p, path)).map(|(_, s)| *s)
}

pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/" || path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// A Host header or URI authority as routes compare it: lowercase, without port or
/// trailing dot, IPv6 without brackets. `None` for something that is not a host.
pub fn normalize_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))) {
            return None;
        }
        inside.parse::<std::net::Ipv6Addr>().ok()?;
        inside
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            Some(_) => return None,
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    // An empty label (`app.dev..`, found by fuzz/route) would leave a trailing dot that
    // no route, trimmed of its dots, can match.
    let labels_ok = !host.starts_with('.') && !host.ends_with('.') && !host.contains("..");
    let ok = labels_ok && !host.is_empty() && host.len() <= 255 && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
    ok.then(|| host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(hosts: &[&str], paths: &[&str], default: bool) -> HttpOptions {
        HttpOptions {
            hosts: hosts.iter().map(|h| h.parse().unwrap()).collect(),
            paths: paths.iter().map(|p| p.parse().unwrap()).collect(),
            default,
            ..HttpOptions::default()
        }
    }

    #[test]
    fn hosts_then_paths() {
        let s = [
            opts(&["app.dev"], &[], false),          // 0
            opts(&["*.app.dev"], &[], false),        // 1
            opts(&["*.eu.app.dev"], &[], false),     // 2
            opts(&["app.dev"], &["/api"], false),    // 3
            opts(&["other.dev"], &["/only"], false), // 4
            opts(&[], &["/static"], false),          // 5
        ];
        let (r, conflicts) = Router::new(&s.iter().collect::<Vec<_>>());
        assert!(conflicts.is_empty(), "{conflicts:?}");
        let at = |h: &str, p: &str| r.route(normalize_host(h).as_deref(), p);
        assert_eq!(at("app.dev", "/"), Some(0));
        assert_eq!(at("APP.dev.:8080", "/x"), Some(0));
        assert_eq!(at("app.dev", "/api"), Some(3));
        assert_eq!(at("app.dev", "/api/v1?x"), Some(3));
        assert_eq!(at("app.dev", "/apis"), Some(0));
        assert_eq!(at("x.app.dev", "/"), Some(1));
        assert_eq!(at("a.b.app.dev", "/"), Some(1));
        assert_eq!(at("x.eu.app.dev", "/"), Some(2));
        assert_eq!(at("xapp.dev", "/"), None);
        // No path match in the host's tier: falls to host-less routes.
        assert_eq!(at("other.dev", "/static/a.css"), Some(5));
        assert_eq!(at("other.dev", "/"), None);
        assert_eq!(at("unknown", "/static"), Some(5));
        assert_eq!(r.route(None, "/"), None);
    }

    #[test]
    fn compiled_tables_do_not_depend_on_order_or_count() {
        // 1,000 exact names and 1,000 wildcards, the bench's shape: found by hash.
        let mut s: Vec<HttpOptions> = (0..1000).map(|i| opts(&[&format!("app{i}.bench")], &[], false)).collect();
        s.extend((0..1000).map(|i| opts(&[&format!("*.w{i}.bench")], &[], false)));
        // Prefixes listed shortest first: the longest still wins.
        s.push(opts(&["paths.dev"], &["/a"], false)); // 2000
        s.push(opts(&["paths.dev"], &["/a/b", "/c"], false)); // 2001
        s.push(opts(&["*.deep.w7.bench"], &[], false)); // 2002
        let (r, conflicts) = Router::new(&s.iter().collect::<Vec<_>>());
        assert!(conflicts.is_empty(), "{conflicts:?}");
        assert_eq!(r.route(Some("app0.bench"), "/"), Some(0));
        assert_eq!(r.route(Some("app999.bench"), "/x"), Some(999));
        assert_eq!(r.route(Some("x.w0.bench"), "/"), Some(1000));
        assert_eq!(r.route(Some("a.b.w999.bench"), "/"), Some(1999));
        assert_eq!(r.route(Some("w999.bench"), "/"), None, "a wildcard needs a label before its suffix");
        assert_eq!(r.route(Some("x.deep.w7.bench"), "/"), Some(2002), "the longest suffix first");
        assert_eq!(r.route(Some("deep.w7.bench"), "/"), Some(1007));
        assert_eq!(r.route(Some("paths.dev"), "/a/b/c"), Some(2001));
        assert_eq!(r.route(Some("paths.dev"), "/a/bc"), Some(2000));
        assert_eq!(r.route(Some("paths.dev"), "/c"), Some(2001));
        assert_eq!(r.route(Some("paths.dev"), "/d"), None);
        assert_eq!(r.route(Some("app1000.bench"), "/"), None);
    }

    #[test]
    fn default_and_catch_all() {
        let s = [opts(&["a.dev"], &[], false), opts(&["b.dev"], &[], true)];
        let (r, _) = Router::new(&s.iter().collect::<Vec<_>>());
        assert_eq!(r.route(Some("zzz"), "/"), Some(1));
        let s = [opts(&[], &[], false)];
        let (r, _) = Router::new(&s.iter().collect::<Vec<_>>());
        assert_eq!(r.route(Some("anything"), "/x"), Some(0));
        assert_eq!(r.route(None, "/x"), Some(0));
    }

    #[test]
    fn conflicts_are_reported_first_wins() {
        let s = [opts(&["a.dev"], &[], false), opts(&["a.dev"], &[], false)];
        let (r, c) = Router::new(&s.iter().collect::<Vec<_>>());
        assert_eq!(c.len(), 1);
        assert_eq!(r.route(Some("a.dev"), "/"), Some(0));
    }

    #[test]
    fn backends_with_names_serve_only_those() {
        let p = |hs: &[&str]| hs.iter().map(|h| h.parse::<HostPattern>().unwrap()).collect::<Vec<_>>();
        let hosts = [p(&["api.app.dev"]), p(&[]), p(&["api.app.dev", "*.eu.app.dev"]), p(&["*.app.dev"])];
        let t = BackendHosts::new(hosts.iter().map(Vec::as_slice));
        assert_eq!(t.excluded(Some("api.app.dev")), [1, 3], "exact names before wildcards");
        assert_eq!(t.excluded(Some("x.eu.app.dev")), [0, 1, 3], "the longest wildcard");
        assert_eq!(t.excluded(Some("www.app.dev")), [0, 1, 2]);
        assert_eq!(t.excluded(Some("other.dev")), [0, 2, 3], "other hosts: the unnamed backends");
        assert_eq!(t.excluded(None), [0, 2, 3]);
        let none = BackendHosts::new([p(&[]), p(&[])].iter().map(Vec::as_slice));
        assert!(none.excluded(Some("api.app.dev")).is_empty(), "no names: every backend serves");
    }

    #[test]
    fn host_normalization() {
        assert_eq!(normalize_host("[FD00::1]:80").as_deref(), Some("fd00::1"));
        assert_eq!(normalize_host("10.0.0.1:8080").as_deref(), Some("10.0.0.1"));
        assert_eq!(normalize_host("App.Dev.").as_deref(), Some("app.dev"));
        for bad in ["", "a b", "a:b", "[::1", "[zz]", "a/b", "a@b", "b.dev..", ".b.dev", "a..b", "."] {
            assert_eq!(normalize_host(bad), None, "{bad}");
        }
    }
}
