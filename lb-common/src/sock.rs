//! Socket-level balancing (east-west): what the cgroup hooks remember of a balanced
//! socket, so that its getpeername() and recvmsg() show the VIP the application asked for.
//! Addresses are `Addr`s (`[u32; 4]`, network order), spelled out: this module stands
//! apart from the crate root, which re-exports it.

/// `SOCK_PEER` value, in the socket's own storage (`BPF_MAP_TYPE_SK_STORAGE`): the backend
/// connect() gave the socket, and the VIP:port its application asked for. It lives and dies
/// with the socket, so no other socket's churn can push it out.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockPeer {
    pub backend: [u32; 4],
    pub vip: [u32; 4],
    /// Network byte order, both.
    pub backend_port: u16,
    pub vip_port: u16,
    pub family: u8,
    pub _pad: [u8; 3],
}

/// `SOCK_REV_NAT` key: an unconnected UDP socket (by its cookie) that sent to a VIP, and the
/// backend that datagram went to; the value is that VIP:port, which recvmsg() shows as the
/// reply's source. One socket may send to several VIPs, hence a key per backend and not the
/// socket's storage (connected sockets use [`SockPeer`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockRevKey {
    pub cookie: u64,
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: [u8; 5],
}

/// Default size of `SOCK_REV_NAT`, an LRU (nothing tells it a socket closed). User space
/// sizes it like the half-open table, a quarter of the connection table (262,144 by default).
pub const SOCK_REV_NAT_SIZE: u32 = 65_536;

// SAFETY: repr(C), Copy, without padding, valid for any bit pattern.
#[cfg(feature = "user")]
unsafe impl aya::Pod for SockRevKey {}
