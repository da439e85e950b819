//! The hashes behind `ip_hash`, `hash KEY [consistent]` and the sticky cookie.
//!
//! `H` is FNV-1a 64 followed by the splitmix64 finalizer: stable across processes,
//! versions and hosts, so several proxies agree on where a key goes.

use std::net::IpAddr;

use crate::config::http::canonical;

/// Points per unit of weight on the ketama ring (as nginx and libketama).
pub const KETAMA_POINTS: u32 = 160;
const MAX_POINTS: u32 = 16_000;

/// FNV-1a 64 with the splitmix64 finalizer.
pub fn hash64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The bytes `ip_hash` hashes: the first three octets of IPv4, all of IPv6.
pub fn ip_hash_key(ip: IpAddr) -> Vec<u8> {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.octets()[..3].to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// nginx's ip_hash step: `h ← (h·113 + b) mod 6271` over the key, from 89 at first and
/// from the previous value on a rehash.
pub fn ip_hash(key: &[u8], tries: u32, prev: u64) -> u64 {
    let mut h = if tries == 0 { 89 } else { prev };
    for &b in key {
        h = (h * 113 + u64::from(b)) % 6271;
    }
    h
}

/// The sticky cookie value for a backend: opaque (no internal name leaks), stable for
/// a (service, backend name) pair.
pub fn cookie_value(service: &str, name: &str) -> String {
    format!("{:016x}", hash64(format!("{service}\0{name}").as_bytes()))
}

/// A ketama ring: (point, backend index), sorted by point.
#[derive(Debug, Default)]
pub struct Ring(Vec<(u32, usize)>);

impl Ring {
    /// Each backend `(index, name, weight)` puts `160·w/g` points (`g` the weights' gcd,
    /// at most 16000 a backend) at `H(name "-" j) >> 32`: from names, not addresses.
    pub fn new<'a>(backends: impl Iterator<Item = (usize, &'a str, u32)> + Clone) -> Self {
        let g = backends.clone().fold(0, |g, (_, _, w)| gcd(g, w.max(1))).max(1);
        let mut ring = Vec::new();
        for (i, name, w) in backends {
            let points = (KETAMA_POINTS * (w.max(1) / g)).min(MAX_POINTS);
            for j in 0..points {
                ring.push(((hash64(format!("{name}-{j}").as_bytes()) >> 32) as u32, i));
            }
        }
        ring.sort_unstable();
        Self(ring)
    }

    /// The first backend at or after the key's point that `usable` accepts, walking on.
    pub fn lookup(&self, key: &[u8], usable: impl Fn(usize) -> bool) -> Option<usize> {
        let ring = &self.0;
        if ring.is_empty() {
            return None;
        }
        let point = (hash64(key) >> 32) as u32;
        let start = ring.partition_point(|&(x, _)| x < point);
        (0..ring.len()).map(|k| ring[(start + k) % ring.len()].1).find(|&i| usable(i))
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}
