//! TLS passthrough: on a TLS listener, a connection whose ClientHello names a host of a
//! service with `http.tls.passthrough` is joined to one of that service's backends as
//! it is, bytes for bytes; the backend terminates TLS with its own certificate. xlb
//! reads only the ClientHello's server name (`tls/hello.rs`), by peeking, so the bytes
//! the backend gets are exactly the client's.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::net::TcpStream;
use tracing::{debug, info};

use crate::proxy::{
    drain::Closing,
    select::balance::Pick,
    site::{ServiceRt, Site},
    tls::hello::{self, Hello, MAX_RECORD},
};

/// How long to wait between peeks while the ClientHello is incomplete (it usually
/// arrives whole; a large one, with post-quantum key shares, in two segments).
const PEEK_AGAIN: std::time::Duration = std::time::Duration::from_millis(2);

/// The server name of the ClientHello waiting on `stream`, read without consuming it;
/// `None` when there is none (no SNI, not TLS, or the client sent nothing in time; the
/// handshake that follows deals with those).
pub async fn server_name(stream: &TcpStream, within: std::time::Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = vec![0u8; MAX_RECORD];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await.ok()?.ok()?;
        match hello::read(&buf[..n]) {
            Hello::Name(name) => return name,
            Hello::NotTls => return None,
            // peek returns at once while any byte waits: pause before asking again.
            Hello::Partial if n > 0 => tokio::time::timeout_at(deadline, tokio::time::sleep(PEEK_AGAIN)).await.ok()?,
            Hello::Partial => return None, // closed before a byte
        }
    }
}

/// The passthrough service `name` routes to on this listener, if any.
pub fn service(site: &Site, name: &str) -> Option<Arc<ServiceRt>> {
    let rt = &site.services[site.router.route(Some(name), "/")?];
    rt.options.tls.as_ref().is_some_and(|t| t.passthrough).then(|| rt.clone())
}

/// Joins `client` to a backend of `rt`: the balancer's choice, then the next one while
/// connecting fails (each tried once); counted in flight for the balancer meanwhile.
/// Ends when either side closes, or when the listener's drain cuts it.
pub async fn join(mut client: TcpStream, peer: SocketAddr, rt: Arc<ServiceRt>, mut closing: Closing) {
    let mut tried = Vec::new();
    let connect = rt.options.timeouts.connect;
    let (mut backend, at, _inflight) = loop {
        let pick = Pick { client: peer.ip(), key: None, exclude: &tried, now: Instant::now() };
        let Some(i) = rt.balancer.choose(&pick) else {
            info!(%peer, service = %rt.name, "tls passthrough: no backend to connect to");
            return;
        };
        let b = &rt.balancer.peers[i];
        match tokio::time::timeout(connect, TcpStream::connect(b.addr)).await {
            Ok(Ok(s)) => break (s, b.addr, b.stats.start()),
            Ok(Err(e)) => debug!(%peer, backend = %b.addr, "tls passthrough: connecting: {e}"),
            Err(_) => debug!(%peer, backend = %b.addr, "tls passthrough: connect timed out after {connect:?}"),
        }
        tried.push(i);
    };
    let _ = backend.set_nodelay(true);
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut backend) => {
            if let Err(e) = r {
                debug!(%peer, backend = %at, "tls passthrough: {e}");
            }
        }
        () = closing.cut() => debug!(%peer, backend = %at, "tls passthrough: cut by the listener's drain"),
    }
}
