//! Which service of a listener a request is for: by host, then by path prefix.
//!
//! Host tiers, tried in order: exact names, then wildcards (longest suffix first), then
//! services without hosts. Within a tier the longest matching path prefix wins; a tier
//! with no matching path passes to the next. Then the listener's `default` service;
//! else nothing (the caller answers 404). Prefixes match whole segments: `/api`
//! matches `/api`, `/api/` and `/api/v1`, not `/apis`. Paths are compared as sent (no
//! percent-decoding or dot-segment removal): routing only chooses among the
//! configured services, it never opens a way to anything else.

use std::collections::HashMap;

use super::config::{HostPattern, HttpOptions};

type Paths = Vec<(String, usize)>;

#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<String, Paths>,
    /// (suffix with its leading dot, paths), longest suffix first.
    wildcard: Vec<(String, Paths)>,
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
                let paths = match h {
                    HostPattern::Exact(name) => r.exact.entry(name.clone()).or_default(),
                    HostPattern::Wildcard(suffix) => match r.wildcard.iter().position(|(s, _)| s == suffix) {
                        Some(i) => &mut r.wildcard[i].1,
                        None => {
                            r.wildcard.push((suffix.clone(), Vec::new()));
                            &mut r.wildcard.last_mut().expect("just pushed").1
                        }
                    },
                };
                for p in &prefixes {
                    add(paths, p, svc, &format!("host {h}"), &mut conflicts);
                }
            }
        }
        r.wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        (r, conflicts)
    }

    /// The service for a normalized host (see [`normalize_host`]) and a path.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<usize> {
        let mut tiers: Vec<&Paths> = Vec::new();
        if let Some(h) = host {
            tiers.extend(self.exact.get(h));
            tiers.extend(self.wildcard.iter().filter(|(s, _)| h.len() > s.len() && h.ends_with(s.as_str())).map(|(_, p)| p));
        }
        tiers.push(&self.any);
        tiers.into_iter().find_map(|paths| longest_prefix(paths, path)).or(self.default)
    }
}

fn longest_prefix(paths: &Paths, path: &str) -> Option<usize> {
    paths.iter().filter(|(p, _)| prefix_matches(p, path)).max_by_key(|(p, _)| p.len()).map(|(_, s)| *s)
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
    let ok = !host.is_empty() && host.len() <= 255 && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
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
    fn host_normalization() {
        assert_eq!(normalize_host("[FD00::1]:80").as_deref(), Some("fd00::1"));
        assert_eq!(normalize_host("10.0.0.1:8080").as_deref(), Some("10.0.0.1"));
        for bad in ["", "a b", "a:b", "[::1", "[zz]", "a/b", "a@b"] {
            assert_eq!(normalize_host(bad), None, "{bad}");
        }
    }
}
