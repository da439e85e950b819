//! Listeners: bound per VIP:port, each accepting connections within its limit: a
//! socket per proxy worker (`SO_REUSEPORT`), each accepted on its worker's runtime.

use std::{
    net::SocketAddr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    task::AbortHandle,
};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::{
    conn::{raw_page, serve, write_all},
    guard::shared::ConnShared,
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
        let slot: Slot = Arc::new(RwLock::new(site));
        let conns = Arc::new(Limit::new(limit));
        let (drain, closing) = Drain::new();
        let tasks = sockets
            .into_iter()
            .zip(workers::handles())
            .map(|(sock, rt)| {
                let (slot, conns, closing, tls) = (slot.clone(), conns.clone(), closing.clone(), tls.clone());
                rt.spawn(async move {
                    match TcpListener::from_std(sock) {
                        Ok(l) => accept_loop(l, slot, conns, closing, tls).await,
                        Err(e) => warn!("http listener: {e}"),
                    }
                })
                .abort_handle()
            })
            .collect();
        Ok(Self { local, slot, conns, limit, tasks, drain, tls: tls.is_some() })
    }

    /// New requests read `site`; the connection limit follows it (connections over a
    /// lowered limit finish).
    pub fn replace(&mut self, site: Arc<Site>) {
        let limit = site.client.max_connections;
        self.conns.resize(self.limit, limit);
        self.limit = limit;
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

async fn accept_loop(listener: TcpListener, slot: Slot, conns: Arc<Limit>, closing: Closing, tls: Option<TlsAcceptor>) {
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
        match conns.try_acquire() {
            Some(permit) => {
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

/// A listener's connection limit: a permit per connection, resizable while connections
/// hold them. Lowering it takes back the free permits at once and owes the rest (they are
/// in use); each owed permit is forgotten as soon as it is free again, before a new
/// connection may take it, so the limit never drifts above what is configured.
struct Limit {
    permits: Arc<Semaphore>,
    owed: AtomicUsize,
}

impl Limit {
    fn new(limit: u32) -> Self {
        Self { permits: Arc::new(Semaphore::new(limit as usize)), owed: AtomicUsize::new(0) }
    }

    fn resize(&self, from: u32, to: u32) {
        if to > from {
            // What is still owed was never taken back: cancel that first.
            let more = (to - from) as usize;
            let owed = self.owed.fetch_update(SeqCst, SeqCst, |o| Some(o.saturating_sub(more))).unwrap_or(0);
            self.permits.add_permits(more - owed.min(more));
        } else if to < from {
            let less = (from - to) as usize;
            let taken = self.permits.forget_permits(less);
            self.owed.fetch_add(less - taken, SeqCst);
        }
    }

    /// A permit for a new connection, if the limit leaves one once the debt is paid.
    fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        while self.owed.fetch_update(SeqCst, SeqCst, |o| o.checked_sub(1)).is_ok() {
            match self.permits.try_acquire() {
                Ok(p) => p.forget(),
                Err(_) => {
                    self.owed.fetch_add(1, SeqCst);
                    break;
                }
            }
        }
        self.permits.clone().try_acquire_owned().ok()
    }
}

/// The TLS handshake, within the client header timeout, then the connection as any.
/// A failed handshake (garbage, an unknown name without a default certificate, a
/// protocol rustls refuses) is logged with the peer and closed.
async fn serve_tls(acceptor: TlsAcceptor, stream: TcpStream, conn: Arc<ConnShared>, slot: Slot, closing: Closing) {
    let within = load(&slot).client.timeouts.header;
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

#[cfg(test)]
mod tests {
    use super::Limit;

    /// How many connections the limit lets in now, holding them.
    fn fill(l: &Limit) -> Vec<tokio::sync::OwnedSemaphorePermit> {
        std::iter::from_fn(|| l.try_acquire()).take(100).collect()
    }

    #[test]
    fn a_lowered_limit_holds_once_busy_connections_end() {
        let l = Limit::new(4);
        let busy = fill(&l);
        assert_eq!(busy.len(), 4);
        l.resize(4, 2);
        drop(busy);
        assert_eq!(fill(&l).len(), 2, "4 lowered to 2 while 4 were open, then all closed");
    }

    #[test]
    fn raising_a_limit_cancels_what_is_owed() {
        let l = Limit::new(4);
        let busy = fill(&l);
        l.resize(4, 1);
        l.resize(1, 3);
        drop(busy);
        assert_eq!(fill(&l).len(), 3, "4 -> 1 -> 3 while 4 were open");
        let l = Limit::new(2);
        l.resize(2, 5);
        assert_eq!(fill(&l).len(), 5, "raised while idle");
        let half = Limit::new(4);
        let two = [half.try_acquire(), half.try_acquire()];
        half.resize(4, 1);
        drop(two);
        assert_eq!(fill(&half).len(), 1, "4 -> 1 with 2 open");
    }
}
