//! Least privilege (issue 15 #12), with the real binary in the namespace topology:
//!
//! - `capabilities_are_dropped_after_start`: once `ready`, every thread of xlb has only
//!   CAP_NET_ADMIN and CAP_NET_BIND_SERVICE (and CAP_BPF before Linux 6.5) in its effective,
//!   permitted and bounding sets, none ambient; then what xlb still does while running works
//!   without the rest: a reload adds a backend behind an interface xlb had not attached to (the
//!   reply program attached and pinned, the maps written) and moves the HTTP listener to port
//!   81 (below 1024); both backends serve, and xlb stops cleanly, detaching everything.
//!
//! Needs root and `XLB_BIN`; run with
//! `XLB_BIN=$PWD/target/debug/xlb cargo test -p xlb-tests --test privilege -- --test-threads=1`.

use std::{net::SocketAddr, time::Duration};

use xlb_tests::{
    Topology,
    topology::{LB_CLIENT_V4, TESTD_PORT, VIP4},
    util::{TempFile, wait_for},
};

const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;
const CAP_BPF: u32 = 39;

/// What xlb keeps on this kernel: CAP_BPF only before 6.5, where every `bpf()` call needs it.
fn expected() -> u64 {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("reading the kernel release");
    let mut nums = release.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u32>().ok());
    let version = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    let mut keep = 1 << CAP_NET_ADMIN | 1 << CAP_NET_BIND_SERVICE;
    if version < (6, 5) {
        keep |= 1 << CAP_BPF;
    }
    keep
}

/// Each thread's `CapEff CapPrm CapBnd CapAmb` line, by thread id.
fn thread_caps(pid: u32) -> Vec<(String, [u64; 4])> {
    let dir = format!("/proc/{pid}/task");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let tid = entry.expect("a task entry").file_name().to_string_lossy().into_owned();
        let Ok(status) = std::fs::read_to_string(format!("{dir}/{tid}/status")) else { continue };
        let field = |name: &str| {
            let hex = status.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_else(|| panic!("no {name} in {dir}/{tid}/status"));
            u64::from_str_radix(hex.trim(), 16).expect("a hex capability set")
        };
        let caps = [field("CapEff:"), field("CapPrm:"), field("CapBnd:"), field("CapAmb:")];
        out.push((tid, caps));
    }
    out
}

fn config(backends: &[std::net::IpAddr], http_port: u16) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("{{ address: \"{b}\", port: {TESTD_PORT} }}")).collect();
    format!(
        "services:\n  - name: web\n    vip: \"{VIP4}\"\n    port: 80\n    backends: [{}]\n  \
         - name: api\n    port: {http_port}\n    protocol: http\n    backends: [{}]\n",
        list.join(", "),
        list[0]
    )
}

#[test]
fn capabilities_are_dropped_after_start() {
    let _g = xlb_tests::serial();
    xlb_tests::preflight();
    let topo = Topology::builder().backends(2).build();
    let (b1, b2) = (topo.ip("b1", false), topo.ip("b2", false));
    let cfg = TempFile::new(".yaml", &config(&[b1], 8081));
    let mut xlb = topo.start_xlb(Some(cfg.path()), &[]);

    let keep = expected();
    let threads = thread_caps(xlb.pid());
    assert!(threads.len() > 2, "xlb runs several threads: {threads:?}");
    let wrong: Vec<_> = threads.iter().filter(|(_, c)| *c != [keep, keep, keep, 0]).collect();
    assert!(wrong.is_empty(), "threads with other capabilities than {keep:#x} (eff, prm, bnd, amb): {wrong:?}\nlog:\n{}", xlb.log());
    let main = thread_caps(xlb.pid()).into_iter().find(|(t, _)| *t == xlb.pid().to_string()).map(|(_, c)| c[0]);
    assert_eq!(main, Some(keep), "/proc/{}/status CapEff", xlb.pid());

    // What xlb does while running, without the dropped capabilities.
    let from = xlb.log().lines().count();
    cfg.write(&config(&[b1, b2], 81));
    let reloaded =
        wait_for(Duration::from_secs(5), Duration::from_millis(50), || xlb.log().lines().skip(from).any(|l| l.contains("config reloaded")).then_some(()));
    assert!(reloaded.is_some(), "the reload was not applied; log:\n{}", xlb.log());
    let both = wait_for(Duration::from_secs(5), Duration::from_millis(200), || {
        let s = topo.spread(Topology::vip4(80), 40);
        (s.errors.is_empty() && s.count("b1") > 0 && s.count("b2") > 0).then_some(s)
    });
    assert!(both.is_some(), "b2, added by the reload behind lb2, does not serve: {}\nlog:\n{}", topo.spread(Topology::vip4(80), 40), xlb.log());
    assert_eq!(topo.get(SocketAddr::from((LB_CLIENT_V4, 81))).as_deref(), Ok("b1"), "the HTTP listener moved to port 81\nlog:\n{}", xlb.log());
    let log = xlb.log();
    assert!(!log.lines().skip(from).any(|l| l.contains("ERROR") || l.contains("WARN")), "errors after the reload:\n{log}");
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
    println!("PRIVILEGE-FIGURE {} threads with capabilities {keep:#x}; runtime attach, map sync and a port below 1024 worked", threads.len());
}
