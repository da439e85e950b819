//! The log phase: an exchange, from a request's arrival to the end of its response,
//! counted in the proxy's [`HttpMetrics`] once the response body is done (sent whole,
//! or dropped because the client went away), and written to the access log if there
//! is one (`access_log`).

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::{
    Request, Response,
    body::{Body, Frame, SizeHint},
    header,
};

use crate::{
    access_log::{self, AccessLog, Entry},
    proxy::{
        listen::guard::shared::RequestGuard,
        metrics::HttpMetrics,
        select::balance::Peer,
        site::{BoxError, ServiceRt, Site},
    },
};

/// One request through the proxy, from its arrival to the end of its response.
pub struct Exchange {
    metrics: Arc<HttpMetrics>,
    started: Instant,
    service: Option<Arc<ServiceRt>>,
    backend: Option<Arc<Peer>>,
    /// What the try loop tells of its tries, for the access log.
    pub trial: Trial,
    /// The request as the access log writes it; only when there is one.
    log: Option<Box<(Arc<AccessLog>, access_log::Http)>>,
}

/// The tries of one request (`tries.rs`): how many, and the last one's backend and times.
#[derive(Default)]
pub struct Trial {
    pub tries: u32,
    pub upstream: Option<Arc<Peer>>,
    pub connect: Option<Duration>,
    pub header: Option<Duration>,
}

impl Exchange {
    pub fn start<B>(site: &Site, req: &Request<B>, peer: SocketAddr) -> Self {
        let log = site.access_log.as_ref().map(|log| {
            let h = req.headers();
            let text = |name| h.get(name).map(|v: &hyper::header::HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let entry = access_log::Http {
                time: SystemTime::now(),
                client: peer,
                method: req.method().as_str().to_owned(),
                target: req.uri().to_string(),
                version: version(req.version()),
                host: req.uri().authority().map(|a| a.as_str().to_owned()).or_else(|| text(header::HOST)),
                referer: text(header::REFERER),
                user_agent: text(header::USER_AGENT),
                status: 0,
                bytes: 0,
                service: None,
                upstream: None,
                tries: 0,
                connect: None,
                header: None,
                total: Duration::ZERO,
            };
            Box::new((log.clone(), entry))
        });
        Self { metrics: site.metrics.clone(), started: Instant::now(), service: None, backend: None, trial: Trial::default(), log }
    }

    /// The request was routed to `svc`.
    pub fn routed(&mut self, svc: &Arc<ServiceRt>) {
        self.service = Some(svc.clone());
    }

    /// `peer`'s response goes to the client.
    pub fn answered_by(&mut self, peer: &Arc<Peer>) {
        self.backend = Some(peer.clone());
    }
}

/// The response for hyper: its body holds the request's place on the connection and
/// its exchange, so both end when the body does.
pub fn finish(resp: Response<BoxBody<Bytes, BoxError>>, in_flight: RequestGuard, exchange: Exchange) -> Response<ProxyBody> {
    let recording = Recording { status: resp.status().as_u16(), bytes: 0, exchange };
    resp.map(|inner| ProxyBody { inner, done: Some((in_flight, recording)) })
}

fn version(v: hyper::Version) -> &'static str {
    match v {
        hyper::Version::HTTP_09 => "HTTP/0.9",
        hyper::Version::HTTP_10 => "HTTP/1.0",
        hyper::Version::HTTP_2 => "HTTP/2.0",
        hyper::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// An [`Exchange`] with its status and the body bytes sent so far, recorded on drop.
struct Recording {
    status: u16,
    bytes: u64,
    exchange: Exchange,
}

impl Drop for Recording {
    fn drop(&mut self) {
        let e = &mut self.exchange;
        let service = e.service.as_ref().map_or("", |s| s.name.as_str());
        let backend = e.backend.as_ref().map(|p| (p.addr, p.name.as_str()));
        let total = e.started.elapsed();
        e.metrics.record(service, backend, self.status, total.as_secs_f64());
        if let Some(log) = e.log.take() {
            let (sink, mut entry) = *log;
            let t = &e.trial;
            entry.status = self.status;
            entry.bytes = self.bytes;
            entry.service = e.service.as_ref().map(|s| s.name.clone());
            entry.upstream = e.backend.as_ref().or(t.upstream.as_ref()).map(|p| (p.addr, p.name.clone()));
            (entry.tries, entry.connect, entry.header, entry.total) = (t.tries, t.connect, t.header, total);
            sink.log(Entry::Http(Box::new(entry)));
        }
    }
}

/// A response body to the client: keeps the request counted on its connection, and
/// its exchange unrecorded, until it is done.
pub struct ProxyBody {
    inner: BoxBody<Bytes, BoxError>,
    done: Option<(RequestGuard, Recording)>,
}

impl ProxyBody {
    /// A body not counted: the `101` that switches to h2c (the request is answered,
    /// and counted, on stream 1).
    pub fn unrecorded(inner: BoxBody<Bytes, BoxError>) -> Self {
        Self { inner, done: None }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some((_, r))) = (&polled, &mut self.done)
            && let Some(data) = frame.data_ref()
        {
            r.bytes += data.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
