//! f. A new connection on a 4-tuple used before must not go to a draining backend.

use std::{net::SocketAddr, thread, time::Duration};

use xlb_tests::{docker, http, util::wait_for};

use crate::common::{PORT, TESTD_PORT, figure, follow, labelled_trio, outside, setup};

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
    let (svc, cs, names) = labelled_trio("p", docker::build_image());
    let out = outside();
    let health = "    health: { http: /health, interval: 200ms, timeout: 500ms, rise: 2, fall: 2 }\n";
    let (xlb, _config) = follow(&out, &svc, Some(("live-reuse", health)), &names);
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
