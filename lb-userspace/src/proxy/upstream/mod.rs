//! Connections to backends: HTTP/1.1 over TCP, a keep-alive pool per worker, service
//! and backend. A request is written and its response read on the requesting task
//! itself (the client connection's): no task per backend connection, no channel
//! between the two, so a proxied request costs one task's wake-ups, as in nginx's
//! event loop. The codec is `h1.rs` (heads) and `body.rs` (response bodies). A
//! connection goes back to its pool when its response body has ended; idle ones are
//! used for up to `POOL_IDLE` (older ones are closed when the pool is next looked at),
//! at most `POOL_MAX_IDLE_PER_BACKEND` a backend.

pub mod body;
pub mod h1;
pub mod pool;

use std::{
    fmt, io,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::{HeaderMap, Method, Response, http::uri::Authority};
use tokio::{io::AsyncWriteExt, net::TcpStream};

use self::{
    body::{RespBody, read_some},
    h1::{Parsed, SendFraming},
    pool::{Conn, Home, Pool, checkout},
};
use super::{listen::guard::body::ClientBody, workers::PerWorker};

/// Buffered bodies up to this size go out in the same write as the head.
const COALESCE: usize = 16 * 1024;

/// A service's connections to its backends.
pub struct Upstream {
    connect: Duration,
    pools: PerWorker<Pool>,
}

/// A request as it goes to a backend (its target in origin-form).
pub struct Outgoing<'a> {
    pub method: &'a Method,
    pub target: &'a str,
    pub headers: &'a HeaderMap,
    pub body: OutBody,
}

/// A request body for one try.
pub enum OutBody {
    /// Read whole (possibly empty): can be sent again.
    Bytes(Bytes),
    /// Streamed from the client: sent once.
    Stream(ClientBody),
}

/// On a response that came on a new connection: how long opening it took (the access
/// log's `connect_time`; a pooled connection's response has none).
#[derive(Debug, Clone, Copy)]
pub struct Connected(pub Duration);

/// Why a request got no response head.
#[derive(Debug)]
pub enum UpstreamError {
    /// No connection: nothing was sent.
    Connect(io::Error),
    Io(io::Error),
    /// The backend's answer broke HTTP/1.1.
    Protocol(&'static str),
    /// The client's streamed body failed.
    Body(body::BodyError),
}

impl UpstreamError {
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connect: {e}"),
            Self::Io(e) => write!(f, "{e}"),
            Self::Protocol(e) => write!(f, "bad response: {e}"),
            Self::Body(e) => write!(f, "request body: {e}"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) | Self::Io(e) => Some(e),
            Self::Protocol(_) => None,
            Self::Body(e) => Some(&**e),
        }
    }
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
    pub fn new(connect: Duration) -> Self {
        Self { connect, pools: PerWorker::new(Pool::default) }
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect
    }

    /// Sends `out` to `addr` on an idle pooled connection of this worker, else a new
    /// one. A pooled connection the backend had closed is passed over.
    pub async fn request(&self, addr: SocketAddr, authority: &Authority, out: Outgoing<'_>) -> Result<Response<RespBody>, UpstreamError> {
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
        let stream = match tokio::time::timeout(self.connect, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(UpstreamError::Connect(e)),
            Err(_) => return Err(UpstreamError::Connect(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))),
        };
        let _ = stream.set_nodelay(true);
        Ok(Conn { stream, buf: BytesMut::new() })
    }
}

fn answer(head: h1::Head, conn: Conn, home: Home) -> Response<RespBody> {
    let home = head.keep_alive.then_some(home);
    Response::from_parts(head.parts, RespBody::new(head.framing, conn, home))
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
        match std::future::poll_fn(|cx| read_some(&mut conn.stream, &mut conn.buf, cx)).await {
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
async fn stream_body(stream: &mut TcpStream, mut incoming: ClientBody, framing: SendFraming) -> Result<(), Failed> {
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
    }
    if framing == SendFraming::Chunked {
        stream.write_all(b"0\r\n\r\n").await.map_err(io)?;
    }
    Ok(())
}
