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
    /// The backend answered with a status listed in `fail_statuses`.
    Status(u16),
}

/// A failure the proxy counted (`fail_on`, `fail_statuses`). When it took the backend
/// out (`ejected`: `max_fails` in a row, within the max ejection percent), the owner
/// marks it down in its health for `fail_timeout` (`health::Health::report_failure`
/// with one failure), for status and metrics; where requests go is the proxy's own
/// view (max ejection percent, panic mode), so the owner does no accrual of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub service: String,
    pub backend: String,
    pub addr: SocketAddr,
    pub kind: FailureKind,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    /// This failure took the backend out.
    pub ejected: bool,
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
