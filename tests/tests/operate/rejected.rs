//! Rejected reloads, then the file watcher (section 3).

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use xlb_tests::{
    Topology, Xlb,
    config::{self, BackendCfg, ServiceCfg},
    load::Load,
    status::ServiceLookup as _,
    topology::{TESTD_PORT, VIP4},
    util::{TempFile, delta_ms},
};

use crate::common::{
    Broken, SERVICE, SNAPSHOT_WAIT, addrs_of, broken, context, count_log, figure, load_opts, log_lines, padded, poll_status, setup, sighup, start_xlb, stop,
    wait_log, write_keeping_stamp, yaml,
};

/// `path:LINE:COLUMN` of `b` and its message. Returns the line and how long it took.
#[track_caller]
fn expect_rejected(xlb: &Xlb, from: usize, since: Instant, path: &Path, b: &Broken, report_hint: &str) -> (String, Duration) {
    let got = wait_log(xlb, from, Duration::from_secs(4), |l| l.contains("reload rejected") || l.contains("config reloaded"));
    let took = since.elapsed();
    let Some((_, line)) = got else {
        panic!("{}", context(&format!("{}: no `reload rejected` within 4 s ({report_hint})", b.what), None, xlb));
    };
    let want = format!("{}:{}:{}: ", path.display(), b.line, b.col);
    ensure!(
        line.contains("reload rejected, the previous config keeps serving") && line.contains(&want) && line.contains(b.says),
        xlb,
        None,
        "{}: want a `reload rejected, the previous config keeps serving: {want}...{}...` line, got:\n{line}\nthe file:\n{}",
        b.what,
        b.says,
        b.text
    );
    (line, took)
}

/// Steady load through b1, b2, b3. Two broken files (an unknown key; a bad value) each with
/// SIGHUP, the file's stamp unchanged; then a third (a bad address) written normally and left
/// to the file watcher. Each is rejected in the log with FILE:LINE:COLUMN, the old backends
/// keep serving, nothing is reloaded. Then a good file (b1, b2, b4) is written, no SIGHUP: the
/// watcher applies it within 3 s (b4 answers, the status lists it). Zero failed requests.
#[test]
// long: one scenario over one load and one xlb, told in order; its checks read the load's
// report and the times taken at the steps before them.
fn bad_reload_keeps_serving_then_the_watcher_applies_a_good_file() {
    let (_g, topo) = setup(4);
    let names = ["b1", "b2", "b3"];
    let good = yaml(&topo, &names);
    let b2 = format!("\"{}\"", topo.ip("b2", false));
    let b3 = format!("\"{}\"", topo.ip("b3", false));

    // An unknown key in the service.
    let unknown = good.replacen("    protocol: tcp\n", "    protocol: tcp\n    colour: red\n", 1);
    let unknown = broken("unknown key `colour`", unknown, "colour: red", 0, "services[0]: unknown field `colour`");
    // A bad value: weight 0 on b2.
    let bad_weight = {
        let bs = names
            .iter()
            .map(|n| {
                let b = BackendCfg::new(topo.ip(n, false), TESTD_PORT);
                if *n == "b2" { b.weight(0) } else { b }
            })
            .collect();
        config::render(&[ServiceCfg::tcp(SERVICE, VIP4.into(), 80, bs)])
    };
    assert!(bad_weight.find("weight: 0") > bad_weight.find(&b2), "weight 0 must be on b2:\n{bad_weight}");
    let bad_weight = broken("bad value `weight: 0`", bad_weight, "weight: 0", 8, "services[0].backends[1].weight: weight 0 out of range");
    // A bad address (for the watcher).
    let bad_addr = good.replacen(&b3, "\"10.200.13.300\"", 1);
    let bad_addr = broken("bad address 10.200.13.300", bad_addr, "\"10.200.13.300\"", 0, "services[0].backends[2].address: invalid IP address syntax");

    let len = [&good, &unknown.text, &bad_weight.text, &bad_addr.text].iter().map(|t| t.len()).max().unwrap() + 32;
    let cfg = TempFile::new(".yaml", &padded(&good, len));
    let mut xlb = start_xlb(&topo, cfg.path());
    let vip = Topology::vip4(80);
    let warm = topo.spread(vip, 30);
    ensure!(warm.errors.is_empty() && names.iter().all(|n| warm.count(n) > 0), &xlb, None, "before the reloads: {warm}");
    let from0 = log_lines(&xlb).len();

    let load = Load::start(&topo.client, vip, load_opts());
    thread::sleep(Duration::from_secs(1));
    let bad_start = Instant::now();

    // SIGHUP with a broken file: rejected, with the position.
    let mut rejections = Vec::new();
    for b in [&unknown, &bad_weight] {
        write_keeping_stamp(cfg.path(), &padded(&b.text, len));
        let from = log_lines(&xlb).len();
        let t = Instant::now();
        sighup(&mut xlb);
        let (line, took) = expect_rejected(&xlb, from, t, cfg.path(), b, "after SIGHUP");
        rejections.push(format!("{} (SIGHUP, {} ms): {}", b.what, took.as_millis(), line.trim()));
        // The watcher must not read the file again (its stamp did not change).
        thread::sleep(Duration::from_millis(1500));
        let n = count_log(&xlb, from, "reload rejected");
        ensure!(n == 1, &xlb, None, "{}: {n} `reload rejected` lines for one SIGHUP (the file's stamp did not change), want 1", b.what);
    }
    // A broken file written normally: the watcher reads it, and rejects it.
    {
        let from = log_lines(&xlb).len();
        let t = Instant::now();
        cfg.write(&bad_addr.text);
        let (line, took) = expect_rejected(&xlb, from, t, cfg.path(), &bad_addr, "file watcher, no SIGHUP");
        rejections.push(format!("{} (watcher, {} ms): {}", bad_addr.what, took.as_millis(), line.trim()));
    }
    // The old config still serves: b1, b2, b3 in the status, nothing reloaded.
    let st = poll_status(&topo, SNAPSHOT_WAIT, |s| s.service(SERVICE).is_some()).unwrap_or_else(|e| panic!("{e}"));
    let old_addrs = addrs_of(&topo, &names);
    thread::sleep(Duration::from_millis(1000));
    let bad_end = Instant::now();
    let reloads_while_bad = count_log(&xlb, from0, "config reloaded");

    // A good file, no SIGHUP: the watcher applies it.
    let written = Instant::now();
    let from = log_lines(&xlb).len();
    cfg.write(&yaml(&topo, &["b1", "b2", "b4"]));
    let reloaded = wait_log(&xlb, from, Duration::from_secs(3), |l| l.contains("config reloaded") || l.contains("reload rejected"));
    let synced = reloaded.as_ref().and_then(|(i, _)| wait_log(&xlb, i + 1, Duration::from_secs(2), |l| l.contains("maps synced")));
    let applied = Instant::now();
    let served_b4 = load.wait_served_since(&["b4".to_string()], written, Duration::from_secs(3));
    let b4_seen = Instant::now();
    thread::sleep(Duration::from_millis(1500));
    let report = load.stop();
    let end = Instant::now();

    for r in &rejections {
        figure("bad-reload", r);
    }
    let b4_first = report.first_served("b4", written);
    figure(
        "watcher",
        &format!(
            "good file written -> `config reloaded` and maps synced seen {:.1} ms, first answer from b4 {} ms (no SIGHUP); {} requests, per backend {:?}",
            delta_ms(written, applied),
            b4_first.map_or("never".into(), |r| format!("{:.1}", delta_ms(written, r.end))),
            report.records.len(),
            report.by_backend()
        ),
    );
    report.assert_ran_throughout();
    let failures = report.failures().len();
    ensure!(failures == 0, &xlb, Some(&report), "{failures} of {} requests FAILED around rejected and watched reloads (want 0)", report.records.len());
    ensure!(
        st.service(SERVICE).is_some_and(|w| w.addresses() == old_addrs),
        &xlb,
        Some(&report),
        "status after the rejected reloads: want the old backends {old_addrs:?}:\n{}",
        st.raw
    );
    ensure!(reloads_while_bad == 0, &xlb, Some(&report), "{reloads_while_bad} `config reloaded` while only broken files were offered");
    for n in names {
        let c = report.answered_by(n, bad_start, bad_end).len();
        ensure!(c > 0, &xlb, Some(&report), "{n} answered nothing while the broken files were rejected (the old config must keep serving)");
    }
    ensure!(report.answered_by("b4", report.t0, written).is_empty(), &xlb, Some(&report), "b4 answered before the good file was written");
    ensure!(
        reloaded.as_ref().is_some_and(|(_, l)| l.contains("config reloaded")) && synced.is_some(),
        &xlb,
        Some(&report),
        "the file watcher did not apply the good file within 3 s (no SIGHUP was sent): {reloaded:?}, then {synced:?}"
    );
    ensure!(
        served_b4.is_ok() && b4_seen - written <= Duration::from_secs(3),
        &xlb,
        Some(&report),
        "b4 (in the good file) did not serve within 3 s of the write: {served_b4:?}"
    );
    let strays = report.answered_by("b3", applied, end);
    ensure!(
        strays.is_empty(),
        &xlb,
        Some(&report),
        "b3 (not in the good file) answered {} requests started after it was applied: {:#?}",
        strays.len(),
        strays.iter().map(|r| report.describe(r)).collect::<Vec<_>>()
    );
    let want = addrs_of(&topo, &["b1", "b2", "b4"]);
    let st = poll_status(&topo, SNAPSHOT_WAIT, |s| s.service(SERVICE).is_some_and(|w| w.addresses() == want));
    ensure!(st.is_ok(), &xlb, Some(&report), "status after the good file: want {want:?}: {}", st.unwrap_err());
    stop(xlb);
}
