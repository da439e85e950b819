//! Header parsing with the bounds checks the verifier wants.
//!
//! Only what xlb rewrites is parsed: Ethernet with at most one 802.1Q tag, IPv4 (any
//! options) or IPv6 without extension headers, then TCP or UDP. Everything else,
//! fragments included, is `None` and the caller passes it on untouched.

use core::mem;

use lb_common::{AF_INET, AF_INET6, Addr, IPPROTO_TCP, IPPROTO_UDP};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

/// A packet's linear bytes, as XDP and TC both expose them.
pub trait Frame {
    fn start(&self) -> usize;
    fn end(&self) -> usize;
}

/// XDP and TC contexts both have `data()` and `data_end()`.
macro_rules! frame {
    ($($ctx:ty),+) => {$(
        impl Frame for $ctx {
            #[inline(always)]
            fn start(&self) -> usize {
                self.data()
            }
            #[inline(always)]
            fn end(&self) -> usize {
                self.data_end()
            }
        }
    )+};
}
frame!(aya_ebpf::programs::XdpContext, aya_ebpf::programs::TcContext);

/// A pointer to a `T` at `off` bytes into the frame, if the frame is long enough.
#[inline(always)]
pub fn ptr_at<T>(f: &impl Frame, off: usize) -> Option<*mut T> {
    let start = f.start();
    if start + off + mem::size_of::<T>() > f.end() {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Where the parts of a TCP or UDP packet are, and its addressing in network order.
pub struct Packet {
    pub l3_off: usize,
    pub l4_off: usize,
    pub family: u8,
    pub proto: u8,
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    /// Length of the L4 header and payload, as the pseudo-header counts it.
    pub l4_len: u16,
    /// TCP flags (byte 13 of the TCP header); 0 for UDP.
    pub tcp_flags: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// An IPv4 fragment (offset or more-fragments set): no ports to go by, or not all.
    pub fragment: bool,
}

impl Packet {
    /// A TCP SYN without ACK: the first packet of a new connection.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.proto == IPPROTO_TCP && self.tcp_flags & 0x12 == 0x02
    }

    /// A FIN or RST: the TCP connection is ending.
    #[inline(always)]
    pub fn closes(&self) -> bool {
        self.proto == IPPROTO_TCP && self.tcp_flags & 0x05 != 0
    }

    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn csum_off(&self) -> usize {
        self.l4_off + if self.proto == IPPROTO_TCP { 16 } else { 6 }
    }

    /// The one's-complement sum of the pseudo-header, as a partial checksum
    /// (CHECKSUM_PARTIAL) leaves it in the L4 checksum field.
    #[inline(always)]
    pub fn pseudo_sum(&self) -> u16 {
        let mut sum = (self.l4_len.to_be() as u32) + ((self.proto as u16).to_be() as u32);
        sum += crate::csum::words(self.src[0]) + crate::csum::words(self.dst[0]);
        if self.family == AF_INET6 {
            let mut i = 1;
            while i < 4 {
                sum += crate::csum::words(self.src[i]) + crate::csum::words(self.dst[i]);
                i += 1;
            }
        }
        crate::csum::fold(sum)
    }
}

#[inline(always)]
pub fn parse(f: &impl Frame) -> Option<Packet> {
    let mut p = ip(f)?;
    // A fragment goes to the stack whole.
    if p.fragment {
        return None;
    }
    match p.proto {
        IPPROTO_TCP => {
            let tcp: *const TcpHdr = ptr_at(f, p.l4_off)?;
            p.sport = unsafe { u16::from_ne_bytes((*tcp).source) };
            p.dport = unsafe { u16::from_ne_bytes((*tcp).dest) };
            // Inside the 20 bytes ptr_at checked.
            p.tcp_flags = unsafe { *(tcp as *const u8).add(13) };
        }
        IPPROTO_UDP => {
            let udp: *const UdpHdr = ptr_at(f, p.l4_off)?;
            p.sport = unsafe { u16::from_ne_bytes((*udp).src) };
            p.dport = unsafe { u16::from_ne_bytes((*udp).dst) };
        }
        _ => return None,
    }
    Some(p)
}

/// Ethernet (one 802.1Q tag at most) and the IP header after it, any L4 protocol and
/// fragments too; ports and flags are left 0.
#[inline(always)]
pub fn ip(f: &impl Frame) -> Option<Packet> {
    let eth: *const EthHdr = ptr_at(f, 0)?;
    let mut l3_off = EthHdr::LEN;
    let mut ether_type = unsafe { (*eth).ether_type };
    if ether_type == EtherType::Ieee8021q as u16 {
        let vlan: *const VlanHdr = ptr_at(f, l3_off)?;
        ether_type = unsafe { (*vlan).ether_type };
        l3_off += VlanHdr::LEN;
    }
    if ether_type == EtherType::Ipv4 as u16 {
        ip_at(f, l3_off, AF_INET)
    } else if ether_type == EtherType::Ipv6 as u16 {
        ip_at(f, l3_off, AF_INET6)
    } else {
        None
    }
}

/// The IP header of `family` at `l3_off`: also the packet an ICMP error quotes.
#[inline(always)]
pub fn ip_at(f: &impl Frame, l3_off: usize, family: u8) -> Option<Packet> {
    let mut p = Packet {
        l3_off,
        l4_off: 0,
        family,
        proto: 0,
        src: [0; 4],
        dst: [0; 4],
        sport: 0,
        dport: 0,
        l4_len: 0,
        tcp_flags: 0,
        ttl: 0,
        fragment: false,
    };
    if family == AF_INET {
        let ip: *const Ipv4Hdr = ptr_at(f, l3_off)?;
        let ip = unsafe { &*ip };
        let ihl = ((ip.vihl & 0x0f) as usize) * 4;
        if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
            return None;
        }
        p.fragment = u16::from_be_bytes(ip.frags) & 0x3fff != 0;
        let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
        if tot_len < ihl {
            return None;
        }
        p.proto = ip.proto;
        p.ttl = ip.ttl;
        p.src[0] = u32::from_ne_bytes(ip.src_addr);
        p.dst[0] = u32::from_ne_bytes(ip.dst_addr);
        p.l4_off = l3_off + (ihl & 0x3c);
        p.l4_len = (tot_len - ihl) as u16;
    } else {
        let ip: *const Ipv6Hdr = ptr_at(f, l3_off)?;
        let ip = unsafe { &*ip };
        if ip.vcf[0] >> 4 != 6 {
            return None;
        }
        p.proto = ip.next_hdr;
        p.ttl = ip.hop_limit;
        p.src = unsafe { mem::transmute::<[u8; 16], Addr>(ip.src_addr) };
        p.dst = unsafe { mem::transmute::<[u8; 16], Addr>(ip.dst_addr) };
        p.l4_off = l3_off + Ipv6Hdr::LEN;
        p.l4_len = u16::from_be_bytes(ip.payload_len);
    }
    Some(p)
}
