//! Which service and which backend a request goes to: routes by host and path, the
//! balancing methods, the hashes they use, the per-backend counters they read, and
//! passive health's ejections.

pub mod balance;
mod eject;
pub mod ewma;
pub mod hash;
pub mod route;
