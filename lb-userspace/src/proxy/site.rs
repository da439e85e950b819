//! What requests read of a listener and its services: swapped whole on every update.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use hyper::http::uri::Authority;

use super::{
    failure::FailureSink,
    listen::guard::{io::ClientTimeouts, rules::HeadLimits},
    metrics::HttpMetrics,
    select::{
        balance::Balancer,
        route::{BackendHosts, Router},
    },
    upstream::Upstream,
};
use crate::{access_log::AccessLog, acme::Challenges, config::http::HttpOptions};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One service, as requests use it.
pub struct ServiceRt {
    pub name: String,
    pub options: HttpOptions,
    pub balancer: Balancer,
    /// Which backends serve which host (`BackendView::hosts`).
    pub backend_hosts: BackendHosts,
    /// Connections to the backends (pools per worker).
    pub upstream: Arc<Upstream>,
    /// Each backend's `host:port` for request targets, by its index in `balancer.peers`.
    pub authorities: Vec<Authority>,
    pub sink: Arc<dyn FailureSink>,
    /// Answer `308` to `https://` on this port (`request/tls.rs`) instead of proxying.
    pub redirect: Option<u16>,
    /// `Strict-Transport-Security` for its responses on a TLS listener.
    pub hsts: Option<hyper::header::HeaderValue>,
}

/// What the requests of one listener read: swapped whole on update.
pub struct Site {
    pub router: Router,
    pub services: Vec<Arc<ServiceRt>>,
    pub client: ClientLimits,
    pub metrics: Arc<HttpMetrics>,
    /// ACME HTTP-01 tokens in progress, answered before routing (the proxy's own store).
    pub challenges: Challenges,
    /// How long connections may take to finish once the listener closes (the longest
    /// of its services' `timeouts.drain`).
    pub drain: Duration,
    /// The listener terminates TLS.
    pub tls: bool,
    /// Some of its services pass TLS through by SNI: each ClientHello is peeked first.
    pub passthrough: bool,
    pub access_log: Option<Arc<AccessLog>>,
}

/// A listener's current [`Site`]: an update swaps it, a request reads the one it found.
pub type Slot = Arc<RwLock<Arc<Site>>>;

pub fn load(slot: &Slot) -> Arc<Site> {
    slot.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Client-side limits of a listener (the smallest of its services').
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientLimits {
    pub head: HeadLimits,
    pub timeouts: ClientTimeouts,
    pub max_connections: u32,
    pub max_connections_per_ip: u32,
    pub max_headers: usize,
    /// The largest of the services' `max_body`: what the guard holds a body to until
    /// the request's service is known (`ConnShared::limit_body`).
    pub max_body: u64,
    pub max_buffered_bodies: u64,
    /// `SO_SNDBUF` of client sockets; 0: the kernel's.
    pub send_buffer: u32,
    pub max_concurrent_streams: u32,
}

impl ClientLimits {
    /// The smallest of the services' limits: applied per connection, before routing.
    pub fn of<'a>(options: impl Iterator<Item = &'a HttpOptions>) -> Self {
        let mut out: Option<ClientLimits> = None;
        for o in options {
            let l = &o.limits;
            let t = &o.timeouts;
            let this = ClientLimits {
                head: HeadLimits { max_request_line: l.max_request_line as usize, max_head: l.max_header_bytes as usize, max_headers: l.max_headers as usize },
                timeouts: ClientTimeouts {
                    header: t.client_header,
                    keepalive: t.keepalive,
                    body: t.client_body,
                    min_body_rate: l.min_body_rate,
                    body_idle: t.idle,
                    min_send_rate: l.min_send_rate,
                },
                max_connections: l.max_connections,
                max_connections_per_ip: l.max_connections_per_ip,
                max_headers: l.max_headers as usize,
                max_body: l.max_body,
                max_buffered_bodies: l.max_buffered_bodies,
                send_buffer: l.send_buffer,
                max_concurrent_streams: l.max_concurrent_streams,
            };
            out = Some(match out {
                None => this,
                Some(o) => ClientLimits {
                    head: HeadLimits {
                        max_request_line: o.head.max_request_line.min(this.head.max_request_line),
                        max_head: o.head.max_head.min(this.head.max_head),
                        max_headers: o.head.max_headers.min(this.head.max_headers),
                    },
                    timeouts: ClientTimeouts {
                        header: o.timeouts.header.min(this.timeouts.header),
                        keepalive: o.timeouts.keepalive.min(this.timeouts.keepalive),
                        body: o.timeouts.body.min(this.timeouts.body),
                        min_body_rate: o.timeouts.min_body_rate.min(this.timeouts.min_body_rate),
                        body_idle: o.timeouts.body_idle.min(this.timeouts.body_idle),
                        min_send_rate: o.timeouts.min_send_rate.min(this.timeouts.min_send_rate),
                    },
                    max_connections: o.max_connections.min(this.max_connections),
                    max_connections_per_ip: o.max_connections_per_ip.min(this.max_connections_per_ip),
                    max_headers: o.max_headers.min(this.max_headers),
                    max_body: o.max_body.max(this.max_body),
                    max_buffered_bodies: o.max_buffered_bodies.min(this.max_buffered_bodies),
                    // 0 is the kernel's (no cap): the smallest cap any service sets.
                    send_buffer: match (o.send_buffer, this.send_buffer) {
                        (0, b) | (b, 0) => b,
                        (a, b) => a.min(b),
                    },
                    max_concurrent_streams: o.max_concurrent_streams.min(this.max_concurrent_streams),
                },
            });
        }
        out.unwrap_or_else(|| Self::of(std::iter::once(&HttpOptions::default())))
    }
}
