//! Live backends: xlb follows the Docker engine by itself (no reload, no SIGHUP) while a client
//! outside the host sends steady load through the VIP, and the backends change under it:
//!
//! - `testd_lame_duck_as_pid1_in_a_scratch_container`: what the backend does for a
//!   zero-failure stop (SIGTERM → keeps serving for the lame-duck period, then exits 0), as
//!   PID 1 of a `FROM scratch` container;
//! - a. `compose_scale_up_and_down`: a compose service `api` (not published) scaled 1 → 5 → 1;
//!   every new replica serves within 2 s of its container start;
//! - b. `docker_stop_one_backend`;
//! - c. `docker_restart_every_backend`, one at a time;
//! - d. `health_fail_then_recover` (xlb's HTTP probe on `/health`, flipped with
//!   `POST /health/fail|ok` sent straight to the container): no new requests while failing
//!   (after `fall` probes), served again after `rise`;
//! - d2. `docker_healthcheck_fail_then_recover`: the same with Docker's own HEALTHCHECK
//!   (`xlb-testd check` in the image) as the only signal: drained once xlb applied Docker's
//!   `health_status: unhealthy`, served again after `healthy`;
//! - e. `docker_kill_one_backend`: no request started after `docker kill` returned is
//!   answered by, or sent to, the killed container;
//! - g. `docker_daemon_restart`: the machine's dockerd stopped (live restore on) and started
//!   again under the load; a container killed while it was away leaves xlb's set at the
//!   resynchronisation, and xlb follows the new daemon's events.
//!
//! Each scenario counts the client's failed requests and asserts that there are none (in e,
//! none among the requests started after `docker kill` returned; the ones in flight when the
//! container was killed are counted and printed separately). Measured figures are printed on
//! lines starting with `LIVE-FIGURE` (run with `--nocapture`).
//!
//! ```text
//!  client ns  eth0 10.200.251.2 ---- xt<id>h 10.200.251.1 (root ns: xlb --iface, VIP :80)
//!                                    docker0 / br-<compose network> ---- containers :8080
//! ```
//!
//! Needs root, Docker, docker-compose (a) and `XLB_BIN`.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use xlb_tests::{
    Offload,
    compose::{self, Compose},
    docker::{self, Container, Timed},
    http,
    load::{Load, LoadOpts, Record, Report},
    outside::Outside,
    status::{ServiceLookup as _, Status},
    util::{TempFile, unique_id, wait_for},
    xlb::{Xlb, XlbArgs},
};

/// 10.200.251.0/24: the client link (tests/docker.rs uses 250).
const SUBNET: u8 = 251;
/// The service port on the VIP.
const PORT: u16 = 80;
/// What xlb-testd listens on in the containers.
const TESTD_PORT: u16 = 8080;
/// xlb-testd's default lame-duck period after SIGTERM.
const LAME_DUCK: Duration = Duration::from_millis(1000);
/// The bound of scenario a: container start → first request served by it.
const NEW_REPLICA_SERVES_WITHIN: Duration = Duration::from_secs(2);

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Signed milliseconds from `a` to `b`.
fn delta_ms(a: Instant, b: Instant) -> f64 {
    match b.checked_duration_since(a) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(a - b).as_secs_f64() * 1e3,
    }
}

/// Prints a measured figure on a line that can be found and quoted.
fn figure(scenario: &str, text: &str) {
    println!("LIVE-FIGURE {scenario}: {text}");
}

/// Serialization (also against other test processes), root, tools, `XLB_BIN`, Docker.
fn setup() -> xlb_tests::Serial {
    let g = xlb_tests::serial();
    xlb_tests::preflight();
    docker::require_docker();
    g
}

/// A failure message: what went wrong, the load's report and xlb's whole log.
fn context(what: &str, report: Option<&Report>, xlb: &Xlb) -> String {
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
            panic!("{}", context(&format!($($fmt)+), $report, $xlb));
        }
    };
}

/// xlb on the host's end of the client link, following Docker for `specs` / `config`.
/// xlb logs at debug level here (discovery updates, health, map syncs), for failure messages.
fn start_xlb(out: &Outside, specs: Vec<String>, config: Option<&Path>, bridge: &str) -> Xlb {
    let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info,xlb=debug".into());
    Xlb::start_with_env(
        XlbArgs { ns: None, iface: &out.host_if, config, specs, other_ifaces: vec![bridge.to_string()] },
        &[("RUST_LOG", &log)],
    )
}

/// Waits until GETs through the VIP (each on a new connection) were answered by every one of
/// `names` (xlb's Docker discovery runs after `ready`), at most 20 s / 2000 requests.
fn wait_vip_serves(out: &Outside, xlb: &Xlb, names: &[String]) {
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
fn labelled_backends(svc: &str, prefix: &str, n: usize, image: &str) -> Vec<Container> {
    let label = format!("xlb.service={svc}");
    (1..=n)
        .map(|i| {
            let name = format!("{prefix}{i}");
            Container::run(&name, &["--label", &label], image, &["--name", &name, "--port", &TESTD_PORT.to_string()])
        })
        .collect()
}

/// The answer name of a [`labelled_backends`] container (its xlb-testd `--name`).
fn testd_name(c: &Container) -> String {
    docker::inspect(&c.id, "{{index .Config.Cmd 1}}")
}

/// A unique `xlb.service` label value (a valid SPEC TARGET name).
fn service_label() -> String {
    format!("xt{}s", unique_id())
}

/// The SPEC `VIP:80:NAME:8080`: the containers of NAME (label, compose service, name, alias).
fn docker_spec(out: &Outside, name: &str) -> String {
    format!("{}:{PORT}:{name}:{TESTD_PORT}", out.host_ip)
}

/// How fast xlb reacted to something done at `at`: the first log line after it containing
/// `event` (e.g. a discovery update), then the first `maps synced` after that.
fn xlb_reaction(xlb: &Xlb, report: &Report, at: Instant, event: &str) -> String {
    let lines = xlb.log_times(report);
    let Some((t_event, _)) = lines.iter().find(|(t, l)| *t >= at && l.contains(event)) else {
        return format!("no xlb log line with {event:?} after it");
    };
    let synced = lines.iter().find(|(t, l)| t >= t_event && l.contains("maps synced"));
    format!(
        "xlb logged {event:?} {:.1} ms after it{}",
        delta_ms(at, *t_event),
        synced.map_or(String::new(), |(t, l)| {
            let us = l.rsplit("elapsed_us=").next().unwrap_or("?");
            format!(", the data plane was updated {:.1} ms after it (map sync took {us} us)", delta_ms(at, *t))
        })
    )
}

/// `POST /health/WHAT` (`fail` or `ok`) straight to a backend, timed.
#[track_caller]
fn set_health(direct: SocketAddr, what: &str) -> Timed {
    let called = Instant::now();
    let r = http::request(direct, "POST", &format!("/health/{what}"));
    assert!(r.as_ref().is_ok_and(|r| r.status == 200), "POST /health/{what} to {direct}: {r:?}");
    Timed { called, returned: Instant::now() }
}

/// Panics (with the report and xlb's log) unless every request of the load was answered.
#[track_caller]
fn assert_zero_failures(report: &Report, xlb: &Xlb, scenario: &str) {
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

// ------------------------------------------------------------------------------------------
// 1. The backend's own part: lame duck on SIGTERM, as PID 1.

/// xlb-testd as PID 1 of a `FROM scratch` container: `docker stop` makes it keep answering for
/// its lame-duck period (and fail `/health`), then exit 0 long before Docker's SIGKILL.
#[test]
fn testd_lame_duck_as_pid1_in_a_scratch_container() {
    let _g = xlb_tests::serial();
    docker::require_docker();
    let lame = Duration::from_millis(1500);
    let c = Container::testd("ld", &["-e", &format!("XLB_TESTD_LAME_DUCK_MS={}", lame.as_millis())]);
    let addr = SocketAddr::from((c.ip(), TESTD_PORT));

    // PID 1 in its PID namespace: the last NSpid field of the host's view of the process.
    let pid = c.inspect("{{.State.Pid}}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap_or_default().to_string();
    assert_eq!(nspid.split_whitespace().last(), Some("1"), "xlb-testd is not PID 1 in {}: {nspid:?}", c.name);
    let up = wait_for(Duration::from_secs(5), Duration::from_millis(20), || http::get_name(addr).ok());
    assert_eq!(up.as_deref(), Some("ld"), "{} does not answer on {addr}", c.name);

    // docker stop in the background; meanwhile GET / and GET /health straight to the container.
    let id = c.id.clone();
    let called = Instant::now();
    let stopper = thread::spawn(move || {
        let r = docker::docker_cli(&["stop", "-t", "10", &id]);
        (r, Instant::now())
    });
    let mut probes: Vec<(Instant, Result<String, String>, Option<u16>)> = Vec::new();
    while !stopper.is_finished() && called.elapsed() < Duration::from_secs(15) {
        let t = Instant::now();
        let got = http::get_name(addr);
        let health = http::request(addr, "GET", "/health").ok().map(|r| r.status);
        probes.push((t, got, health));
        thread::sleep(Duration::from_millis(25));
    }
    let (stopped, returned) = stopper.join().unwrap();
    stopped.unwrap_or_else(|e| panic!("docker stop: {e}"));
    let took = returned - called;
    let logs = c.logs();
    let exit = c.inspect("{{.State.ExitCode}}");

    let answered: Vec<_> = probes.iter().filter(|(_, r, _)| r.is_ok()).collect();
    let last_answer = answered.last().map(|(t, _, _)| *t - called);
    let lame_503 = probes.iter().filter(|(_, _, h)| *h == Some(503)).count();
    figure(
        "lame-duck",
        &format!(
            "docker stop -t 10 of xlb-testd (PID 1, lame duck {} ms) took {} ms; {} of {} GETs answered, the last one sent {} ms after docker stop was called; /health 503 {} times",
            ms(lame),
            ms(took),
            answered.len(),
            probes.len(),
            last_answer.map_or(-1, |d| d.as_millis() as i64),
            lame_503
        ),
    );
    let probes_text = || {
        probes.iter().map(|(t, r, h)| format!("  +{} ms: {r:?} health {h:?}", ms(*t - called))).collect::<Vec<_>>().join("\n")
    };
    assert!(took >= lame && took < Duration::from_secs(5), "docker stop took {took:?}: want the lame-duck period ({lame:?}) and well under Docker's 10 s SIGKILL (a PID 1 without a SIGTERM handler waits for it)\nlogs:\n{logs}");
    assert_eq!(exit, "0", "exit code after SIGTERM; logs:\n{logs}");
    assert!(logs.contains("ld lame duck for 1500 ms") && logs.contains("ld exiting"), "logs:\n{logs}");
    // Docker signals right after the call; the lame duck then lasts 1.5 s: every GET sent in
    // the first 1.3 s is answered.
    let early_failures: Vec<_> = probes.iter().filter(|(t, r, _)| *t - called < lame - Duration::from_millis(200) && r.is_err()).collect();
    assert!(early_failures.is_empty() && answered.len() >= 20, "GETs during the lame-duck period must be answered:\n{}", probes_text());
    assert!(lame_503 > 0, "/health must fail (503) during the lame-duck period:\n{}", probes_text());

    // Lame duck 0: SIGTERM exits at once (still PID 1-safe).
    let c0 = Container::testd("ld0", &["-e", "XLB_TESTD_LAME_DUCK_MS=0"]);
    let t = c0.stop(10);
    figure("lame-duck", &format!("docker stop -t 10 of xlb-testd with lame duck 0 took {} ms", ms(t.took())));
    assert!(t.took() < Duration::from_secs(2), "lame duck 0: docker stop took {:?}\nlogs:\n{}", t.took(), c0.logs());
    assert_eq!(c0.inspect("{{.State.ExitCode}}"), "0");
}

// ------------------------------------------------------------------------------------------
// a. docker-compose: scale 1 → 5 → 1.

#[test]
fn compose_scale_up_and_down() {
    let _g = setup();
    compose::require_compose();
    let compose = Compose::testd("api", &[]);
    compose.up(&[("api", 1)]);
    let first = compose.containers("api");
    assert_eq!(first.len(), 1, "compose project {}: {first:?}", compose.project);
    let ports = docker::inspect(&first[0], "{{json .NetworkSettings.Ports}}");
    assert!(!ports.contains("HostPort"), "the api container must not be published: {ports}");
    let hostname = |id: &str| docker::inspect(id, "{{.Config.Hostname}}");

    let out = Outside::new(SUBNET, Offload::On);
    let config = TempFile::new(
        ".yaml",
        &format!(
            "services:\n  - name: api\n    vip: \"{}\"\n    port: {PORT}\n    docker: {{ name: api, project: {}, port: {TESTD_PORT} }}\n",
            out.host_ip, compose.project
        ),
    );
    let mut xlb = start_xlb(&out, vec![], Some(config.path()), &compose.bridge());
    wait_vip_serves(&out, &xlb, &[hostname(&first[0])]);

    let load = Load::start(&out.client, out.vip(PORT), LoadOpts::default());
    thread::sleep(Duration::from_secs(1));

    // Scale up.
    let up = compose.up(&[("api", 5)]);
    let all = compose.containers("api");
    let new: Vec<String> = all.iter().filter(|id| !first.contains(id)).cloned().collect();
    let new_names: Vec<String> = new.iter().map(|id| hostname(id)).collect();
    // Read now: the scale-down removes them.
    let new_started: Vec<_> = new.iter().map(|id| docker::started_at(id)).collect();
    assert_eq!(new.len(), 4, "scale to 5: containers {all:?}");
    for id in &new {
        let ports = docker::inspect(id, "{{json .NetworkSettings.Ports}}");
        assert!(!ports.contains("HostPort"), "replica {id} must not be published: {ports}");
    }
    let waited = load.wait_served_since(&new_names, up.called, Duration::from_secs(10));
    thread::sleep(Duration::from_secs(2));

    // Scale down: compose stops (SIGTERM, lame duck) and removes the 4 new ones.
    let down = compose.up(&[("api", 1)]);
    let left = compose.containers("api");
    thread::sleep(Duration::from_secs(2));
    let report = load.stop();
    ensure!(waited.is_ok(), &xlb, Some(&report), "after scale-up: {}", waited.unwrap_err());
    ensure!(left == first, &xlb, Some(&report), "after scale-down to 1: {left:?}, want {first:?}");

    figure(
        "compose",
        &format!("docker-compose up --scale api=5 took {} ms; --scale api=1 took {} ms", ms(up.took()), ms(down.took())),
    );
    let mut slow = Vec::new();
    for (name, started) in new_names.iter().zip(&new_started) {
        let started = report.instant_of(*started);
        let Some(r) = report.first_served(name, up.called) else {
            slow.push(format!("{name}: never served"));
            continue;
        };
        let d = delta_ms(started, r.end);
        figure(
            "scale-up",
            &format!(
                "replica {name}: container start -> first request served {d:.0} ms (request sent {:.0} ms after the start; `up` returned {:.0} ms after it)",
                delta_ms(started, r.start),
                delta_ms(started, up.returned)
            ),
        );
        if d > NEW_REPLICA_SERVES_WITHIN.as_secs_f64() * 1e3 {
            slow.push(format!("{name}: {d:.0} ms"));
        }
    }
    for name in &new_names {
        if let Some(r) = report.last_started(name) {
            figure(
                "scale-down",
                &format!(
                    "replica {name}: last new request started {:.0} ms after `up --scale api=1` was called (at {} UTC; the call at {}, returned at {})",
                    delta_ms(down.called, r.start),
                    report.wall(r.start),
                    report.wall(down.called),
                    report.wall(down.returned)
                ),
            );
        }
    }
    assert_zero_failures(&report, &xlb, "compose scale 1 -> 5 -> 1");
    ensure!(slow.is_empty(), &xlb, Some(&report), "new replicas must serve within {NEW_REPLICA_SERVES_WITHIN:?} of their container start: {slow:?}");
    // After the scale-down returned, only the first replica answers.
    let first_name = hostname(&first[0]);
    let strays: Vec<&Record> = report.served().filter(|r| r.start >= down.returned && r.backend() != Some(first_name.as_str())).collect();
    ensure!(strays.is_empty(), &xlb, Some(&report), "answers from removed replicas after the scale-down: {:?}", strays.iter().map(|r| report.describe(r)).collect::<Vec<_>>());
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}

// ------------------------------------------------------------------------------------------
// b. docker stop.

#[test]
fn docker_stop_one_backend() {
    let _g = setup();
    let svc = service_label();
    let cs = labelled_backends(&svc, "s", 3, docker::build_image());
    let names: Vec<String> = cs.iter().map(testd_name).collect();
    let out = Outside::new(SUBNET, Offload::On);
    let mut xlb = start_xlb(&out, vec![docker_spec(&out, &svc)], None, "docker0");
    wait_vip_serves(&out, &xlb, &names);

    let load = Load::start(&out.client, out.vip(PORT), LoadOpts::default());
    thread::sleep(Duration::from_secs(1));
    let victim = &cs[1];
    let vname = &names[1];
    let stop: Timed = victim.stop(10);
    thread::sleep(Duration::from_millis(1500));
    let report = load.stop();

    let after_call = report.answered_by(vname, stop.called, Instant::now());
    let last = report.last_started(vname);
    let last_ms = last.map(|r| delta_ms(stop.called, r.start));
    figure(
        "docker-stop",
        &format!(
            "{vname}: docker stop -> last NEW request served by it {} ms ({} requests started after the call were answered by it; docker stop took {} ms with a {} ms lame duck)",
            last_ms.map_or("n/a".into(), |v| format!("{v:.1}")),
            after_call.len(),
            ms(stop.took()),
            ms(LAME_DUCK)
        ),
    );
    figure("docker-stop", &format!("docker stop called: {}", xlb_reaction(&xlb, &report, stop.called, "Docker discovery update")));
    assert_zero_failures(&report, &xlb, "docker stop");
    let late = report.answered_by(vname, stop.called + LAME_DUCK, Instant::now());
    ensure!(late.is_empty(), &xlb, Some(&report), "{vname} answered requests started after its lame-duck period: {:?}", late.iter().map(|r| report.describe(r)).collect::<Vec<_>>());
    for (n, _) in names.iter().zip(&cs).filter(|(n, _)| *n != vname) {
        ensure!(report.first_served(n, stop.returned).is_some(), &xlb, Some(&report), "{n} served nothing after the stop");
    }
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}

// ------------------------------------------------------------------------------------------
// c. docker restart, every backend, one at a time.

#[test]
fn docker_restart_every_backend() {
    let _g = setup();
    let svc = service_label();
    let cs = labelled_backends(&svc, "r", 3, docker::build_image());
    let names: Vec<String> = cs.iter().map(testd_name).collect();
    let out = Outside::new(SUBNET, Offload::On);
    let mut xlb = start_xlb(&out, vec![docker_spec(&out, &svc)], None, "docker0");
    wait_vip_serves(&out, &xlb, &names);

    let load = Load::start(&out.client, out.vip(PORT), LoadOpts::default());
    thread::sleep(Duration::from_secs(1));
    let mut restarts = Vec::new();
    let mut problems = Vec::new();
    for (c, name) in cs.iter().zip(&names) {
        let t = c.restart(10);
        let ip = c.ip();
        if let Err(e) = load.wait_served_since(std::slice::from_ref(name), t.returned, Duration::from_secs(5)) {
            problems.push(format!("after docker restart {name}: {e}"));
        }
        restarts.push((name.clone(), t, c.started_at(), ip));
        thread::sleep(Duration::from_millis(500));
    }
    thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    for (name, t, started, ip) in &restarts {
        let started = report.instant_of(*started);
        let first = report.first_served(name, t.returned);
        figure(
            "docker-restart",
            &format!(
                "{name}: restart took {} ms (now {ip}); container start -> first request served {}; last request before the restart started {} ms after the call",
                ms(t.took()),
                first.map_or("never".into(), |r| format!("{:.0} ms", delta_ms(started, r.end))),
                report.answered_by(name, report.t0, started).iter().map(|r| r.start).max().map_or("n/a".into(), |s| format!("{:.0}", delta_ms(t.called, s)))
            ),
        );
        figure("docker-restart", &format!("{name}: docker restart called: {}", xlb_reaction(&xlb, &report, t.called, "Docker discovery update")));
    }
    assert_zero_failures(&report, &xlb, "docker restart, one at a time");
    ensure!(problems.is_empty(), &xlb, Some(&report), "{problems:?}");
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}

// ------------------------------------------------------------------------------------------
// d. Unhealthy, then healthy again (xlb's own HTTP probe).

#[test]
fn health_fail_then_recover() {
    let _g = setup();
    let svc = service_label();
    let cs = labelled_backends(&svc, "h", 3, docker::build_image());
    let names: Vec<String> = cs.iter().map(testd_name).collect();
    let out = Outside::new(SUBNET, Offload::On);
    let (interval, fall, rise) = (Duration::from_millis(200), 2u32, 2u32);
    let config = TempFile::new(
        ".yaml",
        &format!(
            "services:\n  - name: live-health\n    vip: \"{}\"\n    port: {PORT}\n    docker: {{ name: {svc}, port: {TESTD_PORT} }}\n    \
             health: {{ http: /health, expect_status: 200, interval: {}ms, timeout: 500ms, rise: {rise}, fall: {fall} }}\n",
            out.host_ip,
            ms(interval)
        ),
    );
    let mut xlb = start_xlb(&out, vec![], Some(config.path()), "docker0");
    wait_vip_serves(&out, &xlb, &names);

    let load = Load::start(&out.client, out.vip(PORT), LoadOpts::default());
    thread::sleep(Duration::from_secs(1));
    let victim = &cs[1];
    let vname = names[1].clone();
    let direct = SocketAddr::from((victim.ip(), TESTD_PORT));
    let flip = |what: &str| set_health(direct, what);
    // The verdict flips at the `fall`-th failed probe: the first one comes within one
    // interval (±10%), the others an interval apart. Then the event, the plan, the maps.
    let grace = interval.mul_f64(1.1) * fall + Duration::from_millis(300);
    let fail = flip("fail");
    thread::sleep(grace + Duration::from_secs(2));
    let ok = flip("ok");
    let back = load.wait_served_since(std::slice::from_ref(&vname), ok.returned, interval.mul_f64(1.1) * (rise + 1) + Duration::from_secs(2));
    thread::sleep(Duration::from_secs(1));
    let report = load.stop();

    let while_failing = report.answered_by(&vname, fail.returned + grace, ok.called);
    let last_new = report.answered_by(&vname, fail.called, ok.called).iter().map(|r| r.start).max();
    let first_back = report.first_served(&vname, ok.returned);
    figure(
        "health",
        &format!(
            "{vname} (probe every {} ms, fall {fall}, rise {rise}): POST /health/fail -> last new request served by it {}; POST /health/ok -> first request served again {}",
            ms(interval),
            last_new.map_or("n/a (none after the flip)".into(), |s| format!("{:.0} ms", delta_ms(fail.returned, s))),
            first_back.map_or("never".into(), |r| format!("{:.0} ms", delta_ms(ok.returned, r.end)))
        ),
    );
    figure("health", &format!("POST /health/fail: {}", xlb_reaction(&xlb, &report, fail.returned, "healthy=false")));
    figure("health", &format!("POST /health/ok: {}", xlb_reaction(&xlb, &report, ok.returned, "healthy=true")));
    assert_zero_failures(&report, &xlb, "health fail then recover");
    ensure!(
        while_failing.is_empty(),
        &xlb,
        Some(&report),
        "{vname} answered {} requests started more than {grace:?} after it turned unhealthy (fall {fall} x {interval:?}): {:?}",
        while_failing.len(),
        while_failing.iter().take(10).map(|r| report.describe(r)).collect::<Vec<_>>()
    );
    ensure!(back.is_ok(), &xlb, Some(&report), "{vname} after POST /health/ok: {}", back.unwrap_err());
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}

// ------------------------------------------------------------------------------------------
// d2. Unhealthy, then healthy again (Docker's own HEALTHCHECK).

/// The time of the first line of `lines` at or after `at` containing `what`.
fn first_log_after(lines: &[(Instant, String)], at: Instant, what: &str) -> Option<Instant> {
    lines.iter().find(|(t, l)| *t >= at && l.contains(what)).map(|(t, _)| *t)
}

/// Docker's HEALTHCHECK verdict drains a backend and brings it back, with no probe of xlb's
/// involved. The containers run [`docker::build_health_image`] (`xlb-testd check` every
/// second, one failure makes the container unhealthy) and the service has no `health:`
/// block: xlb's own probe is then its default TCP connect, which keeps passing while
/// `/health` fails (xlb-testd still accepts connections). The test checks that this is so:
/// xlb logs no `health changed ... healthy=false` (its probe's verdict) for the victim, and its
/// status shows the victim `unhealthy` while Docker says so.
///
/// Measured from Docker's `health_status` events (`docker events`, the daemon's clock) to
/// xlb's `Docker discovery update` and `maps synced` log lines (the same clock): no request
/// started after the map sync that followed `health_status: unhealthy` reaches the victim,
/// and it serves again after `health_status: healthy`.
#[test]
fn docker_healthcheck_fail_then_recover() {
    let _g = setup();
    let svc = service_label();
    let cs = labelled_backends(&svc, "d", 3, docker::build_health_image());
    let names: Vec<String> = cs.iter().map(testd_name).collect();
    let docker_health = |c: &Container| c.inspect("{{.State.Health.Status}}");
    let all_healthy = wait_for(Duration::from_secs(10), Duration::from_millis(100), || cs.iter().all(|c| docker_health(c) == "healthy").then_some(()));
    assert!(all_healthy.is_some(), "Docker's health checks: {:?}", cs.iter().map(|c| (c.name.clone(), docker_health(c))).collect::<Vec<_>>());
    let out = Outside::new(SUBNET, Offload::On);
    let service = "live-docker-health";
    let config = TempFile::new(
        ".yaml",
        &format!("services:\n  - name: {service}\n    vip: \"{}\"\n    port: {PORT}\n    docker: {{ name: {svc}, port: {TESTD_PORT} }}\n", out.host_ip),
    );
    let mut xlb = start_xlb(&out, vec![], Some(config.path()), "docker0");
    wait_vip_serves(&out, &xlb, &names);

    let load = Load::start(&out.client, out.vip(PORT), LoadOpts::default());
    thread::sleep(Duration::from_secs(1));
    let victim = &cs[1];
    let vname = names[1].clone();
    let direct = SocketAddr::from((victim.ip(), TESTD_PORT));
    let since = std::time::SystemTime::now();
    let fail = set_health(direct, "fail");
    let unhealthy = wait_for(Duration::from_secs(5), Duration::from_millis(50), || (docker_health(victim) == "unhealthy").then_some(()));
    // xlb's status (refreshed every 2 s) while Docker says unhealthy and its TCP probe passes.
    let status_state = || {
        let s = Status::parse(&xlb.admin_get("/api/v1/services").ok()?).ok()?;
        Some(s.service(service)?.backend(&direct.to_string())?.state.clone())
    };
    let shown = wait_for(Duration::from_secs(5), Duration::from_millis(250), || status_state().filter(|s| s == "unhealthy"));
    thread::sleep(Duration::from_secs(1));
    let ok = set_health(direct, "ok");
    let healthy = wait_for(Duration::from_secs(5), Duration::from_millis(50), || (docker_health(victim) == "healthy").then_some(()));
    let back = load.wait_served_since(std::slice::from_ref(&vname), ok.returned, Duration::from_secs(5));
    thread::sleep(Duration::from_secs(1));
    let report = load.stop();
    ensure!(unhealthy.is_some() && healthy.is_some(), &xlb, Some(&report), "Docker's verdict on {vname} did not follow /health (unhealthy seen: {unhealthy:?}, healthy again: {healthy:?}); health log: {}", victim.inspect("{{json .State.Health}}"));
    ensure!(shown.is_some(), &xlb, Some(&report), "xlb's status never showed {vname} ({direct}) unhealthy; last: {:?}", status_state());

    // Docker's events and xlb's log, on one time line.
    let events: Vec<(Instant, String)> = docker::container_events(&victim.id, since).into_iter().map(|(t, a)| (report.instant_of(t), a)).collect();
    let event = |action: &str, after: Instant| events.iter().find(|(t, a)| *t >= after && a == action).map(|(t, _)| *t);
    let (Some(t_down), Some(t_up)) = (event("health_status: unhealthy", fail.called), event("health_status: healthy", ok.called)) else {
        panic!("{}", context(&format!("no health_status events for {vname} from docker events: {events:?}"), Some(&report), &xlb));
    };
    let lines = xlb.log_times(&report);
    let update = |at| first_log_after(&lines, at, "Docker discovery update");
    let applied = |at| update(at).and_then(|u| first_log_after(&lines, u, "maps synced"));
    let (Some(drained), Some(restored)) = (applied(t_down), applied(t_up)) else {
        panic!("{}", context("xlb logged no Docker discovery update and map sync after a health_status event", Some(&report), &xlb));
    };
    let probe_flips: Vec<&String> = lines.iter().map(|(_, l)| l).filter(|l| l.contains("health changed") && l.contains(&direct.to_string()) && l.contains("healthy=false")).collect();
    let last_new = report.answered_by(&vname, fail.called, t_up).iter().map(|r| r.start).max();
    let first_back = report.first_served(&vname, t_up);
    figure(
        "docker-health",
        &format!(
            "{vname}: POST /health/fail -> Docker health_status: unhealthy {:.0} ms; -> xlb's Docker discovery update {:.1} ms, maps synced {:.1} ms after the event; last new request served by it started {} ms from the event",
            delta_ms(fail.returned, t_down),
            delta_ms(t_down, update(t_down).unwrap_or(drained)),
            delta_ms(t_down, drained),
            last_new.map_or("n/a".into(), |s| format!("{:+.1}", delta_ms(t_down, s)))
        ),
    );
    figure(
        "docker-health",
        &format!(
            "{vname}: POST /health/ok -> Docker health_status: healthy {:.0} ms; -> maps synced {:.1} ms after the event; first request served by it again {}",
            delta_ms(ok.returned, t_up),
            delta_ms(t_up, restored),
            first_back.map_or("never".into(), |r| format!("{:.0} ms after the event", delta_ms(t_up, r.end)))
        ),
    );
    assert_zero_failures(&report, &xlb, "Docker HEALTHCHECK fail then recover");
    ensure!(probe_flips.is_empty(), &xlb, Some(&report), "xlb's own probe marked {direct} down (this test is about Docker's verdict): {probe_flips:?}");
    let late = report.answered_by(&vname, drained, t_up);
    ensure!(
        late.is_empty(),
        &xlb,
        Some(&report),
        "{vname} answered {} requests started after xlb applied Docker's unhealthy verdict ({} UTC) and before it was healthy again: {:?}",
        late.len(),
        report.wall(drained),
        late.iter().take(10).map(|r| report.describe(r)).collect::<Vec<_>>()
    );
    ensure!(drained - t_down < Duration::from_secs(1), &xlb, Some(&report), "xlb applied Docker's unhealthy verdict {:.0} ms after the event (want < 1 s)", delta_ms(t_down, drained));
    ensure!(back.is_ok() && first_back.is_some(), &xlb, Some(&report), "{vname} after Docker's healthy verdict: {:?}", back.err());
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}

// ------------------------------------------------------------------------------------------
// e. docker kill.

/// `docker kill` (SIGKILL: no lame duck). Precisely: a request is "after the kill" when it
/// STARTED (connect) after the `docker kill` CLI returned. None of those may fail or be
/// answered by the killed container. A request sent to the killed container cannot be
/// answered (nothing listens there any more) while the other backends answer every request,
/// so "no failure and no answer from it" after the kill means no request was sent to it.
/// Requests in flight when the CLI was called, or started while it ran, may fail (reset or
/// timed out): they are counted and printed apart, not asserted.
#[test]
fn docker_kill_one_backend() {
    let _g = setup();
    let svc = service_label();
    let cs = labelled_backends(&svc, "k", 3, docker::build_image());
    let names: Vec<String> = cs.iter().map(testd_name).collect();
    let out = Outside::new(SUBNET, Offload::On);
    let mut xlb = start_xlb(&out, vec![docker_spec(&out, &svc)], None, "docker0");
    wait_vip_serves(&out, &xlb, &names);

    let load = Load::start(&out.client, out.vip(PORT), LoadOpts::default());
    thread::sleep(Duration::from_secs(1));
    let victim = &cs[1];
    let vname = &names[1];
    let vip_of_victim: IpAddr = victim.ip().into();
    let kill = victim.kill();
    thread::sleep(Duration::from_secs(2));
    let report = load.stop();

    let fails = report.failures();
    let in_flight: Vec<&Record> = fails.iter().copied().filter(|r| r.start < kill.called).collect();
    let during: Vec<&Record> = fails.iter().copied().filter(|r| r.start >= kill.called && r.start < kill.returned).collect();
    let after: Vec<&Record> = fails.iter().copied().filter(|r| r.start >= kill.returned).collect();
    let answered_after = report.answered_by(vname, kill.returned, Instant::now());
    let last = report.last_started(vname);
    figure(
        "docker-kill",
        &format!(
            "{vname} ({vip_of_victim}): docker kill took {} ms; failed requests: {} in flight when it was called, {} started while it ran, {} started after it returned; last request answered by it started {}",
            ms(kill.took()),
            in_flight.len(),
            during.len(),
            after.len(),
            last.map_or("n/a".into(), |r| format!("{:.1} ms after the call", delta_ms(kill.called, r.start)))
        ),
    );
    let reaction = xlb_reaction(&xlb, &report, kill.called, "Docker discovery update");
    figure(
        "docker-kill",
        &format!("docker kill called at {} UTC, returned {} ms later; {reaction}", report.wall(kill.called), ms(kill.took())),
    );
    for r in in_flight.iter().chain(&during) {
        println!("docker kill: tolerated failure (started before docker kill returned): {}", report.describe(r));
    }
    report.assert_ran_throughout();
    ensure!(
        after.is_empty() && answered_after.is_empty(),
        &xlb,
        Some(&report),
        "requests started after `docker kill` returned (+{}, {} UTC; {reaction}): {} failed, {} answered by the killed {vname}; want 0 and 0:\n{}",
        report.rel(kill.returned),
        report.wall(kill.returned),
        after.len(),
        answered_after.len(),
        after.iter().chain(answered_after.iter()).take(20).map(|r| format!("  {}", report.describe(r))).collect::<Vec<_>>().join("\n")
    );
    // The ones before: only requests to the victim can have failed, and only while in flight.
    for r in in_flight.iter().chain(&during) {
        ensure!(r.end >= kill.called, &xlb, Some(&report), "a request that ended before docker kill was called failed: {}", report.describe(r));
    }
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}

// ------------------------------------------------------------------------------------------
// g. The Docker daemon restarts under xlb.

/// The backend addresses xlb's status lists for `service`, sorted (`None`: no status yet).
fn status_addresses(xlb: &Xlb, service: &str) -> Option<Vec<String>> {
    let s = Status::parse(&xlb.admin_get("/api/v1/services").ok()?).ok()?;
    Some(s.service(service)?.addresses())
}

/// Restarting the Docker daemon while xlb runs: traffic keeps flowing, and the backend set
/// resynchronises afterwards. The machine's dockerd is stopped (SIGTERM, with live restore
/// on, so the containers keep running) and started again the way it ran, by
/// [`xlb_tests::dockerd::Daemon`], which also puts the daemon back as it was whatever
/// happens. Two services: `live-restart-a` (`r1`, `r2`) under the client load, and
/// `live-restart-b` (`g1`, `g2`, no traffic) whose `g1` is killed (SIGKILL from the host)
/// while the daemon is away: no event can tell xlb, only its resynchronisation. After the
/// restart `n1` is started and `r1` stopped: xlb follows the new daemon's events.
#[test]
fn docker_daemon_restart() {
    let _g = setup();
    let (svc_a, svc_b) = (service_label(), service_label());
    let mut cs = labelled_backends(&svc_a, "r", 2, docker::build_image());
    let gs = labelled_backends(&svc_b, "g", 2, docker::build_image());
    let mut names: Vec<String> = cs.iter().map(testd_name).collect();
    let addr_of = |c: &Container| SocketAddr::from((c.ip(), TESTD_PORT)).to_string();
    let out = Outside::new(SUBNET, Offload::On);
    let (a, b) = ("live-restart-a", "live-restart-b");
    let config = TempFile::new(
        ".yaml",
        &format!(
            "services:\n  - name: {a}\n    vip: \"{ip}\"\n    port: {PORT}\n    docker: {{ name: {svc_a}, port: {TESTD_PORT} }}\n  \
             - name: {b}\n    vip: \"{ip}\"\n    port: {}\n    docker: {{ name: {svc_b}, port: {TESTD_PORT} }}\n",
            PORT + 1,
            ip = out.host_ip
        ),
    );
    let mut xlb = start_xlb(&out, vec![], Some(config.path()), "docker0");
    wait_vip_serves(&out, &xlb, &names);
    let mut b_addrs: Vec<String> = gs.iter().map(addr_of).collect();
    b_addrs.sort();
    let listed = wait_for(Duration::from_secs(10), Duration::from_millis(250), || status_addresses(&xlb, b).filter(|l| *l == b_addrs));
    ensure!(listed.is_some(), &xlb, None, "{b}: xlb's status lists {:?}, want {b_addrs:?}", status_addresses(&xlb, b));
    // Declared last: dropped first, so the daemon is back before the containers are removed.
    let mut daemon = xlb_tests::dockerd::Daemon::take();
    let how = daemon.describe();
    let g1_pid: i32 = gs[0].inspect("{{.State.Pid}}").parse().expect("g1's pid");

    let load = Load::start(&out.client, out.vip(PORT), LoadOpts::default());
    thread::sleep(Duration::from_secs(1));
    let stopped = daemon.stop();
    // The daemon is away: g1 dies unseen; the load goes on.
    // SAFETY: kill(2) of the container's init process, started by this test.
    assert_eq!(unsafe { libc::kill(g1_pid, libc::SIGKILL) }, 0, "kill -9 {g1_pid} (g1)");
    thread::sleep(Duration::from_secs(3));
    let b_while_away = status_addresses(&xlb, b);
    let started = daemon.start();
    let resynced = wait_for(Duration::from_secs(15), Duration::from_millis(100), || {
        status_addresses(&xlb, b).filter(|l| *l == [addr_of(&gs[1])]).map(|_| Instant::now())
    });
    // Then the backend set changes through the new daemon: n1 starts, r1 stops.
    let n1 = labelled_backends(&svc_a, "n", 1, docker::build_image()).pop().unwrap();
    let n1_name = testd_name(&n1);
    let n1_served = load.wait_served_since(std::slice::from_ref(&n1_name), started.answered, Duration::from_secs(10));
    let stop_r1 = cs[0].stop(10);
    thread::sleep(Duration::from_secs(2));
    let report = load.stop();
    let r1_name = names.remove(0);
    let r1 = cs.remove(0);
    cs.push(n1);
    let mut a_want: Vec<String> = cs.iter().map(addr_of).collect();
    a_want.sort();
    let a_now = wait_for(Duration::from_secs(5), Duration::from_millis(250), || status_addresses(&xlb, a).filter(|l| *l == a_want));
    drop(daemon);

    let lines = xlb.log_times(&report);
    let unreachable = first_log_after(&lines, stopped.signalled, "Docker daemon unreachable");
    let synced = first_log_after(&lines, started.spawned, "synchronised with the daemon");
    let served_away = |n: &str| report.answered_by(n, stopped.exited, started.answered).len();
    figure(
        "dockerd-restart",
        &format!(
            "dockerd ({}) SIGTERM -> exited {} ms; down {} ms; started -> docker info answers {} ms; requests served while it was down: {} by {}, {} by {}; xlb logged the daemon unreachable {}, resynchronised {} after docker info answered; {b} lost g1 (killed while the daemon was down) {} after that",
            how,
            ms(stopped.exited - stopped.signalled),
            ms(started.answered - stopped.exited),
            ms(started.answered - started.spawned),
            served_away(&r1_name),
            r1_name,
            served_away(&names[0]),
            names[0],
            unreachable.map_or("never".into(), |t| format!("{:.0} ms after SIGTERM", delta_ms(stopped.signalled, t))),
            synced.map_or("never".into(), |t| format!("{:.0} ms", delta_ms(started.answered, t))),
            resynced.map_or("never (within 15 s)".into(), |t| format!("{:.0} ms (status refreshes every 2 s)", delta_ms(started.answered, t)))
        ),
    );
    assert_zero_failures(&report, &xlb, "Docker daemon restart");
    for n in [&r1_name, &names[0]] {
        ensure!(served_away(n) > 0, &xlb, Some(&report), "{n} served nothing while the daemon was down");
    }
    ensure!(unreachable.is_some() && synced.is_some(), &xlb, Some(&report), "xlb's log: daemon unreachable at {unreachable:?}, resynchronised at {synced:?}");
    ensure!(
        b_while_away.as_ref() == Some(&b_addrs),
        &xlb,
        Some(&report),
        "{b} while the daemon was down: {b_while_away:?}, want the last known {b_addrs:?}"
    );
    ensure!(resynced.is_some(), &xlb, Some(&report), "{b} after the restart: {:?}, want only g2 {}", status_addresses(&xlb, b), addr_of(&gs[1]));
    ensure!(n1_served.is_ok(), &xlb, Some(&report), "a container started after the restart: {}", n1_served.unwrap_err());
    let late = report.answered_by(&r1_name, stop_r1.called + LAME_DUCK, Instant::now());
    ensure!(late.is_empty(), &xlb, Some(&report), "{r1_name} answered requests started after its lame-duck period: {:?}", late.iter().map(|r| report.describe(r)).collect::<Vec<_>>());
    ensure!(a_now.is_some(), &xlb, Some(&report), "{a}: xlb's status lists {:?}, want {a_want:?}", status_addresses(&xlb, a));
    drop(r1);
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}

// ------------------------------------------------------------------------------------------
// f. A new connection on a 4-tuple used before must not go to a draining backend.

/// Clients reuse source ports: Linux's connect() moves its next port on by a few (2 to 16)
/// after each connection, so a client making many connections to one VIP wraps its
/// ephemeral range after a few thousand of them, while xlb keeps a flow's connection entry
/// for its TCP idle timeout (15 min). A NEW connection (a SYN) from a reused port must still
/// be balanced like any new flow: in particular never sent to a backend that takes no new
/// flows (draining: unhealthy, or stopping in its lame duck). Deterministic version: find
/// source ports whose connection went to `h2`, turn `h2` unhealthy, then connect again from
/// exactly those ports (the server closes first, so the client's end is not in TIME_WAIT).
#[test]
fn reused_source_port_does_not_reach_a_draining_backend() {
    let _g = setup();
    let svc = service_label();
    let cs = labelled_backends(&svc, "p", 3, docker::build_image());
    let names: Vec<String> = cs.iter().map(testd_name).collect();
    let out = Outside::new(SUBNET, Offload::On);
    let config = TempFile::new(
        ".yaml",
        &format!(
            "services:\n  - name: live-reuse\n    vip: \"{}\"\n    port: {PORT}\n    docker: {{ name: {svc}, port: {TESTD_PORT} }}\n    \
             health: {{ http: /health, interval: 200ms, timeout: 500ms, rise: 2, fall: 2 }}\n",
            out.host_ip
        ),
    );
    let xlb = start_xlb(&out, vec![], Some(config.path()), "docker0");
    wait_vip_serves(&out, &xlb, &names);
    let vip = out.vip(PORT);
    let victim = names[1].clone();

    // Source ports (outside the ephemeral range) whose flow went to the victim.
    let mut ports = Vec::new();
    let mut before = Vec::new();
    for p in 20_000u16..20_300 {
        let got = out.client.enter(|| http::get_name_from(p, vip));
        ensure!(got.is_ok(), &xlb, None, "GET from port {p}: {got:?}");
        let got = got.unwrap();
        if got == victim {
            ports.push(p);
        }
        before.push((p, got));
        if ports.len() == 20 {
            break;
        }
    }
    ensure!(ports.len() == 20, &xlb, None, "too few ports went to {victim}: {before:?}");

    // Drain the victim: unhealthy (it keeps answering, so where a connection lands shows).
    let direct = SocketAddr::from((cs[1].ip(), TESTD_PORT));
    let r = http::request(direct, "POST", "/health/fail");
    assert!(r.as_ref().is_ok_and(|r| r.status == 200), "POST /health/fail to {direct}: {r:?}");
    let drained = wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
        xlb.log().lines().any(|l| l.contains("health changed") && l.contains("healthy=false")).then_some(())
    });
    ensure!(drained.is_some(), &xlb, None, "xlb did not log {victim} unhealthy within 5 s");
    thread::sleep(Duration::from_millis(300));
    // Fresh ports: the victim takes no new flows.
    let mut fresh = Vec::new();
    for p in 21_000u16..21_100 {
        fresh.push(out.client.enter(|| http::get_name_from(p, vip)).unwrap_or_else(|e| e));
    }
    let fresh_victim = fresh.iter().filter(|n| **n == victim).count();

    // The same 4-tuples again.
    let again: Vec<(u16, String)> = ports.iter().map(|&p| (p, out.client.enter(|| http::get_name_from(p, vip)).unwrap_or_else(|e| e))).collect();
    let to_victim: Vec<_> = again.iter().filter(|(_, n)| *n == victim).collect();
    figure(
        "port-reuse",
        &format!(
            "after {victim} turned unhealthy: {} of {} new connections from fresh source ports went to it; {} of {} new connections from source ports whose earlier (closed) connection went to it went to it again",
            fresh_victim,
            fresh.len(),
            to_victim.len(),
            again.len()
        ),
    );
    ensure!(fresh_victim == 0, &xlb, None, "fresh connections reached the unhealthy {victim}: {fresh:?}");
    ensure!(
        to_victim.is_empty(),
        &xlb,
        None,
        "new connections (SYN) on reused 4-tuples were sent to the draining (unhealthy) {victim}: {to_victim:?}\n\
         xlb pins them through the connection entry of the earlier, closed connection"
    );
}
