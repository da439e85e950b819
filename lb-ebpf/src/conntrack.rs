//! The connection table. A flow has two entries, both keyed from the client's side:
//! the service entry (client -> VIP) pins forward packets to a backend, the backend
//! entry (client -> backend) lets replies find their rev-NAT index. The kernel only
//! creates and refreshes entries; user space expires idle ones.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_ns};
use lb_common::{Addr, Backend, BackendState, Conn, ConnKey, ConnKind, DropReason, Service, Settings};

use crate::{
    maps::{BACKENDS, CONNTRACK},
    parse::Packet,
    select,
};

#[inline(always)]
pub fn key(client: &Addr, client_port: u16, peer: &Addr, peer_port: u16, p: &Packet, kind: ConnKind) -> ConnKey {
    ConnKey {
        client: *client,
        peer: *peer,
        client_port,
        peer_port,
        proto: p.proto,
        family: p.family,
        kind: kind as u8,
        _pad: 0,
    }
}

/// The backend of a forward packet: the pinned one while it is active or draining,
/// otherwise a fresh choice (a new flow, an evicted entry, or a removed backend).
/// Returns the backend id, its entry and whether the flow is new.
#[inline(always)]
pub fn forward(svc: &Service, p: &Packet, s: &Settings) -> Result<(u32, Backend, bool), DropReason> {
    let skey = key(&p.src, p.sport, &p.dst, p.dport, p, ConnKind::Service);
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(entry) = CONNTRACK.get_ptr_mut(&skey) {
        let entry = unsafe { &mut *entry };
        if let Some(b) = BACKENDS.get(entry.backend) {
            // A draining backend keeps its flows, but a SYN on a 4-tuple used before starts a
            // NEW connection (the client reused its port): that one is balanced afresh.
            if b.state == BackendState::Active as u8 || (b.state == BackendState::Draining as u8 && !p.is_syn()) {
                entry.last_seen = now;
                return Ok((entry.backend, *b, false));
            }
        }
    }
    let (id, b) = select::pick(svc, p, s)?;
    let conn = Conn { backend: id, rev_nat: svc.id, last_seen: now };
    let bkey = key(&p.src, p.sport, &b.addr, b.port, p, ConnKind::Backend);
    if CONNTRACK.insert(&skey, &conn, BPF_ANY as u64).is_err()
        || CONNTRACK.insert(&bkey, &conn, BPF_ANY as u64).is_err()
    {
        return Err(DropReason::ConntrackFull);
    }
    Ok((id, b, true))
}

/// The flow entry a reply (backend -> client) belongs to, refreshed.
#[inline(always)]
pub fn reply(p: &Packet) -> Option<Conn> {
    let bkey = key(&p.dst, p.dport, &p.src, p.sport, p, ConnKind::Backend);
    let entry = CONNTRACK.get_ptr_mut(&bkey)?;
    unsafe {
        (*entry).last_seen = bpf_ktime_get_ns();
        Some(*entry)
    }
}
