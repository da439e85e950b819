//! The orderly stop's first step: the HTTP proxy's requests in flight finish before
//! the process (and, without `--keep-dataplane`, the data plane) goes.

use std::time::Instant;

use tokio::signal::unix::Signal;
use tracing::{info, warn};

use crate::proxy::Proxy;

/// Closes the HTTP listeners and waits for their connections: idle ones close at
/// once, busy ones after their current response, each listener's `timeouts.drain`
/// bounds the wait. A second SIGINT or SIGTERM stops waiting.
pub(super) async fn drain_http(proxy: &Proxy, int: &mut Signal, term: &mut Signal) {
    if proxy.listening().is_empty() {
        return;
    }
    let started = Instant::now();
    info!("stopping: HTTP listeners closed, requests in flight finishing");
    tokio::select! {
        () = proxy.shutdown() => info!(took_ms = started.elapsed().as_millis() as u64, "HTTP connections finished"),
        _ = int.recv() => warn!("stopping at once: a second signal cut the HTTP connections left"),
        _ = term.recv() => warn!("stopping at once: a second signal cut the HTTP connections left"),
    }
}
