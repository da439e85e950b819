//! The client side of a case: raw bytes out, raw bytes back, and what answers those
//! bytes hold.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

/// One step of a case's conversation.
pub enum Step {
    Send(Vec<u8>),
    /// Waits (at most 1 s) for the proxy to say something: an interim `100 Continue`,
    /// or the answer to an upgrade.
    Await,
    /// Sends only if the proxy switched protocols (`101`).
    SendIf101(Vec<u8>),
}

/// Reads what is there within `wait`; false at end of file.
fn read_some(s: &mut TcpStream, into: &mut Vec<u8>, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 16 * 1024];
    match s.read(&mut buf) {
        Ok(0) => false,
        Ok(n) => {
            into.extend_from_slice(&buf[..n]);
            true
        }
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => true,
        Err(_) => false,
    }
}

/// Plays `steps` against `addr` and returns what came back; reads until the proxy closes, `want` final answers
/// came, a 4xx or 5xx came\n/// or HTTP/2 began (then after 300 ms of quiet), or after 2 s of silence.
pub fn exchange(addr: SocketAddr, steps: &[Step], want: usize) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut got = Vec::new();
    for step in steps {
        match step {
            // A write may fail once the proxy refused and closed: what it said still counts.
            Step::Send(b) => drop(s.write_all(b)),
            Step::SendIf101(b) if got.starts_with(b"HTTP/1.1 101") => drop(s.write_all(b)),
            Step::SendIf101(_) => {}
            Step::Await => {
                let t0 = Instant::now();
                while got.is_empty() && t0.elapsed() < Duration::from_secs(1) && read_some(&mut s, &mut got, Duration::from_millis(50)) {}
            }
        }
    }
    let mut last = Instant::now();
    loop {
        let before = got.len();
        if !read_some(&mut s, &mut got, Duration::from_millis(50)) {
            return got;
        }
        if got.len() > before {
            last = Instant::now();
        }
        let answers = answers(&got);
        let finals = answers.iter().filter(|a| a.status >= 200).count();
        let refused = answers.iter().any(|a| a.status >= 400);
        // Once the answers are in (or HTTP/2 began), 300 ms of quiet ends it, else 2 s.
        let done = finals >= want || refused || answers.iter().any(|a| a.status == 101) || !got.is_empty() && !got.starts_with(b"HTTP/");
        let quiet = if done { Duration::from_millis(300) } else { Duration::from_secs(2) };
        if last.elapsed() > quiet {
            return got;
        }
    }
}

/// The proxy answered with an HTTP/2 SETTINGS frame (to the preface), not in HTTP/1.
pub fn is_h2(b: &[u8]) -> bool {
    b.len() >= 9 && b[3] == 4 && !b.starts_with(b"HTTP/")
}

/// One complete answer in a client's bytes.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
}

/// The complete answers at the start of `b` (after a `101`, nothing more is read).
pub fn answers(mut b: &[u8]) -> Vec<Answer> {
    let mut out = Vec::new();
    while let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&b[..end]).to_ascii_lowercase();
        let Some(status) = head.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()) else { break };
        out.push(Answer { status });
        b = &b[end + 4..];
        if status < 200 || status == 204 || status == 304 {
            if status == 101 {
                break;
            }
            continue;
        }
        let field = |name: &str| head.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()));
        if let Some(n) = field("content-length:").and_then(|v| v.parse::<usize>().ok()) {
            if b.len() < n {
                out.pop();
                break;
            }
            b = &b[n..];
        } else if field("transfer-encoding:").is_some_and(|t| t == "chunked") {
            let Some(end) = b.windows(5).position(|w| w == b"0\r\n\r\n") else {
                out.pop();
                break;
            };
            b = &b[end + 5..];
        } else {
            b = &[];
        }
    }
    out
}
