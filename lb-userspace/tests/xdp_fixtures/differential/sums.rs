//! Checksums as the differential test judges them: by what each covers. A rewrite must
//! leave the one's-complement sum over everything a checksum covers (itself included)
//! where it was, which is what an incremental update promises whether or not the checksum
//! held to begin with.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::ones;

/// A checksum and what it covers, at offsets of the frame.
#[derive(Debug, Clone, Copy)]
pub enum Sum {
    /// The IPv4 header checksum.
    Ip4 { l3: usize, len: usize },
    /// A TCP/UDP (or ICMPv6: pseudo-header too) checksum: pseudo-header from the IP header
    /// at `l3`, then everything from `l4` to the frame's end (trailing bytes are the same in
    /// input and output, so they do not change whether it holds).
    L4 { l3: usize, v6: bool, proto: u8, l4: usize, len: usize, field: usize, udp: bool },
    /// An ICMPv4 checksum: the message from `l4` on.
    Icmp4 { l4: usize },
}

impl Sum {
    pub fn field(&self) -> usize {
        match *self {
            Sum::Ip4 { l3, .. } => l3 + 10,
            Sum::L4 { field, .. } => field,
            Sum::Icmp4 { l4 } => l4 + 2,
        }
    }

    /// The one's-complement sum of everything the checksum covers, itself included:
    /// 0xffff (or 0) when it holds; a rewrite must leave it where it was.
    pub fn residual(&self, f: &[u8]) -> u16 {
        match *self {
            Sum::Ip4 { l3, len } => ones::fold(words(&f[l3..(l3 + len).min(f.len())])),
            Sum::L4 { l3, v6, proto, l4, len, .. } => {
                let (src, dst) = if v6 { (addr(f, l3 + 8, true), addr(f, l3 + 24, true)) } else { (addr(f, l3 + 12, false), addr(f, l3 + 16, false)) };
                ones::add(ones::pseudo_header(src, dst, proto, len), ones::fold(words(&f[l4..])))
            }
            Sum::Icmp4 { l4 } => ones::fold(words(&f[l4..])),
        }
    }

    pub fn pseudo(&self, f: &[u8]) -> u16 {
        let Sum::L4 { l3, v6, proto, len, .. } = *self else { panic!("no pseudo-header") };
        let (src, dst) = if v6 { (addr(f, l3 + 8, true), addr(f, l3 + 24, true)) } else { (addr(f, l3 + 12, false), addr(f, l3 + 16, false)) };
        ones::pseudo_header(src, dst, proto, len)
    }
}

/// Sum of 16-bit big-endian words, an odd last byte padded with zero.
pub fn words(b: &[u8]) -> u64 {
    b.chunks(2).map(|w| u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u64).sum()
}

pub fn addr(f: &[u8], at: usize, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&f[at..at + 16]).unwrap()))
    } else {
        IpAddr::V4(Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3]))
    }
}

pub fn put_addr(f: &mut [u8], at: usize, a: IpAddr) {
    match a {
        IpAddr::V4(a) => f[at..at + 4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => f[at..at + 16].copy_from_slice(&a.octets()),
    }
}
