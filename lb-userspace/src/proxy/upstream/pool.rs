//! Idle backend connections: one pool per worker and service, by backend address.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::BytesMut;

use super::stream::Stream;

/// How long idle pooled connections to a backend are kept.
const POOL_IDLE: Duration = Duration::from_secs(15);
const POOL_MAX_IDLE_PER_BACKEND: usize = 64;

/// A backend connection and what was read from it but not used yet.
pub struct Conn {
    pub(super) stream: Stream,
    pub(super) buf: BytesMut,
}

type Idle = Vec<(Conn, Instant)>;
/// One worker's idle connections of a service, by backend address.
pub type Pool = Arc<Mutex<HashMap<SocketAddr, Idle>>>;

/// Where a connection goes back to once its response has ended.
pub struct Home {
    pub(super) pool: Pool,
    pub(super) addr: SocketAddr,
}

impl Home {
    /// Pools `conn` if the backend has nothing more to say on it. Its last read
    /// normally reset the socket's readiness (`stream::read_some`); if not, a read makes
    /// sure, so a later close by the backend shows at checkout without a read.
    pub(super) fn put(self, mut conn: Conn) {
        if !conn.stream.idle_ok() {
            return;
        }
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let idle = pool.entry(self.addr).or_default();
        if idle.len() < POOL_MAX_IDLE_PER_BACKEND {
            idle.push((conn, Instant::now()));
        }
    }
}

/// The most recently used idle connection to `addr` still open and fresh. An idle
/// connection with something to read has been closed by the backend (or sent what it
/// should not have): it is dropped.
pub(super) fn checkout(pool: &Pool, addr: SocketAddr) -> Option<Conn> {
    let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
    let idle = pool.get_mut(&addr)?;
    let now = Instant::now();
    // Expired ones leave first (the oldest are at the front).
    let fresh = idle.iter().position(|(_, since)| now.duration_since(*since) < POOL_IDLE).unwrap_or(idle.len());
    idle.drain(..fresh);
    while let Some((mut conn, _)) = idle.pop() {
        if conn.stream.idle_ok() {
            return Some(conn);
        }
    }
    None
}
