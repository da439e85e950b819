//! A request as the upstream side takes it, and why one got no response head.

use std::{fmt, io, time::Duration};

use bytes::Bytes;
use hyper::{HeaderMap, Method};

use super::body;
use crate::proxy::listen::guard::body::ClientBody;

/// A request as it goes to a backend (its target in origin-form).
pub struct Outgoing<'a> {
    pub method: &'a Method,
    pub target: &'a str,
    pub headers: &'a HeaderMap,
    pub body: OutBody,
}

/// A request body for one try.
pub enum OutBody {
    /// Read whole (possibly empty): can be sent again.
    Bytes(Bytes),
    /// Streamed from the client: sent once.
    Stream(ClientBody),
}

/// On a response that came on a new connection: how long opening it took (the access
/// log's `connect_time`; a pooled connection's response has none).
#[derive(Debug, Clone, Copy)]
pub struct Connected(pub Duration);

/// Why a request got no response head.
#[derive(Debug)]
pub enum UpstreamError {
    /// No connection: nothing was sent.
    Connect(io::Error),
    Io(io::Error),
    /// The backend's answer broke HTTP/1.1.
    Protocol(&'static str),
    /// The client's streamed body failed.
    Body(body::BodyError),
}

impl UpstreamError {
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connect: {e}"),
            Self::Io(e) => write!(f, "{e}"),
            Self::Protocol(e) => write!(f, "bad response: {e}"),
            Self::Body(e) => write!(f, "request body: {e}"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) | Self::Io(e) => Some(e),
            Self::Protocol(_) => None,
            Self::Body(e) => Some(&**e),
        }
    }
}
