//! Listeners: bound per VIP:port, each accepting connections within its limit: a
//! socket per proxy worker (`SO_REUSEPORT`), each accepted on its worker's runtime.

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::AbortHandle,
};
use tracing::{debug, warn};

use super::{
    conn::{raw_page, serve, write_all},
    guard::shared::ConnShared,
};
use crate::proxy::{
    site::{Site, Slot},
    workers,
};

/// A bound listener: its accept tasks (one per worker), and the site its requests read.
pub struct Listener {
    pub local: SocketAddr,
    slot: Slot,
    conns: Arc<Semaphore>,
    limit: u32,
    tasks: Vec<AbortHandle>,
}

impl Listener {
    /// Binds `listen` and starts accepting for `site`.
    pub fn open(listen: SocketAddr, site: Arc<Site>) -> anyhow::Result<Self> {
        // The first socket resolves port 0; the others bind the port it got.
        let first = bind(listen)?;
        let local = first.local_addr().unwrap_or(listen);
        let mut sockets = vec![first];
        for _ in 1..workers::count() {
            sockets.push(bind(local)?);
        }
        let limit = site.client.max_connections;
        let slot: Slot = Arc::new(RwLock::new(site));
        let conns = Arc::new(Semaphore::new(limit as usize));
        let tasks = sockets
            .into_iter()
            .zip(workers::handles())
            .map(|(sock, rt)| {
                let (slot, conns) = (slot.clone(), conns.clone());
                rt.spawn(async move {
                    match TcpListener::from_std(sock) {
                        Ok(l) => accept_loop(l, slot, conns).await,
                        Err(e) => warn!("http listener: {e}"),
                    }
                })
                .abort_handle()
            })
            .collect();
        Ok(Self { local, slot, conns, limit, tasks })
    }

    /// New requests read `site`; the connection limit follows it (connections over a
    /// lowered limit finish).
    pub fn replace(&mut self, site: Arc<Site>) {
        let limit = site.client.max_connections;
        if limit > self.limit {
            self.conns.add_permits((limit - self.limit) as usize);
        } else if limit < self.limit {
            self.conns.forget_permits((self.limit - limit) as usize);
        }
        self.limit = limit;
        *self.slot.write().unwrap_or_else(|e| e.into_inner()) = site;
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
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
    sock.bind(&addr.into()).with_context(|| format!("binding {addr}"))?;
    sock.listen(1024).context("listen")?;
    Ok(sock.into())
}

async fn accept_loop(listener: TcpListener, slot: Slot, conns: Arc<Semaphore>) {
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
        match conns.clone().try_acquire_owned() {
            Ok(permit) => {
                let conn = ConnShared::new(peer, Some(permit));
                tokio::spawn(serve(stream, conn, slot.clone()));
            }
            Err(_) => {
                debug!(%peer, "http: connection limit reached");
                tokio::spawn(refuse(stream));
            }
        }
    }
}

/// Over the connection limit: 503 and close.
async fn refuse(stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_millis(200), write_all(&stream, &raw_page(503))).await;
    let _ = socket2::SockRef::from(&stream).shutdown(std::net::Shutdown::Write);
}
