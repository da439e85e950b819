//! The backends: xlb-testd processes, and raw backends written here where a test needs to
//! see request heads, WebSocket, or fixed answers; ports that hang or refuse.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use xlb::plan::{BackendView, PeerState};
use xlb_tests::{
    http,
    util::{Proc, STDOUT},
};

use crate::{
    client::TIMEOUT,
    websocket::{ws_accept, ws_read, ws_write},
};

pub struct Testd {
    pub name: String,
    pub port: u16,
    pub _proc: Proc,
}

impl Testd {
    pub fn start(name: &str) -> Testd {
        let mut c = Command::new(Path::new(env!("CARGO_BIN_EXE_xlb-testd")));
        c.args(["--name", name, "--port", "0", "--quiet"]);
        let mut proc = Proc::spawn(name, c);
        let line = proc.wait_line(STDOUT, "listening", Duration::from_secs(10)).unwrap();
        let port = line.split_whitespace().find_map(|w| w.strip_prefix("tcp/")).and_then(|p| p.parse().ok()).unwrap();
        Testd { name: name.into(), port, _proc: proc }
    }

    pub fn addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.port).into()
    }

    /// `POST /delay/MS` straight to the backend: `GET /` answers after MS.
    pub fn delay(&self, ms: u64) {
        assert_eq!(http::request(self.addr(), "POST", &format!("/delay/{ms}")).unwrap().status, 200);
    }

    pub fn view(&self, weight: u32) -> BackendView {
        backend(&self.name, self.addr(), weight)
    }
}

pub fn backend(name: &str, addr: SocketAddr, weight: u32) -> BackendView {
    BackendView { name: name.into(), aliases: vec![], hosts: vec![], addr, weight, backup: false, state: PeerState::Active, max_conns: None, tls: Default::default() }
}

/// A listening port whose accept queue is full (listen backlog 0, one connection never
/// accepted): the kernel drops further SYNs, so a connect to it hangs. Keep the result.
pub fn stuck_listener() -> (socket2::Socket, TcpStream, SocketAddr) {
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
pub fn listening(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// A port nothing listens on.
pub fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    l.local_addr().unwrap()
}

#[derive(Clone, Copy)]
pub enum Behaviour {
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

/// Accepts on a loopback port, handing each connection to `conn`, until the flag it returns
/// is set (the accept loop polls, so it ends within milliseconds).
pub fn serve_loopback(mut conn: impl FnMut(TcpStream) + Send + 'static) -> (SocketAddr, Arc<AtomicBool>) {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((c, _)) => conn(c),
                Err(_) => thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    (addr, stop)
}

/// A small HTTP/1.1 backend in threads; records the request heads it got.
pub struct RawBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub heads: Arc<Mutex<Vec<String>>>,
    /// Connections accepted.
    pub conns: Arc<AtomicUsize>,
    pub stop: Arc<AtomicBool>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl RawBackend {
    pub fn start(name: &str, b: Behaviour) -> RawBackend {
        let heads = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(AtomicUsize::new(0));
        let (h, n, k) = (heads.clone(), name.to_string(), conns.clone());
        let (addr, stop) = serve_loopback(move |c| {
            k.fetch_add(1, Ordering::Relaxed);
            let (h, n) = (h.clone(), n.clone());
            thread::spawn(move || {
                let _ = raw_conn(c, &n, b, &h);
            });
        });
        RawBackend { name: name.into(), addr, heads, conns, stop }
    }

    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    pub fn conns(&self) -> usize {
        self.conns.load(Ordering::Relaxed)
    }

    pub fn view(&self) -> BackendView {
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
                write!(
                    w,
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    ws_accept(&key)
                )?;
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

pub fn header_of(head: &str, name: &str) -> Option<String> {
    head.lines().filter_map(|l| l.split_once(':')).find(|(k, _)| k.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string())
}
