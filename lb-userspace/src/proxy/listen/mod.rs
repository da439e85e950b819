//! The client side: listeners, connections, the framing guard in front of hyper, and
//! the switch to HTTP/2 by `Upgrade: h2c`.

pub mod accept;
pub mod conn;
pub mod guard;
pub mod h2c;
pub mod limits;
pub mod passthrough;
pub mod transport;
