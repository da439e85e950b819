//! Next-hop lookup in the kernel's routing table and neighbour cache.

use core::{ffi::c_void, mem};

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_PROHIBIT,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNREACHABLE, bpf_fib_lookup,
    },
    helpers::bpf_fib_lookup as fib_lookup,
};
use lb_common::{AF_INET, Addr};
use network_types::eth::EthHdr;

use crate::parse::{Frame, Packet, ptr_at};

const KERNEL_AF_INET: u8 = 2;
const KERNEL_AF_INET6: u8 = 10;

pub enum Route {
    /// Next hop resolved: MACs are rewritten, send on `ifindex`.
    Resolved { ifindex: u32 },
    /// Route known, neighbour not yet: the stack (`bpf_redirect_neigh`) must resolve it.
    NoNeigh { ifindex: u32 },
    /// A blackhole, unreachable or prohibit route.
    Unreachable,
    /// Anything else (a local address, forwarding disabled...): leave it to the stack.
    Stack,
}

/// Looks up where `src -> dst` (already rewritten in the frame) goes when received on
/// `ifindex`, and on success writes the next hop's MACs into the frame.
#[inline(always)]
pub fn route(ctx: *mut c_void, f: &impl Frame, p: &Packet, src: &Addr, dst: &Addr, sport: u16, dport: u16, ifindex: u32) -> Route {
    let mut params: bpf_fib_lookup = unsafe { mem::zeroed() };
    params.l4_protocol = p.proto;
    params.sport = sport;
    params.dport = dport;
    params.ifindex = ifindex;
    if p.family == AF_INET {
        params.family = KERNEL_AF_INET;
        params.__bindgen_anon_3.ipv4_src = src[0];
        params.__bindgen_anon_4.ipv4_dst = dst[0];
    } else {
        params.family = KERNEL_AF_INET6;
        params.__bindgen_anon_3.ipv6_src = *src;
        params.__bindgen_anon_4.ipv6_dst = *dst;
    }
    let rc = unsafe { fib_lookup(ctx, &mut params, mem::size_of::<bpf_fib_lookup>() as i32, 0) };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            let Some(eth) = ptr_at::<EthHdr>(f, 0) else { return Route::Stack };
            unsafe {
                (*eth).dst_addr = params.dmac;
                (*eth).src_addr = params.smac;
            }
            Route::Resolved { ifindex: params.ifindex }
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => Route::NoNeigh { ifindex: params.ifindex },
        BPF_FIB_LKUP_RET_BLACKHOLE | BPF_FIB_LKUP_RET_UNREACHABLE | BPF_FIB_LKUP_RET_PROHIBIT => {
            Route::Unreachable
        }
        _ => Route::Stack,
    }
}
