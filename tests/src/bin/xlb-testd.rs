//! `xlb-testd`: a tiny test backend for xlb's end-to-end tests.
//!
//! ```text
//! xlb-testd [--name NAME] [--port PORT] [--udp-port PORT] [--lame-duck MS] [--quiet]
//!   env: XLB_TESTD_NAME, XLB_TESTD_PORT, XLB_TESTD_UDP_PORT, XLB_TESTD_LAME_DUCK_MS
//! xlb-testd check [--port PORT]
//! ```
//!
//! `check` is a Docker HEALTHCHECK for a `FROM scratch` image (no shell, no curl): it GETs
//! `http://127.0.0.1:PORT/health` (PORT: `--port`, else `XLB_TESTD_PORT`, else 8080; the
//! container's environment is the check's) and exits 0 on a 200, 1 otherwise, with the
//! answer's status line (or the error) on stdout, which Docker keeps in `State.Health.Log`.
//!
//! NAME `@hostname` stands for the host name (in a container: its short id, unless set), so
//! the replicas of one compose service answer with different names.
//!
//! HTTP/1.1 on TCP PORT (default 8080), keep-alive supported:
//! - `GET /`                 200, body `NAME\n` (after the delay set by `/delay`)
//! - `GET /health`           200 `ok\n` or 503 `fail\n`
//! - `POST /health/fail`     health checks start failing
//! - `POST /health/ok`       health checks pass again
//! - `POST /delay/<ms>`      delay the answer of `GET /` by `ms` milliseconds
//! - `GET /stream?secs=N`    200, `Connection: close`, one line `NAME <i>\n` every 100 ms
//!   for N seconds (default 10), then `NAME done\n`, then close
//!
//! UDP on the same port number (or `--udp-port`): every datagram is answered with `NAME\n`.
//!
//! Once both sockets are bound it prints `xlb-testd NAME listening on tcp/PORT udp/PORT` on
//! stdout.
//!
//! Signals (handled by xlb-testd itself, so they also work as PID 1 in a `FROM scratch`
//! container, where a signal without a handler is dropped):
//! - SIGTERM starts a lame-duck period of `--lame-duck` ms (default 1000; 0: exit at once):
//!   it prints `xlb-testd NAME lame duck for MS ms`, goes on accepting and answering, answers
//!   `GET /health` with 503 `lame-duck`, closes keep-alive connections after their current
//!   response (`Connection: close`), then prints `xlb-testd NAME exiting` and exits 0. This is
//!   what a backend does for a zero-failure `docker stop`: the load balancer stops sending new
//!   connections while the old ones are still answered.
//! - SIGINT, or a second SIGTERM, exits 0 at once.
//!
//! Built std-only (plus libc for the signal handler) so that it links statically:
//! `RUSTFLAGS='-C target-feature=+crt-static' cargo build -p xlb-tests --bin xlb-testd
//! --release --no-default-features --target x86_64-unknown-linux-gnu`.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::exit,
    os::fd::FromRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

const MAX_HEADER_BYTES: usize = 16 * 1024;
const MAX_BODY_BYTES: u64 = 1024 * 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_STREAM_SECS: u64 = 3600;
const MAX_DELAY_MS: u64 = 600_000;
const DEFAULT_LAME_DUCK_MS: u64 = 1000;
const MAX_LAME_DUCK_MS: u64 = 600_000;

/// Set once SIGTERM started the lame-duck period.
static LAME_DUCK: AtomicBool = AtomicBool::new(false);
/// The write end of the self-pipe the signal handler reports SIGTERM on (-1: none yet).
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);
/// A SIGTERM was already received (a second one exits at once).
static TERMINATING: AtomicBool = AtomicBool::new(false);

struct State {
    name: String,
    healthy: AtomicBool,
    delay_ms: AtomicU64,
    quiet: bool,
}

struct Args {
    name: String,
    port: u16,
    udp_port: Option<u16>,
    lame_duck_ms: u64,
    quiet: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: xlb-testd [--name NAME|@hostname] [--port PORT] [--udp-port PORT] [--lame-duck MS] [--quiet]\n\
         \x20      xlb-testd check [--port PORT]\n\
         env: XLB_TESTD_NAME, XLB_TESTD_PORT, XLB_TESTD_UDP_PORT, XLB_TESTD_LAME_DUCK_MS"
    );
    exit(2)
}

fn parse_ms(s: &str) -> u64 {
    match s.parse::<u64>() {
        Ok(ms) if ms <= MAX_LAME_DUCK_MS => ms,
        _ => {
            eprintln!("xlb-testd: bad lame-duck period {s:?} (milliseconds, at most {MAX_LAME_DUCK_MS})");
            exit(2)
        }
    }
}

/// The host name (uname's nodename).
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        eprintln!("xlb-testd: gethostname: {}", io::Error::last_os_error());
        exit(1)
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn parse_port(s: &str) -> u16 {
    s.parse().unwrap_or_else(|_| {
        eprintln!("xlb-testd: bad port {s:?}");
        exit(2)
    })
}

fn parse_args() -> Args {
    let mut args = Args {
        name: std::env::var("XLB_TESTD_NAME").unwrap_or_else(|_| "testd".into()),
        port: std::env::var("XLB_TESTD_PORT").map(|p| parse_port(&p)).unwrap_or(8080),
        udp_port: std::env::var("XLB_TESTD_UDP_PORT").ok().map(|p| parse_port(&p)),
        lame_duck_ms: std::env::var("XLB_TESTD_LAME_DUCK_MS").map(|v| parse_ms(&v)).unwrap_or(DEFAULT_LAME_DUCK_MS),
        quiet: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next()).unwrap_or_else(|| usage());
        match key.as_str() {
            "--name" | "-n" => args.name = value(),
            "--port" | "-p" => args.port = parse_port(&value()),
            "--udp-port" => args.udp_port = Some(parse_port(&value())),
            "--lame-duck" => args.lame_duck_ms = parse_ms(&value()),
            "--quiet" | "-q" => args.quiet = true,
            "--help" | "-h" => usage(),
            _ => {
                eprintln!("xlb-testd: unknown argument {a:?}");
                usage()
            }
        }
    }
    if args.name == "@hostname" {
        args.name = hostname();
    }
    if args.name.is_empty() || args.name.contains(['\r', '\n']) {
        eprintln!("xlb-testd: bad name {:?}", args.name);
        exit(2)
    }
    args
}

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe calls here: atomics, write(2), _exit(2).
    if sig == libc::SIGTERM && !TERMINATING.swap(true, Ordering::SeqCst) {
        let fd = SIGNAL_PIPE.load(Ordering::SeqCst);
        if fd >= 0 {
            let b = 1u8;
            // SAFETY: writes one byte from a live local; the pipe lives as long as the process.
            if unsafe { libc::write(fd, (&raw const b).cast(), 1) } == 1 {
                return;
            }
        }
    }
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

/// Installs the SIGTERM/SIGINT handler (a real handler, not SIG_DFL: as PID 1 of a container
/// a signal left at SIG_DFL is dropped) and starts the thread that runs the lame-duck period
/// when SIGTERM arrives.
fn install_signal_handlers(name: String, lame_duck: Duration) {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        eprintln!("xlb-testd: pipe2: {}", io::Error::last_os_error());
        exit(1)
    }
    SIGNAL_PIPE.store(fds[1], Ordering::SeqCst);
    // SAFETY: fds[0] is ours; the File owns it from now on.
    let mut rd = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut b = [0u8; 1];
            loop {
                match rd.read(&mut b) {
                    Ok(1) => break,
                    Ok(_) => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                }
            }
            if !lame_duck.is_zero() {
                LAME_DUCK.store(true, Ordering::SeqCst);
                let mut out = io::stdout().lock();
                let _ = writeln!(out, "xlb-testd {name} lame duck for {} ms", lame_duck.as_millis());
                let _ = out.flush();
                drop(out);
                thread::sleep(lame_duck);
            }
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "xlb-testd {name} exiting");
            let _ = out.flush();
            // SAFETY: ends the process without running destructors other threads may be using.
            unsafe { libc::_exit(0) }
        })
        .expect("spawn signal thread");
    // SAFETY: installs a handler that only uses async-signal-safe calls; SA_RESTART so that
    // accept(2) and friends are restarted rather than failing with EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        // Writes to a peer that went away must give EPIPE, not kill us.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Binds the IPv6 wildcard (dual-stack), or the IPv4 one where IPv6 is not available
/// (e.g. a container with IPv6 disabled).
fn bind_tcp(port: u16) -> io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
        .or_else(|_| TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))))
}

fn bind_udp(port: u16) -> io::Result<UdpSocket> {
    UdpSocket::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
        .or_else(|_| UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))))
}

/// Time limit of each step of `check` (Docker's own timeout kills it anyway).
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `xlb-testd check [--port PORT]`: exits 0 if this host's xlb-testd answers `GET /health`
/// with 200, else 1.
fn check(mut args: impl Iterator<Item = String>) -> ! {
    let mut port = std::env::var("XLB_TESTD_PORT").map(|p| parse_port(&p)).unwrap_or(8080);
    while let Some(a) = args.next() {
        match a.split_once('=') {
            Some(("--port", v)) => port = parse_port(v),
            _ if a == "--port" || a == "-p" => port = parse_port(&args.next().unwrap_or_else(|| usage())),
            _ => {
                eprintln!("xlb-testd check: unknown argument {a:?}");
                usage()
            }
        }
    }
    let verdict = (|| -> io::Result<String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut s = TcpStream::connect_timeout(&addr, CHECK_TIMEOUT)?;
        s.set_read_timeout(Some(CHECK_TIMEOUT))?;
        s.set_write_timeout(Some(CHECK_TIMEOUT))?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(line.trim_end().to_string())
    })();
    match verdict {
        Ok(line) if line.split_whitespace().nth(1) == Some("200") => {
            println!("{line}");
            exit(0)
        }
        Ok(line) => {
            println!("unhealthy: {line:?}");
            exit(1)
        }
        Err(e) => {
            println!("unhealthy: 127.0.0.1:{port}: {e}");
            exit(1)
        }
    }
}

fn main() {
    let mut argv = std::env::args().skip(1).peekable();
    if argv.peek().map(String::as_str) == Some("check") {
        argv.next();
        check(argv)
    }
    let args = parse_args();
    install_signal_handlers(args.name.clone(), Duration::from_millis(args.lame_duck_ms));
    let state = Arc::new(State {
        name: args.name.clone(),
        healthy: AtomicBool::new(true),
        delay_ms: AtomicU64::new(0),
        quiet: args.quiet,
    });
    let udp_port = args.udp_port.unwrap_or(args.port);
    let tcp = bind_tcp(args.port).unwrap_or_else(|e| {
        eprintln!("xlb-testd: bind tcp/{}: {e}", args.port);
        exit(1)
    });
    let udp = bind_udp(udp_port).unwrap_or_else(|e| {
        eprintln!("xlb-testd: bind udp/{udp_port}: {e}");
        exit(1)
    });
    let tcp_port = tcp.local_addr().map(|a| a.port()).unwrap_or(args.port);
    let udp_port = udp.local_addr().map(|a| a.port()).unwrap_or(udp_port);

    {
        let state = state.clone();
        thread::Builder::new()
            .name("udp".into())
            .spawn(move || serve_udp(udp, &state))
            .expect("spawn udp thread");
    }

    println!("xlb-testd {} listening on tcp/{tcp_port} udp/{udp_port}", args.name);
    let _ = io::stdout().flush();

    for conn in tcp.incoming() {
        match conn {
            Ok(stream) => {
                let state = state.clone();
                let spawned = thread::Builder::new().name("conn".into()).spawn(move || {
                    let peer = stream.peer_addr().ok();
                    if let Err(e) = serve_conn(stream, &state)
                        && !state.quiet && e.kind() != io::ErrorKind::UnexpectedEof {
                            eprintln!("xlb-testd: connection {peer:?}: {e}");
                        }
                });
                if let Err(e) = spawned {
                    eprintln!("xlb-testd: spawn: {e}");
                }
            }
            Err(e) => {
                eprintln!("xlb-testd: accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn serve_udp(sock: UdpSocket, state: &State) {
    let reply = format!("{}\n", state.name);
    let mut buf = [0u8; 65536];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((_, peer)) => {
                if let Err(e) = sock.send_to(reply.as_bytes(), peer)
                    && !state.quiet {
                        eprintln!("xlb-testd: udp reply to {peer}: {e}");
                    }
            }
            Err(e) => {
                eprintln!("xlb-testd: udp recv: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

struct Request {
    method: String,
    target: String,
    keep_alive: bool,
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
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad request line {line:?}")));
    };
    let (method, target) = (method.to_string(), target.to_string());
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
        let Some((k, v)) = l.split_once(':') else { continue };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            content_length = v.parse().map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, "bad content-length")
            })?;
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
    Ok(Some(Request { method, target, keep_alive }))
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

fn serve_conn(stream: TcpStream, state: &State) -> io::Result<()> {
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
            ("POST", p) if p.starts_with("/delay/") => {
                match p["/delay/".len()..].parse::<u64>() {
                    Ok(ms) if ms <= MAX_DELAY_MS => {
                        state.delay_ms.store(ms, Ordering::Relaxed);
                        respond(&mut w, 200, &format!("delay {ms}\n"), ka)?;
                    }
                    _ => respond(&mut w, 400, "bad delay\n", ka)?,
                }
            }
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
            (_, "/" | "/health" | "/health/fail" | "/health/ok" | "/stream") => {
                respond(&mut w, 405, "method not allowed\n", ka)?
            }
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
