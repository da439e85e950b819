//! What TLS adds to a request: the plain listener's redirect to `https://`, and HSTS on
//! TLS responses.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, combinators::BoxBody};
use hyper::{Request, Response, StatusCode, body::Incoming, header};

use super::target::Target;
use crate::proxy::site::{BoxError, ServiceRt};

/// Paths an ACME HTTP-01 responder answers on the plain listener: never redirected, so
/// a certificate can be ordered for a host before it has one.
pub const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// `308` to the same host (without its port, with `port` unless 443), path and query,
/// for a service that redirects; `None` otherwise.
pub fn redirect(req: &Request<Incoming>, target: &Target) -> Option<Response<BoxBody<Bytes, BoxError>>> {
    let port = target.service.redirect?;
    if req.uri().path().starts_with(ACME_CHALLENGE) {
        return None;
    }
    let host = target.host.as_deref()?;
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_owned() };
    let authority = if port == 443 { host } else { format!("{host}:{port}") };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{authority}{path}");
    Response::builder()
        .status(StatusCode::PERMANENT_REDIRECT)
        .header(header::LOCATION, location)
        .header(header::CONTENT_LENGTH, 0)
        .body(Empty::new().map_err(|e| match e {}).boxed())
        .ok()
}

/// Adds `Strict-Transport-Security` when the service sets it (TLS listeners only).
pub fn hsts<B>(resp: &mut Response<B>, service: &ServiceRt) {
    if let Some(v) = &service.hsts {
        resp.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, v.clone());
    }
}
