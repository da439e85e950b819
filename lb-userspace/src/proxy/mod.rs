//! The HTTP proxy: services declared HTTP are served here, in user space (tokio,
//! hyper 1), from the same backend sets and health as the rest of xlb.
//!
//! ```text
//! client ─► listener (VIP:port) ─► guard (strict HTTP/1 framing, client timeouts)
//!        ─► hyper server (HTTP/1.1, h2c) ─► route (Host, path) ─► service
//!        ─► pin / sticky / balance ─► pooled HTTP/1.1 client ─► backend
//!                                   ◄─ retries on another backend, passive health
//! ```
//!
//! The owner (xlb's controller) creates one [`Proxy`], and after every plan hands it
//! the HTTP services with [`Proxy::update`]: listeners are bound and closed to match,
//! routes and backends swap atomically for new requests, and per-backend counters
//! (requests in flight, response-time averages) carry over by backend name. Failures
//! the proxy sees go to a [`FailureSink`], which the owner connects to
//! `health::Health::report_failure`. See docs/proxy.md.

pub mod control;
pub mod failure;
pub mod hop_by_hop;
pub mod listen;
pub mod metrics;
pub mod request;
pub mod select;
pub mod site;
pub mod tls;
pub mod upstream;
pub mod workers;

pub use control::{BackendCounters, Proxy};
pub use failure::{CollectFailures, Failure, FailureKind, FailureSink, IgnoreFailures};
