//! Several xlb nodes behind an ECMP router (see `xlb_tests::scaleout`): each node's xlb
//! writes the VIP into its announce table, BIRD exports it by BGP, the router spreads flows
//! over the nodes by a 5-tuple hash; backends answer clients directly (`forwarding: direct`).
//! One node then dies (link down, kill -9): the router drops it when the BGP hold time runs
//! out, and its flows reach other nodes mid-stream, which steer them by the same Maglev table.
//!
//! Needs root, `bird` (`cargo xtask setup`) and `XLB_BIN`; run with
//! `XLB_BIN=$PWD/target/debug/xlb cargo test -p xlb-tests --test scaleout -- --nocapture`.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use xlb_tests::{
    bird::HOLD_SECS,
    http::Conn,
    scaleout::{ANNOUNCE_TABLE, ScaleOut, VIP},
};

const NODES: usize = 3;
/// Keep-alive connections that live through the node's death.
const KEEPALIVE: usize = 24;
/// A request may wait for the router to drop the dead node (the hold time) and for TCP's
/// next retransmission after that (backoff 0.2, 0.4, 0.8, 1.6, 3.2 s...).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// One keep-alive connection's record: the backend of each answer, the failures.
#[derive(Default)]
struct Record {
    backends: BTreeSet<String>,
    ok: usize,
    failed: Vec<String>,
}

/// Requests on `conn` every 50 ms until `stop`, at most 400.
fn keep_asking(mut conn: Conn, stop: Arc<AtomicBool>) -> Record {
    let mut r = Record::default();
    for _ in 0..400 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        match conn.request("GET", "/", false) {
            Ok(resp) if resp.status == 200 => {
                r.ok += 1;
                r.backends.insert(resp.body.trim().to_owned());
            }
            Ok(resp) => r.failed.push(format!("status {}", resp.status)),
            Err(e) => {
                r.failed.push(e.to_string());
                break;
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    r
}

/// The `xlb_service_flows_total` of node `i`'s xlb (its admin snapshot, refreshed every 2 s).
fn flows(s: &ScaleOut, i: usize) -> u64 {
    let metrics = s.nodes[i].xlb.as_ref().expect("running").admin_get("/metrics").unwrap_or_else(|e| panic!("metrics of {}: {e}", s.nodes[i].name));
    metrics.lines().filter(|l| l.starts_with("xlb_service_flows_total")).filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok()).sum::<f64>() as u64
}

/// Whether node `i`'s xlb says (`/metrics`, from its snapshot) that it announces the VIP,
/// waiting up to `within` for the snapshot (refreshed every 2 s) to say `want`.
fn says_announced(s: &ScaleOut, i: usize, want: bool, within: Duration) -> bool {
    let line = format!("xlb_vip_announced{{vip=\"{VIP}\",table=\"{ANNOUNCE_TABLE}\"}} 1");
    let deadline = std::time::Instant::now() + within;
    loop {
        let metrics = s.nodes[i].xlb.as_ref().expect("running").admin_get("/metrics").unwrap_or_else(|e| panic!("metrics of {}: {e}", s.nodes[i].name));
        let says = metrics.lines().any(|l| l == line);
        if says == want || std::time::Instant::now() > deadline {
            return says;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn ecmp_nodes_share_flows_and_keep_them_when_one_dies() {
    let _g = xlb_tests::serial();
    xlb_tests::preflight();
    let mut s = ScaleOut::build(NODES, 3);
    let announced = s.wait_paths(NODES, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", s.logs()));
    eprintln!("router: {NODES} paths to {VIP} {announced:?} after the last xlb was ready");
    for n in &s.nodes {
        let table = n.ns.ip(&format!("route show table {ANNOUNCE_TABLE}"));
        assert!(table.contains(&VIP.to_string()) && table.contains("proto 120"), "{}: announce table {table:?}", n.name);
    }
    for i in 0..NODES {
        assert!(says_announced(&s, i, true, Duration::from_secs(5)), "{}: /metrics does not show the VIP announced", s.nodes[i].name);
    }

    // New connections spread over the nodes (the router's packets to each) and are all answered.
    let before: Vec<u64> = (0..NODES).map(|i| s.packets_to_node(i)).collect();
    let spread = s.client.enter(|| xlb_tests::http::spread(ScaleOut::vip(), 150, Duration::from_secs(60)));
    eprintln!("spread: {spread}");
    assert!(spread.errors.is_empty() && spread.total_ok() == 150, "150 connections: {spread}\n{}", s.logs());
    let sent: Vec<u64> = (0..NODES).map(|i| s.packets_to_node(i) - before[i]).collect();
    let total: u64 = sent.iter().sum();
    eprintln!("router -> nodes, packets: {sent:?}");
    for (i, n) in sent.iter().enumerate() {
        assert!(*n as f64 >= 0.15 * total as f64, "node {} got {n} of {total} packets: {sent:?}", s.nodes[i].name);
    }

    // Keep-alive connections, then the death of node 2 while they keep asking.
    let stop = Arc::new(AtomicBool::new(false));
    let conns: Vec<Conn> = (0..KEEPALIVE)
        .map(|_| s.client.enter(|| Conn::connect(ScaleOut::vip(), REQUEST_TIMEOUT)).unwrap_or_else(|e| panic!("connect: {e}\n{}", s.logs())))
        .collect();
    let workers: Vec<_> = conns
        .into_iter()
        .map(|c| {
            let stop = stop.clone();
            s.client.spawn_thread(move || keep_asking(c, stop))
        })
        .collect();
    thread::sleep(Duration::from_secs(2));
    let to_victim = s.packets_to_node(1);
    thread::sleep(Duration::from_secs(1));
    assert!(s.packets_to_node(1) > to_victim, "no keep-alive connection goes through {}: the test would prove nothing", s.nodes[1].name);
    // The survivors' counters before (their snapshots are at most 2 s old: wait one out).
    thread::sleep(Duration::from_millis(2100));
    let survivors = [0, 2];
    let flows_before: Vec<u64> = survivors.iter().map(|&i| flows(&s, i)).collect();

    let died = Instant::now();
    s.kill_node(1);
    let withdrawal = s.wait_paths(NODES - 1, Duration::from_secs(4 * HOLD_SECS)).unwrap_or_else(|e| panic!("{e}\n{}", s.logs()));
    eprintln!("BGP withdrawal: the router dropped the dead node {withdrawal:?} after its death (hold time {HOLD_SECS} s)");
    // Long enough for every connection to get through TCP's retransmission after the reroute.
    while died.elapsed() < Duration::from_secs(12) {
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let records: Vec<Record> = workers.into_iter().map(|w| w.join().expect("a worker")).collect();
    thread::sleep(Duration::from_millis(2100));
    let moved: u64 = survivors.iter().zip(&flows_before).map(|(&i, b)| flows(&s, i) - b).sum();

    let failed: usize = records.iter().map(|r| r.failed.len()).sum();
    let ok: usize = records.iter().map(|r| r.ok).sum();
    eprintln!("keep-alive: {KEEPALIVE} connections, {ok} requests answered, {failed} failed; {moved} flows steered mid-stream by the survivors");
    for (i, r) in records.iter().enumerate() {
        assert!(r.failed.is_empty(), "connection {i} failed: {:?} ({} answered before)\n{}", r.failed, r.ok, s.logs());
        assert_eq!(r.backends.len(), 1, "connection {i} was answered by {:?}: a moved flow changed backend", r.backends);
    }
    assert!(moved > 0, "the survivors steered no flow mid-stream: none moved");
    assert_eq!(s.paths().len(), NODES - 1, "the router's paths after the death");

    withdrawals(&mut s);
    drop(s);
}

/// The withdrawals that are no death: an orderly stop withdraws before the drain, so the
/// router hears it at once, not after a hold time (node 3); a service with no backend taking
/// new flows (all draining) is withdrawn too (node 1, the last one).
fn withdrawals(s: &mut ScaleOut) {
    let mut third = s.nodes[2].xlb.take().expect("running");
    let stopped = third.stop_while(|| s.wait_paths(NODES - 2, Duration::from_secs(2 * HOLD_SECS))).unwrap_or_else(|e| panic!("{e}"));
    let stopped = stopped.unwrap_or_else(|e| panic!("after SIGTERM: {e}\n{}", s.logs()));
    eprintln!("SIGTERM: the router dropped the stopping node {stopped:?} after the signal");
    assert!(stopped < Duration::from_secs(HOLD_SECS), "withdrawal on SIGTERM took {stopped:?}, as long as a hold time");
    s.set_backend_state("draining");
    let drained = s.wait_paths(0, Duration::from_secs(10)).unwrap_or_else(|e| panic!("all backends draining: {e}\n{}", s.logs()));
    eprintln!("all backends draining: VIP withdrawn {drained:?} after the config was written");
    let table = s.nodes[0].ns.ip(&format!("route show table {ANNOUNCE_TABLE}"));
    assert!(!table.contains(&VIP.to_string()), "{}: announce table still holds the VIP: {table:?}", s.nodes[0].name);
    assert!(!says_announced(s, 0, false, Duration::from_secs(5)), "{}: /metrics still shows the VIP announced", s.nodes[0].name);
}
