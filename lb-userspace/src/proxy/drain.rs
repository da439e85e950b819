//! Closing a listener gracefully, on exit or when a reload removes it: the listener
//! stops accepting, each of its connections is asked to finish (hyper's graceful
//! shutdown: an idle keep-alive connection closes at once, a busy one after its
//! current response, an HTTP/2 one with GOAWAY) and is cut at the drain deadline.
//!
//! One watch channel per listener: the deadline is its value (none while open), and
//! every connection holds a receiver, so "no receiver left" is "every connection ended".

use std::{pin::pin, time::Duration};

use hyper_util::server::graceful::GracefulConnection;
use tokio::{sync::watch, time::Instant};
use tracing::debug;

/// A listener's side: starts the drain, and tells when its connections are gone.
#[derive(Clone)]
pub struct Drain(watch::Sender<Option<Instant>>);

/// A connection's side (and its accept loop's, which hands out copies).
#[derive(Clone)]
pub struct Closing(watch::Receiver<Option<Instant>>);

impl Drain {
    pub fn new() -> (Self, Closing) {
        let (tx, rx) = watch::channel(None);
        (Self(tx), Closing(rx))
    }

    /// Asks every connection to finish within `grace`; later calls change nothing.
    /// Returns the deadline.
    pub fn start(&self, grace: Duration) -> Instant {
        let mut deadline = Instant::now() + grace;
        self.0.send_if_modified(|d| match d {
            Some(set) => {
                deadline = *set;
                false
            }
            None => {
                *d = Some(deadline);
                true
            }
        });
        deadline
    }

    /// Resolves once no connection is left.
    pub async fn finished(&self) {
        self.0.closed().await
    }
}

impl Closing {
    /// The deadline, once the drain has started (at once if the listener is gone).
    async fn started(&mut self) -> Instant {
        match self.0.wait_for(Option::is_some).await {
            Ok(d) => d.unwrap_or_else(Instant::now),
            Err(_) => Instant::now(),
        }
    }

    /// Resolves at the drain deadline: the end of a connection that cannot be asked to
    /// finish early (a TLS passthrough tunnel knows no request boundaries).
    pub async fn cut(&mut self) {
        let deadline = self.started().await;
        tokio::time::sleep_until(deadline).await;
    }
}

/// Runs a client connection to its end; once its listener drains, asks it to finish
/// and cuts it (drops it, closing the socket) at the deadline.
pub async fn serve<C: GracefulConnection>(conn: C, mut closing: Closing) -> Result<(), C::Error> {
    let mut conn = pin!(conn);
    let deadline = tokio::select! {
        done = conn.as_mut() => return done,
        deadline = closing.started() => deadline,
    };
    conn.as_mut().graceful_shutdown();
    match tokio::time::timeout_at(deadline, conn).await {
        Ok(done) => done,
        Err(_) => {
            debug!("http connection cut at the drain deadline");
            Ok(())
        }
    }
}
