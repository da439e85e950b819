//! The connection table. A flow has two entries, both keyed from the client's side:
//! the service entry (client -> VIP) pins forward packets to a backend, the backend
//! entry (client -> backend) lets replies find their rev-NAT index. A TCP flow's entries
//! wait in `HALF_OPEN` from its SYN until the client's next segment completes the
//! handshake, then move to `CONNTRACK`: a SYN flood (spoofed sources never answer the
//! SYN-ACK) so churns the half-open table only and never evicts an established flow.
//! The kernel only creates and refreshes entries; user space expires idle ones, a flow's
//! two together (half-open ones are left to their LRU). Every entry the kernel adds is
//! counted (`CONN_CREATED`), so user space can tell how many the LRU evicted:
//! created - expired - live.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_ktime_get_ns,
    maps::LruHashMap,
};
use lb_common::{Addr, Backend, BackendState, Conn, ConnKey, ConnKind, DropReason, IPPROTO_TCP, Service, Settings};

use crate::{
    maps::{BACKENDS, CONN_CREATED, CONNTRACK, CREATED_ESTABLISHED, CREATED_HALF_OPEN, HALF_OPEN, count_drop},
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
/// Only a SYN (or any UDP datagram) opens a flow, a TCP one half open: the client's next
/// segment to the same backend completes it (see `complete`). A TCP segment of a flow
/// with no entry, or whose backend's id is free again, is `None`, for the stack to answer
/// (with a reset when the VIP is local), and counted as `NoFlow`. A FIN or RST marks both
/// of the flow's entries closed. A service whose replies bypass xlb (`F_RETURNS_DIRECTLY`) steers such a segment by
/// its table instead, into an established entry, and counts it as a new flow of this node.
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
                    let _ = insert_new(&CONNTRACK, &bkey, &Conn { last_seen: now, ..*entry }, CREATED_ESTABLISHED);
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
    if had_entry.is_none() && tcp {
        if let Some(h) = HALF_OPEN.get_ptr(&skey) {
            let h = unsafe { *h };
            // The id's backend must still be this service's: ids are reused.
            if let Some(b) = BACKENDS.get(h.backend).filter(|b| b.service == svc.id && b.state != BackendState::Empty as u8) {
                if !syn {
                    return complete(&skey, &h, b, p, now);
                }
                // A retransmitted SYN goes where the first one went.
                if b.state == BackendState::Active as u8 {
                    pinned = Some((h.backend, *b));
                }
            }
        }
    }
    // A tunnel service's nodes share flows (ECMP may bring any flow here mid-stream): the
    // table, which every node holds alike, steers the segment as it steered the SYN.
    let steer = svc.flags & Service::F_RETURNS_DIRECTLY != 0;
    if tcp && !syn && !steer {
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
    // A SYN without an established entry waits in the half-open table (a retransmitted
    // one rewrites its entries there); a SYN reusing an established 4-tuple, and UDP,
    // write the connection table.
    // A steered mid-flow segment (direct server return) belongs to an established flow.
    let (table, slot) = if tcp && syn && had_entry.is_none() { (&HALF_OPEN, CREATED_HALF_OPEN) } else { (&CONNTRACK, CREATED_ESTABLISHED) };
    let written = if had_entry.is_some() { CONNTRACK.insert(&skey, &conn, BPF_ANY as u64) } else { insert_new(table, &skey, &conn, slot) };
    if written.is_err() || insert_new(table, &bkey, &conn, slot).is_err() {
        return Err(DropReason::ConntrackFull);
    }
    Ok(Some((id, b, new)))
}

/// The client's first segment after its SYN: the handshake is complete, so the flow's
/// entries move from the half-open table to the connection table, on the backend the
/// SYN went to (whatever its state now: the flow ends where it began).
#[inline(always)]
fn complete(skey: &ConnKey, h: &Conn, b: &Backend, p: &Packet, now: u64) -> Result<Option<(u32, Backend, bool)>, DropReason> {
    let bkey = key(&p.src, p.sport, &b.addr, b.port, p, ConnKind::Backend);
    let flags = if p.closes() { Conn::F_CLOSED } else { 0 };
    let conn = Conn { last_seen: now, flags, ..*h };
    if insert_new(&CONNTRACK, skey, &conn, CREATED_ESTABLISHED).is_err() || insert_new(&CONNTRACK, &bkey, &conn, CREATED_ESTABLISHED).is_err() {
        return Err(DropReason::ConntrackFull);
    }
    let _ = HALF_OPEN.remove(skey);
    let _ = HALF_OPEN.remove(&bkey);
    Ok(Some((h.backend, *b, false)))
}

/// Writes an entry into `table`, counting it in `CONN_CREATED[slot]` when the key was not
/// there before.
#[inline(always)]
fn insert_new(table: &LruHashMap<ConnKey, Conn>, k: &ConnKey, conn: &Conn, slot: u32) -> Result<(), i32> {
    if table.insert(k, conn, BPF_NOEXIST as u64).is_ok() {
        if let Some(c) = CONN_CREATED.get_ptr_mut(slot) {
            unsafe { *c += 1 };
        }
        return Ok(());
    }
    table.insert(k, conn, BPF_ANY as u64)
}

/// The entry under `k`, established or half open.
#[inline(always)]
pub fn lookup(k: &ConnKey) -> Option<Conn> {
    CONNTRACK.get_ptr(k).or_else(|| HALF_OPEN.get_ptr(k)).map(|c| unsafe { *c })
}

/// The flow entry a reply (backend -> client) belongs to, refreshed (but for a UDP flow
/// whose backend is no longer active: it is to go idle, see `forward`); a FIN or RST marks
/// it closed (the caller marks the service entry, whose key needs the VIP).
#[inline(always)]
pub fn reply(p: &Packet) -> Option<Conn> {
    let bkey = key(&p.dst, p.dport, &p.src, p.sport, p, ConnKind::Backend);
    // The SYN-ACK of a half-open flow: its entry is not refreshed (nor marked, see above).
    let Some(entry) = CONNTRACK.get_ptr_mut(&bkey) else { return HALF_OPEN.get_ptr(&bkey).map(|c| unsafe { *c }) };
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
