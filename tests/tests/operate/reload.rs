//! SIGHUP reloads under load (section 2).

use std::{
    thread,
    time::{Duration, Instant},
};

use xlb_tests::{
    Topology,
    config::{self, BackendCfg, ServiceCfg},
    load::Load,
    status::ServiceLookup as _,
    topology::{TESTD_PORT, VIP4},
    util::{TempFile, delta_ms, wait_for},
};

use crate::common::{
    SERVICE, SNAPSHOT_WAIT, addr_of, addrs_of, context, count_log, figure, load_opts, log_lines, padded, poll_status, setup, sighup, start_xlb, stop, wait_log,
    web, write_keeping_stamp, yaml,
};

/// Steady load through the VIP of b1, b2, b3; the file is rewritten to b1, b2, b4 (same size
/// and mtime: only the SIGHUP can make xlb read it) and xlb gets SIGHUP. Zero failed requests;
/// b4 serves; b3 answers no request started after the reload was applied (xlb logged
/// `maps synced` after `config reloaded`); the status lists b1, b2, b4.
#[test]
// long: one scenario over one load and one xlb, told in order; its checks read the load's
// report and the times taken at the steps before them.
fn sighup_reload_under_load_adds_and_removes_a_backend() {
    let (_g, topo) = setup(4);
    let old = yaml(&topo, &["b1", "b2", "b3"]);
    let new = yaml(&topo, &["b1", "b2", "b4"]);
    let len = old.len().max(new.len()) + 32;
    let cfg = TempFile::new(".yaml", &padded(&old, len));
    let mut xlb = start_xlb(&topo, cfg.path());
    let vip = Topology::vip4(80);
    let warm = topo.spread(vip, 30);
    ensure!(warm.errors.is_empty() && warm.count("b4") == 0, &xlb, None, "before the reload: {warm}");

    let load = Load::start(&topo.client, vip, load_opts());
    thread::sleep(Duration::from_millis(1500));

    write_keeping_stamp(cfg.path(), &padded(&new, len));
    let from = log_lines(&xlb).len();
    let hup = Instant::now();
    sighup(&mut xlb);
    let reloaded = wait_log(&xlb, from, Duration::from_secs(5), |l| l.contains("config reloaded") || l.contains("reload rejected"));
    let synced = reloaded.as_ref().and_then(|(i, _)| wait_log(&xlb, i + 1, Duration::from_secs(5), |l| l.contains("maps synced")));
    let applied = Instant::now();
    let served_b4 = load.wait_served_since(&["b4".to_string()], hup, Duration::from_secs(5));
    thread::sleep(Duration::from_millis(2500));
    let report = load.stop();
    let end = Instant::now();

    ensure!(
        reloaded.as_ref().is_some_and(|(_, l)| l.contains("config reloaded")) && synced.is_some(),
        &xlb,
        Some(&report),
        "no `config reloaded` then `maps synced` within 5 s of SIGHUP (got {reloaded:?}, {synced:?})"
    );
    let b4_first = report.first_served("b4", hup);
    let b3_last = report.last_started("b3");
    figure(
        "sighup",
        &format!(
            "SIGHUP -> `config reloaded` logged and maps synced seen {:.1} ms later; -> first answer from b4 {} ms; last request to b3 started {} ms after SIGHUP; {} requests, per backend {:?}, {} reused a source port",
            delta_ms(hup, applied),
            b4_first.map_or("never".into(), |r| format!("{:.1}", delta_ms(hup, r.end))),
            b3_last.map_or("n/a".into(), |r| format!("{:.1}", delta_ms(hup, r.start))),
            report.records.len(),
            report.by_backend(),
            report.reused_ports()
        ),
    );
    report.assert_ran_throughout();
    let failures = report.failures().len();
    ensure!(failures == 0, &xlb, Some(&report), "{failures} of {} requests FAILED across the SIGHUP reload (want 0)", report.records.len());
    ensure!(served_b4.is_ok(), &xlb, Some(&report), "added backend b4: {}", served_b4.unwrap_err());
    let early_b4 = report.answered_by("b4", report.t0, hup);
    ensure!(early_b4.is_empty(), &xlb, Some(&report), "b4 answered {} requests before it was configured", early_b4.len());
    let b3_before = report.answered_by("b3", report.t0, hup).len();
    ensure!(b3_before > 0, &xlb, Some(&report), "b3 served nothing before the reload: the scenario proves nothing");
    let strays = report.answered_by("b3", applied, end);
    ensure!(
        strays.is_empty(),
        &xlb,
        Some(&report),
        "removed backend b3 answered {} requests started after the reload was applied: {:#?}",
        strays.len(),
        strays.iter().map(|r| report.describe(r)).collect::<Vec<_>>()
    );
    // Only the SIGHUP read the file: one reload, nothing rejected.
    let reloads = count_log(&xlb, from, "config reloaded");
    ensure!(
        reloads == 1 && count_log(&xlb, from, "reload rejected") == 0,
        &xlb,
        Some(&report),
        "{reloads} `config reloaded` after one SIGHUP (the file's stamp did not change), want 1"
    );

    // The status follows: b1, b2, b4; b4's flows are the connections it answered; the
    // service's counter went on across the reload. A connection from a source port used
    // before whose entry still pins an active backend is not a new flow (the 4-tuple's
    // entry lives until the idle timeout), so each count may fall short of the connections
    // by at most the number of reused ports (the warm-up's ports count: their entries live on).
    let want = addrs_of(&topo, &["b1", "b2", "b4"]);
    let reused = report.reused_ports_after(&warm.ports) as u64;
    let total = warm.total_ok() as u64 + report.records.len() as u64;
    let st = poll_status(&topo, SNAPSHOT_WAIT, |s| s.service(SERVICE).is_some_and(|w| w.addresses() == want && w.new_flows + reused >= total));
    let st = st.unwrap_or_else(|e| {
        panic!(
            "{}",
            context(
                &format!("status after the reload (want backends {want:?}, service new_flows >= {total} - {reused} reused ports): {e}"),
                Some(&report),
                &xlb
            )
        )
    });
    let w = web(&st);
    let b4 = w.backend(&addr_of(&topo, "b4")).unwrap();
    let answered_b4 = report.by_backend().get("b4").copied().unwrap_or(0) as u64;
    figure(
        "sighup",
        &format!(
            "status after: service new_flows {} ({total} client connections, {reused} from a reused source port); b4 new_flows {} vs {answered_b4} answered",
            w.new_flows, b4.new_flows
        ),
    );
    ensure!(w.new_flows <= total, &xlb, Some(&report), "service new_flows {} after only {total} connections:\n{}", w.new_flows, st.raw);
    // A connection to b3 that was closing as the reload removed b3 sends its last packets
    // (FIN, ACK) to b3 still: only a SYN opens a flow, so b4 counts no flow it did not answer.
    ensure!(
        b4.new_flows <= answered_b4 && b4.new_flows + reused >= answered_b4,
        &xlb,
        Some(&report),
        "b4: status new_flows {} vs {answered_b4} answers ({reused} reused ports):\n{}",
        b4.new_flows,
        st.raw
    );
    stop(xlb);
}

/// A reload is applied as a diff: service `web` (b1, b2) is left as it was while service
/// `other` changes (b3 -> b3, b4) and a third service appears. A long `/stream` connection
/// through `web` runs across the SIGHUP without a gap, and `web` counts no new flow for it
/// afterwards: had the reload rebuilt `web` or dropped its connection entries, the stream's
/// next packet would have started a new flow (or been re-balanced and reset).
#[test]
fn reload_keeps_the_connections_of_unchanged_services() {
    const SECS: u64 = 8;
    let (_g, topo) = setup(4);
    let svc = |name: &str, port: u16, names: &[&str]| {
        ServiceCfg::tcp(name, VIP4.into(), port, names.iter().map(|n| BackendCfg::new(topo.ip(n, false), TESTD_PORT)).collect())
    };
    let old = config::render(&[svc(SERVICE, 80, &["b1", "b2"]), svc("other", 81, &["b3"])]);
    let new = config::render(&[svc(SERVICE, 80, &["b1", "b2"]), svc("other", 81, &["b3", "b4"]), svc("third", 82, &["b4"])]);
    let cfg = TempFile::new(".yaml", &old);
    let mut xlb = start_xlb(&topo, cfg.path());
    let warm = topo.spread(Topology::vip4(80), 10);
    ensure!(warm.errors.is_empty(), &xlb, None, "before the reload: {warm}");
    let stream = topo.stream(Topology::vip4(80), SECS);
    let on = stream.backend(Duration::from_secs(3)).unwrap_or_else(|e| panic!("{}", context(&format!("stream: {e}"), None, &xlb)));
    // Two snapshots apart: the count of web's flows with the stream in it.
    thread::sleep(Duration::from_millis(2500));
    let before = web(&poll_status(&topo, SNAPSHOT_WAIT, |s| s.service(SERVICE).is_some()).unwrap_or_else(|e| panic!("{e}"))).new_flows;

    cfg.write(&new);
    let from = log_lines(&xlb).len();
    sighup(&mut xlb);
    let reloaded = wait_log(&xlb, from, Duration::from_secs(5), |l| l.contains("config reloaded") || l.contains("reload rejected"));
    let synced = reloaded.as_ref().and_then(|(i, _)| wait_log(&xlb, i + 1, Duration::from_secs(5), |l| l.contains("maps synced")));
    ensure!(
        reloaded.as_ref().is_some_and(|(_, l)| l.contains("config reloaded")) && synced.is_some(),
        &xlb,
        None,
        "no `config reloaded` then `maps synced` within 5 s ({reloaded:?}, {synced:?})"
    );
    // The changed services did change.
    let other = wait_for(Duration::from_secs(5), Duration::from_millis(200), || {
        let s = topo.spread(Topology::vip4(81), 20);
        (s.count("b4") > 0).then_some(s)
    });
    ensure!(other.is_some(), &xlb, None, "service other never reached the added b4");
    let third = topo.spread(Topology::vip4(82), 5);
    ensure!(third.count("b4") == 5, &xlb, None, "the added service third: {third}");

    let r = stream.join();
    thread::sleep(Duration::from_millis(2500));
    let after = poll_status(&topo, SNAPSHOT_WAIT, |s| s.service("third").is_some()).unwrap_or_else(|e| panic!("{e}"));
    let w = web(&after);
    figure(
        "reload-diff",
        &format!("stream on {on}: {} lines, longest gap {:?}; web new_flows {before} before the reload, {} after", r.lines, r.max_gap, w.new_flows),
    );
    ensure!(r.backend.as_deref() == Some(on.as_str()), &xlb, None, "the stream moved: {r:?}");
    r.assert_ok(SECS, Duration::from_secs(1));
    ensure!(
        w.new_flows == before,
        &xlb,
        None,
        "web (unchanged) counted {} new flows across the reload, want 0 (its connection entries were lost):\n{}",
        w.new_flows - before,
        after.raw
    );
    stop(xlb);
}
