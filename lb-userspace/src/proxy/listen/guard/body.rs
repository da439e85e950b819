//! A request body as the request handler reads it, with the checks the guard makes on
//! HTTP/1 bytes made per stream, for HTTP/2 alike: more than `max_body` is 413, and
//! waiting for the client longer than `client_body` at a time, or for longer in all than
//! its bytes pay for at `min_body_rate`, is 408. Only time spent waiting for the client
//! counts: a handler not reading (a slow backend) does not make the client slow.

use std::{
    error::Error,
    fmt,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Sleep;

use crate::config::http::HttpOptions;

type BoxError = Box<dyn Error + Send + Sync>;

/// The client's body broke a limit: the status to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub u16);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            413 => f.write_str("request body over max_body"),
            _ => f.write_str("request body too slow"),
        }
    }
}

impl Error for Refused {}

/// The status of a [`Refused`] anywhere in `e`'s sources.
pub fn refused(e: &(dyn Error + 'static)) -> Option<u16> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r.0);
        }
        cur = err.source();
    }
    None
}

pub struct ClientBody {
    inner: Incoming,
    max: u64,
    read: u64,
    pause: Duration,
    min_rate: u32,
    /// Time spent waiting for the client before the current wait, and when that began.
    waited: Duration,
    waiting_since: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

impl ClientBody {
    pub fn new(inner: Incoming, o: &HttpOptions) -> Self {
        let now = Instant::now();
        Self {
            inner,
            max: o.limits.max_body,
            read: 0,
            pause: o.timeouts.client_body,
            min_rate: o.limits.min_body_rate,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: Box::pin(tokio::time::sleep_until(now.into())),
            armed: None,
        }
    }

    /// When the current wait (begun at `since`) breaks `client_body` or `min_body_rate`.
    fn due(&self, since: Instant) -> Instant {
        let paused = since + self.pause;
        if self.min_rate == 0 {
            return paused;
        }
        let earned = self.pause.max(Duration::from_secs_f64(self.read as f64 / f64::from(self.min_rate)));
        paused.min(since + earned.saturating_sub(self.waited))
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(since) = this.waiting_since.take() {
                    this.waited += since.elapsed();
                }
                if let Some(d) = frame.data_ref() {
                    this.read += d.len() as u64;
                    if this.read > this.max {
                        return Poll::Ready(Some(Err(Box::new(Refused(413)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let since = *this.waiting_since.get_or_insert_with(Instant::now);
                let due = this.due(since);
                if this.armed != Some(due) {
                    this.armed = Some(due);
                    this.timer.as_mut().reset(due.into());
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Refused(408))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
