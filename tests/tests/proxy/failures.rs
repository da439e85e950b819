//! Retries, timeouts, connection pooling and passive health.

use std::{
    collections::BTreeMap,
    io::Read,
    thread,
    time::{Duration, Instant},
};

use crate::{
    backends::{Behaviour, RawBackend, Testd, backend, dead_addr, stuck_listener},
    client::{Client, get, raw, tally_ok},
    lb::Lb,
};
use xlb::proxy::FailureKind;

#[test]
fn connect_failures_retry_elsewhere_and_feed_passive_health() {
    let ok = Testd::start("ok");
    let lb = Lb::one("method: round_robin\nmax_fails: 1\nfail_timeout: 30s", vec![backend("dead", dead_addr(), 1), ok.view(1)]);
    let addr = lb.addr();
    let t = tally_ok(addr, 20);
    assert_eq!(t, BTreeMap::from([("ok".into(), 20)]));
    let f = lb.failures();
    eprintln!("connect failures reported: {f:?}");
    // One failure took it out for fail_timeout: it is not tried again.
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!((f[0].backend.as_str(), f[0].kind, f[0].max_fails), ("dead", FailureKind::Connect, 1));
    // POST is retried too after a connect failure: nothing was sent.
    let lb = Lb::one("method: round_robin\nmax_fails: 0", vec![backend("dead", dead_addr(), 1), ok.view(1)]);
    let (r, _) = raw(lb.addr(), b"POST /delay/0 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(r.unwrap().status, 200);
    // Nothing else to try: a clean 502 page.
    let lb = Lb::one("max_fails: 0", vec![backend("dead", dead_addr(), 1)]);
    let r = get(lb.addr(), "x", "/", &[]);
    assert_eq!((r.status, r.text().as_str()), (502, "502 Bad Gateway\n"));
}

#[test]
fn bad_gateway_answers_retry_only_idempotent_requests() {
    let bad = RawBackend::start("bad", Behaviour::Status(503));
    let good = RawBackend::start("good", Behaviour::Status(200));
    let lb = Lb::one("method: round_robin\nmax_fails: 0", vec![bad.view(), good.view()]);
    let addr = lb.addr();
    let t = tally_ok(addr, 10);
    assert_eq!(t, BTreeMap::from([("good".into(), 10)]));
    assert_eq!(bad.heads().len(), 5, "every other GET tried bad first");
    // A POST that reached bad is not replayed: the client gets bad's 503.
    let statuses: Vec<u16> = (0..4).map(|_| raw(addr, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi").0.unwrap().status).collect();
    assert_eq!(statuses.iter().filter(|&&s| s == 503).count(), 2, "{statuses:?}");
    // All backends failing: bounded tries, then the last answer.
    let lb = Lb::one("retries: { attempts: 5 }\nmax_fails: 0", vec![bad.view()]);
    let before = bad.heads().len();
    assert_eq!(get(lb.addr(), "x", "/", &[]).status, 503);
    assert_eq!(bad.heads().len() - before, 1, "a retry goes to another backend only");
    // Nothing usable at all: 503 page.
    let lb = Lb::one("", vec![]);
    let r = get(lb.addr(), "x", "/", &[]);
    assert_eq!((r.status, r.text().as_str()), (503, "503 Service Unavailable\n"));
}

/// A GET through `lb` is answered with the proxy's 504 once `timeout` (the configured
/// `what`) has passed: not before it (less 10 ms of timer slack), and before `limit`.
fn assert_504_after(lb: &Lb, what: &str, timeout: Duration, limit: Duration) {
    let t0 = Instant::now();
    let r = get(lb.addr(), "x", "/", &[]);
    let took = t0.elapsed();
    eprintln!("{what} {timeout:?}: {} after {took:?}", r.status);
    assert_eq!((r.status, r.text().as_str()), (504, "504 Gateway Timeout\n"));
    assert!(took >= timeout - Duration::from_millis(10) && took < limit, "{took:?}");
}

#[test]
fn connect_timeout_is_504_and_retries_elsewhere() {
    let stuck = stuck_listener();
    let ok = Testd::start("ok");
    let lb = Lb::one("timeouts: { connect: 200ms }\nretries: { attempts: 0 }\nmax_fails: 0", vec![backend("stuck", stuck.2, 1)]);
    assert_504_after(&lb, "connect timeout", Duration::from_millis(200), Duration::from_millis(1000));
    assert_eq!(lb.failures().iter().map(|f| f.kind).collect::<Vec<_>>(), [FailureKind::Connect]);
    // With another backend the request goes there after the connect timeout.
    let lb = Lb::one("method: round_robin\ntimeouts: { connect: 200ms }\nmax_fails: 0", vec![backend("stuck", stuck.2, 1), ok.view(1)]);
    let names: Vec<String> = (0..4).map(|_| get(lb.addr(), "x", "/", &[]).name()).collect();
    assert_eq!(names, ["ok", "ok", "ok", "ok"]);
    assert_eq!(lb.failures().len(), 2, "every other request tried stuck first");
}

/// Retries are bounded by `attempts` (each on another backend) and wait a random time
/// in `[0, min(max_backoff, backoff·2^(n−1))]` before retry n. Timings are compared with
/// a run without backoff, interleaved request by request, by medians and quartiles: the
/// host may be loaded by other tests.
#[test]
fn retries_are_bounded_with_jittered_backoff() {
    let bad: Vec<RawBackend> = (0..4).map(|i| RawBackend::start(&format!("bad{i}"), Behaviour::Status(503))).collect();
    let views = || bad.iter().map(RawBackend::view).collect::<Vec<_>>();
    let tries = || bad.iter().map(|b| b.heads().len()).sum::<usize>();
    let timed = |lb: &Lb| -> u128 {
        let before = tries();
        let t0 = Instant::now();
        let r = get(lb.addr(), "x", "/", &[]);
        let took = t0.elapsed().as_millis();
        assert_eq!(r.status, 503, "the last backend's own answer");
        assert_eq!(tries() - before, 3, "the first try and 2 retries, never a 4th");
        took
    };
    let lb = |retries: &str| Lb::one(&format!("method: round_robin\nmax_fails: 0\nretries: {{ attempts: 2, {retries} }}"), views());
    let none = lb("backoff: 0s");
    // Two retries after U(0, 100 ms) each: 0..200 ms more, median 100.
    let jittered = lb("backoff: 100ms, max_backoff: 100ms");
    // 1 s doubling, capped at 30 ms: 0..60 ms more.
    let capped = lb("backoff: 1s, max_backoff: 30ms");
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..20 {
        a.push(timed(&none));
        b.push(timed(&jittered));
        if i % 2 == 0 {
            c.push(timed(&capped));
        }
    }
    let quartiles = |v: &mut Vec<u128>| {
        v.sort_unstable();
        (v[v.len() / 4], v[v.len() / 2], v[v.len() * 3 / 4])
    };
    let ((_, a2, _), (b1, b2, b3), (_, c2, _)) = (quartiles(&mut a), quartiles(&mut b), quartiles(&mut c));
    eprintln!("3 tries each, ms: no backoff {a:?}\nbackoff U(0,100ms) per retry {b:?}\nbackoff 1s capped at 30ms {c:?}");
    eprintln!("medians: {a2} / {b2} / {c2} ms; jittered quartiles {b1}..{b3} ms");
    assert!(b2 >= a2 + 40, "the backoff waits: median {b2} ms against {a2} without");
    assert!(b2 <= a2 + 200, "bounded: median {b2} ms against {a2} without");
    assert!(b3 - b1 >= 25, "jittered, not a fixed wait: quartiles {b1}..{b3} ms");
    assert!(c2 <= a2 + 150, "max_backoff caps it: median {c2} ms against {a2} without (uncapped: about 1500 more)");
}

#[test]
fn backend_connections_are_pooled() {
    let b = RawBackend::start("pooled", Behaviour::Status(200));
    let lb = Lb::one("", vec![b.view()]);
    // 30 requests, each on a new client connection.
    for _ in 0..30 {
        assert_eq!(get(lb.addr(), "x", "/", &[]).status, 200);
    }
    eprintln!("30 requests from 30 client connections: {} backend connection(s)", b.conns());
    assert_eq!(b.heads().len(), 30);
    assert!(b.conns() <= 3, "kept alive and reused: {} connections", b.conns());
}

#[test]
fn header_and_total_timeouts() {
    let (slow, fast) = (Testd::start("slow"), Testd::start("fast"));
    slow.delay(2000);
    // Header timeout, no retries: 504 after about the timeout.
    let lb = Lb::one("timeouts: { header: 300ms }\nretries: { attempts: 0 }\nmax_fails: 0", vec![slow.view(1)]);
    assert_504_after(&lb, "header timeout", Duration::from_millis(300), Duration::from_millis(1500));
    // With a retry the fast backend answers.
    let lb = Lb::one("method: round_robin\ntimeouts: { header: 300ms }\nmax_fails: 0", vec![slow.view(1), fast.view(1)]);
    let t0 = Instant::now();
    let names: Vec<String> = (0..2).map(|_| get(lb.addr(), "x", "/", &[]).name()).collect();
    assert_eq!(names, ["fast", "fast"]);
    assert!(t0.elapsed() < Duration::from_millis(1500), "{:?}", t0.elapsed());
    assert!(lb.failures().iter().all(|f| f.kind == FailureKind::Timeout && f.backend == "slow"));
    // Total timeout across tries.
    fast.delay(2000);
    let lb = Lb::one("timeouts: { total: 500ms }\nmax_fails: 0", vec![slow.view(1), fast.view(1)]);
    let t0 = Instant::now();
    let r = get(lb.addr(), "x", "/", &[]);
    let took = t0.elapsed();
    eprintln!("total timeout 500ms: {} after {took:?}", r.status);
    assert_eq!(r.status, 504);
    assert!(took < Duration::from_millis(1200), "{took:?}");
}

#[test]
fn idle_response_timeout_cuts_a_stalled_body() {
    let t = Testd::start("s");
    // /stream writes a line every 100 ms: an idle timeout of 1 s lets it through, 50 ms not.
    let lb = Lb::one("timeouts: { idle: 1s }", vec![t.view(1)]);
    let r = get(lb.addr(), "x", "/stream?secs=1", &[]);
    assert!(r.text().ends_with("s done\n"), "{:?}", r.text());
    let lb = Lb::one("timeouts: { idle: 50ms }", vec![t.view(1)]);
    let mut c = Client::connect(lb.addr());
    c.send(b"GET /stream?secs=2 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let r = c.read();
    assert!(r.is_err() || !r.unwrap().text().contains("done"), "a stalled body is cut off");
}

#[test]
fn a_client_that_stops_reading_is_cut_off() {
    const SIZE: usize = 64 << 20;
    let big = RawBackend::start("big", Behaviour::Big(SIZE));
    let lb = Lb::one("timeouts: { idle: 300ms }", vec![big.view()]);
    let mut c = Client::connect(lb.addr());
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // Read nothing while the buffers fill and the proxy waits.
    thread::sleep(Duration::from_millis(2000));
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        match c.r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    eprintln!("a client that stopped reading got {got} of {SIZE} bytes");
    assert!(got < SIZE, "the whole body arrived");
}
