//! The HTTP/1.1 side: one thread per connection, keep-alive, the endpoints of the crate's doc.

use crate::signals::LAME_DUCK;
use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::TcpStream,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::Duration,
};

const MAX_HEADER_BYTES: usize = 16 * 1024;
const MAX_BODY_BYTES: u64 = 1024 * 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_STREAM_SECS: u64 = 3600;
const MAX_DELAY_MS: u64 = 600_000;
const MAX_BYTES: usize = 16 << 20;

pub struct State {
    pub name: String,
    pub healthy: AtomicBool,
    pub delay_ms: AtomicU64,
    pub quiet: bool,
}

struct Request {
    pub method: String,
    pub target: String,
    pub keep_alive: bool,
    /// The request line and header lines as received, for `GET /echo`.
    pub head: String,
}

/// Reads one request (head and body). `Ok(None)`: the client closed the connection between
/// requests.
fn read_request(r: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let mut head_bytes = 0usize;
    let mut line = String::new();
    // Tolerate empty lines before a request line (RFC 9112 2.2).
    loop {
        line.clear();
        let n = r.read_line(&mut line)?;
        if n == 0 {
            return Ok(None);
        }
        head_bytes += n;
        if !line.trim().is_empty() {
            break;
        }
        if head_bytes > MAX_HEADER_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "header too large"));
        }
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad request line {line:?}")));
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut head = line.clone();
    let http10 = version.eq_ignore_ascii_case("HTTP/1.0");
    let mut keep_alive = !http10;
    let mut content_length = 0u64;
    loop {
        line.clear();
        let n = r.read_line(&mut line)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in headers"));
        }
        head_bytes += n;
        if head_bytes > MAX_HEADER_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "header too large"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        head.push_str(&line);
        let Some((k, v)) = l.split_once(':') else { continue };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            content_length = v.parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
        } else if k.eq_ignore_ascii_case("connection") {
            for tok in v.split(',').map(str::trim) {
                if tok.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if tok.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "transfer-encoding unsupported"));
        }
    }
    if content_length > MAX_BODY_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"));
    }
    io::copy(&mut r.by_ref().take(content_length), &mut io::sink())?;
    Ok(Some(Request { method, target, keep_alive, head }))
}

fn respond(w: &mut TcpStream, status: u16, body: &str, keep_alive: bool) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Unknown",
    };
    let msg = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: {}\r\n\r\n{body}",
        body.len(),
        if keep_alive { "keep-alive" } else { "close" },
    );
    w.write_all(msg.as_bytes())?;
    w.flush()
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| match kv.split_once('=') {
        Some((k, v)) if k == key => Some(v),
        _ => None,
    })
}

pub fn serve_conn(stream: TcpStream, state: &State) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    while let Some(req) = read_request(&mut r)? {
        let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
        // A lame duck answers, but closes the connection after the answer: a client with a
        // pooled connection then reconnects, and the load balancer sends it elsewhere.
        let lame = LAME_DUCK.load(Ordering::SeqCst);
        let ka = req.keep_alive && !lame;
        match (req.method.as_str(), path) {
            ("GET", "/") => {
                let ms = state.delay_ms.load(Ordering::Relaxed);
                if ms > 0 {
                    thread::sleep(Duration::from_millis(ms));
                }
                respond(&mut w, 200, &format!("{}\n", state.name), ka)?;
            }
            ("GET", "/health") => {
                if lame {
                    respond(&mut w, 503, "lame-duck\n", ka)?;
                } else if state.healthy.load(Ordering::Relaxed) {
                    respond(&mut w, 200, "ok\n", ka)?;
                } else {
                    respond(&mut w, 503, "fail\n", ka)?;
                }
            }
            ("POST", "/health/fail") => {
                state.healthy.store(false, Ordering::Relaxed);
                respond(&mut w, 200, "fail\n", ka)?;
            }
            ("POST", "/health/ok") => {
                state.healthy.store(true, Ordering::Relaxed);
                respond(&mut w, 200, "ok\n", ka)?;
            }
            ("POST", p) if p.starts_with("/delay/") => match p["/delay/".len()..].parse::<u64>() {
                Ok(ms) if ms <= MAX_DELAY_MS => {
                    state.delay_ms.store(ms, Ordering::Relaxed);
                    respond(&mut w, 200, &format!("delay {ms}\n"), ka)?;
                }
                _ => respond(&mut w, 400, "bad delay\n", ka)?,
            },
            ("GET", "/echo") => respond(&mut w, 200, &format!("{}\n{}", state.name, req.head), ka)?,
            ("GET", p) if p.starts_with("/status/") => match p["/status/".len()..].parse::<u16>() {
                Ok(code) if (400..=599).contains(&code) => respond(&mut w, code, &format!("{}\n", state.name), ka)?,
                _ => respond(&mut w, 400, "bad status\n", ka)?,
            },
            ("GET", p) if p.starts_with("/bytes/") => match p["/bytes/".len()..].parse::<usize>() {
                Ok(n) if n <= MAX_BYTES => respond(&mut w, 200, &"x".repeat(n), ka)?,
                _ => respond(&mut w, 400, "bad length\n", ka)?,
            },
            ("GET", "/stream") => {
                let secs = match query_param(query, "secs").map(str::parse::<u64>) {
                    None => 10,
                    Some(Ok(s)) if s <= MAX_STREAM_SECS => s,
                    Some(_) => {
                        respond(&mut w, 400, "bad secs\n", ka)?;
                        continue;
                    }
                };
                return stream_lines(&mut w, &state.name, secs);
            }
            (_, "/" | "/health" | "/health/fail" | "/health/ok" | "/stream") => respond(&mut w, 405, "method not allowed\n", ka)?,
            _ => respond(&mut w, 404, "not found\n", ka)?,
        }
        if !ka {
            break;
        }
    }
    Ok(())
}

/// A close-delimited response: a line every 100 ms, then `NAME done`, then close.
fn stream_lines(w: &mut TcpStream, name: &str, secs: u64) -> io::Result<()> {
    w.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: no-cache\r\n\
          Connection: close\r\n\r\n",
    )?;
    for i in 0..secs * 10 {
        w.write_all(format!("{name} {i}\n").as_bytes())?;
        w.flush()?;
        thread::sleep(Duration::from_millis(100));
    }
    w.write_all(format!("{name} done\n").as_bytes())?;
    w.flush()?;
    w.shutdown(std::net::Shutdown::Write)?;
    // Let the client read everything and close first, so no RST races the last bytes.
    let mut sink = [0u8; 512];
    let _ = w.set_read_timeout(Some(Duration::from_secs(2)));
    while matches!(w.read(&mut sink), Ok(n) if n > 0) {}
    Ok(())
}
