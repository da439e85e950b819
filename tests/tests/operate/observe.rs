//! Status, metrics and logs against real traffic (section 1 of the crate's doc).

use std::{
    fmt::Write as _,
    thread,
    time::{Duration, Instant},
};

use xlb_tests::{
    Offload, Topology, Xlb,
    config::{self, BackendCfg, ServiceCfg},
    docker::{self, Container},
    http,
    outside::Outside,
    status::{self, ServiceLookup as _, Status, parse_metrics, samples},
    topology::{LB_CLIENT_IF, LB_CLIENT_V4, TESTD_PORT, VIP4},
    util::{self, TempFile, cmd, wait_for},
    xlb::{XlbArgs, xlb_bin},
};

use crate::common::{ADMIN, SERVICE, SNAPSHOT_WAIT, addr_of, addrs_of, context, figure, log_lines, poll_status, setup, start_xlb, stop, tail, web, yaml};

/// Exactly N new connections through the VIP of a 3-backend service: `xlb status --json`
/// shows N flows for the service and, per backend, the number of connections the client saw
/// that backend answer; `/metrics` has the same numbers; `xlb status` lists every backend.
#[test]
// long: one scenario over one load and one xlb, told in order; its checks read the load's
// report and the times taken at the steps before them.
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
    assert!(
        flow_rate > 0.0 && flow_rate <= N as f64 * 1.05 && byte_rate > 0.0,
        "rates with the {N} flows: {flow_rate} flows/s, {byte_rate} bytes/s:\n{}",
        after.raw
    );
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
        assert_eq!(
            b.new_flows,
            spread.count(n) as u64,
            "{n} ({}): status new_flows vs the answers the client got from it ({spread}):\n{}",
            b.address,
            after.raw
        );
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
        assert!(
            s.len() == 1 && s[0].value == spread.count(n) as f64,
            "{n}: xlb_backend_flows_total{{backend={a:?}}} = {s:?}, the client got {} answers from it\n{text}",
            spread.count(n)
        );
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
    let settled =
        poll_status(&topo, Duration::from_secs(8), |s| s.service(SERVICE).is_some_and(|w| w.backends.iter().map(|b| b.active_connections).sum::<u64>() > 0));
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
// long: one scenario over one load and one xlb, told in order; its checks read the load's
// report and the times taken at the steps before them.
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
    let up = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        topo.client.enter(|| std::net::TcpStream::connect_timeout(&front, Duration::from_millis(500)).ok())
    });
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
    let missing_at: usize =
        names.iter().map(|n| value("xlb_http_requests_total", &[("service", SERVICE), ("backend", &addr_of(&topo, n)), ("code", "404")]) as usize).sum();
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
        let mut bounds: Vec<(f64, f64)> =
            buckets.iter().map(|s| (s.labels["le"].parse::<f64>().unwrap_or_else(|_| panic!("le {:?}", s.labels["le"])), s.value)).collect();
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

    // b2 stops: every other request tries it first; its fifth failed try in a row
    // (max_fails) marks it down (passive health), one transition.
    drop(topo.backends[1].testd.take());
    let after_stop = topo.spread(front, 12);
    assert!(after_stop.errors.is_empty() && after_stop.count("b1") == 12, "with b2 stopped: {after_stop}\n{}", tail(&xlb));
    let b2 = [("service", SERVICE), ("backend", &*addr_of(&topo, "b2"))];
    let seen = wait_for(SNAPSHOT_WAIT, Duration::from_millis(100), || {
        text = status::metrics_text(&topo.lb, ADMIN).ok()?;
        let m = parse_metrics(&text).ok()?;
        let one = |name: &str, l: &[(&str, &str)]| samples(&m, name, l).first().map(|s| s.value);
        (one("xlb_backend_health_transitions_total", &b2)? >= 1.0)
            .then(|| (one("xlb_backend_health_transitions_total", &b2), one("xlb_health_transitions_total", &[]), one("xlb_backend_up", &b2)))
    });
    assert_eq!(
        seen,
        Some((Some(1.0), Some(1.0), Some(0.0))),
        "b2's health transition (its own, the total) and xlb_backend_up after it stopped:\n{text}\n{}",
        tail(&xlb)
    );
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
        let ok =
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|j| j["level"].is_string() && j["target"].is_string() && j["fields"]["message"].is_string());
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
    assert_eq!(
        (b.name.as_str(), b.origin.as_str(), b.address.clone()),
        (first.name.as_str(), "docker:bridge", format!("{}:{TESTD_PORT}", first.ip())),
        "{}",
        st.raw
    );
    assert!(st.service(&service).unwrap().sources.contains(&format!("docker:{label}")), "{}", st.raw);
    let before = wait_for(SNAPSHOT_WAIT, Duration::from_millis(100), || events().filter(|&n| n >= 1.0));
    assert!(before.is_some(), "{}", context("xlb_discovery_events_total{source=\"docker\"} never reached 1", None, &xlb));
    let before = before.unwrap();

    let second = Container::testd("de2", &with_label);
    let st = backends(2).unwrap_or_else(|| panic!("{}", context("the second container never showed in xlb status", None, &xlb)));
    let names: Vec<&str> = st.service(&service).unwrap().backends.iter().map(|b| b.name.as_str()).collect();
    assert!(names.contains(&second.name.as_str()), "{names:?}\n{}", st.raw);
    let after = wait_for(SNAPSHOT_WAIT, Duration::from_millis(100), || events().filter(|&n| n > before));
    figure(
        "discovery",
        &format!("xlb_discovery_events_total{{source=\"docker\"}}: {before} with one container, {after:?} after a second started; backends {names:?}"),
    );
    assert!(
        after.is_some(),
        "{}",
        context(&format!("xlb_discovery_events_total{{source=\"docker\"}} stayed at {before} after a second container started"), None, &xlb)
    );
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
