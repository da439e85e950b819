//! Raw TCP clients, so every byte on the wire is the test's own.

use std::{
    collections::BTreeMap,
    io::{self, BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use crate::backends::header_of;

/// The HTTP/2 connection preface and an empty SETTINGS frame.
pub const H2_START: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
/// HEADERS on stream 1, END_STREAM|END_HEADERS: GET http://x/ (HPACK static indices
/// 2, 6, 4, then `:authority: x` with incremental indexing).
pub const H2_GET: &[u8] = b"\x00\x00\x06\x01\x05\x00\x00\x00\x01\x82\x86\x84\x41\x01x";

/// How long a client or a backend waits on a socket.
pub const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, n: &str) -> Option<String> {
        header_of(self.head.split_once("\r\n").map(|x| x.1).unwrap_or(""), n)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first line of the body: a backend's name.
    pub fn name(&self) -> String {
        self.text().lines().next().unwrap_or_default().to_string()
    }
}

fn read_resp(r: &mut impl BufRead) -> io::Result<Resp> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("closed; head so far {head:?}")));
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| io::Error::other(format!("bad head {head:?}")))?;
    let mut resp = Resp { status, head, body: Vec::new() };
    if status == 101 || status == 204 || status == 304 {
        return Ok(resp);
    }
    if resp.header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut line = String::new();
            r.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16).map_err(|_| io::Error::other(format!("chunk {line:?}")))?;
            if n == 0 {
                loop {
                    line.clear();
                    if r.read_line(&mut line)? == 0 || line == "\r\n" {
                        break;
                    }
                }
                break;
            }
            let mut c = vec![0; n + 2];
            r.read_exact(&mut c)?;
            resp.body.extend_from_slice(&c[..n]);
        }
    } else if let Some(n) = resp.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        resp.body.resize(n, 0);
        r.read_exact(&mut resp.body)?;
    } else {
        r.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

pub struct Client {
    pub w: TcpStream,
    pub r: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Self::from_stream(TcpStream::connect_timeout(&addr, TIMEOUT).unwrap())
    }

    /// Connects from a chosen loopback source address (127.0.0.0/8 is all local).
    pub fn connect_from(addr: SocketAddr, src: Ipv4Addr) -> Client {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::from((src, 0)).into()).unwrap();
        s.connect_timeout(&addr.into(), TIMEOUT).unwrap();
        Self::from_stream(s.into())
    }

    fn from_stream(s: TcpStream) -> Client {
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Client { w: s.try_clone().unwrap(), r: BufReader::new(s) }
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes)
    }

    pub fn read(&mut self) -> io::Result<Resp> {
        read_resp(&mut self.r)
    }

    pub fn get(&mut self, host: &str, path: &str, extra: &[(&str, &str)]) -> io::Result<Resp> {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
        for (k, v) in extra {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.send(req.as_bytes())?;
        self.read()
    }

    /// Whether the server closed the connection (EOF) within `within`.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        self.w.set_read_timeout(Some(within)).unwrap();
        let mut b = [0u8; 1024];
        let start = Instant::now();
        while start.elapsed() < within + Duration::from_millis(100) {
            match self.r.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
        false
    }
}

/// One request on a new connection.
pub fn get(addr: SocketAddr, host: &str, path: &str, extra: &[(&str, &str)]) -> Resp {
    Client::connect(addr).get(host, path, extra).unwrap_or_else(|e| panic!("GET {host}{path}: {e}"))
}

/// Raw bytes on a new connection; the answer (or the error) and whether the
/// connection then closed.
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> (io::Result<Resp>, bool) {
    let mut c = Client::connect(addr);
    c.send(bytes).unwrap();
    let r = c.read();
    let closed = c.closed_within(Duration::from_secs(2));
    (r, closed)
}

pub fn tally(names: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in names {
        *m.entry(n).or_default() += 1;
    }
    m
}

/// Who answered `n` GETs of `/` through `addr`, each of them a 200.
pub fn tally_ok(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    tally((0..n).map(|_| {
        let r = get(addr, "x", "/", &[]);
        assert_eq!(r.status, 200);
        r.name()
    }))
}
