//! What the guard and the request handler of one client connection tell each other:
//! a violation, requests in flight (the keep-alive clock), the answer to an upgrade.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering},
    },
    task::Waker,
    time::Instant,
};

use tokio::sync::OwnedSemaphorePermit;

use super::rules::Reject;

/// Upgrade outcomes (`ConnShared::upgrade`).
const UPGRADE_NONE: u8 = 0;
const UPGRADE_SWITCHED: u8 = 1;
const UPGRADE_DECLINED: u8 = 2;

/// What the guard and the request handler of one client connection share.
#[derive(Debug)]
pub struct ConnShared {
    pub peer: SocketAddr,
    violation: Mutex<Option<Reject>>,
    answered: AtomicBool,
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
    upgrade: AtomicU8,
    upgraded: AtomicBool,
    /// The connection switched to HTTP/2 by `Upgrade: h2c`.
    h2: AtomicBool,
    /// An HTTP/1 request said `Connection: close`: the client sends nothing after it.
    last_request: AtomicBool,
    read_waker: Mutex<Option<Waker>>,
    /// The client connection slot, freed when the connection (or its tunnel) ends.
    _permit: Option<OwnedSemaphorePermit>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ConnShared {
    pub fn new(peer: SocketAddr, permit: Option<OwnedSemaphorePermit>) -> Arc<Self> {
        Arc::new(Self {
            peer,
            violation: Mutex::new(None),
            answered: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            upgrade: AtomicU8::new(UPGRADE_NONE),
            upgraded: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            last_request: AtomicBool::new(false),
            read_waker: Mutex::new(None),
            _permit: permit,
        })
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

    /// The client announced its last request (`Connection: close`).
    pub fn set_last_request(&self) {
        self.last_request.store(true, Ordering::Relaxed);
    }

    pub fn last_request(&self) -> bool {
        self.last_request.load(Ordering::Relaxed)
    }

    /// A request is being handled until the returned guard drops.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
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
