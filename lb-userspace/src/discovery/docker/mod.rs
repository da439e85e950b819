//! Docker discovery: running containers join xlb services by label, compose service,
//! swarm service, container name or network alias (see
//! [`DockerWatch`](crate::discovery::DockerWatch)).
//!
//! [`run`] lists the running containers once, then follows the daemon's event stream;
//! a container's event touches only that container (one inspect, or none), a swarm
//! service's update the service's tasks on this engine. After each change it sends, for
//! every watched service whose set changed, that service's complete set. When the daemon
//! goes away the last sets stay as they are; the source reconnects with exponential
//! backoff and resynchronises with a full listing.
//!
//! The decisions (does a container join a watch, what its labels say, which network's
//! address to use) are plain functions over bollard's model types, each tested beside it:
//! `labels.rs`, `inspect.rs`, `select.rs`, `events.rs`; `swarm.rs` adds a swarm service's
//! labels to its tasks' containers; `source.rs` is the task.

mod events;
mod inspect;
mod labels;
mod select;
mod source;
mod swarm;
#[cfg(test)]
mod testing;

// The fuzz targets (fuzz/) parse labels as a container would carry them.
pub use labels::{Labels, parse_labels};
pub use source::run;
