//! Backend choice for a new flow.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::helpers::bpf_get_prandom_u32;
use lb_common::{Backend, BackendState, DropReason, Method, Service, Settings, flow_hash, source_hash};

use crate::{
    maps::{BACKENDS, RR, TABLES},
    parse::Packet,
};

/// What the hashed methods hash: a packet's addresses, or a socket's identity (`sock`).
pub trait Flow {
    /// Maglev's key: one flow.
    fn flow_hash(&self, seed: u32) -> u32;
    /// source_hash's key: one client.
    fn client_hash(&self, seed: u32) -> u32;
}

impl Flow for Packet {
    #[inline(always)]
    fn flow_hash(&self, seed: u32) -> u32 {
        flow_hash(&self.src, self.sport, &self.dst, self.dport, self.proto, seed)
    }

    #[inline(always)]
    fn client_hash(&self, seed: u32) -> u32 {
        source_hash(&self.src, seed)
    }
}

/// Picks a backend id and its entry from the service's selection table.
#[inline(always)]
pub fn pick<F: Flow>(svc: &Service, p: &F, s: &Settings) -> Result<(u32, Backend), DropReason> {
    let len = svc.len;
    if len == 0 {
        return Err(DropReason::NoBackend);
    }
    let index = match Method::from_u8(svc.method) {
        Some(Method::Maglev) | None => p.flow_hash(s.hash_seed) % len,
        Some(Method::SourceHash) => p.client_hash(s.hash_seed) % len,
        Some(Method::Random) => (unsafe { bpf_get_prandom_u32() }) % len,
        Some(Method::RoundRobin) => {
            let pos = RR.get_ptr_mut(svc.id).ok_or(DropReason::BadTableEntry)?;
            // Read, then an atomic add whose result is unused: that is BPF_XADD, which every
            // kernel has (a fetch-and-add needs 5.12). No step is lost; two CPUs opening
            // flows in the same instant may read one position, and the next is skipped.
            unsafe {
                let i = core::ptr::read_volatile(pos);
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(pos, 1);
                (i % len as u64) as u32
            }
        }
    };
    // Tables sit `table_size` apart whatever part of them is in use.
    let id = *TABLES.get(svc.table * s.table_size + index).ok_or(DropReason::BadTableEntry)?;
    let backend = *BACKENDS.get(id).ok_or(DropReason::BadTableEntry)?;
    if backend.state != BackendState::Active as u8 || backend.service != svc.id {
        return Err(DropReason::BadTableEntry);
    }
    Ok((id, backend))
}
