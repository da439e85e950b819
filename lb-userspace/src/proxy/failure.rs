//! What the proxy tells its owner about backends that fail (passive health).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

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

impl<T: FailureSink> FailureSink for Arc<T> {
    fn failure(&self, f: Failure) {
        (**self).failure(f)
    }
}
