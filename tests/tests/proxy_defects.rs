//! Issue 15's proxy defects against the real `xlb` binary (root, namespaces: client → LB →
//! backends b1..bN running xlb-testd), one test per expected behaviour:
//!
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
    topology::{LB_CLIENT_V4, TESTD_PORT},
    util::{TempFile, wait_for},
};

/// xlb's listener: the LB's address on the client link (no VIP in the configs below).
fn front(port: u16) -> SocketAddr {
    SocketAddr::from((LB_CLIENT_V4, port))
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
    assert_eq!(fields(&r.body, "x-forwarded-for"), [joined.clone()], "one field, every hop in order:\n{}", r.body);
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
