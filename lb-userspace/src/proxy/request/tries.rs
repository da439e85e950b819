//! The try loop: a backend chosen (pin, sticky cookie, else the method), the request
//! sent, and on failure another backend not tried yet, within `retries` and `total`.
//! Failures that `fail_on`/`fail_statuses` count go to passive health; an answer
//! ends a backend's run of failures.

use std::{error::Error as _, sync::Arc, time::Instant};

use hyper::{HeaderMap, Response, http::request::Parts};
use tracing::{debug, warn};

use super::{affinity::Affinity, body::ReqBody, log::Trial, target::Target};
use crate::{
    config::http::{DEFAULT_EWMA_DECAY, FailOn, Method},
    proxy::{
        failure::{Failure, FailureKind},
        listen::guard::body::refused,
        select::{
            balance::{Peer, Pick},
            ewma::InFlight,
        },
        site::ServiceRt,
        upstream::{Connected, OutBody, Outgoing, UpstreamError, body::RespBody, idempotent},
    },
};

/// One request's tries; built by the phases before them (`request/mod.rs`).
pub struct Tries<'a> {
    pub(super) target: &'a Target,
    pub(super) head: &'a Parts,
    /// The headers every try sends (`headers::upstream`).
    pub(super) headers: HeaderMap,
    pub(super) body: ReqBody,
    /// What may name the first backend (pin, sticky cookie), and what the method hashes.
    pub(super) affinity: Affinity,
    /// The request upgrades (WebSocket): never retried, its status never a failure.
    pub(super) upgrade: bool,
    /// The end of `timeouts.total`.
    pub(super) deadline: Option<Instant>,
    /// Told each try, for the access log.
    pub(super) trial: &'a mut Trial,
}

/// The backend response that goes to the client.
pub struct Answer {
    pub resp: Response<RespBody>,
    pub peer: Arc<Peer>,
    /// The request stays in flight on `peer` until the response body ends.
    pub inflight: InFlight,
    /// The backend was chosen by the sticky cookie (no new cookie is set).
    pub by_cookie: bool,
}

/// What one try came to. `Answer` is the common case and moves once: boxing it would
/// cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Tried {
    Answer(Response<RespBody>),
    /// Try another backend; the status to answer if none is left.
    Again(Option<u16>),
    /// No more tries; the status to answer.
    Stop(u16),
}

impl Tries<'_> {
    /// Tries backends until one answers; else the status for the client: 502 when a
    /// backend failed, 504 on timeouts, 503 when none was usable.
    pub async fn run(mut self) -> Result<Answer, u16> {
        let o = &self.target.service.options;
        let max_tries = 1 + o.retries.attempts as usize;
        // Excluded: the backends tried, and from the start those not serving this host.
        let mut tried = self.target.service.backend_hosts.excluded(self.target.host.as_deref());
        let mut last_error = None;
        for attempt in 0..max_tries {
            if attempt > 0 {
                let wait = o.retries.backoff(attempt as u32);
                if self.deadline.is_some_and(|d| Instant::now() + wait >= d) {
                    return Err(504);
                }
                tokio::time::sleep(wait).await;
            }
            let now = Instant::now();
            let Some((idx, by_cookie)) = self.choose(attempt, &tried, now) else {
                break;
            };
            tried.push(idx);
            let peer = self.target.service.balancer.peers[idx].clone();
            let inflight = peer.stats.start();
            let Some(body) = self.body.for_try() else {
                break;
            };
            let more = attempt + 1 < max_tries;
            let sent = Instant::now();
            (self.trial.tries, self.trial.upstream, self.trial.connect, self.trial.header) = (attempt as u32 + 1, Some(peer.clone()), None, None);
            match self.send(idx, &peer, body, now, more, tried.len()).await? {
                Tried::Answer(resp) => {
                    self.trial.header = Some(sent.elapsed());
                    self.trial.connect = resp.extensions().get::<Connected>().map(|c| c.0);
                    return Ok(Answer { resp, peer, inflight, by_cookie });
                }
                Tried::Again(status) => last_error = status.or(last_error),
                Tried::Stop(status) => return Err(status),
            }
        }
        Err(last_error.unwrap_or(503))
    }

    /// The first try honours a pin, then a sticky cookie; retries balance. `true`:
    /// chosen by the sticky cookie.
    fn choose(&self, attempt: usize, tried: &[usize], now: Instant) -> Option<(usize, bool)> {
        let pick = Pick { client: self.affinity.client, key: self.affinity.hash_key.as_deref(), exclude: tried, now };
        let bal = &self.target.service.balancer;
        let mut chosen = None;
        if attempt == 0 {
            chosen = self.affinity.pinned.as_deref().and_then(|n| bal.by_name(n, &pick)).map(|i| (i, false));
            if chosen.is_none() {
                chosen = self.affinity.sticky.as_deref().and_then(|v| bal.by_cookie(v, &pick)).map(|i| (i, true));
            }
        }
        chosen.or_else(|| bal.choose(&pick).map(|i| (i, false)))
    }

    /// One try on `peer` (`idx` in the balancer). `more`: a try is left; `tried`:
    /// backends excluded so far.
    async fn send(&self, idx: usize, peer: &Arc<Peer>, body: OutBody, now: Instant, more: bool, tried: usize) -> Result<Tried, u16> {
        let svc = &self.target.service;
        let o = &svc.options;
        // Origin-form (the path shared with the client's request); the backend's
        // authority, made once, is the `Host` of a request without one.
        let target = self.head.uri.path_and_query().map_or("/", |p| p.as_str());
        // Only origin-form goes to a backend (`OPTIONS *` is refused, as before).
        if !target.starts_with('/') {
            return Err(400);
        }
        let up = Outgoing { method: &self.head.method, target, headers: &self.headers, body };

        let wait = self.deadline.map_or(o.timeouts.header, |d| o.timeouts.header.min(d.saturating_duration_since(now)));
        let sent = Instant::now();
        let outcome = tokio::time::timeout(wait, svc.upstream.request(peer.addr, &svc.authorities[idx], up)).await;
        let retriable = more && self.body.is_buffered() && !self.upgrade;
        let idempotent = idempotent(&self.head.method);
        Ok(match outcome {
            Ok(Ok(resp)) => {
                let decay = match o.method {
                    Method::PeakEwma { decay } => decay,
                    _ => DEFAULT_EWMA_DECAY,
                };
                peer.stats.record_header(sent.elapsed(), Instant::now(), decay);
                let status = resp.status().as_u16();
                if o.fail_statuses.contains(&status) && !self.upgrade {
                    report(svc, peer, FailureKind::Status(status));
                } else {
                    peer.stats.succeed();
                }
                if o.retries.statuses.contains(&status) && !self.upgrade && retriable && idempotent && tried < svc.balancer.peers.len() {
                    debug!(service = %svc.name, backend = %peer.name, status, "retrying on another backend");
                    return Ok(Tried::Again(None));
                }
                Tried::Answer(resp)
            }
            // The client's streamed body failed (over a limit, reset): not the backend's
            // fault, and nothing to retry.
            Ok(Err(e @ UpstreamError::Body(_))) => {
                debug!(service = %svc.name, backend = %peer.name, "upstream: {e}");
                Tried::Stop(refused(&e).unwrap_or(400))
            }
            Ok(Err(e)) => {
                let connect = e.is_connect();
                debug!(service = %svc.name, backend = %peer.name, "upstream: {e} ({:?})", e.source());
                report(svc, peer, if connect { FailureKind::Connect } else { FailureKind::Error });
                let status = if timed_out(&e) { 504 } else { 502 };
                // A connect failure sent nothing: any method may go elsewhere.
                if retriable && (connect || idempotent) { Tried::Again(Some(status)) } else { Tried::Stop(status) }
            }
            Err(_) => {
                debug!(service = %svc.name, backend = %peer.name, "no response head within {wait:?}");
                report(svc, peer, FailureKind::Timeout);
                let past_deadline = self.deadline.is_some_and(|d| Instant::now() >= d);
                if retriable && idempotent && !past_deadline { Tried::Again(Some(504)) } else { Tried::Stop(504) }
            }
        })
    }
}

/// An I/O timeout somewhere in the error's sources (a connect timeout): 504, not 502.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
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

/// A failure of `peer`: if `fail_on`/`fail_statuses` count it, it goes to the proxy's
/// own passive health and to the owner (which marks an ejection down: status, metrics).
fn report(svc: &ServiceRt, peer: &Peer, kind: FailureKind) {
    let o = &svc.options;
    let counted = match kind {
        FailureKind::Connect => o.fail_on.contains(&FailOn::Connect),
        FailureKind::Error => o.fail_on.contains(&FailOn::Error),
        FailureKind::Timeout => o.fail_on.contains(&FailOn::Timeout),
        FailureKind::Status(s) => o.fail_statuses.contains(&s),
    };
    if !counted {
        return;
    }
    let ejected = svc.balancer.fail(peer, o.max_fails, o.fail_timeout, o.max_ejection_percent, Instant::now());
    if ejected {
        warn!(service = %svc.name, backend = %peer.name, addr = %peer.addr, "{} failures in a row within {:?} ({kind:?} last): out for {:?}", o.max_fails, o.fail_timeout, o.fail_timeout);
    }
    svc.sink.failure(Failure {
        service: svc.name.clone(),
        backend: peer.name.clone(),
        addr: peer.addr,
        kind,
        max_fails: o.max_fails,
        fail_timeout: o.fail_timeout,
        ejected,
    });
}
