//! The frames of the cases: a TCP or UDP packet described field by field, serialized by
//! etherparse (an implementation independent of xlb's), and what xlb must make of it.

use std::net::IpAddr;

use etherparse::{ArpEthIpv4Packet, ArpOperation, IpFragOffset, IpHeaders, Ipv4Header, Ipv6Header, PacketBuilder, VlanId, ip_number};
use lb_common::{IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    net::{CLIENT_MAC, Dev, Host},
    ones,
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum L4 {
    Tcp,
    Udp,
}

/// A TCP segment's flags: only a SYN may open a flow.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Seg {
    Syn,
    SynAck,
    Ack,
    FinAck,
    Rst,
}

/// What the L4 checksum field holds.
#[derive(Clone, Copy, Debug)]
pub enum L4Csum {
    /// The complete checksum, as etherparse computes it.
    Full,
    /// The pseudo-header sum, as a CHECKSUM_PARTIAL packet from a veth carries it.
    Partial,
    /// This value (network order), e.g. 0 for a UDP packet without checksum.
    Raw(u16),
}

/// Router alert, three no-ops and end of options: 8 bytes, IHL 7.
pub const IP_OPTIONS: [u8; 8] = [0x94, 4, 0, 0, 1, 1, 1, 0];

/// Odd length, so checksums cover a padded last byte.
const PAYLOAD: &[u8] = b"xlb fixture";

/// A TCP or UDP frame, described field by field and serialized by etherparse.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    pub sport: u16,
    pub dport: u16,
    pub ip_options: Vec<u8>,
    /// IPv4 more-fragments flag and fragment offset (8-byte units).
    pub frag: (bool, u16),
    pub csum: L4Csum,
    /// TCP flags; ignored for UDP.
    pub seg: Seg,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
}

/// A client's SYN to `dst:dport`, as it arrives on fx0.
pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Pkt {
    Pkt {
        src_mac: CLIENT_MAC,
        dst_mac: Dev::Fx0.mac(),
        vlan: None,
        src,
        dst,
        l4: L4::Tcp,
        sport,
        dport,
        ip_options: Vec::new(),
        frag: (false, 0),
        csum: L4Csum::Full,
        seg: Seg::Syn,
        ttl: 64,
    }
}

pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Pkt {
    Pkt { l4: L4::Udp, ..tcp(src, sport, dst, dport) }
}

impl Pkt {
    pub fn vlan(self, id: u16) -> Self {
        Pkt { vlan: Some(id), ..self }
    }

    pub fn ip_options(self, options: &[u8]) -> Self {
        Pkt { ip_options: options.to_vec(), ..self }
    }

    pub fn fragment(self, more: bool, offset: u16) -> Self {
        Pkt { frag: (more, offset), ..self }
    }

    pub fn csum(self, csum: L4Csum) -> Self {
        Pkt { csum, ..self }
    }

    pub fn ttl(self, ttl: u8) -> Self {
        Pkt { ttl, ..self }
    }

    /// The same flow's segment with these flags.
    pub fn seg(&self, seg: Seg) -> Self {
        Pkt { seg, ..self.clone() }
    }

    /// The packet as xlb must leave it for `host:port`: destination rewritten, the next
    /// hop's MACs, one hop less, and a partial checksum left as it was (TC finishes it).
    pub fn to(&self, host: &Host, port: u16) -> Pkt {
        let csum = match self.csum {
            L4Csum::Partial => L4Csum::Raw(self.pseudo_sum()),
            c => c,
        };
        Pkt { src_mac: host.dev.mac(), dst_mac: host.mac, dst: host.ip, dport: port, csum, ttl: self.ttl - 1, ..self.clone() }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let ip = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut h = Ipv4Header::new(0, self.ttl, ip_number::TCP, s.octets(), d.octets()).unwrap();
                h.options = self.ip_options.as_slice().try_into().unwrap();
                h.more_fragments = self.frag.0;
                h.fragment_offset = IpFragOffset::try_new(self.frag.1).unwrap();
                IpHeaders::Ipv4(h, Default::default())
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let h = Ipv6Header { hop_limit: self.ttl, source: s.octets(), destination: d.octets(), ..Default::default() };
                IpHeaders::Ipv6(h, Default::default())
            }
            _ => panic!("mixed address families"),
        };
        let eth = PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        let ip = match self.vlan {
            Some(id) => eth.single_vlan(VlanId::try_new(id).unwrap()).ip(ip),
            None => eth.ip(ip),
        };
        let mut out = Vec::new();
        match self.l4 {
            L4::Tcp => {
                let tcp = ip.tcp(self.sport, self.dport, 1, 64240);
                match self.seg {
                    Seg::Syn => tcp.syn(),
                    Seg::SynAck => tcp.syn().ack(1),
                    Seg::Ack => tcp.ack(1),
                    Seg::FinAck => tcp.fin().ack(1),
                    Seg::Rst => tcp.rst(),
                }
                .write(&mut out, PAYLOAD)
            }
            L4::Udp => ip.udp(self.sport, self.dport).write(&mut out, PAYLOAD),
        }
        .unwrap();
        let field = match self.csum {
            L4Csum::Full => None,
            L4Csum::Partial => Some(self.pseudo_sum()),
            L4Csum::Raw(v) => Some(v),
        };
        if let Some(v) = field {
            let off = self.csum_offset();
            out[off..off + 2].copy_from_slice(&v.to_be_bytes());
        }
        out
    }

    /// The first `len` bytes of the frame.
    pub fn cut(&self, len: usize) -> Vec<u8> {
        let mut b = self.bytes();
        assert!(len < b.len(), "cutting a {}-byte frame to {len}", b.len());
        b.truncate(len);
        b
    }

    fn l3_offset(&self) -> usize {
        14 + if self.vlan.is_some() { 4 } else { 0 }
    }

    fn l4_offset(&self) -> usize {
        self.l3_offset() + if self.src.is_ipv4() { 20 + self.ip_options.len() } else { 40 }
    }

    fn csum_offset(&self) -> usize {
        self.l4_offset() + if self.l4 == L4::Tcp { 16 } else { 6 }
    }

    pub fn proto(&self) -> u8 {
        if self.l4 == L4::Tcp { IPPROTO_TCP } else { IPPROTO_UDP }
    }

    pub fn pseudo_sum(&self) -> u16 {
        let l4_len = if self.l4 == L4::Tcp { 20 } else { 8 } + PAYLOAD.len();
        ones::pseudo_header(self.src, self.dst, self.proto(), l4_len)
    }

    /// The L4 checksum field of the serialized frame.
    pub fn l4_csum(&self) -> u16 {
        let b = self.bytes();
        u16::from_be_bytes([b[self.csum_offset()], b[self.csum_offset() + 1]])
    }
}

pub fn arp_request() -> Vec<u8> {
    let arp = ArpEthIpv4Packet {
        operation: ArpOperation::REQUEST,
        sender_mac: CLIENT_MAC,
        sender_ipv4: [10, 250, 0, 100],
        target_mac: [0; 6],
        target_ipv4: [10, 250, 0, 1],
    };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, [0xff; 6]).arp(arp.into()).write(&mut out).unwrap();
    out
}

/// `client:port`, for messages.
pub fn flow_name(p: &Pkt) -> String {
    format!("{}:{}", p.src, p.sport)
}
