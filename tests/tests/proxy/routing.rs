//! Routing by host and path, pinning by header and cookie, sticky cookies, Docker names.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use xlb::{
    config::Config,
    discovery::{DockerWatch, Registry},
    plan::{self, BackendView, ServiceView, Vitals},
};
use xlb_tests::{
    docker::{self, Container},
    tls::Ca,
    util::TempDir,
};

use crate::{
    backends::{Testd, dead_addr},
    client::{get, raw, tally},
    lb::{Lb, svc},
};

#[test]
fn routes_by_host_and_path_and_never_proxies_elsewhere() {
    let ts: Vec<Testd> = ["app", "wild", "api", "static"].iter().map(|n| Testd::start(n)).collect();
    let lb = Lb::new();
    lb.update(vec![
        svc("app", "hosts: [app.dev]", vec![ts[0].view(1)]),
        svc("wild", "hosts: ['*.app.dev']", vec![ts[1].view(1)]),
        svc("api", "hosts: [app.dev]\npaths: [/api]", vec![ts[2].view(1)]),
        svc("static", "hosts: [cdn.dev]\npaths: [/static]", vec![ts[3].view(1)]),
    ]);
    let addr = lb.addr();
    let at = |host: &str, path: &str| {
        let r = get(addr, host, path, &[]);
        if r.status == 200 { r.name() } else { r.status.to_string() }
    };
    assert_eq!(at("app.dev", "/"), "app");
    assert_eq!(at("APP.dev:80", "/?x=1"), "app");
    assert_eq!(at("app.dev", "/api"), "404", "routed to api; testd has no /api");
    assert_eq!(get(addr, "app.dev", "/api", &[]).text(), "not found\n", "the 404 came from the api backend");
    assert_eq!(at("eu.app.dev", "/"), "wild");
    assert_eq!(at("a.b.app.dev", "/"), "wild");
    assert_eq!(at("cdn.dev", "/"), "404");
    assert_eq!(at("unknown.dev", "/"), "404");
    let r = get(addr, "unknown.dev", "/", &[]);
    assert_eq!((r.status, r.text().as_str()), (404, "404 Not Found\n"), "a clean page of the proxy's own");
    // Absolute-form names the host; a host we do not serve is 404, never fetched.
    let target = ts[0].addr();
    let (r, _) = raw(addr, format!("GET http://{target}/ HTTP/1.1\r\nHost: app.dev\r\n\r\n").as_bytes());
    assert_eq!(r.unwrap().status, 404);
    let (r, _) = raw(addr, b"GET http://app.dev/ HTTP/1.1\r\nHost: evil.example\r\n\r\n");
    assert_eq!(r.unwrap().name(), "app");
    let (r, _) = raw(addr, format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes());
    assert_eq!(r.unwrap().status, 405);
    // A default service takes what no route matches.
    lb.update(vec![svc("app", "hosts: [app.dev]", vec![ts[0].view(1)]), svc("fallback", "hosts: [other.dev]\ndefault: true", vec![ts[3].view(1)])]);
    assert_eq!(at("unknown.dev", "/"), "static");
    assert_eq!(at("app.dev", "/"), "app");
}

/// Backends' own host names (a container's `xlb.host` label): services without `hosts`
/// on one listener are told apart by them, and within a service each name goes to the
/// backends that carry it.
#[test]
fn backend_host_names_route_to_their_backends() {
    let ts: Vec<Testd> = ["api1", "site1", "beta1", "web1"].iter().map(|n| Testd::start(n)).collect();
    let named = |t: &Testd, hosts: &[&str]| BackendView { hosts: hosts.iter().map(|h| h.parse().unwrap()).collect(), ..t.view(1) };
    let lb = Lb::new();
    lb.update(vec![
        svc("api", "", vec![named(&ts[0], &["api.app.dev"])]),
        svc("site", "", vec![named(&ts[1], &["app.app.dev", "www.app.dev"])]),
        svc("web", "hosts: [web.dev]", vec![named(&ts[2], &["beta.web.dev"]), ts[3].view(1)]),
    ]);
    let addr = lb.addr();
    let at = |host: &str| {
        let r = get(addr, host, "/", &[]);
        if r.status == 200 { r.name() } else { r.status.to_string() }
    };
    for _ in 0..3 {
        assert_eq!(at("api.app.dev"), "api1");
        assert_eq!(at("app.app.dev"), "site1");
        assert_eq!(at("www.app.dev"), "site1");
        assert_eq!(at("beta.web.dev"), "beta1", "a name goes only to the backend carrying it");
        assert_eq!(at("web.dev"), "web1", "the service's other hosts: backends without names");
    }
    assert_eq!(at("unknown.app.dev"), "404", "labels replace a service's any-host route");
    assert_eq!(at("x"), "404");
}

/// The HTTP services of `config` as xlb plans them from what its Docker discovery
/// reports, once `complete` holds (within 30 s). (No prober runs here: every container
/// counts as passing its probe.)
fn docker_plan(lb: &Lb, config: &Config, what: &str, complete: impl Fn(&Registry) -> bool) -> Vec<ServiceView> {
    let watches: Vec<DockerWatch> = config
        .services
        .iter()
        .map(|s| {
            let d = s.docker.as_ref().unwrap();
            DockerWatch { service: s.name.clone(), name: d.name.clone(), project: None, network: None, port: d.port }
        })
        .collect();
    let registry = lb.rt.block_on(async {
        let (_watch_tx, watch_rx) = tokio::sync::watch::channel(watches);
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(xlb::discovery::docker::run(watch_rx, tx));
        let mut registry = Registry::default();
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        while !complete(&registry) {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(u)) => {
                    registry.apply(u);
                }
                _ => {
                    let sets: Vec<_> = config.services.iter().map(|s| (s.name.as_str(), registry.backends(&s.name))).collect();
                    panic!("Docker discovery did not report {what} within 30 s: {sets:?}")
                }
            }
        }
        registry
    });
    let passing = |_: &str, _| Vitals { probe: Some(true), since: None };
    let plan = plan::plan(config, "lo", &registry, Instant::now(), passing).unwrap();
    assert!(plan.services.is_empty());
    plan.http
}

/// The same on the real Docker engine, end to end through xlb's own parts: containers
/// labelled `xlb.service` and `xlb.host`, found by xlb's Docker discovery, planned by
/// `plan::plan` from a config of two HTTP services on one VIP and port, served by
/// the proxy. (No prober runs here: every container counts as passing its probe.)
#[test]
fn docker_xlb_host_labels_route_subdomains_to_their_containers() {
    // Other suites stop and restart the Docker daemon under this lock.
    let _g = xlb_tests::serial();
    docker::require_docker();
    let id = xlb_tests::util::unique_id();
    let (api_label, app_label) = (format!("xt{id}api"), format!("xt{id}app"));
    let labelled = |role: &str, service: &str, host: &str| {
        let (s, h) = (format!("xlb.service={service}"), format!("xlb.host={host}"));
        Container::testd(role, &["--label", &s, "--label", &h])
    };
    let _api = labelled("api", &api_label, "api.app.dev");
    let _app = labelled("app", &app_label, "app.app.dev, www.app.dev");
    let _beta = labelled("beta", &app_label, "beta.app.dev");
    let port = dead_addr().port();
    let yaml = format!(
        "services:\n\
         - {{ name: api, vip: 127.0.0.1, port: {port}, protocol: http, docker: {{ name: {api_label}, port: 8080 }} }}\n\
         - {{ name: app, vip: 127.0.0.1, port: {port}, protocol: http, docker: {{ name: {app_label}, port: 8080 }} }}\n"
    );
    let config = Config::parse(&yaml, Path::new("docker-hosts.yaml")).unwrap();
    let lb = Lb::new();
    let http = docker_plan(&lb, &config, "the 3 containers", |r| r.backends("api").len() == 1 && r.backends("app").len() == 2);
    lb.update(http);
    let addr = lb.proxy.local_addr(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).expect("listening on the services' VIP and port");
    let at = |host: &str| {
        let r = get(addr, host, "/", &[]);
        if r.status == 200 { r.name() } else { r.status.to_string() }
    };
    let mut seen = Vec::new();
    for host in ["api.app.dev", "app.app.dev", "www.app.dev", "beta.app.dev", "other.app.dev"] {
        let names: Vec<String> = (0..4).map(|_| at(host)).collect();
        seen.push(format!("{host} -> {names:?}"));
        let want = match host {
            "api.app.dev" => "api",
            "app.app.dev" | "www.app.dev" => "app",
            "beta.app.dev" => "beta",
            _ => "404",
        };
        assert!(names.iter().all(|n| n == want), "{host}: {names:?}, want {want}");
    }
    eprintln!("xlb.host routing through Docker discovery:\n{}", seen.join("\n"));
}

/// Docker's `xlb.tls` label on the real Docker engine, through discovery and planning: the
/// hosts of a container labelled `xlb.tls=true` are served on the TLS listener (`tls.port`)
/// with the configured certificate, as curl sees it; a container without the label keeps
/// its host on plain HTTP only.
#[test]
fn docker_xlb_tls_label_serves_its_hosts_over_tls() {
    let _g = xlb_tests::serial();
    docker::require_docker();
    let id = xlb_tests::util::unique_id();
    let service = format!("xt{id}sec");
    let label = format!("xlb.service={service}");
    let _secure = Container::testd("secure", &["--label", &label, "--label", "xlb.host=secure.app.test", "--label", "xlb.tls=true"]);
    let _plain = Container::testd("plain", &["--label", &label, "--label", "xlb.host=plain.app.test"]);
    let dir = TempDir::new();
    let ca = Ca::new();
    ca.leaf(dir.path(), "app", "app", &["*.app.test"], false);
    let ca_pem = dir.path().join("ca.pem");
    std::fs::write(&ca_pem, &ca.pem).unwrap();
    let (port, tls_port) = (dead_addr().port(), dead_addr().port());
    let d = dir.path().display();
    let yaml = format!(
        "tls:\n  certificates: [{{ cert: {d}/app.crt, key: {d}/app.key }}]\n  port: {tls_port}\nservices:\n\
         - {{ name: sec, vip: 127.0.0.1, port: {port}, protocol: http, docker: {{ name: {service}, port: 8080 }} }}\n"
    );
    let config = Config::parse(&yaml, Path::new("docker-tls.yaml")).unwrap();
    let lb = Lb::new();
    assert_eq!(lb.proxy.load_certificates(&config.tls.files()), Vec::<String>::new());
    let http = docker_plan(&lb, &config, "the 2 containers", |r| r.backends("sec").len() == 2);
    lb.update(http);
    let curl = |url: &str, host: &str, port: u16| -> String {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert", &ca_pem.display().to_string(), "--resolve", &format!("{host}:{port}:127.0.0.1"), "-w", " %{http_code}", url])
            .output()
            .expect("curl");
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)).trim().to_owned()
    };
    let tls = |host: &str| curl(&format!("https://{host}:{tls_port}/"), host, tls_port);
    let plain = |host: &str| curl(&format!("http://{host}:{port}/"), host, port);
    assert_eq!(tls("secure.app.test"), "secure\n 200", "the labelled host over TLS");
    assert_eq!(tls("plain.app.test"), "404 Not Found\n 404", "no route on the TLS listener for a host without the label (xlb's own 404)");
    assert_eq!(plain("plain.app.test"), "plain\n 200");
    assert_eq!(plain("secure.app.test"), "secure\n 200", "the labelled host stays on plain HTTP too");
}

/// Pinning on the real Docker engine, through xlb's discovery and planning: a pin header
/// or cookie naming a container by its container name, its hostname (`--hostname`, else
/// Docker's short id) or its `xlb.name` label reaches that container on every request;
/// an unknown name is balanced over all of them.
#[test]
fn docker_pins_by_container_name_hostname_and_xlb_name() {
    let _g = xlb_tests::serial();
    docker::require_docker();
    let id = xlb_tests::util::unique_id();
    let service = format!("xt{id}pin");
    let label = format!("xlb.service={service}");
    let host1 = format!("xt{id}-host-one");
    let one = Container::testd("one", &["--label", &label, "--hostname", &host1, "--label", "xlb.name=Blue, first"]);
    let two = Container::testd("two", &["--label", &label, "--label", &format!("xlb.name=xt{id}-green")]);
    let three = Container::testd("three", &["--label", &label]);
    let port = dead_addr().port();
    let yaml = format!(
        "services:\n\
         - {{ name: pin, vip: 127.0.0.1, port: {port}, protocol: http, docker: {{ name: {service}, port: 8080 }}, http: {{ pin_header: app, pin_cookie: app }} }}\n"
    );
    let config = Config::parse(&yaml, Path::new("docker-pin.yaml")).unwrap();
    let lb = Lb::new();
    lb.update(docker_plan(&lb, &config, "the 3 containers", |r| r.backends("pin").len() == 3));
    let addr = lb.proxy.local_addr(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).expect("listening on the service's VIP and port");

    let green = format!("xt{id}-green");
    let short_id = &three.id[..12];
    let pins = [
        (one.name.as_str(), "one"),
        (host1.as_str(), "one"),
        ("BLUE", "one"),
        ("first", "one"),
        (two.name.as_str(), "two"),
        (green.as_str(), "two"),
        (three.name.as_str(), "three"),
        (short_id, "three"),
    ];
    const N: usize = 20;
    let mut seen = Vec::new();
    for (name, want) in pins {
        let cookie = format!("x=1; app={name}");
        for extra in [("app", name), ("Cookie", cookie.as_str())] {
            let answers: Vec<String> = (0..N).map(|_| get(addr, "pin.dev", "/", &[extra]).name()).collect();
            let hits = answers.iter().filter(|a| *a == want).count();
            seen.push(format!("{}: {} -> {want} {hits}/{N}", extra.0, extra.1));
            assert_eq!(hits, N, "{extra:?}: {answers:?}, want {want}");
        }
    }
    // An unknown name: normal balancing (round robin over the three).
    let t = tally((0..30).map(|_| get(addr, "pin.dev", "/", &[("app", "nope")]).name()));
    seen.push(format!("app: nope -> {t:?}"));
    assert_eq!(t.values().copied().collect::<Vec<_>>(), [10, 10, 10], "{t:?}");
    eprintln!("pinning through Docker discovery:\n{}", seen.join("\n"));
}

#[test]
fn pins_by_header_and_cookie_by_any_name() {
    let ts: Vec<Testd> = ["app1", "app2", "app3"].iter().map(|n| Testd::start(n)).collect();
    let mut views: Vec<BackendView> = ts.iter().map(|t| t.view(1)).collect();
    views[1].aliases = vec!["host-2".into(), "web-two".into()];
    let lb = Lb::one("pin_header: app\npin_cookie: app", views);
    let addr = lb.addr();
    for extra in [("app", "app2"), ("app", "APP2"), ("app", "web-two"), ("Cookie", "x=1; app=app2"), ("Cookie", "app=host-2")] {
        let names: Vec<String> = (0..5).map(|_| get(addr, "x", "/", &[extra]).name()).collect();
        assert!(names.iter().all(|n| n == "app2"), "{extra:?}: {names:?}");
    }
    // An unknown name: normal balancing.
    let t = tally((0..9).map(|_| get(addr, "x", "/", &[("app", "nope")]).name()));
    assert_eq!(t.len(), 3, "{t:?}");
}

#[test]
fn sticky_cookie_survives_an_address_change() {
    // Names with letters beyond a-f, so the hex cookie value cannot contain them.
    let a = Testd::start("red");
    let b = Testd::start("green");
    let opts = "sticky_cookie: { name: srv, max_age: 1h }";
    let lb = Lb::one(opts, vec![a.view(1), b.view(1)]);
    let addr = lb.addr();
    let first = get(addr, "x", "/", &[]);
    let set = first.header("set-cookie").expect("a sticky cookie is set");
    assert!(set.starts_with("srv=") && set.contains("Path=/") && set.contains("Max-Age=3600") && set.contains("HttpOnly"), "{set}");
    assert!(!set.contains(&first.name()), "the value does not leak the backend's name: {set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let who = first.name();
    for _ in 0..10 {
        let r = get(addr, "x", "/", &[("Cookie", &cookie)]);
        assert_eq!(r.name(), who);
        assert!(r.header("set-cookie").is_none(), "no new cookie while it holds");
    }
    // The backend comes back under the same name at another address.
    let (gone, other) = if who == "red" { (a, b) } else { (b, a) };
    let old_addr = gone.addr();
    drop(gone);
    let moved = Testd::start(&who);
    assert_ne!(moved.addr(), old_addr);
    lb.update(vec![svc("web", opts, vec![moved.view(1), other.view(1)])]);
    for _ in 0..10 {
        assert_eq!(get(addr, "x", "/", &[("Cookie", &cookie)]).name(), who);
    }
    eprintln!("sticky: {cookie} kept {who} at {} after its move", moved.addr());
}
