//! One's-complement arithmetic (RFC 1071) written for these tests, apart from xlb's
//! `csum.rs` and from etherparse. Values are in network order.

use std::net::IpAddr;

pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

pub fn add(a: u16, b: u16) -> u16 {
    fold(a as u64 + b as u64)
}

/// Folds a difference into a complete checksum: C' = ~(~C + d).
pub fn apply(check: u16, diff: u16) -> u16 {
    !add(!check, diff)
}

/// +0 and -0 are the same one's-complement number.
pub fn same(a: u16, b: u16) -> bool {
    a == b || (a | b == 0xffff && a & b == 0)
}

/// The folded pseudo-header sum (RFC 768, RFC 793, RFC 8200 §8.1).
pub fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, l4_len: usize) -> u16 {
    let mut bytes = octets(src);
    bytes.extend(octets(dst));
    let words = bytes.chunks(2).map(|w| u16::from_be_bytes([w[0], w[1]]) as u64);
    fold(words.sum::<u64>() + proto as u64 + l4_len as u64)
}

/// A `FwdMeta` difference in network order. xlb sums 16-bit words as loaded from
/// memory (host order); one's-complement sums commute with byte swaps (RFC 1071
/// §2(B)), so the folded sum's memory bytes read big-endian give the network value.
pub fn from_meta(diff: u32) -> u16 {
    u16::from_be_bytes(fold(diff as u64).to_ne_bytes())
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}
