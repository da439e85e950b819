//! Graceful stop and reload of the HTTP proxy (issue 15 #7), with the real binary in the
//! namespace topology and real client connections:
//!
//! - `sigterm_lets_requests_in_flight_finish`: a request the backend answers after 2.5 s is
//!   in flight when xlb gets SIGTERM: it completes with 200, an idle keep-alive connection is
//!   closed at once, a new connection is refused, and xlb exits 0 right after the answer;
//! - `a_moved_listener_drains_while_the_new_one_serves`: a reload moves the service from
//!   port 8081 to 8082 while a slow request is in flight on 8081: 8082 serves at once, 8081
//!   refuses new connections, the request in flight completes with 200;
//! - `the_drain_is_bounded`: with `timeouts.drain: 1s`, a request that would take 5 s is cut
//!   and xlb exits about 1 s after SIGTERM.
//!
//! Needs root and `XLB_BIN`; run with
//! `XLB_BIN=$PWD/target/debug/xlb cargo test -p xlb-tests --test graceful -- --test-threads=1`.

use std::{
    io::{self, BufReader, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use xlb_tests::{
    Topology,
    http::{self, Response},
    topology::{LB_CLIENT_V4, TESTD_PORT},
    util::{TempFile, wait_for},
};

/// The backend's delay before it answers `GET /`, in ms.
const SLOW_MS: u64 = 2500;

fn setup() -> (xlb_tests::Serial, Topology) {
    let g = xlb_tests::serial();
    xlb_tests::preflight();
    (g, Topology::builder().backends(1).build())
}

/// One HTTP service `api` on the LB's client address, port `port`, before `backend`.
fn config(port: u16, backend: IpAddr, drain: &str) -> String {
    format!(
        "services:\n  - name: api\n    port: {port}\n    protocol: http\n    \
         backends: [{{ address: \"{backend}\", port: {TESTD_PORT} }}]\n    http: {{ timeouts: {{ drain: {drain} }} }}\n"
    )
}

fn listen(port: u16) -> SocketAddr {
    (LB_CLIENT_V4, port).into()
}

/// Makes the backend answer `GET /` after `ms` (its other paths stay immediate).
fn set_delay(topo: &Topology, ms: u64) {
    let addr = SocketAddr::new(topo.ip("b1", false), TESTD_PORT);
    let r = topo.lb.enter(|| http::request(addr, "POST", &format!("/delay/{ms}")));
    assert_eq!(r.map(|r| r.status).ok(), Some(200), "setting the backend's delay");
}

/// A connection from the client namespace.
fn connect(topo: &Topology, addr: SocketAddr) -> io::Result<TcpStream> {
    topo.client.enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
}

/// Sends `GET path` (keep-alive) on `s` and reads the answer.
fn get(s: &TcpStream, path: &str) -> io::Result<Response> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    (&*s).write_all(format!("GET {path} HTTP/1.1\r\nHost: api\r\nContent-Length: 0\r\n\r\n").as_bytes())?;
    http::read_response(&mut BufReader::new(s))
}

/// `GET /` on a new connection from a thread, started now: the answer, and when it came.
fn in_flight(topo: &Topology, addr: SocketAddr) -> thread::JoinHandle<(io::Result<Response>, Instant)> {
    let s = connect(topo, addr).expect("connecting for the slow request");
    let h = thread::spawn(move || (get(&s, "/"), Instant::now()));
    // The request reaches the backend, which sleeps on it.
    thread::sleep(Duration::from_millis(500));
    h
}

/// Whether the peer closed `s` within `within` (a read returns end of file).
fn closed_within(s: &TcpStream, within: Duration) -> Result<(), String> {
    s.set_read_timeout(Some(within)).map_err(|e| e.to_string())?;
    match (&*s).read(&mut [0u8; 64]) {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!("{n} unexpected bytes")),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(()),
        Err(e) => Err(format!("not closed within {within:?}: {e}")),
    }
}

fn refused(r: io::Result<TcpStream>) -> Result<(), String> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
        Err(e) => Err(format!("failed, but not refused: {e}")),
        Ok(_) => Err("accepted".into()),
    }
}

#[test]
fn sigterm_lets_requests_in_flight_finish() {
    let (_g, topo) = setup();
    let cfg = TempFile::new(".yaml", &config(8081, topo.ip("b1", false), "10s"));
    let mut xlb = topo.start_xlb(Some(cfg.path()), &[]);
    let addr = listen(8081);
    let idle = connect(&topo, addr).expect("connecting the keep-alive connection");
    assert_eq!(get(&idle, "/").map(|r| r.body).ok().as_deref(), Some("b1\n"), "a first request on the keep-alive connection");

    set_delay(&topo, SLOW_MS);
    let slow = in_flight(&topo, addr);
    let sent = Instant::now();
    let (idle_closed, new_conn) = xlb
        .stop_while(|| {
            thread::sleep(Duration::from_millis(300));
            (closed_within(&idle, Duration::from_millis(500)), refused(connect(&topo, addr)))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let exited = Instant::now();
    let (answer, answered) = slow.join().expect("the slow request's thread");
    let log = xlb.log();
    assert_eq!(answer.as_ref().map(|r| (r.status, r.body.as_str())).ok(), Some((200, "b1\n")), "the request in flight at SIGTERM: {answer:?}\nlog:\n{log}");
    assert!(idle_closed.is_ok(), "the idle keep-alive connection while draining: {idle_closed:?}");
    assert!(new_conn.is_ok(), "a new connection while draining: {new_conn:?}");
    // Waited for the answer (2.5 s after the request), and not much longer.
    let after_answer = exited.saturating_duration_since(answered);
    assert!(exited > answered && after_answer < Duration::from_millis(1500), "xlb exited {after_answer:?} after the last answer\nlog:\n{log}");
    assert!(log.contains("HTTP connections finished"), "no drain logged:\n{log}");
    println!("GRACEFUL-FIGURE sigterm: exited {:?} after SIGTERM, {after_answer:?} after the answer in flight", exited - sent);
}

#[test]
fn a_moved_listener_drains_while_the_new_one_serves() {
    let (_g, topo) = setup();
    let b1 = topo.ip("b1", false);
    let cfg = TempFile::new(".yaml", &config(8081, b1, "10s"));
    let mut xlb = topo.start_xlb(Some(cfg.path()), &[]);
    set_delay(&topo, SLOW_MS);
    let slow = in_flight(&topo, listen(8081));

    let from = xlb.log().lines().count();
    cfg.write(&config(8082, b1, "10s"));
    let moved =
        wait_for(Duration::from_secs(3), Duration::from_millis(20), || xlb.log().lines().skip(from).any(|l| l.contains("http listener closed")).then_some(()));
    assert!(moved.is_some(), "the reload did not close the old listener; log:\n{}", xlb.log());
    let new_port = connect(&topo, listen(8082)).and_then(|s| get(&s, "/health"));
    assert_eq!(new_port.as_ref().map(|r| r.status).ok(), Some(200), "the new listener: {new_port:?}");
    assert!(!slow.is_finished(), "the request in flight ended before the new listener was checked");
    let old_port = refused(connect(&topo, listen(8081)));
    assert!(old_port.is_ok(), "a new connection to the old listener: {old_port:?}");

    let (answer, _) = slow.join().expect("the slow request's thread");
    assert_eq!(
        answer.as_ref().map(|r| (r.status, r.body.as_str())).ok(),
        Some((200, "b1\n")),
        "the request in flight on the old listener: {answer:?}\nlog:\n{}",
        xlb.log()
    );
    xlb.assert_running();
    set_delay(&topo, 0);
    assert_eq!(topo.get(listen(8082)).as_deref(), Ok("b1"), "the new listener after the drain");
}

#[test]
fn the_drain_is_bounded() {
    let (_g, topo) = setup();
    let cfg = TempFile::new(".yaml", &config(8081, topo.ip("b1", false), "1s"));
    let mut xlb = topo.start_xlb(Some(cfg.path()), &[]);
    set_delay(&topo, 5000);
    let slow = in_flight(&topo, listen(8081));
    let sent = Instant::now();
    xlb.stop_while(|| ()).unwrap_or_else(|e| panic!("{e}"));
    let took = sent.elapsed();
    let (answer, _) = slow.join().expect("the slow request's thread");
    assert!(answer.is_err(), "a request longer than the drain was answered: {answer:?}");
    assert!((Duration::from_millis(900)..Duration::from_millis(2500)).contains(&took), "xlb took {took:?} to exit with drain 1s\nlog:\n{}", xlb.log());
    println!("GRACEFUL-FIGURE bounded: exited {took:?} after SIGTERM with drain 1s and a 5 s request in flight");
}
