//! The connection table. A flow has two entries, both keyed from the client's side:
//! the service entry (client -> VIP) pins forward packets to a backend, the backend
//! entry (client -> backend) lets replies find their rev-NAT index. The kernel only
//! creates and refreshes entries; user space expires idle ones, a flow's two together.
//! Every entry the kernel adds is counted (`CONN_CREATED`), so user space can tell how
//! many the LRU evicted: created - expired - live.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_ktime_get_ns,
};
use lb_common::{Addr, Backend, BackendState, Conn, ConnKey, ConnKind, DropReason, IPPROTO_TCP, Service, Settings};

use crate::{
    maps::{BACKENDS, CONN_CREATED, CONNTRACK, count_drop},
    parse::Packet,
    select,
};

/// How long a flow goes without a packet before its next forward packet checks that the
/// reply entry is still there (it may have been evicted alone): once a second at most.
const REPAIR_AFTER_NS: u64 = 1_000_000_000;

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

/// The backend of a forward packet: the pinned one while it is active; while it drains or
/// after its removal, for every TCP segment but a SYN (the flow ends where it began);
/// otherwise a fresh choice (a UDP flow on a draining backend is kept but not refreshed).
/// Only a SYN (or any UDP datagram) opens a flow: a TCP segment
/// of a flow with no entry, or whose backend's id is free again, is `None`, for the stack
/// to answer (with a reset when the VIP is local), and counted as `NoFlow`. A FIN or RST
/// marks both of the flow's entries closed.
/// Returns the backend id, its entry and whether the flow is new.
#[inline(always)]
pub fn forward(svc: &Service, p: &Packet, s: &Settings) -> Result<Option<(u32, Backend, bool)>, DropReason> {
    let skey = key(&p.src, p.sport, &p.dst, p.dport, p, ConnKind::Service);
    let now = unsafe { bpf_ktime_get_ns() };
    let syn = p.is_syn();
    let tcp = p.proto == IPPROTO_TCP;
    let mut pinned = None;
    let had_entry = CONNTRACK.get_ptr_mut(&skey);
    if let Some(entry) = had_entry {
        let entry = unsafe { &mut *entry };
        if let Some(b) = BACKENDS.get(entry.backend) {
            let (active, draining) = (b.state == BackendState::Active as u8, b.state == BackendState::Draining as u8);
            let removed = b.state == BackendState::Removed as u8;
            if !syn && (active || draining || (removed && tcp)) {
                let bkey = key(&p.src, p.sport, &b.addr, b.port, p, ConnKind::Backend);
                if now.wrapping_sub(entry.last_seen) > REPAIR_AFTER_NS && CONNTRACK.get_ptr(&bkey).is_none() {
                    // Replies would leave un-rewritten: write the reply entry back.
                    let _ = insert_new(&bkey, &Conn { last_seen: now, ..*entry });
                }
                // A UDP flow has no end to wait for: on a draining backend it is not
                // refreshed, so it expires after its idle timeout and moves elsewhere.
                if active || tcp {
                    entry.last_seen = now;
                }
                if p.closes() && entry.flags & Conn::F_CLOSED == 0 {
                    entry.flags |= Conn::F_CLOSED;
                    mark_closed(&bkey);
                }
                return Ok(Some((entry.backend, *b, false)));
            }
            // A SYN on a 4-tuple used before starts a NEW connection (the client reused its
            // port): an active backend keeps it, with both entries written anew (not closed,
            // the reply entry back if it was lost); elsewhere it is balanced afresh.
            if syn && active {
                pinned = Some((entry.backend, *b));
            }
        }
    }
    if tcp && !syn {
        count_drop(DropReason::NoFlow);
        return Ok(None);
    }
    let (id, b, new) = match pinned {
        Some((id, b)) => (id, b, false),
        None => {
            let (id, b) = select::pick(svc, p, s)?;
            (id, b, true)
        }
    };
    let conn = Conn { backend: id, rev_nat: svc.id, last_seen: now, flags: 0, _pad: 0 };
    let bkey = key(&p.src, p.sport, &b.addr, b.port, p, ConnKind::Backend);
    let written = if had_entry.is_some() { CONNTRACK.insert(&skey, &conn, BPF_ANY as u64) } else { insert_new(&skey, &conn) };
    if written.is_err() || insert_new(&bkey, &conn).is_err() {
        return Err(DropReason::ConntrackFull);
    }
    Ok(Some((id, b, new)))
}

/// Writes an entry, counting it in `CONN_CREATED` when the key was not there before.
#[inline(always)]
fn insert_new(k: &ConnKey, conn: &Conn) -> Result<(), i32> {
    if CONNTRACK.insert(k, conn, BPF_NOEXIST as u64).is_ok() {
        if let Some(c) = CONN_CREATED.get_ptr_mut(0) {
            unsafe { *c += 1 };
        }
        return Ok(());
    }
    CONNTRACK.insert(k, conn, BPF_ANY as u64)
}

/// The flow entry a reply (backend -> client) belongs to, refreshed (but for a UDP flow
/// whose backend is no longer active: it is to go idle, see `forward`); a FIN or RST marks
/// it closed (the caller marks the service entry, whose key needs the VIP).
#[inline(always)]
pub fn reply(p: &Packet) -> Option<Conn> {
    let bkey = key(&p.dst, p.dport, &p.src, p.sport, p, ConnKind::Backend);
    let entry = CONNTRACK.get_ptr_mut(&bkey)?;
    unsafe {
        let before = *entry;
        let leaving = p.proto != IPPROTO_TCP && BACKENDS.get(before.backend).is_none_or(|b| b.state != BackendState::Active as u8);
        if !leaving {
            (*entry).last_seen = bpf_ktime_get_ns();
        }
        if p.closes() {
            (*entry).flags |= Conn::F_CLOSED;
        }
        Some(before)
    }
}

/// Marks the entry under `k` closed, if there is one.
#[inline(always)]
pub fn mark_closed(k: &ConnKey) {
    if let Some(e) = CONNTRACK.get_ptr_mut(k) {
        unsafe { (*e).flags |= Conn::F_CLOSED };
    }
}
