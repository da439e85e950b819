//! xlb's HTTP proxy (lb-userspace/src/proxy) end to end on loopback: the proxy runs
//! in-process, the backends are xlb-testd processes (plus small raw backends written
//! here where a test needs to see request heads, WebSocket, or fixed answers), and the
//! clients are raw TCP, so every byte on the wire is the test's own. No root needed.
//!
//! Figures (distributions, timings) are printed with `-- --nocapture`.

use std::{
    collections::{BTreeMap, HashMap},
    io::{self, BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use xlb::{
    config::{Config, http::HttpOptions},
    discovery::{DockerWatch, Registry},
    plan::{self, BackendView, PeerState, ServiceView, Vitals},
    proxy::{CollectFailures, FailureKind, Proxy},
};
use xlb_tests::{
    Topology, config,
    docker::{self, Container},
    http,
    topology::{LB_CLIENT_V4, TESTD_PORT},
    util::{Proc, STDOUT, wait_for},
};

const TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// Backends

struct Testd {
    name: String,
    port: u16,
    _proc: Proc,
}

impl Testd {
    fn start(name: &str) -> Testd {
        let mut c = Command::new(Path::new(env!("CARGO_BIN_EXE_xlb-testd")));
        c.args(["--name", name, "--port", "0", "--quiet"]);
        let mut proc = Proc::spawn(name, c);
        let line = proc.wait_line(STDOUT, "listening", Duration::from_secs(10)).unwrap();
        let port = line.split_whitespace().find_map(|w| w.strip_prefix("tcp/")).and_then(|p| p.parse().ok()).unwrap();
        Testd { name: name.into(), port, _proc: proc }
    }

    fn addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.port).into()
    }

    /// `POST /delay/MS` straight to the backend: `GET /` answers after MS.
    fn delay(&self, ms: u64) {
        assert_eq!(http::request(self.addr(), "POST", &format!("/delay/{ms}")).unwrap().status, 200);
    }

    fn view(&self, weight: u32) -> BackendView {
        backend(&self.name, self.addr(), weight)
    }
}

fn backend(name: &str, addr: SocketAddr, weight: u32) -> BackendView {
    BackendView { name: name.into(), aliases: vec![], hosts: vec![], addr, weight, backup: false, state: PeerState::Active, max_conns: None }
}

/// A listening port whose accept queue is full (listen backlog 0, one connection never
/// accepted): the kernel drops further SYNs, so a connect to it hangs. Keep the result.
fn stuck_listener() -> (socket2::Socket, TcpStream, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into()).unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let filler = TcpStream::connect_timeout(&addr, TIMEOUT).unwrap();
    assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(), "the accept queue of {addr} is full");
    (s, filler, addr)
}

/// Whether a TCP connection to `addr` opens.
fn listening(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// A port nothing listens on.
fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    l.local_addr().unwrap()
}

#[derive(Clone, Copy)]
enum Behaviour {
    /// 200 with `NAME\n` and the request head as the body.
    EchoHead,
    /// This status, body `NAME\n`.
    Status(u16),
    /// WebSocket handshake, then echo every frame.
    WsEcho,
    /// Answers a response head with this extra header and a hop-by-hop one.
    HopHeaders,
    /// 200 with a body of this many bytes.
    Big(usize),
}

/// A small HTTP/1.1 backend in threads; records the request heads it got.
struct RawBackend {
    name: String,
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    /// Connections accepted.
    conns: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl RawBackend {
    fn start(name: &str, b: Behaviour) -> RawBackend {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(AtomicUsize::new(0));
        let (h, s, n, k) = (heads.clone(), stop.clone(), name.to_string(), conns.clone());
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        k.fetch_add(1, Ordering::Relaxed);
                        let (h, n) = (h.clone(), n.clone());
                        thread::spawn(move || {
                            let _ = raw_conn(c, &n, b, &h);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        RawBackend { name: name.into(), addr, heads, conns, stop }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    fn conns(&self) -> usize {
        self.conns.load(Ordering::Relaxed)
    }

    fn view(&self) -> BackendView {
        backend(&self.name, self.addr, 1)
    }
}

fn raw_conn(c: TcpStream, name: &str, b: Behaviour, heads: &Mutex<Vec<String>>) -> io::Result<()> {
    c.set_read_timeout(Some(TIMEOUT))?;
    c.set_nonblocking(false)?;
    let mut w = c.try_clone()?;
    let mut r = BufReader::new(c);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let len: usize = header_of(&head, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        heads.lock().unwrap().push(head.clone());
        match b {
            Behaviour::EchoHead => {
                let body = format!("{name}\n{head}");
                write!(w, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len())?;
            }
            Behaviour::Status(s) => write!(w, "HTTP/1.1 {s} X\r\nContent-Length: {}\r\n\r\n{name}\n", name.len() + 1)?,
            Behaviour::HopHeaders => write!(
                w,
                "HTTP/1.1 200 OK\r\nX-Kept: 1\r\nX-Private: secret\r\nConnection: X-Private\r\nKeep-Alive: timeout=5\r\nContent-Length: {}\r\n\r\n{name}\n",
                name.len() + 1
            )?,
            Behaviour::Big(n) => {
                write!(w, "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n")?;
                let chunk = vec![b'z'; 64 * 1024];
                let mut left = n;
                while left > 0 {
                    let k = left.min(chunk.len());
                    w.write_all(&chunk[..k])?;
                    left -= k;
                }
            }
            Behaviour::WsEcho => {
                let key = header_of(&head, "sec-websocket-key").unwrap_or_default();
                write!(w, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n", ws_accept(&key))?;
                // Echo frames (unmasked) until a close frame or EOF.
                for _ in 0..1000 {
                    let Some((op, payload)) = ws_read(&mut r)? else { return Ok(()) };
                    ws_write(&mut w, op, &payload, None)?;
                    if op == 8 {
                        return Ok(());
                    }
                }
                return Ok(());
            }
        }
    }
}

fn header_of(head: &str, name: &str) -> Option<String> {
    head.lines().filter_map(|l| l.split_once(':')).find(|(k, _)| k.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string())
}

// ---------------------------------------------------------------------------------------
// WebSocket bits (RFC 6455), enough for an echo.

fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend((data.len() as u64 * 8).to_be_bytes());
    for chunk in msg.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(chunk[4 * i..4 * i + 4].try_into().unwrap());
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a.rotate_left(5).wrapping_add(f).wrapping_add(e).wrapping_add(k).wrapping_add(*wi);
            (e, d, c, b, a) = (d, c, b.rotate_left(30), a, t);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn ws_accept(key: &str) -> String {
    base64(&sha1(format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes()))
}

fn ws_read(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut h = [0u8; 2];
    if let Err(e) = r.read_exact(&mut h) {
        return if e.kind() == io::ErrorKind::UnexpectedEof { Ok(None) } else { Err(e) };
    }
    let masked = h[1] & 0x80 != 0;
    let mut len = u64::from(h[1] & 0x7f);
    if len == 126 {
        let mut b = [0u8; 2];
        r.read_exact(&mut b)?;
        len = u64::from(u16::from_be_bytes(b));
    } else if len == 127 {
        let mut b = [0u8; 8];
        r.read_exact(&mut b)?;
        len = u64::from_be_bytes(b);
    }
    assert!(len < 1 << 20, "frame too large");
    let mut mask = [0u8; 4];
    if masked {
        r.read_exact(&mut mask)?;
    }
    let mut p = vec![0u8; len as usize];
    r.read_exact(&mut p)?;
    if masked {
        for (i, b) in p.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok(Some((h[0] & 0x0f, p)))
}

fn ws_write(w: &mut impl Write, op: u8, payload: &[u8], mask: Option<[u8; 4]>) -> io::Result<()> {
    let mut f = vec![0x80 | op];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n < 65536 => {
            f.push(m | 126);
            f.extend((n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend((n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            f.extend(k);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => f.extend(payload),
    }
    w.write_all(&f)
}

// ---------------------------------------------------------------------------------------
// Clients

#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, n: &str) -> Option<String> {
        header_of(self.head.split_once("\r\n").map(|x| x.1).unwrap_or(""), n)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first line of the body: a backend's name.
    fn name(&self) -> String {
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

struct Client {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        Self::from_stream(TcpStream::connect_timeout(&addr, TIMEOUT).unwrap())
    }

    /// Connects from a chosen loopback source address (127.0.0.0/8 is all local).
    fn connect_from(addr: SocketAddr, src: Ipv4Addr) -> Client {
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

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes)
    }

    fn read(&mut self) -> io::Result<Resp> {
        read_resp(&mut self.r)
    }

    fn get(&mut self, host: &str, path: &str, extra: &[(&str, &str)]) -> io::Result<Resp> {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
        for (k, v) in extra {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.send(req.as_bytes())?;
        self.read()
    }

    /// Whether the server closed the connection (EOF) within `within`.
    fn closed_within(&mut self, within: Duration) -> bool {
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
fn get(addr: SocketAddr, host: &str, path: &str, extra: &[(&str, &str)]) -> Resp {
    Client::connect(addr).get(host, path, extra).unwrap_or_else(|e| panic!("GET {host}{path}: {e}"))
}

/// Raw bytes on a new connection; the answer (or the error) and whether the
/// connection then closed.
fn raw(addr: SocketAddr, bytes: &[u8]) -> (io::Result<Resp>, bool) {
    let mut c = Client::connect(addr);
    c.send(bytes).unwrap();
    let r = c.read();
    let closed = c.closed_within(Duration::from_secs(2));
    (r, closed)
}

fn tally(names: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in names {
        *m.entry(n).or_default() += 1;
    }
    m
}

// ---------------------------------------------------------------------------------------
// The proxy

struct Lb {
    // Dropped before the runtime.
    proxy: Proxy,
    failures: Arc<CollectFailures>,
    rt: tokio::runtime::Runtime,
}

const LISTEN: &str = "127.0.0.1:0";

impl Lb {
    fn new() -> Lb {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let failures = Arc::new(CollectFailures::default());
        let proxy = {
            let _g = rt.enter();
            Proxy::new(failures.clone())
        };
        Lb { proxy, failures, rt }
    }

    fn update(&self, services: Vec<ServiceView>) {
        let _g = self.rt.enter();
        self.proxy.update(services).unwrap();
    }

    fn addr(&self) -> SocketAddr {
        self.proxy.local_addr(LISTEN.parse().unwrap()).expect("listening")
    }

    fn failures(&self) -> Vec<xlb::proxy::Failure> {
        self.failures.0.lock().unwrap().clone()
    }

    /// One service on LISTEN.
    fn one(options: &str, backends: Vec<BackendView>) -> Lb {
        let lb = Lb::new();
        lb.update(vec![svc("web", options, backends)]);
        lb
    }
}

fn svc(name: &str, options: &str, backends: Vec<BackendView>) -> ServiceView {
    let options = if options.trim().is_empty() { HttpOptions::default() } else { HttpOptions::from_yaml(options).unwrap_or_else(|e| panic!("{e}")) };
    ServiceView { name: name.into(), listen: LISTEN.parse().unwrap(), options, backends }
}

// ---------------------------------------------------------------------------------------
// The xlb binary

/// The real binary, root and namespaces (client → LB → backends b1..b3): a `/http` SPEC
/// is served by xlb's proxy on the interface's address; a backend that dies is retried
/// around with no failed request and reported to xlb's health (the passive check).
#[test]
fn xlb_serves_an_http_spec_and_feeds_passive_health() {
    let _g = xlb_tests::serial();
    xlb_tests::preflight();
    let mut topo = Topology::builder().backends(3).build();
    let targets: Vec<(IpAddr, Option<u32>)> = topo.names().iter().map(|n| (topo.ip(n, false), None)).collect();
    let spec = config::spec(None, 80, &targets, Some(TESTD_PORT), Some("http"));
    let mut xlb = topo.start_xlb(None, std::slice::from_ref(&spec));
    let vip = SocketAddr::from((LB_CLIENT_V4, 80));
    let fetch = |n: usize| -> Vec<String> {
        topo.client.enter(|| {
            (0..n)
                .map(|_| {
                    let r = get(vip, "app.dev", "/", &[]);
                    if r.status == 200 { r.name() } else { r.status.to_string() }
                })
                .collect()
        })
    };
    let up = wait_for(Duration::from_secs(10), Duration::from_millis(100), || topo.client.enter(|| listening(vip)).then_some(()));
    assert!(up.is_some(), "nothing listens on {vip} for SPEC {spec}\n{}", xlb.log());
    let t = tally(fetch(30));
    eprintln!("xlb {spec}: 30 requests → {t:?}");
    assert_eq!(t, BTreeMap::from([("b1".into(), 10), ("b2".into(), 10), ("b3".into(), 10)]), "smooth round robin\n{}", xlb.log());

    let b2 = topo.ip("b2", false);
    drop(topo.backends[1].testd.take());
    let t = tally(fetch(30));
    eprintln!("b2 stopped: 30 requests → {t:?}");
    assert_eq!(t.get("b2"), None, "{t:?}");
    assert_eq!(t.values().sum::<usize>(), 30);
    assert!(t.keys().all(|n| n == "b1" || n == "b3"), "every request answered: {t:?}\n{}", xlb.log());
    let marked = format!("addr={b2}:{TESTD_PORT}");
    let log = xlb.log();
    assert!(log.lines().any(|l| l.contains("out for") && l.contains(&marked)), "the proxy's failure reached health ({marked}):\n{log}");
    xlb.assert_running();
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}

// ---------------------------------------------------------------------------------------
// Balancing methods

#[test]
fn round_robin_is_smooth_and_weighted() {
    let (a, b, c) = (Testd::start("a"), Testd::start("b"), Testd::start("c"));
    let lb = Lb::one("method: round_robin", vec![a.view(2), b.view(1), c.view(1)]);
    let mut cl = Client::connect(lb.addr());
    let order: Vec<String> = (0..40).map(|_| cl.get("x", "/", &[]).unwrap().name()).collect();
    eprintln!("round_robin 2:1:1 first 8: {:?}", &order[..8]);
    // nginx's smooth weighted round robin: current weights [2,1,1] → a, [0,2,2] → b,
    // [2,-1,3] → c, [4,0,0] → a; then again.
    assert_eq!(order[..8], ["a", "b", "c", "a", "a", "b", "c", "a"]);
    assert_eq!(tally(order), BTreeMap::from([("a".into(), 20), ("b".into(), 10), ("c".into(), 10)]));
}

#[test]
fn least_conn_avoids_the_busy_backend() {
    let (a, b) = (Testd::start("a"), Testd::start("b"));
    a.delay(1500);
    let lb = Lb::one("method: least_conn\npin_header: app", vec![a.view(1), b.view(1)]);
    let addr = lb.addr();
    // A long request pinned to a keeps one request in flight there.
    let long = thread::spawn(move || get(addr, "x", "/", &[("app", "a")]).name());
    thread::sleep(Duration::from_millis(200));
    let names: Vec<String> = (0..10).map(|_| get(addr, "x", "/", &[]).name()).collect();
    eprintln!("least_conn while a has 1 in flight: {:?}", tally(names.clone()));
    assert!(names.iter().all(|n| n == "b"), "{names:?}");
    assert_eq!(long.join().unwrap(), "a");
    // Idle again: both used.
    let names: Vec<String> = (0..4).map(|_| get(addr, "x", "/health", &[]).name()).collect();
    assert_eq!(tally(names).len(), 1, "the /health answers carry no name");
}

#[test]
fn ip_hash_is_stable_per_24_and_spreads() {
    let ts: Vec<Testd> = ["a", "b", "c"].iter().map(|n| Testd::start(n)).collect();
    let lb = Lb::one("method: ip_hash", ts.iter().map(|t| t.view(1)).collect());
    let addr = lb.addr();
    let mut per_net = Vec::new();
    for net in 1..=24u8 {
        let names: Vec<String> = [1u8, 77, 200].iter().map(|&h| Client::connect_from(addr, Ipv4Addr::new(127, 9, net, h)).get("x", "/", &[]).unwrap().name()).collect();
        assert!(names.iter().all(|n| *n == names[0]), "127.9.{net}.0/24 split: {names:?}");
        per_net.push(names[0].clone());
    }
    let t = tally(per_net);
    eprintln!("ip_hash: 24 /24 networks (3 clients each) → {t:?}");
    assert_eq!(t.len(), 3, "{t:?}");
}

#[test]
fn consistent_hash_moves_about_one_nth_of_keys() {
    let ts: Vec<Testd> = ["a", "b", "c", "d"].iter().map(|n| Testd::start(n)).collect();
    let opts = "method: hash uri consistent";
    let lb = Lb::one(opts, ts.iter().map(|t| t.view(1)).collect());
    let mut cl = Client::connect(lb.addr());
    let keys: Vec<String> = (0..400).map(|k| format!("/?key={k}")).collect();
    let before: Vec<String> = keys.iter().map(|k| cl.get("x", k, &[]).unwrap().name()).collect();
    // The same keys again: deterministic.
    for (k, b) in keys.iter().zip(&before).take(50) {
        assert_eq!(&cl.get("x", k, &[]).unwrap().name(), b);
    }
    lb.update(vec![svc("web", opts, ts[..3].iter().map(|t| t.view(1)).collect())]);
    let mut cl = Client::connect(lb.addr());
    let after: Vec<String> = keys.iter().map(|k| cl.get("x", k, &[]).unwrap().name()).collect();
    let moved: Vec<usize> = (0..keys.len()).filter(|&i| before[i] != after[i]).collect();
    eprintln!("consistent hash: before {:?}; removing d moved {} of {} keys", tally(before.clone()), moved.len(), keys.len());
    assert!(moved.iter().all(|&i| before[i] == "d"), "only d's keys move");
    assert_eq!(moved.len(), before.iter().filter(|n| *n == "d").count(), "all of d's keys move");
    let frac = moved.len() as f64 / keys.len() as f64;
    assert!((0.12..=0.40).contains(&frac), "moved {frac:.2}, expected about 1/4");
}

#[test]
fn hash_by_header_and_cookie() {
    let ts: Vec<Testd> = ["a", "b", "c"].iter().map(|n| Testd::start(n)).collect();
    for (opts, key_of) in [("method: hash header:x-user", "x-user"), ("method: hash cookie:uid consistent", "cookie")] {
        let lb = Lb::one(opts, ts.iter().map(|t| t.view(1)).collect());
        let mut seen = HashMap::new();
        for user in 0..30 {
            let v = format!("user{user}");
            let hdr = if key_of == "cookie" { ("Cookie", format!("uid={v}")) } else { ("X-User", v.clone()) };
            let names: Vec<String> = (0..3).map(|_| get(lb.addr(), "x", "/", &[(hdr.0, &hdr.1)]).name()).collect();
            assert!(names.iter().all(|n| *n == names[0]), "{opts}: {v} split {names:?}");
            seen.insert(v, names[0].clone());
        }
        let t = tally(seen.into_values());
        eprintln!("{opts}: 30 keys → {t:?}");
        assert_eq!(t.len(), 3);
    }
    // `hash client`: the whole client address, unlike ip_hash's /24.
    let lb = Lb::one("method: hash client consistent", ts.iter().map(|t| t.view(1)).collect());
    let by_client: Vec<String> = (1..=30u8)
        .map(|h| {
            let names: Vec<String> = (0..3).map(|_| Client::connect_from(lb.addr(), Ipv4Addr::new(127, 9, 1, h)).get("x", "/", &[]).unwrap().name()).collect();
            assert!(names.iter().all(|n| *n == names[0]), "127.9.1.{h} split {names:?}");
            names[0].clone()
        })
        .collect();
    let t = tally(by_client);
    eprintln!("hash client consistent: 30 clients of one /24 → {t:?}");
    assert_eq!(t.len(), 3, "{t:?}");
}

#[test]
fn random_is_weighted() {
    let (a, b) = (Testd::start("a"), Testd::start("b"));
    let lb = Lb::one("method: random", vec![a.view(1), b.view(3)]);
    let mut cl = Client::connect(lb.addr());
    let t = tally((0..400).map(|_| cl.get("x", "/", &[]).unwrap().name()));
    eprintln!("random 1:3 over 400: {t:?}");
    assert!((60..=140).contains(&t["a"]), "{t:?}");
}

#[test]
fn random_two_least_conn_avoids_the_busy_backend() {
    let ts: Vec<Testd> = ["a", "b", "c"].iter().map(|n| Testd::start(n)).collect();
    ts[0].delay(1500);
    let lb = Lb::one("method: random two least_conn\npin_header: app", ts.iter().map(|t| t.view(1)).collect());
    let addr = lb.addr();
    let long = thread::spawn(move || get(addr, "x", "/", &[("app", "a")]).name());
    thread::sleep(Duration::from_millis(200));
    let t = tally((0..30).map(|_| get(addr, "x", "/", &[]).name()));
    eprintln!("random two least_conn with a busy: {t:?}");
    assert_eq!(t.get("a"), None, "{t:?}");
    assert_eq!(t.len(), 2);
    assert_eq!(long.join().unwrap(), "a");
}

/// The criterion: at least 80% of requests to a 5 ms backend against a 50 ms one.
#[test]
fn least_time_and_peak_ewma_prefer_the_fast_backend() {
    let (fast, slow) = (Testd::start("fast"), Testd::start("slow"));
    fast.delay(5);
    slow.delay(50);
    for method in ["least_time header", "least_time last_byte inflight", "random two least_time=header", "peak_ewma"] {
        let lb = Lb::one(&format!("method: {method}"), vec![fast.view(1), slow.view(1)]);
        let addr = lb.addr();
        // Sequential, then 4 clients at once.
        let mut cl = Client::connect(addr);
        let mut names: Vec<String> = (0..60).map(|_| cl.get("x", "/", &[]).unwrap().name()).collect();
        let workers: Vec<_> = (0..4)
            .map(|_| {
                thread::spawn(move || {
                    let mut cl = Client::connect(addr);
                    (0..25).map(|_| cl.get("x", "/", &[]).unwrap().name()).collect::<Vec<_>>()
                })
            })
            .collect();
        for w in workers {
            names.extend(w.join().unwrap());
        }
        let t = tally(names.clone());
        let frac = t.get("fast").copied().unwrap_or(0) as f64 / names.len() as f64;
        eprintln!("{method}: {t:?} → {:.0}% to the 5 ms backend", frac * 100.0);
        assert!(frac >= 0.8, "{method}: {t:?}");
    }
}

#[test]
fn backup_serves_only_when_primaries_fail_and_max_conns_holds() {
    let (a, spare) = (Testd::start("a"), Testd::start("spare"));
    let mut backup = spare.view(1);
    backup.backup = true;
    let lb = Lb::one("", vec![a.view(1), backup.clone()]);
    assert!((0..6).all(|_| get(lb.addr(), "x", "/", &[]).name() == "a"));
    // The primary dies: its connect failure retries on the backup, then it is out.
    lb.update(vec![svc("web", "", vec![backend("a", dead_addr(), 1), backup.clone()])]);
    let names: Vec<String> = (0..6).map(|_| get(lb.addr(), "x", "/", &[]).name()).collect();
    assert!(names.iter().all(|n| n == "spare"), "{names:?}");

    // max_conns 1 on a slow backend: a second concurrent request goes elsewhere.
    a.delay(800);
    let b = Testd::start("b");
    let lb = Lb::one("max_conns: 1\nmethod: round_robin\npin_header: app", vec![a.view(1), b.view(1)]);
    let addr = lb.addr();
    let long = thread::spawn(move || get(addr, "x", "/", &[("app", "a")]).name());
    thread::sleep(Duration::from_millis(150));
    let names: Vec<String> = (0..6).map(|_| get(addr, "x", "/", &[]).name()).collect();
    assert!(names.iter().all(|n| n == "b"), "{names:?}");
    long.join().unwrap();

    // `down` takes nothing, not even pinned requests; draining only pinned ones.
    a.delay(0);
    let c = Testd::start("c");
    let (mut down, mut draining) = (a.view(1), b.view(1));
    down.state = PeerState::Down;
    draining.state = PeerState::Draining;
    let lb = Lb::one("pin_header: app", vec![down, draining, c.view(1)]);
    let names: Vec<String> = (0..6).map(|_| get(lb.addr(), "x", "/", &[]).name()).collect();
    assert!(names.iter().all(|n| n == "c"), "{names:?}");
    assert_eq!(get(lb.addr(), "x", "/", &[("app", "a")]).name(), "c", "a pin to a down backend is balanced");
    assert_eq!(get(lb.addr(), "x", "/", &[("app", "b")]).name(), "b", "a pin reaches a draining backend");
}

// ---------------------------------------------------------------------------------------
// Routing, pinning, stickiness

#[test]
fn routes_by_host_and_path_and_never_proxies_elsewhere() {
    let ts: Vec<Testd> = ["app", "wild", "api", "static"].iter().map(|n| Testd::start(n)).collect();
    let lb = Lb::new();
    lb.update(vec![
        svc("app", "hosts: [app.dev]", vec![ts[0].view(1)]),
        svc("wild", "hosts: ['*.app.dev']", vec![ts[1].view(1)]),
        svc("api", "hosts: [app.dev]\npaths: [/api]", vec![ts[2].view(1)]),
        svc("static", "hosts: [cdn.dev]\npaths: [/static]", vec![ts[3].view(1)]),
    ]);
    let addr = lb.addr();
    let at = |host: &str, path: &str| {
        let r = get(addr, host, path, &[]);
        if r.status == 200 { r.name() } else { r.status.to_string() }
    };
    assert_eq!(at("app.dev", "/"), "app");
    assert_eq!(at("APP.dev:80", "/?x=1"), "app");
    assert_eq!(at("app.dev", "/api"), "404", "routed to api; testd has no /api");
    assert_eq!(get(addr, "app.dev", "/api", &[]).text(), "not found\n", "the 404 came from the api backend");
    assert_eq!(at("eu.app.dev", "/"), "wild");
    assert_eq!(at("a.b.app.dev", "/"), "wild");
    assert_eq!(at("cdn.dev", "/"), "404");
    assert_eq!(at("unknown.dev", "/"), "404");
    let r = get(addr, "unknown.dev", "/", &[]);
    assert_eq!((r.status, r.text().as_str()), (404, "404 Not Found\n"), "a clean page of the proxy's own");
    // Absolute-form names the host; a host we do not serve is 404, never fetched.
    let target = ts[0].addr();
    let (r, _) = raw(addr, format!("GET http://{target}/ HTTP/1.1\r\nHost: app.dev\r\n\r\n").as_bytes());
    assert_eq!(r.unwrap().status, 404);
    let (r, _) = raw(addr, b"GET http://app.dev/ HTTP/1.1\r\nHost: evil.example\r\n\r\n");
    assert_eq!(r.unwrap().name(), "app");
    let (r, _) = raw(addr, format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes());
    assert_eq!(r.unwrap().status, 405);
    // A default service takes what no route matches.
    lb.update(vec![svc("app", "hosts: [app.dev]", vec![ts[0].view(1)]), svc("fallback", "hosts: [other.dev]\ndefault: true", vec![ts[3].view(1)])]);
    assert_eq!(at("unknown.dev", "/"), "static");
    assert_eq!(at("app.dev", "/"), "app");
}

/// Backends' own host names (a container's `xlb.host` label): services without `hosts`
/// on one listener are told apart by them, and within a service each name goes to the
/// backends that carry it.
#[test]
fn backend_host_names_route_to_their_backends() {
    let ts: Vec<Testd> = ["api1", "site1", "beta1", "web1"].iter().map(|n| Testd::start(n)).collect();
    let named = |t: &Testd, hosts: &[&str]| BackendView { hosts: hosts.iter().map(|h| h.parse().unwrap()).collect(), ..t.view(1) };
    let lb = Lb::new();
    lb.update(vec![
        svc("api", "", vec![named(&ts[0], &["api.app.dev"])]),
        svc("site", "", vec![named(&ts[1], &["app.app.dev", "www.app.dev"])]),
        svc("web", "hosts: [web.dev]", vec![named(&ts[2], &["beta.web.dev"]), ts[3].view(1)]),
    ]);
    let addr = lb.addr();
    let at = |host: &str| {
        let r = get(addr, host, "/", &[]);
        if r.status == 200 { r.name() } else { r.status.to_string() }
    };
    for _ in 0..3 {
        assert_eq!(at("api.app.dev"), "api1");
        assert_eq!(at("app.app.dev"), "site1");
        assert_eq!(at("www.app.dev"), "site1");
        assert_eq!(at("beta.web.dev"), "beta1", "a name goes only to the backend carrying it");
        assert_eq!(at("web.dev"), "web1", "the service's other hosts: backends without names");
    }
    assert_eq!(at("unknown.app.dev"), "404", "labels replace a service's any-host route");
    assert_eq!(at("x"), "404");
}

/// The HTTP services of `config` as xlb plans them from what its Docker discovery
/// reports, once `complete` holds (within 30 s). (No prober runs here: every container
/// counts as passing its probe.)
fn docker_plan(lb: &Lb, config: &Config, what: &str, complete: impl Fn(&Registry) -> bool) -> Vec<ServiceView> {
    let watches: Vec<DockerWatch> = config
        .services
        .iter()
        .map(|s| {
            let d = s.docker.as_ref().unwrap();
            DockerWatch { service: s.name.clone(), name: d.name.clone(), project: None, network: None, port: d.port }
        })
        .collect();
    let registry = lb.rt.block_on(async {
        let (_watch_tx, watch_rx) = tokio::sync::watch::channel(watches);
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(xlb::discovery::docker::run(watch_rx, tx));
        let mut registry = Registry::default();
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        while !complete(&registry) {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(u)) => {
                    registry.apply(u);
                }
                _ => {
                    let sets: Vec<_> = config.services.iter().map(|s| (s.name.as_str(), registry.backends(&s.name))).collect();
                    panic!("Docker discovery did not report {what} within 30 s: {sets:?}")
                }
            }
        }
        registry
    });
    let passing = |_: &str, _| Vitals { probe: Some(true), since: None };
    let plan = plan::plan(config, "lo", &registry, Instant::now(), passing).unwrap();
    assert!(plan.services.is_empty());
    plan.http
}

/// The same on the real Docker engine, end to end through xlb's own parts: containers
/// labelled `xlb.service` and `xlb.host`, found by xlb's Docker discovery, planned by
/// `plan::plan` from a config of two HTTP services on one VIP and port, served by
/// the proxy. (No prober runs here: every container counts as passing its probe.)
#[test]
fn docker_xlb_host_labels_route_subdomains_to_their_containers() {
    // Other suites stop and restart the Docker daemon under this lock.
    let _g = xlb_tests::serial();
    docker::require_docker();
    let id = xlb_tests::util::unique_id();
    let (api_label, app_label) = (format!("xt{id}api"), format!("xt{id}app"));
    let labelled = |role: &str, service: &str, host: &str| {
        let (s, h) = (format!("xlb.service={service}"), format!("xlb.host={host}"));
        Container::testd(role, &["--label", &s, "--label", &h])
    };
    let _api = labelled("api", &api_label, "api.app.dev");
    let _app = labelled("app", &app_label, "app.app.dev, www.app.dev");
    let _beta = labelled("beta", &app_label, "beta.app.dev");
    let port = dead_addr().port();
    let yaml = format!(
        "services:\n\
         - {{ name: api, vip: 127.0.0.1, port: {port}, protocol: http, docker: {{ name: {api_label}, port: 8080 }} }}\n\
         - {{ name: app, vip: 127.0.0.1, port: {port}, protocol: http, docker: {{ name: {app_label}, port: 8080 }} }}\n"
    );
    let config = Config::parse(&yaml, Path::new("docker-hosts.yaml")).unwrap();
    let lb = Lb::new();
    let http = docker_plan(&lb, &config, "the 3 containers", |r| r.backends("api").len() == 1 && r.backends("app").len() == 2);
    lb.update(http);
    let addr = lb.proxy.local_addr(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).expect("listening on the services' VIP and port");
    let at = |host: &str| {
        let r = get(addr, host, "/", &[]);
        if r.status == 200 { r.name() } else { r.status.to_string() }
    };
    let mut seen = Vec::new();
    for host in ["api.app.dev", "app.app.dev", "www.app.dev", "beta.app.dev", "other.app.dev"] {
        let names: Vec<String> = (0..4).map(|_| at(host)).collect();
        seen.push(format!("{host} -> {names:?}"));
        let want = match host {
            "api.app.dev" => "api",
            "app.app.dev" | "www.app.dev" => "app",
            "beta.app.dev" => "beta",
            _ => "404",
        };
        assert!(names.iter().all(|n| n == want), "{host}: {names:?}, want {want}");
    }
    eprintln!("xlb.host routing through Docker discovery:\n{}", seen.join("\n"));
}

/// Pinning on the real Docker engine, through xlb's discovery and planning: a pin header
/// or cookie naming a container by its container name, its hostname (`--hostname`, else
/// Docker's short id) or its `xlb.name` label reaches that container on every request;
/// an unknown name is balanced over all of them.
#[test]
fn docker_pins_by_container_name_hostname_and_xlb_name() {
    let _g = xlb_tests::serial();
    docker::require_docker();
    let id = xlb_tests::util::unique_id();
    let service = format!("xt{id}pin");
    let label = format!("xlb.service={service}");
    let host1 = format!("xt{id}-host-one");
    let one = Container::testd("one", &["--label", &label, "--hostname", &host1, "--label", "xlb.name=Blue, first"]);
    let two = Container::testd("two", &["--label", &label, "--label", &format!("xlb.name=xt{id}-green")]);
    let three = Container::testd("three", &["--label", &label]);
    let port = dead_addr().port();
    let yaml = format!(
        "services:\n\
         - {{ name: pin, vip: 127.0.0.1, port: {port}, protocol: http, docker: {{ name: {service}, port: 8080 }}, http: {{ pin_header: app, pin_cookie: app }} }}\n"
    );
    let config = Config::parse(&yaml, Path::new("docker-pin.yaml")).unwrap();
    let lb = Lb::new();
    lb.update(docker_plan(&lb, &config, "the 3 containers", |r| r.backends("pin").len() == 3));
    let addr = lb.proxy.local_addr(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).expect("listening on the service's VIP and port");

    let green = format!("xt{id}-green");
    let short_id = &three.id[..12];
    let pins = [
        (one.name.as_str(), "one"),
        (host1.as_str(), "one"),
        ("BLUE", "one"),
        ("first", "one"),
        (two.name.as_str(), "two"),
        (green.as_str(), "two"),
        (three.name.as_str(), "three"),
        (short_id, "three"),
    ];
    const N: usize = 20;
    let mut seen = Vec::new();
    for (name, want) in pins {
        let cookie = format!("x=1; app={name}");
        for extra in [("app", name), ("Cookie", cookie.as_str())] {
            let answers: Vec<String> = (0..N).map(|_| get(addr, "pin.dev", "/", &[extra]).name()).collect();
            let hits = answers.iter().filter(|a| *a == want).count();
            seen.push(format!("{}: {} -> {want} {hits}/{N}", extra.0, extra.1));
            assert_eq!(hits, N, "{extra:?}: {answers:?}, want {want}");
        }
    }
    // An unknown name: normal balancing (round robin over the three).
    let t = tally((0..30).map(|_| get(addr, "pin.dev", "/", &[("app", "nope")]).name()));
    seen.push(format!("app: nope -> {t:?}"));
    assert_eq!(t.values().copied().collect::<Vec<_>>(), [10, 10, 10], "{t:?}");
    eprintln!("pinning through Docker discovery:\n{}", seen.join("\n"));
}

#[test]
fn pins_by_header_and_cookie_by_any_name() {
    let ts: Vec<Testd> = ["app1", "app2", "app3"].iter().map(|n| Testd::start(n)).collect();
    let mut views: Vec<BackendView> = ts.iter().map(|t| t.view(1)).collect();
    views[1].aliases = vec!["host-2".into(), "web-two".into()];
    let lb = Lb::one("pin_header: app\npin_cookie: app", views);
    let addr = lb.addr();
    for extra in [("app", "app2"), ("app", "APP2"), ("app", "web-two"), ("Cookie", "x=1; app=app2"), ("Cookie", "app=host-2")] {
        let names: Vec<String> = (0..5).map(|_| get(addr, "x", "/", &[extra]).name()).collect();
        assert!(names.iter().all(|n| n == "app2"), "{extra:?}: {names:?}");
    }
    // An unknown name: normal balancing.
    let t = tally((0..9).map(|_| get(addr, "x", "/", &[("app", "nope")]).name()));
    assert_eq!(t.len(), 3, "{t:?}");
}

#[test]
fn sticky_cookie_survives_an_address_change() {
    // Names with letters beyond a-f, so the hex cookie value cannot contain them.
    let a = Testd::start("red");
    let b = Testd::start("green");
    let opts = "sticky_cookie: { name: srv, max_age: 1h }";
    let lb = Lb::one(opts, vec![a.view(1), b.view(1)]);
    let addr = lb.addr();
    let first = get(addr, "x", "/", &[]);
    let set = first.header("set-cookie").expect("a sticky cookie is set");
    assert!(set.starts_with("srv=") && set.contains("Path=/") && set.contains("Max-Age=3600") && set.contains("HttpOnly"), "{set}");
    assert!(!set.contains(&first.name()), "the value does not leak the backend's name: {set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let who = first.name();
    for _ in 0..10 {
        let r = get(addr, "x", "/", &[("Cookie", &cookie)]);
        assert_eq!(r.name(), who);
        assert!(r.header("set-cookie").is_none(), "no new cookie while it holds");
    }
    // The backend comes back under the same name at another address.
    let (gone, other) = if who == "red" { (a, b) } else { (b, a) };
    let old_addr = gone.addr();
    drop(gone);
    let moved = Testd::start(&who);
    assert_ne!(moved.addr(), old_addr);
    lb.update(vec![svc("web", opts, vec![moved.view(1), other.view(1)])]);
    for _ in 0..10 {
        assert_eq!(get(addr, "x", "/", &[("Cookie", &cookie)]).name(), who);
    }
    eprintln!("sticky: {cookie} kept {who} at {} after its move", moved.addr());
}

// ---------------------------------------------------------------------------------------
// Retries, timeouts, passive health

#[test]
fn connect_failures_retry_elsewhere_and_feed_passive_health() {
    let ok = Testd::start("ok");
    let lb = Lb::one("method: round_robin\nmax_fails: 1\nfail_timeout: 30s", vec![backend("dead", dead_addr(), 1), ok.view(1)]);
    let addr = lb.addr();
    let t = tally((0..20).map(|_| {
        let r = get(addr, "x", "/", &[]);
        assert_eq!(r.status, 200);
        r.name()
    }));
    assert_eq!(t, BTreeMap::from([("ok".into(), 20)]));
    let f = lb.failures();
    eprintln!("connect failures reported: {f:?}");
    // One failure took it out for fail_timeout: it is not tried again.
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!((f[0].backend.as_str(), f[0].kind, f[0].max_fails), ("dead", FailureKind::Connect, 1));
    // POST is retried too after a connect failure: nothing was sent.
    let lb = Lb::one("method: round_robin\nmax_fails: 0", vec![backend("dead", dead_addr(), 1), ok.view(1)]);
    let (r, _) = raw(lb.addr(), b"POST /delay/0 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(r.unwrap().status, 200);
    // Nothing else to try: a clean 502 page.
    let lb = Lb::one("max_fails: 0", vec![backend("dead", dead_addr(), 1)]);
    let r = get(lb.addr(), "x", "/", &[]);
    assert_eq!((r.status, r.text().as_str()), (502, "502 Bad Gateway\n"));
}

#[test]
fn bad_gateway_answers_retry_only_idempotent_requests() {
    let bad = RawBackend::start("bad", Behaviour::Status(503));
    let good = RawBackend::start("good", Behaviour::Status(200));
    let lb = Lb::one("method: round_robin\nmax_fails: 0", vec![bad.view(), good.view()]);
    let addr = lb.addr();
    let t = tally((0..10).map(|_| {
        let r = get(addr, "x", "/", &[]);
        assert_eq!(r.status, 200);
        r.name()
    }));
    assert_eq!(t, BTreeMap::from([("good".into(), 10)]));
    assert_eq!(bad.heads().len(), 5, "every other GET tried bad first");
    // A POST that reached bad is not replayed: the client gets bad's 503.
    let statuses: Vec<u16> = (0..4).map(|_| raw(addr, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi").0.unwrap().status).collect();
    assert_eq!(statuses.iter().filter(|&&s| s == 503).count(), 2, "{statuses:?}");
    // All backends failing: bounded tries, then the last answer.
    let lb = Lb::one("retries: { attempts: 5 }\nmax_fails: 0", vec![bad.view()]);
    let before = bad.heads().len();
    assert_eq!(get(lb.addr(), "x", "/", &[]).status, 503);
    assert_eq!(bad.heads().len() - before, 1, "a retry goes to another backend only");
    // Nothing usable at all: 503 page.
    let lb = Lb::one("", vec![]);
    let r = get(lb.addr(), "x", "/", &[]);
    assert_eq!((r.status, r.text().as_str()), (503, "503 Service Unavailable\n"));
}

#[test]
fn connect_timeout_is_504_and_retries_elsewhere() {
    let stuck = stuck_listener();
    let ok = Testd::start("ok");
    let lb = Lb::one("timeouts: { connect: 200ms }\nretries: { attempts: 0 }\nmax_fails: 0", vec![backend("stuck", stuck.2, 1)]);
    let t0 = Instant::now();
    let r = get(lb.addr(), "x", "/", &[]);
    let took = t0.elapsed();
    eprintln!("connect timeout 200ms: {} after {took:?}", r.status);
    assert_eq!((r.status, r.text().as_str()), (504, "504 Gateway Timeout\n"));
    assert!(took >= Duration::from_millis(190) && took < Duration::from_millis(1000), "{took:?}");
    assert_eq!(lb.failures().iter().map(|f| f.kind).collect::<Vec<_>>(), [FailureKind::Connect]);
    // With another backend the request goes there after the connect timeout.
    let lb = Lb::one("method: round_robin\ntimeouts: { connect: 200ms }\nmax_fails: 0", vec![backend("stuck", stuck.2, 1), ok.view(1)]);
    let names: Vec<String> = (0..4).map(|_| get(lb.addr(), "x", "/", &[]).name()).collect();
    assert_eq!(names, ["ok", "ok", "ok", "ok"]);
    assert_eq!(lb.failures().len(), 2, "every other request tried stuck first");
}

/// Retries are bounded by `attempts` (each on another backend) and wait a random time
/// in `[0, min(max_backoff, backoff·2^(n−1))]` before retry n. Timings are compared with
/// a run without backoff, interleaved request by request, by medians and quartiles: the
/// host may be loaded by other tests.
#[test]
fn retries_are_bounded_with_jittered_backoff() {
    let bad: Vec<RawBackend> = (0..4).map(|i| RawBackend::start(&format!("bad{i}"), Behaviour::Status(503))).collect();
    let views = || bad.iter().map(RawBackend::view).collect::<Vec<_>>();
    let tries = || bad.iter().map(|b| b.heads().len()).sum::<usize>();
    let timed = |lb: &Lb| -> u128 {
        let before = tries();
        let t0 = Instant::now();
        let r = get(lb.addr(), "x", "/", &[]);
        let took = t0.elapsed().as_millis();
        assert_eq!(r.status, 503, "the last backend's own answer");
        assert_eq!(tries() - before, 3, "the first try and 2 retries, never a 4th");
        took
    };
    let lb = |retries: &str| Lb::one(&format!("method: round_robin\nmax_fails: 0\nretries: {{ attempts: 2, {retries} }}"), views());
    let none = lb("backoff: 0s");
    // Two retries after U(0, 100 ms) each: 0..200 ms more, median 100.
    let jittered = lb("backoff: 100ms, max_backoff: 100ms");
    // 1 s doubling, capped at 30 ms: 0..60 ms more.
    let capped = lb("backoff: 1s, max_backoff: 30ms");
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..20 {
        a.push(timed(&none));
        b.push(timed(&jittered));
        if i % 2 == 0 {
            c.push(timed(&capped));
        }
    }
    let quartiles = |v: &mut Vec<u128>| {
        v.sort_unstable();
        (v[v.len() / 4], v[v.len() / 2], v[v.len() * 3 / 4])
    };
    let ((_, a2, _), (b1, b2, b3), (_, c2, _)) = (quartiles(&mut a), quartiles(&mut b), quartiles(&mut c));
    eprintln!("3 tries each, ms: no backoff {a:?}\nbackoff U(0,100ms) per retry {b:?}\nbackoff 1s capped at 30ms {c:?}");
    eprintln!("medians: {a2} / {b2} / {c2} ms; jittered quartiles {b1}..{b3} ms");
    assert!(b2 >= a2 + 40, "the backoff waits: median {b2} ms against {a2} without");
    assert!(b2 <= a2 + 200, "bounded: median {b2} ms against {a2} without");
    assert!(b3 - b1 >= 25, "jittered, not a fixed wait: quartiles {b1}..{b3} ms");
    assert!(c2 <= a2 + 150, "max_backoff caps it: median {c2} ms against {a2} without (uncapped: about 1500 more)");
}

#[test]
fn backend_connections_are_pooled() {
    let b = RawBackend::start("pooled", Behaviour::Status(200));
    let lb = Lb::one("", vec![b.view()]);
    // 30 requests, each on a new client connection.
    for _ in 0..30 {
        assert_eq!(get(lb.addr(), "x", "/", &[]).status, 200);
    }
    eprintln!("30 requests from 30 client connections: {} backend connection(s)", b.conns());
    assert_eq!(b.heads().len(), 30);
    assert!(b.conns() <= 3, "kept alive and reused: {} connections", b.conns());
}

#[test]
fn header_and_total_timeouts() {
    let (slow, fast) = (Testd::start("slow"), Testd::start("fast"));
    slow.delay(2000);
    // Header timeout, no retries: 504 after about the timeout.
    let lb = Lb::one("timeouts: { header: 300ms }\nretries: { attempts: 0 }\nmax_fails: 0", vec![slow.view(1)]);
    let t0 = Instant::now();
    let r = get(lb.addr(), "x", "/", &[]);
    let took = t0.elapsed();
    eprintln!("header timeout 300ms: {} after {took:?}", r.status);
    assert_eq!((r.status, r.text().as_str()), (504, "504 Gateway Timeout\n"));
    assert!(took >= Duration::from_millis(290) && took < Duration::from_millis(1500), "{took:?}");
    // With a retry the fast backend answers.
    let lb = Lb::one("method: round_robin\ntimeouts: { header: 300ms }\nmax_fails: 0", vec![slow.view(1), fast.view(1)]);
    let t0 = Instant::now();
    let names: Vec<String> = (0..2).map(|_| get(lb.addr(), "x", "/", &[]).name()).collect();
    assert_eq!(names, ["fast", "fast"]);
    assert!(t0.elapsed() < Duration::from_millis(1500), "{:?}", t0.elapsed());
    assert!(lb.failures().iter().all(|f| f.kind == FailureKind::Timeout && f.backend == "slow"));
    // Total timeout across tries.
    fast.delay(2000);
    let lb = Lb::one("timeouts: { total: 500ms }\nmax_fails: 0", vec![slow.view(1), fast.view(1)]);
    let t0 = Instant::now();
    let r = get(lb.addr(), "x", "/", &[]);
    let took = t0.elapsed();
    eprintln!("total timeout 500ms: {} after {took:?}", r.status);
    assert_eq!(r.status, 504);
    assert!(took < Duration::from_millis(1200), "{took:?}");
}

#[test]
fn idle_response_timeout_cuts_a_stalled_body() {
    let t = Testd::start("s");
    // /stream writes a line every 100 ms: an idle timeout of 1 s lets it through, 50 ms not.
    let lb = Lb::one("timeouts: { idle: 1s }", vec![t.view(1)]);
    let r = get(lb.addr(), "x", "/stream?secs=1", &[]);
    assert!(r.text().ends_with("s done\n"), "{:?}", r.text());
    let lb = Lb::one("timeouts: { idle: 50ms }", vec![t.view(1)]);
    let mut c = Client::connect(lb.addr());
    c.send(b"GET /stream?secs=2 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let r = c.read();
    assert!(r.is_err() || !r.unwrap().text().contains("done"), "a stalled body is cut off");
}

#[test]
fn a_client_that_stops_reading_is_cut_off() {
    const SIZE: usize = 64 << 20;
    let big = RawBackend::start("big", Behaviour::Big(SIZE));
    let lb = Lb::one("timeouts: { idle: 300ms }", vec![big.view()]);
    let mut c = Client::connect(lb.addr());
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // Read nothing while the buffers fill and the proxy waits.
    thread::sleep(Duration::from_millis(2000));
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        match c.r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    eprintln!("a client that stopped reading got {got} of {SIZE} bytes");
    assert!(got < SIZE, "the whole body arrived");
}

// ---------------------------------------------------------------------------------------
// Headers

#[test]
fn forwarding_headers_and_hop_by_hop() {
    let echo = RawBackend::start("echo", Behaviour::EchoHead);
    let req = "GET /p?q=1 HTTP/1.1\r\nHost: App.Dev:8080\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\
               Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nX-Other: yes\r\n\r\n";
    // An untrusted client: its forwarding headers are replaced.
    let lb = Lb::one("", vec![echo.view()]);
    let (r, _) = raw(lb.addr(), req.as_bytes());
    let r = r.unwrap();
    let head = r.text();
    eprintln!("backend saw (untrusted client):\n{head}");
    let h = |n: &str| header_of(&head, n);
    assert!(head.starts_with("echo\nGET /p?q=1 HTTP/1.1\r\n"), "{head}");
    assert_eq!(h("host").as_deref(), Some("App.Dev:8080"));
    assert_eq!(h("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(h("x-real-ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(h("x-forwarded-host").as_deref(), Some("App.Dev:8080"));
    assert_eq!(h("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(h("x-other").as_deref(), Some("yes"));
    for gone in ["x-secret", "keep-alive", "te", "proxy-connection"] {
        assert_eq!(h(gone), None, "{gone} forwarded");
    }
    // A trusted one: appended, and the real client is the first untrusted hop.
    let lb = Lb::one("trusted_networks: [127.0.0.0/8]", vec![echo.view()]);
    let head = raw(lb.addr(), req.as_bytes()).0.unwrap().text();
    assert_eq!(header_of(&head, "x-forwarded-for").as_deref(), Some("6.6.6.6, 127.0.0.1"));
    assert_eq!(header_of(&head, "x-real-ip").as_deref(), Some("6.6.6.6"));
    assert_eq!(header_of(&head, "x-forwarded-proto").as_deref(), Some("https"));
    // Response hop-by-hop headers are removed too.
    let hop = RawBackend::start("hop", Behaviour::HopHeaders);
    let lb = Lb::one("", vec![hop.view()]);
    let r = get(lb.addr(), "x", "/", &[]);
    assert_eq!(r.header("x-kept").as_deref(), Some("1"));
    assert_eq!(r.header("x-private"), None);
    assert_eq!(r.header("keep-alive"), None);
}

#[test]
fn http2_prior_knowledge_h2c_upgrade_and_http10() {
    let t = Testd::start("h2");
    let lb = Lb::one("", vec![t.view(1)]);
    let addr = lb.addr();
    let bodies: Vec<String> = lb.rt.block_on(async move {
        use http_body_util::{BodyExt, Empty};
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).http2_only(true).build_http::<Empty<bytes::Bytes>>();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let c = client.clone();
            tasks.push(tokio::spawn(async move {
                let r = c.get(format!("http://{addr}/").parse().unwrap()).await.unwrap();
                assert_eq!(r.version(), hyper::Version::HTTP_2);
                assert_eq!(r.status(), 200);
                String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    assert!(bodies.iter().all(|b| b == "h2\n"), "{bodies:?}");
    // HTTP/1.0 without Host reaches the catch-all service.
    let (r, _) = raw(addr, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(r.unwrap().name(), "h2");
    // `Upgrade: h2c` (RFC 7540 3.2), by curl: 101, then the request that asked is
    // answered on stream 1 and the next one on stream 3 of the same connection.
    let url = format!("http://{addr}/");
    let out = Command::new("curl").args(["--http2", "-sS", "-v", "--max-time", "10", &url, &url]).output().expect("curl");
    let (body, log) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("curl --http2 (h2c upgrade), twice:\n{log}");
    assert!(out.status.success(), "{log}");
    assert_eq!(body, "h2\nh2\n");
    assert!(log.contains("< HTTP/1.1 101"), "{log}");
    assert_eq!(log.matches("< HTTP/2 200").count(), 2, "both answers over HTTP/2: {log}");
    assert_eq!(log.matches("* Connected to").count(), 1, "one connection: {log}");
    // An h2c upgrade the proxy declines (no HTTP2-Settings) is answered over HTTP/1.1,
    // and the connection goes on as HTTP/1.1.
    let mut c = Client::connect(addr);
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n").unwrap();
    let r = c.read().unwrap();
    assert_eq!((r.status, r.name()), (200, "h2".to_string()), "{r:?}");
    assert_eq!(r.header("upgrade"), None);
    assert_eq!(c.get("x", "/", &[]).unwrap().name(), "h2", "the connection goes on as HTTP/1.1");
}

#[test]
fn websocket_echo_through_the_proxy() {
    assert_eq!(ws_accept("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "RFC 6455's example");
    let ws = RawBackend::start("ws", Behaviour::WsEcho);
    let lb = Lb::one("timeouts: { keepalive: 300ms, client_header: 300ms }", vec![ws.view()]);
    let mut c = Client::connect(lb.addr());
    let key = "x3JJHMbDL1EzLkh9GBhXDw==";
    c.send(format!("GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes()).unwrap();
    let r = c.read().unwrap();
    assert_eq!(r.status, 101, "{r:?}");
    assert_eq!(r.header("sec-websocket-accept"), Some(ws_accept(key)));
    assert!(r.header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")));
    // Frames both ways, also after the client timeouts would have closed an HTTP connection.
    for (i, msg) in ["hello", "through xlb", &"x".repeat(70_000)].iter().enumerate() {
        if i == 2 {
            thread::sleep(Duration::from_millis(600));
        }
        ws_write(&mut c.w, 1, msg.as_bytes(), Some([1, 2, 3, 4])).unwrap();
        let (op, payload) = ws_read(&mut c.r).unwrap().expect("an echo");
        assert_eq!((op, payload.len()), (1, msg.len()));
        assert_eq!(&payload[..], msg.as_bytes());
    }
    ws_write(&mut c.w, 8, b"", Some([9, 9, 9, 9])).unwrap();
    assert_eq!(ws_read(&mut c.r).unwrap().map(|f| f.0), Some(8));
    // A declined upgrade is a normal response, and the connection goes on as HTTP.
    let t = Testd::start("plain");
    let lb = Lb::one("", vec![t.view(1)]);
    let mut c = Client::connect(lb.addr());
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n").unwrap();
    assert_eq!(c.read().unwrap().name(), "plain");
    assert_eq!(c.get("x", "/", &[]).unwrap().name(), "plain");
}

// ---------------------------------------------------------------------------------------
// Bad input

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
    let chunked_big = format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n", "100\r\n".to_string() + &"d".repeat(256) + "\r\n").repeat(1);
    let chunked_big = chunked_big.replace("0\r\n\r\n", "") + &("100\r\n".to_string() + &"d".repeat(256) + "\r\n").repeat(4) + "0\r\n\r\n";
    for (what, req, want) in [("long URI", long_uri, 414), ("big header", big_header, 431), ("many headers", many, 431), ("big body", big_body, 413), ("big chunked body", chunked_big, 413)] {
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
