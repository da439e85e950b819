//! Operating xlb in the namespace topology (see `xlb_tests::topology`: client -> LB (xlb on
//! `lc`) -> backends b1..bN running xlb-testd), the way an operator does:
//!
//! 1. `status_and_metrics_count_real_traffic`: exactly N new connections through the VIP;
//!    `xlb status --json`, `xlb status` and `GET /metrics` (read inside the LB namespace) count
//!    exactly N flows, split over the backends as the client saw them, and per-second rates
//!    that show the traffic and fall back to 0; `drops_are_counted_by_reason`: SYNs to a VIP
//!    without an active backend are counted as `no_backend` drops in status and `/metrics`;
//!    `metrics_count_http_requests_by_code_with_a_latency_histogram`: N requests through the
//!    HTTP proxy (200s and 404s) are read back from `/metrics` by backend and status code, with
//!    a latency histogram per backend whose count is N in all;
//!    `logs_are_json_on_request_with_kernel_records_at_the_level_asked`: `--log-format json`
//!    gives JSON lines only, `--kernel-log debug` adds the kernel's per-flow records, the
//!    default `info` keeps them out (in the kernel);
//!    `status_names_containers_and_metrics_count_discovery_events` (real Docker): backends
//!    named by container name with origin `docker:bridge`; `xlb_discovery_events_total` counts
//!    a container start;
//! 2. `sighup_reload_under_load_adds_and_removes_a_backend`: the config file is rewritten
//!    (b3 removed, b4 added) and xlb gets SIGHUP while steady load runs: zero failed requests,
//!    b4 serves, b3 gets no request started after the reload was applied. The file keeps its
//!    size and mtime, so only the SIGHUP can have triggered the reload;
//!    `reload_keeps_the_connections_of_unchanged_services`: a reload that changes and adds
//!    other services leaves an unchanged one alone: its long connection runs on without a gap
//!    and it counts no new flow (its connection entries were kept);
//! 3. `bad_reload_keeps_serving_then_the_watcher_applies_a_good_file`: broken files (an
//!    unknown key, a bad value: SIGHUP; a bad address: the file watcher) are rejected with
//!    FILE:LINE:COLUMN in the log while the old config serves with zero failed requests; a good
//!    file is then applied by the file watcher alone (no SIGHUP) within 3 s;
//! 4. `check_reports_file_line_column`, `check_accepts_the_example`: `xlb check` on broken
//!    files prints FILE:LINE:COLUMN (of the offending key or value) and exits non-zero; on
//!    `xlb.example.yaml` it exits 0, and `the_example_sets_every_key` (every field of the
//!    config structs, read from their source). `check_positions_of_errors_found_after_parsing`: errors
//!    found once a service was read (port 0, a backend twice, a backend of the wrong family)
//!    or across services (a name or VIP:port twice) point at the offending service.
//!
//! Figures are printed on lines starting with `OPERATE-FIGURE` (run with `--nocapture`).
//! Needs root and `XLB_BIN` (the `check_*` tests only `XLB_BIN`; the discovery test Docker); run with
//! `XLB_BIN=$PWD/target/debug/xlb cargo test -p xlb-tests --test operate -- --test-threads=1 --nocapture`.

use std::{
    fmt::Write as _,
    fs,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use xlb_tests::{
    Offload, Topology, Xlb,
    config::{self, BackendCfg, ServiceCfg},
    docker::{self, Container},
    outside::Outside,
    http,
    load::{Load, LoadOpts, Report},
    status::{self, ServiceLookup as _, Status, parse_metrics, samples},
    topology::{LB_CLIENT_IF, LB_CLIENT_V4, TESTD_PORT, VIP4},
    util::{self, TempDir, TempFile, cmd, wait_for},
    xlb::{XlbArgs, xlb_bin},
};

/// The service's name in the configs below.
const SERVICE: &str = "web";
/// xlb's admin endpoint (its default), in the LB namespace.
const ADMIN: &str = "127.0.0.1:9100";
/// xlb refreshes its status snapshot every 2 s: a change shows within this.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(5);

fn figure(test: &str, text: &str) {
    println!("OPERATE-FIGURE {test}: {text}");
}

fn setup(backends: usize) -> (xlb_tests::Serial, Topology) {
    let g = xlb_tests::serial();
    xlb_tests::preflight();
    (g, Topology::builder().backends(backends).build())
}

/// xlb in the LB namespace on `lc` with `--config cfg` (and no SPEC); at debug level, so the
/// log says when the maps were synced.
fn start_xlb(topo: &Topology, cfg: &Path) -> Xlb {
    let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info,xlb=debug".into());
    Xlb::start_with_env(
        XlbArgs { ns: Some(&topo.lb), iface: LB_CLIENT_IF, config: Some(cfg), specs: vec![], other_ifaces: topo.lb_backend_ifaces() },
        &[("RUST_LOG", &log)],
    )
}

/// The YAML of service `web` (VIP4:80/tcp) over the named backends.
fn yaml(topo: &Topology, names: &[&str]) -> String {
    let bs = names.iter().map(|n| BackendCfg::new(topo.ip(n, false), TESTD_PORT)).collect();
    config::render(&[ServiceCfg::tcp(SERVICE, VIP4.into(), 80, bs)])
}

/// How xlb names backend `name` in its status: `IP:PORT`.
fn addr_of(topo: &Topology, name: &str) -> String {
    format!("{}:{TESTD_PORT}", topo.ip(name, false))
}

/// The sorted status addresses of the named backends.
fn addrs_of(topo: &Topology, names: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = names.iter().map(|n| addr_of(topo, n)).collect();
    a.sort();
    a
}

/// `text` padded with a comment line to exactly `len` bytes (so files of different content
/// have the same size).
fn padded(text: &str, len: usize) -> String {
    assert!(text.len() + 2 <= len, "cannot pad {} bytes to {len}", text.len());
    let mut s = text.to_string();
    s.push('#');
    s.push_str(&"x".repeat(len - text.len() - 2));
    s.push('\n');
    assert_eq!(s.len(), len);
    s
}

/// Replaces the file at `path` (write to a temporary file, then rename) with `text` of the
/// same size and the same mtime as the old one: xlb's file watcher (mtime and size) cannot see
/// the change, so only a SIGHUP makes xlb read it.
fn write_keeping_stamp(path: &Path, text: &str) {
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(meta.len(), text.len() as u64, "write_keeping_stamp: the new text must have the old size");
    let mtime = meta.modified().expect("mtime");
    let tmp = path.with_extension("stamp-tmp");
    fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    let f = fs::File::options().write(true).open(&tmp).expect("reopen");
    f.set_modified(mtime).expect("set mtime");
    drop(f);
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename {}: {e}", tmp.display()));
    let now = fs::metadata(path).expect("stat");
    assert_eq!((now.modified().ok(), now.len()), (Some(mtime), meta.len()), "the file's stamp changed");
}

/// xlb's log, one entry per line.
fn log_lines(xlb: &Xlb) -> Vec<String> {
    xlb.log().lines().map(str::to_string).collect()
}

/// Waits (at most `timeout`) for a log line after the first `from` lines that satisfies
/// `pred`; returns its index and text.
fn wait_log(xlb: &Xlb, from: usize, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<(usize, String)> {
    wait_for(timeout, Duration::from_millis(10), || {
        log_lines(xlb).into_iter().enumerate().skip(from).find(|(_, l)| pred(l))
    })
}

fn count_log(xlb: &Xlb, from: usize, needle: &str) -> usize {
    log_lines(xlb).iter().skip(from).filter(|l| l.contains(needle)).count()
}

/// The last lines of xlb's log, for failure messages.
fn tail(xlb: &Xlb) -> String {
    let lines = log_lines(xlb);
    let start = lines.len().saturating_sub(60);
    format!("--- xlb log (last {} lines) ---\n{}", lines.len() - start, lines[start..].join("\n"))
}

fn sighup(xlb: &mut Xlb) {
    xlb.assert_running();
    assert!(util::send_signal(xlb.pid(), libc::SIGHUP), "SIGHUP to xlb ({})", xlb.pid());
}

/// Polls `xlb status --json` (in the LB namespace) until `done` holds, at most `timeout`;
/// `Err` with the last answer otherwise.
fn poll_status(topo: &Topology, timeout: Duration, done: impl Fn(&Status) -> bool) -> Result<Status, String> {
    let mut last = Err("never asked".to_string());
    let ok = wait_for(timeout, Duration::from_millis(100), || {
        last = status::xlb_status(&topo.lb);
        last.as_ref().ok().filter(|s| done(s)).cloned()
    });
    ok.ok_or_else(|| match last {
        Ok(s) => format!("xlb status --json never matched within {timeout:?}; the last answer:\n{}", s.raw),
        Err(e) => format!("xlb status --json failed: {e}"),
    })
}

/// The service `web` of a status (panics, with the status, when it is missing).
#[track_caller]
fn web(s: &Status) -> &status::ServiceStatus {
    s.service(SERVICE).unwrap_or_else(|| panic!("no service {SERVICE:?} in xlb status:\n{}", s.raw))
}

/// A failure message: what went wrong, the load's report and the end of xlb's log.
fn context(what: &str, report: Option<&Report>, xlb: &Xlb) -> String {
    let mut s = format!("{what}\n");
    if let Some(r) = report {
        let _ = writeln!(s, "{r}");
    }
    let _ = write!(s, "{}", tail(xlb));
    s
}

macro_rules! ensure {
    ($cond:expr, $xlb:expr, $report:expr, $($fmt:tt)+) => {
        if !$cond {
            panic!("{}", context(&format!($($fmt)+), $report, $xlb));
        }
    };
}

#[track_caller]
fn stop(mut xlb: Xlb) {
    if let Err(e) = xlb.stop() {
        panic!("{e}");
    }
}

/// Signed milliseconds from `a` to `b`.
fn delta_ms(a: Instant, b: Instant) -> f64 {
    match b.checked_duration_since(a) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(a - b).as_secs_f64() * 1e3,
    }
}

/// Load options for the reload scenarios: the default steady load, bounded at 60 s.
fn load_opts() -> LoadOpts {
    LoadOpts { max_duration: Duration::from_secs(60), ..LoadOpts::default() }
}

// ------------------------------------------------------------------------------------------
// 1. Status and metrics against real traffic.

/// Exactly N new connections through the VIP of a 3-backend service: `xlb status --json`
/// shows N flows for the service and, per backend, the number of connections the client saw
/// that backend answer; `/metrics` has the same numbers; `xlb status` lists every backend.
#[test]
fn status_and_metrics_count_real_traffic() {
    const N: usize = 60;
    let (_g, topo) = setup(3);
    let names = ["b1", "b2", "b3"];
    let cfg = TempFile::new(".yaml", &yaml(&topo, &names));
    let xlb = start_xlb(&topo, cfg.path());

    // Before any traffic: the service and its backends, all at zero.
    let before = poll_status(&topo, SNAPSHOT_WAIT, |s| s.service(SERVICE).is_some()).unwrap_or_else(|e| panic!("{e}\n{}", tail(&xlb)));
    let w = web(&before);
    assert_eq!(w.addresses(), addrs_of(&topo, &names), "backends before traffic:\n{}", before.raw);
    assert_eq!((w.vip.as_str(), w.port, w.protocol.as_str(), w.method.as_str()), ("10.200.100.1", 80, "tcp", "maglev"), "{}", before.raw);
    assert_eq!(w.sources, ["static"], "{}", before.raw);
    for b in &w.backends {
        assert_eq!((b.origin.as_str(), b.state.as_str(), b.weight), ("static", "healthy", 1.0), "backend {}:\n{}", b.address, before.raw);
    }
    assert!(w.new_flows == 0 && w.backends.iter().all(|b| b.new_flows == 0), "flows before any traffic:\n{}", before.raw);

    // Exactly N new connections, one after the other.
    let spread = topo.spread(Topology::vip4(80), N);
    assert!(spread.errors.is_empty() && spread.total_ok() == N, "{N} requests through the VIP: {spread}\n{}", tail(&xlb));
    for k in spread.counts.keys() {
        assert!(names.contains(&k.as_str()), "answer from unexpected backend {k:?}: {spread}");
    }
    let sent_at = Instant::now();

    // The next snapshot(s): wait until the service counted at least N, then it must be exactly
    // N (nothing else went through the VIP).
    let after = poll_status(&topo, SNAPSHOT_WAIT, |s| s.service(SERVICE).is_some_and(|w| w.new_flows >= N as u64))
        .unwrap_or_else(|e| panic!("after {N} connections ({spread}): {e}\n{}", tail(&xlb)));
    let shown_after = sent_at.elapsed();
    // Per-second rates come from two snapshots 2 s apart: the first one with the traffic shows
    // some, never more than the N flows over 1 s (bytes too), and once the traffic is over
    // two snapshots later they are back to 0.
    let rates = |s: &Status| -> (f64, f64) {
        let backends = s.service(SERVICE).map_or(&[][..], |w| &w.backends[..]);
        (backends.iter().map(|b| b.new_flows_per_sec).sum(), backends.iter().map(|b| b.bytes_per_sec).sum())
    };
    let (flow_rate, byte_rate) = rates(&after);
    assert!(flow_rate > 0.0 && flow_rate <= N as f64 * 1.05 && byte_rate > 0.0, "rates with the {N} flows: {flow_rate} flows/s, {byte_rate} bytes/s:\n{}", after.raw);
    let quiet = poll_status(&topo, Duration::from_secs(7), |s| rates(s) == (0.0, 0.0));
    assert!(quiet.is_ok(), "rates never went back to 0 without traffic: {quiet:?}");
    figure("status", &format!("rates over the snapshot with the traffic: {flow_rate:.1} new flows/s, {byte_rate:.0} bytes/s; 0 once it was over"));
    let w = web(&after);
    let mut table = String::new();
    for n in names {
        let b = w.backend(&addr_of(&topo, n)).unwrap_or_else(|| panic!("no backend {n} in:\n{}", after.raw));
        let _ = write!(table, "{n}: client {} / status {} (packets {}, active {}); ", spread.count(n), b.new_flows, b.packets, b.active_connections);
    }
    figure("status", &format!("{N} connections; shown {} ms after the last one; {table}service new_flows {}", shown_after.as_millis(), w.new_flows));
    assert_eq!(w.new_flows, N as u64, "service new_flows after exactly {N} connections ({spread}):\n{}", after.raw);
    let sum: u64 = w.backends.iter().map(|b| b.new_flows).sum();
    assert_eq!(sum, N as u64, "the backends' new_flows must add up to {N}:\n{}", after.raw);
    for n in names {
        let b = w.backend(&addr_of(&topo, n)).unwrap();
        assert_eq!(b.new_flows, spread.count(n) as u64, "{n} ({}): status new_flows vs the answers the client got from it ({spread}):\n{}", b.address, after.raw);
        // Each connection sends at least SYN, ACK, the request and a FIN to the VIP.
        assert!(b.packets >= 3 * b.new_flows, "{n}: {} packets for {} flows:\n{}", b.packets, b.new_flows, after.raw);
        assert!(b.active_connections <= b.new_flows, "{n}: {} active connections but only {} flows ever:\n{}", b.active_connections, b.new_flows, after.raw);
    }
    assert_eq!(w.packets, w.backends.iter().map(|b| b.packets).sum::<u64>(), "service packets vs the backends':\n{}", after.raw);
    assert_eq!(w.bytes, w.backends.iter().map(|b| b.bytes).sum::<u64>(), "service bytes vs the backends':\n{}", after.raw);

    // /metrics, read inside the LB namespace like `xlb status` does.
    let text = status::metrics_text(&topo.lb, ADMIN).unwrap_or_else(|e| panic!("GET /metrics: {e}\n{}", tail(&xlb)));
    let m = parse_metrics(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for family in ["xlb_service_flows_total", "xlb_backend_flows_total", "xlb_drops_total"] {
        assert!(text.contains(&format!("# TYPE {family} counter\n")), "no TYPE line for {family}:\n{text}");
    }
    let svc = samples(&m, "xlb_service_flows_total", &[("service", SERVICE)]);
    assert!(svc.len() == 1 && svc[0].value == N as f64, "xlb_service_flows_total{{service={SERVICE:?}}}: {svc:?}, want one sample = {N}\n{text}");
    assert_eq!(svc[0].labels.get("vip").map(String::as_str), Some("10.200.100.1"), "{text}");
    let per_backend = samples(&m, "xlb_backend_flows_total", &[("service", SERVICE)]);
    assert_eq!(per_backend.len(), names.len(), "xlb_backend_flows_total samples for {SERVICE}: {per_backend:?}\n{text}");
    for n in names {
        let a = addr_of(&topo, n);
        let s = samples(&m, "xlb_backend_flows_total", &[("service", SERVICE), ("backend", &a)]);
        assert!(s.len() == 1 && s[0].value == spread.count(n) as f64, "{n}: xlb_backend_flows_total{{backend={a:?}}} = {s:?}, the client got {} answers from it\n{text}", spread.count(n));
        // A static backend's name is its address.
        assert_eq!(s[0].labels.get("name").map(String::as_str), Some(topo.ip(n, false).to_string().as_str()), "{text}");
        let up = samples(&m, "xlb_backend_up", &[("service", SERVICE), ("backend", &a)]);
        assert!(up.len() == 1 && up[0].value == 1.0, "{n}: xlb_backend_up {up:?}\n{text}");
    }
    let flows_sum: f64 = per_backend.iter().map(|s| s.value).sum();
    assert_eq!(flows_sum, N as f64, "{text}");
    let drops: Vec<String> = samples(&m, "xlb_drops_total", &[]).iter().map(|s| s.to_string()).collect();
    figure("metrics", &format!("xlb_service_flows_total {}; drops: {}", svc[0].value, drops.join(", ")));

    // The table: every backend address, and the service's flow count.
    let table = status::xlb_status_raw(&topo.lb, &[]).unwrap_or_else(|e| panic!("xlb status: {e}"));
    for n in names {
        assert!(table.contains(&addr_of(&topo, n)), "`xlb status` does not list {n} ({}):\n{table}", addr_of(&topo, n));
    }
    assert!(table.contains(&format!("flows={N} ")), "`xlb status` does not show flows={N}:\n{table}");
    // `--admin` pointing at the same endpoint gives the same answer.
    let again = status::xlb_status_raw(&topo.lb, &["--json", "--admin", ADMIN]).unwrap_or_else(|e| panic!("xlb status --admin: {e}"));
    let again = Status::parse(&again).unwrap_or_else(|e| panic!("{e}\n{again}"));
    assert_eq!(web(&again).new_flows, N as u64, "{}", again.raw);

    // The live connection count comes from a pass every 5 s; print what it settles on.
    let settled = poll_status(&topo, Duration::from_secs(8), |s| s.service(SERVICE).is_some_and(|w| w.backends.iter().map(|b| b.active_connections).sum::<u64>() > 0));
    let active: Vec<String> = match &settled {
        Ok(s) => web(s).backends.iter().map(|b| format!("{}={}", b.address, b.active_connections)).collect(),
        Err(_) => vec!["0 everywhere after 8 s".into()],
    };
    figure("status", &format!("active_connections after the {N} connections had closed: {}", active.join(" ")));
    if let Ok(s) = &settled {
        for b in &web(s).backends {
            assert!(b.active_connections <= b.new_flows, "{}: {} active, {} flows:\n{}", b.address, b.active_connections, b.new_flows, s.raw);
        }
    }
    stop(xlb);
}

/// An HTTP service (the proxy, on the LB's client-side address) over b1 and b2: exactly
/// N_OK `GET /` (200) and N_MISSING `GET /missing` (the backends' 404), each on a new
/// connection. `/metrics` then counts them back: `xlb_http_requests_total{service, backend,
/// code}` per backend as the client saw the answers, and per backend a
/// `xlb_http_request_duration_seconds` histogram whose `_count` is that backend's total,
/// whose buckets never decrease with `le` and end in `+Inf` = `_count`, and whose `_sum` is
/// above 0 and below the client's own wall time. `xlb status --json` and `xlb status` list
/// the service (protocol http, its method) with the same request counts. Then b2 stops: its
/// failed request marks it down, and `/metrics` shows one health transition for it (and in
/// all) and `xlb_backend_up` 0.
#[test]
fn metrics_count_http_requests_by_code_with_a_latency_histogram() {
    const N_OK: usize = 40;
    const N_MISSING: usize = 10;
    let (_g, mut topo) = setup(2);
    let names = ["b1", "b2"];
    let bs = names.iter().map(|n| BackendCfg::new(topo.ip(n, false), TESTD_PORT)).collect();
    // No VIP: the proxy listens on the interface's address.
    let http = ServiceCfg { vip: None, protocol: "http", ..ServiceCfg::tcp(SERVICE, VIP4.into(), 80, bs) };
    let cfg = TempFile::new(".yaml", &config::render(&[http]));
    let xlb = start_xlb(&topo, cfg.path());
    let front = std::net::SocketAddr::from((LB_CLIENT_V4, 80));
    let up = wait_for(Duration::from_secs(10), Duration::from_millis(100), || topo.client.enter(|| std::net::TcpStream::connect_timeout(&front, Duration::from_millis(500)).ok()));
    assert!(up.is_some(), "nothing listens on {front}\n{}", tail(&xlb));

    let started = Instant::now();
    let ok = topo.spread(front, N_OK);
    assert!(ok.errors.is_empty() && ok.total_ok() == N_OK, "{N_OK} GET / through the proxy: {ok}\n{}", tail(&xlb));
    let missing: Vec<u16> = topo.client.enter(|| (0..N_MISSING).map(|_| http::request(front, "GET", "/missing").map_or(0, |r| r.status)).collect());
    assert!(missing.iter().all(|&s| s == 404), "{N_MISSING} GET /missing: statuses {missing:?}\n{}", tail(&xlb));
    let wall = started.elapsed().as_secs_f64();

    // Counted when each response is finished: poll until all are in, then they must match.
    let total = |m: &[status::Sample]| samples(m, "xlb_http_requests_total", &[("service", SERVICE)]).iter().map(|s| s.value).sum::<f64>();
    let mut text = String::new();
    let counted = wait_for(SNAPSHOT_WAIT, Duration::from_millis(100), || {
        text = status::metrics_text(&topo.lb, ADMIN).ok()?;
        let m = parse_metrics(&text).ok()?;
        (total(&m) >= (N_OK + N_MISSING) as f64).then_some(m)
    });
    let m = counted.unwrap_or_else(|| panic!("/metrics never counted {} requests of {SERVICE}:\n{text}\n{}", N_OK + N_MISSING, tail(&xlb)));
    assert_eq!(total(&m), (N_OK + N_MISSING) as f64, "requests counted for {SERVICE}:\n{text}");
    assert!(text.contains("# TYPE xlb_http_requests_total counter\n") && text.contains("# TYPE xlb_http_request_duration_seconds histogram\n"), "{text}");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let s = samples(&m, name, labels);
        assert_eq!(s.len(), 1, "{name} {labels:?}: want one sample, got {s:?}\n{text}");
        s[0].value
    };
    // 404s follow the same smooth round robin as the 200s before them; whatever the split,
    // each backend's count must be what the client saw from it.
    let missing_at: usize = names.iter().map(|n| value("xlb_http_requests_total", &[("service", SERVICE), ("backend", &addr_of(&topo, n)), ("code", "404")]) as usize).sum();
    assert_eq!(missing_at, N_MISSING, "404s counted over the backends:\n{text}");
    let mut figures = Vec::new();
    for n in names {
        // A static backend's name is its address.
        let a = addr_of(&topo, n);
        let served = value("xlb_http_requests_total", &[("service", SERVICE), ("backend", &a), ("code", "200")]);
        assert_eq!(served, ok.count(n) as f64, "{n} ({a}): 200s counted vs the answers the client got from it ({ok}):\n{text}");
        let not_found = value("xlb_http_requests_total", &[("service", SERVICE), ("backend", &a), ("code", "404")]);
        let labels = [("service", SERVICE), ("backend", a.as_str())];
        let count = value("xlb_http_request_duration_seconds_count", &labels);
        assert_eq!(count, served + not_found, "{n}: histogram _count vs its requests:\n{text}");
        let sum = value("xlb_http_request_duration_seconds_sum", &labels);
        assert!(sum > 0.0 && sum < wall, "{n}: _sum {sum} s, the client's {} requests took {wall:.3} s in all:\n{text}", N_OK + N_MISSING);
        let buckets = samples(&m, "xlb_http_request_duration_seconds_bucket", &labels);
        let mut bounds: Vec<(f64, f64)> = buckets.iter().map(|s| (s.labels["le"].parse::<f64>().unwrap_or_else(|_| panic!("le {:?}", s.labels["le"])), s.value)).collect();
        assert!(bounds.len() >= 2 && bounds.iter().any(|(le, _)| le.is_infinite()), "{n}: buckets {bounds:?}\n{text}");
        bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(bounds.windows(2).all(|w| w[0].1 <= w[1].1), "{n}: buckets decrease: {bounds:?}\n{text}");
        assert_eq!(bounds.last().map(|b| b.1), Some(count), "{n}: +Inf bucket vs _count:\n{text}");
        let p_under_10ms = bounds.iter().find(|(le, _)| *le == 0.01).map_or(0.0, |b| b.1);
        figures.push(format!("{n}: {served} x 200 + {not_found} x 404, mean {:.2} ms, {p_under_10ms} within 10 ms", 1e3 * sum / count));
    }
    figure("http-metrics", &format!("{} requests in {:.0} ms; {}", N_OK + N_MISSING, wall * 1e3, figures.join("; ")));

    // `xlb status --json` lists the HTTP service with the same counts (from its next snapshot).
    let all = (N_OK + N_MISSING) as u64;
    let st = poll_status(&topo, SNAPSHOT_WAIT, |s| s.service(SERVICE).is_some_and(|w| w.requests >= all)).unwrap_or_else(|e| panic!("{e}\n{}", tail(&xlb)));
    let w = web(&st);
    assert_eq!((w.protocol.as_str(), w.method.as_str(), w.port, w.vip.as_str()), ("http", "round_robin", 80, "10.200.1.1"), "{}", st.raw);
    assert_eq!(w.addresses(), addrs_of(&topo, &names), "{}", st.raw);
    assert_eq!(w.requests, all, "service requests in xlb status --json:\n{}", st.raw);
    for b in &w.backends {
        let a = b.address.as_str();
        let n = names.iter().find(|n| addr_of(&topo, n) == a).unwrap();
        let want = value("xlb_http_request_duration_seconds_count", &[("service", SERVICE), ("backend", a)]) as u64;
        assert_eq!(b.requests, want, "{n}: requests in xlb status --json vs /metrics:\n{}", st.raw);
        assert_eq!(b.state, "healthy", "{}", st.raw);
    }
    let table = status::xlb_status_raw(&topo.lb, &[]).unwrap_or_else(|e| panic!("xlb status: {e}"));
    assert!(table.contains(&format!("requests={all}")) && names.iter().all(|n| table.contains(&addr_of(&topo, n))), "`xlb status`:\n{table}");

    // b2 stops: the proxy's failed try marks it down (passive health), one transition.
    drop(topo.backends[1].testd.take());
    let after_stop = topo.spread(front, 6);
    assert!(after_stop.errors.is_empty() && after_stop.count("b1") == 6, "with b2 stopped: {after_stop}\n{}", tail(&xlb));
    let b2 = [("service", SERVICE), ("backend", &*addr_of(&topo, "b2"))];
    let seen = wait_for(SNAPSHOT_WAIT, Duration::from_millis(100), || {
        text = status::metrics_text(&topo.lb, ADMIN).ok()?;
        let m = parse_metrics(&text).ok()?;
        let one = |name: &str, l: &[(&str, &str)]| samples(&m, name, l).first().map(|s| s.value);
        (one("xlb_backend_health_transitions_total", &b2)? >= 1.0).then(|| (one("xlb_backend_health_transitions_total", &b2), one("xlb_health_transitions_total", &[]), one("xlb_backend_up", &b2)))
    });
    assert_eq!(seen, Some((Some(1.0), Some(1.0), Some(0.0))), "b2's health transition (its own, the total) and xlb_backend_up after it stopped:\n{text}\n{}", tail(&xlb));
    stop(xlb);
}

/// Logs: `--log-format json` makes every log line a JSON object (level, target, message), and
/// `--kernel-log debug` lets the kernel programs' debug records through (one per new flow), as
/// JSON lines too. With the default `--kernel-log info`, the same traffic logs no kernel record
/// even though RUST_LOG asks for debug: the level is applied in the kernel. Text is the default.
#[test]
fn logs_are_json_on_request_with_kernel_records_at_the_level_asked() {
    const N: usize = 5;
    const KERNEL_RECORD: &str = "new flow for service";
    let (_g, topo) = setup(1);
    let cfg = TempFile::new(".yaml", &yaml(&topo, &["b1"]));
    let run = |extra: &[&str]| {
        Xlb::start_with_env(
            XlbArgs {
                ns: Some(&topo.lb),
                iface: LB_CLIENT_IF,
                config: Some(cfg.path()),
                specs: extra.iter().map(|s| s.to_string()).collect(),
                other_ifaces: topo.lb_backend_ifaces(),
            },
            &[("RUST_LOG", "debug")],
        )
    };
    // xlb's own lines (the harness prefixes stderr with `[err] `).
    let stderr = |xlb: &Xlb| -> Vec<String> { log_lines(xlb).iter().filter_map(|l| l.strip_prefix("[err] ")).map(str::to_string).collect() };

    let xlb = run(&["--log-format", "json", "--kernel-log", "debug"]);
    let spread = topo.spread(Topology::vip4(80), N);
    assert!(spread.total_ok() == N, "{spread}\n{}", tail(&xlb));
    let kernel = wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        let n = stderr(&xlb).iter().filter(|l| l.contains(KERNEL_RECORD)).count();
        (n >= N).then_some(n)
    });
    assert!(kernel.is_some(), "fewer than {N} kernel records `{KERNEL_RECORD}` for {N} new connections with --kernel-log debug:\n{}", tail(&xlb));
    let lines = stderr(&xlb);
    let mut bad = Vec::new();
    for l in &lines {
        let ok = serde_json::from_str::<serde_json::Value>(l)
            .is_ok_and(|j| j["level"].is_string() && j["target"].is_string() && j["fields"]["message"].is_string());
        if !ok {
            bad.push(l.clone());
        }
    }
    let record = lines.iter().find(|l| l.contains(KERNEL_RECORD)).cloned().unwrap_or_default();
    figure("logs", &format!("--log-format json: {} lines, all JSON: {}; a kernel record: {record}", lines.len(), bad.is_empty()));
    assert!(bad.is_empty(), "{} of {} log lines are not JSON objects with level, target and fields.message:\n{}", bad.len(), lines.len(), bad.join("\n"));
    stop(xlb);

    let xlb = run(&[]);
    let spread = topo.spread(Topology::vip4(80), N);
    assert!(spread.total_ok() == N, "{spread}\n{}", tail(&xlb));
    // The kernel log is read as records come; give them the time the first run needed.
    thread::sleep(Duration::from_secs(2));
    let lines = stderr(&xlb);
    assert!(lines.iter().all(|l| !l.starts_with('{')), "text is the default format:\n{}", lines.join("\n"));
    assert!(lines.iter().any(|l| l.contains("DEBUG")), "RUST_LOG=debug shows xlb's own debug lines:\n{}", lines.join("\n"));
    let records = lines.iter().filter(|l| l.contains(KERNEL_RECORD)).count();
    assert_eq!(records, 0, "kernel debug records with the default --kernel-log info:\n{}", lines.join("\n"));
    stop(xlb);
}

/// Docker discovery as the operator sees it: xlb (in the root namespace, a client outside the
/// host) follows containers labelled `xlb.service=LABEL`. `xlb status --json` names each
/// backend by its container name with origin `docker:bridge`, and
/// `xlb_discovery_events_total{source="docker"}` counts up when a second container starts.
#[test]
fn status_names_containers_and_metrics_count_discovery_events() {
    let _g = xlb_tests::serial();
    xlb_tests::preflight();
    docker::require_docker();
    let out = Outside::new(249, Offload::On);
    let label = format!("xt{}s", util::unique_id());
    let with_label = ["--label".to_string(), format!("xlb.service={label}")];
    let with_label: Vec<&str> = with_label.iter().map(String::as_str).collect();
    let first = Container::testd("de1", &with_label);
    let spec = format!("{}:80:{label}:{TESTD_PORT}", out.host_ip);
    // A SPEC's service is named by its VIP, port and protocol.
    let service = format!("{}:80/tcp", out.host_ip);
    let xlb = Xlb::start_with_env(
        XlbArgs { ns: None, iface: &out.host_if, config: None, specs: vec![spec], other_ifaces: vec!["docker0".into()] },
        &[("RUST_LOG", "info,xlb=debug")],
    );
    let status_json = || -> Result<Status, String> { util::try_run(&mut cmd(xlb_bin(), ["status", "--json"])).and_then(|t| Status::parse(&t)) };
    let events = || -> Option<f64> {
        let text = util::try_run(&mut cmd("curl", ["-sS", "--fail", "--max-time", "2", &format!("http://{ADMIN}/metrics")])).ok()?;
        let m = parse_metrics(&text).ok()?;
        samples(&m, "xlb_discovery_events_total", &[("source", "docker")]).first().map(|s| s.value)
    };
    let backends = |n: usize| {
        wait_for(Duration::from_secs(15), Duration::from_millis(200), || {
            let st = status_json().ok()?;
            let svc = st.service(&service)?;
            (svc.backends.len() == n && svc.backends.iter().all(|b| b.state == "healthy")).then(|| st.clone())
        })
    };
    let st = backends(1).unwrap_or_else(|| panic!("{}", context(&format!("xlb status never showed {label}'s container healthy in {service}"), None, &xlb)));
    let b = &st.service(&service).unwrap().backends[0];
    assert_eq!((b.name.as_str(), b.origin.as_str(), b.address.clone()), (first.name.as_str(), "docker:bridge", format!("{}:{TESTD_PORT}", first.ip())), "{}", st.raw);
    assert!(st.service(&service).unwrap().sources.contains(&format!("docker:{label}")), "{}", st.raw);
    let before = wait_for(SNAPSHOT_WAIT, Duration::from_millis(100), || events().filter(|&n| n >= 1.0));
    assert!(before.is_some(), "{}", context("xlb_discovery_events_total{source=\"docker\"} never reached 1", None, &xlb));
    let before = before.unwrap();

    let second = Container::testd("de2", &with_label);
    let st = backends(2).unwrap_or_else(|| panic!("{}", context("the second container never showed in xlb status", None, &xlb)));
    let names: Vec<&str> = st.service(&service).unwrap().backends.iter().map(|b| b.name.as_str()).collect();
    assert!(names.contains(&second.name.as_str()), "{names:?}\n{}", st.raw);
    let after = wait_for(SNAPSHOT_WAIT, Duration::from_millis(100), || events().filter(|&n| n > before));
    figure("discovery", &format!("xlb_discovery_events_total{{source=\"docker\"}}: {before} with one container, {after:?} after a second started; backends {names:?}"));
    assert!(after.is_some(), "{}", context(&format!("xlb_discovery_events_total{{source=\"docker\"}} stayed at {before} after a second container started"), None, &xlb));
    stop(xlb);
}

/// A service whose only backend is draining has nothing to give a new flow: the kernel drops
/// the SYNs with reason `no_backend`, and both `xlb status --json` and `/metrics` count them
/// (the per-CPU counters summed).
#[test]
fn drops_are_counted_by_reason() {
    let (_g, topo) = setup(1);
    let bs = vec![BackendCfg::new(topo.ip("b1", false), TESTD_PORT).draining(true)];
    let cfg = TempFile::new(".yaml", &config::render(&[ServiceCfg::tcp(SERVICE, VIP4.into(), 80, bs)]));
    let xlb = start_xlb(&topo, cfg.path());
    let vip = Topology::vip4(80);
    let refused = topo.client.enter(|| std::net::TcpStream::connect_timeout(&vip, Duration::from_millis(1500)));
    assert!(refused.is_err(), "a connection through a VIP with no active backend succeeded\n{}", tail(&xlb));
    let st = poll_status(&topo, SNAPSHOT_WAIT, |s| s.drops("no_backend") >= 1).unwrap_or_else(|e| panic!("{e}\n{}", tail(&xlb)));
    let shown = st.drops("no_backend");
    let text = status::metrics_text(&topo.lb, ADMIN).unwrap_or_else(|e| panic!("{e}"));
    let m = parse_metrics(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let metric = samples(&m, "xlb_drops_total", &[("reason", "no_backend")]).first().map(|s| s.value);
    figure("drops", &format!("one refused connection (SYN and its retransmissions): no_backend {shown} in xlb status, {metric:?} in /metrics"));
    assert!(metric.is_some_and(|v| v >= shown as f64), "xlb_drops_total{{reason=\"no_backend\"}} {metric:?}, xlb status says {shown}:\n{text}");
    let drops = &st.snapshot.drops;
    assert!(drops.iter().all(|d| d.reason == "no_backend" || d.packets == 0), "other drops: {drops:?}");
    stop(xlb);
}

// ------------------------------------------------------------------------------------------
// 2. SIGHUP reload under load.

/// Steady load through the VIP of b1, b2, b3; the file is rewritten to b1, b2, b4 (same size
/// and mtime: only the SIGHUP can make xlb read it) and xlb gets SIGHUP. Zero failed requests;
/// b4 serves; b3 answers no request started after the reload was applied (xlb logged
/// `maps synced` after `config reloaded`); the status lists b1, b2, b4.
#[test]
fn sighup_reload_under_load_adds_and_removes_a_backend() {
    let (_g, topo) = setup(4);
    let old = yaml(&topo, &["b1", "b2", "b3"]);
    let new = yaml(&topo, &["b1", "b2", "b4"]);
    let len = old.len().max(new.len()) + 32;
    let cfg = TempFile::new(".yaml", &padded(&old, len));
    let mut xlb = start_xlb(&topo, cfg.path());
    let vip = Topology::vip4(80);
    let warm = topo.spread(vip, 30);
    ensure!(warm.errors.is_empty() && warm.count("b4") == 0, &xlb, None, "before the reload: {warm}");

    let load = Load::start(&topo.client, vip, load_opts());
    thread::sleep(Duration::from_millis(1500));

    write_keeping_stamp(cfg.path(), &padded(&new, len));
    let from = log_lines(&xlb).len();
    let hup = Instant::now();
    sighup(&mut xlb);
    let reloaded = wait_log(&xlb, from, Duration::from_secs(5), |l| l.contains("config reloaded") || l.contains("reload rejected"));
    let synced = reloaded.as_ref().and_then(|(i, _)| wait_log(&xlb, i + 1, Duration::from_secs(5), |l| l.contains("maps synced")));
    let applied = Instant::now();
    let served_b4 = load.wait_served_since(&["b4".to_string()], hup, Duration::from_secs(5));
    thread::sleep(Duration::from_millis(2500));
    let report = load.stop();
    let end = Instant::now();

    ensure!(
        reloaded.as_ref().is_some_and(|(_, l)| l.contains("config reloaded")) && synced.is_some(),
        &xlb,
        Some(&report),
        "no `config reloaded` then `maps synced` within 5 s of SIGHUP (got {reloaded:?}, {synced:?})"
    );
    let b4_first = report.first_served("b4", hup);
    let b3_last = report.last_started("b3");
    figure(
        "sighup",
        &format!(
            "SIGHUP -> `config reloaded` logged and maps synced seen {:.1} ms later; -> first answer from b4 {} ms; last request to b3 started {} ms after SIGHUP; {} requests, per backend {:?}, {} reused a source port",
            delta_ms(hup, applied),
            b4_first.map_or("never".into(), |r| format!("{:.1}", delta_ms(hup, r.end))),
            b3_last.map_or("n/a".into(), |r| format!("{:.1}", delta_ms(hup, r.start))),
            report.records.len(),
            report.by_backend(),
            report.reused_ports()
        ),
    );
    report.assert_ran_throughout();
    let failures = report.failures().len();
    ensure!(failures == 0, &xlb, Some(&report), "{failures} of {} requests FAILED across the SIGHUP reload (want 0)", report.records.len());
    ensure!(served_b4.is_ok(), &xlb, Some(&report), "added backend b4: {}", served_b4.unwrap_err());
    let early_b4 = report.answered_by("b4", report.t0, hup);
    ensure!(early_b4.is_empty(), &xlb, Some(&report), "b4 answered {} requests before it was configured", early_b4.len());
    let b3_before = report.answered_by("b3", report.t0, hup).len();
    ensure!(b3_before > 0, &xlb, Some(&report), "b3 served nothing before the reload: the scenario proves nothing");
    let strays = report.answered_by("b3", applied, end);
    ensure!(
        strays.is_empty(),
        &xlb,
        Some(&report),
        "removed backend b3 answered {} requests started after the reload was applied: {:#?}",
        strays.len(),
        strays.iter().map(|r| report.describe(r)).collect::<Vec<_>>()
    );
    // Only the SIGHUP read the file: one reload, nothing rejected.
    let reloads = count_log(&xlb, from, "config reloaded");
    ensure!(reloads == 1 && count_log(&xlb, from, "reload rejected") == 0, &xlb, Some(&report), "{reloads} `config reloaded` after one SIGHUP (the file's stamp did not change), want 1");

    // The status follows: b1, b2, b4; b4's flows are the connections it answered; the
    // service's counter went on across the reload. A connection from a source port used
    // before whose entry still pins an active backend is not a new flow (the 4-tuple's
    // entry lives until the idle timeout), so each count may fall short of the connections
    // by at most the number of reused ports (the warm-up's ports count: their entries live on).
    let want = addrs_of(&topo, &["b1", "b2", "b4"]);
    let reused = report.reused_ports_after(&warm.ports) as u64;
    let total = warm.total_ok() as u64 + report.records.len() as u64;
    let st = poll_status(&topo, SNAPSHOT_WAIT, |s| s.service(SERVICE).is_some_and(|w| w.addresses() == want && w.new_flows + reused >= total));
    let st = st.unwrap_or_else(|e| panic!("{}", context(&format!("status after the reload (want backends {want:?}, service new_flows >= {total} - {reused} reused ports): {e}"), Some(&report), &xlb)));
    let w = web(&st);
    let b4 = w.backend(&addr_of(&topo, "b4")).unwrap();
    let answered_b4 = report.by_backend().get("b4").copied().unwrap_or(0) as u64;
    figure(
        "sighup",
        &format!(
            "status after: service new_flows {} ({total} client connections, {reused} from a reused source port); b4 new_flows {} vs {answered_b4} answered",
            w.new_flows, b4.new_flows
        ),
    );
    ensure!(w.new_flows <= total, &xlb, Some(&report), "service new_flows {} after only {total} connections:\n{}", w.new_flows, st.raw);
    // A connection to b3 that was closing as the reload removed b3 sends its last packets
    // (FIN, ACK) to b3 still: only a SYN opens a flow, so b4 counts no flow it did not answer.
    ensure!(
        b4.new_flows <= answered_b4 && b4.new_flows + reused >= answered_b4,
        &xlb,
        Some(&report),
        "b4: status new_flows {} vs {answered_b4} answers ({reused} reused ports):\n{}",
        b4.new_flows,
        st.raw
    );
    stop(xlb);
}

/// A reload is applied as a diff: service `web` (b1, b2) is left as it was while service
/// `other` changes (b3 -> b3, b4) and a third service appears. A long `/stream` connection
/// through `web` runs across the SIGHUP without a gap, and `web` counts no new flow for it
/// afterwards: had the reload rebuilt `web` or dropped its connection entries, the stream's
/// next packet would have started a new flow (or been re-balanced and reset).
#[test]
fn reload_keeps_the_connections_of_unchanged_services() {
    const SECS: u64 = 8;
    let (_g, topo) = setup(4);
    let svc = |name: &str, port: u16, names: &[&str]| ServiceCfg::tcp(name, VIP4.into(), port, names.iter().map(|n| BackendCfg::new(topo.ip(n, false), TESTD_PORT)).collect());
    let old = config::render(&[svc(SERVICE, 80, &["b1", "b2"]), svc("other", 81, &["b3"])]);
    let new = config::render(&[svc(SERVICE, 80, &["b1", "b2"]), svc("other", 81, &["b3", "b4"]), svc("third", 82, &["b4"])]);
    let cfg = TempFile::new(".yaml", &old);
    let mut xlb = start_xlb(&topo, cfg.path());
    let warm = topo.spread(Topology::vip4(80), 10);
    ensure!(warm.errors.is_empty(), &xlb, None, "before the reload: {warm}");
    let stream = topo.stream(Topology::vip4(80), SECS);
    let on = stream.backend(Duration::from_secs(3)).unwrap_or_else(|e| panic!("{}", context(&format!("stream: {e}"), None, &xlb)));
    // Two snapshots apart: the count of web's flows with the stream in it.
    thread::sleep(Duration::from_millis(2500));
    let before = web(&poll_status(&topo, SNAPSHOT_WAIT, |s| s.service(SERVICE).is_some()).unwrap_or_else(|e| panic!("{e}"))).new_flows;

    cfg.write(&new);
    let from = log_lines(&xlb).len();
    sighup(&mut xlb);
    let reloaded = wait_log(&xlb, from, Duration::from_secs(5), |l| l.contains("config reloaded") || l.contains("reload rejected"));
    let synced = reloaded.as_ref().and_then(|(i, _)| wait_log(&xlb, i + 1, Duration::from_secs(5), |l| l.contains("maps synced")));
    ensure!(reloaded.as_ref().is_some_and(|(_, l)| l.contains("config reloaded")) && synced.is_some(), &xlb, None, "no `config reloaded` then `maps synced` within 5 s ({reloaded:?}, {synced:?})");
    // The changed services did change.
    let other = wait_for(Duration::from_secs(5), Duration::from_millis(200), || {
        let s = topo.spread(Topology::vip4(81), 20);
        (s.count("b4") > 0).then_some(s)
    });
    ensure!(other.is_some(), &xlb, None, "service other never reached the added b4");
    let third = topo.spread(Topology::vip4(82), 5);
    ensure!(third.count("b4") == 5, &xlb, None, "the added service third: {third}");

    let r = stream.join();
    thread::sleep(Duration::from_millis(2500));
    let after = poll_status(&topo, SNAPSHOT_WAIT, |s| s.service("third").is_some()).unwrap_or_else(|e| panic!("{e}"));
    let w = web(&after);
    figure("reload-diff", &format!("stream on {on}: {} lines, longest gap {:?}; web new_flows {before} before the reload, {} after", r.lines, r.max_gap, w.new_flows));
    ensure!(r.backend.as_deref() == Some(on.as_str()), &xlb, None, "the stream moved: {r:?}");
    r.assert_ok(SECS, Duration::from_secs(1));
    ensure!(w.new_flows == before, &xlb, None, "web (unchanged) counted {} new flows across the reload, want 0 (its connection entries were lost):\n{}", w.new_flows - before, after.raw);
    stop(xlb);
}

// ------------------------------------------------------------------------------------------
// 3. Rejected reloads, then the file watcher.

/// One broken file: its text, where the error is (1-based line and column) and what the
/// message says.
struct Broken {
    what: &'static str,
    text: String,
    line: usize,
    col: usize,
    says: &'static str,
}

/// The 1-based line and column of the first `needle` in `text`, plus `offset` columns.
#[track_caller]
fn pos(text: &str, needle: &str, offset: usize) -> (usize, usize) {
    let at = text.find(needle).unwrap_or_else(|| panic!("{needle:?} not in:\n{text}"));
    let line = text[..at].matches('\n').count() + 1;
    let col = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1 + offset;
    (line, col)
}

fn broken(what: &'static str, text: String, needle: &str, offset: usize, says: &'static str) -> Broken {
    let (line, col) = pos(&text, needle, offset);
    Broken { what, text, line, col, says }
}

/// Waits for the next `reload rejected` line after line `from` and checks that it names
/// `path:LINE:COLUMN` of `b` and its message. Returns the line and how long it took.
#[track_caller]
fn expect_rejected(xlb: &Xlb, from: usize, since: Instant, path: &Path, b: &Broken, report_hint: &str) -> (String, Duration) {
    let got = wait_log(xlb, from, Duration::from_secs(4), |l| l.contains("reload rejected") || l.contains("config reloaded"));
    let took = since.elapsed();
    let Some((_, line)) = got else {
        panic!("{}", context(&format!("{}: no `reload rejected` within 4 s ({report_hint})", b.what), None, xlb));
    };
    let want = format!("{}:{}:{}: ", path.display(), b.line, b.col);
    ensure!(
        line.contains("reload rejected, the previous config keeps serving") && line.contains(&want) && line.contains(b.says),
        xlb,
        None,
        "{}: want a `reload rejected, the previous config keeps serving: {want}...{}...` line, got:\n{line}\nthe file:\n{}",
        b.what,
        b.says,
        b.text
    );
    (line, took)
}

/// Steady load through b1, b2, b3. Two broken files (an unknown key; a bad value) each with
/// SIGHUP, the file's stamp unchanged; then a third (a bad address) written normally and left
/// to the file watcher. Each is rejected in the log with FILE:LINE:COLUMN, the old backends
/// keep serving, nothing is reloaded. Then a good file (b1, b2, b4) is written, no SIGHUP: the
/// watcher applies it within 3 s (b4 answers, the status lists it). Zero failed requests.
#[test]
fn bad_reload_keeps_serving_then_the_watcher_applies_a_good_file() {
    let (_g, topo) = setup(4);
    let names = ["b1", "b2", "b3"];
    let good = yaml(&topo, &names);
    let b2 = format!("\"{}\"", topo.ip("b2", false));
    let b3 = format!("\"{}\"", topo.ip("b3", false));

    // An unknown key in the service.
    let unknown = good.replacen("    protocol: tcp\n", "    protocol: tcp\n    colour: red\n", 1);
    let unknown = broken("unknown key `colour`", unknown, "colour: red", 0, "services[0]: unknown field `colour`");
    // A bad value: weight 0 on b2.
    let bad_weight = {
        let bs = names
            .iter()
            .map(|n| {
                let b = BackendCfg::new(topo.ip(n, false), TESTD_PORT);
                if *n == "b2" { b.weight(0) } else { b }
            })
            .collect();
        config::render(&[ServiceCfg::tcp(SERVICE, VIP4.into(), 80, bs)])
    };
    assert!(bad_weight.find("weight: 0") > bad_weight.find(&b2), "weight 0 must be on b2:\n{bad_weight}");
    let bad_weight = broken("bad value `weight: 0`", bad_weight, "weight: 0", 8, "services[0].backends[1].weight: weight 0 out of range");
    // A bad address (for the watcher).
    let bad_addr = good.replacen(&b3, "\"10.200.13.300\"", 1);
    let bad_addr = broken("bad address 10.200.13.300", bad_addr, "\"10.200.13.300\"", 0, "services[0].backends[2].address: invalid IP address syntax");

    let len = [&good, &unknown.text, &bad_weight.text, &bad_addr.text].iter().map(|t| t.len()).max().unwrap() + 32;
    let cfg = TempFile::new(".yaml", &padded(&good, len));
    let mut xlb = start_xlb(&topo, cfg.path());
    let vip = Topology::vip4(80);
    let warm = topo.spread(vip, 30);
    ensure!(warm.errors.is_empty() && names.iter().all(|n| warm.count(n) > 0), &xlb, None, "before the reloads: {warm}");
    let from0 = log_lines(&xlb).len();

    let load = Load::start(&topo.client, vip, load_opts());
    thread::sleep(Duration::from_secs(1));
    let bad_start = Instant::now();

    // SIGHUP with a broken file: rejected, with the position.
    let mut rejections = Vec::new();
    for b in [&unknown, &bad_weight] {
        write_keeping_stamp(cfg.path(), &padded(&b.text, len));
        let from = log_lines(&xlb).len();
        let t = Instant::now();
        sighup(&mut xlb);
        let (line, took) = expect_rejected(&xlb, from, t, cfg.path(), b, "after SIGHUP");
        rejections.push(format!("{} (SIGHUP, {} ms): {}", b.what, took.as_millis(), line.trim()));
        // The watcher must not read the file again (its stamp did not change).
        thread::sleep(Duration::from_millis(1500));
        let n = count_log(&xlb, from, "reload rejected");
        ensure!(n == 1, &xlb, None, "{}: {n} `reload rejected` lines for one SIGHUP (the file's stamp did not change), want 1", b.what);
    }
    // A broken file written normally: the watcher reads it, and rejects it.
    {
        let from = log_lines(&xlb).len();
        let t = Instant::now();
        cfg.write(&bad_addr.text);
        let (line, took) = expect_rejected(&xlb, from, t, cfg.path(), &bad_addr, "file watcher, no SIGHUP");
        rejections.push(format!("{} (watcher, {} ms): {}", bad_addr.what, took.as_millis(), line.trim()));
    }
    // The old config still serves: b1, b2, b3 in the status, nothing reloaded.
    let st = poll_status(&topo, SNAPSHOT_WAIT, |s| s.service(SERVICE).is_some()).unwrap_or_else(|e| panic!("{e}"));
    let old_addrs = addrs_of(&topo, &names);
    thread::sleep(Duration::from_millis(1000));
    let bad_end = Instant::now();
    let reloads_while_bad = count_log(&xlb, from0, "config reloaded");

    // A good file, no SIGHUP: the watcher applies it.
    let written = Instant::now();
    let from = log_lines(&xlb).len();
    cfg.write(&yaml(&topo, &["b1", "b2", "b4"]));
    let reloaded = wait_log(&xlb, from, Duration::from_secs(3), |l| l.contains("config reloaded") || l.contains("reload rejected"));
    let synced = reloaded.as_ref().and_then(|(i, _)| wait_log(&xlb, i + 1, Duration::from_secs(2), |l| l.contains("maps synced")));
    let applied = Instant::now();
    let served_b4 = load.wait_served_since(&["b4".to_string()], written, Duration::from_secs(3));
    let b4_seen = Instant::now();
    thread::sleep(Duration::from_millis(1500));
    let report = load.stop();
    let end = Instant::now();

    for r in &rejections {
        figure("bad-reload", r);
    }
    let b4_first = report.first_served("b4", written);
    figure(
        "watcher",
        &format!(
            "good file written -> `config reloaded` and maps synced seen {:.1} ms, first answer from b4 {} ms (no SIGHUP); {} requests, per backend {:?}",
            delta_ms(written, applied),
            b4_first.map_or("never".into(), |r| format!("{:.1}", delta_ms(written, r.end))),
            report.records.len(),
            report.by_backend()
        ),
    );
    report.assert_ran_throughout();
    let failures = report.failures().len();
    ensure!(failures == 0, &xlb, Some(&report), "{failures} of {} requests FAILED around rejected and watched reloads (want 0)", report.records.len());
    ensure!(st.service(SERVICE).is_some_and(|w| w.addresses() == old_addrs), &xlb, Some(&report), "status after the rejected reloads: want the old backends {old_addrs:?}:\n{}", st.raw);
    ensure!(reloads_while_bad == 0, &xlb, Some(&report), "{reloads_while_bad} `config reloaded` while only broken files were offered");
    for n in names {
        let c = report.answered_by(n, bad_start, bad_end).len();
        ensure!(c > 0, &xlb, Some(&report), "{n} answered nothing while the broken files were rejected (the old config must keep serving)");
    }
    ensure!(report.answered_by("b4", report.t0, written).is_empty(), &xlb, Some(&report), "b4 answered before the good file was written");
    ensure!(
        reloaded.as_ref().is_some_and(|(_, l)| l.contains("config reloaded")) && synced.is_some(),
        &xlb,
        Some(&report),
        "the file watcher did not apply the good file within 3 s (no SIGHUP was sent): {reloaded:?}, then {synced:?}"
    );
    ensure!(served_b4.is_ok() && b4_seen - written <= Duration::from_secs(3), &xlb, Some(&report), "b4 (in the good file) did not serve within 3 s of the write: {served_b4:?}");
    let strays = report.answered_by("b3", applied, end);
    ensure!(strays.is_empty(), &xlb, Some(&report), "b3 (not in the good file) answered {} requests started after it was applied: {:#?}", strays.len(), strays.iter().map(|r| report.describe(r)).collect::<Vec<_>>());
    let want = addrs_of(&topo, &["b1", "b2", "b4"]);
    let st = poll_status(&topo, SNAPSHOT_WAIT, |s| s.service(SERVICE).is_some_and(|w| w.addresses() == want));
    ensure!(st.is_ok(), &xlb, Some(&report), "status after the good file: want {want:?}: {}", st.unwrap_err());
    stop(xlb);
}

// ------------------------------------------------------------------------------------------
// 4. xlb check.

/// `$XLB_BIN check FILE`: (exit success, stdout, stderr).
fn xlb_check(path: &Path) -> (bool, String, String) {
    let out = cmd(xlb_bin(), ["check".as_ref(), path.as_os_str()]).output().expect("run xlb check");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The broken files of [`check_reports_file_line_column`]: name, text, the needle at the
/// error (and a column offset from it), and what the message must say.
fn check_cases() -> Vec<Broken> {
    let svc = "services:\n  - name: a\n    vip: 10.0.0.100\n    port: 80\n";
    let with = |extra: &str| format!("{svc}{extra}");
    vec![
        broken("unknown top-level key", "servces:\n  - name: a\n    port: 80\n".into(), "servces", 0, "unknown field `servces`"),
        broken("unknown service key", with("    colour: red\n"), "colour", 0, "services[0]: unknown field `colour`"),
        broken(
            "unknown key in the second service",
            with("  - name: b\n    port: 81\n    backends:\n      - address: 10.0.0.1\n        prot: 8080\n"),
            "prot:",
            0,
            "services[1].backends[0]: unknown field `prot`",
        ),
        broken("unknown key in a flow mapping", with("    docker: { name: api, colour: red }\n"), "colour", 0, "services[0].docker: unknown field `colour`"),
        broken("weight 0", with("    backends:\n      - address: 10.0.0.1\n        weight: 0\n"), "weight: 0", 8, "weight 0 out of range"),
        broken("weight 1001", with("    backends:\n      - { address: 10.0.0.1, weight: 1001 }\n"), "1001", 0, "weight 1001 out of range"),
        broken("table_size not prime", "dataplane:\n  table_size: 65536\n".into(), "65536", 0, "dataplane.table_size: 65536: expected a prime"),
        broken("max_services 0", "dataplane:\n  max_services: 0\n".into(), "0\n", 0, "dataplane.max_services: expected a number above 0"),
        broken("bad VIP", "services:\n  - name: a\n    vip: 10.0.0.256\n    port: 80\n".into(), "10.0.0.256", 0, "services[0].vip: invalid IP address syntax"),
        broken("bad duration", "dataplane:\n  udp_idle_timeout: 5 minutes\n".into(), "5 minutes", 0, "dataplane.udp_idle_timeout: bad duration"),
        broken("bad health duration", with("    health:\n      http: /health\n      interval: 2 s\n"), "2 s", 0, "services[0].health.interval: bad duration"),
        broken("health rise 0", with("    health: { rise: 0 }\n"), "0 }", 0, "services[0].health.rise: expected a number above 0"),
        broken("unknown method", with("    method: fastest\n"), "fastest", 0, "services[0].method: unknown variant `fastest`"),
        broken("unknown protocol", with("    protocol: sctp\n"), "sctp", 0, "services[0].protocol: unknown variant `sctp`"),
        broken("port out of range", "services:\n  - name: a\n    port: 70000\n".into(), "70000", 0, "services[0].port"),
        broken("port not a number", "services:\n  - name: a\n    port: eighty\n".into(), "eighty", 0, "services[0].port: invalid type"),
        broken("backend state", with("    backends:\n      - address: 10.0.0.1\n        state: paused\n"), "paused", 0, "unknown variant `paused`"),
        broken("admin address", "admin:\n  address: localhost:9100\n".into(), "localhost", 0, "admin.address"),
        broken("missing port", "services:\n  - name: a\n    vip: 10.0.0.100\n".into(), "name: a", 0, "services[0]: missing field `port`"),
    ]
}

/// `xlb check` on each broken file: exit non-zero, `xlb: FILE:LINE:COLUMN: MESSAGE` on stderr
/// with the position of the offending key or value, nothing on stdout.
#[test]
fn check_reports_file_line_column() {
    let dir = TempDir::new();
    let mut bad = Vec::new();
    let cases = check_cases();
    for (i, c) in cases.iter().enumerate() {
        let path = dir.path().join(format!("case{i}.yaml"));
        fs::write(&path, &c.text).unwrap();
        let (ok, stdout, stderr) = xlb_check(&path);
        let want = format!("{}:{}:{}: ", path.display(), c.line, c.col);
        let first = stderr.lines().find(|l| l.contains("xlb: ")).unwrap_or_default().to_string();
        figure("check", &format!("{}: {}", c.what, first.replace(&dir.path().display().to_string(), "DIR")));
        if ok || !stdout.trim().is_empty() || !first.starts_with(&format!("xlb: {want}")) || !first.contains(c.says) {
            bad.push(format!(
                "{}: exit {}, want a failure with `xlb: {want}...{}...` on stderr\n  stdout: {stdout:?}\n  stderr: {stderr:?}\n  file:\n{}",
                c.what,
                if ok { "0" } else { "non-zero" },
                c.says,
                c.text
            ));
        }
    }
    // A YAML syntax error: the line of the bad indentation.
    let path = dir.path().join("syntax.yaml");
    fs::write(&path, "services:\n  - name: a\n     port: 80\n").unwrap();
    let (ok, _, stderr) = xlb_check(&path);
    figure("check", &format!("syntax error: {}", stderr.trim().replace(&dir.path().display().to_string(), "DIR")));
    if ok || !stderr.contains(&format!("xlb: {}:3:", path.display())) {
        bad.push(format!("bad indentation on line 3: exit ok={ok}, stderr {stderr:?}"));
    }
    // A file that is not there.
    let path = dir.path().join("missing.yaml");
    let (ok, _, stderr) = xlb_check(&path);
    if ok || !stderr.contains(&path.display().to_string()) {
        bad.push(format!("missing file: exit ok={ok}, stderr {stderr:?}"));
    }
    assert!(bad.is_empty(), "{} of {} broken files not reported as expected:\n{}", bad.len(), cases.len() + 2, bad.join("\n"));
}

/// `xlb check xlb.example.yaml` (the repository's example with every key) exits 0 and counts
/// its services.
#[test]
fn check_accepts_the_example() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("xlb.example.yaml");
    let text = fs::read_to_string(&example).unwrap_or_else(|e| panic!("{}: {e}", example.display()));
    let services = text.lines().filter(|l| l.starts_with("  - name: ")).count();
    let (ok, stdout, stderr) = xlb_check(&example);
    figure("check", &format!("xlb.example.yaml: {}", stdout.trim()));
    assert!(ok, "xlb check {}: failed\nstdout: {stdout}\nstderr: {stderr}", example.display());
    assert!(stdout.contains(&format!(": ok, {services} services")), "xlb check {}: {stdout:?}, want `ok, {services} services`", example.display());
}

/// The fields of the structs a config is deserialized into (`#[derive(..Deserialize..)]` in
/// lb-userspace/src/config/), read from the source so a key added
/// there is a key the example must show.
fn config_keys() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("lb-userspace/src");
    let mut keys = Vec::new();
    for file in ["config/mod.rs", "config/http.rs"] {
        let text = fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let mut lines = text.lines();
        while let Some(l) = lines.next() {
            if !(l.starts_with("#[derive(") && l.contains("Deserialize")) {
                continue;
            }
            let Some(head) = lines.by_ref().find(|l| !l.starts_with("#[")) else { break };
            let Some(name) = head.strip_prefix("pub struct ").or_else(|| head.strip_prefix("struct ")).filter(|h| h.ends_with(" {")) else { continue };
            let name = name.trim_end_matches(" {").to_string();
            for field in lines.by_ref().take_while(|l| *l != "}") {
                let f = field.trim_start().trim_start_matches("pub ");
                if let Some((key, _)) = f.split_once(": ")
                    && !key.is_empty()
                    && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                {
                    keys.push((name.clone(), key.to_string()));
                }
            }
        }
    }
    keys
}

/// `xlb.example.yaml` sets every key of the config model (README: it "lists every key with
/// its default").
#[test]
fn the_example_sets_every_key() {
    let example = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("xlb.example.yaml")).unwrap();
    let set: Vec<&str> = example.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>();
    let keys = config_keys();
    assert!(keys.len() > 40 && keys.iter().any(|(s, k)| s == "RawService" && k == "slow_start"), "reading the config structs found only {keys:?}");
    let missing: Vec<String> = keys
        .iter()
        .filter(|(_, k)| !set.iter().any(|l| l.contains(&format!(" {k}: ")) || l.contains(&format!("{{ {k}: ")) || l.trim_start().starts_with(&format!("{k}:")) || l.trim_start().starts_with(&format!("- {k}:"))))
        .map(|(s, k)| format!("{s}.{k}"))
        .collect();
    figure("check", &format!("xlb.example.yaml sets all {} keys of the config structs", keys.len() - missing.len()));
    assert!(missing.is_empty(), "keys of the config model that xlb.example.yaml does not set: {missing:?}");
}

/// Errors found after a service's keys were read (its port, its backends' families,
/// duplicates) and across services (a name or VIP:port used twice) point at the offending
/// service: `FILE:LINE:COLUMN` with LINE within that service's lines (README: errors read
/// `FILE:LINE:COLUMN: key: what was expected`).
#[test]
fn check_positions_of_errors_found_after_parsing() {
    let dir = TempDir::new();
    let a = "services:\n  - name: a\n    vip: 10.0.0.100\n    port: 80\n";
    // (what, text, first and last line of the offending service, what the message says)
    let cases: Vec<(&str, String, usize, usize, &str)> = vec![
        ("port 0 in the second service", format!("{a}  - name: b\n    vip: 10.0.0.100\n    port: 0\n"), 5, 7, "services[1].port: port 0: expected 1 to 65535"),
        (
            "backend listed twice in the second service",
            format!("{a}  - name: b\n    vip: 10.0.0.100\n    port: 81\n    backends: [{{ address: 10.0.0.1 }}, {{ address: 10.0.0.1 }}]\n"),
            5,
            8,
            "listed twice",
        ),
        (
            "backend of the wrong family in the second service",
            format!("{a}  - name: b\n    vip: 10.0.0.100\n    port: 81\n    backends: [{{ address: \"fd00::1\" }}]\n"),
            5,
            8,
            "not of the VIP's family",
        ),
        ("service name used twice", format!("{a}  - name: a\n    vip: 10.0.0.100\n    port: 81\n"), 5, 7, "service name \"a\" is used twice"),
        ("VIP and port used twice", format!("{a}  - name: b\n    vip: 10.0.0.100\n    port: 80\n"), 5, 7, "service \"a\" (tcp) already has this VIP, port and protocol"),
        (
            "HTTP on a TCP service's VIP and port",
            format!("{a}  - name: b\n    vip: 10.0.0.100\n    port: 80\n    protocol: http\n"),
            5,
            8,
            "service \"a\" (tcp) already has this VIP, port and protocol",
        ),
    ];
    let mut bad = Vec::new();
    for (i, (what, text, first, last, says)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("sem{i}.yaml"));
        fs::write(&path, text).unwrap();
        let (ok, _, stderr) = xlb_check(&path);
        let first_line = stderr.lines().next().unwrap_or_default().to_string();
        figure("check", &format!("{what}: {}", first_line.replace(&dir.path().display().to_string(), "DIR")));
        let prefix = format!("xlb: {}:", path.display());
        let at = first_line.strip_prefix(&prefix).and_then(|rest| {
            let mut it = rest.splitn(3, ':');
            let l = it.next()?.parse::<usize>().ok()?;
            let c = it.next()?.parse::<usize>().ok()?;
            Some((l, c))
        });
        let placed = at.is_some_and(|(l, _)| (*first..=*last).contains(&l));
        if ok || !first_line.contains(says) || !placed {
            bad.push(format!(
                "{what}: want a failure at {}:{first}..{last}:COLUMN saying {says:?}; got exit ok={ok}, position {at:?}: {first_line:?}\n  file:\n{text}",
                path.display()
            ));
        }
    }
    assert!(bad.is_empty(), "{} of {} errors not placed at the offending service:\n{}", bad.len(), cases.len(), bad.join("\n"));
}
