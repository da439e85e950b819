//! Route matching: services of one listener built from fuzzed host patterns and path
//! prefixes (`HOSTS|PATHS|d` a line, up to 4, then an empty line), then `HOST PATH`
//! queries. A route names a service of the listener whose prefix matches the path, and
//! a normalized host is lowercase without a trailing dot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xlb::{
    config::http::HttpOptions,
    proxy::select::route::{Router, normalize_host, prefix_matches},
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let mut services = Vec::new();
    for line in lines.by_ref().take_while(|l| !l.is_empty()).take(4) {
        let mut f = line.split('|');
        let mut o = HttpOptions::default();
        o.hosts = f.next().unwrap_or("").split(',').filter_map(|h| h.parse().ok()).collect();
        o.paths = f.next().unwrap_or("").split(',').filter_map(|p| p.parse().ok()).collect();
        o.default = f.next() == Some("d");
        services.push(o);
    }
    let refs: Vec<&HttpOptions> = services.iter().collect();
    let (router, _conflicts) = Router::new(&refs);
    for q in lines.take(16) {
        let (host, path) = q.split_once(' ').unwrap_or((q, "/"));
        let norm = normalize_host(host);
        if let Some(n) = &norm {
            assert_eq!(*n, n.to_ascii_lowercase());
            assert!(!n.ends_with('.'), "{n:?}");
        }
        let Some(i) = router.route(norm.as_deref(), path) else { continue };
        let o = services.get(i).expect("a route to a service of the listener");
        assert!(o.default || o.paths.is_empty() || o.paths.iter().any(|p| prefix_matches(&p.0, path)), "{path:?} routed to {o:?}");
    }
});
