//! ICMP errors about NATed flows (RFC 5508 §4.2 and §7, as a NAT must): an error quotes
//! the packet that caused it, addressed as that packet was on the sender's side of xlb, so
//! the quote, the outer address on our side and the checksums are translated as the flow's
//! packets are. Without it the sender never learns of a smaller MTU (PMTU discovery breaks)
//! nor of an unreachable port.
//!
//! - Towards a backend (XDP): an error sent to a VIP about a reply the VIP sent
//!   (quote VIP:port -> client) goes to the flow's backend as backend -> client.
//! - Towards a client (TC, on the backends' side): an error about a packet xlb forwarded
//!   (quote client -> backend) goes to the client as client -> VIP:port; its source
//!   becomes the VIP when the backend itself sent it (a router between keeps its own).
//!
//! The quoted L4 checksum is updated too when the quote reaches it (a router may quote
//! only 8 bytes: then a UDP quote has it, a TCP one does not).

use core::ptr::{read_unaligned, write_unaligned};

use lb_common::{AF_INET, Addr, ConnKind, ServiceKey};

use crate::{
    conntrack, csum,
    maps::{BACKENDS, REV_NAT, SERVICES},
    nat::{self, Side},
    parse::{Frame, Packet, ip, ip_at, ptr_at},
};

const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;
/// ICMP header: type, code, checksum, and 4 bytes the type defines; the quote follows.
const ICMP_HDR_LEN: usize = 8;

/// An ICMP error and the packet it quotes (`inner`, with its ports; its `l4_len` is the
/// original packet's, not the quote's).
pub struct Error {
    pub outer: Packet,
    pub inner: Packet,
}

/// Translates an error towards a VIP about one of its flows; returns it and the flow's
/// backend address (its new destination).
#[inline(always)]
pub fn to_backend(f: &impl Frame) -> Option<(Error, Addr)> {
    let e = parse(f)?;
    let q = &e.inner;
    // It quotes a reply: VIP:port -> client, and was sent to that VIP.
    if e.outer.dst != q.src || e.outer.ttl <= 1 {
        return None;
    }
    SERVICES.get_ptr(&ServiceKey { addr: q.src, port: q.sport, proto: q.proto, family: q.family })?;
    let conn = conntrack::lookup(&conntrack::key(&q.dst, q.dport, &q.src, q.sport, q, ConnKind::Service))?;
    let b = *BACKENDS.get(conn.backend)?;
    translate(f, &e, Some(Side::Dst), Side::Src, &b.addr, b.port)?;
    Some((e, b.addr))
}

/// Translates an error from the backends' side about one of our flows; returns it with
/// `outer.src` as it now is.
#[inline(always)]
pub fn to_client(f: &impl Frame) -> Option<Error> {
    let mut e = parse(f)?;
    let q = &e.inner;
    // It quotes a forwarded packet: client -> backend, and goes to that client.
    if e.outer.dst != q.src || e.outer.ttl <= 1 {
        return None;
    }
    let conn = conntrack::lookup(&conntrack::key(&q.src, q.sport, &q.dst, q.dport, q, ConnKind::Backend))?;
    let vip = *REV_NAT.get(conn.rev_nat)?;
    if vip.family != q.family {
        return None;
    }
    let from_backend = e.outer.src == q.dst;
    translate(f, &e, from_backend.then_some(Side::Src), Side::Dst, &vip.addr, vip.port)?;
    if from_backend {
        e.outer.src = vip.addr;
    }
    Some(e)
}

/// An ICMP or ICMPv6 error quoting a TCP or UDP packet of the same family.
#[inline(always)]
fn parse(f: &impl Frame) -> Option<Error> {
    let outer = ip(f).filter(|p| !p.fragment)?;
    let icmp: *const [u8; 2] = ptr_at(f, outer.l4_off)?;
    let kind = unsafe { (*icmp)[0] };
    let error = if outer.family == AF_INET {
        // Destination unreachable (fragmentation needed among them), time exceeded, parameter problem.
        outer.proto == IPPROTO_ICMP && matches!(kind, 3 | 11 | 12)
    } else {
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        outer.proto == IPPROTO_ICMPV6 && matches!(kind, 1..=4)
    };
    if !error {
        return None;
    }
    let mut inner = ip_at(f, outer.l4_off + ICMP_HDR_LEN, outer.family)?;
    if inner.fragment || (inner.proto != lb_common::IPPROTO_TCP && inner.proto != lb_common::IPPROTO_UDP) {
        return None;
    }
    // Both protocols start with the two ports: all a short quote is sure to hold of them.
    let ports: *const [u16; 2] = ptr_at(f, inner.l4_off)?;
    inner.sport = unsafe { (*ports)[0] };
    inner.dport = unsafe { (*ports)[1] };
    Some(Error { outer, inner })
}

/// Rewrites the quote's `inner` side to `addr:port` and, if given, the outer `outer`
/// side to `addr`, with every checksum that covers them: the outer and quoted IPv4
/// headers', the quoted L4 one where quoted, and the ICMP one over all of it (for ICMPv6
/// also over the outer addresses).
#[inline(always)]
fn translate(f: &impl Frame, e: &Error, outer: Option<Side>, inner: Side, addr: &Addr, port: u16) -> Option<()> {
    let mut diff = 0;
    if let Some(side) = outer {
        let d = nat::rewrite_addr(f, &e.outer, side, addr)?;
        if e.outer.family != AF_INET {
            diff += d;
        }
    }
    let q = &e.inner;
    // Pointers are taken anew for each read: the verifier forgets a packet pointer's
    // bounds across the rewrites in between.
    let ip_before = if q.family == AF_INET { read16(f, q.l3_off + 10) } else { None };
    let d = nat::rewrite(f, q, inner, addr, port)?;
    diff += d.addr + d.port;
    if let Some(before) = ip_before {
        diff += csum::diff16(before, read16(f, q.l3_off + 10)?);
    }
    if let Some(before) = read16(f, q.csum_off()) {
        nat::apply_l4(f, q, &d)?;
        diff += csum::diff16(before, read16(f, q.csum_off())?);
    }
    let check: *mut u16 = ptr_at(f, e.outer.l4_off + 2)?;
    unsafe { write_unaligned(check, csum::apply(read_unaligned(check), diff)) };
    Some(())
}

#[inline(always)]
fn read16(f: &impl Frame, off: usize) -> Option<u16> {
    let p: *const u16 = ptr_at(f, off)?;
    Some(unsafe { read_unaligned(p) })
}
