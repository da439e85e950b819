//! What xlb is doing, as one snapshot: rendered as a table (`xlb status`), as JSON
//! (`/api/v1/services`, `xlb status --json`) and as Prometheus text (`/metrics`).
//! This room only reads the others: the controller hands it what it shows.

pub mod admin;
pub mod build;
mod prometheus;
pub mod reloads;
mod snapshot;
mod table;
pub mod transitions;

pub use reloads::Reloads;
pub use snapshot::{Announced, BackendStatus, Conntrack, Drop, HealthEvent, ReloadEvent, ServiceStatus, Snapshot, rates, unix_ms};
pub use transitions::Transitions;
