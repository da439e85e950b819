//! g. The Docker daemon restarts under xlb.

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use xlb_tests::{
    docker::{self, Container},
    util::{TempFile, delta_ms, wait_for},
};

use crate::common::{
    LAME_DUCK, PORT, TESTD_PORT, assert_zero_failures, figure, first_log_after, followed_trio, labelled_backends, ms, outside, service_label, setup, start_xlb,
    status_addresses, steady_load, testd_name, wait_vip_serves, wrk_new_connections,
};

/// Restarting the Docker daemon while xlb runs: traffic keeps flowing, and the backend set
/// resynchronises afterwards. The machine's dockerd is stopped (SIGTERM, with live restore
/// on, so the containers keep running) and started again the way it ran, by
/// [`xlb_tests::dockerd::Daemon`], which also puts the daemon back as it was whatever
/// happens. Two services: `live-restart-a` (`r1`, `r2`) under the client load, and
/// `live-restart-b` (`g1`, `g2`, no traffic) whose `g1` is killed (SIGKILL from the host)
/// while the daemon is away: no event can tell xlb, only its resynchronisation. After the
/// restart `n1` is started and `r1` stopped: xlb follows the new daemon's events.
#[test]
// long: one scenario over one load and one xlb, told in order; its checks read the load's
// report and the times taken at the steps before them.
fn docker_daemon_restart() {
    let _g = setup();
    let (svc_a, svc_b) = (service_label(), service_label());
    let mut cs = labelled_backends(&svc_a, "r", 2, docker::build_image());
    let gs = labelled_backends(&svc_b, "g", 2, docker::build_image());
    let mut names: Vec<String> = cs.iter().map(testd_name).collect();
    let addr_of = |c: &Container| SocketAddr::from((c.ip(), TESTD_PORT)).to_string();
    let out = outside();
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

    let load = steady_load(&out);
    let stopped = daemon.stop();
    // The daemon is away: g1 dies unseen; the load goes on.
    // SAFETY: kill(2) of the container's init process, started by this test.
    assert_eq!(unsafe { libc::kill(g1_pid, libc::SIGKILL) }, 0, "kill -9 {g1_pid} (g1)");
    thread::sleep(Duration::from_secs(3));
    let b_while_away = status_addresses(&xlb, b);
    let started = daemon.start();
    let resynced =
        wait_for(Duration::from_secs(15), Duration::from_millis(100), || status_addresses(&xlb, b).filter(|l| *l == [addr_of(&gs[1])]).map(|_| Instant::now()));
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
    ensure!(b_while_away.as_ref() == Some(&b_addrs), &xlb, Some(&report), "{b} while the daemon was down: {b_while_away:?}, want the last known {b_addrs:?}");
    ensure!(resynced.is_some(), &xlb, Some(&report), "{b} after the restart: {:?}, want only g2 {}", status_addresses(&xlb, b), addr_of(&gs[1]));
    ensure!(n1_served.is_ok(), &xlb, Some(&report), "a container started after the restart: {}", n1_served.unwrap_err());
    let late = report.answered_by(&r1_name, stop_r1.called + LAME_DUCK, Instant::now());
    ensure!(
        late.is_empty(),
        &xlb,
        Some(&report),
        "{r1_name} answered requests started after its lame-duck period: {:?}",
        late.iter().map(|r| report.describe(r)).collect::<Vec<_>>()
    );
    ensure!(a_now.is_some(), &xlb, Some(&report), "{a}: xlb's status lists {:?}, want {a_want:?}", status_addresses(&xlb, a));
    drop(r1);
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}

/// The Docker daemon stopped and started again (live restore on) under a bounded wrk load
/// through the VIP, every request on a new connection (`Connection: close`), so that each
/// one is a new flow placed by the kernel data plane while xlb's discovery has lost the
/// daemon and reconnects. Promised: no request fails (the containers and xlb's last known
/// set stay; nothing changes them meanwhile). Without live restore dockerd stops every
/// container when it stops, and nothing is promised (docs/scale-out.md, "Docker Swarm").
#[test]
fn docker_daemon_restart_under_wrk() {
    let _g = setup();
    let (_cs, names, out, mut xlb) = followed_trio("w", docker::build_image());
    let mut daemon = xlb_tests::dockerd::Daemon::take();
    let secs = 20;
    let began = Instant::now();
    let load = wrk_new_connections(&out, secs);
    thread::sleep(Duration::from_secs(2));
    let stopped = daemon.stop();
    thread::sleep(Duration::from_secs(3));
    let started = daemon.start();
    let w = load.join().unwrap();
    drop(daemon);
    figure(
        "dockerd-restart-wrk",
        &format!(
            "wrk -c 8 (new connection per request) for {secs} s; dockerd down {} ms (SIGTERM -> docker info answers again {} ms): {w:?}",
            ms(started.answered - stopped.exited),
            ms(started.answered - stopped.signalled)
        ),
    );
    let covered = started.answered - began < Duration::from_secs(secs.into());
    ensure!(covered, &xlb, None, "dockerd was not back before wrk ended ({} ms after wrk started)", ms(started.answered - began));
    ensure!(w.failed() == 0, &xlb, None, "requests failed while dockerd restarted: {w:?}");
    wait_vip_serves(&out, &xlb, &names);
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}
