//! b, c, e. A container's lifecycle under load: `docker stop`, `docker restart` of every
//! backend, one at a time, and `docker kill`; and a container paused then resumed.

use std::{
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

use xlb_tests::{
    docker::{self, Timed},
    load::Record,
    util::delta_ms,
};

use crate::common::{LAME_DUCK, assert_zero_failures, figure, followed_trio, ms, setup, steady_load, wait_vip_serves, wrk_new_connections, xlb_reaction};

#[test]
fn docker_stop_one_backend() {
    let _g = setup();
    let (cs, names, out, mut xlb) = followed_trio("s", docker::build_image());
    let load = steady_load(&out);
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
    ensure!(
        late.is_empty(),
        &xlb,
        Some(&report),
        "{vname} answered requests started after its lame-duck period: {:?}",
        late.iter().map(|r| report.describe(r)).collect::<Vec<_>>()
    );
    for (n, _) in names.iter().zip(&cs).filter(|(n, _)| *n != vname) {
        ensure!(report.first_served(n, stop.returned).is_some(), &xlb, Some(&report), "{n} served nothing after the stop");
    }
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn docker_restart_every_backend() {
    let _g = setup();
    let (cs, names, out, mut xlb) = followed_trio("r", docker::build_image());
    let load = steady_load(&out);
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
    let (cs, names, out, mut xlb) = followed_trio("k", docker::build_image());
    let load = steady_load(&out);
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
    figure("docker-kill", &format!("docker kill called at {} UTC, returned {} ms later; {reaction}", report.wall(kill.called), ms(kill.took())));
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

/// A backend container paused (SIGSTOP to its init from the host) for 2 s, then resumed
/// (SIGCONT), under a bounded wrk load through the VIP, every request on a new connection
/// (`Connection: close`). The kernel data plane cannot retry: a connection it sends to the
/// paused container waits in that container's accept queue until the resume, so the
/// figure is how long the slowest request took and how many failed (wrk's 5 s timeout,
/// over the pause); afterwards every backend answers again.
#[test]
fn docker_backend_paused_then_resumed_under_wrk() {
    let _g = setup();
    let (cs, names, out, mut xlb) = followed_trio("p", docker::build_image());
    let pid: i32 = cs[1].inspect("{{.State.Pid}}").parse().expect("the container's pid");
    let secs = 8;
    let load = wrk_new_connections(&out, secs);
    thread::sleep(Duration::from_secs(2));
    // SAFETY: kill(2) of the init process of a container this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "kill -STOP {pid}");
    thread::sleep(Duration::from_secs(2));
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0, "kill -CONT {pid}");
    let w = load.join().unwrap();
    figure("docker-pause", &format!("{} paused 2 s under wrk -c 8 (new connection per request) for {secs} s: {w:?}", names[1]));
    ensure!(w.latency_max >= Duration::from_millis(1500), &xlb, None, "no request waited for the paused container: {w:?}");
    ensure!(w.failed() == 0, &xlb, None, "requests failed though the pause was shorter than wrk's timeout: {w:?}");
    wait_vip_serves(&out, &xlb, &names);
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}
