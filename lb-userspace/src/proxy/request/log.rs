//! The log phase: an exchange, from a request's arrival to the end of its response,
//! counted in the proxy's [`HttpMetrics`] once the response body is done (sent whole,
//! or dropped because the client went away).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::{
    Response,
    body::{Body, Frame, SizeHint},
};

use crate::proxy::{
    listen::guard::shared::RequestGuard,
    metrics::HttpMetrics,
    select::balance::Peer,
    site::{BoxError, ServiceRt},
};

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
}

/// The response for hyper: its body holds the request's place on the connection and
/// its exchange, so both end when the body does.
pub fn finish(resp: Response<BoxBody<Bytes, BoxError>>, in_flight: RequestGuard, exchange: Exchange) -> Response<ProxyBody> {
    let recording = Recording { status: resp.status().as_u16(), exchange };
    resp.map(|inner| ProxyBody { inner, _done: Some((in_flight, recording)) })
}

/// An [`Exchange`] with its status, recorded on drop.
struct Recording {
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

/// A response body to the client: keeps the request counted on its connection, and
/// its exchange unrecorded, until it is done.
pub struct ProxyBody {
    inner: BoxBody<Bytes, BoxError>,
    _done: Option<(RequestGuard, Recording)>,
}

impl ProxyBody {
    /// A body not counted: the `101` that switches to h2c (the request is answered,
    /// and counted, on stream 1).
    pub fn unrecorded(inner: BoxBody<Bytes, BoxError>) -> Self {
        Self { inner, _done: None }
    }
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
