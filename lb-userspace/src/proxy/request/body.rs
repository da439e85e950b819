//! The body phase: a request body read whole (so it can be retried, and a malformed
//! one never reaches a backend) or streamed; and the small bodies the proxy makes.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::{
    HeaderMap,
    body::{Body, Incoming},
    header,
};
use tracing::debug;

use crate::{
    config::http::HttpOptions,
    proxy::{
        listen::guard::{
            body::{ClientBody, Held, refused},
            shared::ConnShared,
        },
        site::BoxError,
        upstream::OutBody,
    },
};

pub fn full(b: impl Into<Bytes>) -> BoxBody<Bytes, BoxError> {
    Full::new(b.into()).map_err(|e: Infallible| match e {}).boxed()
}

pub fn empty() -> BoxBody<Bytes, BoxError> {
    Empty::new().map_err(|e: Infallible| match e {}).boxed()
}

/// 413 when `Content-Length` already says the body is over `max_body`.
pub fn check_length(h: &HeaderMap, max_body: u64) -> Result<(), u16> {
    match h.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()) {
        Some(len) if len > max_body => Err(413),
        _ => Ok(()),
    }
}

pub enum ReqBody {
    /// Read whole; the memory it takes of the listener's is given back when it drops.
    Buffered(Bytes, Held),
    /// Streamed: sent to the first backend tried, so never retried.
    Stream(Option<ClientBody>),
}

impl ReqBody {
    /// Reads the body whole, unless `buffer_requests` is off or the request upgrades;
    /// either way within the client body limits ([`ClientBody`]: 413, 408). A body the
    /// guard refused answers its status.
    pub async fn read(incoming: Incoming, upgrade: bool, o: &HttpOptions, conn: &ConnShared) -> Result<Self, u16> {
        if upgrade || incoming.is_end_stream() {
            return Ok(Self::Buffered(Bytes::new(), Held::default()));
        }
        if !o.limits.buffer_requests {
            return Ok(Self::Stream(Some(ClientBody::new(incoming, o, None))));
        }
        let body = ClientBody::new(incoming, o, conn.bodies().cloned());
        let held = body.held();
        match body.collect().await {
            Ok(c) => Ok(Self::Buffered(c.to_bytes(), held)),
            Err(e) => {
                debug!(peer = %conn.peer, "request body: {e}");
                conn.set_answered();
                Err(conn.violation().map(|v| v.status()).or_else(|| refused(&*e)).unwrap_or(400))
            }
        }
    }

    /// The whole body is here: a try can be repeated, and `Expect` means nothing.
    pub fn is_buffered(&self) -> bool {
        matches!(self, Self::Buffered(..))
    }

    /// The body for one try; `None` once a streamed body was sent.
    pub fn for_try(&mut self) -> Option<OutBody> {
        match self {
            Self::Buffered(b, _) => Some(OutBody::Bytes(b.clone())),
            Self::Stream(s) => s.take().map(OutBody::Stream),
        }
    }
}
