//! Limits past the HTTP/1 guard (issue 17): an HTTP/2 connection (by preface or by
//! `Upgrade: h2c`) that holds no stream is closed after `keepalive`, a tunnel after
//! `101` with no byte either way after `idle`, and the h2c switch does not wait for
//! (and buffer) a SETTINGS frame longer than a peer must accept.

use std::{
    io::Read,
    thread,
    time::{Duration, Instant},
};

use crate::{
    backends::{Behaviour, RawBackend, Testd},
    client::{Client, H2_GET, H2_START},
    lb::Lb,
    websocket::{ws_read, ws_write},
};

const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n\r\n";

/// Reads until the proxy closes; how long that took from `t0`, `None` past `limit`.
fn closed_after(c: &mut Client, t0: Instant, limit: Duration) -> Option<Duration> {
    c.w.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buf = [0u8; 4096];
    while t0.elapsed() < limit {
        match c.r.read(&mut buf) {
            Ok(0) => return Some(t0.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Some(t0.elapsed()),
        }
    }
    None
}

/// Reads the `101` head of an h2c switch.
fn switched(c: &mut Client) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(c.r.read(&mut b).unwrap(), 1, "closed before the 101 ended: {:?}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{:?}", String::from_utf8_lossy(&head));
}

#[test]
fn idle_http2_connections_are_closed_after_keepalive() {
    let t = Testd::start("t");
    let lb = Lb::one("timeouts: { keepalive: 400ms }", vec![t.view(1)]);
    let addr = lb.addr();
    // Prior knowledge, a preface and nothing more: before, only hyper's keep-alive ping
    // (30 s, then 20 s for the answer) ended it, and never for a client that answers.
    let mut c = Client::connect(addr);
    let t0 = Instant::now();
    c.send(H2_START).unwrap();
    let took = closed_after(&mut c, t0, Duration::from_secs(5)).expect("an HTTP/2 connection without streams stays open");
    eprintln!("h2 preface only: closed after {took:?}");
    assert!(took >= Duration::from_millis(350), "{took:?}");
    // One request answered on stream 1, then idle.
    let mut c = Client::connect(addr);
    c.send(&[H2_START, H2_GET].concat()).unwrap();
    let took = closed_after(&mut c, Instant::now(), Duration::from_secs(5)).expect("an idle HTTP/2 connection stays open");
    eprintln!("h2 after one request: closed after {took:?}");
    // By `Upgrade: h2c`: stream 1 answered, then idle.
    let mut c = Client::connect(addr);
    c.send(UPGRADE).unwrap();
    switched(&mut c);
    c.send(H2_START).unwrap();
    let took = closed_after(&mut c, Instant::now(), Duration::from_secs(5)).expect("an idle h2c connection stays open");
    eprintln!("h2c after stream 1: closed after {took:?}");
}

#[test]
fn h2c_does_not_wait_for_a_16_mib_settings_frame() {
    let t = Testd::start("t");
    // keepalive long enough that only the refusal can end it within the test's 3 s.
    let lb = Lb::one("timeouts: { keepalive: 20s }", vec![t.view(1)]);
    let mut c = Client::connect(lb.addr());
    c.send(UPGRADE).unwrap();
    switched(&mut c);
    // A SETTINGS frame header announcing 16 MiB - 1, and a little of it.
    c.send(&[&H2_START[..H2_START.len() - 9], &[0xff, 0xff, 0xff, 0x04, 0, 0, 0, 0, 0], &[0u8; 600][..]].concat()).unwrap();
    let took = closed_after(&mut c, Instant::now(), Duration::from_secs(3)).expect("the proxy holds the connection, waiting for a 16 MiB frame");
    eprintln!("h2c with a 16 MiB SETTINGS frame: closed after {took:?}");
}

#[test]
fn idle_tunnels_are_closed_after_idle() {
    let ws = RawBackend::start("ws", Behaviour::WsEcho);
    let lb = Lb::one("timeouts: { idle: 500ms, keepalive: 200ms }", vec![ws.view()]);
    let mut c = Client::connect(lb.addr());
    c.send(b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    assert_eq!(c.read().unwrap().status, 101);
    // Traffic every 200 ms keeps it open well past `idle` (and `keepalive`).
    let (t0, mut last) = (Instant::now(), Instant::now());
    while t0.elapsed() < Duration::from_millis(1500) {
        thread::sleep(Duration::from_millis(200));
        ws_write(&mut c.w, 1, b"ping", Some([1, 2, 3, 4])).unwrap();
        assert_eq!(ws_read(&mut c.r).unwrap().map(|f| f.1), Some(b"ping".to_vec()), "cut while in use");
        last = Instant::now();
    }
    let took = closed_after(&mut c, last, Duration::from_secs(5)).expect("an idle tunnel stays open");
    eprintln!("idle tunnel: closed {took:?} after its last byte");
    assert!(took >= Duration::from_millis(400), "{took:?}");
}
