//! The reference model: what `xlb_xdp` must do with any frame, stated from the frame's
//! bytes, the configured services and the flows seen so far, written apart from the kernel
//! code (its own parser, its own flow table, checksums judged by what they cover).
//!
//! The semantics, in the order a frame meets them:
//! - shorter than an Ethernet header: the kernel refuses the test run;
//! - Ethernet with at most one 802.1Q tag, then IPv4 (version 4, a header of 5 words or more,
//!   a total length covering it) or IPv6 (version 6, TCP or UDP right after the fixed
//!   header): anything else goes to the stack untouched; an IPv4 fragment is counted
//!   (`fragment`), xlb balances whole datagrams;
//! - TCP (20 bytes present) or UDP (8 bytes) to a service's address, port and protocol: with
//!   a TTL of 1 or less it is the stack's (counted `ttl_expired`); otherwise the flow table
//!   decides its backend (below) and the frame leaves rewritten: destination address and
//!   port the backend's, one hop less, the next hop's MACs when the neighbour is known, each
//!   checksum exactly as valid as it came (a UDP/IPv4 checksum of 0 stays 0, none becomes
//!   0); a checksum field holding the pseudo-header sum (CHECKSUM_PARTIAL) is left for TC
//!   with the differences to fold in;
//! - an ICMP/ICMPv6 error (unreachable, time exceeded, parameter problem, packet too big)
//!   sent to a VIP and quoting a reply of a known flow (VIP:port -> client) goes to the
//!   flow's backend, translated: outer destination, quoted source address and port the
//!   backend's, one hop less, checksums as valid as they came;
//! - where a rewritten frame goes follows the test network's routes: a known neighbour on
//!   the ingress interface is `XDP_TX`, elsewhere up to TC with the interface (0 when the
//!   stack routes it), a blackhole is dropped (`fib_unreachable`).
//!
//! Flows (all backends of a service chosen by Maglev over its active backends): a TCP SYN
//! (SYN without ACK) opens a flow half open; the client's next segment completes it; a
//! segment of no flow is the stack's (`no_flow`). An established flow keeps its backend
//! while it is active or draining, and a TCP flow also after its removal; a SYN on an
//! established 4-tuple keeps an active backend and chooses afresh otherwise; a UDP flow on a
//! removed backend chooses afresh. A backend that is removed and comes back is a new one.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use lb_common::{IPPROTO_TCP, IPPROTO_UDP};
use xlb::dataplane::{Limits, maglev};

mod neighbor;
mod reply;
mod route;
mod translate;

pub use self::route::BLACKHOLE4;
use self::{
    route::{Route, route},
    translate::{Side, addr_at, hop, icmp_quote, translate},
};
use super::{
    config::Svc,
    sums::{Sum, addr, put_addr},
};
use crate::{net::Dev, ones};

const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

/// What the model says the program must do with a frame.
#[derive(Debug)]
pub enum Expect {
    /// The kernel refuses the test run (shorter than Ethernet).
    Refused,
    /// The kernel may refuse the test run; if it runs it, `Pass`.
    RefusedOrPass,
    /// `XDP_PASS`, untouched, no metadata (maybe counted as a drop reason).
    Pass,
    /// `XDP_DROP` (counted as a drop reason).
    Drop,
    /// Rewritten: `frame` is the output with checksum fields as they came in; `sums` are
    /// the checksums that must be exactly as valid as in the input.
    Out { frame: Vec<u8>, sums: Vec<Sum>, to: To, partial: Option<Sum> },
}

/// Where a rewritten frame goes.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum To {
    /// `XDP_TX`.
    Tx,
    /// `XDP_PASS` with `FwdMeta` naming this interface (0: the stack's choice).
    Tc(u32),
    /// `XDP_PASS` with `FwdMeta` sending it back out of this interface (an answer).
    BackOut(u32),
    /// TC: `TC_ACT_REDIRECT`.
    Redirect,
    /// TC: `TC_ACT_UNSPEC`, the stack takes it as rewritten.
    Stack,
}

/// An IP header as the model reads it.
struct Ip {
    l3: usize,
    v6: bool,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    ttl: u8,
    fragment: bool,
    /// Where the L4 header starts, and its length with payload as the header says.
    l4: usize,
    len: usize,
}

/// The IP header at `l3`, of the given version, if it is one xlb may read.
fn ip(f: &[u8], l3: usize, v6: bool) -> Option<Ip> {
    if !v6 {
        let h = f.get(l3..l3 + 20)?;
        let ihl = (h[0] & 0x0f) as usize * 4;
        let total = u16::from_be_bytes([h[2], h[3]]) as usize;
        if h[0] >> 4 != 4 || ihl < 20 || total < ihl {
            return None;
        }
        let fragment = u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0;
        Some(Ip { l3, v6, src: addr(f, l3 + 12, false), dst: addr(f, l3 + 16, false), proto: h[9], ttl: h[8], fragment, l4: l3 + ihl, len: total - ihl })
    } else {
        let h = f.get(l3..l3 + 40)?;
        if h[0] >> 4 != 6 {
            return None;
        }
        let len = u16::from_be_bytes([h[4], h[5]]) as usize;
        Some(Ip { l3, v6, src: addr(f, l3 + 8, true), dst: addr(f, l3 + 24, true), proto: h[6], ttl: h[7], fragment: false, l4: l3 + 40, len })
    }
}

/// The IP header after Ethernet and at most one VLAN tag.
fn outer_ip(f: &[u8]) -> Option<Ip> {
    let mut l3 = 14;
    let mut ether = u16::from_be_bytes([f[12], f[13]]);
    if ether == 0x8100 {
        let tag = f.get(14..18)?;
        ether = u16::from_be_bytes([tag[2], tag[3]]);
        l3 = 18;
    }
    match ether {
        0x0800 => ip(f, l3, false),
        0x86dd => ip(f, l3, true),
        _ => None,
    }
}

/// A flow as the client sees it: client address and port, VIP, port, protocol.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Flow {
    pub client: IpAddr,
    pub cport: u16,
    pub vip: IpAddr,
    pub vport: u16,
    pub proto: u8,
}

/// A client -> backend entry's key, as replies find it: client, its port, backend, its
/// port, protocol.
pub type BackendKey = (IpAddr, u16, IpAddr, u16, u8);

/// One backend of one service from its addition to its removal.
#[derive(Debug)]
pub struct Instance {
    pub addr: IpAddr,
    pub port: u16,
    pub state: State,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum State {
    Active,
    Draining,
    Removed,
}

/// A flow's entry: its backend, and whether a FIN or RST closed it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Entry {
    pub inst: usize,
    pub closed: bool,
}

struct Service {
    /// The instances it has (removed ones no longer), in configuration order.
    backends: Vec<usize>,
    /// Maglev's table: instance per slot.
    table: Vec<usize>,
}

pub struct Model {
    limits: Limits,
    ifindex: [u32; 2],
    services: HashMap<(IpAddr, u16, u8), Service>,
    pub instances: Vec<Instance>,
    /// Established flows (the service entries of the connection table) and the
    /// client -> backend entries for replies (a backend that comes back finds its
    /// entries), each with the flow that last wrote it (its VIP is what replies get) and
    /// whether it is closed.
    pub established: HashMap<Flow, Entry>,
    pub to_backend: HashMap<BackendKey, (Flow, bool)>,
    /// Half-open flows and their client -> backend entries.
    pub half_open: HashMap<Flow, usize>,
    pub half_open_backend: HashMap<BackendKey, Flow>,
    /// Drop reasons counted, and per service (VIP, port, protocol) its packets, bytes and
    /// new flows.
    pub drops: HashMap<&'static str, u64>,
    pub services_counted: HashMap<(IpAddr, u16, u8), [u64; 3]>,
    /// How many frames met each outcome: what the generator reached.
    pub outcomes: BTreeMap<&'static str, u64>,
}

impl Model {
    pub fn new(limits: Limits, ifindex: [u32; 2]) -> Self {
        Model {
            limits,
            ifindex,
            services: HashMap::new(),
            instances: Vec::new(),
            established: HashMap::new(),
            to_backend: HashMap::new(),
            half_open: HashMap::new(),
            half_open_backend: HashMap::new(),
            drops: HashMap::new(),
            services_counted: HashMap::new(),
            outcomes: BTreeMap::new(),
        }
    }

    /// The configuration changes to `config` (services stay; backends come, drain, go).
    pub fn sync(&mut self, config: &[Svc]) {
        for s in config {
            let key = (s.vip, s.port, s.proto);
            let old = self.services.remove(&key).map(|s| s.backends).unwrap_or_default();
            let mut backends = Vec::new();
            for &(addr, port, draining) in &s.backends {
                let state = if draining { State::Draining } else { State::Active };
                let known = old.iter().copied().find(|&i| self.instances[i].addr == addr && self.instances[i].port == port);
                let i = known.unwrap_or_else(|| {
                    self.instances.push(Instance { addr, port, state });
                    self.instances.len() - 1
                });
                self.instances[i].state = state;
                backends.push(i);
            }
            for i in old.into_iter().filter(|i| !backends.contains(i)) {
                self.instances[i].state = State::Removed;
            }
            // Ordered by address and port, not by configuration: every node builds the same table.
            let mut active: Vec<usize> = backends.iter().copied().filter(|&i| self.instances[i].state == State::Active).collect();
            active.sort_by_key(|&i| (self.instances[i].addr, self.instances[i].port));
            let entries: Vec<maglev::Entry> = active
                .iter()
                .map(|&i| {
                    let (a, _) = lb_common::addr_words(self.instances[i].addr);
                    maglev::Entry { identity: [a[0], a[1], a[2], a[3], self.instances[i].port as u32], weight: 1 }
                })
                .collect();
            let table = if active.is_empty() {
                Vec::new()
            } else {
                maglev::maglev(&entries, self.limits.table_size, self.limits.hash_seed).iter().map(|&s| active[s as usize]).collect()
            };
            self.services.insert(key, Service { backends, table });
        }
    }

    fn count(&mut self, reason: &'static str) {
        *self.drops.entry(reason).or_default() += 1;
    }

    /// What `xlb_xdp` must do with `f`, received on fx0; the model's state moves on.
    pub fn xdp(&mut self, f: &[u8]) -> Expect {
        let e = self.decide(f);
        let outcome = match &e {
            Expect::Refused | Expect::RefusedOrPass => "refused",
            Expect::Pass => "passed",
            Expect::Drop => "dropped",
            Expect::Out { to: To::Tx, .. } => "sent back out (XDP_TX)",
            Expect::Out { to: To::BackOut(_), .. } => "neighbor answered",
            Expect::Out { partial: Some(_), .. } => "to TC, partial checksum",
            Expect::Out { .. } => "to TC",
        };
        *self.outcomes.entry(outcome).or_default() += 1;
        e
    }

    fn decide(&mut self, f: &[u8]) -> Expect {
        if f.len() < 14 {
            return Expect::Refused;
        }
        let Some(p) = outer_ip(f) else { return self.neighbor(f).unwrap_or(Expect::Pass) };
        if p.fragment {
            self.count("fragment");
            return Expect::Pass;
        }
        let ports = match p.proto {
            IPPROTO_TCP => f.len() >= p.l4 + 20,
            IPPROTO_UDP => f.len() >= p.l4 + 8,
            _ => false,
        };
        if !ports {
            return self.neighbor(f).or_else(|| self.icmp_error(f, &p)).unwrap_or(Expect::Pass);
        }
        let (sport, dport) = (u16::from_be_bytes([f[p.l4], f[p.l4 + 1]]), u16::from_be_bytes([f[p.l4 + 2], f[p.l4 + 3]]));
        let key = (p.dst, dport, p.proto);
        if !self.services.contains_key(&key) {
            return Expect::Pass;
        }
        if p.ttl <= 1 {
            self.count("ttl_expired");
            return Expect::Pass;
        }
        let flags = if p.proto == IPPROTO_TCP { f[p.l4 + 13] } else { 0 };
        let flow = Flow { client: p.src, cport: sport, vip: p.dst, vport: dport, proto: p.proto };
        let inst = match self.flow(flow, flags) {
            Ok(Some(i)) => i,
            Ok(None) => {
                self.count("no_flow");
                return Expect::Pass;
            }
            Err(reason) => {
                self.count(reason);
                return Expect::Drop;
            }
        };
        let counted = self.services_counted.entry(key).or_default();
        counted[0] += 1;
        counted[1] += f.len() as u64;
        let (addr, port) = (self.instances[inst].addr, self.instances[inst].port);
        let field = p.l4 + if p.proto == IPPROTO_TCP { 16 } else { 6 };
        let check = u16::from_be_bytes([f[field], f[field + 1]]);
        let sum = Sum::L4 { l3: p.l3, v6: p.v6, proto: p.proto, l4: p.l4, len: p.len, field, udp: p.proto == IPPROTO_UDP };
        let none = p.proto == IPPROTO_UDP && !p.v6 && check == 0;
        let partial = !none && check == ones::pseudo_header(p.src, p.dst, p.proto, p.len);
        let mut out = f.to_vec();
        put_addr(&mut out, addr_at(&p, Side::Dst), addr);
        out[p.l4 + 2..p.l4 + 4].copy_from_slice(&port.to_be_bytes());
        let mut sums = hop(&mut out, &p);
        if !none && !partial {
            sums.push(sum);
        }
        let partial = partial.then_some(sum);
        self.send(out, sums, p.src, addr, partial)
    }

    /// Where a rewritten frame from `from` goes, the next hop's MACs written when known.
    fn send(&mut self, mut out: Vec<u8>, sums: Vec<Sum>, from: IpAddr, to: IpAddr, partial: Option<Sum>) -> Expect {
        let to = match route(from, to) {
            Route::Neigh(dev, mac) => {
                out[0..6].copy_from_slice(&mac);
                out[6..12].copy_from_slice(&dev.mac());
                if dev == Dev::Fx0 && partial.is_none() { To::Tx } else { To::Tc(self.ifindex[dev as usize]) }
            }
            Route::NoNeigh(dev) => To::Tc(self.ifindex[dev as usize]),
            Route::Stack => To::Tc(0),
            Route::Blackhole => {
                self.count("fib_unreachable");
                return Expect::Drop;
            }
        };
        Expect::Out { frame: out, sums, to, partial }
    }

    /// The backend of a flow's packet with these TCP flags (0 for UDP): `Ok(None)` for a
    /// TCP segment of no flow, `Err` for a drop.
    fn flow(&mut self, flow: Flow, flags: u8) -> Result<Option<usize>, &'static str> {
        let tcp = flow.proto == IPPROTO_TCP;
        let syn = tcp && flags & 0x12 == 0x02;
        let closes = tcp && flags & 0x05 != 0;
        let key = (flow.vip, flow.vport, flow.proto);
        let mut keep = None;
        let established = self.established.get(&flow).copied();
        if let Some(e) = established {
            let state = self.instances[e.inst].state;
            if !syn && (state != State::Removed || tcp) {
                if closes && !e.closed {
                    self.established.insert(flow, Entry { closed: true, ..e });
                    if let Some(c) = self.to_backend.get_mut(&self.backend_key(flow, e.inst)) {
                        c.1 = true;
                    }
                }
                return Ok(Some(e.inst));
            }
            if syn && state == State::Active {
                keep = Some(e.inst);
            }
        } else if let Some(h) = self.half_open.get(&flow).copied().filter(|_| tcp) {
            if !syn {
                self.half_open.remove(&flow);
                self.half_open_backend.remove(&self.backend_key(flow, h));
                self.established.insert(flow, Entry { inst: h, closed: closes });
                self.to_backend.insert(self.backend_key(flow, h), (flow, closes));
                return Ok(Some(h));
            }
            if self.instances[h].state == State::Active {
                keep = Some(h);
            }
        }
        if tcp && !syn {
            return Ok(None);
        }
        let inst = match keep {
            Some(i) => i,
            None => {
                let svc = &self.services[&key];
                if svc.table.is_empty() {
                    return Err("no_backend");
                }
                let (src, dst) = (lb_common::addr_words(flow.client).0, lb_common::addr_words(flow.vip).0);
                let hash = lb_common::flow_hash(&src, flow.cport.to_be(), &dst, flow.vport.to_be(), flow.proto, self.limits.hash_seed);
                let i = svc.table[(hash % svc.table.len() as u32) as usize];
                self.services_counted.entry(key).or_default()[2] += 1;
                i
            }
        };
        if established.is_some() || !tcp {
            self.established.insert(flow, Entry { inst, closed: false });
            self.to_backend.insert(self.backend_key(flow, inst), (flow, false));
        } else {
            self.half_open.insert(flow, inst);
            self.half_open_backend.insert(self.backend_key(flow, inst), flow);
        }
        Ok(Some(inst))
    }

    fn backend_key(&self, flow: Flow, inst: usize) -> BackendKey {
        (flow.client, flow.cport, self.instances[inst].addr, self.instances[inst].port, flow.proto)
    }

    /// An ICMP error to a VIP about one of its flows' replies, translated for the backend.
    fn icmp_error(&mut self, f: &[u8], outer: &Ip) -> Option<Expect> {
        let (q, sport, dport) = icmp_quote(f, outer)?;
        if !self.services.contains_key(&(q.src, sport, q.proto)) {
            return None;
        }
        let flow = Flow { client: q.dst, cport: dport, vip: q.src, vport: sport, proto: q.proto };
        let inst = self.established.get(&flow).map(|e| e.inst).or_else(|| self.half_open.get(&flow).copied())?;
        let (addr, port) = (self.instances[inst].addr, self.instances[inst].port);
        let (out, sums) = translate(f, outer, &q, Some(Side::Dst), Side::Src, addr, port);
        *self.outcomes.entry("ICMP error translated").or_default() += 1;
        Some(self.send(out, sums, outer.src, addr, None))
    }
}
