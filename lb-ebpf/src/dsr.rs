//! Direct server return (`Service::F_DIRECT`, `Service::F_TUNNEL`): the client's packet
//! goes to the backend unchanged, and the backend, which holds the VIP itself, answers the
//! client directly. No reply passes xlb, so no reverse NAT is needed and any node with the
//! same selection tables can carry any flow.
//!
//! - Direct: the frame is sent to the backend's MAC as it is (same L2 segment only; the
//!   sending is `send_direct` in main.rs, beside the other ways out).
//! - Tunnel (here): an outer IPv4 header from this host to the backend is put in front (IPIP,
//!   RFC 2003); the backend decapsulates it. IPv4 and untagged frames only; the outer header
//!   adds 20 bytes, which the path to the backend must carry (docs/scale-out.md).

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{AF_INET, Backend, IPPROTO_IPIP};
use network_types::eth::EthHdr;

use crate::{
    maps::TUNNEL_SOURCES,
    parse::{Packet, ptr_at},
};

const IPV4_HDR: usize = 20;

/// Puts the outer header in front of the packet `p` for `backend` (id `id`). Returns the
/// outer packet's description for the next-hop lookup, or `None` when the packet cannot
/// be tunnelled (IPv6, a VLAN tag, no source address for the backend, no headroom).
#[inline(always)]
pub fn encapsulate(ctx: &XdpContext, p: &Packet, id: u32, backend: &Backend) -> Option<Packet> {
    if p.family != AF_INET || p.l3_off != EthHdr::LEN {
        return None;
    }
    let src = *TUNNEL_SOURCES.get(id)?;
    if src == 0 {
        return None;
    }
    let inner: *const [u8; 4] = ptr_at(ctx, EthHdr::LEN)?;
    // Version and IHL, TOS, total length (network order).
    let [_, tos, len_hi, len_lo] = unsafe { *inner };
    let total = u16::from_be_bytes([len_hi, len_lo]).checked_add(IPV4_HDR as u16)?;
    let macs: *const [u8; 12] = ptr_at(ctx, 0)?;
    let macs = unsafe { *macs };
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IPV4_HDR as i32)) } != 0 {
        return None;
    }
    let eth: *mut [u8; 14] = ptr_at(ctx, 0)?;
    let outer: *mut [u8; IPV4_HDR] = ptr_at(ctx, EthHdr::LEN)?;
    let [t0, t1] = total.to_be_bytes();
    let [s0, s1, s2, s3] = src.to_ne_bytes();
    let [d0, d1, d2, d3] = backend.addr[0].to_ne_bytes();
    // Version 4, IHL 5; no DF, id 0; TTL 64; checksum filled in below.
    let mut hdr = [0x45, tos, t0, t1, 0, 0, 0, 0, 64, IPPROTO_IPIP, 0, 0, s0, s1, s2, s3, d0, d1, d2, d3];
    let [c0, c1] = checksum(&hdr).to_be_bytes();
    hdr[10] = c0;
    hdr[11] = c1;
    unsafe {
        let mut e = [0u8; 14];
        e[..12].copy_from_slice(&macs);
        e[12] = 0x08;
        *eth = e;
        *outer = hdr;
    }
    let dst = backend.addr;
    Some(Packet {
        l3_off: EthHdr::LEN,
        l4_off: EthHdr::LEN + IPV4_HDR,
        family: AF_INET,
        proto: IPPROTO_IPIP,
        src: [src, 0, 0, 0],
        dst,
        sport: 0,
        dport: 0,
        l4_len: total - IPV4_HDR as u16,
        tcp_flags: 0,
        ttl: 64,
        fragment: false,
    })
}

/// The IPv4 header checksum of `hdr` (its checksum field zero).
#[inline(always)]
fn checksum(hdr: &[u8; IPV4_HDR]) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < IPV4_HDR {
        sum += u16::from_be_bytes([hdr[i], hdr[i + 1]]) as u32;
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
