//! What xlb is doing, as one snapshot: rendered as a table (`xlb status`), as JSON
//! (`/api/v1/services`, `xlb status --json`) and as Prometheus text (`/metrics`).
//! This room only reads the others: the controller hands it what it shows.

pub mod admin;
pub mod build;
mod prometheus;
mod snapshot;
mod table;
pub mod transitions;

pub use snapshot::{BackendStatus, Conntrack, Drop, ServiceStatus, Snapshot, rates};
pub use transitions::Transitions;
