//! Memory per idle connection (issue 13): `CONNECTIONS` clients each complete a TLS
//! handshake (plain HTTP contenders: none) and one request, then stay open and silent
//! (keep-alive connections between requests, as browsers leave them); the balancer's
//! resident memory (VmRSS of its processes in the LB namespace) before they connect and
//! once they all are idle, divided by the connections. The client is this process
//! (rustls, a thread per `OPENERS`), so no load generator needs to hold 10,000
//! connections open.
use std::{
    fs,
    io::{Read, Write},
    path::Path,
    net::{SocketAddr, TcpStream},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned,
    crypto::ring,
    pki_types::{CertificateDer, ServerName, pem::PemObject as _},
};
use serde::Serialize;

use super::{
    contender::{self, Ctx, Kind},
    topo::{TLS_PORT, VIP, VIP_PORT},
};

/// Idle connections per contender.
pub const CONNECTIONS: usize = 10_000;
/// Threads opening them.
const OPENERS: usize = 4;

#[derive(Debug, Clone, Serialize)]
pub struct IdleTls {
    pub id: &'static str,
    pub label: &'static str,
    /// Idle connections still open when the memory was read.
    pub connections: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub kib_per_connection: f64,
    /// Seconds to open them all (handshake and one request each).
    pub open_seconds: f64,
}

/// Starts `kind`, opens the idle connections (over TLS if it is a TLS contender), and
/// reads its memory.
pub fn measure(ctx: &Ctx, kind: Kind) -> Result<IdleTls> {
    let running = contender::start(kind, ctx)?;
    let result = (|| {
        thread::sleep(Duration::from_millis(500));
        let (cert, _) = ctx.topo.certificate()?;
        let before = rss_kib(&ctx.topo.lb.pids());
        let started = Instant::now();
        let conns = super::sys::enter(&ctx.topo.client, || open_all(kind.is_tls().then_some(&cert)))?;
        let open_seconds = started.elapsed().as_secs_f64();
        // Let the balancer settle (buffers of the last requests released).
        thread::sleep(Duration::from_secs(1));
        let after = rss_kib(&ctx.topo.lb.pids());
        // On a busy host opening them all can outlast the balancer's keep-alive timeout
        // (nginx: 75 s): only the connections still open count.
        let open = conns.iter().filter(|c| c.is_open()).count();
        drop(conns);
        if open < CONNECTIONS {
            eprintln!(
                "bench: {}: {} of the {CONNECTIONS} idle connections were closed by the balancer before the measurement",
                kind.label(),
                CONNECTIONS - open
            );
        }
        if open == 0 {
            bail!("the balancer closed every idle connection before the measurement");
        }
        Ok(IdleTls {
            id: kind.id(),
            label: kind.label(),
            connections: open,
            rss_before_kib: before,
            rss_after_kib: after,
            kib_per_connection: after.saturating_sub(before) as f64 / open as f64,
            open_seconds,
        })
    })();
    if let Err(err) = running.stop() {
        eprintln!("bench: stopping {}: {err:#}", kind.label());
    }
    result
}

/// The sum of VmRSS (KiB) of `pids`.
fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// An idle client connection, kept open.
enum Conn {
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
    Plain(TcpStream),
}

/// Opens `CONNECTIONS` to VIP:443 (with `cert`, the bench certificate the client trusts)
/// or VIP:80, each after one answered request. The ring provider is xlb's own
/// (deprecated in rustls 0.23.48 only for lacking post-quantum key exchange).
#[allow(deprecated)]
fn open_all(cert: Option<&Path>) -> Result<Vec<Conn>> {
    raise_nofile();
    let tls = cert.is_some();
    let mut roots = RootCertStore::empty();
    if let Some(cert) = cert {
        let der = CertificateDer::from_pem_file(cert).with_context(|| format!("reading {}", cert.display()))?;
        roots.add(der).context("trusting the bench certificate")?;
    }
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let config = Arc::new(config);
    let addr = SocketAddr::from((VIP, if tls { TLS_PORT } else { VIP_PORT }));
    let per = CONNECTIONS.div_ceil(OPENERS);
    thread::scope(|s| {
        let workers: Vec<_> = (0..OPENERS)
            .map(|i| {
                let config = config.clone();
                let n = per.min(CONNECTIONS - (i * per).min(CONNECTIONS));
                s.spawn(move || (0..n).map(|_| open(tls.then_some(&config), addr)).collect::<Result<Vec<_>>>())
            })
            .collect();
        let mut all = Vec::with_capacity(CONNECTIONS);
        for w in workers {
            all.extend(w.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?);
        }
        Ok(all)
    })
}

/// One connection: handshake (with `tls`), `GET /`, the whole answer read.
fn open(tls: Option<&Arc<ClientConfig>>, addr: SocketAddr) -> Result<Conn> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).with_context(|| format!("connecting to {addr}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut conn = match tls {
        Some(config) => {
            let name = ServerName::try_from("bench.test").expect("a valid name");
            Conn::Tls(Box::new(StreamOwned::new(ClientConnection::new(config.clone(), name)?, tcp)))
        }
        None => Conn::Plain(tcp),
    };
    let stream: &mut dyn ReadWrite = match &mut conn {
        Conn::Tls(s) => &mut **s,
        Conn::Plain(s) => s,
    };
    stream.write_all(b"GET / HTTP/1.1\r\nHost: bench.test\r\n\r\n").context("sending a request")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !answered(&buf) {
        let n = stream.read(&mut chunk).context("reading the answer")?;
        if n == 0 {
            bail!("the connection closed before the answer ended");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if !buf.starts_with(b"HTTP/1.1 200") {
        bail!("answered {:?}", String::from_utf8_lossy(&buf[..buf.len().min(40)]));
    }
    Ok(conn)
}

impl Conn {
    /// The balancer has not closed it (nothing to read, no end of stream).
    fn is_open(&self) -> bool {
        let tcp = match self {
            Conn::Tls(s) => &s.sock,
            Conn::Plain(s) => s,
        };
        let mut b = [0u8; 1];
        let _ = tcp.set_nonblocking(true);
        matches!(tcp.peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A whole response with a `Content-Length` body is in `buf`.
fn answered(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok()).unwrap_or(0);
    buf.len() >= end + 4 + len
}

/// This process needs a descriptor per connection.
fn raise_nofile() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid pointers to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::answered;

    #[test]
    fn a_response_is_whole_once_its_body_is() {
        assert!(!answered(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"));
        assert!(!answered(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nb1"));
        assert!(answered(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nb1\n"));
        assert!(answered(b"HTTP/1.1 204 No Content\r\n\r\n"));
    }
}
