//! Minimal HTTP/1.1 and UDP clients for xlb-testd, used from the calling thread's network
//! namespace (wrap calls in [`crate::NetNs::enter`] to run them from a namespace), plus a curl
//! wrapper.

use std::{
    collections::BTreeMap,
    fmt,
    io::{self, BufRead, BufReader, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use crate::netns::NetNs;

/// Per-request timeout of the helpers below (connect, and each read).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads one response (Content-Length or close-delimited body).
pub fn read_response(r: &mut impl BufRead) -> io::Result<Response> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before the response"));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {line:?}")))?;
    let mut len = None;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in headers"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':')
            && k.trim().eq_ignore_ascii_case("content-length") {
                len = Some(v.trim().parse::<usize>().map_err(|_| invalid("bad content-length"))?);
            }
    }
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body)?;
        }
        None => {
            r.read_to_end(&mut body)?;
        }
    }
    Ok(Response { status, body: String::from_utf8_lossy(&body).into_owned() })
}

fn host_header(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(ip) => format!("{ip}:{}", addr.port()),
        IpAddr::V6(ip) => format!("[{ip}]:{}", addr.port()),
    }
}

/// A keep-alive HTTP connection.
pub struct Conn {
    addr: SocketAddr,
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Conn {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.set_nodelay(true)?;
        Ok(Conn { addr, w: s.try_clone()?, r: BufReader::new(s) })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.w.local_addr()
    }

    /// Sends one request and reads its response.
    pub fn request(&mut self, method: &str, path: &str, close: bool) -> io::Result<Response> {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: xlb-tests\r\nContent-Length: 0\r\n\
             Connection: {}\r\n\r\n",
            host_header(self.addr),
            if close { "close" } else { "keep-alive" }
        );
        self.w.write_all(req.as_bytes())?;
        read_response(&mut self.r)
    }
}

/// One request on a new connection (`Connection: close`).
pub fn request(addr: SocketAddr, method: &str, path: &str) -> io::Result<Response> {
    Conn::connect(addr, REQUEST_TIMEOUT)?.request(method, path, true)
}

/// `GET /` on a new connection; the backend's name.
pub fn get_name(addr: SocketAddr) -> Result<String, String> {
    get_name_with_port(addr).1
}

/// [`get_name`], with the source port the connection used (once it connected).
fn get_name_with_port(addr: SocketAddr) -> (Option<u16>, Result<String, String>) {
    let mut conn = match Conn::connect(addr, REQUEST_TIMEOUT) {
        Ok(c) => c,
        Err(e) => return (None, Err(format!("{addr}: {e}"))),
    };
    let port = conn.local_addr().ok().map(|a| a.port());
    let name = match conn.request("GET", "/", true) {
        Ok(r) if r.status == 200 => Ok(r.body.trim().to_string()),
        Ok(r) => Err(format!("{addr}: status {} body {:?}", r.status, r.body)),
        Err(e) => Err(format!("{addr}: {e}")),
    };
    (port, name)
}

/// How many answers each backend gave, and what went wrong.
#[derive(Debug, Clone, Default)]
pub struct Spread {
    pub counts: BTreeMap<String, usize>,
    pub errors: Vec<String>,
    pub elapsed: Duration,
    /// The source port of each TCP connection made (a later connection from one of them is
    /// the same 4-tuple, so it may find its flow's entry still in the connection table).
    pub ports: Vec<u16>,
}

impl Spread {
    pub fn total_ok(&self) -> usize {
        self.counts.values().sum()
    }

    pub fn count(&self, name: &str) -> usize {
        self.counts.get(name).copied().unwrap_or(0)
    }

    pub fn fraction(&self, name: &str) -> f64 {
        let t = self.total_ok();
        if t == 0 { 0.0 } else { self.count(name) as f64 / t as f64 }
    }

    fn add(&mut self, r: Result<String, String>) {
        match r {
            Ok(n) => *self.counts.entry(n).or_default() += 1,
            Err(e) => self.errors.push(e),
        }
    }
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "counts {:?}, {} errors", self.counts, self.errors.len())?;
        for e in self.errors.iter().take(5) {
            write!(f, "\n  error: {e}")?;
        }
        if self.errors.len() > 5 {
            write!(f, "\n  ... {} more", self.errors.len() - 5)?;
        }
        write!(f, " (in {:.1?})", self.elapsed)
    }
}

/// After this many failures in a row the spread helpers give up (the rest is not tried).
pub const MAX_CONSECUTIVE_ERRORS: usize = 20;

fn run_spread(count: usize, deadline: Duration, what: &str, mut one: impl FnMut() -> (Option<u16>, Result<String, String>)) -> Spread {
    let start = Instant::now();
    let mut s = Spread::default();
    let mut failing = 0;
    for i in 0..count {
        if start.elapsed() > deadline {
            s.errors.push(format!("deadline {deadline:?} passed after {i} of {count} {what}"));
            break;
        }
        if failing >= MAX_CONSECUTIVE_ERRORS {
            s.errors.push(format!("gave up after {failing} failures in a row ({i} of {count} {what} tried)"));
            break;
        }
        let (port, r) = one();
        s.ports.extend(port);
        failing = if r.is_err() { failing + 1 } else { 0 };
        s.add(r);
    }
    s.elapsed = start.elapsed();
    s
}

/// `count` requests `GET /`, each on a new connection (so a new source port, a new flow),
/// one after the other; stops early when `deadline` passes or after
/// [`MAX_CONSECUTIVE_ERRORS`] failures in a row (recorded as errors).
pub fn spread(addr: SocketAddr, count: usize, deadline: Duration) -> Spread {
    run_spread(count, deadline, "requests", || get_name_with_port(addr))
}

/// `count` UDP queries, each from a new socket (a new source port, a new flow). A query is
/// re-sent up to 2 times if no answer comes within 1 s. Answers must come from `addr`.
/// Bounded like [`spread`].
pub fn udp_spread(addr: SocketAddr, count: usize, deadline: Duration) -> Spread {
    run_spread(count, deadline, "queries", || (None, udp_query(addr, 3, Duration::from_secs(1))))
}

/// Sends a datagram to `addr` from a new unconnected socket, up to `tries` times, and returns
/// the trimmed answer. An answer from another address is an error (it names the address).
pub fn udp_query(addr: SocketAddr, tries: usize, timeout: Duration) -> Result<String, String> {
    let bind: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(bind).map_err(|e| format!("udp bind: {e}"))?;
    sock.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 2048];
    for _ in 0..tries.max(1) {
        sock.send_to(b"xlb-tests\n", addr).map_err(|e| format!("udp send to {addr}: {e}"))?;
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if from == addr => {
                return Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string());
            }
            Ok((n, from)) => {
                return Err(format!(
                    "udp {addr}: answer {:?} came from {from}, not from the VIP",
                    String::from_utf8_lossy(&buf[..n]).trim()
                ));
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(e) => return Err(format!("udp recv from {addr}: {e}")),
        }
    }
    Err(format!("udp {addr}: no answer after {tries} tries of {timeout:?}"))
}

/// What a long-lived `/stream` connection saw.
#[derive(Debug, Clone, Default)]
pub struct StreamResult {
    /// The backend that answered (from the first line).
    pub backend: Option<String>,
    /// Data lines received (excluding `done`).
    pub lines: usize,
    /// Lines that came from another backend than the first one.
    pub foreign_lines: usize,
    /// Whether the final `NAME done` line arrived.
    pub done: bool,
    /// Longest time between two lines (or from the request to the first one).
    pub max_gap: Duration,
    /// When that longest gap ended, in UTC (to set beside xlb's log).
    pub max_gap_ended: String,
    pub error: Option<String>,
    pub elapsed: Duration,
}

impl StreamResult {
    /// Panics unless the stream delivered all `secs * 10` lines from one backend, with no gap
    /// above `max_gap` plus the stream's lateness. The backend sleeps 100 ms between lines,
    /// so time it was starved of CPU (a loaded host) makes the stream end late by as much;
    /// packets held up in the network make a gap but not a late end (the lines were written
    /// on time and arrive together).
    #[track_caller]
    pub fn assert_ok(&self, secs: u64, max_gap: Duration) {
        let want = (secs * 10) as usize;
        let late = self.elapsed.saturating_sub(Duration::from_secs(secs));
        assert!(
            self.error.is_none() && self.done && self.lines == want && self.foreign_lines == 0 && self.max_gap <= max_gap + late,
            "long-lived connection broken: wanted {want} lines and `done` from one backend with gaps <= {max_gap:?} + {late:.1?} late; got {self:?}"
        );
    }
}

/// A long-lived `GET /stream?secs=N` running on a background thread.
pub struct Stream {
    first: mpsc::Receiver<Result<String, String>>,
    handle: thread::JoinHandle<StreamResult>,
}

impl Stream {
    /// Starts the stream from namespace `ns` (`None`: the caller's namespace).
    pub fn start(ns: Option<&NetNs>, addr: SocketAddr, secs: u64) -> Stream {
        let (tx, rx) = mpsc::channel();
        let f = move || run_stream(addr, secs, tx);
        let handle = match ns {
            Some(ns) => ns.spawn_thread(f),
            None => thread::spawn(f),
        };
        Stream { first: rx, handle }
    }

    /// Waits for the first line and returns the backend's name.
    pub fn backend(&self, timeout: Duration) -> Result<String, String> {
        match self.first.recv_timeout(timeout) {
            Ok(r) => r,
            Err(_) => Err(format!("no first line from the stream within {timeout:?}")),
        }
    }

    pub fn join(self) -> StreamResult {
        self.handle.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

fn run_stream(addr: SocketAddr, secs: u64, first: mpsc::Sender<Result<String, String>>) -> StreamResult {
    let start = Instant::now();
    let mut res = StreamResult::default();
    let mut first = Some(first);
    let r = (|| -> io::Result<()> {
        let s = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)?;
        // A stall longer than this is a broken connection, not a slow one.
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut w = s.try_clone()?;
        let mut r = BufReader::new(s);
        w.write_all(
            format!("GET /stream?secs={secs} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", host_header(addr))
                .as_bytes(),
        )?;
        let mut line = String::new();
        r.read_line(&mut line)?;
        if !line.contains(" 200 ") {
            return Err(invalid(format!("stream: status line {line:?}")));
        }
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in headers"));
            }
            if line.trim().is_empty() {
                break;
            }
        }
        let mut last = Instant::now();
        loop {
            line.clear();
            let n = r.read_line(&mut line)?;
            let now = Instant::now();
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "stream closed before `done`"));
            }
            if now - last > res.max_gap {
                res.max_gap = now - last;
                res.max_gap_ended = utc_now();
            }
            last = now;
            let Some((name, what)) = line.trim().rsplit_once(' ') else {
                return Err(invalid(format!("stream: bad line {line:?}")));
            };
            match &res.backend {
                None => {
                    res.backend = Some(name.to_string());
                    if let Some(tx) = first.take() {
                        let _ = tx.send(Ok(name.to_string()));
                    }
                }
                Some(b) if b != name => res.foreign_lines += 1,
                Some(_) => {}
            }
            if what == "done" {
                res.done = true;
                return Ok(());
            }
            res.lines += 1;
        }
    })();
    if let Err(e) = r {
        let msg = format!("after {} lines, {:.1?}: {e}", res.lines, start.elapsed());
        if let Some(tx) = first.take() {
            let _ = tx.send(Err(msg.clone()));
        }
        res.error = Some(msg);
    }
    res.elapsed = start.elapsed();
    res
}

/// The UTC time of day now, `HH:MM:SS.ffffff` (as in xlb's log lines).
fn utc_now() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let s = d.as_secs() % 86_400;
    format!("{:02}:{:02}:{:02}.{:06}", s / 3600, s / 60 % 60, s % 60, d.subsec_micros())
}

/// `curl -sS --max-time 2 URL` from `ns` (`None`: the root namespace); the trimmed body.
pub fn curl(ns: Option<&NetNs>, url: &str) -> Result<String, String> {
    let args = ["-sS", "--fail", "--max-time", "2", url];
    let out = match ns {
        Some(ns) => ns.try_run("curl", &args),
        None => crate::util::try_run(&mut crate::util::cmd("curl", args)),
    }?;
    Ok(out.trim().to_string())
}

/// `GET /` from local port `local_port` (any local address; `SO_REUSEADDR`) on a new
/// connection: the same 4-tuple as an earlier request from that port. Reads the answer, then
/// waits for the server to close first, so the client's end does not linger in TIME_WAIT and
/// the port can be used again at once.
pub fn get_name_from(local_port: u16, addr: SocketAddr) -> Result<String, String> {
    let s = crate::socket::connect_from(local_port, addr, REQUEST_TIMEOUT)?;
    let io_err = |e: io::Error| format!("{addr} from port {local_port}: {e}");
    s.set_read_timeout(Some(REQUEST_TIMEOUT)).map_err(io_err)?;
    let mut w = s.try_clone().map_err(io_err)?;
    w.write_all(format!("GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", host_header(addr)).as_bytes()).map_err(io_err)?;
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r).map_err(io_err)?;
    // The server closes after a `Connection: close` answer: wait for its FIN.
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut r, &mut rest);
    match resp.status {
        200 => Ok(resp.body.trim().to_string()),
        st => Err(format!("{addr} from port {local_port}: status {st} body {:?}", resp.body)),
    }
}
