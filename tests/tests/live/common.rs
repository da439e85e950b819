//! What the scenarios share: the client outside the host, xlb following Docker, labelled
//! containers, the load's verdict and failure messages.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::SocketAddr,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use xlb_tests::{
    Offload,
    docker::{self, Container, Timed},
    http,
    load::{Load, LoadOpts, Report},
    outside::Outside,
    status::{ServiceLookup as _, Status},
    util::{TempFile, delta_ms, unique_id, wait_for},
    wrk::Wrk,
    xlb::{Xlb, XlbArgs},
};

/// 10.200.251.0/24: the client link (tests/docker.rs uses 250).
pub const SUBNET: u8 = 251;
/// The service port on the VIP.
pub const PORT: u16 = 80;
/// What xlb-testd listens on in the containers.
pub const TESTD_PORT: u16 = 8080;
/// xlb-testd's default lame-duck period after SIGTERM.
pub const LAME_DUCK: Duration = Duration::from_millis(1000);
/// The bound of scenario a: container start → first request served by it.
pub const NEW_REPLICA_SERVES_WITHIN: Duration = Duration::from_secs(2);

pub fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Prints a measured figure on a line that can be found and quoted.
pub fn figure(scenario: &str, text: &str) {
    println!("LIVE-FIGURE {scenario}: {text}");
}

/// Serialization (also against other test processes), root, tools, `XLB_BIN`, Docker.
pub fn setup() -> xlb_tests::Serial {
    let g = xlb_tests::serial();
    xlb_tests::preflight();
    docker::require_docker();
    g
}

/// A failure message: what went wrong, the load's report and xlb's whole log.
pub fn context(what: &str, report: Option<&Report>, xlb: &Xlb) -> String {
    let mut s = format!("{what}\n");
    if let Some(r) = report {
        let _ = writeln!(s, "{r}");
    }
    let _ = writeln!(s, "xlb kernel drops: {}", xlb.kernel_drops());
    let _ = write!(s, "--- xlb log ---\n{}--- end of xlb log ---", xlb.log());
    s
}

/// Panics with [`context`] unless `cond`.
macro_rules! ensure {
    ($cond:expr, $xlb:expr, $report:expr, $($fmt:tt)+) => {
        if !$cond {
            panic!("{}", $crate::common::context(&format!($($fmt)+), $report, $xlb));
        }
    };
}

/// xlb on the host's end of the client link, following Docker for `specs` / `config`.
/// xlb logs at debug level here (discovery updates, health, map syncs), for failure messages.
pub fn start_xlb(out: &Outside, specs: Vec<String>, config: Option<&Path>, bridge: &str) -> Xlb {
    let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info,xlb=debug".into());
    Xlb::start_with_env(XlbArgs { ns: None, iface: &out.host_if, config, specs, other_ifaces: vec![bridge.to_string()] }, &[("RUST_LOG", &log)])
}

/// Waits until GETs through the VIP (each on a new connection) were answered by every one of
/// `names` (xlb's Docker discovery runs after `ready`), at most 20 s / 2000 requests.
pub fn wait_vip_serves(out: &Outside, xlb: &Xlb, names: &[String]) {
    let vip = out.vip(PORT);
    let mut seen = BTreeSet::new();
    let mut errors = Vec::new();
    let mut tries = 0;
    let done = wait_for(Duration::from_secs(20), Duration::from_millis(10), || {
        tries += 1;
        match out.client.enter(|| http::get_name(vip)) {
            Ok(n) => {
                seen.insert(n);
            }
            Err(e) => errors.push(e),
        }
        (names.iter().all(|n| seen.contains(n)) || tries >= 2000).then_some(())
    });
    let all = names.iter().all(|n| seen.contains(n));
    ensure!(
        done.is_some() && all,
        xlb,
        None,
        "before the load: {vip} never answered from all of {names:?} ({tries} tries; seen {seen:?}; last errors {:?})",
        &errors[errors.len().saturating_sub(5)..]
    );
}

/// `n` xlb-testd containers of `image` ([`docker::build_image`] or
/// [`docker::build_health_image`]) on the default bridge with `xlb.service=SVC` (`docker run`,
/// not published), named `xt<id><prefix>I` and answering `<prefix>I`.
pub fn labelled_backends(svc: &str, prefix: &str, n: usize, image: &str) -> Vec<Container> {
    let label = format!("xlb.service={svc}");
    (1..=n)
        .map(|i| {
            let name = format!("{prefix}{i}");
            Container::run(&name, &["--label", &label], image, &["--name", &name, "--port", &TESTD_PORT.to_string()])
        })
        .collect()
}

/// The answer name of a [`labelled_backends`] container (its xlb-testd `--name`).
pub fn testd_name(c: &Container) -> String {
    docker::inspect(&c.id, "{{index .Config.Cmd 1}}")
}

/// The client outside the host, on this suite's subnet, with offloads on as on a real NIC.
pub fn outside() -> Outside {
    Outside::new(SUBNET, Offload::On)
}

/// Three [`labelled_backends`] under a fresh label: the label, the containers and their
/// answer names.
pub fn labelled_trio(prefix: &str, image: &str) -> (String, Vec<Container>, Vec<String>) {
    let svc = service_label();
    let cs = labelled_backends(&svc, prefix, 3, image);
    let names = cs.iter().map(testd_name).collect();
    (svc, cs, names)
}

/// xlb following the containers labelled `svc` on the default bridge, by a SPEC (`service`
/// `None`) or by a config file with one service (its name and extra YAML lines), once the VIP
/// answered from every one of `names`. Keep the config file as long as xlb runs.
pub fn follow(out: &Outside, svc: &str, service: Option<(&str, &str)>, names: &[String]) -> (Xlb, Option<TempFile>) {
    let config = service.map(|(name, extra)| {
        let yaml =
            format!("services:\n  - name: {name}\n    vip: \"{}\"\n    port: {PORT}\n    docker: {{ name: {svc}, port: {TESTD_PORT} }}\n{extra}", out.host_ip);
        TempFile::new(".yaml", &yaml)
    });
    let specs = if config.is_some() { vec![] } else { vec![docker_spec(out, svc)] };
    let xlb = start_xlb(out, specs, config.as_ref().map(TempFile::path), "docker0");
    wait_vip_serves(out, &xlb, names);
    (xlb, config)
}

/// The start of the lifecycle scenarios: three [`labelled_trio`] containers of `image`, the
/// client outside, and xlb following the containers by a SPEC ([`follow`]).
pub fn followed_trio(prefix: &str, image: &str) -> (Vec<Container>, Vec<String>, Outside, Xlb) {
    let (svc, cs, names) = labelled_trio(prefix, image);
    let out = outside();
    let (xlb, _) = follow(&out, &svc, None, &names);
    (cs, names, out, xlb)
}

/// Steady load through the VIP, one second in.
pub fn steady_load(out: &Outside) -> Load {
    let load = Load::start(&out.client, out.vip(PORT), LoadOpts::default());
    thread::sleep(Duration::from_secs(1));
    load
}

/// A bounded wrk load through the VIP: 8 connections for `secs`, every request on a new
/// connection (`Connection: close`), so each one is a flow the kernel data plane places.
pub fn wrk_new_connections(out: &Outside, secs: u32) -> thread::JoinHandle<Wrk> {
    let mut args = xlb_tests::wrk::args(&format!("http://{}/", out.vip(PORT)), 8, secs);
    args.extend(["-H".to_owned(), "Connection: close".to_owned()]);
    let wrk = out.client.exec("wrk", args);
    thread::spawn(move || xlb_tests::wrk::run(wrk))
}

/// A unique `xlb.service` label value (a valid SPEC TARGET name).
pub fn service_label() -> String {
    format!("xt{}s", unique_id())
}

/// The SPEC `VIP:80:NAME:8080`: the containers of NAME (label, compose service, name, alias).
fn docker_spec(out: &Outside, name: &str) -> String {
    format!("{}:{PORT}:{name}:{TESTD_PORT}", out.host_ip)
}

/// xlb's status from its admin endpoint (`None`: no answer yet).
pub fn admin_status(xlb: &Xlb) -> Option<Status> {
    Status::parse(&xlb.admin_get("/api/v1/services").ok()?).ok()
}

/// The backend addresses xlb's status lists for `service`, sorted (`None`: no status yet).
pub fn status_addresses(xlb: &Xlb, service: &str) -> Option<Vec<String>> {
    Some(admin_status(xlb)?.service(service)?.addresses())
}

/// The time of the first line of `lines` at or after `at` containing `what`.
pub fn first_log_after(lines: &[(Instant, String)], at: Instant, what: &str) -> Option<Instant> {
    lines.iter().find(|(t, l)| *t >= at && l.contains(what)).map(|(t, _)| *t)
}

/// How fast xlb reacted to something done at `at`: the first log line after it containing
/// `event` (e.g. a discovery update), then the first `maps synced` after that.
pub fn xlb_reaction(xlb: &Xlb, report: &Report, at: Instant, event: &str) -> String {
    let lines = xlb.log_times(report);
    let Some(t_event) = first_log_after(&lines, at, event) else {
        return format!("no xlb log line with {event:?} after it");
    };
    let synced = lines.iter().find(|(t, l)| *t >= t_event && l.contains("maps synced"));
    format!(
        "xlb logged {event:?} {:.1} ms after it{}",
        delta_ms(at, t_event),
        synced.map_or(String::new(), |(t, l)| {
            let us = l.rsplit("elapsed_us=").next().unwrap_or("?");
            format!(", the data plane was updated {:.1} ms after it (map sync took {us} us)", delta_ms(at, *t))
        })
    )
}

/// `POST /health/WHAT` (`fail` or `ok`) straight to a backend, timed.
#[track_caller]
pub fn set_health(direct: SocketAddr, what: &str) -> Timed {
    let called = Instant::now();
    let r = http::request(direct, "POST", &format!("/health/{what}"));
    assert!(r.as_ref().is_ok_and(|r| r.status == 200), "POST /health/{what} to {direct}: {r:?}");
    Timed { called, returned: Instant::now() }
}

/// Panics (with the report and xlb's log) unless every request of the load was answered.
#[track_caller]
pub fn assert_zero_failures(report: &Report, xlb: &Xlb, scenario: &str) {
    report.assert_ran_throughout();
    let f = report.failures().len();
    println!(
        "{scenario}: {} requests, {} answered, {f} failed; per backend {:?}; {} reused the source port of an earlier request",
        report.records.len(),
        report.records.len() - f,
        report.by_backend(),
        report.reused_ports()
    );
    ensure!(f == 0, xlb, Some(report), "{scenario}: {f} of {} client requests FAILED (want 0)", report.records.len());
}
