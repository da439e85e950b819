//! Nodes sharing one state directory: the per-name lock.

use std::{fs::File, os::fd::AsRawFd as _, time::Duration};

use xlb_tests::{Xlb, topology::LB_CLIENT_V4, util::TempFile, xlb::XlbArgs};

use super::common::{Ca, ISSUE_TIMEOUT, NAME, cert_status, log_lines, wait_status};

/// Holds `path` locked (flock, as another xlb would) until dropped.
struct Held {
    _file: File,
}

fn hold(path: &std::path::Path) -> Held {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = File::create(path).unwrap();
    // SAFETY: flock on a descriptor this function owns.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0, "flock {}", path.display());
    Held { _file: f }
}

/// While another process holds the name's lock, xlb waits (`waiting`) and orders nothing;
/// then a second xlb (in the backend's namespace, sharing the state directory) starts, the
/// lock is let go, and the name is ordered once between them: one order at pebble, both
/// `issued`. Whichever orders, pebble validates at the first node (the DNS answer), which
/// answers from the challenges the state directory shares.
#[test]
fn two_nodes_sharing_the_state_directory_order_once() {
    let _g = xlb_tests::serial();
    xlb_tests::preflight();
    let ca = Ca::start();
    let lock = hold(&ca.state.path().join("locks").join(format!("{NAME}.lock")));
    let (mut a, _cfg_a) = ca.start_xlb(&[NAME]);
    wait_status(&ca.topo.lb, &a, ca.pebble.as_ref(), NAME, Duration::from_secs(10), |s| s.state == "waiting");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ca.pebble().orders(), 0, "no order while the lock is held elsewhere");

    // Node b: in b1's namespace, which reaches pebble through the LB once the client routes back.
    let b1 = &ca.topo.backends[0];
    ca.topo.client.ip(&format!("route add {}/32 via {LB_CLIENT_V4}", b1.v4));
    let cfg_b = TempFile::new(".yaml", &ca.acme_yaml(&[NAME]));
    let mut b = Xlb::start(XlbArgs { ns: Some(&b1.ns), iface: "eth0", config: Some(cfg_b.path()), specs: Vec::new(), other_ifaces: Vec::new() });
    wait_status(&b1.ns, &b, ca.pebble.as_ref(), NAME, Duration::from_secs(10), |s| s.state == "waiting");
    drop(lock);

    let sa = wait_status(&ca.topo.lb, &a, ca.pebble.as_ref(), NAME, ISSUE_TIMEOUT, |s| s.state == "issued");
    let sb = wait_status(&b1.ns, &b, ca.pebble.as_ref(), NAME, ISSUE_TIMEOUT, |s| s.state == "issued");
    eprintln!("ACME-FIGURE node a: {sa:?}\nACME-FIGURE node b: {sb:?}");
    assert_eq!(sa.orders + sb.orders, 1, "one order between the two nodes: a {sa:?}, b {sb:?}");
    assert_eq!(sa.expires, sb.expires, "the same certificate");
    assert_eq!(ca.pebble().orders(), 1, "{}", ca.pebble().log());
    let ordering = log_lines(&a, NAME, "ordering a certificate").len() + log_lines(&b, NAME, "ordering a certificate").len();
    assert_eq!(ordering, 1, "node a:\n{}\nnode b:\n{}", a.log(), b.log());
    assert!(cert_status(&b1.ns, NAME).is_some_and(|s| s.failures == 0));
    b.stop().unwrap_or_else(|e| panic!("{e}"));
    a.stop().unwrap_or_else(|e| panic!("{e}"));
}

/// A node that orders nothing answers the HTTP-01 challenges of another node sharing its
/// state directory: node b (in b1's namespace, which the name does not resolve to) orders,
/// pebble validates at node a (`acme:` with no names), and b's certificate is issued.
#[test]
fn a_node_answers_the_challenges_of_another() {
    let _g = xlb_tests::serial();
    xlb_tests::preflight();
    let ca = Ca::start();
    let (mut a, _cfg_a) = ca.start_xlb(&[]);
    let b1 = &ca.topo.backends[0];
    ca.topo.client.ip(&format!("route add {}/32 via {LB_CLIENT_V4}", b1.v4));
    let cfg_b = TempFile::new(".yaml", &ca.acme_yaml(&[NAME]));
    let mut b = Xlb::start(XlbArgs { ns: Some(&b1.ns), iface: "eth0", config: Some(cfg_b.path()), specs: Vec::new(), other_ifaces: Vec::new() });
    let sb = wait_status(&b1.ns, &b, ca.pebble.as_ref(), NAME, ISSUE_TIMEOUT, |s| s.state == "issued");
    assert_eq!((sb.orders, sb.failures), (1, 0), "{sb:?}");
    assert_eq!(cert_status(&ca.topo.lb, NAME), None, "node a keeps no certificate of its own");
    assert!(a.log().contains("http listener open"), "{}", a.log());
    b.stop().unwrap_or_else(|e| panic!("{e}"));
    a.stop().unwrap_or_else(|e| panic!("{e}"));
}
