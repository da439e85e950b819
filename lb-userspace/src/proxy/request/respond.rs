//! The respond phase: the backend's response for the client (hop-by-hop headers out,
//! the sticky cookie in, idle and total timeouts on the body) or, after a `101`, the
//! tunnel; and the short error pages of the proxy's own.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, combinators::BoxBody};
use hyper::{
    Response, StatusCode,
    body::{Body, Frame, SizeHint},
    header::{self, HeaderValue},
    upgrade::OnUpgrade,
};
use tokio::time::Sleep;

use super::{body::full, tries::Answer, tunnel::tunnel};
use crate::{
    config::http::StickyCookie,
    proxy::{
        hop_by_hop::strip_hop_by_hop,
        select::ewma::{InFlight, Stats},
        site::{BoxError, ServiceRt},
        upstream::body::RespBody,
    },
};

/// The answer for the client: a tunnel after a `101`, else the response streamed.
pub fn respond(a: Answer, svc: &ServiceRt, client_upgrade: Option<OnUpgrade>, deadline: Option<Instant>) -> Result<Response<BoxBody<Bytes, BoxError>>, u16> {
    if a.resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return tunnel(a.resp, client_upgrade, a.inflight);
    }
    let (mut parts, body) = a.resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(s) = &svc.options.sticky_cookie
        && !a.by_cookie
    {
        parts.headers.append(header::SET_COOKIE, sticky_header(s, &a.peer.cookie));
    }
    let idle = svc.options.timeouts.idle;
    let body = UpstreamResponse {
        inner: body,
        idle,
        idle_timer: Box::pin(tokio::time::sleep(idle)),
        total: deadline.map(|d| Box::pin(tokio::time::sleep_until(d.into()))),
        done: Some((a.inflight, a.peer.stats.clone())),
    };
    Ok(Response::from_parts(parts, body.boxed()))
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

/// The key authorization of an ACME HTTP-01 challenge in progress (RFC 8555 8.3).
pub fn challenge(key_authorization: String) -> Response<BoxBody<Bytes, BoxError>> {
    let mut r = Response::new(full(key_authorization));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    r
}

/// `Set-Cookie` naming the backend: one string, handed to the header without a copy.
fn sticky_header(s: &StickyCookie, value: &str) -> HeaderValue {
    use std::fmt::Write;
    let mut c = format!("{}={value}; Path={}", s.name, s.path);
    if let Some(age) = s.max_age {
        let _ = write!(c, "; Max-Age={}", age.as_secs());
    }
    if s.http_only {
        c.push_str("; HttpOnly");
    }
    if s.secure {
        c.push_str("; Secure");
    }
    if let Some(ss) = &s.same_site {
        let _ = write!(c, "; SameSite={ss}");
    }
    HeaderValue::from_maybe_shared(Bytes::from(c)).unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

/// A backend's response body on its way: idle and total timeouts, and the request's
/// accounting (in flight until the last byte; time to the last byte).
struct UpstreamResponse {
    inner: RespBody,
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    total: Option<Pin<Box<Sleep>>>,
    done: Option<(InFlight, Arc<Stats>)>,
}

impl UpstreamResponse {
    /// The last byte arrived: the request is no longer in flight (its backend
    /// connection went back to the pool as the body ended).
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
                Poll::Ready(Some(Err(e)))
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
