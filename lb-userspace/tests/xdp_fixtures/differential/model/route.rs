//! The routes of the test namespace, as `bpf_fib_lookup` answers from them.

use std::net::IpAddr;

use crate::net::{Dev, HOSTS};

/// Addresses of the routes the differential test adds to the namespace.
pub const BLACKHOLE4: &str = "198.51.100.0/24";

/// Where the routes of the test namespace send an address.
pub(super) enum Route {
    Neigh(Dev, [u8; 6]),
    NoNeigh(Dev),
    Blackhole,
    Stack,
}

/// The test namespace's routes: fx0's and fx1's subnets (neighbours of `HOSTS` known), a
/// blackhole, no default route. IPv6 never forwards from or to a multicast, link-local or
/// loopback address (their scope is the link or the host).
pub(super) fn route(from: IpAddr, a: IpAddr) -> Route {
    let scoped = |a: IpAddr| match a {
        IpAddr::V6(a) => a.is_multicast() || a.is_unicast_link_local() || a.is_loopback(),
        IpAddr::V4(_) => false,
    };
    if scoped(from) || scoped(a) {
        return Route::Stack;
    }
    if let Some(h) = HOSTS.iter().find(|h| h.ip == a) {
        return Route::Neigh(h.dev, h.mac);
    }
    let on = |dev: Dev| {
        dev.addrs().iter().any(|net| {
            let (net, bits) = net.split_once('/').unwrap();
            within(a, net.parse().unwrap(), bits.parse().unwrap())
        })
    };
    let (net, bits) = BLACKHOLE4.split_once('/').unwrap();
    if within(a, net.parse().unwrap(), bits.parse().unwrap()) {
        Route::Blackhole
    } else if let Some(dev) = Dev::ALL.into_iter().find(|d| on(*d)) {
        Route::NoNeigh(dev)
    } else {
        Route::Stack
    }
}

fn within(a: IpAddr, net: IpAddr, bits: u32) -> bool {
    match (a, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => u32::from(a).checked_shr(32 - bits).unwrap_or(0) == u32::from(n).checked_shr(32 - bits).unwrap_or(0),
        (IpAddr::V6(a), IpAddr::V6(n)) => u128::from(a).checked_shr(128 - bits).unwrap_or(0) == u128::from(n).checked_shr(128 - bits).unwrap_or(0),
        _ => false,
    }
}
