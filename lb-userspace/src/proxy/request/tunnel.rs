//! `Upgrade` (WebSocket and the like, HTTP/1.1): which requests are forwarded as
//! upgrades, and the tunnel that joins the two connections after a `101`.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::{
    HeaderMap, Request, Response, StatusCode, Version,
    body::Incoming,
    header::{self, HeaderValue},
    upgrade::OnUpgrade,
};
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::body::empty;
use crate::proxy::{
    hop_by_hop::{connection_has, strip_hop_by_hop},
    listen::guard::shared::ConnShared,
    select::ewma::InFlight,
    site::BoxError,
    upstream::body::RespBody,
};

/// What a request asks of its connection.
#[derive(Clone, Copy)]
pub struct Upgrade {
    /// `Connection: upgrade` with an `Upgrade` header, HTTP/1 (as the guard sees it).
    asked: bool,
    /// Forwarded to a backend: any upgrade but `h2c`, which is the proxy's own
    /// business (`listen/h2c.rs`); one that reaches here is declined, and the request
    /// answered over HTTP/1.1.
    pub forwarded: bool,
}

impl Upgrade {
    pub fn of(req: &Request<Incoming>) -> Self {
        let asked = req.version() < Version::HTTP_2 && asks_upgrade(req.headers());
        let h2c = req.headers().get(header::UPGRADE).is_some_and(|u| u.as_bytes().trim_ascii().eq_ignore_ascii_case(b"h2c"));
        Self { asked, forwarded: asked && !h2c }
    }

    /// Tells the guard whether the connection switched, so it passes the bytes that
    /// follow untouched or checks them as the next request.
    pub fn tell<B>(self, conn: &ConnShared, resp: &Response<B>) {
        if self.asked {
            conn.upgrade_outcome(self.forwarded && resp.status() == StatusCode::SWITCHING_PROTOCOLS);
        }
    }
}

fn asks_upgrade(h: &HeaderMap) -> bool {
    connection_has(h, "upgrade") && h.contains_key(header::UPGRADE)
}

/// A 101 from the backend: answer the client 101 and join the two upgraded
/// connections. A 101 to a request that asked for no upgrade is a broken backend: 502.
pub fn tunnel(resp: Response<RespBody>, client: Option<OnUpgrade>, inflight: InFlight) -> Result<Response<BoxBody<Bytes, BoxError>>, u16> {
    let client = client.ok_or(502u16)?;
    let (mut parts, body) = resp.into_parts();
    let mut upstream = body.into_upgraded().ok_or(502u16)?;
    tokio::spawn(async move {
        let _inflight = inflight;
        match client.await {
            Ok(c) => {
                let mut c = TokioIo::new(c);
                if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut upstream).await {
                    debug!("upgraded connection: {e}");
                }
            }
            Err(e) => debug!("upgrade failed: {e}"),
        }
    });
    let upgrade = parts.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(u) = upgrade {
        parts.headers.insert(header::UPGRADE, u);
    }
    Ok(Response::from_parts(parts, empty()))
}
