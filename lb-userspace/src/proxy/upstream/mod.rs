//! Connections to backends: HTTP/1.1 (or HTTP/2, `h2.rs`) over TCP or TLS (`tls.rs`,
//! `http.upstream`), a keep-alive pool per worker, service and backend. An HTTP/1.1
//! request is written and its response read on the requesting task itself (the client
//! connection's): no task per backend connection, no channel between the two, so a
//! proxied request costs one task's wake-ups, as in nginx's event loop. The codec is
//! `h1.rs` (heads) and `body.rs` (response bodies). A connection goes back to its pool
//! when its response body has ended; idle ones are used for up to `POOL_IDLE` (older
//! ones are closed when the pool is next looked at), at most
//! `POOL_MAX_IDLE_PER_BACKEND` a backend.

pub mod body;
pub mod h1;
mod h2;
pub mod pool;
mod request;
pub mod stream;
#[cfg(test)]
mod tests;
mod tls;

use std::{
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use http_body_util::BodyExt;
use hyper::{
    Method, Response,
    http::uri::{Authority, Scheme},
};
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tracing::warn;

pub use self::request::{Connected, OutBody, Outgoing, UpstreamError};
use self::{
    body::{H1Body, RespBody},
    h1::{Parsed, SendFraming},
    pool::{Conn, Home, Pool, checkout},
    stream::Stream,
    tls::Tls,
};
use super::{listen::guard::body::ClientBody, workers::PerWorker};
use crate::config::http::UpstreamOptions;

/// Buffered bodies up to this size go out in the same write as the head.
const COALESCE: usize = 16 * 1024;

/// A service's connections to its backends.
pub struct Upstream {
    connect: Duration,
    options: UpstreamOptions,
    /// `Err`: the TLS settings could not be applied (a CA file unreadable): every
    /// connect fails with this, until the service's settings change.
    tls: Option<Result<Tls, Arc<str>>>,
    pools: PerWorker<Pool>,
    senders: PerWorker<h2::Senders>,
}

/// A try that failed; `stale`: on a pooled connection, before any answer, in a way
/// that says the backend had closed it (so the request may go out again on another).
struct Failed {
    err: UpstreamError,
    stale: bool,
}

/// Methods a client may send again without asking (RFC 9110 9.2.2).
pub fn idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

impl Upstream {
    /// `service` names it in the log, should its TLS settings fail.
    pub fn new(service: &str, connect: Duration, options: &UpstreamOptions) -> Self {
        let tls = options.tls.as_ref().map(|t| {
            Tls::new(t, options.protocol).map_err(|e| {
                warn!(%service, "upstream tls: {e:#}: its backends cannot be reached");
                format!("{e:#}").into()
            })
        });
        Self { connect, options: options.clone(), tls, pools: PerWorker::new(Pool::default), senders: PerWorker::new(h2::Senders::default) }
    }

    /// Whether it was made with these settings (else a reload makes a new one).
    pub fn made_with(&self, connect: Duration, options: &UpstreamOptions) -> bool {
        self.connect == connect && self.options == *options
    }

    /// Sends `out` to `addr` on an idle pooled connection of this worker, else a new
    /// one. A pooled connection the backend had closed is passed over.
    pub async fn request(&self, addr: SocketAddr, authority: &Authority, out: Outgoing<'_>) -> Result<Response<RespBody>, UpstreamError> {
        if self.options.protocol.is_h2() {
            let scheme = if self.tls.is_some() { Scheme::HTTPS } else { Scheme::HTTP };
            return h2::request(self.senders.get(), addr, authority, scheme, out, || self.connect(addr)).await;
        }
        let body_len = match &out.body {
            OutBody::Bytes(b) => Some(b.len()),
            OutBody::Stream(_) => None,
        };
        let mut head = Vec::with_capacity(256 + out.headers.len() * 32);
        let framing = h1::encode_request(out.method, out.target, out.headers, authority, body_len, &mut head);
        let head_request = out.method == Method::HEAD;
        let mut body = Some(out.body);
        let pool = self.pools.get();
        let home = || Home { pool: pool.clone(), addr };
        while let Some(conn) = checkout(pool, addr) {
            match exchange(conn, &head, framing, &mut body, head_request, idempotent(out.method)).await {
                Ok((head, conn)) => return Ok(answer(head, conn, home())),
                Err(Failed { stale: true, .. }) if body.is_some() => continue,
                Err(f) => return Err(f.err),
            }
        }
        let opening = Instant::now();
        let conn = self.open(addr).await?;
        let connected = Connected(opening.elapsed());
        match exchange(conn, &head, framing, &mut body, head_request, false).await {
            Ok((head, conn)) => {
                let mut resp = answer(head, conn, home());
                resp.extensions_mut().insert(connected);
                Ok(resp)
            }
            Err(f) => Err(f.err),
        }
    }

    async fn open(&self, addr: SocketAddr) -> Result<Conn, UpstreamError> {
        Ok(Conn { stream: self.connect(addr).await?, buf: BytesMut::new() })
    }

    /// A new connection to `addr`: TCP, and the TLS handshake when the backends speak
    /// TLS, both within the connect timeout (as nginx's `proxy_connect_timeout`).
    async fn connect(&self, addr: SocketAddr) -> Result<Stream, UpstreamError> {
        let tls = match &self.tls {
            Some(Err(e)) => return Err(UpstreamError::Connect(io::Error::other(format!("upstream tls settings: {e}")))),
            Some(Ok(t)) => Some(t),
            None => None,
        };
        let open = async {
            let tcp = TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            match tls {
                Some(t) => Ok(Stream::Tls(Box::new(t.handshake(tcp, addr).await?))),
                None => Ok(Stream::Tcp(tcp)),
            }
        };
        match tokio::time::timeout(self.connect, open).await {
            Ok(r) => r.map_err(UpstreamError::Connect),
            Err(_) => Err(UpstreamError::Connect(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))),
        }
    }
}

fn answer(head: h1::Head, conn: Conn, home: Home) -> Response<RespBody> {
    let home = head.keep_alive.then_some(home);
    Response::from_parts(head.parts, RespBody::H1(H1Body::new(head.framing, conn, home)))
}

/// One request on `conn`: the head and body written, the response head read. `body`
/// is taken only once its bytes go out (a buffered one is cloned, so it stays).
/// `resend`: a pooled connection that ends before any answer counts as stale.
async fn exchange(
    mut conn: Conn,
    head: &[u8],
    framing: SendFraming,
    body: &mut Option<OutBody>,
    head_request: bool,
    resend: bool,
) -> Result<(h1::Head, Conn), Failed> {
    let io = |err: io::Error, stale: bool| Failed { err: UpstreamError::Io(err), stale };
    match body {
        Some(OutBody::Bytes(b)) if b.is_empty() => conn.stream.write_all(head).await.map_err(|e| io(e, true))?,
        Some(OutBody::Bytes(b)) if b.len() <= COALESCE => {
            let mut msg = Vec::with_capacity(head.len() + b.len());
            msg.extend_from_slice(head);
            msg.extend_from_slice(b);
            conn.stream.write_all(&msg).await.map_err(|e| io(e, true))?;
        }
        Some(OutBody::Bytes(b)) => {
            conn.stream.write_all(head).await.map_err(|e| io(e, true))?;
            conn.stream.write_all(b).await.map_err(|e| io(e, false))?;
        }
        Some(OutBody::Stream(_)) => {
            conn.stream.write_all(head).await.map_err(|e| io(e, true))?;
            let Some(OutBody::Stream(incoming)) = body.take() else { unreachable!() };
            stream_body(&mut conn.stream, incoming, framing).await?;
        }
        None => return Err(Failed { err: UpstreamError::Protocol("the streamed body was sent already"), stale: false }),
    }
    // TLS holds records until flushed; for TCP this is nothing.
    conn.stream.flush().await.map_err(|e| io(e, false))?;
    loop {
        match h1::parse_response(&mut conn.buf, head_request) {
            Ok(Parsed::Final(h)) => return Ok((h, conn)),
            Ok(Parsed::Interim(n)) => {
                let _ = conn.buf.split_to(n);
                continue;
            }
            Ok(Parsed::Partial) => {}
            Err(e) => return Err(Failed { err: UpstreamError::Protocol(e), stale: false }),
        }
        conn.buf.reserve(8 * 1024);
        let nothing_yet = conn.buf.is_empty();
        match std::future::poll_fn(|cx| conn.stream.poll_read_some(&mut conn.buf, cx)).await {
            Ok(0) => {
                let err = io::Error::new(io::ErrorKind::UnexpectedEof, "the backend closed the connection before answering");
                return Err(io(err, resend && nothing_yet));
            }
            Ok(_) => {}
            Err(e) => {
                let reset = e.kind() == io::ErrorKind::ConnectionReset;
                return Err(io(e, resend && nothing_yet && reset));
            }
        }
    }
}

/// Copies a streamed client body to the backend: as it comes (the client's
/// `Content-Length` framing) or chunked.
async fn stream_body(stream: &mut Stream, mut incoming: ClientBody, framing: SendFraming) -> Result<(), Failed> {
    let io = |err: io::Error| Failed { err: UpstreamError::Io(err), stale: false };
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(|e| Failed { err: UpstreamError::Body(e), stale: false })?;
        let Ok(data) = frame.into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        if framing == SendFraming::Chunked {
            stream.write_all(format!("{:x}\r\n", data.len()).as_bytes()).await.map_err(io)?;
            stream.write_all(&data).await.map_err(io)?;
            stream.write_all(b"\r\n").await.map_err(io)?;
        } else {
            stream.write_all(&data).await.map_err(io)?;
        }
        stream.flush().await.map_err(io)?;
    }
    if framing == SendFraming::Chunked {
        stream.write_all(b"0\r\n\r\n").await.map_err(io)?;
    }
    Ok(())
}
