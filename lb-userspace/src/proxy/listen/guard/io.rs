//! The client socket as hyper sees it: reads pass the framer, and the client timeouts
//! (head, body, keep-alive, a client not reading), the slowest body, the slowest reader
//! of a response and the largest chunked body are enforced here.

use std::{
    cell::RefCell,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Sleep,
};

use super::{
    framer::{Framer, Phase},
    rules::{HeadLimits, Reject},
    shared::ConnShared,
};
use crate::proxy::listen::transport::Transport;

thread_local! {
    /// Where a thread reads client bytes before the framer copies out what passes:
    /// scratch shared by its connections, so an idle connection holds no read buffer.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; 16 * 1024].into_boxed_slice());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTimeouts {
    pub header: Duration,
    pub keepalive: Duration,
    /// Longest pause between two reads of a request body.
    pub body: Duration,
    /// Bytes per second a body must average once it has taken `body`; 0: no minimum.
    pub min_body_rate: u32,
    /// A client reading nothing of a response; a tunnel with no byte either way.
    pub body_idle: Duration,
    /// Bytes per second a client behind a response must take once it has been behind
    /// for `body_idle`; 0: no minimum.
    pub min_send_rate: u32,
}

/// A client behind on a response: since its first blocked write, the bytes its socket
/// took since, and its latest blocked write. It stays behind until no write blocked for
/// `body_idle`, so reading a little whenever the socket fills does not start it afresh.
#[derive(Debug, Clone, Copy)]
struct Behind {
    since: Instant,
    sent: u64,
    last_blocked: Instant,
}

/// When `bytes` taken since `since` fall below `rate` bytes/s: once more time passed than
/// they pay for, and not within `grace`. `None` without a minimum (`rate` 0).
fn below_rate(since: Instant, bytes: u64, rate: u32, grace: Duration) -> Option<Instant> {
    (rate != 0).then(|| since + grace.max(Duration::from_secs_f64(bytes as f64 / f64::from(rate))))
}

/// A client socket as hyper sees it: reads pass the [`Framer`], writes go straight out.
/// The stream is shared (`Arc`) so the owner can still answer a violation after hyper
/// let go of it.
pub struct GuardedIo<T> {
    stream: Arc<T>,
    framer: Framer,
    ready: Vec<u8>,
    pos: usize,
    eof: bool,
    conn: Arc<ConnShared>,
    timeouts: ClientTimeouts,
    accepted: Instant,
    head_started: Option<Instant>,
    /// The current body's first read, and the bytes read of it since.
    body_started: Option<Instant>,
    body_read: u64,
    last_read: Instant,
    last_write: Instant,
    timer: Pin<Box<Sleep>>,
    deadline: Option<Instant>,
    /// Since when writes have been blocked (the client reads nothing).
    write_blocked: Option<Instant>,
    behind: Option<Behind>,
    write_timer: Pin<Box<Sleep>>,
    write_deadline: Option<Instant>,
}

impl<T: Transport> GuardedIo<T> {
    /// `max_body`: a chunked body's limit until the request's service says its own
    /// ([`ConnShared::limit_body`]).
    pub fn new(stream: Arc<T>, limits: HeadLimits, timeouts: ClientTimeouts, max_body: u64, conn: Arc<ConnShared>) -> Self {
        let now = Instant::now();
        Self {
            stream,
            framer: Framer::new(limits, max_body),
            ready: Vec::new(),
            pos: 0,
            eof: false,
            conn,
            timeouts,
            accepted: now,
            head_started: None,
            body_started: None,
            body_read: 0,
            last_read: now,
            last_write: now,
            timer: Box::pin(tokio::time::sleep_until(now.into())),
            deadline: None,
            write_blocked: None,
            behind: None,
            write_timer: Box::pin(tokio::time::sleep_until(now.into())),
            write_deadline: None,
        }
    }

    fn reject(&mut self, r: Reject) {
        self.conn.reject(r);
        self.eof = true;
    }

    fn after_read(&mut self, now: Instant, n: usize) {
        self.last_read = now;
        match self.framer.phase() {
            Phase::Head => {
                self.head_started.get_or_insert(now);
            }
            _ => self.head_started = None,
        }
        if self.framer.phase() == Phase::Body {
            self.body_started.get_or_insert(now);
            self.body_read += n as u64;
        } else {
            (self.body_started, self.body_read) = (None, 0);
        }
    }

    /// When the body being read becomes too slow or has paused too long.
    fn body_due(&self) -> Instant {
        let paused = self.last_read + self.timeouts.body;
        let slow = self.body_started.and_then(|t0| below_rate(t0, self.body_read, self.timeouts.min_body_rate, self.timeouts.body));
        slow.map_or(paused, |slow| paused.min(slow))
    }

    /// When the client blocking a write has taken nothing for `body_idle`, or has been
    /// behind for longer than `min_send_rate` pays for.
    fn send_due(&self, blocked: Instant) -> Instant {
        let stalled = blocked + self.timeouts.body_idle;
        let slow = self.behind.and_then(|b| below_rate(b.since, b.sent, self.timeouts.min_send_rate, self.timeouts.body_idle));
        slow.map_or(stalled, |slow| stalled.min(slow))
    }

    /// When the current wait ends, and whether that is a violation (408) or a quiet
    /// close.
    fn due(&self, now: Instant) -> Option<(Instant, bool)> {
        match self.framer.phase() {
            Phase::Idle if self.framer.messages == 0 => Some((self.accepted + self.timeouts.header, false)),
            Phase::Idle if self.conn.in_flight() > 0 => Some((now + self.timeouts.keepalive, false)),
            Phase::Idle => Some((self.conn.idle_since() + self.timeouts.keepalive, false)),
            Phase::Head => Some((self.head_started.unwrap_or(now) + self.timeouts.header, true)),
            Phase::Body => Some((self.body_due(), true)),
            Phase::Other if !self.framer.is_passthrough() => None,
            // HTTP/2 (by preface: no HTTP/1 head came first; or by h2c): idle as a
            // keep-alive connection is, by open streams, since pings flow both ways.
            Phase::Other if self.framer.messages == 0 || self.conn.is_h2() => {
                (self.conn.in_flight() == 0).then(|| (self.conn.idle_since() + self.timeouts.keepalive, false))
            }
            // A tunnel after `101`: no byte either way for `idle` (nginx's proxy_read_timeout).
            Phase::Other => Some((self.last_read.max(self.last_write) + self.timeouts.body_idle, false)),
        }
    }

    /// Applies the handler's upgrade answer, if one came.
    fn check_upgrade(&mut self) {
        if !self.framer.awaiting_upgrade() {
            return;
        }
        let Some(switched) = self.conn.take_upgrade() else {
            return;
        };
        if let Err(r) = self.framer.upgrade_outcome(switched, &mut self.ready) {
            self.reject(r);
        }
    }
}

impl<T: Transport> AsyncRead for GuardedIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            this.check_upgrade();
            if this.pos < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.pos);
                buf.put_slice(&this.ready[this.pos..this.pos + n]);
                this.pos += n;
                if this.pos == this.ready.len() {
                    this.ready.clear();
                    this.pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let read = SCRATCH.with_borrow_mut(|raw| {
                let read = this.stream.poll_read(cx, raw);
                if let Poll::Ready(Ok(n @ 1..)) = read {
                    if let Some(max) = this.conn.body_limit(this.framer.messages) {
                        this.framer.max_body = max;
                    }
                    if let Err(r) = this.framer.feed(&raw[..n], &mut this.ready) {
                        this.reject(r);
                    }
                }
                read
            });
            match read {
                Poll::Ready(Ok(0)) => this.eof = true,
                Poll::Ready(Ok(n)) => this.after_read(Instant::now(), n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    this.conn.set_read_waker(cx.waker());
                    // The handler may have answered an upgrade since the check above.
                    if this.framer.awaiting_upgrade() && this.conn.upgrade_answered() {
                        continue;
                    }
                    let now = Instant::now();
                    let Some((at, violation)) = this.due(now) else {
                        return Poll::Pending;
                    };
                    if this.deadline != Some(at) {
                        this.deadline = Some(at);
                        this.timer.as_mut().reset(at.into());
                    }
                    if this.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.deadline = None;
                    if violation {
                        this.reject(Reject::Timeout);
                    } else if (this.framer.phase() == Phase::Idle || this.framer.is_passthrough()) && this.conn.in_flight() == 0 {
                        this.eof = true;
                    }
                }
            }
        }
    }
}

impl<T: Transport> GuardedIo<T> {
    /// Writes (or flushes) with `write` (`taken`: the bytes a result says the socket
    /// took), failing once the client has accepted nothing for `body_idle` (nginx's
    /// `send_timeout`), or has been behind (`Behind`) longer than `min_send_rate` pays
    /// for: a client that stops reading, or reads a few bytes now and then (slow read),
    /// must not hold a backend's response for ever. A write only blocks once the socket
    /// buffer is full, so what the buffer absorbed before counts for nothing.
    fn poll_write_with<R>(
        &mut self,
        cx: &mut Context<'_>,
        write: impl Fn(&T, &mut Context<'_>) -> Poll<io::Result<R>>,
        taken: impl Fn(&R) -> usize,
    ) -> Poll<io::Result<R>> {
        match write(&self.stream, cx) {
            Poll::Ready(r) => {
                if let (Some(b), Ok(v)) = (&mut self.behind, &r) {
                    b.sent += taken(v) as u64;
                }
                self.write_blocked = None;
                self.last_write = Instant::now();
                Poll::Ready(r)
            }
            Poll::Pending => {
                let now = Instant::now();
                let blocked = *self.write_blocked.get_or_insert(now);
                match &mut self.behind {
                    Some(b) if now <= b.last_blocked + self.timeouts.body_idle => b.last_blocked = now,
                    b => *b = Some(Behind { since: now, sent: 0, last_blocked: now }),
                }
                let at = self.send_due(blocked);
                if self.write_deadline != Some(at) {
                    self.write_deadline = Some(at);
                    self.write_timer.as_mut().reset(at.into());
                }
                if self.write_timer.as_mut().poll(cx).is_ready() {
                    // Reset, not close: the unsent response is dropped with the socket
                    // instead of trickling out to the slow reader (nginx's
                    // `reset_timedout_connection`).
                    let _ = socket2::SockRef::from(self.stream.tcp()).set_linger(Some(Duration::ZERO));
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client reads too slowly")));
                }
                Poll::Pending
            }
        }
    }
}

impl<T: Transport> AsyncWrite for GuardedIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_with(cx, |s, cx| s.poll_write(cx, &[io::IoSlice::new(buf)]), |n| *n)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_with(cx, |s, cx| s.poll_write(cx, bufs), |n| *n)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_write_with(cx, |s, cx| s.poll_flush(cx), |_| 0)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The owner answers a violation before closing; it shuts the stream down then.
        if self.conn.violation().is_some() {
            return Poll::Ready(Ok(()));
        }
        // An HTTP/1 connection ends here and its owner closes the socket next (or
        // lingers, shutting it down itself); tunnels and HTTP/2 half-close.
        if self.framer.is_passthrough() { self.stream.poll_close(cx) } else { self.stream.poll_close_before_drop(cx) }
    }
}
