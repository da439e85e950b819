//! What a client connection runs over: the TCP socket itself, or TLS on it. Shared
//! (`Arc`) between hyper's side (the guard) and the connection's owner, which still
//! answers a violation after hyper let go of it.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::server::TlsStream;

use crate::proxy::upstream::stream::drained;

/// A client connection's byte stream, usable through a shared reference.
pub trait Transport: Send + Sync + 'static {
    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>>;
    fn poll_write(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>>;
    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Ends the write side (TLS: `close_notify` first).
    fn poll_close(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// What must go out before the socket is closed (dropped) right after: TLS's
    /// `close_notify`; nothing for TCP, whose close sends the FIN itself (a `shutdown`
    /// first would be one more system call per connection).
    fn poll_close_before_drop(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// The socket underneath, for lingering and peeking.
    fn tcp(&self) -> &TcpStream;
}

impl Transport for TcpStream {
    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.poll_read_ready(cx))?;
            match self.try_read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Ok(n) => {
                    // A short read drained the socket: wait on epoll next, not on a read.
                    if n > 0 && n < buf.len() {
                        drained(self);
                    }
                    return Poll::Ready(Ok(n));
                }
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.poll_write_ready(cx))?;
            match self.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_flush(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A peer already gone is no error of ours.
        let _ = socket2::SockRef::from(self).shutdown(std::net::Shutdown::Write);
        Poll::Ready(Ok(()))
    }

    fn poll_close_before_drop(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn tcp(&self) -> &TcpStream {
        self
    }
}

/// The socket as tokio-rustls reads and writes it, still shared with [`Tls::tcp`].
pub struct SharedTcp(pub Arc<TcpStream>);

impl AsyncRead for SharedTcp {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let n = ready!(Transport::poll_read(&*self.0, cx, buf.initialize_unfilled()))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Transport::poll_write(&*self.0, cx, &[IoSlice::new(buf)])
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_close(cx)
    }
}

/// A TLS connection after its handshake. The lock is never contended: one task drives a
/// connection; it only makes the stream shareable.
pub struct Tls {
    tcp: Arc<TcpStream>,
    tls: Mutex<TlsStream<SharedTcp>>,
}

impl Tls {
    pub fn new(tls: TlsStream<SharedTcp>) -> Self {
        Self { tcp: tls.get_ref().0.0.clone(), tls: Mutex::new(tls) }
    }

    fn with<R>(&self, f: impl FnOnce(Pin<&mut TlsStream<SharedTcp>>) -> R) -> R {
        let mut g = self.tls.lock().unwrap_or_else(|e| e.into_inner());
        f(Pin::new(&mut *g))
    }
}

impl Transport for Tls {
    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut rb = ReadBuf::new(buf);
        ready!(self.with(|s| s.poll_read(cx, &mut rb)))?;
        Poll::Ready(Ok(rb.filled().len()))
    }

    fn poll_write(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.with(|s| s.poll_write_vectored(cx, bufs))
    }

    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|s| s.poll_flush(cx))
    }

    fn poll_close(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|s| s.poll_shutdown(cx))
    }

    fn poll_close_before_drop(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_close(cx)
    }

    fn tcp(&self) -> &TcpStream {
        &self.tcp
    }
}
