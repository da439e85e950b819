//! The route phase: which service of the listener a request is for.

use std::sync::Arc;

use hyper::{
    Method, Request,
    body::Incoming,
    header::{self, HeaderValue},
};

use crate::proxy::{
    select::route::normalize_host,
    site::{ServiceRt, Site},
};

/// Where a request goes.
pub struct Target {
    pub service: Arc<ServiceRt>,
    /// The host as the client named it (absolute-form target, else `Host`), for the
    /// backend's `Host` and `X-Forwarded-Host`: the client's own field when it came in
    /// `Host` (a shared slice of the read buffer, not a copy).
    pub raw_host: Option<HeaderValue>,
    /// The same, normalized: what routes and backend host names match.
    pub host: Option<String>,
}

/// The service for the request's host and path: 405 for `CONNECT`, 400 for a target
/// or host that is not http, 404 when no route matches.
pub fn route(req: &Request<Incoming>, site: &Site) -> Result<Target, u16> {
    if req.method() == Method::CONNECT {
        return Err(405);
    }
    let uri = req.uri();
    // Absolute-form (and HTTP/2's `:scheme`) names the host itself (and wins over Host);
    // only the listener's own scheme, and only to its services: never an open proxy.
    let scheme = if site.tls { "https" } else { "http" };
    if uri.scheme().is_some_and(|s| s.as_str() != scheme) {
        return Err(400);
    }
    let path = uri.path();
    if !path.starts_with('/') {
        return Err(400);
    }
    let raw_host = match uri.authority() {
        Some(a) => Some(HeaderValue::from_str(a.as_str()).map_err(|_| 400u16)?),
        None => req.headers().get(header::HOST).cloned(),
    };
    let host = match &raw_host {
        Some(h) => Some(normalize_host(h.to_str().map_err(|_| 400u16)?).ok_or(400u16)?),
        None => None,
    };
    let svc = site.router.route(host.as_deref(), path).ok_or(404u16)?;
    Ok(Target { service: site.services[svc].clone(), raw_host, host })
}
