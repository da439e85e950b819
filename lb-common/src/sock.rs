//! Socket-level balancing (east-west): what the cgroup hooks remember of a balanced
//! socket, so that its getpeername() and recvmsg() show the VIP the application asked for.

use crate::{Addr, DEFAULT_CONNTRACK_SIZE, RevNat};

/// `SOCK_PEER` value, in the socket's own storage (`BPF_MAP_TYPE_SK_STORAGE`): the backend
/// connect() gave the socket, and the VIP:port its application asked for. It lives and dies
/// with the socket, so no other socket's churn can push it out.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockPeer {
    pub backend: Addr,
    /// Network byte order.
    pub backend_port: u16,
    pub family: u8,
    pub _pad: u8,
    pub vip: RevNat,
}

/// `SOCK_REV_NAT` key: an unconnected UDP socket (by its cookie) that sent to a VIP, and the
/// backend that datagram went to; the value is that VIP:port, which recvmsg() shows as the
/// reply's source. One socket may send to several VIPs, hence a key per backend and not the
/// socket's storage (connected sockets use [`SockPeer`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockRevKey {
    pub cookie: u64,
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: [u8; 5],
}

/// Default size of `SOCK_REV_NAT`, an LRU (nothing tells it a socket closed). User space
/// sizes it like the half-open table, a quarter of the connection table.
pub const SOCK_REV_NAT_SIZE: u32 = DEFAULT_CONNTRACK_SIZE / 4;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: repr(C), Copy, without padding, valid for any bit pattern.
    unsafe impl aya::Pod for SockRevKey {}
}
