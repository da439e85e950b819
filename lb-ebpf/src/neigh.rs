//! Answers ARP requests and IPv6 neighbor solicitations for VIPs, so that a VIP which is
//! no interface's address is reachable from the LAN without any host configuration: the
//! request is turned into its reply in place (same length) and sent back out with
//! `XDP_TX`, naming the receiving interface's MAC (`IF_MACS`, written by user space when
//! it attaches). Untagged frames only; anything else is left to the stack.

use core::mem;

use aya_ebpf::programs::XdpContext;
use lb_common::{AF_INET, AF_INET6, Addr, ServiceKey};
use network_types::eth::EthHdr;

use crate::{
    csum,
    icmp::IPPROTO_ICMPV6,
    maps::{IF_MACS, VIPS},
    parse::ptr_at,
};

const ETH_P_ARP: [u8; 2] = [0x08, 0x06];
const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
/// Hardware Ethernet, protocol IPv4, lengths 6 and 4, operation request.
const ARP_REQUEST_HEAD: [u8; 8] = [0, 1, 8, 0, 6, 4, 0, 1];
const ARP_REPLY: u8 = 2;
const NEIGHBOR_SOLICIT: u8 = 135;
const NEIGHBOR_ADVERT: u8 = 136;
/// Neighbor advertisement flags: solicited, override.
const NA_SOLICITED_OVERRIDE: u8 = 0x60;
/// A solicitation's ICMPv6 part: 24 bytes, or 32 with the source link-layer option.
const NS_LEN: usize = 24;
const NS_LEN_WITH_LLA: usize = 32;
const OPT_SOURCE_LLA: u8 = 1;
const OPT_TARGET_LLA: u8 = 2;

/// `Some` when the frame was a request for a VIP and is now its answer.
#[inline(always)]
pub fn answer(ctx: &XdpContext) -> Option<()> {
    let ether_type = unsafe { *ptr_at::<[u8; 2]>(ctx, 12)? };
    if ether_type == ETH_P_ARP {
        arp(ctx)
    } else if ether_type == ETH_P_IPV6 {
        ndp(ctx)
    } else {
        None
    }
}

#[inline(always)]
fn is_vip(addr: Addr, family: u8) -> bool {
    VIPS.get_ptr(&ServiceKey { addr, port: 0, proto: 0, family }).is_some()
}

/// Our MAC on the receiving interface, and the Ethernet header turned back to the sender.
#[inline(always)]
fn reply_eth(ctx: &XdpContext) -> Option<[u8; 6]> {
    let mac = unsafe { (*IF_MACS.get_ptr(&(ctx.ingress_ifindex() as u32))?).bytes };
    let eth: *mut [u8; 12] = ptr_at(ctx, 0)?;
    let eth = unsafe { &mut *eth };
    eth.copy_within(6..12, 0);
    eth[6..12].copy_from_slice(&mac);
    Some(mac)
}

#[inline(always)]
fn arp(ctx: &XdpContext) -> Option<()> {
    let a: *mut [u8; 28] = ptr_at(ctx, EthHdr::LEN)?;
    let a = unsafe { &mut *a };
    if a[..8] != ARP_REQUEST_HEAD {
        return None;
    }
    let (spa, tpa) = ([a[14], a[15], a[16], a[17]], [a[24], a[25], a[26], a[27]]);
    // A gratuitous ARP announces the sender's own address: nothing to answer.
    if spa == tpa || !is_vip([u32::from_ne_bytes(tpa), 0, 0, 0], AF_INET) {
        return None;
    }
    let mac = reply_eth(ctx)?;
    a[7] = ARP_REPLY;
    // Target: the asker (sender hardware and protocol address); sender: us, for the VIP.
    a.copy_within(8..18, 18);
    a[8..14].copy_from_slice(&mac);
    a[14..18].copy_from_slice(&tpa);
    Some(())
}

#[inline(always)]
fn ndp(ctx: &XdpContext) -> Option<()> {
    let ip: *mut [u8; 40] = ptr_at(ctx, EthHdr::LEN)?;
    let ip = unsafe { &mut *ip };
    let len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    // RFC 4861 7.1.1: hop limit 255 (not forwarded), code 0; a source of :: is duplicate
    // address detection, whose answer would go to all nodes: left to the stack.
    if ip[0] >> 4 != 6 || ip[6] != IPPROTO_ICMPV6 || ip[7] != 255 || (len != NS_LEN && len != NS_LEN_WITH_LLA) || ip[8..24] == [0; 16] {
        return None;
    }
    let icmp_off = EthHdr::LEN + 40;
    let m: *mut [u8; NS_LEN] = ptr_at(ctx, icmp_off)?;
    let m = unsafe { &mut *m };
    if m[0] != NEIGHBOR_SOLICIT || m[1] != 0 {
        return None;
    }
    let target: [u8; 16] = m[8..24].try_into().ok()?;
    if !is_vip(unsafe { mem::transmute::<[u8; 16], Addr>(target) }, AF_INET6) {
        return None;
    }
    let lla = len == NS_LEN_WITH_LLA;
    if lla {
        // The whole option, before anything is rewritten: a frame cut inside it is passed on
        // as it came, not half turned into an advertisement.
        let o: *const [u8; 8] = ptr_at(ctx, icmp_off + NS_LEN)?;
        if unsafe { (*o)[0] != OPT_SOURCE_LLA || (*o)[1] != 1 } {
            return None;
        }
    }
    let mac = reply_eth(ctx)?;
    // To the asker, from the VIP.
    ip.copy_within(8..24, 24);
    ip[8..24].copy_from_slice(&target);
    m[0] = NEIGHBOR_ADVERT;
    m[2..4].copy_from_slice(&[0, 0]);
    m[4..8].copy_from_slice(&[NA_SOLICITED_OVERRIDE, 0, 0, 0]);
    let mut opt = None;
    if lla {
        // Taken anew: the verifier forgets what a pointer was across the calls above.
        let o: *mut [u8; 8] = ptr_at(ctx, icmp_off + NS_LEN)?;
        let o = unsafe { &mut *o };
        o[0] = OPT_TARGET_LLA;
        o[2..8].copy_from_slice(&mac);
        opt = Some(*o);
    }
    let sum = icmpv6_sum(ip, m, opt, len);
    m[2..4].copy_from_slice(&(!sum).to_ne_bytes());
    Some(())
}

/// The one's-complement sum of the pseudo-header and the message (RFC 4443 2.3).
#[inline(always)]
fn icmpv6_sum(ip: &[u8; 40], m: &[u8; NS_LEN], opt: Option<[u8; 8]>, len: usize) -> u16 {
    let word = |b: &[u8], i: usize| u16::from_ne_bytes([b[i], b[i + 1]]) as u32;
    let mut sum = (len as u16).to_be() as u32 + (IPPROTO_ICMPV6 as u16).to_be() as u32;
    let mut i = 8;
    while i < 40 {
        sum += word(ip, i);
        i += 2;
    }
    i = 0;
    while i < NS_LEN {
        sum += word(m, i);
        i += 2;
    }
    if let Some(o) = opt {
        i = 0;
        while i < 8 {
            sum += word(&o, i);
            i += 2;
        }
    }
    csum::fold(sum)
}
