//! Listeners: bound per VIP:port, each accepting connections within its limits (all
//! clients, and each client address): a socket per proxy worker (`SO_REUSEPORT`), each
//! accepted on its worker's runtime.

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock, atomic::Ordering::SeqCst},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    net::{TcpListener, TcpStream},
    task::AbortHandle,
};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::{
    conn::{raw_page, serve, write_all},
    guard::shared::ConnShared,
    limits::{Limit, PerIp, Permit},
    passthrough,
    transport::{SharedTcp, Tls},
};
use crate::proxy::{
    drain::{Closing, Drain},
    site::{Site, Slot, load},
    workers,
};

/// A bound listener: its accept tasks (one per worker), and the site its requests read.
/// Dropping it closes it ([`Listener::close`]).
pub struct Listener {
    pub local: SocketAddr,
    slot: Slot,
    conns: Arc<Limit>,
    limit: u32,
    per_ip: Arc<PerIp>,
    bodies: Arc<Limit>,
    bodies_kib: u32,
    tasks: Vec<AbortHandle>,
    drain: Drain,
    /// Terminates TLS before HTTP (turning it on or off takes a new listener).
    pub tls: bool,
}

impl Listener {
    /// Binds `listen` and starts accepting for `site`, over TLS when `tls` is given.
    pub fn open(listen: SocketAddr, site: Arc<Site>, tls: Option<TlsAcceptor>) -> anyhow::Result<Self> {
        // The first socket resolves port 0; the others bind the port it got.
        let first = bind(listen)?;
        let local = first.local_addr().unwrap_or(listen);
        let mut sockets = vec![first];
        for _ in 1..workers::count() {
            sockets.push(bind(local)?);
        }
        let limit = site.client.max_connections;
        let per_ip = Arc::new(PerIp::new(site.client.max_connections_per_ip));
        let bodies_kib = kib(site.client.max_buffered_bodies);
        let bodies = Arc::new(Limit::new(bodies_kib));
        let slot: Slot = Arc::new(RwLock::new(site));
        let conns = Arc::new(Limit::new(limit));
        let (drain, closing) = Drain::new();
        let tasks = sockets
            .into_iter()
            .zip(workers::handles())
            .map(|(sock, rt)| {
                let limits = Limits { conns: conns.clone(), per_ip: per_ip.clone(), bodies: bodies.clone() };
                let (slot, closing, tls) = (slot.clone(), closing.clone(), tls.clone());
                rt.spawn(async move {
                    match TcpListener::from_std(sock) {
                        Ok(l) => accept_loop(l, slot, limits, closing, tls).await,
                        Err(e) => warn!("http listener: {e}"),
                    }
                })
                .abort_handle()
            })
            .collect();
        Ok(Self { local, slot, conns, limit, per_ip, bodies, bodies_kib, tasks, drain, tls: tls.is_some() })
    }

    /// New requests read `site`; the connection limits follow it (connections over a
    /// lowered limit finish).
    pub fn replace(&mut self, site: Arc<Site>) {
        let limit = site.client.max_connections;
        self.conns.resize(self.limit, limit);
        self.limit = limit;
        self.per_ip.limit.store(site.client.max_connections_per_ip, SeqCst);
        let bodies_kib = kib(site.client.max_buffered_bodies);
        self.bodies.resize(self.bodies_kib, bodies_kib);
        self.bodies_kib = bodies_kib;
        *self.slot.write().unwrap_or_else(|e| e.into_inner()) = site;
    }

    /// Stops accepting (the sockets close with their accept tasks) and starts draining
    /// the connections within the site's drain timeout; the returned [`Drain`] tells
    /// when they are gone.
    pub fn close(&self) -> Drain {
        for t in &self.tasks {
            t.abort();
        }
        self.drain.start(load(&self.slot).drain);
        self.drain.clone()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.close();
    }
}

/// Binds with SO_REUSEADDR and SO_REUSEPORT (a socket per worker), and IP_FREEBIND so a
/// VIP not yet on an interface binds. Registered with a runtime by the worker that
/// accepts on it.
fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None).context("socket")?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
        let _ = sock.set_freebind_v6(true);
    } else {
        let _ = sock.set_freebind_v4(true);
    }
    sock.set_nonblocking(true)?;
    // Accepted sockets inherit it: no `setsockopt` per connection.
    sock.set_tcp_nodelay(true)?;
    sock.bind(&addr.into()).with_context(|| format!("binding {addr}"))?;
    sock.listen(1024).context("listen")?;
    Ok(sock.into())
}

/// A listener's limits, shared by its accept tasks.
struct Limits {
    conns: Arc<Limit>,
    per_ip: Arc<PerIp>,
    bodies: Arc<Limit>,
}

/// Buffered body memory is counted in KiB.
fn kib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

async fn accept_loop(listener: TcpListener, slot: Slot, limits: Limits, closing: Closing, tls: Option<TlsAcceptor>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                warn!("http accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // The address's slot first: a client over its own limit takes none of the listener's.
        let permit = limits.per_ip.try_acquire(peer.ip()).and_then(|ip| Some(Permit::new(limits.conns.try_acquire()?, ip, limits.bodies.clone())));
        match permit {
            Some(permit) => {
                cap_send_buffer(&stream, load(&slot).client.send_buffer);
                let conn = ConnShared::new(peer, Some(permit));
                match &tls {
                    None => tokio::spawn(serve(Arc::new(stream), conn, slot.clone(), closing.clone())),
                    Some(acceptor) => tokio::spawn(serve_tls(acceptor.clone(), stream, conn, slot.clone(), closing.clone())),
                };
            }
            // A TLS client could not read a plain 503: it is closed.
            None if tls.is_some() => debug!(%peer, "https: connection limit reached"),
            None => {
                debug!(%peer, "http: connection limit reached");
                tokio::spawn(refuse(stream));
            }
        }
    }
}

/// `limits.send_buffer`: set per connection (not on the listening socket, which
/// accepted sockets would inherit it from) so that a reload applies to the next one.
fn cap_send_buffer(stream: &TcpStream, bytes: u32) {
    if bytes > 0
        && let Err(e) = socket2::SockRef::from(stream).set_send_buffer_size(bytes as usize)
    {
        warn!("http: SO_SNDBUF {bytes}: {e}");
    }
}

/// The TLS handshake, within the client header timeout, then the connection as any.
/// A failed handshake (garbage, an unknown name without a default certificate, a
/// protocol rustls refuses) is logged with the peer and closed. A ClientHello naming a
/// passthrough service's host is not answered here: the connection goes to its backend.
async fn serve_tls(acceptor: TlsAcceptor, stream: TcpStream, conn: Arc<ConnShared>, slot: Slot, closing: Closing) {
    let site = load(&slot);
    let within = site.client.timeouts.header;
    if site.passthrough {
        let started = tokio::time::Instant::now();
        let name = passthrough::server_name(&stream, within).await;
        if let Some(rt) = name.as_deref().and_then(|n| passthrough::service(&site, n)) {
            return passthrough::join(stream, conn.peer, rt, closing).await;
        }
        // The handshake gets what is left of the header timeout.
        let within = within.saturating_sub(started.elapsed());
        return handshake(acceptor, stream, conn, slot, closing, within).await;
    }
    handshake(acceptor, stream, conn, slot, closing, within).await
}

async fn handshake(acceptor: TlsAcceptor, stream: TcpStream, conn: Arc<ConnShared>, slot: Slot, closing: Closing, within: Duration) {
    match tokio::time::timeout(within, acceptor.accept(SharedTcp(Arc::new(stream)))).await {
        Ok(Ok(tls)) => serve(Arc::new(Tls::new(tls)), conn, slot, closing).await,
        Ok(Err(e)) => info!(peer = %conn.peer, "tls handshake failed: {e}"),
        Err(_) => info!(peer = %conn.peer, "tls handshake timed out after {within:?}"),
    }
}

/// Over the connection limit: 503 and close.
async fn refuse(stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_millis(200), write_all(&stream, &raw_page(503))).await;
    let _ = socket2::SockRef::from(&stream).shutdown(std::net::Shutdown::Write);
}
