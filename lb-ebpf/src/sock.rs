//! Socket-level balancing for local callers (cgroup sock_addr hooks): a process in the
//! cgroup these are attached to that connects (or, UDP, sends) to a VIP:port is
//! connected straight to a backend chosen from the same selection table as `xlb_xdp`'s,
//! so none of its packets is ever rewritten. The socket is remembered with its backend so
//! that recvmsg() and getpeername() show the VIP the application asked for: a connected
//! socket in its own storage (`SOCK_PEER`, freed with the socket: however many sockets
//! come and go, a long-lived one keeps it, and there is no map insert on connect()'s hot
//! path); an unconnected UDP socket, which may send to several VIPs, in `SOCK_REV_NAT`,
//! an LRU keyed by (socket cookie, backend) and refreshed at each datagram.
//!
//! The choice is made once, in connect(); for a socket that sends without connecting
//! (UDP sendmsg), again at each datagram, which must land on the same backend: so the
//! choice is a function of the socket. Maglev hashes the socket cookie with the VIP:port
//! (unique per socket; a per-call random could not keep a sendmsg socket on one backend,
//! nor keep Maglev's small reshuffles when the table changes); source_hash hashes the
//! network namespace cookie (one namespace, one client: a container, or the host);
//! round_robin and random use their own index at connect() and the socket hash at
//! sendmsg(). Draining and removed backends are not in the table, so no new socket
//! reaches them; connected sockets stay where they are, as flows do through XDP.

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use lb_common::{AF_INET, Addr, Backend, IPPROTO_TCP, IPPROTO_UDP, Method, RevNat, Service, ServiceKey, SockPeer, SockRevKey, hash_words};

use crate::{
    maps::{BACKEND_STATS, SERVICE_STATS, SERVICES, SETTINGS, SOCK_PEER, SOCK_REV_NAT, count_flow},
    select::{self, Flow},
};

/// A socket that asks for a VIP:port, as the hashed methods see it.
struct Sock {
    ctx: *mut bpf_sock_addr,
    cookie: u64,
    vip: Addr,
    port: u16,
    proto: u8,
}

impl Flow for Sock {
    #[inline(always)]
    fn flow_hash(&self, seed: u32) -> u32 {
        let v = &self.vip;
        let words = [self.cookie as u32, (self.cookie >> 32) as u32, v[0], v[1], v[2], v[3], self.port as u32, self.proto as u32];
        hash_words(&words, seed)
    }

    #[inline(always)]
    fn client_hash(&self, seed: u32) -> u32 {
        let netns = unsafe { bpf_get_netns_cookie(self.ctx.cast()) };
        hash_words(&[netns as u32, (netns >> 32) as u32], seed)
    }
}

/// connect() or sendmsg() to a VIP:port of a service with socket balancing: the address
/// becomes a backend's. Anything else, or a service without an active backend, is left
/// as it is (the stack, and `xlb_xdp` where the packets cross it, carry on); a connect()
/// there forgets what an earlier connect() of the socket remembered (UDP may reconnect).
#[inline(always)]
pub fn balance(ctx: &SockAddrContext, family: u8, sendmsg: bool) {
    let sa = ctx.sock_addr;
    let (vip, port) = read_addr(sa, family);
    let Some((cookie, id, svc, backend)) = choose(ctx, family, sendmsg, vip, port) else {
        if !sendmsg {
            // SAFETY: the context's socket, which the verifier knows is not null.
            let _ = unsafe { SOCK_PEER.delete((*sa).__bindgen_anon_1.sk) };
        }
        return;
    };
    let new = if sendmsg {
        let rev = RevNat { addr: vip, port, family, _pad: 0 };
        let rkey = SockRevKey { cookie, addr: backend.addr, port: backend.port, family, _pad: [0; 5] };
        // A sendmsg socket passes here at every datagram; its first one to a backend counts.
        let seen = unsafe { SOCK_REV_NAT.get(&rkey) }.is_some_and(|r| *r == rev);
        if !seen {
            let _ = SOCK_REV_NAT.insert(&rkey, &rev, 0);
        }
        !seen
    } else {
        let peer = SockPeer { backend: backend.addr, vip, backend_port: backend.port, vip_port: port, family, _pad: [0; 3] };
        // SAFETY: the storage is this socket's, written whole here and read by its own calls.
        let slot = unsafe { SOCK_PEER.get_or_insert_ptr_mut(ctx, None) };
        if let Some(slot) = unsafe { slot.as_mut() } {
            *slot = peer;
        }
        true
    };
    if new {
        count_flow(&SERVICE_STATS, svc);
        count_flow(&BACKEND_STATS, id);
    }
    write_addr(sa, family, &backend.addr, backend.port);
}

/// The backend for a call to `vip`:`port`, if it is a socket-balanced service with one:
/// (socket cookie, backend id, service id, backend).
#[inline(always)]
fn choose(ctx: &SockAddrContext, family: u8, sendmsg: bool, vip: Addr, port: u16) -> Option<(u64, u32, u32, Backend)> {
    let sa = ctx.sock_addr;
    // Compared whole: MPTCP (262) must not pass for TCP (6) once truncated.
    let proto = unsafe { (*sa).protocol };
    if proto != IPPROTO_TCP as u32 && proto != IPPROTO_UDP as u32 {
        return None;
    }
    let proto = proto as u8;
    let key = ServiceKey { addr: vip, port, proto, family };
    // SAFETY: user space updates map values whole; we copy before use.
    let mut svc = (unsafe { SERVICES.get(&key) }).copied()?;
    let settings = SETTINGS.get(0).copied()?;
    if svc.flags & Service::F_SOCKET_LB == 0 {
        return None;
    }
    // Each datagram of a sendmsg socket must pick alike: a hash of the socket, not a step.
    let method = Method::from_u8(svc.method);
    if sendmsg && matches!(method, Some(Method::RoundRobin | Method::Random)) {
        svc.method = Method::Maglev as u8;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let sock = Sock { ctx: sa, cookie, vip, port, proto };
    let (id, backend) = select::pick(&svc, &sock, &settings).ok()?;
    Some((cookie, id, svc.id, backend))
}

/// recvmsg() or getpeername() reporting a backend this socket was balanced to: the
/// application is shown the VIP:port it asked for. `datagram` (recvmsg): the socket may
/// also have sent without connecting, to a backend `SOCK_REV_NAT` knows.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext, family: u8, datagram: bool) {
    let sa = ctx.sock_addr;
    let (addr, port) = read_addr(sa, family);
    // SAFETY: the storage is this socket's; it is read, not created.
    if let Some(peer) = unsafe { SOCK_PEER.get_ptr_mut(ctx).as_ref() }.copied()
        && peer.backend == addr
        && peer.backend_port == port
        && peer.family == family
    {
        write_addr(sa, family, &peer.vip, peer.vip_port);
        return;
    }
    if !datagram {
        return;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let rkey = SockRevKey { cookie, addr, port, family, _pad: [0; 5] };
    if let Some(rev) = unsafe { SOCK_REV_NAT.get(&rkey) }.copied() {
        write_addr(sa, family, &rev.addr, rev.port);
    }
}

/// The user address and port (network order) of the call. Volatile word accesses: the
/// verifier takes 4-byte accesses to these fields, and the compiler must not merge them.
#[inline(always)]
fn read_addr(sa: *mut bpf_sock_addr, family: u8) -> (Addr, u16) {
    unsafe {
        let port = core::ptr::read_volatile(&raw const (*sa).user_port) as u16;
        if family == AF_INET {
            return ([core::ptr::read_volatile(&raw const (*sa).user_ip4), 0, 0, 0], port);
        }
        let ip6 = &raw const (*sa).user_ip6;
        let w = |i: usize| core::ptr::read_volatile((ip6 as *const u32).add(i));
        ([w(0), w(1), w(2), w(3)], port)
    }
}

#[inline(always)]
fn write_addr(sa: *mut bpf_sock_addr, family: u8, addr: &Addr, port: u16) {
    unsafe {
        if family == AF_INET {
            core::ptr::write_volatile(&raw mut (*sa).user_ip4, addr[0]);
        } else {
            let ip6 = (&raw mut (*sa).user_ip6) as *mut u32;
            for (i, word) in addr.iter().enumerate() {
                core::ptr::write_volatile(ip6.add(i), *word);
            }
        }
        core::ptr::write_volatile(&raw mut (*sa).user_port, port as u32);
    }
}
