//! Which service and which backend a request goes to: routes by host and path, the
//! balancing methods, the hashes they use, and the per-backend counters they read.

pub mod balance;
pub mod ewma;
pub mod hash;
pub mod route;
