//! XDP's hand-off to `xlb_fwd` where the kernel refuses XDP metadata
//! (`bpf_xdp_adjust_meta`): the `FwdMeta` goes into a `HANDOFF` slot and the frame's
//! source MAC names the slot (see `lb_common::Handoff`). XDP and TC of one frame run in
//! the same softirq, a NAPI poll apart at most, so a CPU's slots taken in turn outlast
//! the frames between; a slot reused too early is caught by its sequence number.
use core::ptr::{read_unaligned, write_unaligned};

use aya_ebpf::{
    helpers::bpf_get_smp_processor_id,
    programs::{TcContext, XdpContext},
};
use lb_common::{FwdMeta, HANDOFF_MAX_CPUS, HANDOFF_SLOTS_PER_CPU, Handoff};

use crate::{
    maps::{HANDOFF, HANDOFF_NEXT},
    parse::ptr_at,
};

/// The source MAC's offset in an Ethernet header.
const SRC_MAC: usize = 6;

/// Leaves `meta` in this CPU's next slot and names it in the frame; `None` when there is
/// no slot (a CPU beyond the index's reach).
#[inline(always)]
pub fn stash(ctx: &XdpContext, meta: &FwdMeta) -> Option<()> {
    let src = ptr_at::<[u8; 6]>(ctx, SRC_MAC)?;
    let cpu = unsafe { bpf_get_smp_processor_id() };
    if cpu >= HANDOFF_MAX_CPUS {
        return None;
    }
    let next = HANDOFF_NEXT.get_ptr_mut(0)?;
    let n = unsafe { *next };
    unsafe { *next = n.wrapping_add(1) };
    let index = cpu * HANDOFF_SLOTS_PER_CPU + n % HANDOFF_SLOTS_PER_CPU;
    let seq = (n / HANDOFF_SLOTS_PER_CPU) & 0xff_ffff;
    let slot = HANDOFF.get_ptr_mut(index)?;
    unsafe { *slot = Handoff { meta: *meta, src: read_unaligned(src), _pad: [0; 2], seq } };
    unsafe { write_unaligned(src, Handoff::mark(index, seq)) };
    Some(())
}

/// What `xlb_fwd` finds in a frame without metadata.
pub enum Found {
    /// Not a handed-off frame.
    None,
    /// A hand-off whose slot was reused before this frame got here.
    Lost,
    /// The hand-off's `FwdMeta`; the frame's source MAC is written back.
    Meta(FwdMeta),
}

#[inline(always)]
pub fn take(ctx: &TcContext) -> Found {
    let Some(src) = ptr_at::<[u8; 6]>(ctx, SRC_MAC) else { return Found::None };
    let Some((index, seq)) = Handoff::marked(unsafe { read_unaligned(src) }) else { return Found::None };
    let Some(slot) = HANDOFF.get(index).copied() else { return Found::Lost };
    if slot.seq != seq || slot.meta.magic != FwdMeta::MAGIC {
        return Found::Lost;
    }
    if ctx.store(SRC_MAC, &slot.src, 0).is_err() {
        return Found::Lost;
    }
    Found::Meta(slot.meta)
}
