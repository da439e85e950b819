//! One request through the proxy, as a sequence of phases (in the manner of pingora's):
//!
//! 0. an ACME HTTP-01 challenge in progress (`/.well-known/acme-challenge/TOKEN`) is
//!    answered from `Site::challenges` (`acme/challenge.rs`) before anything else;
//! 1. route (`target.rs`): the target and `Host` choose a service of the listener;
//! 2. client identity (`client.rs`): the peer, and the client behind trusted proxies;
//! 3. body (`body.rs`): read whole within `max_body`, or streamed;
//! 4. affinity (`affinity.rs`): a pin, a sticky cookie, a hash key;
//! 5. tries (`tries.rs`, headers from `headers.rs`): a backend chosen, the request sent,
//!    retried on another within the budget; failures reported;
//! 6. respond (`respond.rs`, `tunnel.rs` for a `101`): the backend's answer for the
//!    client, or a short error page of the proxy's own;
//! 7. log (`log.rs`): the exchange counted when the response body is done.
//!
//! `tls.rs` adds the redirect to `https://` (after routing) and HSTS (on the response).

pub mod affinity;
pub mod body;
pub mod client;
pub mod headers;
pub mod log;
pub mod respond;
pub mod target;
pub mod tls;
pub mod tries;
pub mod tunnel;

use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::{Request, Response, Version, body::Incoming};

use self::{
    affinity::Affinity,
    body::ReqBody,
    client::Client,
    log::{Exchange, ProxyBody},
    tries::Tries,
    tunnel::Upgrade,
};
use super::{
    hop_by_hop::connection_has,
    listen::guard::shared::ConnShared,
    site::{BoxError, Site},
};

/// The hyper service function: the phases, then the log.
pub async fn handle(req: Request<Incoming>, site: Arc<Site>, conn: Arc<ConnShared>) -> Response<ProxyBody> {
    let in_flight = conn.request();
    let mut exchange = Exchange::start(&site, &req, conn.peer);
    let h1 = req.version() < Version::HTTP_2;
    if h1 && connection_has(req.headers(), "close") {
        conn.set_last_request();
    }
    let upgrade = Upgrade::of(&req);
    let resp = match proxy(req, &site, &conn, upgrade.forwarded, &mut exchange).await {
        Ok(r) => r,
        Err(status) => {
            // The guard cut this request's body (413, 408): its answer, not the failure it caused.
            let status = match conn.violation() {
                Some(v) if h1 => {
                    conn.set_answered();
                    v.status()
                }
                _ => status,
            };
            respond::page(status, h1 && matches!(status, 400 | 408 | 413 | 414 | 431))
        }
    };
    upgrade.tell(&conn, &resp);
    log::finish(resp, in_flight, exchange)
}

/// The phases up to the response; `Err` is a status the proxy answers itself.
async fn proxy(
    mut req: Request<Incoming>,
    site: &Site,
    conn: &ConnShared,
    upgrade: bool,
    exchange: &mut Exchange,
) -> Result<Response<BoxBody<Bytes, BoxError>>, u16> {
    let started = Instant::now();
    // Before routing: a CA's HTTP-01 check must be answered whatever the host's routes.
    if let Some(key_authorization) = site.challenges.answer(req.uri().path()) {
        return Ok(respond::challenge(key_authorization));
    }
    let target = target::route(&req, site)?;
    exchange.routed(&target.service);
    if let Some(r) = tls::redirect(&req, &target) {
        return Ok(r);
    }
    let o = &target.service.options;
    let client = Client::identify(req.headers(), conn, &o.trusted_networks);
    body::check_length(req.headers(), o.limits.max_body)?;
    conn.limit_body(o.limits.max_body);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut head, incoming) = req.into_parts();
    let body = ReqBody::read(incoming, upgrade, o, conn).await?;
    let affinity = Affinity::of(&head, o, client.ip);
    // The client's header map becomes the backend's: `head` keeps the method and target.
    let headers = headers::upstream(std::mem::take(&mut head.headers), target.raw_host.as_ref(), upgrade, &client, body.is_buffered(), site.tls);
    let deadline = o.timeouts.total.map(|t| started + t);
    let tries = Tries { target: &target, head: &head, headers, body, affinity, upgrade, deadline, trial: &mut exchange.trial };
    let answer = tries.run().await?;
    exchange.answered_by(&answer.peer);
    let mut resp = respond::respond(answer, &target.service, client_upgrade, deadline)?;
    tls::hsts(&mut resp, &target.service);
    Ok(resp)
}
