//! A backend that records the exact bytes each connection brings, and a strict HTTP/1.1
//! request parser written apart from xlb's guard: the oracle that says whether what a
//! proxy forwarded reads one way only.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::backends::serve_loopback;

/// How a forwarded request's body was framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// One request read strictly from a proxy's output.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub host: Option<String>,
    pub framing: Framing,
    pub body: Vec<u8>,
    pub expect: bool,
}

enum Parse {
    Complete(Request, usize),
    Partial { head_done: bool, expect: bool },
    Bad(String),
}

fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn bad<T>(why: &str) -> Result<T, String> {
    Err(why.to_string())
}

/// `b` split at each CRLF (a bare CR or LF stays inside its line).
fn crlf_lines(b: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(b);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.windows(2).position(|w| w == b"\r\n") {
            Some(i) => {
                rest = Some(&r[i + 2..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// The head's fields after the strict rules; `Err` names the first rule broken.
fn read_head(head: &[u8]) -> Result<(Request, bool), String> {
    let text = &head[..head.len() - 4];
    let mut lines = crlf_lines(text);
    let line = lines.next().unwrap_or_default();
    if line.contains(&b'\r') || line.contains(&b'\n') {
        return bad("bare CR or LF");
    }
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let [method, target, version] = parts[..] else { return bad("request line is not METHOD SP TARGET SP VERSION") };
    if method.is_empty() || !method.iter().all(|&b| tchar(b)) {
        return bad("bad method");
    }
    if target.is_empty() || !target.iter().all(|&b| (0x21..0x7f).contains(&b)) {
        return bad("bad target");
    }
    let http11 = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        _ => return bad("bad version"),
    };
    let (mut cl, mut te, mut hosts, mut expect) = (Vec::new(), Vec::new(), Vec::new(), false);
    for l in lines {
        if l.contains(&b'\r') || l.contains(&b'\n') {
            return bad("bare CR or LF");
        }
        let Some(colon) = l.iter().position(|&b| b == b':') else { return bad("field without a colon") };
        let (name, value) = (&l[..colon], &l[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| tchar(b)) {
            return bad("bad field name (or obs-fold)");
        }
        if !value.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)) {
            return bad("control character in a field value");
        }
        let value = String::from_utf8_lossy(value.trim_ascii()).into_owned();
        match name.to_ascii_lowercase().as_slice() {
            b"content-length" => cl.push(value),
            b"transfer-encoding" => te.push(value),
            b"host" => hosts.push(value),
            b"expect" => expect |= value.eq_ignore_ascii_case("100-continue"),
            _ => {}
        }
    }
    let framing = match (&cl[..], &te[..]) {
        ([], []) => Framing::None,
        ([n], []) if !n.is_empty() && n.len() <= 18 && n.bytes().all(|b| b.is_ascii_digit()) => Framing::Length(n.parse().unwrap()),
        ([], [t]) if t.eq_ignore_ascii_case("chunked") && http11 => Framing::Chunked,
        _ => return Err(format!("ambiguous framing: content-length {cl:?}, transfer-encoding {te:?}")),
    };
    if hosts.len() > 1 || (http11 && hosts.is_empty()) {
        return Err(format!("host fields {hosts:?}"));
    }
    let req = Request {
        method: String::from_utf8_lossy(method).into(),
        target: String::from_utf8_lossy(target).into(),
        host: hosts.pop(),
        framing,
        body: Vec::new(),
        expect,
    };
    Ok((req, expect))
}

/// A chunked body at the start of `b`: the data and the bytes it took, `None` if
/// incomplete.
fn read_chunked(b: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let (mut at, mut body) = (0, Vec::new());
    loop {
        let Some(eol) = b[at..].windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
        let line = &b[at..at + eol];
        let digits = line.iter().take_while(|c| c.is_ascii_hexdigit()).count();
        let rest = &line[digits..];
        if digits == 0 || digits > 15 || !(rest.is_empty() || rest[0] == b';' && rest.iter().all(|&c| (0x21..0x7f).contains(&c))) {
            return Err(format!("bad chunk size line {:?}", String::from_utf8_lossy(line)));
        }
        let size = usize::from_str_radix(std::str::from_utf8(&line[..digits]).unwrap(), 16).unwrap();
        at += eol + 2;
        if size == 0 {
            // Trailer fields, then the blank line.
            loop {
                let Some(eol) = b[at..].windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
                let field = &b[at..at + eol];
                at += eol + 2;
                if field.is_empty() {
                    return Ok(Some((body, at)));
                }
                let name_end = field.iter().position(|&c| c == b':').unwrap_or(0);
                if name_end == 0 || !field[..name_end].iter().all(|&c| tchar(c)) || field.iter().any(|&c| c < 0x20 && c != b'\t') {
                    return Err("bad trailer field".into());
                }
            }
        }
        if b.len() < at + size + 2 {
            return Ok(None);
        }
        if &b[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        body.extend_from_slice(&b[at..at + size]);
        at += size + 2;
    }
}

fn parse(b: &[u8]) -> Parse {
    let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
        return match b
            .iter()
            .enumerate()
            .find(|&(i, &c)| (c == b'\n' && (i == 0 || b[i - 1] != b'\r')) || (c == b'\r' && b.get(i + 1).is_some_and(|&n| n != b'\n')))
        {
            Some(_) => Parse::Bad("bare CR or LF".into()),
            None => Parse::Partial { head_done: false, expect: false },
        };
    };
    let (mut req, expect) = match read_head(&b[..end + 4]) {
        Ok(r) => r,
        Err(e) => return Parse::Bad(e),
    };
    let rest = &b[end + 4..];
    let used = match req.framing {
        Framing::None => 0,
        Framing::Length(n) if (rest.len() as u64) < n => return Parse::Partial { head_done: true, expect },
        Framing::Length(n) => {
            req.body = rest[..n as usize].to_vec();
            n as usize
        }
        Framing::Chunked => match read_chunked(rest) {
            Ok(Some((body, used))) => {
                req.body = body;
                used
            }
            Ok(None) => return Parse::Partial { head_done: true, expect },
            Err(e) => return Parse::Bad(e),
        },
    };
    Parse::Complete(req, end + 4 + used)
}

/// Every request in one connection's bytes, read strictly; `Err` if anything is left
/// that is not a complete, unambiguous request.
pub fn requests(mut b: &[u8]) -> Result<Vec<Request>, String> {
    let mut out = Vec::new();
    while !b.is_empty() {
        match parse(b) {
            Parse::Complete(r, used) => {
                out.push(r);
                b = &b[used..];
            }
            Parse::Partial { .. } => return Err(format!("{} bytes of an incomplete request", b.len())),
            Parse::Bad(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The recording backend: answers the first complete request of each connection with
/// 200 and `Connection: close`, then keeps reading (and recording) until the proxy
/// closes, so bytes smuggled behind that request are seen too.
pub struct Recorder {
    pub addr: SocketAddr,
    done: Arc<Mutex<Vec<Vec<u8>>>>,
    open: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Recorder {
    pub fn start() -> Recorder {
        let (done, open) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicUsize::new(0)));
        let (d, o) = (done.clone(), open.clone());
        let (addr, stop) = serve_loopback(move |c| {
            o.fetch_add(1, Ordering::SeqCst);
            let (d, o) = (d.clone(), o.clone());
            thread::spawn(move || {
                let bytes = record(c).unwrap_or_default();
                d.lock().unwrap().push(bytes);
                o.fetch_sub(1, Ordering::SeqCst);
            });
        });
        Recorder { addr, done, open, stop }
    }

    /// The bytes of each connection that ended since the last call, once every open
    /// connection ended (at most 3 s).
    pub fn take(&self) -> Vec<Vec<u8>> {
        let t0 = Instant::now();
        while self.open.load(Ordering::SeqCst) > 0 && t0.elapsed() < Duration::from_secs(3) {
            thread::sleep(Duration::from_millis(5));
        }
        std::mem::take(&mut *self.done.lock().unwrap())
    }
}

const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";

/// One connection: its bytes, until the proxy closes or stays quiet.
fn record(mut c: TcpStream) -> io::Result<Vec<u8>> {
    c.set_read_timeout(Some(Duration::from_millis(50)))?;
    let (mut bytes, mut buf) = (Vec::new(), [0u8; 16 * 1024]);
    let (mut answered, mut continued, mut last) = (false, false, Instant::now());
    loop {
        match c.read(&mut buf) {
            Ok(0) => return Ok(bytes),
            Ok(n) => {
                bytes.extend_from_slice(&buf[..n]);
                last = Instant::now();
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                // Quiet: after the answer 300 ms ends it, before it 3 s.
                let quiet = if answered { Duration::from_millis(300) } else { Duration::from_secs(3) };
                if last.elapsed() > quiet {
                    return Ok(bytes);
                }
                continue;
            }
            Err(_) => return Ok(bytes),
        }
        if answered {
            continue;
        }
        match parse(&bytes) {
            Parse::Complete(..) => {
                c.write_all(ANSWER)?;
                let _ = c.shutdown(Shutdown::Write);
                answered = true;
            }
            Parse::Bad(_) => {
                c.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
                let _ = c.shutdown(Shutdown::Write);
                answered = true;
            }
            Parse::Partial { head_done: true, expect: true } if !continued => {
                c.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
                continued = true;
            }
            Parse::Partial { .. } => {}
        }
    }
}

/// The oracle itself: what it must refuse, so the differential test can fail.
#[test]
fn the_oracle_reads_one_way_only() {
    let ok = requests(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!((ok.len(), ok[0].body.as_slice(), &ok[0].framing), (2, &b"hello"[..], &Framing::Chunked));
    for bad in [
        &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /smuggled",
        b"GET / HTTP/1.1\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
    ] {
        assert!(requests(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
}
