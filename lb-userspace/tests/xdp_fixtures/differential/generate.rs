//! The generator: from a seed, a configuration and a sequence of frames and configuration
//! changes. Frames follow a pool of flows (SYN, ACK, data, FIN, RST, odd flags, UDP, IPv4
//! and IPv6) and around them everything else a wire carries: ICMP errors about the flows'
//! replies (quotes of every length), fragments, IPv4 options, IPv6 extension headers, VLAN
//! tags, partial, zero and wrong checksums, low TTLs, replies and other traffic that is no
//! service's, ARP, garbage; any of them may then be cut short or get a bad length, version
//! or byte.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{IPPROTO_TCP, IPPROTO_UDP};

use super::config::{ROUTER4, ROUTER6, Svc, TARGETS, universe};
use crate::{
    net::{B4A, B6A, CLIENT_MAC, Dev, NEAR, VIP4, VIP6},
    ones,
    parsing::Rng,
};

#[derive(Clone, Copy)]
struct GenFlow {
    client: IpAddr,
    cport: u16,
    vip: IpAddr,
    vport: u16,
    proto: u8,
}

pub enum Step {
    /// A frame for `xlb_xdp`, on the clients' side.
    Frame(Vec<u8>),
    /// A frame for `xlb_reply`, on the backends' side.
    Reply(Vec<u8>),
    Sync(Vec<Svc>),
}

pub struct Gen {
    rng: Rng,
    flows: Vec<GenFlow>,
    last: Vec<u8>,
    until_sync: usize,
}

/// A frame and where its IP header starts (for the mutations).
struct Built {
    bytes: Vec<u8>,
    l3: usize,
}

impl Gen {
    pub fn new(seed: u64) -> Self {
        let mut g = Gen { rng: Rng(seed | 1), flows: Vec::new(), last: Vec::new(), until_sync: 0 };
        g.flows = (0..300).map(|_| g.flow()).collect();
        g.until_sync = g.range(500, 3000);
        g
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.rng.below(hi - lo)
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.rng.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.rng.below(from.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.rng.next() as u8).collect()
    }

    fn flow(&mut self) -> GenFlow {
        let (vip, vport, proto) = self.pick(TARGETS);
        let n = self.rng.below(100) as u8;
        let client = match (vip, self.chance(85)) {
            (IpAddr::V4(_), true) => IpAddr::V4(Ipv4Addr::new(10, 250, 0, 100 + n)),
            (IpAddr::V4(_), false) => IpAddr::V4(Ipv4Addr::new(203, 0, 113, n)),
            (IpAddr::V6(_), true) => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 0x100 + n as u16)),
            (IpAddr::V6(_), false) => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n as u16)),
        };
        GenFlow { client, cport: self.range(1024, 65536) as u16, vip, vport, proto }
    }

    /// The first configuration: every backend active.
    pub fn config(&mut self) -> Vec<Svc> {
        universe()
    }

    /// A changed configuration: each backend active, draining or gone.
    fn change(&mut self) -> Vec<Svc> {
        let mut c = universe();
        for s in &mut c {
            let mut kept = Vec::new();
            for &(a, p, _) in &s.backends {
                match self.rng.below(10) {
                    0..6 => kept.push((a, p, false)),
                    6..8 => kept.push((a, p, true)),
                    _ => {}
                }
            }
            s.backends = kept;
        }
        c
    }

    pub fn next(&mut self) -> Step {
        if self.until_sync == 0 {
            self.until_sync = self.range(500, 3000);
            return Step::Sync(self.change());
        }
        self.until_sync -= 1;
        if self.chance(2) {
            let i = self.rng.below(self.flows.len());
            self.flows[i] = self.flow();
        }
        let reply = self.chance(25);
        let built = match self.rng.below(100) {
            _ if reply => self.reply(),
            0..45 => self.segment(),
            45..55 => self.icmp_error(),
            55..62 => self.fragment(),
            62..67 => self.extension_headers(),
            67..77 => self.other(),
            77..82 => {
                let n = self.rng.below(120);
                Built { bytes: self.bytes(n), l3: 14 }
            }
            _ => {
                // A previous frame again: retransmissions, duplicates.
                Built { bytes: self.last.clone(), l3: 14 }
            }
        };
        let mut f = built.bytes;
        if self.chance(15) && f.len() > built.l3 + 8 {
            self.mutate(&mut f, built.l3);
        }
        if reply {
            return Step::Reply(f);
        }
        if f.len() >= 14 {
            self.last = f.clone();
        }
        Step::Frame(f)
    }

    /// What the backends' side carries: a flow's reply from one of its service's backends
    /// (the right one or not), or an ICMP error about a packet forwarded to it (from the
    /// backend or a router), and now and then anything else.
    fn reply(&mut self) -> Built {
        let fl = self.pick(&self.flows.clone());
        let mut backends: Vec<(IpAddr, u16)> = universe()
            .into_iter()
            .filter(|s| (s.vip, s.port, s.proto) == (fl.vip, fl.vport, fl.proto))
            .flat_map(|s| s.backends)
            .map(|(a, p, _)| (a, p))
            .collect();
        if backends.is_empty() {
            backends.push(if fl.vip.is_ipv4() { (B4A.ip, 8080) } else { (B6A.ip, 8080) });
        }
        let (backend, port) = self.pick(&backends);
        let mut b = match self.rng.below(100) {
            0..75 => {
                let flags = self.pick(&[0x12, 0x10, 0x10, 0x18, 0x11, 0x04, 0x14, 0x02]);
                let l4 = self.l4(fl.proto, backend, fl.client, port, fl.cport, flags);
                self.ip(backend, fl.client, fl.proto, l4)
            }
            75..95 => {
                let l4 = self.l4(fl.proto, fl.client, backend, fl.cport, port, 0x10);
                let router =
                    if backend.is_ipv4() { IpAddr::V4(Ipv4Addr::new(10, 251, 0, 50)) } else { IpAddr::V6(Ipv6Addr::new(0xfd00, 0x251, 0, 0, 0, 0, 0, 0x50)) };
                let from = if self.chance(50) { backend } else { router };
                self.error_about(fl.client, backend, fl.proto, l4, from, fl.client)
            }
            _ => self.other(),
        };
        b.bytes[0..6].copy_from_slice(&Dev::Fx1.mac());
        b
    }

    /// A packet of one of the flows: from the client mostly, a reply now and then.
    fn segment(&mut self) -> Built {
        let fl = self.pick(&self.flows.clone());
        let flags = match self.rng.below(100) {
            0..25 => 0x02,
            25..55 => 0x10,
            55..70 => 0x18,
            70..78 => 0x11,
            78..83 => 0x04,
            83..86 => 0x12,
            _ => self.rng.next() as u8,
        };
        let proto = if self.chance(3) { IPPROTO_TCP + IPPROTO_UDP - fl.proto } else { fl.proto };
        let (src, dst, sport, dport) = if self.chance(5) { (fl.vip, fl.client, fl.vport, fl.cport) } else { (fl.client, fl.vip, fl.cport, fl.vport) };
        let l4 = self.l4(proto, src, dst, sport, dport, flags);
        self.ip(src, dst, proto, l4)
    }

    /// TCP or UDP with a payload and a checksum that is mostly right.
    fn l4(&mut self, proto: u8, src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let n = self.pick(&[0, 0, 1, 11, 40, 100]);
        let payload = self.bytes(n);
        let mut h = Vec::new();
        h.extend(sport.to_be_bytes());
        h.extend(dport.to_be_bytes());
        let field = if proto == IPPROTO_TCP {
            h.extend(self.bytes(8));
            let options = if self.chance(10) { 12 } else { 0 };
            h.push(((5 + options / 4) as u8) << 4);
            h.push(flags);
            h.extend([0xfa, 0xf0, 0, 0, 0, 0]);
            h.extend([1, 1, 8, 10].iter().chain(&[0u8; 8]).take(options));
            16
        } else {
            h.extend(((8 + payload.len()) as u16).to_be_bytes());
            h.extend([0, 0]);
            6
        };
        h.extend(payload);
        let pseudo = ones::pseudo_header(src, dst, proto, h.len());
        let check = match self.rng.below(100) {
            0..80 => !ones::add(pseudo, ones::fold(super::sums::words(&h))),
            80..88 => pseudo,
            88..94 => 0,
            _ => self.rng.next() as u16,
        };
        h[field..field + 2].copy_from_slice(&check.to_be_bytes());
        h
    }

    /// An IP packet in an Ethernet frame: options, a VLAN tag, a low TTL now and then.
    fn ip(&mut self, src: IpAddr, dst: IpAddr, proto: u8, body: Vec<u8>) -> Built {
        let ttl = if self.chance(5) { self.pick(&[0, 1, 2]) } else { 64 };
        let options = if self.chance(8) { self.options() } else { Vec::new() };
        let packet = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => ipv4(s, d, proto, ttl, &options, 0, &body),
            (IpAddr::V6(s), IpAddr::V6(d)) => ipv6(s, d, proto, ttl, &body),
            _ => unreachable!("flows keep one family"),
        };
        self.eth(if src.is_ipv4() { 0x0800 } else { 0x86dd }, packet)
    }

    /// IPv4 options: valid ones (router alert, no-ops, end) or any bytes.
    fn options(&mut self) -> Vec<u8> {
        if self.chance(50) {
            vec![0x94, 4, 0, 0, 1, 1, 1, 0]
        } else {
            let n = 4 * self.range(1, 11);
            self.bytes(n)
        }
    }

    fn eth(&mut self, ether_type: u16, packet: Vec<u8>) -> Built {
        let mut f = Vec::with_capacity(packet.len() + 18);
        f.extend(Dev::Fx0.mac());
        f.extend(CLIENT_MAC);
        let mut l3 = 14;
        if self.chance(10) {
            f.extend(0x8100u16.to_be_bytes());
            f.extend((self.rng.below(4095) as u16 + 1).to_be_bytes());
            l3 = 18;
        }
        f.extend(ether_type.to_be_bytes());
        f.extend(packet);
        if self.chance(5) {
            let n = self.range(1, 30);
            f.extend(self.bytes(n));
        }
        Built { bytes: f, l3 }
    }

    /// An ICMP error about a flow's reply (VIP:port -> client), or a message that is no error.
    fn icmp_error(&mut self) -> Built {
        let fl = self.pick(&self.flows.clone());
        let l4 = self.l4(fl.proto, fl.vip, fl.client, fl.vport, fl.cport, 0x12);
        let router = if fl.vip.is_ipv4() { ROUTER4 } else { ROUTER6 };
        let (from, to) = match self.rng.below(10) {
            0 => (router, if fl.vip.is_ipv4() { B4A.ip } else { B6A.ip }),
            1 => (fl.client, fl.vip),
            _ => (router, fl.vip),
        };
        self.error_about(fl.vip, fl.client, fl.proto, l4, from, to)
    }

    /// An ICMP error from `from` to `to` quoting a `src` -> `dst` packet with this L4 part
    /// (cut to any length), or a message that is no error.
    fn error_about(&mut self, src: IpAddr, dst: IpAddr, proto: u8, l4: Vec<u8>, from: IpAddr, to: IpAddr) -> Built {
        let v4 = src.is_ipv4();
        let quoted = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let options = if self.chance(10) { self.options() } else { Vec::new() };
                ipv4(s, d, proto, 63, &options, if self.chance(3) { 0x2000 } else { 0 }, &l4)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => ipv6(s, d, proto, 63, &l4),
            _ => unreachable!(),
        };
        let header = if v4 { (quoted[0] & 0x0f) as usize * 4 } else { 40 };
        let cut = match self.rng.below(5) {
            0 => header + 8,
            1 => header + 4,
            2 => self.rng.below(quoted.len() + 1),
            _ => quoted.len(),
        };
        let quote = &quoted[..cut.min(quoted.len())];
        let kind = if v4 { self.pick(&[3, 3, 3, 11, 12, 0, 8, 5]) } else { self.pick(&[1, 2, 2, 3, 4, 128, 129, 135]) };
        let mut msg = vec![kind, self.rng.below(5) as u8, 0, 0, 0, 0, 0x05, 0x78];
        msg.extend(quote);
        let proto = if v4 { 1 } else { 58 };
        let sum = if v4 {
            ones::fold(super::sums::words(&msg))
        } else {
            ones::add(ones::pseudo_header(from, to, proto, msg.len()), ones::fold(super::sums::words(&msg)))
        };
        let check = if self.chance(95) { !sum } else { self.rng.next() as u16 };
        msg[2..4].copy_from_slice(&check.to_be_bytes());
        self.ip(from, to, proto, msg)
    }

    /// A fragment of a flow's packet: IPv4 first (more fragments) or later (an offset), or
    /// IPv6 with a fragment header.
    fn fragment(&mut self) -> Built {
        let fl = self.pick(&self.flows.clone());
        let l4 = self.l4(fl.proto, fl.client, fl.vip, fl.cport, fl.vport, 0x10);
        match (fl.client, fl.vip) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let frag = if self.chance(50) { 0x2000 } else { self.range(1, 0x2000) as u16 | if self.chance(50) { 0x2000 } else { 0 } };
                let packet = ipv4(s, d, fl.proto, 64, &[], frag, &l4);
                self.eth(0x0800, packet)
            }
            _ => {
                let off: u16 = if self.chance(50) { 1 } else { (self.range(0, 100) as u16) << 3 | 1 };
                let mut body = vec![fl.proto, 0];
                body.extend(off.to_be_bytes());
                body.extend(self.bytes(4));
                body.extend(l4);
                self.ip(fl.client, fl.vip, 44, body)
            }
        }
    }

    /// IPv6 with hop-by-hop, routing or destination options before TCP or UDP.
    fn extension_headers(&mut self) -> Built {
        let fl = self.pick(&self.flows.clone());
        let (fl, l4) = if fl.vip.is_ipv6() {
            (fl, self.l4(fl.proto, fl.client, fl.vip, fl.cport, fl.vport, 0x02))
        } else {
            let fl = GenFlow { client: IpAddr::V6(Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 0x100)), vip: VIP6, ..fl };
            (fl, self.l4(fl.proto, fl.client, fl.vip, fl.cport, fl.vport, 0x02))
        };
        let kind = self.pick(&[0u8, 43, 60]);
        let mut body = vec![fl.proto, 0];
        body.extend(if kind == 43 { [4, 0, 0, 0, 0, 0] } else { [1, 4, 0, 0, 0, 0] });
        body.extend(l4);
        self.ip(fl.client, fl.vip, kind, body)
    }

    /// What is no service's: replies from backends, other addresses, ports and protocols,
    /// ARP, other EtherTypes, two VLAN tags.
    fn other(&mut self) -> Built {
        match self.rng.below(6) {
            0 => {
                let fl = self.pick(&self.flows.clone());
                let from = if fl.client.is_ipv4() { B4A.ip } else { B6A.ip };
                let l4 = self.l4(fl.proto, from, fl.client, 8080, fl.cport, 0x12);
                self.ip(from, fl.client, fl.proto, l4)
            }
            1 => {
                let to = self.pick(&[NEAR.ip, B4A.ip, IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8))]);
                let l4 = self.l4(IPPROTO_TCP, IpAddr::V4(Ipv4Addr::new(10, 250, 0, 100)), to, 40000, 80, 0x02);
                self.ip(IpAddr::V4(Ipv4Addr::new(10, 250, 0, 100)), to, IPPROTO_TCP, l4)
            }
            2 => {
                let proto = self.pick(&[1u8, 47, 132, 0]);
                let n = self.range(8, 40);
                let body = self.bytes(n);
                self.ip(IpAddr::V4(Ipv4Addr::new(10, 250, 0, 100)), VIP4, proto, body)
            }
            3 => self.neighbor(),
            4 => {
                let kind = self.pick(&[0x88ccu16, 0x88a8, 0x8100, 0x0801, 0x86dc]);
                let n = self.range(20, 80);
                let body = self.bytes(n);
                self.eth(kind, body)
            }
            _ => {
                // Two 802.1Q tags: xlb reads one.
                let fl = self.pick(&self.flows.clone());
                let mut b = self.segment_of(fl);
                b.bytes.splice(12..12, [0x81, 0x00, 0x00, 0x07]);
                b.l3 += 4;
                b
            }
        }
    }

    /// An ARP request or IPv6 neighbor solicitation, mostly for a VIP, now and then
    /// gratuitous, a reply, from ::, with another hop limit, without the address option.
    fn neighbor(&mut self) -> Built {
        let target = self.pick(&[VIP4, VIP6, VIP4, VIP6, NEAR.ip, IpAddr::V6(Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 9))]);
        let mut b = match target {
            IpAddr::V4(t) => {
                let mut arp = vec![0, 1, 8, 0, 6, 4, 0, if self.chance(90) { 1 } else { 2 }];
                arp.extend(CLIENT_MAC);
                arp.extend(if self.chance(95) { [10, 250, 0, 100] } else { t.octets() });
                arp.extend([0; 6]);
                arp.extend(t.octets());
                self.eth(0x0806, arp)
            }
            IpAddr::V6(t) => {
                let src = if self.chance(95) { Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 0x100) } else { Ipv6Addr::UNSPECIFIED };
                let mut m = vec![135, 0, 0, 0, 0, 0, 0, 0];
                m.extend(t.octets());
                if self.chance(70) {
                    m.extend([1, 1]);
                    m.extend(CLIENT_MAC);
                }
                let dst = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, t.segments()[7]);
                let sum = ones::add(ones::pseudo_header(IpAddr::V6(src), IpAddr::V6(dst), 58, m.len()), ones::fold(super::sums::words(&m)));
                m[2..4].copy_from_slice(&(!sum).to_be_bytes());
                let hop = if self.chance(95) { 255 } else { 64 };
                let packet = ipv6(src, dst, 58, hop, &m);
                self.eth(0x86dd, packet)
            }
        };
        if b.l3 == 14 {
            b.bytes[0..6].copy_from_slice(&[0xff; 6]);
        }
        if self.chance(10) {
            // Cut within the last bytes: the option, the target.
            let n = b.bytes.len() - self.range(1, 12);
            b.bytes.truncate(n);
        }
        b
    }

    fn segment_of(&mut self, fl: GenFlow) -> Built {
        let l4 = self.l4(fl.proto, fl.client, fl.vip, fl.cport, fl.vport, 0x02);
        self.ip(fl.client, fl.vip, fl.proto, l4)
    }

    /// Cut short, a bad header length, total length, version or payload length, a byte
    /// changed.
    fn mutate(&mut self, f: &mut Vec<u8>, l3: usize) {
        let v4 = f.get(l3).is_some_and(|b| b >> 4 == 4);
        match self.rng.below(6) {
            0 => {
                let n = self.rng.below(f.len());
                f.truncate(n.max(10));
            }
            1 if v4 => f[l3] = 0x40 | self.rng.below(16) as u8,
            2 if v4 && f.len() > l3 + 4 => {
                let len = u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]);
                let new = if self.chance(50) { self.rng.next() as u16 } else { len.wrapping_add(self.rng.below(9) as u16).wrapping_sub(4) };
                f[l3 + 2..l3 + 4].copy_from_slice(&new.to_be_bytes());
            }
            2 if f.len() > l3 + 6 => {
                let len = u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]);
                let new = if self.chance(50) { self.rng.next() as u16 } else { len.wrapping_add(self.rng.below(9) as u16).wrapping_sub(4) };
                f[l3 + 4..l3 + 6].copy_from_slice(&new.to_be_bytes());
            }
            3 => f[l3] = (f[l3] & 0x0f) | (self.rng.below(16) as u8) << 4,
            _ => {
                let at = self.rng.below(f.len());
                f[at] = self.rng.next() as u8;
            }
        }
    }
}

/// An IPv4 packet; `frag` holds the flags and fragment offset field.
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, ttl: u8, options: &[u8], frag: u16, body: &[u8]) -> Vec<u8> {
    let ihl = 20 + options.len();
    let mut h = vec![0x40 | (ihl / 4) as u8, 0];
    h.extend(((ihl + body.len()) as u16).to_be_bytes());
    h.extend([0x12, 0x34]);
    h.extend(frag.to_be_bytes());
    h.extend([ttl, proto, 0, 0]);
    h.extend(src.octets());
    h.extend(dst.octets());
    h.extend(options);
    let check = !ones::fold(super::sums::words(&h));
    h[10..12].copy_from_slice(&check.to_be_bytes());
    h.extend(body);
    h
}

fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, hop: u8, body: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend((body.len() as u16).to_be_bytes());
    h.extend([next, hop]);
    h.extend(src.octets());
    h.extend(dst.octets());
    h.extend(body);
    h
}
