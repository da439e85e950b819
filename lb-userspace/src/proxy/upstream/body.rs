//! A backend's response body. Over HTTP/1.1 it is read from its connection by whoever
//! polls the body (the client connection's task): no task of its own, no channel. Once
//! the body has ended the connection goes back to its pool; dropped before, it is
//! closed. After a `101` the connection becomes the tunnel's
//! ([`RespBody::into_upgraded`]). Over HTTP/2 it is hyper's stream, trailers included
//! (gRPC's status).

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{
    h1::Framing,
    pool::{Conn, Home},
    stream::Stream,
};

/// A chunk-size line or trailer line longer than this is refused.
const MAX_LINE: usize = 4096;
/// Trailer bytes read (and dropped) at most.
const MAX_TRAILERS: usize = 16 * 1024;
/// How much is read from the backend at a time.
const READ_SIZE: usize = 16 * 1024;

pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers(usize),
    Close,
    Done,
    /// The connection after a `101`, kept for the tunnel.
    Upgraded,
}

/// What one decoding step came to.
enum Step {
    Data(Bytes),
    NeedMore,
    End,
}

pub enum RespBody {
    H1(H1Body),
    H2(hyper::body::Incoming),
}

impl RespBody {
    /// The connection after a `101` (with what the backend sent after the head).
    pub fn into_upgraded(self) -> Option<Upgraded> {
        match self {
            Self::H1(b) => b.into_upgraded(),
            Self::H2(_) => None,
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Self::H1(b) => Pin::new(b).poll_frame(cx),
            Self::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::H1(b) => b.is_end_stream(),
            Self::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::H1(b) => b.size_hint(),
            Self::H2(b) => b.size_hint(),
        }
    }
}

/// An HTTP/1.1 response body, decoded off its connection.
pub struct H1Body {
    state: State,
    conn: Option<Conn>,
    /// Where the connection goes once the body has ended; `None`: closed instead.
    home: Option<Home>,
}

impl H1Body {
    pub(super) fn new(framing: Framing, conn: Conn, home: Option<Home>) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
            Framing::Upgrade => State::Upgraded,
        };
        let mut body = Self { state, conn: Some(conn), home };
        if state == State::Done {
            body.finish();
        }
        body
    }

    fn into_upgraded(mut self) -> Option<Upgraded> {
        (self.state == State::Upgraded).then(|| self.conn.take()).flatten().map(|c| Upgraded { stream: c.stream, early: c.buf })
    }

    /// The body has ended: the connection is free for the next request, unless the
    /// backend sent more than the response (then it is closed).
    fn finish(&mut self) {
        self.state = State::Done;
        if let (Some(conn), Some(home)) = (self.conn.take(), self.home.take())
            && conn.buf.is_empty()
        {
            home.put(conn);
        }
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Step, &'static str> {
        loop {
            match self.state {
                State::Done | State::Upgraded => return Ok(Step::End),
                State::Close if buf.is_empty() => return Ok(Step::NeedMore),
                State::Close => return Ok(Step::Data(buf.split().freeze())),
                State::Length(n) | State::ChunkData(n) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let k = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
                    let left = n - k as u64;
                    self.state = match self.state {
                        State::Length(_) if left == 0 => State::Done,
                        State::Length(_) => State::Length(left),
                        _ if left == 0 => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                    return Ok(Step::Data(buf.split_to(k).freeze()));
                }
                State::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF");
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::ChunkSize => {
                    let Some(line) = take_line(buf)? else { return Ok(Step::NeedMore) };
                    let size = chunk_size(&line)?;
                    self.state = if size == 0 { State::Trailers(0) } else { State::ChunkData(size) };
                }
                State::Trailers(seen) => {
                    let Some(line) = take_line(buf)? else { return Ok(Step::NeedMore) };
                    if line.is_empty() {
                        return Ok(Step::End);
                    }
                    let seen = seen + line.len();
                    if seen > MAX_TRAILERS {
                        return Err("trailers too large");
                    }
                    self.state = State::Trailers(seen);
                }
            }
        }
    }
}

/// One CRLF-ended line off the front of `buf` (without its CRLF), if it is all there.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, &'static str> {
    match memchr::memchr(b'\n', buf) {
        Some(i) if i > 0 && buf[i - 1] == b'\r' => {
            let mut line = buf.split_to(i + 1);
            line.truncate(i - 1);
            Ok(Some(line))
        }
        Some(_) => Err("bare LF in a chunked body"),
        None if buf.len() > MAX_LINE => Err("chunk line too long"),
        None => Ok(None),
    }
}

/// A chunk-size line: 1–16 hex digits, then optional whitespace and extensions.
fn chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err("bad chunk size");
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest[0] == b';') || rest.iter().any(|&b| b == b'\r' || b == 0) {
        return Err("bad chunk size");
    }
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| "bad chunk size")?;
    u64::from_str_radix(hex, 16).map_err(|_| "bad chunk size")
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let mut buf = std::mem::take(&mut conn.buf);
            let step = this.step(&mut buf);
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            conn.buf = buf;
            match step {
                Err(e) => return this.fail(e.into()),
                Ok(Step::Data(b)) => {
                    if this.state == State::Done {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                Ok(Step::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => {}
            }
            conn.buf.reserve(READ_SIZE);
            match ready!(conn.stream.poll_read_some(&mut conn.buf, cx)) {
                Ok(0) if this.state == State::Close => {
                    this.conn = None;
                    this.state = State::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail("the backend closed the connection inside the body".into()),
                Ok(_) => {}
                Err(e) => return this.fail(e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Upgraded)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done | State::Upgraded => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl H1Body {
    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.conn = None;
        self.home = None;
        self.state = State::Done;
        Poll::Ready(Some(Err(e)))
    }
}

/// A backend connection after `101`: first what came with the head, then the socket.
pub struct Upgraded {
    stream: Stream,
    early: BytesMut,
}

impl AsyncRead for Upgraded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.early.is_empty() {
            let n = buf.remaining().min(this.early.len());
            buf.put_slice(&this.early.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `raw` in pieces of `piece` bytes; the data and whether it ended.
    fn decode(state: State, raw: &[u8], piece: usize) -> Result<(Vec<u8>, bool), &'static str> {
        let mut b = H1Body { state, conn: None, home: None };
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for part in raw.chunks(piece) {
            buf.extend_from_slice(part);
            loop {
                match b.step(&mut buf)? {
                    Step::Data(d) => out.extend_from_slice(&d),
                    Step::NeedMore => break,
                    Step::End => return Ok((out, true)),
                }
            }
        }
        Ok((out, b.state == State::Done))
    }

    #[test]
    fn chunked_bodies_decode_however_reads_split() {
        let raw = b"5;x=y\r\nhello\r\n6  \r\n world\r\n0\r\nX-T: 1\r\n\r\n";
        for piece in [1, 2, 7, raw.len()] {
            assert_eq!(decode(State::ChunkSize, raw, piece), Ok((b"hello world".to_vec(), true)), "pieces of {piece}");
        }
        assert_eq!(decode(State::Length(3), b"abc", 1), Ok((b"abc".to_vec(), true)));
        assert_eq!(decode(State::Length(3), b"ab", 1), Ok((b"ab".to_vec(), false)));
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        for bad in [&b"zz\r\n"[..], b"5\nhello", b"5\r\nhelloX\r\n", b"12345678901234567\r\n", b" 5\r\nhello\r\n", b"5 x\r\nhello\r\n"] {
            assert!(decode(State::ChunkSize, bad, bad.len()).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(decode(State::ChunkSize, &[b'1'; MAX_LINE + 1], MAX_LINE + 1).is_err());
    }
}
