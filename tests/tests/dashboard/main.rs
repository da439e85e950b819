//! The dashboard (`GET /` on the admin port) in a real browser: xlb runs in the namespace
//! topology (client -> LB -> b1, b2 running xlb-testd) with an L4 service `web` and an HTTP
//! service whose name is markup (`<img src=x onerror=...>&"api"`), `admin.token` set. Headless
//! Chromium (Debian's `chromium`), run in the LB namespace where the admin endpoint listens:
//!
//! - without the token the page shows its token form and no data;
//! - with `?token=`, under steady HTTP load, its req/s is live (above 0, computed from two
//!   snapshots by the page);
//! - after fixed traffic (L4 connections, HTTP 200s and backend 503s), a backend whose server
//!   died (probe: unhealthy), a rejected and an applied reload, every name, state, weight and
//!   count it shows equals `/api/v1/services`; the markup name is shown as text (escaped in the
//!   DOM, no `<img>` element); the health transition and both reloads are listed;
//! - a screenshot is written to `target/dashboard-test.png` and is a real picture.
//!
//! Needs root, `XLB_BIN` and `chromium` (`cargo xtask setup` installs it); run with
//! `XLB_BIN=$PWD/target/debug/xlb cargo test -p xlb-tests --test dashboard -- --nocapture`.
//! Figures on lines starting with `DASHBOARD-FIGURE`.

mod dom;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use dom::{Dom, escaped};
use xlb_tests::{
    Topology, Xlb,
    status::Status,
    topology::{LB_CLIENT_IF, LB_CLIENT_V4, TESTD_PORT, VIP4},
    util::{self, TempDir, TempFile, wait_for},
    xlb::XlbArgs,
};

const TOKEN: &str = "dash-s3cret";
const ADMIN: &str = "127.0.0.1:9100";
/// The HTTP service's name: markup, which the page must show as text.
const MARKUP: &str = r#"<img src=x onerror=alert(1)>&"api""#;
const HTTP_PORT: u16 = 8081;
/// Fixed traffic: L4 connections, HTTP 200s, HTTP 503s from the backends.
const N_L4: usize = 30;
const N_OK: usize = 40;
const N_503: usize = 6;

/// The config: `web` (L4, VIP4:80) and the HTTP service over b1 and b2, TCP probes every
/// 300 ms for the latter, no retries (each 503 is one answer), closed flows kept for an hour
/// (the page's "flows held" stays what the API said).
fn yaml(topo: &Topology) -> String {
    let (b1, b2) = (topo.ip("b1", false), topo.ip("b2", false));
    format!(
        "dataplane:\n  tcp_closed_timeout: 1h\nadmin:\n  token: {TOKEN}\nservices:\n  - name: web\n    vip: \"{VIP4}\"\n    port: 80\n    backends: \
         [{{ address: \"{b1}\", port: {TESTD_PORT} }}, {{ address: \"{b2}\", port: {TESTD_PORT} }}]\n  - name: '{MARKUP}'\n    port: {HTTP_PORT}\n    \
         protocol: http\n    backends: [{{ address: \"{b1}\", port: {TESTD_PORT} }}, {{ address: \"{b2}\", port: {TESTD_PORT} }}]\n    health: {{ interval: 300ms, \
         timeout: 200ms, rise: 1, fall: 1 }}\n    http: {{ retries: {{ attempts: 0 }} }}\n"
    )
}

fn figure(text: &str) {
    println!("DASHBOARD-FIGURE {text}");
}

/// The page's virtual time for a look at settled numbers (8 polls).
const SETTLED_BUDGET_MS: u64 = 8_000;
/// The page's virtual time under load: virtual time runs ahead while no fetch is pending, so
/// only the polls' real fetches take real time (about 15 ms each, page rendering included);
/// 400 of them span seconds, several of xlb's 2 s snapshots.
const LIVE_BUDGET_MS: u64 = 400_000;

/// Headless Chromium in the LB namespace on the admin endpoint's `path`, with `args`
/// (`--dump-dom`, `--screenshot=FILE`), its timers run for `budget_ms` of virtual time: its
/// stdout.
fn chromium(topo: &Topology, path: &str, budget_ms: u64, args: &[&str]) -> String {
    assert!(util::have("chromium"), "chromium is not installed (needed by the dashboard test): run `cargo xtask setup` or `apt-get install chromium`");
    let profile = TempDir::new();
    let mut all = vec![
        "60".to_owned(),
        "chromium".into(),
        "--headless".into(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--hide-scrollbars".into(),
        "--no-first-run".into(),
        format!("--user-data-dir={}", profile.path().display()),
        "--window-size=1280,1000".into(),
        format!("--virtual-time-budget={budget_ms}"),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    all.push(format!("http://{ADMIN}{path}"));
    topo.lb.try_run("timeout", &all.iter().map(String::as_str).collect::<Vec<_>>()).unwrap_or_else(|e| panic!("chromium {args:?}: {e}"))
}

/// `/api/v1/services` with the token (curl in the LB namespace), decoded.
fn api(topo: &Topology) -> Status {
    let auth = format!("Authorization: Bearer {TOKEN}");
    let text = topo
        .lb
        .try_run("curl", &["-sS", "--fail", "--max-time", "2", "-H", &auth, &format!("http://{ADMIN}/api/v1/services")])
        .unwrap_or_else(|e| panic!("GET /api/v1/services: {e}"));
    Status::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn http_front() -> SocketAddr {
    (LB_CLIENT_V4, HTTP_PORT).into()
}

/// `count` requests `method path` from the client to `addr` (new connection each): their statuses.
fn requests(topo: &Topology, addr: SocketAddr, method: &str, path: &str, count: usize) -> Vec<u16> {
    topo.client.enter(|| (0..count).map(|_| xlb_tests::http::request(addr, method, path).map_or(0, |r| r.status)).collect())
}

/// `POST path` to backend `name`'s xlb-testd, from its own namespace.
fn tell_backend(topo: &Topology, name: &str, path: &str) {
    let b = topo.backend(name);
    let status = b.ns.enter(|| xlb_tests::http::request(b.addr4(), "POST", path).map(|r| r.status));
    assert!(matches!(status, Ok(200)), "POST {path} to {name}: {status:?}");
}

#[test]
fn dashboard_shows_what_the_api_says_escaped_and_live() {
    let _g = xlb_tests::serial();
    xlb_tests::preflight();
    let mut topo = Topology::builder().backends(2).build();
    let cfg = TempFile::new(".yaml", &yaml(&topo));
    let mut xlb =
        Xlb::start(XlbArgs { ns: Some(&topo.lb), iface: LB_CLIENT_IF, config: Some(cfg.path()), specs: vec![], other_ifaces: topo.lb_backend_ifaces() });
    let up =
        wait_for(Duration::from_secs(10), Duration::from_millis(100), || requests(&topo, http_front(), "GET", "/", 1).first().filter(|s| **s == 200).copied());
    assert!(up.is_some(), "the HTTP service never answered 200 on {}\n{}", http_front(), xlb.log());

    let locked = Dom(chromium(&topo, "/", SETTLED_BUDGET_MS, &["--dump-dom"]));
    assert!(locked.0.contains(r#"id="auth" class="shown""#), "without the token the page must ask for it:\n{}", locked.0);
    assert!(locked.service(0).is_none(), "without the token the page shows no service:\n{}", locked.0);

    live_rate(&topo);
    fixed_traffic(&mut topo, &cfg, &mut xlb);
    let (status, page) = settled_page(&topo, &xlb);
    compare(&status, &page);
    status_table(&topo, &status);
    screenshot(&topo);
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}

/// Under steady HTTP load, the page's req/s is above 0 and no more than the load sent.
fn live_rate(topo: &Topology) {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, sent) = (stop.clone(), sent.clone());
        topo.client.spawn_thread(move || {
            let started = std::time::Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                if xlb_tests::http::request(http_front(), "GET", "/").is_ok_and(|r| r.status == 200) {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    // The load runs through at least one snapshot before the page looks.
    std::thread::sleep(Duration::from_millis(2500));
    let started = std::time::Instant::now();
    let page = Dom(chromium(topo, &format!("/?token={TOKEN}"), LIVE_BUDGET_MS, &["--dump-dom"]));
    let looked = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    load.join().expect("load thread");
    let sent = sent.load(Ordering::Relaxed);
    let average = sent as f64 / (looked + Duration::from_millis(2500)).as_secs_f64();
    let rate: f64 = page.tile("req/s (HTTP)").and_then(|t| t.replace(',', "").parse().ok()).unwrap_or_else(|| panic!("no req/s tile:\n{}", page.0));
    figure(&format!("under load ({sent} requests, {average:.1}/s on average): the page showed {rate} req/s after {} ms", looked.as_millis()));
    // The page's rate is over one snapshot interval (2 s) of a steady, paced load.
    assert!(rate > average / 4.0 && rate < average * 4.0, "req/s on the page under load: {rate}, the load's average {average:.1}/s:\n{}", page.0);
}

/// L4 connections, backend 503s, b2's server killed (its probe fails), a rejected and an
/// applied reload.
fn fixed_traffic(topo: &mut Topology, cfg: &TempFile, xlb: &mut Xlb) {
    let l4 = topo.spread(Topology::vip4(80), N_L4);
    assert!(l4.errors.is_empty() && l4.total_ok() == N_L4, "{N_L4} connections through the VIP: {l4}");
    let ok = requests(topo, http_front(), "GET", "/", N_OK);
    assert!(ok.iter().all(|s| *s == 200), "GET / through the proxy: {ok:?}");
    for b in ["b1", "b2"] {
        tell_backend(topo, b, "/health/fail");
    }
    let failed = requests(topo, http_front(), "GET", "/health", N_503);
    assert!(failed.iter().all(|s| *s == 503), "GET /health of failing backends: {failed:?}");
    for b in ["b1", "b2"] {
        tell_backend(topo, b, "/health/ok");
    }
    topo.backends[1].testd.take().map(|mut p| p.kill()).expect("b2's xlb-testd");
    let good = std::fs::read_to_string(cfg.path()).expect("config");
    let log_at = xlb.log().lines().count();
    cfg.write(&good.replace("tcp_closed_timeout", "tcp_closed_timeou"));
    let said =
        |needle: &str| wait_for(Duration::from_secs(5), Duration::from_millis(50), || xlb.log().lines().skip(log_at).any(|l| l.contains(needle)).then_some(()));
    assert!(said("reload rejected").is_some(), "the broken file was not rejected:\n{}", xlb.log());
    cfg.write(&good);
    assert!(said("config reloaded").is_some(), "the good file was not applied:\n{}", xlb.log());
    xlb.assert_running();
}

/// Once the API's numbers hold still: the API's answer and the page loaded right after it
/// (taken again if a snapshot changed in between).
fn settled_page(topo: &Topology, xlb: &Xlb) -> (Status, Dom) {
    let b2 = format!("{}:{TESTD_PORT}", topo.ip("b2", false));
    let ready = |s: &Status| {
        let h = s.service(MARKUP);
        h.is_some_and(|h| h.requests >= (N_OK + N_503) as u64 && h.backends.iter().any(|b| b.address == b2 && b.state == "unhealthy"))
            && s.snapshot.reloads.iter().any(|r| r.outcome == "applied")
    };
    let first = wait_for(Duration::from_secs(10), Duration::from_millis(200), || Some(api(topo)).filter(ready));
    assert!(first.is_some(), "the API never showed the traffic, b2 unhealthy and the reloads:\n{}\n{}", api(topo).raw, xlb.log());
    for _ in 0..3 {
        let before = api(topo);
        let page = Dom(chromium(topo, &format!("/?token={TOKEN}"), SETTLED_BUDGET_MS, &["--dump-dom"]));
        let after = api(topo);
        if same_numbers(&before, &after) {
            return (after, page);
        }
    }
    panic!("the API's numbers kept changing over three page loads:\n{}", api(topo).raw)
}

/// The snapshot fields the page shows (rates aside).
fn same_numbers(a: &Status, b: &Status) -> bool {
    let shown = |s: &Status| {
        let mut v = serde_json::to_value(&s.snapshot).expect("snapshot as JSON");
        v["taken_ms"] = 0.into();
        for svc in v["services"].as_array_mut().into_iter().flatten() {
            for b in svc["backends"].as_array_mut().into_iter().flatten() {
                for k in ["new_flows_per_sec", "bytes_per_sec", "packets", "bytes"] {
                    b[k] = 0.into();
                }
            }
        }
        v
    };
    shown(a) == shown(b)
}

/// Every name and number the page shows equals the API's.
fn compare(status: &Status, page: &Dom) {
    let s = &status.snapshot;
    assert!(!page.0.to_ascii_lowercase().contains("<img"), "markup from a name became an element:\n{}", page.0);
    assert!(page.0.contains(&escaped(MARKUP)), "the markup name is not shown as text ({}):\n{}", escaped(MARKUP), page.0);
    let healthy = s.services.iter().flat_map(|x| &x.backends).filter(|b| b.state == "healthy").count();
    let all = s.services.iter().map(|x| x.backends.len()).sum::<usize>();
    let tiles =
        [("services", s.services.len().to_string()), ("backends healthy", format!("{healthy} / {all}")), ("health changes", s.health_transitions.to_string())];
    for (tile, want) in tiles {
        assert_eq!(page.tile(tile).as_deref(), Some(want.as_str()), "tile {tile}:\n{}\n{}", status.raw, page.0);
    }
    let mut checked = 0;
    for (i, svc) in s.services.iter().enumerate() {
        assert_eq!(page.text_after(page.service(i).unwrap_or(usize::MAX), r#"data-k="service""#), Some(escaped(&svc.name)), "service {i}:\n{}", page.0);
        let state = page.text_after(page.service(i).unwrap_or(usize::MAX), r#"data-k="service_state""#);
        assert_eq!(state.as_deref(), Some(svc.state.as_str()), "service {i} state:\n{}", page.0);
        let http = svc.protocol == "http";
        for b in &svc.backends {
            let want = [
                ("active", b.active_connections as f64),
                ("total", if http { b.requests } else { b.new_flows } as f64),
                ("weight", b.weight),
                ("health_transitions", b.health_transitions as f64),
            ];
            for (k, v) in want.into_iter().chain(http.then_some(("errors", b.errors as f64))) {
                assert_eq!(page.number(i, &b.address, k), Some(v), "{} {} {k}:\n{}\n{}", svc.name, b.address, status.raw, page.0);
                checked += 1;
            }
            let reason = (!b.reason.is_empty()).then(|| escaped(&b.reason));
            assert_eq!(page.cell(i, &b.address, "reason"), reason, "{} {} reason:\n{}", svc.name, b.address, page.0);
            for (k, v) in [("name", &b.name), ("state", &b.state), ("origin", &b.origin)] {
                assert_eq!(page.cell(i, &b.address, k), Some(escaped(v)), "{} {} {k}:\n{}", svc.name, b.address, page.0);
                checked += 1;
            }
        }
    }
    let web = status.service("web").expect("web");
    let http = status.service(MARKUP).expect("http service");
    let b2 = http.backends.iter().find(|b| b.state == "unhealthy").expect("an unhealthy backend");
    assert_eq!((http.state.as_str(), b2.reason.as_str()), ("degraded", "its health probe (a TCP connect) fails"), "{}", status.raw);
    assert_eq!(web.new_flows, N_L4 as u64, "the L4 connections:\n{}", status.raw);
    let errors: u64 = status.service(MARKUP).expect("http service").backends.iter().map(|b| b.errors).sum();
    assert_eq!(errors, N_503 as u64, "the backends' 503s:\n{}", status.raw);
    let health: Vec<String> = s.recent_health.iter().rev().map(|e| e.backend.clone()).collect();
    assert!(!health.is_empty() && page.rows("transition", "backend") == health, "health transitions: API {health:?}:\n{}", page.0);
    let reloads: Vec<&str> = s.reloads.iter().rev().map(|r| r.outcome.as_str()).collect();
    let shown: Vec<String> = page.rows("reload", "outcome").iter().map(|o| o.replace(' ', "_")).collect();
    assert!(reloads.starts_with(&["applied", "rejected"]) && shown == reloads, "reloads: API {reloads:?}, page {shown:?}:\n{}", status.raw);
    figure(&format!("{checked} backend values equal to the API's; {} health transitions and {} reloads listed", health.len(), reloads.len()));
}

/// `xlb status` leads with each service's state and healthy backends, and says why a
/// backend is out, as the API does.
fn status_table(topo: &Topology, status: &Status) {
    let bin = xlb_tests::xlb::xlb_bin();
    let table =
        topo.lb.try_run("env", &[&format!("XLB_ADMIN_TOKEN={TOKEN}"), bin.to_str().expect("utf-8"), "status"]).unwrap_or_else(|e| panic!("xlb status: {e}"));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines.first().is_some_and(|l| l.starts_with("SERVICE")), "{table}");
    for s in &status.snapshot.services {
        let healthy = s.backends.iter().filter(|b| b.state == "healthy").count();
        let line = lines.iter().find(|l| l.starts_with(&s.name)).unwrap_or_else(|| panic!("no line for {}:\n{table}", s.name));
        assert!(line.contains(&s.state) && line.contains(&format!("{healthy}/{}", s.backends.len())), "{}: {line}\n{table}", s.name);
        for b in s.backends.iter().filter(|b| !b.reason.is_empty()) {
            let why = format!("  {} ({}) {}: {}", b.address, b.name, b.state, b.reason);
            assert!(lines.contains(&why.as_str()), "no line {why:?}:\n{table}");
        }
    }
}

/// A screenshot of the settled page under `target/`, checked to be a real PNG of some size.
fn screenshot(topo: &Topology) {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"), PathBuf::from);
    let file = target.join("dashboard-test.png");
    let _ = std::fs::remove_file(&file);
    chromium(topo, &format!("/?token={TOKEN}"), SETTLED_BUDGET_MS, &[&format!("--screenshot={}", file.display())]);
    let png = std::fs::read(&file).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", file.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000, "{}: {} bytes, not a picture of the page", file.display(), png.len());
    figure(&format!("screenshot {} ({} bytes)", file.display(), png.len()));
}
