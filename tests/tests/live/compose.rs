//! a. docker-compose: scale 1 → 5 → 1.

use std::{thread, time::Duration};

use xlb_tests::{
    compose::{self, Compose},
    docker,
    load::Record,
    util::{TempFile, delta_ms},
};

use crate::common::{NEW_REPLICA_SERVES_WITHIN, PORT, TESTD_PORT, assert_zero_failures, figure, ms, outside, setup, start_xlb, steady_load, wait_vip_serves};

/// a. A compose service (`api`, not published) scaled 1 → 5 → 1 under load: each new replica
/// serves within [`NEW_REPLICA_SERVES_WITHIN`] of its container start, and no request fails.
#[test]
// long: one scenario over one load and one xlb, told in order; its checks read the load's
// report and the times taken at the steps before them.
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

    let out = outside();
    let config = TempFile::new(
        ".yaml",
        &format!(
            "services:\n  - name: api\n    vip: \"{}\"\n    port: {PORT}\n    docker: {{ name: api, project: {}, port: {TESTD_PORT} }}\n",
            out.host_ip, compose.project
        ),
    );
    let mut xlb = start_xlb(&out, vec![], Some(config.path()), &compose.bridge());
    wait_vip_serves(&out, &xlb, &[hostname(&first[0])]);

    let load = steady_load(&out);

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

    figure("compose", &format!("docker-compose up --scale api=5 took {} ms; --scale api=1 took {} ms", ms(up.took()), ms(down.took())));
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
    ensure!(
        strays.is_empty(),
        &xlb,
        Some(&report),
        "answers from removed replicas after the scale-down: {:?}",
        strays.iter().map(|r| report.describe(r)).collect::<Vec<_>>()
    );
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}
