//! End-to-end tests of xlb in a namespace topology (see `xlb_tests::topology`): client -> LB
//! (xlb on `lc`) -> backends b1..bN running xlb-testd. Each test runs twice: with checksum
//! offload on and off on the client's and the backends' veths.
//!
//! Needs root and `XLB_BIN`; run with
//! `XLB_BIN=$PWD/target/debug/xlb cargo test -p xlb-tests --test topology -- --test-threads=1`.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use xlb_tests::{
    Offload, Topology, Xlb,
    config::{self, BackendCfg, ServiceCfg},
    http::Spread,
    topology::{CLIENT_IF, LB_CLIENT_IF, TESTD_PORT, VIP4, VIP6},
    util::{self, Proc, TempFile},
};

mod pmtu;

xlb_tests::both_offloads!(
    spread_over_three_backends,
    weights_are_proportional,
    long_lived_connection_survives_reload,
    draining_backend_gets_no_new_connections,
    udp_service,
    ipv6_vip,
    second_xlb_on_the_interface_fails_fast,
    vip_on_the_clients_link_answers_arp,
);

/// The last lines of xlb's log, for failure messages.
fn tail(xlb: &Xlb) -> String {
    let log = xlb.log();
    let lines: Vec<&str> = log.lines().collect();
    let start = lines.len().saturating_sub(40);
    format!("--- xlb log (last {} lines) ---\n{}", lines.len() - start, lines[start..].join("\n"))
}

fn setup(offload: Offload, backends: usize) -> Topology {
    xlb_tests::preflight();
    Topology::builder().backends(backends).offload(offload).build()
}

/// A SPEC for `vip:port` over the given backends (with weights when given).
fn spec_for(topo: &Topology, vip: IpAddr, port: u16, names: &[&str], weights: Option<&[u32]>, proto: Option<&str>) -> String {
    let targets: Vec<(IpAddr, Option<u32>)> = names.iter().enumerate().map(|(i, n)| (topo.ip(n, vip.is_ipv6()), weights.map(|w| w[i]))).collect();
    config::spec(Some(vip), port, &targets, Some(TESTD_PORT), proto)
}

fn yaml_for(topo: &Topology, backends: &[(&str, bool)]) -> String {
    let bs = backends.iter().map(|(n, draining)| BackendCfg::new(topo.ip(n, false), TESTD_PORT).draining(*draining)).collect();
    config::render(&[ServiceCfg::tcp("web", VIP4.into(), 80, bs)])
}

/// Every request answered, by known backends only, each with a share in `[lo, hi]`.
#[track_caller]
fn assert_shares(s: &Spread, n: usize, names: &[&str], lo: f64, hi: f64, xlb: &Xlb) {
    eprintln!("spread: {s}");
    assert!(s.errors.is_empty() && s.total_ok() == n, "{n} requests: {s}\n{}", tail(xlb));
    for k in s.counts.keys() {
        assert!(names.contains(&k.as_str()), "answer from unexpected backend {k:?}: {s}\n{}", tail(xlb));
    }
    for name in names {
        let f = s.fraction(name);
        assert!((lo..=hi).contains(&f), "{name} got {:.1}% of {n}, want {:.0}%..{:.0}%: {s}\n{}", f * 100.0, lo * 100.0, hi * 100.0, tail(xlb));
    }
}

#[track_caller]
fn stop(mut xlb: Xlb) {
    if let Err(e) = xlb.stop() {
        panic!("{e}");
    }
}

/// 300 new connections over 3 equal backends: each gets 20%..50% (expected 33.3%; with a
/// uniform hash a share's standard deviation is 2.7 points, so the bounds are > 4.9 sigma).
fn spread_over_three_backends(offload: Offload) {
    let _g = xlb_tests::serial();
    let topo = setup(offload, 3);
    let names = ["b1", "b2", "b3"];
    let xlb = topo.start_xlb(None, &[spec_for(&topo, VIP4.into(), 80, &names, None, None)]);
    xlb.assert_xdp_attached();
    let s = topo.spread(Topology::vip4(80), 300);
    assert_shares(&s, 300, &names, 0.20, 0.50, &xlb);
    // A real client too.
    let body = xlb_tests::http::curl(Some(&topo.client), &format!("http://{VIP4}/"));
    assert!(body.as_ref().is_ok_and(|b| names.contains(&b.as_str())), "curl: {body:?}\n{}", tail(&xlb));
    stop(xlb);
}

/// A VIP on the client's own link that no interface holds (10.200.1.50): the client has
/// no route for it and asks ARP; xlb's XDP program answers with `lc`'s MAC (the LB's kernel
/// would not: the address is not its own), and 200 connections over 2 backends are all
/// answered. (NDP for IPv6 VIPs is answered the same way, see the `neighbors` fixtures;
/// on-link IPv6 is not in this test: in 2 of 11 runs under load the first flow's handshake
/// did not complete although the client had resolved the VIP to `lc`'s MAC.)
fn vip_on_the_clients_link_answers_arp(offload: Offload) {
    let _g = xlb_tests::serial();
    let topo = setup(offload, 2);
    let names = ["b1", "b2"];
    let vip: IpAddr = "10.200.1.50".parse().unwrap();
    let xlb = topo.start_xlb(None, &[spec_for(&topo, vip, 80, &names, None, None)]);
    let lb_mac = topo.lb.run("cat", &[&format!("/sys/class/net/{LB_CLIENT_IF}/address")]);
    let s = topo.spread(SocketAddr::new(vip, 80), 200);
    assert_shares(&s, 200, &names, 0.2, 0.8, &xlb);
    let neigh = topo.client.ip(&format!("neigh show {vip} dev {CLIENT_IF}"));
    assert!(neigh.contains(lb_mac.trim()), "the client's neighbor entry for {vip} should name lc's MAC {}: {neigh:?}\n{}", lb_mac.trim(), tail(&xlb));
    stop(xlb);
}

/// Weights 1:2:3 (`@W`) over 600 new connections: shares 1/6, 2/6, 3/6, each within ±7.5
/// points. Under a uniform hash the standard deviation of a share is sqrt(p(1-p)/600), i.e.
/// 1.5, 1.9 and 2.0 points, so ±7.5 points is > 3.7 sigma for each (a false failure well
/// under 1 in 1000 runs), while a wrong weighting (e.g. equal shares: 33% vs 16.7%) fails.
fn weights_are_proportional(offload: Offload) {
    let _g = xlb_tests::serial();
    let topo = setup(offload, 3);
    let names = ["b1", "b2", "b3"];
    let weights = [1, 2, 3];
    let xlb = topo.start_xlb(None, &[spec_for(&topo, VIP4.into(), 80, &names, Some(&weights), None)]);
    let n = 600;
    let s = topo.spread(Topology::vip4(80), n);
    eprintln!("weights 1:2:3: {s}");
    assert!(s.errors.is_empty() && s.total_ok() == n, "{s}\n{}", tail(&xlb));
    for (name, w) in names.iter().zip(weights) {
        let want = w as f64 / 6.0;
        let got = s.fraction(name);
        assert!((got - want).abs() <= 0.075, "{name} (weight {w}): {:.1}%, want {:.1}% ± 7.5: {s}\n{}", got * 100.0, want * 100.0, tail(&xlb));
    }
    assert!(s.count("b1") < s.count("b2") && s.count("b2") < s.count("b3"), "not ordered by weight: {s}");
    stop(xlb);
}

/// Sends batches of `batch` new connections until `done(batch_spread)` holds (at most
/// `timeout`); panics with the last batch otherwise.
#[track_caller]
fn wait_applied(topo: &Topology, addr: SocketAddr, xlb: &Xlb, what: &str, done: impl Fn(&Spread) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = None;
    while Instant::now() < deadline {
        let s = topo.spread(addr, 30);
        if done(&s) {
            return;
        }
        last = Some(s);
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("reload not applied within 10 s ({what}); last batch: {}\n{}", last.map(|s| s.to_string()).unwrap_or_default(), tail(xlb));
}

/// A long-lived connection (`/stream`, a line every 100 ms) keeps flowing, from the same
/// backend, while a SIGHUP reload adds b4 and removes one of the other backends; new
/// connections follow the new set.
fn long_lived_connection_survives_reload(offload: Offload) {
    let _g = xlb_tests::serial();
    let topo = setup(offload, 4);
    let cfg = TempFile::new(".yaml", &yaml_for(&topo, &[("b1", false), ("b2", false), ("b3", false)]));
    let mut xlb = topo.start_xlb(Some(cfg.path()), &[]);
    let vip = Topology::vip4(80);

    let s = topo.spread(vip, 60);
    assert_shares(&s, 60, &["b1", "b2", "b3"], 0.0, 1.0, &xlb);

    let secs = 12;
    let stream = topo.stream(vip, secs);
    let started = Instant::now();
    let on = stream.backend(Duration::from_secs(3)).unwrap_or_else(|e| panic!("stream: {e}\n{}", tail(&xlb)));
    let removed = ["b1", "b2", "b3"].into_iter().find(|b| *b != on).unwrap();
    let new_set: Vec<&str> = ["b1", "b2", "b3", "b4"].into_iter().filter(|b| *b != removed).collect();
    std::thread::sleep(Duration::from_secs(1));

    cfg.write(&yaml_for(&topo, &new_set.iter().map(|b| (*b, false)).collect::<Vec<_>>()));
    let reload_log = xlb.reload();
    wait_applied(&topo, vip, &xlb, &format!("b4 added, {removed} removed"), |s| s.count("b4") > 0 && s.count(removed) == 0);
    assert!(started.elapsed() < Duration::from_secs(secs - 2), "reload took too long to test the stream across it");

    let s = topo.spread(vip, 150);
    assert_shares(&s, 150, &new_set, 0.15, 0.55, &xlb);

    let r = stream.join();
    assert_eq!(r.backend.as_deref(), Some(on.as_str()));
    if r.error.is_some() || !r.done || r.lines != (secs * 10) as usize || r.max_gap > Duration::from_secs(1) {
        panic!(
            "long-lived connection on {on} broken across the reload (added b4, removed {removed}): {r:?}\n\
             reload log: {reload_log:#?}\n{}",
            tail(&xlb)
        );
    }
    xlb.assert_running();
    stop(xlb);
}

/// A backend set to `state: draining` by a reload gets no new connections, while a connection
/// it already had keeps flowing to the end.
fn draining_backend_gets_no_new_connections(offload: Offload) {
    let _g = xlb_tests::serial();
    let topo = setup(offload, 3);
    let all = ["b1", "b2", "b3"];
    let cfg = TempFile::new(".yaml", &yaml_for(&topo, &all.map(|b| (b, false))));
    let mut xlb = topo.start_xlb(Some(cfg.path()), &[]);
    let vip = Topology::vip4(80);

    let secs = 10;
    let stream = topo.stream(vip, secs);
    let on = stream.backend(Duration::from_secs(3)).unwrap_or_else(|e| panic!("stream: {e}\n{}", tail(&xlb)));
    std::thread::sleep(Duration::from_millis(500));

    cfg.write(&yaml_for(&topo, &all.map(|b| (b, b == on))));
    xlb.reload();
    wait_applied(&topo, vip, &xlb, &format!("{on} draining"), |s| s.count(&on) == 0 && s.errors.is_empty());

    let others: Vec<&str> = all.into_iter().filter(|b| *b != on).collect();
    let s = topo.spread(vip, 150);
    assert_shares(&s, 150, &others, 0.25, 0.75, &xlb);

    let r = stream.join();
    if r.error.is_some() || !r.done || r.lines != (secs * 10) as usize || r.foreign_lines != 0 || r.max_gap > Duration::from_secs(1) {
        panic!("connection on draining {on} did not continue: {r:?}\n{}", tail(&xlb));
    }
    stop(xlb);
}

/// A UDP service: 300 queries from new sockets spread over 3 backends (20%..50% each), each
/// answered from the VIP.
fn udp_service(offload: Offload) {
    let _g = xlb_tests::serial();
    let topo = setup(offload, 3);
    let names = ["b1", "b2", "b3"];
    let xlb = topo.start_xlb(None, &[spec_for(&topo, VIP4.into(), 5353, &names, None, Some("udp"))]);
    let s = topo.udp_spread(Topology::vip4(5353), 300);
    assert_shares(&s, 300, &names, 0.20, 0.50, &xlb);
    // The TCP port of the same number is not a service: xlb must not answer it.
    assert!(topo.get(Topology::vip4(5353)).is_err());
    stop(xlb);
}

/// An IPv6 VIP with IPv6 backends: 300 new connections, 20%..50% each, and curl.
fn ipv6_vip(offload: Offload) {
    let _g = xlb_tests::serial();
    let topo = setup(offload, 3);
    let names = ["b1", "b2", "b3"];
    let xlb = topo.start_xlb(None, &[spec_for(&topo, VIP6.into(), 80, &names, None, None)]);
    let s = topo.spread(Topology::vip6(80), 300);
    assert_shares(&s, 300, &names, 0.20, 0.50, &xlb);
    let body = xlb_tests::http::curl(Some(&topo.client), &format!("http://[{VIP6}]/"));
    assert!(body.as_ref().is_ok_and(|b| names.contains(&b.as_str())), "curl: {body:?}\n{}", tail(&xlb));
    stop(xlb);
}

/// How a second `xlb run` is started next to the first, in the LB namespace.
struct SecondStart {
    name: &'static str,
    /// Command words before the xlb binary.
    prefix: &'static [&'static str],
    /// What its error must say.
    want: &'static str,
}

/// The second xlb as it is usually started: it finds the first one's lock.
const SAME_HOST: SecondStart = SecondStart { name: "same host", prefix: &[], want: "already running on lc" };
/// In a mount namespace with its own `/run/xlb` (as from another container): the lock file is
/// not shared, so the kernel's XDP hook must refuse instead.
const PRIVATE_RUN: SecondStart = SecondStart {
    name: "private /run/xlb",
    prefix: &["unshare", "--mount", "--propagation", "private", "sh", "-c", "mount -t tmpfs xlb-tests /run/xlb && exec \"$0\" \"$@\""],
    want: "lc already has an XDP program",
};

/// How long a second xlb may take to give up.
const FAIL_FAST: Duration = Duration::from_secs(10);

/// Runs `xlb run --iface lc --config C SPEC` in the LB namespace as `how` says and waits for it
/// to exit (killing it after [`FAIL_FAST`]); returns its exit status (`None`: still running),
/// how long it ran, and its output. C gives it an admin port of its own, so only the guard
/// against a second instance can stop it.
fn run_second_xlb(topo: &Topology, how: &SecondStart, spec: &str) -> (Option<std::process::ExitStatus>, Duration, String) {
    let bin = xlb_tests::xlb::xlb_bin();
    let cfg = TempFile::new(".yaml", "admin:\n  address: \"127.0.0.1:0\"\n");
    let cfg_path = cfg.path().to_str().expect("utf-8 path");
    let mut words: Vec<&str> = how.prefix.to_vec();
    words.extend([bin.to_str().expect("utf-8 path"), "run", "--socket-lb=false", "--iface", LB_CLIENT_IF, "--config", cfg_path, spec]);
    let mut c = topo.lb.exec(words[0], &words[1..]);
    c.env("RUST_LOG", "info").env("NO_COLOR", "1");
    let started = Instant::now();
    let mut p = Proc::spawn("second xlb", c);
    let status = util::wait_for(FAIL_FAST, Duration::from_millis(20), || p.try_wait());
    let took = started.elapsed();
    if status.is_none() {
        p.kill();
    }
    // Let the pumps collect the last lines.
    std::thread::sleep(Duration::from_millis(100));
    (status, took, p.log().text())
}

/// A second `xlb run` on the interface an xlb already serves exits at once, non-zero, saying
/// so ("already"), whether it finds the first one's lock or, with a `/run/xlb` of its own, only
/// the kernel's XDP hook taken; the first one keeps its program attached and keeps serving.
fn second_xlb_on_the_interface_fails_fast(offload: Offload) {
    let _g = xlb_tests::serial();
    let topo = setup(offload, 2);
    assert!(util::have("unshare"), "`unshare` is not installed (needed by this test; apt-get install util-linux)");
    let names = ["b1", "b2"];
    let spec = spec_for(&topo, VIP4.into(), 80, &names, None, None);
    let mut xlb = topo.start_xlb(None, std::slice::from_ref(&spec));
    let vip = Topology::vip4(80);
    assert_shares(&topo.spread(vip, 20), 20, &names, 0.0, 1.0, &xlb);

    for how in [SAME_HOST, PRIVATE_RUN] {
        let (status, took, log) = run_second_xlb(&topo, &how, &spec);
        let said = log.lines().filter(|l| l.contains("xlb: ")).collect::<Vec<_>>().join(" / ");
        eprintln!("second xlb ({}): {status:?} after {took:?}: {said}", how.name);
        let Some(status) = status else {
            panic!("second xlb ({}) still ran after {FAIL_FAST:?} (killed); its log:\n{log}\n{}", how.name, tail(&xlb));
        };
        assert!(!status.success(), "second xlb ({}) exited with {status}, want a failure; its log:\n{log}", how.name);
        assert!(
            log.contains("already") && log.contains(how.want),
            "second xlb ({}) exited with {status} without saying {:?}; its log:\n{log}",
            how.name,
            how.want
        );

        xlb.assert_running();
        xlb.assert_xdp_attached();
        let body = topo.get(vip);
        assert!(
            body.as_ref().is_ok_and(|b| names.contains(&b.as_str())),
            "through the VIP after the second xlb ({}) gave up: {body:?}\n{}",
            how.name,
            tail(&xlb)
        );
        assert_shares(&topo.spread(vip, 20), 20, &names, 0.0, 1.0, &xlb);
    }
    stop(xlb);
}

/// round_robin is one sequence for the whole host, as nginx's users know it: 12 sequential
/// connections, made alternately from CPU 0 and CPU 1 (XDP runs on the sender's CPU on a
/// veth), alternate between two equal backends; with weights 1:2 every three consecutive
/// connections hold exactly one b1 (the smooth sequence b2 b1 b2). A position per CPU fails
/// both: b1 b1 b2 b2 ... and b2 b2 b1 b1 b2 b2.
#[test]
fn round_robin_is_one_sequence_for_the_host() {
    let _g = xlb_tests::serial();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(cpus >= 2, "this test needs 2 CPUs to open flows from two of them, the machine has {cpus}");
    let topo = setup(Offload::On, 2);
    let backends = |weights: [u32; 2]| ["b1", "b2"].iter().zip(weights).map(|(n, w)| BackendCfg::new(topo.ip(n, false), TESTD_PORT).weight(w)).collect();
    let services = [(80, [1, 1]), (81, [1, 2])]
        .map(|(port, w)| ServiceCfg { method: Some("round_robin"), ..ServiceCfg::tcp(&format!("rr{port}"), VIP4.into(), port, backends(w)) });
    let cfg = TempFile::new(".yaml", &config::render(&services));
    let xlb = topo.start_xlb(Some(cfg.path()), &[]);
    let answers = |port: u16| -> Vec<String> {
        (0..12)
            .map(|i| {
                let url = format!("http://{VIP4}:{port}/");
                let cpu = (i % 2).to_string();
                let out = topo.client.try_run("taskset", &["-c", &cpu, "curl", "-sS", "--fail", "--max-time", "2", &url]);
                out.map(|b| b.trim().to_owned()).unwrap_or_else(|e| panic!("connection {i} to port {port}: {e}\n{}", tail(&xlb)))
            })
            .collect()
    };
    let equal = answers(80);
    eprintln!("round_robin 1:1 from alternating CPUs: {equal:?}");
    assert!(equal.windows(2).all(|w| w[0] != w[1]), "1:1 did not alternate: {equal:?}\n{}", tail(&xlb));
    let weighted = answers(81);
    eprintln!("round_robin 1:2 from alternating CPUs: {weighted:?}");
    assert_eq!(weighted.iter().filter(|b| *b == "b1").count(), 4, "1:2 over 12: {weighted:?}");
    assert!(weighted.windows(3).all(|w| w.iter().filter(|b| *b == "b1").count() == 1), "1:2 is not smooth: {weighted:?}\n{}", tail(&xlb));
    stop(xlb);
}

/// A UDP flow has no end to wait for: once its backend drains, it stays there only until it
/// has been idle for `udp_idle_timeout` by the drain's clock (its packets no longer refresh
/// it), then moves. One client socket (one 5-tuple) asks every 200 ms; after its backend is
/// set draining it must be answered by the other one within idle timeout (2 s) + the expiry
/// pass (5 s) + slack, and every query is answered.
#[test]
fn udp_flow_leaves_a_draining_backend_after_its_idle_timeout() {
    let _g = xlb_tests::serial();
    let topo = setup(Offload::On, 2);
    let yaml = |draining: Option<&str>| {
        let bs = ["b1", "b2"].iter().map(|b| BackendCfg::new(topo.ip(b, false), TESTD_PORT).draining(Some(*b) == draining)).collect();
        config::render(&[ServiceCfg::udp("dns", VIP4.into(), 5353, bs)]) + "dataplane:\n  udp_idle_timeout: 2s\n"
    };
    let cfg = TempFile::new(".yaml", &yaml(None));
    let mut xlb = topo.start_xlb(Some(cfg.path()), &[]);
    let vip = Topology::vip4(5353);
    let moved = topo.client.enter(|| {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp bind");
        sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let ask = || -> String {
            let mut buf = [0u8; 512];
            for _ in 0..3 {
                sock.send_to(b"xlb-tests\n", vip).expect("udp send");
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    assert_eq!(from, vip, "answer not from the VIP");
                    return String::from_utf8_lossy(&buf[..n]).trim().to_owned();
                }
            }
            panic!("no answer from {vip} after 3 tries");
        };
        let on = ask();
        assert!(ask() == on && ask() == on, "one socket's queries left {on} while it was active");
        cfg.write(&yaml(Some(&on)));
        let drained = Instant::now();
        let _ = xlb.reload();
        while drained.elapsed() < Duration::from_secs(12) {
            let now = ask();
            if now != on {
                return Some((on, now, drained.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    });
    let Some((from, to, after)) = moved else { panic!("the UDP flow stayed on its draining backend for 12 s\n{}", tail(&xlb)) };
    eprintln!("UDP flow moved from draining {from} to {to} {after:.1?} after the drain");
    assert!(after >= Duration::from_secs(2), "moved {after:?} after the drain, before its idle timeout");
    stop(xlb);
}

/// A connection table smaller than the flows counts what it pushes out. 300 new connections
/// write 600 entries into a table of 256; nothing expires (closed flows are kept 10 min here),
/// so every entry made is either still there or evicted: evicted + entries = 600 (a few more
/// if a stray SYN to the VIP came in), and at least 600 - 256 were evicted.
#[test]
fn conntrack_evictions_are_counted() {
    let _g = xlb_tests::serial();
    let topo = setup(Offload::On, 2);
    let bs = ["b1", "b2"].iter().map(|b| BackendCfg::new(topo.ip(b, false), TESTD_PORT)).collect();
    let yaml = config::render(&[ServiceCfg::tcp("web", VIP4.into(), 80, bs)]) + "dataplane:\n  conntrack_size: 256\n  tcp_closed_timeout: 10m\n";
    let cfg = TempFile::new(".yaml", &yaml);
    let xlb = topo.start_xlb(Some(cfg.path()), &[]);
    let s = topo.spread(Topology::vip4(80), 300);
    assert!(s.errors.is_empty() && s.total_ok() == 300, "{s}\n{}", tail(&xlb));
    let sample = |text: &str, name: &str| -> Option<u64> { text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()) };
    // The expiry pass (every 5 s) counts; the snapshot (every 2 s) shows it.
    let found = util::wait_for(Duration::from_secs(15), Duration::from_millis(500), || {
        let m = xlb.admin_get("/metrics").ok()?;
        let evicted = sample(&m, "xlb_conntrack_evictions_total").filter(|n| *n > 0)?;
        Some((evicted, sample(&m, "xlb_conntrack_entries")?))
    });
    let Some((evicted, entries)) = found else { panic!("no evictions in /metrics after 300 flows into 256 entries\n{}", tail(&xlb)) };
    eprintln!("conntrack of 256 after 300 flows: {entries} entries, {evicted} evicted");
    assert!(entries <= 256, "{entries} entries in a table of 256");
    assert!((600..=610).contains(&(evicted + entries)), "evicted {evicted} + entries {entries} should be the 600 entries made");
    assert!(evicted >= 600 - 256, "evicted {evicted}, at least 344 had to go");
    stop(xlb);
}
