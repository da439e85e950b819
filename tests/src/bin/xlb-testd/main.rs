//! `xlb-testd`: a tiny test backend for xlb's end-to-end tests.
//!
//! ```text
//! xlb-testd [--name NAME] [--port PORT] [--udp-port PORT] [--lame-duck MS] [--quiet]
//!   env: XLB_TESTD_NAME, XLB_TESTD_PORT, XLB_TESTD_UDP_PORT, XLB_TESTD_LAME_DUCK_MS
//! xlb-testd check [--port PORT]
//! xlb-testd fetch [--udp] [--when-moved] [--hold] ADDR COUNT
//! ```
//!
//! `fetch` is a client for the socket-level balancing tests (see `fetch.rs`): COUNT
//! requests on new sockets, each printed as `NAME PEER` (the peer the socket reports).
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
//! - `GET /echo`             200, body `NAME\n` then the request head exactly as received
//!   (request line and header lines, CRLF included, without the blank line)
//! - `GET /status/<code>`    answers that status (400-599), body `NAME\n`
//! - `GET /bytes/<n>`        200, a body of `n` bytes (`x`), at most 16 MiB: a response
//!   large enough for full-sized segments (the path MTU test)
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

mod args;
mod check;
mod fetch;
mod http;
mod signals;

use std::{
    io::{self, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    process::exit,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64},
    },
    thread,
    time::Duration,
};

use crate::{
    args::parse_args,
    check::check,
    http::{State, serve_conn},
    signals::install_signal_handlers,
};

/// Binds the IPv6 wildcard (dual-stack), or the IPv4 one where IPv6 is not available
/// (e.g. a container with IPv6 disabled).
fn bind_tcp(port: u16) -> io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))).or_else(|_| TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))))
}

fn bind_udp(port: u16) -> io::Result<UdpSocket> {
    UdpSocket::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))).or_else(|_| UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))))
}

fn main() {
    let mut argv = std::env::args().skip(1).peekable();
    if argv.peek().map(String::as_str) == Some("check") {
        argv.next();
        check(argv)
    }
    if argv.peek().map(String::as_str) == Some("fetch") {
        argv.next();
        fetch::fetch(argv)
    }
    let args = parse_args();
    install_signal_handlers(args.name.clone(), Duration::from_millis(args.lame_duck_ms));
    let state = Arc::new(State { name: args.name.clone(), healthy: AtomicBool::new(true), delay_ms: AtomicU64::new(0), quiet: args.quiet });
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
        thread::Builder::new().name("udp".into()).spawn(move || serve_udp(udp, &state)).expect("spawn udp thread");
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
                        && !state.quiet
                        && e.kind() != io::ErrorKind::UnexpectedEof
                    {
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
                    && !state.quiet
                {
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
