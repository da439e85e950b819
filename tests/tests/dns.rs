//! DNS discovery moves real traffic (issue 3: "a name whose records change moves traffic
//! within two intervals").
//!
//! `records_change_moves_traffic_within_two_intervals`: xlb runs in the topology's LB
//! namespace with one service, VIP4:80/tcp, whose backends are the A records of a name that a
//! test-controlled DNS server (`xlb_tests::dns`, 127.0.0.1 in the LB namespace) answers. Under
//! steady client load the records go b1 → b2 → b1+b3, each change made just after one of
//! xlb's lookups (so xlb sees it one interval later, its worst case). After each switch, every
//! backend added answers a request started within two intervals of the switch, no backend
//! outside the new set answers a request started later than that, and no request fails, not
//! even one in flight at the very moment xlb applied the change: a backend that leaves the
//! records is `Removed`, and only a SYN opens a flow, so a connection open on it ends there
//! (docs/dataflow.md).
//!
//! Figures are printed on lines starting with `DNS-FIGURE` (run with `--nocapture`). Needs
//! root and `XLB_BIN`; run with
//! `XLB_BIN=$PWD/target/debug/xlb cargo test -p xlb-tests --test dns -- --test-threads=1 --nocapture`.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use xlb_tests::{
    Topology, Xlb,
    dns::DnsServer,
    load::{Ended, Load, LoadOpts, Record, Report},
    topology::{LB_CLIENT_IF, TESTD_PORT, VIP4},
    util::{TempFile, wait_for},
    xlb::XlbArgs,
};

/// The name xlb follows.
const NAME: &str = "web.xlb-tests.test.";
/// xlb's lookup interval for it.
const INTERVAL: Duration = Duration::from_secs(1);
/// How soon traffic must follow a change of the records: two intervals.
const WITHIN: Duration = INTERVAL.saturating_mul(2);
/// How long each set of records stays, so that each phase shows the steady state too.
const PHASE: Duration = Duration::from_secs(4);
/// Slack between xlb's log timestamps and the client's clock readings.
const SLACK: Duration = Duration::from_millis(5);

fn ms(from: Instant, to: Instant) -> String {
    match to.checked_duration_since(from) {
        Some(d) => format!("{:.0}", d.as_secs_f64() * 1e3),
        None => format!("-{:.0}", (from - to).as_secs_f64() * 1e3),
    }
}

fn v4(topo: &Topology, name: &str) -> Ipv4Addr {
    match topo.ip(name, false) {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(ip) => unreachable!("{ip}"),
    }
}

/// Service `web` on VIP4:80/tcp: the A records of [`NAME`] from `server`, every [`INTERVAL`].
fn yaml(server: SocketAddr) -> String {
    format!(
        "services:\n  - name: web\n    vip: \"{VIP4}\"\n    port: 80\n    protocol: tcp\n    dns:\n      name: \"{NAME}\"\n      \
         port: {TESTD_PORT}\n      interval: {}ms\n      server: \"{server}\"\n",
        INTERVAL.as_millis()
    )
}

/// One change of the records: when, and to which backends.
struct Switch {
    at: Instant,
    to: &'static [&'static str],
}

/// Checks the phase from `s` to `until` (the next switch, or the end of the load): every
/// backend of `s.to` answered a request started in `[s.at, s.at + WITHIN]`; nothing else
/// answered a request started in `(s.at + WITHIN, until)`; no request failed, those in
/// flight while xlb applied the change (from its log line `DNS backends changed` to the
/// next `maps synced`) included: a removed backend's connections end on it. Prints the figures.
/// `Err` says what went wrong.
fn check(report: &Report, log: &[(Instant, String)], dns: &DnsServer, s: &Switch, before: &[&str], until: Instant) -> Result<(), String> {
    let deadline = s.at + WITHIN;
    let lookup = dns.first_answer_since(s.at).map_or("never".into(), |t| format!("{} ms", ms(s.at, t)));
    let mut figures = vec![format!("first lookup answered with them {lookup}")];
    let mut errors = Vec::new();
    let changed = log.iter().find(|(t, l)| *t >= s.at && l.contains("DNS backends changed")).map(|(t, _)| *t);
    let synced = changed.and_then(|c| log.iter().find(|(t, l)| *t >= c && l.contains("maps synced"))).map(|(t, _)| *t);
    match (changed, synced) {
        (Some(c), Some(y)) => figures.push(format!("xlb logged the change {} ms, maps synced {} ms", ms(s.at, c), ms(s.at, y))),
        _ => errors.push(format!("no `DNS backends changed` then `maps synced` in xlb's log after the switch ({changed:?}, {synced:?})")),
    }
    for new in s.to.iter().filter(|n| !before.contains(n)) {
        match report.first_served(new, s.at) {
            Some(r) => {
                figures.push(format!("first request answered by {new} started {} ms, answered {} ms", ms(s.at, r.start), ms(s.at, r.end)));
                if r.start > deadline {
                    errors.push(format!("added {new} answered its first request started {} ms after the switch (want <= {WITHIN:?})", ms(s.at, r.start)));
                }
            }
            None => errors.push(format!("added {new} answered no request started after the switch")),
        }
    }
    for old in before.iter().filter(|n| !s.to.contains(n)) {
        let last = report.answered_by(old, report.t0, until).into_iter().map(|r| r.start).max();
        figures.push(format!("last request answered by removed {old} started {} ms", last.map_or("never".into(), |t| ms(s.at, t))));
    }
    for (name, n) in report.by_backend() {
        let strays = report.answered_by(&name, deadline, until);
        if !s.to.contains(&name.as_str()) && !strays.is_empty() {
            errors.push(format!(
                "{name}, not in the records, answered {n} requests in all, {} of them started more than {WITHIN:?} after the switch: {:#?}",
                strays.len(),
                strays.iter().take(5).map(|r| report.describe(r)).collect::<Vec<_>>()
            ));
        }
    }
    let in_flight = |r: &Record| matches!((changed, synced), (Some(c), Some(y)) if r.start <= y + SLACK && r.end + SLACK >= c);
    let phase: Vec<&Record> = report.records.iter().filter(|r| r.start >= s.at && r.start < until).collect();
    figures.push(format!("{} requests in flight while xlb applied it", phase.iter().filter(|r| in_flight(r)).count()));
    let failed: Vec<&Record> = report.failures().into_iter().filter(|r| r.start >= s.at && r.start < until).collect();
    if !failed.is_empty() {
        errors.push(format!(
            "{} requests FAILED ({} of them in flight while xlb applied the change): {:#?}",
            failed.len(),
            failed.iter().filter(|r| in_flight(r)).count(),
            failed.iter().take(10).map(|r| report.describe(r)).collect::<Vec<_>>()
        ));
    }
    let starts: Vec<Instant> = report.records.iter().map(|r| r.start).filter(|t| *t >= s.at && *t < until).collect();
    // A long gap means the client was starved (others' load on the machine), not xlb late.
    if let Some((a, b)) = starts.windows(2).map(|w| (w[0], w[1])).max_by_key(|(a, b)| *b - *a) {
        figures.push(format!("longest gap between request starts {} ms (from {} ms)", ms(a, b), ms(s.at, a)));
    }
    let served = starts.len();
    println!("DNS-FIGURE records {before:?} -> {:?} (at {} UTC, {served} requests until the next): {}", s.to, report.wall(s.at), figures.join("; "));
    if errors.is_empty() { Ok(()) } else { Err(errors.join("\n")) }
}

#[test]
fn records_change_moves_traffic_within_two_intervals() {
    let _g = xlb_tests::serial();
    xlb_tests::preflight();
    let topo = Topology::builder().backends(3).build();
    let dns = DnsServer::start(&topo.lb, NAME, &[v4(&topo, "b1")]);
    let cfg = TempFile::new(".yaml", &yaml(dns.addr()));
    // At debug level, so that the log says when the maps were synced.
    let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info,xlb=debug".into());
    let args = XlbArgs { ns: Some(&topo.lb), iface: LB_CLIENT_IF, config: Some(cfg.path()), specs: vec![], other_ifaces: topo.lb_backend_ifaces() };
    let mut xlb = Xlb::start_with_env(args, &[("RUST_LOG", &log)]);
    let vip = Topology::vip4(80);
    // `ready` comes before the first lookup: wait until the VIP serves.
    let first = wait_for(Duration::from_secs(5), Duration::from_millis(100), || topo.get(vip).ok());
    assert_eq!(first.as_deref(), Some("b1"), "the VIP did not serve b1 within 5 s of ready ({} DNS answers)", dns.answers());

    let opts = LoadOpts { max_duration: Duration::from_secs(60), ..LoadOpts::default() };
    let load = Load::start(&topo.client, vip, opts);
    thread::sleep(Duration::from_secs(1));
    let plan: [&'static [&'static str]; 2] = [&["b2"], &["b1", "b3"]];
    let mut switches = Vec::new();
    for to in plan {
        let addrs: Vec<Ipv4Addr> = to.iter().map(|n| v4(&topo, n)).collect();
        let at = dns.set_after_next_answer(&addrs, 2 * INTERVAL).unwrap_or_else(|| panic!("xlb did not ask for {NAME} within {:?}", 2 * INTERVAL));
        let names: Vec<String> = to.iter().map(|n| n.to_string()).collect();
        // Checked below from the report; this only keeps the phase from being cut short.
        let _ = load.wait_served_since(&names, at, 2 * WITHIN);
        thread::sleep(PHASE.saturating_sub(at.elapsed()));
        switches.push(Switch { at, to });
    }
    let report = load.stop();
    let end = Instant::now();
    xlb.assert_running();

    println!(
        "DNS-FIGURE load: {} requests, {} failed, per backend {:?}; {} DNS answers to xlb ({INTERVAL:?} interval)",
        report.records.len(),
        report.failures().len(),
        report.by_backend(),
        dns.answers()
    );
    let mut errors = Vec::new();
    if report.ended != Ended::Stopped {
        errors.push(format!("the load ended by its own bound ({:?})", report.ended));
    }
    let early = report.records.iter().filter(|r| r.start < switches[0].at && r.backend() != Some("b1")).count();
    if early > 0 {
        errors.push(format!("{early} requests before the first switch failed or were not answered by b1"));
    }
    let log = xlb.log_times(&report);
    let mut before: &[&str] = &["b1"];
    for (i, s) in switches.iter().enumerate() {
        let until = switches.get(i + 1).map_or(end, |n| n.at);
        if let Err(e) = check(&report, &log, &dns, s, before, until) {
            errors.push(e);
        }
        before = s.to;
    }
    if !errors.is_empty() {
        panic!("{}\n{report}", errors.join("\n"));
    }
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}

/// The DNS server goes away under a bounded wrk load through the VIP: xlb keeps the
/// backends it last resolved (a failed lookup is not an empty answer), so no request
/// fails, and both backends keep answering. Prints `DNS-FIGURE server down: ...`.
#[test]
fn dns_server_down_keeps_the_last_backends_under_wrk() {
    let _g = xlb_tests::serial();
    xlb_tests::preflight();
    let topo = Topology::builder().backends(2).build();
    let dns = DnsServer::start(&topo.lb, NAME, &[v4(&topo, "b1"), v4(&topo, "b2")]);
    let cfg = TempFile::new(".yaml", &yaml(dns.addr()));
    let args = XlbArgs { ns: Some(&topo.lb), iface: LB_CLIENT_IF, config: Some(cfg.path()), specs: vec![], other_ifaces: topo.lb_backend_ifaces() };
    let mut xlb = Xlb::start(args);
    let vip = Topology::vip4(80);
    let both = wait_for(Duration::from_secs(5), Duration::from_millis(100), || (topo.spread(vip, 20).counts.len() == 2).then_some(()));
    assert!(both.is_some(), "the VIP did not serve both backends within 5 s ({} DNS answers)", dns.answers());
    let secs = 8;
    let wrk = topo.client.exec("wrk", xlb_tests::wrk::args(&format!("http://{vip}/"), 8, secs));
    let load = thread::spawn(move || xlb_tests::wrk::run(wrk));
    thread::sleep(Duration::from_secs(2));
    let answers = dns.answers();
    drop(dns);
    // Several lookups fail while the load runs.
    thread::sleep(Duration::from_secs(secs as u64 - 2) + INTERVAL);
    let w = load.join().unwrap();
    let after = topo.spread(vip, 20);
    println!(
        "DNS-FIGURE server down: after {answers} answers the server stopped for {}s of a {secs}s wrk -c 8: {w:?}; spread after {:?}",
        secs - 2,
        after.counts
    );
    xlb.assert_running();
    assert_eq!(w.failed(), 0, "{w:?}\n{}", xlb.log());
    assert_eq!(after.counts.len(), 2, "the backends changed while DNS was down: {:?}\n{}", after.counts, xlb.log());
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}
