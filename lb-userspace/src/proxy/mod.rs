//! The HTTP proxy: services declared HTTP are served here, in user space (tokio,
//! hyper 1), from the same backend sets and health as the rest of xlb.
//!
//! ```text
//! client ─► listener (VIP:port) ─► guard (strict HTTP/1 framing, client timeouts)
//!        ─► hyper server (HTTP/1.1, h2c) ─► route (Host, path) ─► service
//!        ─► pin / sticky / balance ─► pooled HTTP/1.1 client ─► backend
//!                                   ◄─ retries on another backend, passive health
//! ```
//!
//! The owner (xlb's controller) creates one [`Proxy`], and after every plan hands it
//! the HTTP services with [`Proxy::update`]: listeners are bound and closed to match,
//! routes and backends swap atomically for new requests, and per-backend counters
//! (requests in flight, response-time averages) carry over by backend name. Failures
//! the proxy sees go to a [`FailureSink`], which the owner connects to
//! `health::Health::report_failure`. See docs/proxy.md.

pub mod balance;
pub mod ewma;
pub mod forward;
pub mod guard;
pub mod h2c;
pub mod headers;
pub mod metrics;
pub mod route;
pub mod server;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

pub use server::Proxy;
use tokio::sync::mpsc;

/// What went wrong with a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// TCP connect failed or timed out: nothing was sent.
    Connect,
    /// No response head within `timeouts.header`.
    Timeout,
    /// The connection failed after the request was sent.
    Error,
    /// The backend answered with a status listed in `retries.statuses`.
    Status(u16),
}

/// A passive health observation, for `health::Health::report_failure(&Target {service,
/// addr}, max_fails, fail_timeout)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub service: String,
    pub backend: String,
    pub addr: SocketAddr,
    pub kind: FailureKind,
    pub max_fails: u32,
    pub fail_timeout: Duration,
}

/// Receives the failures the proxy sees. Called on the request path: keep it cheap
/// (send on a channel).
pub trait FailureSink: Send + Sync + 'static {
    fn failure(&self, f: Failure);
}

impl FailureSink for mpsc::UnboundedSender<Failure> {
    fn failure(&self, f: Failure) {
        let _ = self.send(f);
    }
}

/// Drops every report (the proxy's own passive health still applies).
pub struct IgnoreFailures;

impl FailureSink for IgnoreFailures {
    fn failure(&self, _: Failure) {}
}

/// Keeps the reports, for tests.
#[derive(Default)]
pub struct CollectFailures(pub Mutex<Vec<Failure>>);

impl FailureSink for CollectFailures {
    fn failure(&self, f: Failure) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(f);
    }
}

/// Requests in flight and requests sent, per backend name, of one service.
pub type BackendCounters = HashMap<String, (u32, u64)>;

impl<T: FailureSink> FailureSink for Arc<T> {
    fn failure(&self, f: Failure) {
        (**self).failure(f)
    }
}
