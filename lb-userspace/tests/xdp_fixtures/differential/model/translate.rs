//! Rewrites shared by both directions: one hop less, and ICMP errors translated as their
//! flow's packets are.

use std::net::IpAddr;

use lb_common::{IPPROTO_TCP, IPPROTO_UDP};

use super::{ICMP, ICMPV6, Ip, ip};
use crate::differential::sums::{Sum, put_addr};

/// Which end of a packet a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Src,
    Dst,
}

/// Where `side`'s address is in `p`.
pub(super) fn addr_at(p: &Ip, side: Side) -> usize {
    p.l3 + match (p.v6, side) {
        (false, Side::Src) => 12,
        (false, Side::Dst) => 16,
        (true, Side::Src) => 8,
        (true, Side::Dst) => 24,
    }
}

/// An ICMP or ICMPv6 error (unreachable, time exceeded, parameter problem, packet too big)
/// sent to the quoted packet's source, quoting TCP or UDP with its ports: the quote and
/// its ports.
pub(super) fn icmp_quote(f: &[u8], outer: &Ip) -> Option<(Ip, u16, u16)> {
    let kind = *f.get(outer.l4)?;
    f.get(outer.l4 + 1)?;
    let error = if outer.v6 { outer.proto == ICMPV6 && (1..=4).contains(&kind) } else { outer.proto == ICMP && matches!(kind, 3 | 11 | 12) };
    if outer.fragment || !error {
        return None;
    }
    let q = ip(f, outer.l4 + 8, outer.v6)?;
    if q.fragment || (q.proto != IPPROTO_TCP && q.proto != IPPROTO_UDP) || f.len() < q.l4 + 4 {
        return None;
    }
    let (sport, dport) = (u16::from_be_bytes([f[q.l4], f[q.l4 + 1]]), u16::from_be_bytes([f[q.l4 + 2], f[q.l4 + 3]]));
    if outer.dst != q.src || outer.ttl <= 1 {
        return None;
    }
    Some((q, sport, dport))
}

/// An ICMP error translated as its flow's packets are: the quote's `inner` side to
/// `addr:port`, the outer `outer` side (if any) to `addr`, one hop less; the checksums
/// that move: outer and quoted IPv4 headers, the quoted L4 one where the frame holds it (a
/// UDP/IPv4 0 stays 0), the ICMP one.
pub(super) fn translate(f: &[u8], outer: &Ip, q: &Ip, outer_side: Option<Side>, inner: Side, addr: IpAddr, port: u16) -> (Vec<u8>, Vec<Sum>) {
    let mut out = f.to_vec();
    if let Some(side) = outer_side {
        put_addr(&mut out, addr_at(outer, side), addr);
    }
    put_addr(&mut out, addr_at(q, inner), addr);
    let at = q.l4 + if inner == Side::Src { 0 } else { 2 };
    out[at..at + 2].copy_from_slice(&port.to_be_bytes());
    let mut sums = hop(&mut out, outer);
    if !q.v6 {
        sums.push(Sum::Ip4 { l3: q.l3, len: q.l4 - q.l3 });
    }
    let field = q.l4 + if q.proto == IPPROTO_TCP { 16 } else { 6 };
    if f.len() >= field + 2 && !(q.proto == IPPROTO_UDP && !q.v6 && f[field] == 0 && f[field + 1] == 0) {
        sums.push(Sum::L4 { l3: q.l3, v6: q.v6, proto: q.proto, l4: q.l4, len: q.len, field, udp: q.proto == IPPROTO_UDP });
    }
    sums.push(if outer.v6 {
        Sum::L4 { l3: outer.l3, v6: true, proto: ICMPV6, l4: outer.l4, len: outer.len, field: outer.l4 + 2, udp: false }
    } else {
        Sum::Icmp4 { l4: outer.l4 }
    });
    (out, sums)
}

/// One hop less (and the IPv4 header checksum that covers it).
pub(super) fn hop(out: &mut [u8], p: &Ip) -> Vec<Sum> {
    if p.v6 {
        out[p.l3 + 7] -= 1;
        Vec::new()
    } else {
        out[p.l3 + 8] -= 1;
        vec![Sum::Ip4 { l3: p.l3, len: p.l4 - p.l3 }]
    }
}
