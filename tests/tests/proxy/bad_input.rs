//! Bad input: smuggling shapes, size limits, slow or idle clients, connection limits,
//! garbage; and listeners that follow updates.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::{
    backends::{Behaviour, RawBackend, Testd},
    client::{Client, get, raw},
    lb::{LISTEN, Lb, svc},
};

/// Each smuggling attempt is answered 400 by the proxy and never reaches a backend.
#[test]
fn smuggling_attempts_are_400_and_never_forwarded() {
    let echo = RawBackend::start("echo", Behaviour::EchoHead);
    let lb = Lb::one("", vec![echo.view()]);
    let addr = lb.addr();
    let cases: &[(&str, &[u8])] = &[
        ("CL.TE", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"),
        ("TE.CL", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n"),
        ("duplicate CL", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"),
        ("conflicting CL", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
        ("CL list", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc"),
        ("CL sign", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc"),
        ("CL space before colon", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length : 3\r\n\r\nabc"),
        ("TE not chunked", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        ("TE list", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        ("TE in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("bad chunk size", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n\r\n"),
        ("chunk size with space", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n"),
        ("chunk size overflow", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000003\r\nabc\r\n0\r\n\r\n"),
        ("chunk without CRLF", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX0\r\n\r\n"),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"),
        ("bare LF in head", b"GET / HTTP/1.1\nHost: x\n\n"),
        ("bare LF ending a header", b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n"),
        ("bare CR", b"GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n"),
        ("bare LF in chunk size", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n"),
        ("NUL in value", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n"),
        ("no Host", b"GET / HTTP/1.1\r\n\r\n"),
        ("two Hosts", b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"),
        ("double space", b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("bad version", b"GET / HTTP/1.2\r\nHost: x\r\n\r\n"),
    ];
    let mut report = Vec::new();
    for (what, bytes) in cases {
        let (r, closed) = raw(addr, bytes);
        let r = r.unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
        report.push(format!("{what}: {}", r.status));
        assert_eq!(r.status, 400, "{what}: {r:?}");
        assert!(closed, "{what}: the connection stays open");
        assert_eq!(r.header("connection").as_deref(), Some("close"), "{what}");
        assert!(r.text().starts_with("400 Bad Request"), "{what}: {:?}", r.text());
    }
    eprintln!("{}", report.join("\n"));
    assert_eq!(echo.heads(), Vec::<String>::new(), "nothing reached the backend");
    // Smuggled behind a good request: the good one is answered, the bad one refused.
    let mut c = Client::connect(addr);
    c.send(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").unwrap();
    assert_eq!(c.read().unwrap().status, 200);
    assert_eq!(c.read().unwrap().status, 400);
    assert_eq!(echo.heads().len(), 1);
    assert!(echo.heads()[0].starts_with("GET /first "));
    // The proxy still serves.
    assert_eq!(get(addr, "x", "/", &[]).status, 200);
}

#[test]
fn size_limits_are_414_431_413() {
    let echo = RawBackend::start("echo", Behaviour::EchoHead);
    let lb = Lb::one("limits: { max_request_line: 256, max_header_bytes: 2048, max_headers: 20, max_body: 1000 }", vec![echo.view()]);
    let addr = lb.addr();
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(300));
    let big_header = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(3000));
    let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{}\r\n", (0..25).map(|i| format!("X-{i}: v\r\n")).collect::<String>());
    let big_body = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{}", "c".repeat(5000));
    let chunked_big =
        format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n", "100\r\n".to_string() + &"d".repeat(256) + "\r\n").repeat(1);
    let chunked_big = chunked_big.replace("0\r\n\r\n", "") + &("100\r\n".to_string() + &"d".repeat(256) + "\r\n").repeat(4) + "0\r\n\r\n";
    for (what, req, want) in [
        ("long URI", long_uri, 414),
        ("big header", big_header, 431),
        ("many headers", many, 431),
        ("big body", big_body, 413),
        ("big chunked body", chunked_big, 413),
    ] {
        let (r, _) = raw(addr, req.as_bytes());
        let r = r.unwrap_or_else(|e| panic!("{what}: {e}"));
        eprintln!("{what}: {}", r.status);
        assert_eq!(r.status, want, "{what}");
    }
    assert!(echo.heads().is_empty());
    // Within limits: fine.
    let ok = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{}", "c".repeat(1000));
    assert_eq!(raw(addr, ok.as_bytes()).0.unwrap().status, 200);
}

#[test]
fn slow_headers_and_idle_keepalive_are_cut_off() {
    let t = Testd::start("t");
    let lb = Lb::one("timeouts: { client_header: 400ms, keepalive: 300ms }", vec![t.view(1)]);
    let addr = lb.addr();
    // Slowloris: a head that never ends, a byte at a time.
    let mut c = Client::connect(addr);
    let t0 = Instant::now();
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut cut = None;
    for i in 0..40 {
        if c.send(format!("X-{i}: y\r\n").as_bytes()).is_err() {
            break;
        }
        thread::sleep(Duration::from_millis(50));
        if t0.elapsed() > Duration::from_millis(450) {
            cut = Some(c.read());
            break;
        }
    }
    let took = t0.elapsed();
    let r = cut.expect("still sending").expect("an answer");
    eprintln!("slow header sender: {} after {took:?}", r.status);
    assert_eq!(r.status, 408);
    assert!(c.closed_within(Duration::from_secs(2)));
    // Nothing at all sent: closed after client_header.
    let mut c = Client::connect(addr);
    let t0 = Instant::now();
    assert!(c.closed_within(Duration::from_secs(2)));
    assert!(t0.elapsed() >= Duration::from_millis(350), "{:?}", t0.elapsed());
    // Idle keep-alive: closed after keepalive.
    let mut c = Client::connect(addr);
    assert_eq!(c.get("x", "/", &[]).unwrap().status, 200);
    let t0 = Instant::now();
    assert!(c.closed_within(Duration::from_secs(2)));
    let idle = t0.elapsed();
    eprintln!("idle keep-alive closed after {idle:?}");
    assert!(idle >= Duration::from_millis(250) && idle < Duration::from_millis(1500), "{idle:?}");
}

#[test]
fn connection_limit_holds() {
    let t = Testd::start("t");
    let lb = Lb::one("limits: { max_connections: 3 }", vec![t.view(1)]);
    let addr = lb.addr();
    let mut held: Vec<Client> = (0..3).map(|_| Client::connect(addr)).collect();
    for c in &mut held {
        assert_eq!(c.get("x", "/", &[]).unwrap().status, 200);
    }
    let (r, closed) = raw(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let status = r.map(|r| r.status).unwrap_or(0);
    eprintln!("4th connection over a limit of 3: status {status}, closed {closed}");
    assert!(status == 503 || status == 0, "{status}");
    assert!(closed);
    held.pop();
    thread::sleep(Duration::from_millis(100));
    assert_eq!(get(addr, "x", "/", &[]).status, 200, "a freed slot serves again");
}

#[test]
fn garbage_never_kills_the_proxy() {
    let t = Testd::start("t");
    let lb = Lb::one("timeouts: { client_header: 300ms }", vec![t.view(1)]);
    let addr = lb.addr();
    // A deterministic generator: xorshift.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let seeds: [&[u8]; 5] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"",
    ];
    let answered = AtomicUsize::new(0);
    for i in 0..150 {
        let mut bytes = seeds[i % seeds.len()].to_vec();
        let n = (next() % 300) as usize;
        bytes.extend((0..n).map(|_| {
            let r = next();
            if r % 4 == 0 { b"\r\n: \t\x00"[(r >> 8) as usize % 6] } else { (r >> 16) as u8 }
        }));
        let mut c = Client::connect(addr);
        let _ = c.send(&bytes);
        let _ = c.w.shutdown(std::net::Shutdown::Write);
        if c.read().is_ok() {
            answered.fetch_add(1, Ordering::Relaxed);
        }
    }
    eprintln!("garbage: 150 connections, {} got an HTTP answer", answered.load(Ordering::Relaxed));
    assert_eq!(get(addr, "x", "/", &[]).status, 200);
}

#[test]
fn listeners_follow_updates() {
    let t = Testd::start("t");
    let lb = Lb::one("", vec![t.view(1)]);
    let addr = lb.addr();
    assert_eq!(get(addr, "x", "/", &[]).status, 200);
    let second: SocketAddr = "127.0.0.2:0".parse().unwrap();
    let mut s2 = svc("two", "", vec![t.view(1)]);
    s2.listen = second;
    lb.update(vec![s2]);
    let addr2 = lb.proxy.local_addr(second).unwrap();
    assert_eq!(get(addr2, "x", "/", &[]).name(), "t");
    assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err() || lb.proxy.local_addr(LISTEN.parse().unwrap()).is_none());
    assert!(matches!(addr2.ip(), IpAddr::V4(ip) if ip == Ipv4Addr::new(127, 0, 0, 2)));
}
