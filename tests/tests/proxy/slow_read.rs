//! Slow readers of a response (issue 17): slowhttptest's slow read (`-X`: a tiny
//! receive window, a little read now and then) against `limits.min_send_rate`, while a
//! normal client keeps asking and an honest client that reads slowly but steadily gets
//! its whole download. `limits.send_buffer` caps the socket buffer so that loopback's
//! (megabytes) does not absorb the response, as a WAN path's smaller one would not.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use crate::{
    backends::Testd,
    lb::Lb,
    slow_clients::{slowhttptest, under_attack},
};

/// The response each slow reader asks for: far more than the socket buffer holds.
const BIG: usize = 1 << 20;
/// The attack's second at which, without a minimum send rate, its readers must still hold
/// their connections (with the rate, they are cut by about second 5).
const HELD_AT: u32 = 7;

/// Reads `path` of `addr` at about `rate` bytes a second, through a small receive buffer;
/// the bytes of the body received, and how long it took.
fn steady_download(addr: SocketAddr, path: &str, rate: usize) -> (usize, Duration) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let t0 = Instant::now();
    let (mut got, mut buf) = (Vec::new(), vec![0u8; rate / 10]);
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        thread::sleep(Duration::from_millis(100));
    }
    let body = got.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |p| got.len() - p - 4);
    (body, t0.elapsed())
}

#[test]
fn slow_readers_are_cut_under_min_send_rate_and_steady_ones_are_not() {
    let t = Testd::start("t");
    // Each slow reader takes 1 KiB a second through a window of at most 1 KiB: enough
    // that the full socket frees room well within `idle`, so "nothing taken for idle"
    // (nginx's send_timeout, all xlb had before) never fires.
    let attack = ["-w", "512", "-y", "1024", "-n", "1", "-z", "1024", "-k", "1"];
    let run = |rate: u32| {
        let lb = Lb::one(&format!("timeouts: {{ idle: 3s }}\nlimits: {{ send_buffer: 4096, min_send_rate: {rate} }}"), vec![t.view(1)]);
        let addr = lb.addr();
        let url = format!("http://{addr}/bytes/{BIG}");
        let honest = thread::spawn(move || steady_download(addr, &format!("/bytes/{}", 256 * 1024), 64 * 1024));
        let ((ticks, all_closed), ok, failed) = under_attack(addr, || slowhttptest(&url, "-X", &attack, 20, 20, 10));
        let (body, took) = honest.join().unwrap();
        let last = *ticks.last().unwrap();
        eprintln!(
            "slow read, min_send_rate {rate}: all closed before the end: {all_closed}; at {} s (the last second logged) {} connected, {} closed; \
             normal client {ok} answered, {} failed; steady reader at 64 KiB/s got {body} of 262144 in {took:?}",
            last.second,
            last.connected,
            last.closed,
            failed.len()
        );
        assert!(failed.is_empty(), "normal requests failed beside slow readers: {failed:?}");
        assert!(ok >= 50, "only {ok} normal requests in 10 s");
        assert_eq!(body, 256 * 1024, "the steady reader lost its download (min_send_rate {rate})");
        (all_closed, ticks)
    };
    // Without a rate the attack holds its connections well past the point where the rate
    // cuts them (about second 5); near the attack's end (10 s) other clocks may end a few.
    let (_, ticks) = run(0);
    let held = ticks.iter().rev().find(|t| t.second <= HELD_AT).copied().unwrap();
    assert!(held.connected >= 15, "without a minimum rate the slow readers should still be connected at {HELD_AT} s: {held:?}");
    let (closed, ticks) = run(4096);
    let last = ticks.last().unwrap();
    assert!(closed, "slow readers still connected with min_send_rate 4096 at the end of the attack: {last:?}");
}
