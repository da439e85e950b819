//! What the guard and the request handler of one client connection tell each other:
//! a violation, requests in flight (the keep-alive clock), the answer to an upgrade.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering},
    },
    task::Waker,
    time::Instant,
};

use hyper::header::HeaderValue;

use super::rules::Reject;
use crate::{
    config::http::canonical,
    proxy::listen::limits::{Limit, Permit},
};

/// Upgrade outcomes (`ConnShared::upgrade`).
const UPGRADE_NONE: u8 = 0;
const UPGRADE_SWITCHED: u8 = 1;
const UPGRADE_DECLINED: u8 = 2;

/// What the guard and the request handler of one client connection share.
#[derive(Debug)]
pub struct ConnShared {
    pub peer: SocketAddr,
    /// The peer's address as `X-Forwarded-For` and `X-Real-IP` write it: made once per
    /// connection, not per request.
    pub peer_header: HeaderValue,
    violation: Mutex<Option<Reject>>,
    answered: AtomicBool,
    in_flight: AtomicUsize,
    /// Requests begun on this connection.
    requests: AtomicU64,
    /// The `max_body` of the request numbered `.0`, once routed.
    body_limit: Mutex<(u64, u64)>,
    idle_since: Mutex<Instant>,
    upgrade: AtomicU8,
    upgraded: AtomicBool,
    /// The connection switched to HTTP/2 by `Upgrade: h2c`.
    h2: AtomicBool,
    /// An HTTP/1 request said `Connection: close`: the client sends nothing after it.
    last_request: AtomicBool,
    read_waker: Mutex<Option<Waker>>,
    /// The client connection's slots (listener, address), freed when the connection (or
    /// its tunnel) ends.
    permit: Option<Permit>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ConnShared {
    pub fn new(peer: SocketAddr, permit: Option<Permit>) -> Arc<Self> {
        let peer_header = HeaderValue::from_str(&canonical(peer.ip()).to_string()).expect("an IP address is a valid header value");
        Arc::new(Self {
            peer,
            peer_header,
            violation: Mutex::new(None),
            answered: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            body_limit: Mutex::new((0, u64::MAX)),
            idle_since: Mutex::new(Instant::now()),
            upgrade: AtomicU8::new(UPGRADE_NONE),
            upgraded: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            last_request: AtomicBool::new(false),
            read_waker: Mutex::new(None),
            permit,
        })
    }

    /// The listener's buffered body memory (KiB), if the connection came through one.
    pub fn bodies(&self) -> Option<&Arc<Limit>> {
        self.permit.as_ref().map(|p| &p.bodies)
    }

    pub fn violation(&self) -> Option<Reject> {
        *lock(&self.violation)
    }

    /// The guard refused the client's bytes; the first reason stays.
    pub fn reject(&self, r: Reject) {
        lock(&self.violation).get_or_insert(r);
    }

    /// Requests being handled.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// When the last request ended (or the connection began).
    pub fn idle_since(&self) -> Instant {
        *lock(&self.idle_since)
    }

    /// The handler's answer to an upgrade request, once: switched or declined.
    pub fn take_upgrade(&self) -> Option<bool> {
        match self.upgrade.swap(UPGRADE_NONE, Ordering::Relaxed) {
            UPGRADE_SWITCHED => Some(true),
            UPGRADE_DECLINED => Some(false),
            _ => None,
        }
    }

    /// An answer to an upgrade request is waiting for [`Self::take_upgrade`].
    pub fn upgrade_answered(&self) -> bool {
        self.upgrade.load(Ordering::Relaxed) != UPGRADE_NONE
    }

    /// Who to wake when the handler answers an upgrade or a request ends.
    pub fn set_read_waker(&self, w: &Waker) {
        *lock(&self.read_waker) = Some(w.clone());
    }

    /// The handler answered the violation itself (a bad body it was reading).
    pub fn set_answered(&self) {
        self.answered.store(true, Ordering::Relaxed);
    }

    pub fn answered(&self) -> bool {
        self.answered.load(Ordering::Relaxed)
    }

    pub fn upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Relaxed)
    }

    /// The connection goes on as HTTP/2 (`Upgrade: h2c` answered 101).
    pub fn switch_to_h2(&self) {
        self.h2.store(true, Ordering::Relaxed);
        self.upgrade_outcome(true);
    }

    pub fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    /// The current request's service allows bodies up to `max`: the guard refuses a
    /// chunked body growing past it (413), streamed or not.
    pub fn limit_body(&self, max: u64) {
        *lock(&self.body_limit) = (self.requests.load(Ordering::Relaxed), max);
    }

    /// The body limit of HTTP/1 request `n` (1-based, in the order heads arrived), if
    /// its service is known yet.
    pub fn body_limit(&self, n: u64) -> Option<u64> {
        let (of, max) = *lock(&self.body_limit);
        (of == n).then_some(max)
    }

    /// The client announced its last request (`Connection: close`).
    pub fn set_last_request(&self) {
        self.last_request.store(true, Ordering::Relaxed);
    }

    pub fn last_request(&self) -> bool {
        self.last_request.load(Ordering::Relaxed)
    }

    /// A request is being handled until the returned guard drops.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    /// The handler's answer to an upgrade request.
    pub fn upgrade_outcome(&self, switched: bool) {
        self.upgrade.store(if switched { UPGRADE_SWITCHED } else { UPGRADE_DECLINED }, Ordering::Relaxed);
        if switched {
            self.upgraded.store(true, Ordering::Relaxed);
        }
        self.wake();
    }

    fn wake(&self) {
        if let Some(w) = lock(&self.read_waker).take() {
            w.wake();
        }
    }
}

/// Ends a request's part in the connection's keep-alive clock when dropped.
#[derive(Debug)]
pub struct RequestGuard(Arc<ConnShared>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        *lock(&self.0.idle_since) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.wake();
    }
}
