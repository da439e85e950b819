//! The configurations the differential test runs: every service and backend it may have.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{IPPROTO_TCP, IPPROTO_UDP, ServiceKey};
use xlb::{
    config::{BackendState, Forwarding, Method},
    plan::{Desired, DesiredBackend},
};

use crate::net::{B4A, B4B, B4C, B6A, NEAR, VIP4, VIP6};

/// A service of the configuration: VIP, port, protocol and backends (address, port,
/// draining).
#[derive(Clone, Debug)]
pub struct Svc {
    pub vip: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub backends: Vec<(IpAddr, u16, bool)>,
}

/// The configuration as the data plane takes it: every service chooses by Maglev.
pub fn desired(config: &[Svc]) -> Vec<Desired> {
    config
        .iter()
        .map(|s| Desired {
            name: format!("{}:{}/{}", s.vip, s.port, s.proto),
            key: ServiceKey::new(s.vip, s.port, s.proto),
            method: Method::Maglev,
            socket_lb: false,
            forwarding: Forwarding::Nat,
            backends: s
                .backends
                .iter()
                .map(|&(addr, port, draining)| DesiredBackend {
                    addr,
                    port,
                    weight: 1,
                    state: if draining { BackendState::Draining } else { BackendState::Active },
                })
                .collect(),
        })
        .collect()
}

const NONEIGH4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 251, 0, 77));
const NONEIGH6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x251, 0, 0, 0, 0, 0, 0x77));
const NOROUTE4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
const BLACKHOLE: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
pub const ROUTER4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 250, 0, 50));
pub const ROUTER6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 0x50));

/// Every service with every backend it may have: on the clients' interface (`XDP_TX`),
/// behind TC, without a neighbour entry, without a route, in a blackhole, or none at all;
/// B4A:8080 behind two services (each flow's reply entry names its own).
pub fn universe() -> Vec<Svc> {
    let s = |vip, port, proto, backends: &[(IpAddr, u16)]| Svc { vip, port, proto, backends: backends.iter().map(|&(a, p)| (a, p, false)).collect() };
    vec![
        s(VIP4, 80, IPPROTO_TCP, &[(B4A.ip, 8080), (B4B.ip, 8080), (NEAR.ip, 8080), (NONEIGH4, 8080)]),
        s(VIP4, 53, IPPROTO_UDP, &[(B4A.ip, 5353), (B4C.ip, 5353), (NEAR.ip, 5353)]),
        s(VIP6, 80, IPPROTO_TCP, &[(B6A.ip, 8080), (NONEIGH6, 8080)]),
        s(VIP6, 53, IPPROTO_UDP, &[(B6A.ip, 5353), (NONEIGH6, 5353)]),
        s(VIP4, 25, IPPROTO_TCP, &[]),
        s(VIP4, 8000, IPPROTO_TCP, &[(NOROUTE4, 80), (BLACKHOLE, 80), (B4A.ip, 8080)]),
        s(VIP4, 8053, IPPROTO_UDP, &[(BLACKHOLE, 53), (B4B.ip, 53)]),
    ]
}

/// Where flows go: the services, and ports and protocols that are no service's.
pub const TARGETS: &[(IpAddr, u16, u8)] = &[
    (VIP4, 80, IPPROTO_TCP),
    (VIP4, 53, IPPROTO_UDP),
    (VIP6, 80, IPPROTO_TCP),
    (VIP6, 53, IPPROTO_UDP),
    (VIP4, 25, IPPROTO_TCP),
    (VIP4, 8000, IPPROTO_TCP),
    (VIP4, 8053, IPPROTO_UDP),
    (VIP4, 81, IPPROTO_TCP),
    (VIP4, 53, IPPROTO_TCP),
    (VIP6, 443, IPPROTO_TCP),
];
