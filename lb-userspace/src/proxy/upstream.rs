//! Connections to backends: HTTP/1.1 over TCP (hyper's connection-level client), a
//! keep-alive pool per worker, service and backend. A backend connection is driven by
//! a task on the worker that opened it and is only ever used by that worker's
//! requests, so a request and its backend connection never cross threads. A connection
//! goes back to the pool when its response body has ended; idle ones are used for up
//! to `POOL_IDLE` (older ones are closed when the pool is next looked at), at most
//! `POOL_MAX_IDLE_PER_BACKEND` a backend.

use std::{
    collections::HashMap,
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hyper::{
    Request, Response,
    body::Incoming,
    client::conn::http1::{Builder, SendRequest},
    header::{HOST, HeaderValue},
    http::uri::Authority,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use super::workers::PerWorker;

/// Bodies sent to backends (the error is `site::BoxError`, spelled out: site.rs imports this file).
pub type UpstreamBody = http_body_util::combinators::BoxBody<bytes::Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// How long idle pooled connections to a backend are kept.
const POOL_IDLE: Duration = Duration::from_secs(15);
const POOL_MAX_IDLE_PER_BACKEND: usize = 64;

type Idle = Vec<(SendRequest<UpstreamBody>, Instant)>;
/// One worker's idle connections of a service, by backend address.
type Pool = Arc<Mutex<HashMap<SocketAddr, Idle>>>;

/// A service's connections to its backends.
pub struct Upstream {
    connect: Duration,
    pools: PerWorker<Pool>,
}

/// Why a request got no response head.
#[derive(Debug)]
pub enum UpstreamError {
    /// No connection: nothing was sent.
    Connect(std::io::Error),
    Http(hyper::Error),
}

impl UpstreamError {
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connect: {e}"),
            Self::Http(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) => Some(e),
            Self::Http(e) => Some(e),
        }
    }
}

/// The connection a response came on: back to its pool once the body has ended
/// ([`Reuse::release`]); dropped otherwise (hyper closes it).
pub struct Reuse {
    tx: SendRequest<UpstreamBody>,
    addr: SocketAddr,
    pool: Pool,
}

impl Reuse {
    pub fn release(self) {
        if self.tx.is_closed() {
            return;
        }
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let idle = pool.entry(self.addr).or_default();
        if idle.len() < POOL_MAX_IDLE_PER_BACKEND {
            idle.push((self.tx, Instant::now()));
        }
    }
}

impl Upstream {
    pub fn new(connect: Duration) -> Self {
        Self { connect, pools: PerWorker::new(Pool::default) }
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect
    }

    /// Sends `req` (its target in origin-form) to `addr`: on an idle pooled connection
    /// of this worker, else a new one. A pooled connection that turns out closed
    /// before the request went out is passed over.
    pub async fn request(&self, addr: SocketAddr, authority: &Authority, mut req: Request<UpstreamBody>) -> Result<(Response<Incoming>, Reuse), UpstreamError> {
        if !req.headers().contains_key(HOST)
            && let Ok(v) = HeaderValue::from_str(authority.as_str())
        {
            req.headers_mut().insert(HOST, v);
        }
        let pool = self.pools.get();
        while let Some(mut tx) = checkout(pool, addr) {
            if tx.ready().await.is_err() {
                continue;
            }
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Reuse { tx, addr, pool: pool.clone() })),
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
        let mut tx = self.open(addr).await?;
        match tx.send_request(req).await {
            Ok(resp) => Ok((resp, Reuse { tx, addr, pool: pool.clone() })),
            Err(e) => Err(UpstreamError::Http(e)),
        }
    }

    /// A new connection, driven by a task on this worker.
    async fn open(&self, addr: SocketAddr) -> Result<SendRequest<UpstreamBody>, UpstreamError> {
        let stream = match tokio::time::timeout(self.connect, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(UpstreamError::Connect(e)),
            Err(_) => return Err(UpstreamError::Connect(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))),
        };
        let _ = stream.set_nodelay(true);
        let (tx, conn) = Builder::new().handshake(TokioIo::new(stream)).await.map_err(UpstreamError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(%addr, "upstream connection: {e}");
            }
        });
        Ok(tx)
    }
}

/// The most recently used idle connection to `addr` still open and fresh.
fn checkout(pool: &Pool, addr: SocketAddr) -> Option<SendRequest<UpstreamBody>> {
    let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
    let idle = pool.get_mut(&addr)?;
    let now = Instant::now();
    // Expired ones leave first (the oldest are at the front).
    let fresh = idle.iter().position(|(_, since)| now.duration_since(*since) < POOL_IDLE).unwrap_or(idle.len());
    idle.drain(..fresh);
    while let Some((tx, _)) = idle.pop() {
        if !tx.is_closed() {
            return Some(tx);
        }
    }
    None
}
