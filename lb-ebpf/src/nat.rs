//! Address and port rewriting.
//!
//! The IPv4 header checksum is always fixed here (nothing offloads it). The L4
//! checksum difference is returned, because who may apply it depends on the hook:
//! XDP for complete checksums, TC's helpers when the packet may carry a partial one.

use core::ptr::{read_unaligned, write_unaligned};

use lb_common::{AF_INET, AF_INET6, Addr};

use crate::{
    csum,
    parse::{Frame, Packet, ptr_at},
};

/// Which end of the packet a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
}

/// What a rewrite adds to the L4 checksum: the address part belongs to the
/// pseudo-header, the port part to the L4 header itself.
pub struct L4Diff {
    pub addr: u32,
    pub port: u32,
}

/// Rewrites one side's address and port of a parsed packet. `None` only when the frame
/// shrank under us, which the verifier makes us consider.
#[inline(always)]
pub fn rewrite(f: &impl Frame, p: &Packet, side: Side, addr: &Addr, port: u16) -> Option<L4Diff> {
    let addr_diff = rewrite_addr(f, p, side, addr)?;
    let port_off = p.l4_off + if side == Side::Src { 0 } else { 2 };
    let field: *mut u16 = ptr_at(f, port_off)?;
    let old = unsafe { read_unaligned(field) };
    unsafe { write_unaligned(field, port) };
    Some(L4Diff { addr: addr_diff, port: csum::diff16(old, port) })
}

/// Rewrites one side's address (and the IPv4 header checksum); returns what the change
/// adds to a checksum over the address (an L4 pseudo-header).
#[inline(always)]
pub fn rewrite_addr(f: &impl Frame, p: &Packet, side: Side, addr: &Addr) -> Option<u32> {
    let mut addr_diff = 0u32;
    if p.family == AF_INET {
        let off = p.l3_off + if side == Side::Src { 12 } else { 16 };
        let field: *mut u32 = ptr_at(f, off)?;
        let old = unsafe { read_unaligned(field) };
        unsafe { write_unaligned(field, addr[0]) };
        addr_diff = csum::diff32(old, addr[0]);
        let check: *mut u16 = ptr_at(f, p.l3_off + 10)?;
        unsafe { write_unaligned(check, csum::apply(read_unaligned(check), addr_diff)) };
    } else if p.family == AF_INET6 {
        let off = p.l3_off + if side == Side::Src { 8 } else { 24 };
        let field: *mut [u32; 4] = ptr_at(f, off)?;
        let old = unsafe { read_unaligned(field) };
        unsafe { write_unaligned(field, *addr) };
        let mut i = 0;
        while i < 4 {
            addr_diff += csum::diff32(old[i], addr[i]);
            i += 1;
        }
    }
    Some(addr_diff)
}

/// Takes one off the TTL (IPv4, with its header checksum) or the hop limit (IPv6), as a
/// router does: xlb forwards between interfaces where the stack would have. The caller
/// leaves a packet whose TTL would reach 0 to the stack (`DropReason::TtlExpired`).
#[inline(always)]
pub fn decrement_ttl(f: &impl Frame, p: &Packet) -> Option<()> {
    if p.family == AF_INET {
        // TTL and protocol make one 16-bit word of the header checksum.
        let word: *mut u16 = ptr_at(f, p.l3_off + 8)?;
        let old = unsafe { read_unaligned(word) };
        let mut bytes = old.to_ne_bytes();
        bytes[0] = bytes[0].wrapping_sub(1);
        let new = u16::from_ne_bytes(bytes);
        unsafe { write_unaligned(word, new) };
        let check: *mut u16 = ptr_at(f, p.l3_off + 10)?;
        unsafe { write_unaligned(check, csum::apply(read_unaligned(check), csum::diff16(old, new))) };
    } else if p.family == AF_INET6 {
        let hop: *mut u8 = ptr_at(f, p.l3_off + 7)?;
        unsafe { *hop = (*hop).wrapping_sub(1) };
    }
    Some(())
}

/// Folds a rewrite into a complete L4 checksum in place. A zero UDP checksum means
/// "none" over IPv4 and stays zero; a computed zero is sent as 0xffff.
#[inline(always)]
pub fn apply_l4(f: &impl Frame, p: &Packet, d: &L4Diff) -> Option<()> {
    let check: *mut u16 = ptr_at(f, p.csum_off())?;
    let old = unsafe { read_unaligned(check) };
    let udp = p.proto == lb_common::IPPROTO_UDP;
    if udp && old == 0 && p.family == AF_INET {
        return Some(());
    }
    let mut new = csum::apply(old, d.addr + d.port);
    if udp && new == 0 {
        new = 0xffff;
    }
    unsafe { write_unaligned(check, new) };
    Some(())
}
