//! Backend faults under a bounded wrk load (issue 17): a backend paused (SIGSTOP) then
//! resumed, and a backend that resets every connection. A GET is idempotent, so the
//! design promises no failed request: a try without an answer within `timeouts.header`,
//! or reset before one, goes to another backend, and passive health takes the faulty one
//! out. wrk's own counts are printed (`--nocapture`) and asserted.

use std::{
    io::Read,
    net::SocketAddr,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use xlb_tests::wrk::{self, Wrk};

use crate::{
    backends::{Testd, backend, serve_loopback},
    lb::Lb,
};

/// wrk against `addr`: `conns` connections for `secs`.
fn wrk(addr: SocketAddr, conns: u32, secs: u32) -> Wrk {
    let mut cmd = Command::new("wrk");
    cmd.args(wrk::args(&format!("http://{addr}/"), conns, secs));
    wrk::run(cmd)
}

#[test]
fn a_paused_backend_costs_no_request() {
    let (a, b) = (Testd::start("a"), Testd::start("b"));
    // A try without a head within 1 s goes to the other backend; two such take the
    // paused one out (for fail_timeout, 10 s).
    let lb = Lb::one("timeouts: { header: 1s }\nmax_fails: 2\nfail_on: [connect, error, timeout]", vec![a.view(1), b.view(1)]);
    let addr = lb.addr();
    let pid = b._proc.pid() as i32;
    let load = thread::spawn(move || wrk(addr, 8, 6));
    thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) of a child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    thread::sleep(Duration::from_secs(2));
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let w = load.join().unwrap();
    eprintln!("backend paused 2 s of 6 under wrk -c 8: {w:?}");
    assert_eq!(w.failed(), 0, "{w:?}");
    // Some requests waited for the paused backend's header timeout, then went to `a`.
    assert!(w.latency_max >= Duration::from_secs(1), "no request met the paused backend: {w:?}");
    assert!(lb.failures().len() >= 2, "the paused backend was not reported: {:?}", lb.failures());
}

/// A backend that accepts, reads a little and resets (SO_LINGER 0): every try on it
/// fails before an answer.
fn resetter() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicBool>) {
    let resets = Arc::new(AtomicUsize::new(0));
    let r = resets.clone();
    let (addr, stop) = serve_loopback(move |mut c| {
        c.set_nonblocking(false).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let _ = c.read(&mut [0u8; 1024]);
        let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
        r.fetch_add(1, Ordering::Relaxed);
    });
    (addr, resets, stop)
}

#[test]
fn a_backend_resetting_connections_costs_no_request() {
    let a = Testd::start("a");
    let (raddr, resets, stop) = resetter();
    // fail_timeout short, so it comes back (and resets again) during the load.
    let lb = Lb::one("max_fails: 2\nfail_timeout: 1s", vec![a.view(1), backend("rst", raddr, 1)]);
    let w = wrk(lb.addr(), 8, 5);
    stop.store(true, Ordering::Relaxed);
    let resets = resets.load(Ordering::Relaxed);
    eprintln!("a backend resetting every connection under wrk -c 8 for 5 s: {w:?}; resets {resets}; failures reported: {}", lb.failures().len());
    assert_eq!(w.failed(), 0, "{w:?}");
    assert!(resets >= 2, "the resetting backend was tried {resets} times");
}
