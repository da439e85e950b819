//! The admin HTTP endpoint (127.0.0.1:9100 by default): `GET /api/v1/services`
//! (JSON) and `GET /metrics` (Prometheus), served from the latest status snapshot
//! (refreshed every 2 s) plus the HTTP proxy's live counters (`proxy/metrics.rs`), and the
//! client side that `xlb status` uses.
//!
//! A few GET routes on loopback do not need a full HTTP stack: requests are read to
//! the end of their headers (bounded in size and time) and answered with
//! `Connection: close`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    time::timeout,
};
use tracing::{debug, info, warn};

use super::Snapshot;
use crate::proxy::metrics::HttpMetrics;

const MAX_REQUEST: usize = 8 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause after a failed accept (EMFILE and the like), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("admin address {addr} (admin.address)"))
}

pub async fn serve(listener: TcpListener, snapshots: watch::Receiver<Arc<Snapshot>>, http: Arc<HttpMetrics>) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "admin endpoint listening");
    }
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                warn!("admin accept: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let snapshot = snapshots.borrow().clone();
        let http = http.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(conn, &snapshot, &http).await {
                debug!(%peer, "admin request: {e:#}");
            }
        });
    }
}

async fn answer(mut conn: TcpStream, snapshot: &Snapshot, http: &HttpMetrics) -> anyhow::Result<()> {
    let head = timeout(IO_TIMEOUT, read_head(&mut conn)).await.context("request timed out")??;
    let line = head.lines().next().unwrap_or_default();
    let (status, kind, body) = match line.split(' ').collect::<Vec<_>>().as_slice() {
        ["GET", "/api/v1/services", _] => ("200 OK", "application/json", serde_json::to_string_pretty(snapshot)?),
        ["GET", "/metrics", _] => ("200 OK", "text/plain; version=0.0.4", snapshot.metrics(http)),
        ["GET", _, _] => ("404 Not Found", "text/plain", "not found\n".into()),
        [_, _, _] => ("405 Method Not Allowed", "text/plain", "only GET\n".into()),
        _ => ("400 Bad Request", "text/plain", "bad request\n".into()),
    };
    let response = format!("HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    timeout(IO_TIMEOUT, conn.write_all(response.as_bytes())).await??;
    Ok(())
}

async fn read_head(conn: &mut TcpStream) -> anyhow::Result<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            bail!("incomplete or oversized request");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Fetches the status snapshot from a running xlb.
pub async fn fetch(addr: SocketAddr) -> anyhow::Result<Snapshot> {
    let mut conn = timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .context("timed out")?
        .with_context(|| format!("no xlb admin endpoint at {addr} (is xlb running? see admin.address)"))?;
    conn.write_all(b"GET /api/v1/services HTTP/1.1\r\nHost: xlb\r\nConnection: close\r\n\r\n").await?;
    let mut response = Vec::new();
    timeout(IO_TIMEOUT, conn.read_to_end(&mut response)).await.context("timed out")??;
    let text = String::from_utf8(response).context("response is not UTF-8")?;
    let (head, body) = text.split_once("\r\n\r\n").context("malformed response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("admin endpoint answered {}", head.lines().next().unwrap_or_default());
    }
    serde_json::from_str(body).context("decoding the status")
}
