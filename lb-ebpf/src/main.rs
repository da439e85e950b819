//! xlb's kernel programs.
//!
//! - `xlb_xdp` (XDP, on the interface clients reach): steers packets for a VIP:port to
//!   a backend (connection table, selection table), rewrites the destination and sends
//!   the frame on, by `XDP_TX`, a devmap redirect, or through `xlb_fwd`; answers ARP
//!   and NDP for VIPs (`neigh`, sent back out by `xlb_fwd`).
//!   A service with direct server return (`Service::F_DIRECT`, `F_TUNNEL`) sends them
//!   unchanged to the backend's MAC or inside IPIP instead (`dsr`).
//! - `xlb_fwd` (TC ingress, same interface): finishes what XDP passed up: the L4
//!   checksum when it may be partial, and the redirect to the backend's interface,
//!   which skips netfilter so Docker's FORWARD policy does not see the flow.
//! - `xlb_reply` (TC ingress, on interfaces facing backends): rewrites a reply's
//!   source back to VIP:port and sends it to the client.
//! - `xlb_connect4/6`, `xlb_sendmsg4/6`, `xlb_recvmsg4/6`, `xlb_getpeername4/6` (cgroup
//!   sock_addr hooks): socket-level balancing for local callers (`sock`).
//!
//! The TC programs answer `TC_ACT_UNSPEC` for packets that are not theirs, so other
//! programs on the same hook (TCX or cls_bpf) still see them.
#![no_std]
#![no_main]
// The BPF target has no atomic read-modify-write in core::sync; the intrinsic emits BPF_XADD.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod conntrack;
mod csum;
mod fib;
mod handoff;
mod icmp;
mod maps;
mod nat;
mod neigh;
mod parse;
mod select;
mod dsr;
mod sock;

use core::{mem, ptr::read_unaligned};

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_UNSPEC, TC_ACT_SHOT, xdp_action},
    helpers::{bpf_redirect, bpf_redirect_neigh, bpf_skb_vlan_pop, bpf_xdp_adjust_meta},
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
    EbpfContext, Global,
};
use aya_log_ebpf::debug;
use lb_common::{AF_INET, AF_INET6, Backend, Conn, ConnKind, DropReason, FwdMeta, IPPROTO_UDP, Service, ServiceKey};
use network_types::eth::EthHdr;

use crate::{
    fib::Route,
    maps::{BACKEND_STATS, REV_NAT, SERVICE_STATS, SERVICES, SETTINGS, TX_PORTS, count, count_drop},
    nat::Side,
    parse::{Packet, parse, ptr_at},
};

#[xdp]
pub fn xlb_xdp(ctx: XdpContext) -> u32 {
    let Some(p) = parse(&ctx) else { return error_to_backend(&ctx) };
    let key = ServiceKey { addr: p.dst, port: p.dport, proto: p.proto, family: p.family };
    // SAFETY: user space updates map values whole; we copy before use.
    let Some(svc) = (unsafe { SERVICES.get(&key) }).copied() else { return xdp_action::XDP_PASS };
    let Some(settings) = SETTINGS.get(0).copied() else { return xdp_action::XDP_PASS };
    if p.ttl <= 1 {
        count_drop(DropReason::TtlExpired);
        return xdp_action::XDP_PASS;
    }
    let (id, backend, new) = match conntrack::forward(&svc, &p, &settings) {
        Ok(Some(v)) => v,
        Ok(None) => return xdp_action::XDP_PASS,
        Err(reason) => {
            count_drop(reason);
            return xdp_action::XDP_DROP;
        }
    };
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    count(&SERVICE_STATS, svc.id, bytes, new);
    count(&BACKEND_STATS, id, bytes, new);
    if new {
        debug!(&ctx, "new flow for service {} to backend {}", svc.id, id);
    }
    if svc.flags & Service::F_TUNNEL != 0 {
        let Some(outer) = dsr::encapsulate(&ctx, &p, id, &backend) else { return xdp_action::XDP_PASS };
        return send(&ctx, &outer, &backend.addr, 0, 0, None);
    }
    if svc.flags & Service::F_DIRECT != 0 {
        return send_direct(&ctx, &p, &backend);
    }

    // A partial checksum holds just the pseudo-header sum; judge before the rewrite.
    let Some(check) = ptr_at::<u16>(&ctx, p.csum_off()) else { return xdp_action::XDP_PASS };
    let check = unsafe { read_unaligned(check) };
    let no_l4_csum = p.proto == IPPROTO_UDP && p.family == AF_INET && check == 0;
    let maybe_partial = !no_l4_csum && check == p.pseudo_sum();

    let Some(diff) = nat::rewrite(&ctx, &p, Side::Dst, &backend.addr, backend.port) else {
        return xdp_action::XDP_PASS;
    };
    if nat::decrement_ttl(&ctx, &p).is_none() {
        return xdp_action::XDP_PASS;
    }
    if !maybe_partial && nat::apply_l4(&ctx, &p, &diff).is_none() {
        return xdp_action::XDP_PASS;
    }
    send(&ctx, &p, &backend.addr, p.sport, backend.port, maybe_partial.then_some(&diff))
}

/// A neighbor request for a VIP, answered (see `neigh`); an ICMP error about one of our
/// flows' replies, on to the flow's backend (see `icmp`); anything else is the stack's,
/// IPv4 fragments counted (xlb balances whole datagrams).
#[inline(always)]
fn error_to_backend(ctx: &XdpContext) -> u32 {
    if neigh::answer(ctx).is_some() {
        let ifindex = ctx.ingress_ifindex() as u32;
        return pass_to_tc(ctx, &FwdMeta { magic: FwdMeta::MAGIC, ifindex, flags: FwdMeta::F_BACK_OUT, ..Default::default() });
    }
    let Some((e, addr)) = icmp::to_backend(ctx) else {
        if crate::parse::ip(ctx).is_some_and(|p| p.fragment) {
            count_drop(DropReason::Fragment);
        }
        return xdp_action::XDP_PASS;
    };
    if nat::decrement_ttl(ctx, &e.outer).is_none() {
        return xdp_action::XDP_PASS;
    }
    send(ctx, &e.outer, &addr, 0, 0, None)
}

/// Sends a rewritten packet towards `dst`: back out (`XDP_TX`), to an XDP-capable port, or
/// up to `xlb_fwd` with where to go and, for a checksum that may be partial, what is
/// still to fold into it (`pending`).
#[inline(always)]
fn send(ctx: &XdpContext, p: &Packet, dst: &lb_common::Addr, sport: u16, dport: u16, pending: Option<&nat::L4Diff>) -> u32 {
    let ingress = ctx.ingress_ifindex() as u32;
    let route = fib::route(ctx.as_ptr(), ctx, p, &p.src, dst, sport, dport, ingress);
    let ifindex = match route {
        Route::Resolved { ifindex } if pending.is_none() => {
            if ifindex == ingress {
                return xdp_action::XDP_TX;
            }
            // A tagged frame goes through TC, which removes the tag for the other interface.
            if p.l3_off == EthHdr::LEN && let Ok(action) = TX_PORTS.redirect(ifindex, 0) {
                return action;
            }
            ifindex
        }
        Route::Resolved { ifindex } | Route::NoNeigh { ifindex } => ifindex,
        Route::Unreachable => {
            count_drop(DropReason::FibUnreachable);
            return xdp_action::XDP_DROP;
        }
        Route::Stack => 0,
    };
    let mut meta = FwdMeta { magic: FwdMeta::MAGIC, ifindex, ..Default::default() };
    if let Some(diff) = pending {
        meta.flags |= FwdMeta::F_FIX_L4;
        meta.l4_addr_diff = diff.addr;
        meta.l4_port_diff = diff.port;
    }
    pass_to_tc(ctx, &meta)
}

/// Sends the unchanged frame to `backend`'s MAC, out of its interface as it is, by
/// `xlb_fwd`'s plain redirect: the skb keeps a partial checksum partial (a veth's packets
/// carry one, which `XDP_TX` would send unfinished), and a veth peer without an XDP program
/// takes it (where `XDP_TX` is dropped). The next hop must be resolved: the stack would
/// route the packet by its destination, the VIP, and a neighbour lookup for it would ask
/// for the VIP's MAC. So an unresolved backend drops (`fib_unreachable`); user space has its
/// neighbour entry made when it syncs it.
#[inline(always)]
fn send_direct(ctx: &XdpContext, p: &Packet, backend: &Backend) -> u32 {
    let ingress = ctx.ingress_ifindex() as u32;
    match fib::route(ctx.as_ptr(), ctx, p, &p.src, &backend.addr, p.sport, p.dport, ingress) {
        Route::Resolved { ifindex } => pass_to_tc(ctx, &FwdMeta { magic: FwdMeta::MAGIC, ifindex, flags: FwdMeta::F_BACK_OUT, ..Default::default() }),
        Route::NoNeigh { .. } | Route::Unreachable | Route::Stack => {
            count_drop(DropReason::FibUnreachable);
            xdp_action::XDP_DROP
        }
    }
}

/// Whether XDP may put metadata in front of a frame: user space clears it on kernels that
/// refuse `bpf_xdp_adjust_meta`, and the verifier then never sees that call.
#[unsafe(no_mangle)]
static XDP_METADATA: Global<u8> = Global::new(1);

/// Leaves `meta` in front of the frame (or in a `handoff` slot) for `xlb_fwd` and passes
/// the frame up.
#[inline(always)]
fn pass_to_tc(ctx: &XdpContext, meta: &FwdMeta) -> u32 {
    if XDP_METADATA.load() == 0 {
        return match handoff::stash(ctx, meta) {
            Some(()) => xdp_action::XDP_PASS,
            None => no_meta_room(meta),
        };
    }
    let len = mem::size_of::<FwdMeta>() as i32;
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -len) } != 0 {
        return no_meta_room(meta);
    }
    let start = ctx.metadata();
    if start + mem::size_of::<FwdMeta>() > ctx.data() {
        return no_meta_room(meta);
    }
    unsafe { (start as *mut FwdMeta).write_unaligned(*meta) };
    xdp_action::XDP_PASS
}

/// Without metadata, a packet whose checksum XDP left pending cannot be finished.
#[inline(always)]
fn no_meta_room(meta: &FwdMeta) -> u32 {
    if meta.flags & FwdMeta::F_FIX_L4 != 0 {
        count_drop(DropReason::NoMetaRoom);
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_PASS
}

#[classifier]
pub fn xlb_fwd(ctx: TcContext) -> i32 {
    let start = unsafe { (*ctx.skb.skb).data_meta } as usize;
    let meta = if start + mem::size_of::<FwdMeta>() <= ctx.data() {
        let meta = unsafe { (start as *const FwdMeta).read_unaligned() };
        if meta.magic != FwdMeta::MAGIC {
            return TC_ACT_UNSPEC;
        }
        meta
    } else {
        match handoff::take(&ctx) {
            handoff::Found::Meta(meta) => meta,
            handoff::Found::None => return TC_ACT_UNSPEC,
            handoff::Found::Lost => {
                count_drop(DropReason::NoMetaRoom);
                return TC_ACT_SHOT;
            }
        }
    };
    if meta.flags & FwdMeta::F_BACK_OUT != 0 {
        return unsafe { bpf_redirect(meta.ifindex, 0) as i32 };
    }
    if meta.flags & FwdMeta::F_FIX_L4 != 0 {
        // The L4 offset is parsed again: a VLAN tag is gone from the frame by now.
        let Some(p) = parse_tc(&ctx) else { return TC_ACT_UNSPEC };
        if fix_l4(&ctx, &p, meta.l4_addr_diff, meta.l4_port_diff).is_err() {
            count_drop(DropReason::ChecksumFailed);
            return TC_ACT_SHOT;
        }
    }
    if meta.ifindex == 0 {
        return TC_ACT_UNSPEC;
    }
    // The stack has moved an 802.1Q tag into the skb; it belongs to the ingress link only.
    if unsafe { (*ctx.skb.skb).vlan_present } != 0 && unsafe { bpf_skb_vlan_pop(ctx.skb.skb) } != 0 {
        count_drop(DropReason::ChecksumFailed);
        return TC_ACT_SHOT;
    }
    unsafe { bpf_redirect_neigh(meta.ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

#[classifier]
pub fn xlb_reply(ctx: TcContext) -> i32 {
    let Some(p) = parse_tc(&ctx) else { return error_to_client(&ctx) };
    // The stack forwards it unchanged and answers with ICMP time exceeded, as a router would.
    if p.ttl <= 1 {
        return TC_ACT_UNSPEC;
    }
    let Some(conn) = conntrack::reply(&p) else { return TC_ACT_UNSPEC };
    let Some(vip) = REV_NAT.get(conn.rev_nat).copied() else { return TC_ACT_UNSPEC };
    if vip.family != p.family {
        return TC_ACT_UNSPEC;
    }
    if p.closes() && conn.flags & Conn::F_CLOSED == 0 {
        conntrack::mark_closed(&conntrack::key(&p.dst, p.dport, &vip.addr, vip.port, &p, ConnKind::Service));
    }
    let Some(check) = ptr_at::<u16>(&ctx, p.csum_off()) else { return TC_ACT_UNSPEC };
    let no_l4_csum = p.proto == IPPROTO_UDP && p.family == AF_INET && unsafe { read_unaligned(check) } == 0;
    let Some(diff) = nat::rewrite(&ctx, &p, Side::Src, &vip.addr, vip.port) else { return TC_ACT_UNSPEC };
    if nat::decrement_ttl(&ctx, &p).is_none() {
        return TC_ACT_UNSPEC;
    }
    if !no_l4_csum && fix_l4(&ctx, &p, diff.addr, diff.port).is_err() {
        count_drop(DropReason::ChecksumFailed);
        return TC_ACT_SHOT;
    }
    redirect(&ctx, &p, &vip.addr, vip.port, p.dport)
}

/// An ICMP error about a packet xlb forwarded to a backend, on to the flow's client (see
/// `icmp`); anything else is the stack's.
#[inline(always)]
fn error_to_client(ctx: &TcContext) -> i32 {
    // Headers up to the quoted ports: Ethernet + VLAN + IPv4 with options, twice, + ICMP.
    let want = core::cmp::min(ctx.len(), 154);
    if ctx.pull_data(want).is_err() {
        return TC_ACT_UNSPEC;
    }
    let Some(e) = icmp::to_client(ctx) else { return TC_ACT_UNSPEC };
    if nat::decrement_ttl(ctx, &e.outer).is_none() {
        return TC_ACT_UNSPEC;
    }
    redirect(ctx, &e.outer, &e.outer.src, 0, 0)
}

/// Sends a rewritten reply (source `src`, already in the frame) to its client.
#[inline(always)]
fn redirect(ctx: &TcContext, p: &Packet, src: &lb_common::Addr, sport: u16, dport: u16) -> i32 {
    let ingress = unsafe { (*ctx.skb.skb).ingress_ifindex };
    match fib::route(ctx.skb.skb.cast(), ctx, p, src, &p.dst, sport, dport, ingress) {
        Route::Resolved { ifindex } => unsafe { bpf_redirect(ifindex, 0) as i32 },
        Route::NoNeigh { ifindex } => unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32 },
        Route::Unreachable | Route::Stack => TC_ACT_UNSPEC,
    }
}

/// Parses a TC frame, pulling headers into the linear area first when needed.
#[inline(always)]
fn parse_tc(ctx: &TcContext) -> Option<Packet> {
    if let Some(p) = parse(ctx) {
        return Some(p);
    }
    // Ethernet + VLAN + IPv6 + TCP fit in 94 bytes; IPv4 with options needs up to 98.
    let want = core::cmp::min(ctx.len(), 98);
    ctx.pull_data(want).ok()?;
    parse(ctx)
}

/// Folds address and port differences into the L4 checksum with the kernel's helper,
/// which is right for complete and partial (CHECKSUM_PARTIAL) checksums alike.
#[inline(always)]
fn fix_l4(ctx: &TcContext, p: &Packet, addr: u32, port: u32) -> Result<(), i64> {
    let udp = if p.proto == IPPROTO_UDP { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
    let off = p.csum_off();
    ctx.l4_csum_replace(off, 0, addr as u64, BPF_F_PSEUDO_HDR as u64 | udp)?;
    ctx.l4_csum_replace(off, 0, port as u64, udp)
}

/// One program per socket hook: `hook => program name: sock function(arguments)`.
/// Each answers 1: the call goes on, its address maybe changed.
macro_rules! sock_hooks {
    ($($hook:ident => $name:ident: $f:ident($($arg:expr),*);)*) => {$(
        #[cgroup_sock_addr($hook)]
        pub fn $name(ctx: SockAddrContext) -> i32 {
            sock::$f(&ctx, $($arg),*);
            1
        }
    )*};
}

// Socket-level balancing (`sock`): connect and sendmsg pick a backend, recvmsg and
// getpeername show the caller the VIP again.
sock_hooks! {
    connect4 => xlb_connect4: balance(AF_INET, false);
    connect6 => xlb_connect6: balance(AF_INET6, false);
    sendmsg4 => xlb_sendmsg4: balance(AF_INET, true);
    sendmsg6 => xlb_sendmsg6: balance(AF_INET6, true);
    recvmsg4 => xlb_recvmsg4: reverse(AF_INET);
    recvmsg6 => xlb_recvmsg6: reverse(AF_INET6);
    getpeername4 => xlb_getpeername4: reverse(AF_INET);
    getpeername6 => xlb_getpeername6: reverse(AF_INET6);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
