//! Issue 15's proxy defects against the real `xlb` binary (root, namespaces: client → LB →
//! backends b1..bN running xlb-testd), one test per expected behaviour:
//!
//! - #1, passive health a client cannot weaponise: a client hammering a path that answers
//!   503 ejects nothing; a dead backend is still ejected; never more than
//!   `max_ejection_percent` of the backends out; all out → all used (panic mode).
//! - #9, forwarding headers: several `X-Forwarded-For` fields joined in order before the
//!   peer is appended; a client's `Connection` cannot strip X-Forwarded-*, X-Real-IP or
//!   Forwarded (xlb-testd's `GET /echo` shows the head the backend got).
//!
//! Run with `XLB_BIN=$PWD/target/debug/xlb cargo test -p xlb-tests --test proxy_defects --
//! --test-threads=1`.

use std::{
    io::{BufReader, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use xlb_tests::{
    Topology, Xlb,
    http::{self, Response},
    topology::{LB_CLIENT_V4, TESTD_PORT, start_testd},
    util::{TempFile, wait_for},
};

/// xlb's listener: the LB's address on the client link (no VIP in the configs below).
fn front(port: u16) -> SocketAddr {
    SocketAddr::from((LB_CLIENT_V4, port))
}

/// Service `web` (HTTP on port 80) over every backend of `topo`, with these `http:` options
/// (a YAML flow mapping's inside).
fn web_yaml(topo: &Topology, http: &str) -> String {
    let backends: Vec<String> = topo.backends.iter().map(|b| format!("{{ address: \"{}\", port: {TESTD_PORT} }}", b.v4)).collect();
    format!("services:\n  - name: web\n    port: 80\n    protocol: http\n    backends: [{}]\n    http: {{ {http} }}\n", backends.join(", "))
}

fn start(topo: &Topology, yaml: &str) -> (Xlb, TempFile) {
    let cfg = TempFile::new(".yaml", yaml);
    let xlb = topo.start_xlb(Some(cfg.path()), &[]);
    let up = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        topo.client.enter(|| TcpStream::connect_timeout(&front(80), Duration::from_millis(500)).is_ok()).then_some(())
    });
    assert!(up.is_some(), "nothing listens on {}:\n{}", front(80), xlb.log());
    (xlb, cfg)
}

/// One `GET path` from the client on a new connection; the status.
fn status_of(topo: &Topology, path: &str) -> u16 {
    topo.client.enter(|| http::request(front(80), "GET", path)).map_or(0, |r| r.status)
}

/// The lines of xlb's log where the proxy took a backend out (health then logs its own).
fn ejections(xlb: &Xlb) -> Vec<String> {
    xlb.log().lines().filter(|l| l.contains("out for") && l.contains("proxy")).map(str::to_owned).collect()
}

/// #1: 60 requests for a path every backend answers 503 (each tried on three backends,
/// as 503 is retried) leave every backend in: the rest of the service keeps its full
/// round-robin spread, and nothing is ejected.
#[test]
fn a_client_hammering_a_503_path_ejects_nothing() {
    let _g = xlb_tests::serial();
    xlb_tests::preflight();
    let topo = Topology::builder().backends(3).build();
    let (mut xlb, _cfg) = start(&topo, &web_yaml(&topo, "method: round_robin"));
    let statuses: Vec<u16> = (0..60).map(|_| status_of(&topo, "/status/503")).collect();
    assert!(statuses.iter().all(|&s| s == 503), "the backends' own 503 goes to the client: {statuses:?}");
    let s = topo.spread(front(80), 30);
    eprintln!("after 60 x GET /status/503: 30 x GET / → {s}");
    assert!(s.errors.is_empty() && ["b1", "b2", "b3"].iter().all(|n| s.count(n) == 10), "full spread wanted after a 503 path was hammered: {s}\n{}", xlb.log());
    assert_eq!(ejections(&xlb), Vec::<String>::new(), "nothing ejected");
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}

/// #1: a backend that refuses connections is still taken out (five failures in a row by
/// default): every request is answered by the others, and once b2 listens again it gets
/// nothing until `fail_timeout` has passed.
#[test]
fn a_dead_backend_is_still_ejected() {
    let _g = xlb_tests::serial();
    xlb_tests::preflight();
    let mut topo = Topology::builder().backends(3).build();
    let (mut xlb, _cfg) = start(&topo, &web_yaml(&topo, "method: round_robin, fail_timeout: 30s"));
    drop(topo.backends[1].testd.take());
    let s = topo.spread(front(80), 30);
    eprintln!("b2 stopped: 30 x GET / → {s}");
    assert!(s.errors.is_empty() && s.count("b2") == 0 && s.total_ok() == 30, "{s}\n{}", xlb.log());
    let b2 = format!("backend={}", topo.backends[1].v4);
    assert!(ejections(&xlb).iter().any(|l| l.contains(&b2)), "b2 ejected ({b2}):\n{}", xlb.log());
    let b = &mut topo.backends[1];
    b.testd = Some(start_testd(&b.ns, &b.name, TESTD_PORT));
    let s = topo.spread(front(80), 20);
    eprintln!("b2 back, still ejected: 20 x GET / → {s}");
    assert!(s.errors.is_empty() && s.count("b2") == 0 && s.count("b1") == 10 && s.count("b3") == 10, "{s}\n{}", xlb.log());
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}

/// #1: with all four backends refusing connections, at most half are ejected
/// (`max_ejection_percent` 50, the default): once they listen again, the two left in
/// serve at once.
#[test]
fn max_ejection_percent_holds() {
    let _g = xlb_tests::serial();
    xlb_tests::preflight();
    let mut topo = Topology::builder().backends(4).build();
    let (mut xlb, _cfg) = start(&topo, &web_yaml(&topo, "method: round_robin, max_fails: 1, fail_timeout: 60s"));
    for b in &mut topo.backends {
        drop(b.testd.take());
    }
    let statuses: Vec<u16> = (0..8).map(|_| status_of(&topo, "/")).collect();
    assert!(statuses.iter().all(|&s| s == 502), "every backend down: {statuses:?}");
    let out = ejections(&xlb);
    eprintln!("all four stopped: ejections {out:#?}");
    assert_eq!(out.len(), 2, "two of four ejected, no more:\n{}", xlb.log());
    for b in &mut topo.backends {
        b.testd = Some(start_testd(&b.ns, &b.name, TESTD_PORT));
    }
    let s = topo.spread(front(80), 20);
    eprintln!("all back, two still ejected: 20 x GET / → {s}");
    assert!(s.errors.is_empty() && s.counts.len() == 2 && s.counts.values().all(|&n| n == 10), "{s}\n{}", xlb.log());
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}

/// #1: when every backend is out (here a 503 counts, one failure ejects, and no cap), the
/// requests still go to all of them (panic mode) instead of a 503 of xlb's own.
#[test]
fn panic_mode_uses_every_backend_when_all_are_out() {
    let _g = xlb_tests::serial();
    xlb_tests::preflight();
    let topo = Topology::builder().backends(3).build();
    let opts = "method: round_robin, max_fails: 1, fail_timeout: 60s, fail_statuses: [503], max_ejection_percent: 100";
    let (mut xlb, _cfg) = start(&topo, &web_yaml(&topo, opts));
    assert_eq!(status_of(&topo, "/status/503"), 503);
    let out = ejections(&xlb);
    assert_eq!(out.len(), 3, "one request tried all three, each 503 ejected one:\n{}", xlb.log());
    let s = topo.spread(front(80), 30);
    eprintln!("all three ejected: 30 x GET / → {s}");
    // About ten each: the retries of the first request moved round robin's weights.
    assert!(s.errors.is_empty() && s.total_ok() == 30 && ["b1", "b2", "b3"].iter().all(|n| s.count(n) >= 8), "panic mode: {s}\n{}", xlb.log());
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}

/// Sends `head` (a whole request head) from the client on a new connection.
fn raw_request(topo: &Topology, addr: SocketAddr, head: &str) -> Response {
    topo.client
        .enter(|| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(head.as_bytes())?;
            http::read_response(&mut BufReader::new(s))
        })
        .unwrap_or_else(|e| panic!("{addr}: {e}"))
}

/// The header fields named `name` in the head xlb-testd echoed (after the name line).
fn fields(echo: &str, name: &str) -> Vec<String> {
    echo.lines().skip(2).filter_map(|l| l.split_once(':')).filter(|(k, _)| k.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_owned()).collect()
}

/// #9: from a trusted peer, several `X-Forwarded-For` fields become one list in order
/// with the peer appended, and a `Connection` naming the forwarding headers strips none
/// of them (other named headers go, as hop-by-hop); from an untrusted peer, xlb's own
/// values are there whatever `Connection` names.
#[test]
fn forwarding_headers_are_joined_and_never_stripped() {
    let _g = xlb_tests::serial();
    xlb_tests::preflight();
    let topo = Topology::builder().backends(1).build();
    let b1 = format!("{{ address: \"{}\", port: {TESTD_PORT} }}", topo.backends[0].v4);
    let yaml = format!(
        "services:\n  - name: trusted\n    port: 80\n    protocol: http\n    backends: [{b1}]\n    http: {{ trusted_networks: [10.200.1.0/24] }}\n  \
         - name: open\n    port: 81\n    protocol: http\n    backends: [{b1}]\n"
    );
    let (mut xlb, _cfg) = start(&topo, &yaml);
    let client = "10.200.1.2";
    let xff = "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 198.51.100.9, 10.200.1.77\r\n";
    let others = "X-Forwarded-Proto: https\r\nX-Forwarded-Host: shop.example\r\nX-Real-IP: 203.0.113.7\r\nForwarded: for=203.0.113.7\r\n";
    let named = "Connection: keep-alive, X-Forwarded-For, X-Real-IP, X-Forwarded-Proto, X-Forwarded-Host, Forwarded, X-Drop\r\nX-Drop: 1\r\n";
    let joined = format!("203.0.113.7, 198.51.100.9, 10.200.1.77, {client}");

    // Trusted, no Connection tokens: the fields joined, the peer appended.
    let r = raw_request(&topo, front(80), &format!("GET /echo HTTP/1.1\r\nHost: app.dev\r\n{xff}{others}\r\n"));
    eprintln!("trusted, two X-Forwarded-For fields; the backend got:\n{}", r.body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(fields(&r.body, "x-forwarded-for"), [joined.as_str()], "one field, every hop in order:\n{}", r.body);
    assert_eq!(fields(&r.body, "x-real-ip"), ["198.51.100.9"], "the rightmost untrusted hop:\n{}", r.body);

    // Trusted, Connection naming them all: nothing of them stripped; X-Drop is.
    let r = raw_request(&topo, front(80), &format!("GET /echo HTTP/1.1\r\nHost: app.dev\r\n{xff}{others}{named}\r\n"));
    eprintln!("trusted, Connection names the forwarding headers; the backend got:\n{}", r.body);
    assert_eq!(fields(&r.body, "x-forwarded-for"), [joined], "{}", r.body);
    assert_eq!(fields(&r.body, "x-real-ip"), ["198.51.100.9"], "{}", r.body);
    assert_eq!(fields(&r.body, "x-forwarded-proto"), ["https"], "{}", r.body);
    assert_eq!(fields(&r.body, "x-forwarded-host"), ["shop.example"], "{}", r.body);
    assert_eq!(fields(&r.body, "forwarded"), ["for=203.0.113.7"], "{}", r.body);
    assert_eq!(fields(&r.body, "x-drop"), Vec::<String>::new(), "a named end-to-end header is hop-by-hop:\n{}", r.body);

    // Untrusted: the client's values replaced by xlb's, which its Connection cannot strip.
    let r = raw_request(&topo, front(81), &format!("GET /echo HTTP/1.1\r\nHost: app.dev\r\n{xff}{others}{named}\r\n"));
    eprintln!("untrusted, Connection names the forwarding headers; the backend got:\n{}", r.body);
    assert_eq!(fields(&r.body, "x-forwarded-for"), [client], "{}", r.body);
    assert_eq!(fields(&r.body, "x-real-ip"), [client], "{}", r.body);
    assert_eq!(fields(&r.body, "x-forwarded-proto"), ["http"], "{}", r.body);
    assert_eq!(fields(&r.body, "x-forwarded-host"), ["app.dev"], "{}", r.body);
    assert_eq!(fields(&r.body, "forwarded"), Vec::<String>::new(), "{}", r.body);
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}
