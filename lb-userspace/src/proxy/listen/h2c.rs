//! HTTP/2 by `Upgrade: h2c` (RFC 7540 3.2): an HTTP/1.1 request asks to switch, the
//! proxy answers `101 Switching Protocols`, and the connection goes on as HTTP/2 with the
//! request that asked for it as stream 1, answered there.
//!
//! hyper's HTTP/2 server cannot be handed a request as stream 1, so the proxy writes
//! that request as an HTTP/2 HEADERS frame (stream 1, end of stream; HPACK literals
//! without indexing, so neither side's header table changes) and slips it into the
//! client's bytes right after the client's connection preface and first SETTINGS
//! frame: to the server it looks as if the client opened stream 1 itself. The client
//! sent no frame for stream 1 and will use 3 for its next one, as the protocol has it.
//!
//! Only requests without a body switch (RFC 7540 lets a server decline; a request body
//! would have to be replayed into stream 1). Others, and requests whose head does not
//! fit one frame, are answered over HTTP/1.1.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use hyper::{
    Method, Request, Response, StatusCode, Version,
    body::{Body, Incoming},
    header::{self, HeaderName, HeaderValue},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::guard::{framer::PREFACE, shared::ConnShared};
use crate::proxy::{
    hop_by_hop::{connection_has, connection_tokens},
    request::{body::empty, log::ProxyBody},
};
const FRAME_HEADER: usize = 9;
const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// The largest frame a peer must accept before SETTINGS say otherwise.
const MAX_FRAME: usize = 16_384;

/// Whether a request asks to switch to HTTP/2 and can: HTTP/1.1, `Upgrade: h2c`,
/// `Connection: Upgrade, HTTP2-Settings`, an `HTTP2-Settings` header, no body.
pub fn wanted(req: &Request<Incoming>) -> bool {
    let h = req.headers();
    req.version() == Version::HTTP_11
        && *req.method() != Method::CONNECT
        && h.get(header::UPGRADE).is_some_and(|u| u.as_bytes().trim_ascii().eq_ignore_ascii_case(b"h2c"))
        && connection_has(h, "upgrade")
        && connection_has(h, "http2-settings")
        && h.get_all("http2-settings").iter().count() == 1
        && req.body().is_end_stream()
}

/// The answer that switches a connection to HTTP/2; the request is answered on
/// stream 1 of the new protocol (and counted there).
pub fn switching(conn: &ConnShared) -> Response<ProxyBody> {
    conn.switch_to_h2();
    let mut r = Response::new(ProxyBody::unrecorded(empty()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    r.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("h2c"));
    r
}

/// Stream 1's HEADERS frame for the request that asked to switch; `None` when it does
/// not fit one frame.
pub fn stream_one(req: &Request<Incoming>) -> Option<Vec<u8>> {
    let uri = req.uri();
    let authority = uri.authority().map(|a| a.as_str().as_bytes()).or_else(|| req.headers().get(header::HOST).map(|h| h.as_bytes()));
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut block = Vec::new();
    literal(&mut block, b":method", req.method().as_str().as_bytes());
    literal(&mut block, b":scheme", b"http");
    if let Some(a) = authority {
        literal(&mut block, b":authority", a);
    }
    literal(&mut block, b":path", path.as_bytes());
    let named = connection_tokens(req.headers());
    for (name, value) in req.headers() {
        if !is_connection_specific(name) && !named.contains(name) {
            literal(&mut block, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if block.len() > MAX_FRAME {
        return None;
    }
    let len = block.len() as u32;
    let mut frame = Vec::with_capacity(FRAME_HEADER + block.len());
    frame.extend_from_slice(&len.to_be_bytes()[1..]);
    frame.extend_from_slice(&[HEADERS, END_STREAM | END_HEADERS]);
    frame.extend_from_slice(&1u32.to_be_bytes());
    frame.extend_from_slice(&block);
    Some(frame)
}

/// Headers HTTP/2 does not carry (RFC 9113 8.2.2), and `Host` (`:authority` instead).
fn is_connection_specific(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::UPGRADE,
        header::TRANSFER_ENCODING,
        header::TE,
        header::HOST,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        HeaderName::from_static("http2-settings"),
    ]
    .contains(name)
}

/// HPACK "literal header field without indexing, new name" (RFC 7541 6.2.2), no Huffman.
fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    string(out, name);
    string(out, value);
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    integer(out, s.len(), 7, 0x00);
    out.extend_from_slice(s);
}

/// RFC 7541 5.1: an integer with an N-bit prefix.
fn integer(out: &mut Vec<u8>, mut n: usize, bits: u32, flags: u8) {
    let max = (1usize << bits) - 1;
    if n < max {
        out.push(flags | n as u8);
        return;
    }
    out.push(flags | max as u8);
    n -= max;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

/// The client's side of an upgraded connection, with stream 1's HEADERS frame inserted
/// after the client's preface and first SETTINGS frame.
pub struct WithStreamOne<T> {
    inner: T,
    state: Insert,
}

enum Insert {
    /// Reading the preface and the SETTINGS frame; the frame to insert.
    Collect(Vec<u8>, Vec<u8>),
    /// Handing out the collected bytes with the frame inside, from this position.
    Drain(Vec<u8>, usize),
    Pass,
}

impl<T> WithStreamOne<T> {
    pub fn new(inner: T, frame: Vec<u8>) -> Self {
        Self { inner, state: Insert::Collect(Vec::new(), frame) }
    }
}

/// Where the frame goes in what the client sent so far: after the preface and the
/// first frame, once both are complete; `Err` when the bytes are not a preface and a
/// SETTINGS frame of at most [`MAX_FRAME`] bytes (then nothing is inserted and HTTP/2
/// refuses them itself). The cap bounds what is held here: the frame header's 24-bit
/// length would otherwise have a client's 16 MiB buffered waiting for the frame's end.
fn insert_at(got: &[u8]) -> Result<Option<usize>, ()> {
    let n = got.len().min(PREFACE.len());
    if got[..n] != PREFACE[..n] {
        return Err(());
    }
    let Some(head) = got.get(PREFACE.len()..PREFACE.len() + FRAME_HEADER) else {
        return Ok(None);
    };
    if head[3] != SETTINGS {
        return Err(());
    }
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    if len > MAX_FRAME {
        return Err(());
    }
    let end = PREFACE.len() + FRAME_HEADER + len;
    Ok((got.len() >= end).then_some(end))
}

impl<T: AsyncRead + Unpin> AsyncRead for WithStreamOne<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                Insert::Pass => return Pin::new(&mut this.inner).poll_read(cx, buf),
                Insert::Drain(bytes, pos) => {
                    let k = (bytes.len() - *pos).min(buf.remaining());
                    buf.put_slice(&bytes[*pos..*pos + k]);
                    *pos += k;
                    if *pos == bytes.len() {
                        this.state = Insert::Pass;
                    }
                    return Poll::Ready(Ok(()));
                }
                Insert::Collect(got, frame) => {
                    let mut chunk = [0u8; 4096];
                    let mut rb = ReadBuf::new(&mut chunk);
                    match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Ready(Ok(())) => {
                            let eof = rb.filled().is_empty();
                            got.extend_from_slice(rb.filled());
                            match insert_at(got) {
                                Ok(Some(at)) => {
                                    let mut bytes = std::mem::take(got);
                                    bytes.splice(at..at, std::mem::take(frame));
                                    this.state = Insert::Drain(bytes, 0);
                                }
                                Ok(None) if !eof => {}
                                _ => {
                                    let bytes = std::mem::take(got);
                                    this.state = if bytes.is_empty() { Insert::Pass } else { Insert::Drain(bytes, 0) };
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WithStreamOne<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[test]
    fn hpack_integers() {
        // RFC 7541 C.1: 10 and 1337 with a 5-bit prefix.
        let mut v = Vec::new();
        integer(&mut v, 10, 5, 0);
        integer(&mut v, 1337, 5, 0);
        assert_eq!(v, [0x0a, 0x1f, 0x9a, 0x0a]);
    }

    #[tokio::test]
    async fn the_frame_goes_after_the_first_settings_frame() {
        let settings: &[u8] = &[0, 0, 6, SETTINGS, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        let after: &[u8] = &[0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let client = [PREFACE, settings, after].concat();
        let frame = b"FRAME".to_vec();
        // However the client's bytes arrive.
        for split in [1, 7, 30, client.len()] {
            let (mut w, r) = tokio::io::duplex(64);
            let c = client.clone();
            tokio::spawn(async move {
                for part in c.chunks(split) {
                    tokio::io::AsyncWriteExt::write_all(&mut w, part).await.unwrap();
                }
            });
            let mut got = Vec::new();
            WithStreamOne::new(r, frame.clone()).read_to_end(&mut got).await.unwrap();
            assert_eq!(got, [PREFACE, settings, &frame, after].concat(), "split {split}");
        }
        // A SETTINGS frame longer than a peer must accept (here 16 MiB announced): not
        // waited for, what came is passed on at once and HTTP/2 refuses it.
        let huge: &[u8] = &[0xff, 0xff, 0xff, SETTINGS, 0, 0, 0, 0, 0, 1, 2, 3];
        let (mut w, r) = tokio::io::duplex(64);
        let c = [PREFACE, huge].concat();
        tokio::spawn(async move {
            tokio::io::AsyncWriteExt::write_all(&mut w, &c).await.unwrap();
            std::future::pending::<()>().await
        });
        let mut got = vec![0u8; PREFACE.len() + huge.len()];
        let mut s = WithStreamOne::new(r, frame.clone());
        let read = tokio::time::timeout(std::time::Duration::from_secs(2), s.read_exact(&mut got)).await;
        assert!(read.is_ok(), "held back waiting for a 16 MiB frame");
        assert_eq!(got, [PREFACE, huge].concat());
        // Not a preface: passed on untouched.
        let (mut w, r) = tokio::io::duplex(64);
        tokio::spawn(async move { tokio::io::AsyncWriteExt::write_all(&mut w, b"GET / HTTP/1.1\r\n\r\n").await });
        let mut got = Vec::new();
        WithStreamOne::new(r, frame).read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n");
    }
}
