//! The backend's own part: lame duck on SIGTERM, as PID 1.

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use xlb_tests::{
    docker::{self, Container},
    http,
    util::wait_for,
};

use crate::common::{TESTD_PORT, figure, ms};

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
    let probes_text = || probes.iter().map(|(t, r, h)| format!("  +{} ms: {r:?} health {h:?}", ms(*t - called))).collect::<Vec<_>>().join("\n");
    assert!(
        took >= lame && took < Duration::from_secs(5),
        "docker stop took {took:?}: want the lame-duck period ({lame:?}) and well under Docker's 10 s SIGKILL (a PID 1 without a SIGTERM handler waits for it)\nlogs:\n{logs}"
    );
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
