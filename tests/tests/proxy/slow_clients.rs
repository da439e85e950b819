//! Limits against slow and greedy clients (issue 17): slowloris and slow bodies from
//! real slowhttptest, connections per client address, a streamed body over `max_body`.
//! Each attack is bounded (connections, seconds) and comes from 127.0.0.1 while a normal
//! client on 127.0.0.2 keeps asking; the figures print with `--nocapture`.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    backends::{Testd, backend},
    client::Client,
    lb::Lb,
};

const NORMAL: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// One row of slowhttptest's CSV: seconds, closed, pending, connected.
#[derive(Debug, Clone, Copy)]
pub struct Tick {
    pub second: u32,
    pub closed: u32,
    pub connected: u32,
}

/// slowhttptest's slowloris (`-H`) and slow body (`-B`): a follow-up every second, of up
/// to 8 bytes, a body announcing 100,000 bytes.
const SLOW_SEND: [&str; 6] = ["-i", "1", "-x", "8", "-s", "100000"];

/// Runs slowhttptest against `url` (`mode`: `-H` slowloris, `-B` slow body, `-X` slow
/// read, with its `args`) with `conns` connections opened at `rate` per second, for
/// `secs`; returns its per-second counts, and whether it ended because the server had
/// closed every connection (else: at its time limit).
pub fn slowhttptest(url: &str, mode: &str, args: &[&str], conns: u32, rate: u32, secs: u32) -> (Vec<Tick>, bool) {
    let dir = xlb_tests::util::TempDir::new();
    let prefix = dir.path().join("slow");
    let out = Command::new("slowhttptest")
        .args([mode, "-g", "-o"])
        .arg(&prefix)
        .args(["-c", &conns.to_string(), "-r", &rate.to_string(), "-p", "2", "-l", &secs.to_string()])
        .args(args)
        .args(["-u", url])
        .output()
        .expect("slowhttptest (apt-get install slowhttptest, or cargo xtask setup)");
    let csv = std::fs::read_to_string(prefix.with_extension("csv"))
        .unwrap_or_else(|e| panic!("slowhttptest wrote no CSV ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    let ticks: Vec<Tick> = csv
        .lines()
        .skip(1)
        .filter_map(|l| {
            let v: Vec<u32> = l.split(',').map(|x| x.trim().parse().unwrap_or(0)).collect();
            (v.len() >= 4).then(|| Tick { second: v[0], closed: v[1], connected: v[3] })
        })
        .collect();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let exit = stdout.lines().find(|l| l.contains("Exit status")).unwrap_or("no exit status");
    let all_closed = exit.contains("No open connections left");
    assert!(all_closed || exit.contains("Hit test time limit"), "slowhttptest: {exit}\n{stdout}");
    assert!(ticks.len() >= 2, "slowhttptest ran {} s of {secs}: {csv}", ticks.len());
    (ticks, all_closed)
}

/// GETs from `from` on a new connection each, every 20 ms, until `stop`: (answered
/// 200, failed).
fn normal_client(addr: SocketAddr, from: Ipv4Addr, stop: Arc<AtomicBool>) -> thread::JoinHandle<(u32, Vec<String>)> {
    thread::spawn(move || {
        let (mut ok, mut failed) = (0, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            match Client::connect_from(addr, from).get("x", "/", &[]) {
                Ok(r) if r.status == 200 => ok += 1,
                Ok(r) => failed.push(format!("{}", r.status)),
                Err(e) => failed.push(e.to_string()),
            }
            thread::sleep(Duration::from_millis(20));
        }
        (ok, failed)
    })
}

/// Runs `attack` while a normal client asks; its counts.
pub fn under_attack<T>(addr: SocketAddr, attack: impl FnOnce() -> T) -> (T, u32, Vec<String>) {
    let stop = Arc::new(AtomicBool::new(false));
    let normal = normal_client(addr, NORMAL, stop.clone());
    let t = attack();
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = normal.join().unwrap();
    (t, ok, failed)
}

#[test]
fn slowloris_is_cut_at_client_header_and_held_to_its_address_share() {
    let t = Testd::start("t");
    // The attacker may hold half the listener; without the per-address limit its 300
    // connections would take all 120 and the normal client would get 503s.
    let lb = Lb::one("timeouts: { client_header: 1s }\nlimits: { max_connections: 120, max_connections_per_ip: 60 }", vec![t.view(1)]);
    let addr = lb.addr();
    let ((ticks, all_closed), ok, failed) = under_attack(addr, || slowhttptest(&format!("http://{addr}/"), "-H", &SLOW_SEND, 300, 150, 6));
    let most = ticks.iter().map(|t| t.connected).max().unwrap_or(0);
    let last = ticks.last().unwrap();
    eprintln!(
        "slowloris 300 conns at 150/s for 6 s: most connected {most}, closed {} by {} s; normal client {ok} answered, {} failed",
        last.closed,
        last.second,
        failed.len()
    );
    assert!(failed.is_empty(), "normal requests failed under slowloris: {failed:?}");
    assert!(ok >= 50, "only {ok} normal requests in 6 s");
    assert!(all_closed, "slowloris connections still open at the end of the attack: {ticks:?}");
    assert!(most < 120, "the attacker held the whole listener: {ticks:?}");
}

#[test]
fn slow_bodies_are_cut_under_min_body_rate() {
    let t = Testd::start("t");
    // A few bytes a second, never pausing for client_body: only the rate catches them.
    let run = |rate: u32| {
        let lb = Lb::one(&format!("timeouts: {{ client_body: 2s }}\nlimits: {{ min_body_rate: {rate} }}"), vec![t.view(1)]);
        let addr = lb.addr();
        let ((ticks, all_closed), ok, failed) = under_attack(addr, || slowhttptest(&format!("http://{addr}/"), "-B", &SLOW_SEND, 50, 50, 6));
        let last = *ticks.last().unwrap();
        eprintln!(
            "slow body, min_body_rate {rate}: all closed before the end: {all_closed}; at {} s {} connected, {} closed; normal client {ok} answered, {} failed",
            last.second,
            last.connected,
            last.closed,
            failed.len()
        );
        assert!(failed.is_empty(), "normal requests failed beside slow bodies: {failed:?}");
        (all_closed, last)
    };
    let (closed, last) = run(0);
    assert!(!closed && last.connected >= 45, "without a minimum rate the slow bodies should still be open at the end: {last:?}");
    let (closed, last) = run(500);
    assert!(closed, "slow bodies still open with min_body_rate 500 at the end of the attack: {last:?}");
}

#[test]
fn connections_per_client_address_are_limited() {
    let t = Testd::start("t");
    let lb = Lb::one("limits: { max_connections_per_ip: 3 }", vec![t.view(1)]);
    let addr = lb.addr();
    let a = Ipv4Addr::new(127, 0, 0, 3);
    // Three kept-alive connections from one address, each answered once.
    let mut held: Vec<Client> = (0..3).map(|_| Client::connect_from(addr, a)).collect();
    for c in &mut held {
        assert_eq!(c.get("x", "/", &[]).unwrap().status, 200);
    }
    let fourth = Client::connect_from(addr, a).get("x", "/", &[]);
    assert_eq!(fourth.as_ref().map(|r| r.status).ok(), Some(503), "a fourth connection from {a}: {fourth:?}");
    // Other addresses have their own three.
    for last in 4..=6 {
        let mut others: Vec<Client> = (0..3).map(|_| Client::connect_from(addr, Ipv4Addr::new(127, 0, 0, last))).collect();
        for c in &mut others {
            assert_eq!(c.get("x", "/", &[]).unwrap().status, 200, "from 127.0.0.{last}");
        }
    }
    // A closed connection gives its slot back.
    drop(held.pop());
    let t0 = Instant::now();
    let again = loop {
        let r = Client::connect_from(addr, a).get("x", "/", &[]).unwrap();
        if r.status == 200 || t0.elapsed() > Duration::from_secs(3) {
            break r.status;
        }
        thread::sleep(Duration::from_millis(20));
    };
    eprintln!("per-address limit 3: 4th refused 503, other addresses served, slot back after {:?}", t0.elapsed());
    assert_eq!(again, 200);
}

/// What a backend received of one request: its bytes, and whether the body ended.
struct Received {
    bytes: Vec<u8>,
    complete: bool,
}

/// A backend reading one chunked request per connection to its last chunk (then 200),
/// recording what it got either way.
fn chunk_recorder() -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = l.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    thread::spawn(move || {
        for c in l.incoming().take(20) {
            let Ok(mut c) = c else { continue };
            let g = g.clone();
            thread::spawn(move || {
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let (mut bytes, mut buf) = (Vec::new(), [0u8; 4096]);
                let complete = loop {
                    if bytes.windows(5).any(|w| w == b"0\r\n\r\n") {
                        let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
                        break true;
                    }
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break false,
                        Ok(n) => bytes.extend_from_slice(&buf[..n]),
                    }
                };
                g.lock().unwrap().push(Received { bytes, complete });
            });
        }
    });
    (addr, got)
}

#[test]
fn a_streamed_body_over_max_body_is_413_and_never_completes_at_the_backend() {
    let (backend_addr, got) = chunk_recorder();
    let lb = Lb::one("limits: { max_body: 1000, buffer_requests: false }", vec![backend("rec", backend_addr, 1)]);
    let addr = lb.addr();
    let head = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let chunk = [&b"12c\r\n"[..], &[b'a'; 300], b"\r\n"].concat();
    // Within the limit: three chunks of 300 reach the backend whole.
    let mut c = Client::connect(addr);
    c.send(head).unwrap();
    for _ in 0..3 {
        c.send(&chunk).unwrap();
    }
    c.send(b"0\r\n\r\n").unwrap();
    assert_eq!(c.read().unwrap().status, 200);
    // Over it: the backend has the head and the first chunks streamed before the fourth
    // arrives; the fourth takes the body to 1,200.
    for pause in [true, false] {
        let mut c = Client::connect(addr);
        c.send(head).unwrap();
        for _ in 0..4 {
            c.send(&chunk).unwrap();
            if pause {
                thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = c.send(b"0\r\n\r\n");
        let r = c.read();
        assert_eq!(r.as_ref().map(|r| r.status).ok(), Some(413), "{r:?} (paused between chunks: {pause})");
    }
    thread::sleep(Duration::from_millis(300));
    let got = got.lock().unwrap();
    let summary: Vec<(usize, bool)> = got.iter().map(|r| (r.bytes.len(), r.complete)).collect();
    eprintln!("backend got (bytes, complete): {summary:?}");
    assert_eq!(got.iter().filter(|r| r.complete).count(), 1, "only the body within max_body completes at the backend: {summary:?}");
    for r in got.iter().filter(|r| !r.complete) {
        let data = r.bytes.iter().filter(|&&b| b == b'a').count();
        assert!(data <= 1000, "the backend got {data} body bytes of a request over max_body");
    }
}

/// A request body of `chunk`-byte DATA frames, one every `every`, with no length
/// announced (so it is streamed, not checked by `Content-Length`).
struct Frames {
    left: usize,
    chunk: usize,
    every: Duration,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl hyper::body::Body for Frames {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        use std::task::Poll;
        if let Some(s) = self.sleep.as_mut() {
            if s.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        if !self.every.is_zero() {
            self.sleep = Some(Box::pin(tokio::time::sleep(self.every)));
        }
        Poll::Ready(Some(Ok(hyper::body::Frame::data(bytes::Bytes::from(vec![b'a'; self.chunk])))))
    }
}

/// HTTP/2 POSTs to `addr`, each with its body: the statuses, in order.
fn h2_posts(lb: &Lb, bodies: Vec<Frames>) -> Vec<u16> {
    let addr = lb.addr();
    lb.rt.block_on(async move {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).http2_only(true).build_http::<Frames>();
        let mut tasks = Vec::new();
        for body in bodies {
            let req = hyper::Request::post(format!("http://{addr}/up")).body(body).unwrap();
            let c = client.clone();
            tasks.push(tokio::spawn(async move { c.request(req).await.map(|r| r.status().as_u16()).unwrap_or(0) }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    })
}

#[test]
fn http2_streams_get_the_body_limits_too() {
    let (backend_addr, got) = chunk_recorder();
    let lb =
        Lb::one("timeouts: { client_body: 1s }\nlimits: { max_body: 1000, buffer_requests: false, min_body_rate: 200 }", vec![backend("rec", backend_addr, 1)]);
    let frames = |left, every| Frames { left, chunk: 300, every: Duration::from_millis(every), sleep: None };
    // Streamed over HTTP/2: 900 bytes pass, 1,200 are 413 (before, the backend got all
    // of it, chunked and complete).
    let statuses = h2_posts(&lb, vec![frames(3, 0), frames(4, 50)]);
    assert_eq!(statuses, [200, 413]);
    // 300 bytes, then waits of 1.2 s, longer than client_body: 408. Every 0.8 s: each
    // wait within client_body, and 375 B/s over min_body_rate: 200.
    let t0 = Instant::now();
    let statuses = h2_posts(&lb, vec![frames(3, 1200), frames(3, 800)]);
    eprintln!("h2: a paused body and a steady one, after {:?}: {statuses:?}", t0.elapsed());
    assert_eq!(statuses, [408, 200]);
    // 30 bytes every 0.5 s: never pausing a whole second, but 60 B/s.
    let slow = Frames { left: 8, chunk: 30, every: Duration::from_millis(500), sleep: None };
    assert_eq!(h2_posts(&lb, vec![slow]), [408]);
    thread::sleep(Duration::from_millis(300));
    let got = got.lock().unwrap();
    let summary: Vec<(usize, bool)> = got.iter().map(|r| (r.bytes.len(), r.complete)).collect();
    eprintln!("backend got (bytes, complete): {summary:?}");
    assert_eq!(got.iter().filter(|r| r.complete).count(), 2, "only the bodies within the limits complete at the backend: {summary:?}");
}

/// A backend answering each request (`Content-Length` bodies) after `delay`, so that the
/// requests of a test are in flight together.
fn slow_backend(delay: Duration) -> SocketAddr {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for c in l.incoming().take(100) {
            let Ok(c) = c else { continue };
            thread::spawn(move || {
                use std::io::BufRead;
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut w = c.try_clone().unwrap();
                let mut r = std::io::BufReader::new(c);
                loop {
                    let mut len = 0;
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    thread::sleep(delay);
                    let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
                }
            });
        }
    });
    addr
}

#[test]
fn buffered_bodies_of_a_listener_share_max_buffered_bodies() {
    let backend_addr = slow_backend(Duration::from_millis(1500));
    // Eight HTTP/2 streams of 300 KiB at once on one connection (before, each could hold
    // max_body, 128 streams a connection, with no cap over them): 1 MiB holds three.
    let eight = || (0..8).map(|_| Frames { left: 10, chunk: 30 * 1024, every: Duration::ZERO, sleep: None }).collect();
    let lb = Lb::one("limits: { max_body: 409600, max_buffered_bodies: 1048576 }", vec![backend("slow", backend_addr, 1)]);
    let statuses = h2_posts(&lb, eight());
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    eprintln!("8 x 300 KiB over HTTP/2 with max_buffered_bodies 1 MiB: {statuses:?}");
    assert!((1..=3).contains(&ok) && statuses.iter().all(|&s| s == 200 || s == 503), "{statuses:?}");
    // Given back once the requests ended.
    assert_eq!(h2_posts(&lb, eight().into_iter().take(3).collect()), [200, 200, 200]);
    // Room for all eight: all answered.
    let lb = Lb::one("limits: { max_body: 409600, max_buffered_bodies: 4194304 }", vec![backend("slow", backend_addr, 1)]);
    assert_eq!(h2_posts(&lb, eight()), [200; 8]);
}
