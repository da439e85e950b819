//! A request body as the request handler reads it, with the checks the guard makes on
//! HTTP/1 bytes made per stream, for HTTP/2 alike: more than `max_body` is 413, and
//! waiting for the client longer than `client_body` at a time, or for longer in all than
//! its bytes pay for at `min_body_rate`, is 408. Only time spent waiting for the client
//! counts: a handler not reading (a slow backend) does not make the client slow. A body
//! read whole also takes its bytes from the listener's `max_buffered_bodies` as they come,
//! until the request ends ([`Held`]); none left: 503.

use std::{
    error::Error,
    fmt,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::{sync::OwnedSemaphorePermit, time::Sleep};

use crate::{config::http::HttpOptions, proxy::listen::limits::Limit};

type BoxError = Box<dyn Error + Send + Sync>;

/// The client's body broke a limit: the status to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub u16);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            413 => f.write_str("request body over max_body"),
            503 => f.write_str("no room left in max_buffered_bodies"),
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

/// The buffered body memory a request holds, given back when the last clone drops.
#[derive(Debug, Clone, Default)]
pub struct Held(Arc<Mutex<Vec<OwnedSemaphorePermit>>>);

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
    /// Where a body read whole takes its memory (KiB) from, and what it took.
    budget: Option<Arc<Limit>>,
    held: Held,
}

impl ClientBody {
    /// `budget`: the listener's buffered body memory, when the body is read whole.
    pub fn new(inner: Incoming, o: &HttpOptions, budget: Option<Arc<Limit>>) -> Self {
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
            budget,
            held: Held::default(),
        }
    }

    /// What the body takes of the buffered body memory, to keep until the request ends.
    pub fn held(&self) -> Held {
        self.held.clone()
    }

    /// Takes `bytes` of the budget, if there is one; false when it is spent.
    fn take(&self, bytes: usize) -> bool {
        let Some(budget) = &self.budget else { return true };
        match budget.try_acquire_many(u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)) {
            Some(p) => {
                self.held.0.lock().unwrap_or_else(|e| e.into_inner()).push(p);
                true
            }
            None => false,
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
                    if !this.take(d.len()) {
                        return Poll::Ready(Some(Err(Box::new(Refused(503)))));
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
