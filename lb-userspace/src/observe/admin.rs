//! The admin HTTP endpoint (127.0.0.1:9100 by default): `GET /api/v1/services`
//! (JSON) and `GET /metrics` (Prometheus), served from the latest status snapshot
//! (refreshed every 2 s) plus the HTTP proxy's live counters (`proxy/metrics.rs`), the
//! dashboard at `GET /` (`dashboard.html`, which polls the JSON), and the client side
//! that `xlb status` uses.
//!
//! A few GET routes do not need a full HTTP stack: requests are read to the end of
//! their headers (bounded in size and time) and answered with `Connection: close`.
//! With `admin.token` set, a request without `Authorization: Bearer TOKEN` gets 401,
//! except the dashboard's page: it holds no data, and asks for the token (or takes
//! `?token=`) to send it with its own requests.

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

/// Where `xlb status` takes the admin token from (not an argument: `ps` would show it).
pub const TOKEN_ENV: &str = "XLB_ADMIN_TOKEN";
const MAX_REQUEST: usize = 8 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause after a failed accept (EMFILE and the like), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// The dashboard: one page, its CSS and script inline, nothing fetched from elsewhere.
const DASHBOARD: &str = include_str!("dashboard.html");
/// The dashboard may run its inline script and style and ask this endpoint, nothing else:
/// no other origin, no images, no frames (a name that slipped into its markup could load
/// nothing).
const DASHBOARD_POLICY: &str =
    "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n";

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("admin address {addr} (admin.address)"))
}

/// Warns when the endpoint is reachable beyond this host with no token: the status names
/// every backend, and nothing else would keep other hosts from reading it.
pub fn warn_if_exposed(addr: SocketAddr, token: Option<&str>) {
    if !addr.ip().is_loopback() && token.is_none() {
        warn!(%addr, "the admin endpoint listens beyond loopback with no admin.token: anyone who reaches it reads the status and metrics");
    }
}

/// `token`: the `admin.token` in force (a reload may change it).
pub async fn serve(listener: TcpListener, snapshots: watch::Receiver<Arc<Snapshot>>, http: Arc<HttpMetrics>, token: watch::Receiver<Option<String>>) {
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
        let token = token.borrow().clone();
        tokio::spawn(async move {
            if let Err(e) = answer(conn, &snapshot, &http, token.as_deref()).await {
                debug!(%peer, "admin request: {e:#}");
            }
        });
    }
}

async fn answer(mut conn: TcpStream, snapshot: &Snapshot, http: &HttpMetrics, token: Option<&str>) -> anyhow::Result<()> {
    let head = timeout(IO_TIMEOUT, read_head(&mut conn)).await.context("request timed out")??;
    let line = head.lines().next().unwrap_or_default();
    let mut extra = "";
    // The route is the path; a query (the dashboard's `?token=`) is the page's business.
    let words: Vec<&str> = line.split(' ').map(|w| w.split('?').next().unwrap_or_default()).collect();
    let (status, kind, body) = match words.as_slice() {
        ["GET", "/" | "/dashboard", _] => {
            extra = DASHBOARD_POLICY;
            ("200 OK", "text/html; charset=utf-8", DASHBOARD.to_owned())
        }
        _ if !authorized(&head, token) => {
            extra = "WWW-Authenticate: Bearer realm=\"xlb\"\r\n";
            ("401 Unauthorized", "text/plain", "admin.token is set: send Authorization: Bearer TOKEN\n".into())
        }
        ["GET", "/api/v1/services", _] => ("200 OK", "application/json", serde_json::to_string_pretty(snapshot)?),
        ["GET", "/metrics", _] => ("200 OK", "text/plain; version=0.0.4", snapshot.metrics(http)),
        ["GET", _, _] => ("404 Not Found", "text/plain", "not found\n".into()),
        [_, _, _] => ("405 Method Not Allowed", "text/plain", "only GET\n".into()),
        _ => ("400 Bad Request", "text/plain", "bad request\n".into()),
    };
    let response = format!("HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}", body.len());
    timeout(IO_TIMEOUT, conn.write_all(response.as_bytes())).await??;
    Ok(())
}

/// Whether the request head carries the token (always, when none is configured).
fn authorized(head: &str, token: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("authorization"))
        .filter_map(|(_, value)| {
            let value = value.trim();
            value.get(..7).filter(|scheme| scheme.eq_ignore_ascii_case("bearer ")).map(|_| value[7..].trim())
        })
        .fold(false, |ok, given| same_secret(given.as_bytes(), token.as_bytes()) | ok)
}

/// Compares `given` with `secret` in time that depends on the secret's length only, so
/// response times do not tell an attacker how many leading bytes were right.
fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    let diff = secret.iter().enumerate().fold(u8::from(given.len() != secret.len()), |acc, (i, s)| acc | (s ^ given.get(i).copied().unwrap_or(0)));
    std::hint::black_box(diff) == 0
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

/// Fetches the status snapshot from a running xlb; `token` is its `admin.token`.
pub async fn fetch(addr: SocketAddr, token: Option<&str>) -> anyhow::Result<Snapshot> {
    let mut conn = timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .context("timed out")?
        .with_context(|| format!("no xlb admin endpoint at {addr} (is xlb running? see admin.address)"))?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    conn.write_all(format!("GET /api/v1/services HTTP/1.1\r\nHost: xlb\r\n{auth}Connection: close\r\n\r\n").as_bytes()).await?;
    let mut response = Vec::new();
    timeout(IO_TIMEOUT, conn.read_to_end(&mut response)).await.context("timed out")??;
    let text = String::from_utf8(response).context("response is not UTF-8")?;
    let (head, body) = text.split_once("\r\n\r\n").context("malformed response")?;
    if head.starts_with("HTTP/1.1 401") {
        bail!("admin endpoint answered 401: it has an admin.token; give it in ${TOKEN_ENV}");
    }
    if !head.starts_with("HTTP/1.1 200") {
        bail!("admin endpoint answered {}", head.lines().next().unwrap_or_default());
    }
    serde_json::from_str(body).context("decoding the status")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "GET /metrics HTTP/1.1\r\nHost: xlb\r\n";

    #[test]
    fn a_token_needs_the_bearer_header_with_exactly_that_token() {
        assert!(authorized(HEAD, None), "no token configured: open");
        let with = |h: &str| format!("{HEAD}{h}\r\n\r\n");
        assert!(!authorized(&with("X-Other: s3cret"), Some("s3cret")));
        assert!(authorized(&with("Authorization: Bearer s3cret"), Some("s3cret")));
        assert!(authorized(&with("authorization:   bearer s3cret  "), Some("s3cret")), "names and scheme are case-insensitive");
        for wrong in ["Bearer s3cre", "Bearer s3cret2", "Bearer S3CRET", "Basic s3cret", "Bearer ", "Bearer", "s3cret"] {
            assert!(!authorized(&with(&format!("Authorization: {wrong}")), Some("s3cret")), "{wrong:?}");
        }
    }

    /// One raw request to `addr`: the response's head and body.
    async fn get(addr: SocketAddr, request: &str) -> (String, String) {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        (head.to_owned(), body.to_owned())
    }

    #[tokio::test]
    async fn the_dashboard_page_is_open_its_data_needs_the_token() {
        let listener = bind(([127, 0, 0, 1], 0).into()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_snapshots, snapshot_rx) = watch::channel(Arc::new(crate::observe::snapshot::tests::snapshot(5)));
        let (_token, token_rx) = watch::channel(Some("s3cret".to_owned()));
        tokio::spawn(serve(listener, snapshot_rx, Arc::new(HttpMetrics::default()), token_rx));
        for path in ["/", "/dashboard", "/?token=s3cret"] {
            let (head, body) = get(addr, &format!("GET {path} HTTP/1.1\r\n\r\n")).await;
            assert!(head.starts_with("HTTP/1.1 200") && head.contains("text/html"), "{path}: {head}");
            assert!(head.contains("Content-Security-Policy: default-src 'none';"), "{path}: {head}");
            assert!(body.contains("/api/v1/services") && !body.contains("src=\"http") && !body.contains("href=\"http"), "{path}: external assets");
        }
        let (head, _) = get(addr, "GET /api/v1/services?x=1 HTTP/1.1\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 401"), "{head}");
        let (head, body) = get(addr, "GET /api/v1/services HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let s: Snapshot = serde_json::from_str(&body).unwrap();
        assert_eq!(s.services[0].backends[0].new_flows, 5);
    }
}
