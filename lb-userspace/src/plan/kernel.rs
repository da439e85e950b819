//! What the plan hands the data plane: services with resolved addresses and ports.

use std::net::IpAddr;

use lb_common::ServiceKey;

use crate::config::{BackendState, Forwarding, Method};

/// A service as the data plane needs it: addresses resolved, ports chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The config's service name.
    pub name: String,
    pub key: ServiceKey,
    pub method: Method,
    /// Local callers are balanced at the socket (the service's `socket_lb`, unless one of
    /// its containers says `xlb.socket_lb=false`).
    pub socket_lb: bool,
    pub forwarding: Forwarding,
    pub backends: Vec<DesiredBackend>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DesiredBackend {
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u32,
    pub state: BackendState,
}
