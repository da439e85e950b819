//! Restarting xlb without dropping flows: `xlb run --keep-dataplane` leaves the data plane
//! pinned under /sys/fs/bpf/xlb and forwarding, the next `xlb run` adopts it, and `xlb down`
//! removes everything. Runs in the namespace topology (see `xlb_tests::topology`).
//!
//! Needs root and `XLB_BIN`; run with
//! `XLB_BIN=$PWD/target/debug/xlb cargo test -p xlb-tests --test restart -- --test-threads=1`.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    maps::{MapInfo, loaded_maps},
    programs::{
        ProgramInfo, loaded_links, loaded_programs,
        links::{FdLink, PinnedLink},
    },
};
use xlb_tests::{
    NetNs, Topology, Xlb,
    config::{self, BackendCfg, ServiceCfg},
    http::StreamResult,
    topology::{LB_CLIENT_IF, TESTD_PORT, VIP4},
    util::{self, TempFile},
    xlb::{BPFFS, ensure_bpffs, xlb_bin},
};

/// A live TCP connection through the VIP (a line every 100 ms) flows on, from the same
/// backend and without a stall, while xlb stops with `--keep-dataplane`, stays down, and
/// starts again; new connections work throughout; the restarted xlb (without the flag)
/// adopts the kept maps (log line), replaces the kept programs in their links, applies a
/// backend change, and on an ordinary stop leaves nothing attached or pinned.
#[test]
fn restart_with_pinned_maps_keeps_a_long_tcp_connection() {
    let (_g, topo) = setup();
    let (cfg, _down, mut xlb) = start_kept(&topo);
    let vip = Topology::vip4(80);
    expect_spread(&topo, &["b1", "b2"], &xlb);

    let secs = 20;
    let stream = topo.stream(vip, secs);
    let on = stream.backend(Duration::from_secs(3)).unwrap_or_else(|e| panic!("stream: {e}\n{}", xlb.log()));
    std::thread::sleep(Duration::from_secs(1));
    let retrans_before = retransmits(&topo.backend(&on).ns);

    xlb.stop_keeping_dataplane().unwrap_or_else(|e| panic!("{e}"));
    let stopped = Instant::now();
    let scope = scope_dir(&topo);
    let first = Kept::read(&scope);
    assert!(
        first.links.iter().any(|l| l.ends_with("xlb_xdp@lc")) && first.links.iter().any(|l| l.ends_with("xlb_fwd@lc")),
        "kept links: {:?}",
        first.links
    );
    // Every map of lb-ebpf/src/maps.rs: the tables, the counters and the socket programs' map.
    for name in ["SERVICES", "BACKENDS", "CONNTRACK", "HALF_OPEN", "TABLES", "REV_NAT", "TUNNEL_SOURCES", "SOCK_REV_NAT", "SOCK_PEER", "DROPS"] {
        assert!(first.maps.iter().any(|m| m.file_name().is_some_and(|f| f == name)), "{name} not kept: {:?}", first.maps);
    }
    assert_eq!(first.maps.len(), 18, "kept maps: {:?}", first.maps);
    assert!(topo.lb.ip(&format!("-d link show dev {LB_CLIENT_IF}")).contains("xdp"), "no XDP program on {LB_CLIENT_IF} after a keep");

    // Nobody runs xlb now: the kernel balances new connections on its own.
    expect_spread(&topo, &["b1", "b2"], &xlb);
    std::thread::sleep(Duration::from_secs(2).saturating_sub(stopped.elapsed()));
    let down_for = stopped.elapsed();

    let (mut xlb, adopted) = adopt(&topo, &cfg);
    let log = xlb.log();
    assert!(log.contains("took over the kept attachment"), "links not taken over:\n{log}");
    assert!(!log.contains("attaching anew"), "a kept link was not reused:\n{log}");
    // It pins its own programs while it runs, so a crash of it leaves them forwarding.
    assert!(xlb.log().contains("data plane pinned while running"), "the adopting xlb did not pin:\n{log}");
    // The kept programs were swapped out of the links: nothing holds them any more.
    first.assert_programs_gone();
    expect_spread(&topo, &["b1", "b2"], &xlb);

    // A change after the adoption reaches the kernel.
    cfg.write(&yaml(&topo, &["b1", "b2", "b3"]));
    xlb.reload();
    let applied = util::wait_for(Duration::from_secs(10), Duration::from_millis(200), || {
        let s = topo.spread(vip, 30);
        (s.count("b3") > 0 && s.total_ok() == 30).then_some(())
    });
    assert!(applied.is_some(), "b3 added after the adoption never got connections\n{}", xlb.log());

    let r = stream.join();
    let retrans = retransmits(&topo.backend(&on).ns) - retrans_before;
    eprintln!("restart: xlb down for {down_for:?}; {adopted}; stream {r:?}; TCP retransmissions by {on} meanwhile: {retrans}");
    assert_stayed(&r, &on, secs);
    xlb.assert_running();
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(!scope.exists(), "a normal stop left pins at {}", scope.display());
}

/// xlb killed with SIGKILL (a crash, the OOM killer) leaves the data plane forwarding: it
/// was pinned while running, without `--keep-dataplane`. A live connection flows on from
/// its backend, new connections are balanced while no xlb runs, the next `xlb run`
/// adopts the pinned data plane, and an orderly stop then removes it all.
#[test]
fn kill_9_leaves_the_data_plane_forwarding() {
    let (_g, topo) = setup();
    let (cfg, _down, mut xlb) = start(&topo, &pinned());
    assert!(xlb.log().contains("data plane pinned while running"), "not pinned:\n{}", xlb.log());
    let vip = Topology::vip4(80);
    let secs = 12;
    let stream = topo.stream(vip, secs);
    let on = stream.backend(Duration::from_secs(3)).unwrap_or_else(|e| panic!("stream: {e}\n{}", xlb.log()));
    std::thread::sleep(Duration::from_secs(1));

    xlb.kill_9();
    assert!(topo.lb.ip(&format!("-d link show dev {LB_CLIENT_IF}")).contains("xdp"), "no XDP program on {LB_CLIENT_IF} after kill -9");
    expect_spread(&topo, &["b1", "b2"], &xlb);

    let (mut xlb, _) = adopt(&topo, &cfg);
    expect_spread(&topo, &["b1", "b2"], &xlb);
    let r = stream.join();
    eprintln!("kill -9: stream {r:?}");
    assert_stayed(&r, &on, secs);
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(!scope_dir(&topo).exists(), "an orderly stop left pins at {}", scope_dir(&topo).display());
}

/// kill -9 of xlb under a bounded wrk load through the VIP (keep-alive connections and
/// new ones as wrk reconnects): the pinned data plane forwards while no xlb runs and after
/// the next one adopts it, so no request fails. Prints `RESTART-FIGURE`.
#[test]
fn kill_9_under_wrk_fails_no_request() {
    let (_g, topo) = setup();
    let (cfg, _down, mut xlb) = start(&topo, &pinned());
    let secs = 8;
    let wrk = topo.client.exec("wrk", xlb_tests::wrk::args(&format!("http://{}/", Topology::vip4(80)), 8, secs));
    let load = std::thread::spawn(move || xlb_tests::wrk::run(wrk));
    std::thread::sleep(Duration::from_secs(2));
    xlb.kill_9();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let (mut xlb, _) = adopt(&topo, &cfg);
    let adopted = killed.elapsed();
    let w = load.join().unwrap();
    println!("RESTART-FIGURE kill -9 under wrk -c 8 for {secs}s, the next xlb ready {adopted:?} later: {w:?}");
    assert_eq!(w.failed(), 0, "{w:?}\n{}", xlb.log());
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}

/// A draining backend is in no selection table, so the adopting xlb finds its id only in
/// `BACKENDS`: the first sync must give that id back to it (not retire it), or the live
/// connection it still serves would be re-balanced and reset. New connections keep
/// avoiding it across the restart.
#[test]
fn restart_keeps_a_draining_backends_connection() {
    let (_g, topo) = setup();
    let (cfg, _down, mut xlb) = start_kept(&topo);
    let vip = Topology::vip4(80);
    let secs = 15;
    let stream = topo.stream(vip, secs);
    let on = stream.backend(Duration::from_secs(3)).unwrap_or_else(|e| panic!("stream: {e}\n{}", xlb.log()));
    let other = if on == "b1" { "b2" } else { "b1" };

    let backends = |draining: &str| -> String {
        let list = ["b1", "b2"].map(|n| BackendCfg::new(topo.backend(n).v4.into(), TESTD_PORT).draining(n == draining)).to_vec();
        config::render(&[ServiceCfg::tcp("web", VIP4.into(), 80, list)])
    };
    cfg.write(&backends(&on));
    xlb.reload();
    let drained = util::wait_for(Duration::from_secs(10), Duration::from_millis(200), || {
        let s = topo.spread(vip, 20);
        (s.count(other) == 20).then_some(())
    });
    assert!(drained.is_some(), "{on} still gets new connections after draining it\n{}", xlb.log());

    xlb.stop_keeping_dataplane().unwrap_or_else(|e| panic!("{e}"));
    let (mut xlb, _) = adopt(&topo, &cfg);
    expect_spread(&topo, &[other], &xlb);

    let r = stream.join();
    assert_stayed(&r, &on, secs);
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}

/// `xlb down` removes a kept data plane: no pin, no link, no program and no map of it is
/// left in the kernel, nothing is attached to the interfaces, and the VIP stops answering.
/// A second `xlb down` finds nothing to do.
#[test]
fn down_leaves_no_program_pin_or_link() {
    let (_g, topo) = setup();
    let (_cfg, _down, mut xlb) = start_kept(&topo);
    let vip = Topology::vip4(80);
    expect_spread(&topo, &["b1", "b2"], &xlb);
    xlb.stop_keeping_dataplane().unwrap_or_else(|e| panic!("{e}"));
    let scope = scope_dir(&topo);
    let kept = Kept::read(&scope);
    assert!(!kept.links.is_empty() && !kept.programs.is_empty(), "nothing kept: {kept:?}");

    let out = down(&topo);
    for path in kept.links.iter().chain(&kept.programs).chain(&kept.maps) {
        assert!(out.contains(path.to_str().unwrap()), "`xlb down` did not report {}:\n{out}", path.display());
    }
    assert!(!scope.exists(), "{} left after `xlb down`", scope.display());
    let leftovers = xlb.attached_programs();
    assert!(leftovers.is_empty(), "attached after `xlb down`: {leftovers:?}");
    kept.assert_programs_gone();
    kept.assert_links_and_maps_gone();
    assert!(topo.get(vip).is_err(), "the VIP still answers after `xlb down`");

    let again = down(&topo);
    assert!(again.contains("nothing kept"), "second `xlb down`: {again}");
}

/// The suite's lock, then the topology with three backends.
fn setup() -> (xlb_tests::Serial, Topology) {
    let serial = xlb_tests::serial();
    xlb_tests::preflight();
    ensure_bpffs();
    (serial, Topology::builder().backends(3).build())
}

/// xlb over b1 and b2 with `--keep-dataplane`: [`start`] with [`keep_args`].
fn start_kept(topo: &Topology) -> (TempFile, Down<'_>, Xlb) {
    start(topo, &keep_args())
}

/// xlb over b1 and b2 run with `args`, its config file, and the guard that runs `xlb down`
/// after a failure. Bound in that order, xlb is dropped (stopped) first.
fn start<'a>(topo: &'a Topology, args: &[String]) -> (TempFile, Down<'a>, Xlb) {
    let cfg = TempFile::new(".yaml", &yaml(topo, &["b1", "b2"]));
    let down = Down(topo);
    let xlb = topo.start_xlb(Some(cfg.path()), args);
    (cfg, down, xlb)
}

/// The stream flowed for its `secs` from backend `on` alone, never stalling over a second.
fn assert_stayed(r: &StreamResult, on: &str, secs: u64) {
    assert_eq!(r.backend.as_deref(), Some(on), "stream moved: {r:?}");
    r.assert_ok(secs, Duration::from_secs(1));
}

/// The next xlb (with `cfg`, pinning), which must adopt the data plane left pinned: it, and
/// its log line saying so.
fn adopt(topo: &Topology, cfg: &TempFile) -> (Xlb, String) {
    let xlb = topo.start_xlb(Some(cfg.path()), &pinned());
    let log = xlb.log();
    let line = log.lines().find(|l| l.contains("adopted the kept data plane")).unwrap_or_else(|| panic!("no adoption logged:\n{log}")).to_owned();
    (xlb, line)
}

/// `xlb run` arguments (passed with the SPECs) that pin the data plane in [`BPFFS`] while
/// xlb runs, so that a crash leaves it forwarding; the next xlb adopts it.
fn pinned() -> [String; 2] {
    ["--bpffs".into(), BPFFS.into()]
}

/// [`pinned`], and kept at a stop too.
fn keep_args() -> [String; 3] {
    ["--keep-dataplane".into(), "--bpffs".into(), BPFFS.into()]
}

fn yaml(topo: &Topology, names: &[&str]) -> String {
    let backends = names.iter().map(|n| BackendCfg::new(topo.backend(n).v4.into(), TESTD_PORT)).collect();
    config::render(&[ServiceCfg::tcp("web", VIP4.into(), 80, backends)])
}

/// 30 new connections through the VIP all succeed, on exactly `names`.
#[track_caller]
fn expect_spread(topo: &Topology, names: &[&str], xlb: &Xlb) {
    let s = topo.spread(Topology::vip4(80), 30);
    let all: usize = names.iter().map(|n| s.count(n)).sum();
    assert!(s.total_ok() == 30 && all == 30 && names.iter().all(|n| s.count(n) > 0), "spread over {names:?}: {s:?}\n{}", xlb.log());
}

/// `RetransSegs` of the namespace's TCP stack: segments sent again because they (or their
/// acknowledgements) were lost.
fn retransmits(ns: &NetNs) -> u64 {
    let snmp = ns.run("cat", &["/proc/net/snmp"]);
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().expect("Tcp: header"), tcp.next().expect("Tcp: values"));
    let at = names.split_whitespace().position(|n| n == "RetransSegs").expect("RetransSegs");
    values.split_whitespace().nth(at).and_then(|v| v.parse().ok()).expect("RetransSegs value")
}

/// The pin directory of xlb on `lc` in the LB namespace.
fn scope_dir(topo: &Topology) -> PathBuf {
    let ino = std::fs::metadata(format!("/run/netns/{}", topo.lb.name())).expect("LB netns").ino();
    PathBuf::from(format!("{BPFFS}/xlb/{ino}-{LB_CLIENT_IF}"))
}

/// `xlb down --iface lc` in the LB namespace: its output.
fn down(topo: &Topology) -> String {
    let bin = xlb_bin();
    topo.lb.try_run(bin.to_str().unwrap(), &["down", "--bpffs", BPFFS, "--iface", LB_CLIENT_IF]).unwrap_or_else(|e| panic!("xlb down: {e}"))
}

/// Removes a kept data plane when a test ends early, before its namespace goes.
struct Down<'a>(&'a Topology);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = self.0.lb.try_run(xlb_bin().to_str().unwrap(), &["down", "--bpffs", BPFFS, "--iface", LB_CLIENT_IF]);
    }
}

/// What a kept data plane pinned, and the kernel ids behind the pins.
#[derive(Debug)]
struct Kept {
    links: Vec<PathBuf>,
    programs: Vec<PathBuf>,
    maps: Vec<PathBuf>,
    link_ids: Vec<u32>,
    program_ids: Vec<u32>,
    map_ids: Vec<u32>,
}

impl Kept {
    fn read(scope: &Path) -> Kept {
        let list = |sub: &str| -> Vec<PathBuf> {
            let dir = scope.join(sub);
            let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|e| e.unwrap().path())
                .collect();
            v.sort();
            v
        };
        let (links, programs, maps) = (list("links"), list("progs"), list("maps"));
        // Each descriptor opened here is closed at once: only the pins hold the objects.
        let link_ids = links.iter().map(|p| FdLink::from(PinnedLink::from_pin(p).unwrap()).info().unwrap().id()).collect();
        let program_ids = programs.iter().map(|p| ProgramInfo::from_pin(p).unwrap().id()).collect();
        let map_ids = maps.iter().map(|p| MapInfo::from_pin(p).unwrap().id()).collect();
        Kept { links, programs, maps, link_ids, program_ids, map_ids }
    }

    /// No program with one of the kept ids is loaded (frees are deferred: polls 5 s).
    #[track_caller]
    fn assert_programs_gone(&self) {
        let left = util::wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
            let live: Vec<u32> = loaded_programs().filter_map(Result::ok).map(|p| p.id()).filter(|id| self.program_ids.contains(id)).collect();
            live.is_empty().then_some(())
        });
        assert!(left.is_some(), "kept programs {:?} still loaded", self.program_ids);
    }

    #[track_caller]
    fn assert_links_and_maps_gone(&self) {
        let left = util::wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
            let links = loaded_links().filter_map(Result::ok).any(|l| self.link_ids.contains(&l.id()));
            let maps = loaded_maps().filter_map(Result::ok).any(|m| self.map_ids.contains(&m.id()));
            (!links && !maps).then_some(())
        });
        assert!(left.is_some(), "kept links {:?} or maps {:?} still in the kernel", self.link_ids, self.map_ids);
    }
}
