//! d, d2. Unhealthy, then healthy again: by xlb's own HTTP probe, and by Docker's own
//! HEALTHCHECK alone.

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use xlb_tests::{
    docker::{self, Container},
    status::ServiceLookup as _,
    util::{delta_ms, wait_for},
};

use crate::common::{
    TESTD_PORT, admin_status, assert_zero_failures, context, figure, first_log_after, follow, labelled_trio, ms, outside, set_health, setup, steady_load,
    xlb_reaction,
};

#[test]
fn health_fail_then_recover() {
    let _g = setup();
    let (svc, cs, names) = labelled_trio("h", docker::build_image());
    let out = outside();
    let (interval, fall, rise) = (Duration::from_millis(200), 2u32, 2u32);
    let health = format!("    health: {{ http: /health, expect_status: 200, interval: {}ms, timeout: 500ms, rise: {rise}, fall: {fall} }}\n", ms(interval));
    let (mut xlb, _config) = follow(&out, &svc, Some(("live-health", &health)), &names);
    let load = steady_load(&out);
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
// long: one scenario over one load and one xlb, told in order; its checks read the load's
// report and the times taken at the steps before them.
fn docker_healthcheck_fail_then_recover() {
    let _g = setup();
    let (svc, cs, names) = labelled_trio("d", docker::build_health_image());
    let docker_health = |c: &Container| c.inspect("{{.State.Health.Status}}");
    let all_healthy = wait_for(Duration::from_secs(10), Duration::from_millis(100), || cs.iter().all(|c| docker_health(c) == "healthy").then_some(()));
    assert!(all_healthy.is_some(), "Docker's health checks: {:?}", cs.iter().map(|c| (c.name.clone(), docker_health(c))).collect::<Vec<_>>());
    let out = outside();
    let service = "live-docker-health";
    let (mut xlb, _config) = follow(&out, &svc, Some((service, "")), &names);
    let load = steady_load(&out);
    let victim = &cs[1];
    let vname = names[1].clone();
    let direct = SocketAddr::from((victim.ip(), TESTD_PORT));
    let since = std::time::SystemTime::now();
    let fail = set_health(direct, "fail");
    let unhealthy = wait_for(Duration::from_secs(5), Duration::from_millis(50), || (docker_health(victim) == "unhealthy").then_some(()));
    // xlb's status (refreshed every 2 s) while Docker says unhealthy and its TCP probe passes.
    let status_state = || {
        let s = admin_status(&xlb)?;
        Some(s.service(service)?.backend(&direct.to_string())?.state.clone())
    };
    let shown = wait_for(Duration::from_secs(5), Duration::from_millis(250), || status_state().filter(|s| s == "unhealthy"));
    thread::sleep(Duration::from_secs(1));
    let ok = set_health(direct, "ok");
    let healthy = wait_for(Duration::from_secs(5), Duration::from_millis(50), || (docker_health(victim) == "healthy").then_some(()));
    let back = load.wait_served_since(std::slice::from_ref(&vname), ok.returned, Duration::from_secs(5));
    thread::sleep(Duration::from_secs(1));
    let report = load.stop();
    ensure!(
        unhealthy.is_some() && healthy.is_some(),
        &xlb,
        Some(&report),
        "Docker's verdict on {vname} did not follow /health (unhealthy seen: {unhealthy:?}, healthy again: {healthy:?}); health log: {}",
        victim.inspect("{{json .State.Health}}")
    );
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
    let probe_flips: Vec<&String> =
        lines.iter().map(|(_, l)| l).filter(|l| l.contains("health changed") && l.contains(&direct.to_string()) && l.contains("healthy=false")).collect();
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
    ensure!(
        drained - t_down < Duration::from_secs(1),
        &xlb,
        Some(&report),
        "xlb applied Docker's unhealthy verdict {:.0} ms after the event (want < 1 s)",
        delta_ms(t_down, drained)
    );
    ensure!(back.is_ok() && first_back.is_some(), &xlb, Some(&report), "{vname} after Docker's healthy verdict: {:?}", back.err());
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}
