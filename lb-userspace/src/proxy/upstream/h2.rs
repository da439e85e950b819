//! HTTP/2 to backends (`http.upstream.protocol`: `h2c` by prior knowledge, `h2` over
//! TLS): hyper's client. A connection carries many requests at once, so unlike
//! HTTP/1.1 it has a task of its own (hyper's connection driver); each worker keeps one
//! per backend and its requests share it. gRPC goes through as it is: trailers come back
//! as the body's last frame, and `te: trailers`, which gRPC requires and the proxy drops
//! as hop-by-hop, is put back for gRPC requests.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::{
    HeaderMap, Request, Response, Uri, Version,
    client::conn::http2::{self, SendRequest},
    header::{self, HeaderValue},
    http::uri::{Authority, Scheme},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tracing::debug;

use super::{
    body::RespBody,
    request::{Connected, OutBody, Outgoing, UpstreamError},
    stream::Stream,
};
use crate::proxy::listen::guard::body::ClientBody;

type ReqBody = Either<Full<Bytes>, ClientBody>;
type Sender = SendRequest<ReqBody>;
/// One worker's HTTP/2 connections of a service, by backend address.
pub type Senders = Arc<Mutex<HashMap<SocketAddr, Sender>>>;

/// Sends `out` on this worker's connection to `addr` (of `senders`), opened first by
/// `connect` if there is none (or it has closed). A request the old connection refused
/// unsent (it was going away) goes on a new one, if its body can be sent again.
pub(super) async fn request<F: Future<Output = Result<Stream, UpstreamError>>>(
    senders: &Senders,
    addr: SocketAddr,
    authority: &Authority,
    scheme: Scheme,
    out: Outgoing<'_>,
    connect: impl FnOnce() -> F,
) -> Result<Response<RespBody>, UpstreamError> {
    let (uri, headers) = head(&out, authority, scheme)?;
    let mut body = Some(out.body);
    let pooled = senders.lock().unwrap_or_else(|e| e.into_inner()).get(&addr).filter(|s| !s.is_closed()).cloned();
    if let Some(mut sender) = pooled {
        match send(&mut sender, out.method, &uri, &headers, &mut body).await {
            Err(e) if e.is_canceled() && body.is_some() => debug!(backend = %addr, "upstream h2: connection went away: {e}"),
            r => return r.map_err(|e| UpstreamError::Io(io::Error::other(e))),
        }
    }
    let opening = Instant::now();
    let stream = connect().await?;
    let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.map_err(|e| UpstreamError::Connect(io::Error::other(e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(backend = %addr, "upstream h2 connection: {e}");
        }
    });
    senders.lock().unwrap_or_else(|e| e.into_inner()).insert(addr, sender.clone());
    let mut resp = send(&mut sender, out.method, &uri, &headers, &mut body).await.map_err(|e| UpstreamError::Io(io::Error::other(e)))?;
    resp.extensions_mut().insert(Connected(opening.elapsed()));
    Ok(resp)
}

/// The request's URI (its authority from `Host`, else the backend's) and headers:
/// `Host` becomes `:authority` (RFC 9113 8.3.1), and gRPC gets its `te: trailers`.
fn head(out: &Outgoing<'_>, authority: &Authority, scheme: Scheme) -> Result<(Uri, HeaderMap), UpstreamError> {
    let mut headers = out.headers.clone();
    let host = headers.remove(header::HOST).and_then(|h| Authority::try_from(h.as_bytes()).ok()).unwrap_or_else(|| authority.clone());
    let uri = Uri::builder().scheme(scheme).authority(host).path_and_query(out.target).build().map_err(|_| UpstreamError::Protocol("request target"))?;
    if headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc")) {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    Ok((uri, headers))
}

/// One request on `sender`. A buffered body is cloned (it stays for another try); a
/// streamed one is taken.
async fn send(
    sender: &mut Sender,
    method: &hyper::Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &mut Option<OutBody>,
) -> Result<Response<RespBody>, hyper::Error> {
    let b = match body {
        Some(OutBody::Bytes(b)) => Either::Left(Full::new(b.clone())),
        Some(OutBody::Stream(_)) => match body.take() {
            Some(OutBody::Stream(s)) => Either::Right(s),
            _ => unreachable!(),
        },
        None => Either::Left(Full::new(Bytes::new())),
    };
    let mut req = Request::new(b);
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri.clone();
    *req.version_mut() = Version::HTTP_2;
    *req.headers_mut() = headers.clone();
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    // The client side answers in its own HTTP version, whatever the backend spoke.
    let (mut parts, incoming) = resp.into_parts();
    parts.version = Version::HTTP_11;
    Ok(Response::from_parts(parts, RespBody::H2(incoming)))
}
