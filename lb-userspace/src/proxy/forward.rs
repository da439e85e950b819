//! One request: route, client identity, body, backend choice, tries, response.

use std::{
    convert::Infallible,
    error::Error as _,
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited, combinators::BoxBody};
use hyper::{
    HeaderMap, Method as HttpMethod, Request, Response, StatusCode, Uri, Version,
    body::{Body, Frame, Incoming, SizeHint},
    header::{self, HeaderName, HeaderValue},
};
use hyper_util::rt::TokioIo;
use tokio::time::Sleep;
use tracing::debug;

use super::{
    failure::{Failure, FailureKind},
    guard::{ConnShared, RequestGuard},
    headers::{HOP_BY_HOP, connection_tokens, strip_hop_by_hop},
    metrics::HttpMetrics,
    select::{
        balance::{Peer, Pick},
        ewma::{InFlight, Stats},
        route::normalize_host,
    },
    site::{BoxError, ServiceRt, Site},
};
use crate::config::http::{DEFAULT_EWMA_DECAY, HashKey, Method, canonical};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// A response body to the client: keeps the request counted on its connection until
/// it is done.
pub struct ProxyBody {
    inner: BoxBody<Bytes, BoxError>,
    /// Held until the body is sent or dropped: the request counts as in flight, and its
    /// metrics are recorded, until then.
    _done: Option<(RequestGuard, Recording)>,
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn full(b: impl Into<Bytes>) -> BoxBody<Bytes, BoxError> {
    Full::new(b.into()).map_err(|e: Infallible| match e {}).boxed()
}

/// A short error page without internal detail.
pub fn page(status: u16, close: bool) -> Response<BoxBody<Bytes, BoxError>> {
    let s = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut r = Response::new(full(format!("{} {}\n", s.as_str(), s.canonical_reason().unwrap_or("Error"))));
    *r.status_mut() = s;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if close {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// The hyper service function.
pub async fn handle(req: Request<Incoming>, site: Arc<Site>, conn: Arc<ConnShared>) -> Response<ProxyBody> {
    let guard = conn.request();
    let mut exchange = Exchange::start(&site.metrics);
    let h1 = req.version() < Version::HTTP_2;
    let asks_upgrade = h1 && asks_upgrade(req.headers());
    // `Upgrade: h2c` is the proxy's own business (h2c.rs); one that reaches here is
    // declined, and the request answered over HTTP/1.1.
    let upgrade = asks_upgrade && !req.headers().get(header::UPGRADE).is_some_and(|u| u.as_bytes().trim_ascii().eq_ignore_ascii_case(b"h2c"));
    let resp = match proxy(req, &site, &conn, upgrade, &mut exchange).await {
        Ok(r) => r,
        Err(status) => page(status, h1 && matches!(status, 400 | 408 | 413 | 414 | 431)),
    };
    if asks_upgrade {
        conn.upgrade_outcome(upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS);
    }
    let status = resp.status();
    resp.map(|inner| ProxyBody { inner, _done: Some((guard, exchange.finish(status))) })
}

/// The answer that switches a connection to HTTP/2 (`Upgrade: h2c`); the request is
/// answered on stream 1 of the new protocol.
pub fn switching_to_h2c(conn: &ConnShared) -> Response<ProxyBody> {
    conn.upgrade_outcome(true);
    let mut r = Response::new(ProxyBody { inner: Empty::new().map_err(|e: Infallible| match e {}).boxed(), _done: None });
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    r.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("h2c"));
    r
}

/// `Connection: upgrade` with an `Upgrade` header (as the guard sees it).
fn asks_upgrade(h: &HeaderMap) -> bool {
    let conn_upgrade =
        h.get_all(header::CONNECTION).iter().any(|v| v.as_bytes().split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade")));
    conn_upgrade && h.contains_key(header::UPGRADE)
}

fn idempotent(m: &HttpMethod) -> bool {
    matches!(*m, HttpMethod::GET | HttpMethod::HEAD | HttpMethod::OPTIONS | HttpMethod::TRACE | HttpMethod::PUT | HttpMethod::DELETE)
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
}

/// The client behind trusted proxies: the rightmost `X-Forwarded-For` entry that is
/// not a trusted network (nginx's `real_ip_recursive on`).
fn real_client(h: &HeaderMap, peer: IpAddr, trusted: &impl Fn(IpAddr) -> bool) -> IpAddr {
    if !trusted(peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = h
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok().map(canonical))
        .collect();
    hops.iter().rev().find(|&&ip| !trusted(ip)).or(hops.first()).copied().unwrap_or(peer)
}

enum ReqBody {
    Buffered(Bytes),
    Stream(Option<Incoming>),
}

async fn proxy(
    mut req: Request<Incoming>,
    site: &Site,
    conn: &ConnShared,
    upgrade: bool,
    exchange: &mut Exchange,
) -> Result<Response<BoxBody<Bytes, BoxError>>, u16> {
    let started = Instant::now();
    if req.method() == HttpMethod::CONNECT {
        return Err(405);
    }
    let uri = req.uri().clone();
    // Absolute-form names the host itself (and wins over Host); only http, and only to
    // the services of this listener: never an open proxy.
    if uri.scheme().is_some_and(|s| s.as_str() != "http") {
        return Err(400);
    }
    let path = uri.path();
    if !path.starts_with('/') {
        return Err(400);
    }
    let raw_host = match uri.authority() {
        Some(a) => Some(a.as_str().to_owned()),
        None => match req.headers().get(header::HOST) {
            Some(h) => Some(h.to_str().map_err(|_| 400u16)?.to_owned()),
            None => None,
        },
    };
    let host = match &raw_host {
        Some(h) => Some(normalize_host(h).ok_or(400u16)?),
        None => None,
    };
    let svc_idx = site.router.route(host.as_deref(), path).ok_or(404u16)?;
    let svc = site.services[svc_idx].clone();
    exchange.routed(&svc);
    let o = &svc.options;

    let peer_ip = canonical(conn.peer.ip());
    let trusted = |ip: IpAddr| o.trusted_networks.iter().any(|n| n.contains(ip));
    let peer_trusted = trusted(peer_ip);
    let client_ip = real_client(req.headers(), peer_ip, &trusted);

    // The body: read whole (within max_body) unless streaming is configured.
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
        && len > o.limits.max_body
    {
        return Err(413);
    }
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (req, incoming) = req.into_parts();
    let mut body = if upgrade || incoming.is_end_stream() {
        ReqBody::Buffered(Bytes::new())
    } else if o.limits.buffer_requests {
        match Limited::new(incoming, o.limits.max_body as usize).collect().await {
            Ok(c) => ReqBody::Buffered(c.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(413),
            Err(e) => {
                debug!(peer = %conn.peer, "request body: {e}");
                conn.set_answered();
                return Err(conn.violation().map(|v| v.status()).unwrap_or(400));
            }
        }
    } else {
        ReqBody::Stream(Some(incoming))
    };

    let mut headers = upstream_headers(&req.headers, raw_host.as_deref(), upgrade, peer_ip, peer_trusted, client_ip);
    if matches!(body, ReqBody::Buffered(_)) {
        // The whole body is here: the backend has nothing to agree to.
        headers.remove(header::EXPECT);
    }
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_owned();
    let hash_key: Option<Vec<u8>> = match o.method.clone() {
        Method::Hash { key, .. } => match key {
            HashKey::Uri => Some(path_and_query.as_bytes().to_vec()),
            HashKey::Path => Some(path.as_bytes().to_vec()),
            HashKey::Client => Some(client_ip.to_string().into_bytes()),
            HashKey::Header(h) => req.headers.get(h.as_str()).map(|v| v.as_bytes().to_vec()),
            HashKey::Cookie(c) => cookie(&req.headers, &c).map(|v| v.as_bytes().to_vec()),
        },
        _ => None,
    };
    let pinned_name = o
        .pin_header
        .as_ref()
        .and_then(|h| req.headers.get(h.as_str()))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| o.pin_cookie.as_ref().and_then(|c| cookie(&req.headers, c)).map(str::to_owned));
    let sticky_value = o.sticky_cookie.as_ref().and_then(|s| cookie(&req.headers, &s.name)).map(str::to_owned);

    let deadline = o.timeouts.total.map(|t| started + t);
    let retriable_body = matches!(body, ReqBody::Buffered(_));
    let max_tries = 1 + o.retries.attempts as usize;
    // Backends excluded: those tried, and from the start those not serving this host.
    let mut tried: Vec<usize> = svc.backend_hosts.excluded(host.as_deref());
    let mut last_error: Option<u16> = None;
    let decay = match o.method {
        Method::PeakEwma { decay } => decay,
        _ => DEFAULT_EWMA_DECAY,
    };

    for attempt in 0..max_tries {
        if attempt > 0 {
            let wait = o.retries.backoff(attempt as u32);
            if deadline.is_some_and(|d| Instant::now() + wait >= d) {
                return Err(504);
            }
            tokio::time::sleep(wait).await;
        }
        let now = Instant::now();
        let pick = Pick { client: client_ip, key: hash_key.as_deref(), exclude: &tried, now };
        let bal = &svc.balancer;
        // The first try honours a pin, then a sticky cookie; retries balance.
        let mut chosen = None;
        if attempt == 0 {
            chosen = pinned_name.as_deref().and_then(|n| bal.by_name(n, &pick)).map(|i| (i, false));
            if chosen.is_none() {
                chosen = sticky_value.as_deref().and_then(|v| bal.by_cookie(v, &pick)).map(|i| (i, true));
            }
        }
        let Some((idx, by_cookie)) = chosen.or_else(|| bal.choose(&pick).map(|i| (i, false))) else {
            break;
        };
        tried.push(idx);
        let peer = bal.peers[idx].clone();
        let inflight = peer.stats.start();

        let body_now = match &mut body {
            ReqBody::Buffered(b) if b.is_empty() => Empty::new().map_err(|e: Infallible| match e {}).boxed(),
            ReqBody::Buffered(b) => full(b.clone()),
            ReqBody::Stream(s) => match s.take() {
                Some(i) => i.map_err(BoxError::from).boxed(),
                None => break,
            },
        };
        let target: Uri = match format!("http://{}{}", peer.addr, path_and_query).parse() {
            Ok(u) => u,
            Err(_) => return Err(400),
        };
        let mut up = Request::new(body_now);
        *up.method_mut() = req.method.clone();
        *up.uri_mut() = target;
        *up.version_mut() = Version::HTTP_11;
        *up.headers_mut() = headers.clone();

        let mut wait = o.timeouts.header;
        if let Some(d) = deadline {
            wait = wait.min(d.saturating_duration_since(now));
        }
        let sent = Instant::now();
        let outcome = tokio::time::timeout(wait, svc.client.request(up)).await;
        let can_retry = attempt + 1 < max_tries && idempotent(&req.method) && retriable_body && !upgrade;
        match outcome {
            Ok(Ok(resp)) => {
                peer.stats.record_header(sent.elapsed(), Instant::now(), decay);
                let status = resp.status().as_u16();
                if o.retries.statuses.contains(&status) && !upgrade {
                    report(&svc, &peer, FailureKind::Status(status));
                    if can_retry && tried.len() < bal.peers.len() {
                        debug!(service = %svc.name, backend = %peer.name, status, "retrying on another backend");
                        continue;
                    }
                }
                exchange.answered_by(&peer);
                if status == 101 {
                    return Ok(tunnel(resp, client_upgrade, inflight));
                }
                let set_cookie = match &o.sticky_cookie {
                    Some(s) if !by_cookie => Some(sticky_header(s, &peer.cookie)),
                    _ => None,
                };
                return Ok(respond(resp, &svc, inflight, peer.stats.clone(), deadline, set_cookie));
            }
            Ok(Err(e)) => {
                let connect = e.is_connect();
                let timed_out = source_chain_timed_out(&e);
                debug!(service = %svc.name, backend = %peer.name, "upstream: {e} ({:?})", e.source());
                report(&svc, &peer, if connect { FailureKind::Connect } else { FailureKind::Error });
                last_error = Some(if timed_out { 504 } else { 502 });
                // A connect failure sent nothing: any method may go elsewhere.
                let again = attempt + 1 < max_tries && retriable_body && !upgrade && (connect || idempotent(&req.method));
                if !again {
                    break;
                }
            }
            Err(_) => {
                debug!(service = %svc.name, backend = %peer.name, "no response head within {wait:?}");
                report(&svc, &peer, FailureKind::Timeout);
                last_error = Some(504);
                if !can_retry || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
            }
        }
    }
    Err(last_error.unwrap_or(503))
}

fn source_chain_timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        cur = err.source();
    }
    false
}

fn report(svc: &ServiceRt, peer: &Peer, kind: FailureKind) {
    let o = &svc.options;
    if peer.stats.fail(o.max_fails, o.fail_timeout, Instant::now()) {
        tracing::warn!(service = %svc.name, backend = %peer.name, "{} failures within {:?}: out for {:?}", o.max_fails, o.fail_timeout, o.fail_timeout);
    }
    svc.sink.failure(Failure {
        service: svc.name.clone(),
        backend: peer.name.clone(),
        addr: peer.addr,
        kind,
        max_fails: o.max_fails,
        fail_timeout: o.fail_timeout,
    });
}

fn sticky_header(s: &crate::config::http::StickyCookie, value: &str) -> HeaderValue {
    let mut c = format!("{}={value}; Path={}", s.name, s.path);
    if let Some(age) = s.max_age {
        c.push_str(&format!("; Max-Age={}", age.as_secs()));
    }
    if s.http_only {
        c.push_str("; HttpOnly");
    }
    if s.secure {
        c.push_str("; Secure");
    }
    if let Some(ss) = &s.same_site {
        c.push_str(&format!("; SameSite={ss}"));
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

/// The request headers a backend gets.
fn upstream_headers(src: &HeaderMap, raw_host: Option<&str>, upgrade: bool, peer: IpAddr, peer_trusted: bool, client: IpAddr) -> HeaderMap {
    let named = connection_tokens(src);
    let forwarding = [&X_FORWARDED_FOR, &X_REAL_IP, &X_FORWARDED_HOST, &X_FORWARDED_PROTO, &FORWARDED];
    let mut out = HeaderMap::with_capacity(src.len() + 6);
    for (name, value) in src {
        if HOP_BY_HOP.contains(name) || named.contains(name) {
            continue;
        }
        if !peer_trusted && forwarding.contains(&name) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    // HTTP/2 (and absolute-form) carry the host in the URI.
    if let Some(h) = raw_host
        && let Ok(v) = HeaderValue::from_str(h)
    {
        out.insert(header::HOST, v);
    }
    let xff = match out.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if peer_trusted => format!("{}, {peer}", prev.trim()),
        _ => peer.to_string(),
    };
    out.remove(&X_FORWARDED_FOR);
    if let Ok(v) = HeaderValue::from_str(&xff) {
        out.insert(X_FORWARDED_FOR, v);
    }
    if let Ok(v) = HeaderValue::from_str(&client.to_string()) {
        out.insert(X_REAL_IP, v);
    }
    if !out.contains_key(&X_FORWARDED_HOST)
        && let Some(h) = raw_host.and_then(|h| HeaderValue::from_str(h).ok())
    {
        out.insert(X_FORWARDED_HOST, h);
    }
    if !out.contains_key(&X_FORWARDED_PROTO) {
        out.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if upgrade {
        out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(u) = src.get(header::UPGRADE) {
            out.insert(header::UPGRADE, u.clone());
        }
    }
    out
}

/// The backend's response, for the client.
fn respond(
    resp: Response<Incoming>,
    svc: &ServiceRt,
    inflight: InFlight,
    stats: Arc<Stats>,
    deadline: Option<Instant>,
    set_cookie: Option<HeaderValue>,
) -> Response<BoxBody<Bytes, BoxError>> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(c) = set_cookie {
        parts.headers.append(header::SET_COOKIE, c);
    }
    let idle = svc.options.timeouts.idle;
    let body = UpstreamResponse {
        inner: body,
        idle,
        idle_timer: Box::pin(tokio::time::sleep(idle)),
        total: deadline.map(|d| Box::pin(tokio::time::sleep_until(d.into()))),
        done: Some((inflight, stats)),
    };
    Response::from_parts(parts, body.boxed())
}

/// A 101 from the backend: answer the client 101 and join the two upgraded
/// connections.
fn tunnel(mut resp: Response<Incoming>, client: Option<hyper::upgrade::OnUpgrade>, inflight: InFlight) -> Response<BoxBody<Bytes, BoxError>> {
    let Some(client) = client else {
        // A 101 to a request that asked for no upgrade: a broken backend.
        return page(502, false);
    };
    let upstream = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let _inflight = inflight;
        match tokio::try_join!(client, upstream) {
            Ok((c, u)) => {
                let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                    debug!("upgraded connection: {e}");
                }
            }
            Err(e) => debug!("upgrade failed: {e}"),
        }
    });
    let (mut parts, _) = resp.into_parts();
    let upgrade = parts.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(u) = upgrade {
        parts.headers.insert(header::UPGRADE, u);
    }
    Response::from_parts(parts, Empty::new().map_err(|e: Infallible| match e {}).boxed())
}

/// A backend's response body on its way: idle and total timeouts, and the request's
/// accounting (in flight until the last byte; time to the last byte).
struct UpstreamResponse {
    inner: Incoming,
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    total: Option<Pin<Box<Sleep>>>,
    done: Option<(InFlight, Arc<Stats>)>,
}

impl UpstreamResponse {
    /// The last byte arrived: the request is no longer in flight.
    fn finish(&mut self) {
        if let Some((inflight, stats)) = self.done.take() {
            stats.record_last_byte(inflight.started().elapsed());
        }
    }
}

impl Body for UpstreamResponse {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(t) = &mut this.total
            && t.as_mut().poll(cx).is_ready()
        {
            this.done = None;
            return Poll::Ready(Some(Err("total timeout".into())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                this.idle_timer.as_mut().reset((Instant::now() + this.idle).into());
                // A body of known length ends with its last frame: hyper may never poll
                // for the end.
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => {
                if this.idle_timer.as_mut().poll(cx).is_ready() {
                    this.done = None;
                    return Poll::Ready(Some(Err("idle timeout".into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One request through the proxy, from its arrival to the end of its response.
pub struct Exchange {
    metrics: Arc<HttpMetrics>,
    started: Instant,
    service: Option<Arc<ServiceRt>>,
    backend: Option<Arc<Peer>>,
}

impl Exchange {
    pub fn start(metrics: &Arc<HttpMetrics>) -> Self {
        Self { metrics: metrics.clone(), started: Instant::now(), service: None, backend: None }
    }

    /// The request was routed to `svc`.
    pub fn routed(&mut self, svc: &Arc<ServiceRt>) {
        self.service = Some(svc.clone());
    }

    /// `peer`'s response goes to the client.
    pub fn answered_by(&mut self, peer: &Arc<Peer>) {
        self.backend = Some(peer.clone());
    }

    /// The exchange, recorded with `status` when the returned value is dropped: the
    /// response body holds it, so the duration covers the body's transfer too.
    pub fn finish(self, status: StatusCode) -> Recording {
        Recording { status: status.as_u16(), exchange: self }
    }
}

/// An [`Exchange`] with its status, recorded on drop.
pub struct Recording {
    status: u16,
    exchange: Exchange,
}

impl Drop for Recording {
    fn drop(&mut self) {
        let e = &self.exchange;
        let service = e.service.as_ref().map_or("", |s| s.name.as_str());
        let backend = e.backend.as_ref().map(|p| (p.addr, p.name.as_str()));
        e.metrics.record(service, backend, self.status, e.started.elapsed().as_secs_f64());
    }
}
