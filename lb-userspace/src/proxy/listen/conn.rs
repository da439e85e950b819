//! One client connection: hyper (HTTP/1.1, h2c) behind the guard, the requests handed
//! to `request::handle`, and the answer and close after a violation.

use std::{
    convert::Infallible,
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use hyper::{Request, Response, body::Incoming, service::Service, upgrade::OnUpgrade};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::net::TcpStream;
use tracing::debug;

use super::{
    guard::{io::GuardedIo, shared::ConnShared},
    h2c,
    transport::Transport,
};
use crate::proxy::{
    drain::{self, Closing},
    request::{self, log::ProxyBody},
    site::{ClientLimits, Slot, load},
};

/// HTTP/2 client connections: how often an idle one is pinged.
const H2_KEEPALIVE: Duration = Duration::from_secs(30);
/// After answering a violation: how long to read what the client still sends, so the
/// close does not turn into a reset that destroys the answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;

/// Serves one client connection (plain, or TLS after its handshake), until it ends or its
/// listener's drain ends it.
pub async fn serve<T: Transport>(stream: Arc<T>, conn: Arc<ConnShared>, slot: Slot, closing: Closing) {
    let limits = load(&slot).client;
    let io = GuardedIo::new(stream.clone(), limits.head, limits.timeouts, limits.max_body, conn.clone());
    let svc = Handler { slot, conn: conn.clone(), closing: closing.clone() };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().half_close(true).header_read_timeout(None).timer(TokioTimer::new());
    // The guard counts the fields first; hyper's own limit matters only above its
    // default (100), and setting one makes it initialise that many slots per request.
    if limits.max_headers > 100 {
        builder.http1().max_headers(limits.max_headers);
    }
    builder
        .http2()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.head.max_head as u32)
        .keep_alive_interval(Some(H2_KEEPALIVE))
        .timer(TokioTimer::new());
    if let Err(e) = drain::serve(builder.serve_connection_with_upgrades(TokioIo::new(io), svc), closing).await {
        debug!(peer = %conn.peer, "http connection: {e}");
    }
    if conn.upgraded() {
        return;
    }
    let violation = conn.violation();
    if let Some(r) = violation
        && !conn.answered()
    {
        debug!(peer = %conn.peer, "http: refused a request: {r:?}");
        let _ = tokio::time::timeout(LINGER, write_all(&*stream, &raw_page(r.status()))).await;
    }
    // As nginx: linger only when the client may still be sending (after a violation,
    // or with its bytes waiting: no need to look after it said `Connection: close`);
    // else close now.
    if violation.is_some() || (!conn.last_request() && pending(stream.tcp())) {
        linger_close(stream.tcp()).await;
    }
}

/// The client has bytes waiting to be read, or it is unknown (an error other than
/// "nothing there").
fn pending(stream: &TcpStream) -> bool {
    let mut b = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    match socket2::SockRef::from(stream).peek(&mut b) {
        Ok(n) => n > 0,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    }
}

/// Requests of one client connection: HTTP/1, HTTP/2, and HTTP/2 after `Upgrade: h2c`.
#[derive(Clone)]
struct Handler {
    slot: Slot,
    conn: Arc<ConnShared>,
    closing: Closing,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

impl Service<Request<Incoming>> for Handler {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, mut req: Request<Incoming>) -> Answer {
        let site = load(&self.slot);
        let this = self.clone();
        Box::pin(async move {
            if h2c::wanted(&req)
                && let Some(frame) = h2c::stream_one(&req)
            {
                let upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(serve_h2c(upgrade, frame, site.client, this.clone()));
                return Ok(h2c::switching(&this.conn));
            }
            Ok(request::handle(req, site, this.conn).await)
        })
    }
}

/// The connection after `101` to `Upgrade: h2c`: HTTP/2, with the upgrading request
/// as stream 1 (`frame`).
async fn serve_h2c(upgrade: OnUpgrade, frame: Vec<u8>, limits: ClientLimits, handler: Handler) {
    let peer = handler.conn.peer;
    let io = match upgrade.await {
        Ok(io) => h2c::WithStreamOne::new(TokioIo::new(io), frame),
        Err(e) => return debug!(%peer, "h2c upgrade: {e}"),
    };
    let closing = handler.closing.clone();
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.head.max_head as u32)
        .keep_alive_interval(Some(H2_KEEPALIVE))
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(io), handler);
    let served = drain::serve(conn, closing).await;
    if let Err(e) = served {
        debug!(%peer, "http connection (h2c): {e}");
    }
}

/// Shuts the write side, then reads (bounded) until the client closes.
async fn linger_close(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
    let until = Instant::now() + LINGER;
    let mut buf = [0u8; 4096];
    let mut total = 0;
    while total < LINGER_BYTES {
        let Ok(Ok(())) = tokio::time::timeout_at(until.into(), stream.readable()).await else {
            return;
        };
        match stream.try_read(&mut buf) {
            Ok(0) => return,
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        }
    }
}

pub async fn write_all<T: Transport>(stream: &T, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = std::future::poll_fn(|cx| stream.poll_write(cx, &[io::IoSlice::new(buf)])).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    std::future::poll_fn(|cx| stream.poll_flush(cx)).await
}

/// An error answer written straight to the socket, HTTP/1.1, closing.
pub fn raw_page(status: u16) -> Vec<u8> {
    let reason = hyper::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Error");
    let body = format!("{status} {reason}\n");
    format!("HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
        .into_bytes()
}
