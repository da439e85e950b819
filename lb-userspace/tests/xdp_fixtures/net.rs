//! The test network: the namespace's two interfaces, the clients' and VIPs' addresses, and
//! the backend hosts with the MACs their permanent neighbour entries give.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0xc1, 0];
pub const CLIENT4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 250, 0, 100));
pub const CLIENT6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 0x100));
/// The VIPs are fx0's own addresses, as xlb's default VIP is the interface's.
pub const VIP4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 250, 0, 1));
pub const VIP6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 1));

/// The interfaces of the test namespace.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dev {
    /// Where clients' packets arrive (the XDP ingress).
    Fx0,
    /// Where most backends are; not in `TX_PORTS`, so packets for it go through TC.
    Fx1,
}

impl Dev {
    pub const ALL: [Dev; 2] = [Dev::Fx0, Dev::Fx1];

    pub fn name(self) -> &'static str {
        match self {
            Dev::Fx0 => "fx0",
            Dev::Fx1 => "fx1",
        }
    }

    pub fn mac(self) -> [u8; 6] {
        match self {
            Dev::Fx0 => [2, 0, 0, 0, 0xf0, 0],
            Dev::Fx1 => [2, 0, 0, 0, 0xf1, 0],
        }
    }

    pub fn addrs(self) -> [&'static str; 2] {
        match self {
            Dev::Fx0 => ["10.250.0.1/24", "fd00:250::1/64"],
            Dev::Fx1 => ["10.251.0.1/24", "fd00:251::1/64"],
        }
    }
}

/// A backend host: its address, the MAC its neighbour entry gives, and its interface.
#[derive(Debug)]
pub struct Host {
    pub ip: IpAddr,
    pub mac: [u8; 6],
    pub dev: Dev,
}

pub static B4A: Host = Host { ip: IpAddr::V4(Ipv4Addr::new(10, 251, 0, 2)), mac: [2, 0, 0, 0, 0, 2], dev: Dev::Fx1 };
pub static B4B: Host = Host { ip: IpAddr::V4(Ipv4Addr::new(10, 251, 0, 3)), mac: [2, 0, 0, 0, 0, 3], dev: Dev::Fx1 };
pub static B4C: Host = Host { ip: IpAddr::V4(Ipv4Addr::new(10, 251, 0, 4)), mac: [2, 0, 0, 0, 0, 4], dev: Dev::Fx1 };
pub static B6A: Host =
    Host { ip: IpAddr::V6(Ipv6Addr::new(0xfd00, 0x251, 0, 0, 0, 0, 0, 2)), mac: [2, 0, 0, 0, 0, 2], dev: Dev::Fx1 };
/// On the clients' subnet: reached back out of the ingress interface, by `XDP_TX`.
pub static NEAR: Host = Host { ip: IpAddr::V4(Ipv4Addr::new(10, 250, 0, 9)), mac: [2, 0, 0, 0, 0, 9], dev: Dev::Fx0 };
/// Every host, each given a neighbour entry in the namespace.
pub static HOSTS: [&Host; 5] = [&B4A, &B4B, &B4C, &B6A, &NEAR];
/// The backends of the selection tests, all on fx1.
pub static TRIO: [&Host; 3] = [&B4A, &B4B, &B4C];

/// Client `n` of 100: 10.250.0.100 (`CLIENT4`) to 10.250.0.199.
pub fn client(n: u16) -> IpAddr {
    assert!(n < 100, "client {n}: only 100 client addresses");
    IpAddr::V4(Ipv4Addr::new(10, 250, 0, 100 + n as u8))
}
