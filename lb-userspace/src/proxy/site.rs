//! What requests read of a listener and its services: swapped whole on every update.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::{Client, connect::HttpConnector};

use super::{
    failure::FailureSink,
    guard::{ClientTimeouts, HeadLimits},
    metrics::HttpMetrics,
    select::{
        balance::Balancer,
        route::{BackendHosts, Router},
    },
};
use crate::config::http::HttpOptions;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Bodies sent to backends.
pub type UpstreamBody = BoxBody<Bytes, BoxError>;

pub type UpstreamClient = Client<HttpConnector, UpstreamBody>;

/// One service, as requests use it.
pub struct ServiceRt {
    pub name: String,
    pub options: HttpOptions,
    pub balancer: Balancer,
    /// Which backends serve which host (`BackendView::hosts`).
    pub backend_hosts: BackendHosts,
    pub client: UpstreamClient,
    pub sink: Arc<dyn FailureSink>,
}

/// What the requests of one listener read: swapped whole on update.
pub struct Site {
    pub router: Router,
    pub services: Vec<Arc<ServiceRt>>,
    pub client: ClientLimits,
    pub metrics: Arc<HttpMetrics>,
}

/// Client-side limits of a listener (the smallest of its services').
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientLimits {
    pub head: HeadLimits,
    pub timeouts: ClientTimeouts,
    pub max_connections: u32,
    pub max_headers: usize,
}
