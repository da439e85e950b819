//! ICMP errors about a flow's replies reach the flow's backend, translated as its packets
//! are (RFC 5508): a router on the clients' side sends "fragmentation needed" (IPv4) or
//! "packet too big" (IPv6) to the VIP, quoting the reply VIP:port -> client; the backend
//! must get it addressed to itself, quoting the reply as it sent it (backend:port ->
//! client). Expected frames are built by etherparse for the backend's side, so every
//! checksum (outer and quoted IPv4 header, quoted L4 where quoted, ICMP) is checked against
//! an independent implementation. Errors about nothing xlb knows stay the stack's.

use std::{
    mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use etherparse::{IcmpEchoHeader, Icmpv4Type, Icmpv6Type, PacketBuilder, icmpv4::DestUnreachableHeader};
use lb_common::FwdMeta;

use crate::{
    harness::Fixture,
    net::{B4A, B6A, CLIENT_MAC, CLIENT4, CLIENT6, Dev, Host, VIP4, VIP6},
    packet::{Pkt, Seg, tcp, udp},
    runner::{XDP_PASS, action_name, fwd, hex},
    services::services,
};

const ROUTER4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 250, 0, 50));
const ROUTER6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 0x50));

/// An error frame from `router` to `to` quoting the first `quote` bytes of `about`'s IP
/// packet, between the given MACs.
fn error(router: IpAddr, to: IpAddr, about: &Pkt, quote: usize, ttl: u8, macs: ([u8; 6], [u8; 6])) -> Vec<u8> {
    let ip = &about.bytes()[14..];
    let quoted = &ip[..quote.min(ip.len())];
    let eth = PacketBuilder::ethernet2(macs.0, macs.1);
    let mut out = Vec::new();
    match (router, to) {
        (IpAddr::V4(r), IpAddr::V4(t)) => eth
            .ipv4(r.octets(), t.octets(), ttl)
            .icmpv4(Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 }))
            .write(&mut out, quoted),
        (IpAddr::V6(r), IpAddr::V6(t)) => eth.ipv6(r.octets(), t.octets(), ttl).icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 }).write(&mut out, quoted),
        _ => panic!("mixed address families"),
    }
    .unwrap();
    out
}

/// The reply a flow's `syn` gets, from `from:port`.
fn reply(syn: &Pkt, from: IpAddr, port: u16) -> Pkt {
    Pkt { src: from, dst: syn.src, sport: port, dport: syn.sport, ..syn.seg(Seg::SynAck) }
}

#[test]
fn errors_about_replies_reach_the_backend() {
    let mut fx = Fixture::new(&services());
    let flows: [(&str, Pkt, &'static Host, u16, IpAddr); 4] = [
        ("tcp4", tcp(CLIENT4, 40101, VIP4, 80), &B4A, 8080, ROUTER4),
        ("udp4", udp(CLIENT4, 40102, VIP4, 53), &B4A, 5353, ROUTER4),
        ("tcp6", tcp(CLIENT6, 40103, VIP6, 80), &B6A, 8080, ROUTER6),
        ("udp6", udp(CLIENT6, 40104, VIP6, 53), &B6A, 5353, ROUTER6),
    ];
    for (name, syn, host, port, router) in flows {
        fx.check(&fwd(name, syn.clone(), host, port));
        let (seen, sent) = (reply(&syn, syn.dst, syn.dport), reply(&syn, host.ip, port));
        let header = if syn.src.is_ipv4() { 20 } else { 40 };
        // The 8 bytes of L4 every router quotes (a UDP checksum among them), and all of it.
        for quote in [header + 8, usize::MAX] {
            let input = error(router, syn.dst, &seen, quote, 64, (CLIENT_MAC, Dev::Fx0.mac()));
            let want = error(router, host.ip, &sent, quote, 63, (host.dev.mac(), host.mac));
            let out = fx.run(&input).unwrap_or_else(|e| panic!("{name}: test run: errno {e}"));
            let what = format!("{name}, error quoting {} bytes", quote.min(input.len() - 14 - header - 8));
            assert_eq!(out.action, XDP_PASS, "{what}: {}", action_name(out.action));
            assert_eq!(out.frame, want, "{what}: frame\n  in: {}\n out: {}\nwant: {}", hex(&input), hex(&out.frame), hex(&want));
            let meta = (out.meta.len() == mem::size_of::<FwdMeta>()).then(|| u32::from_ne_bytes(out.meta[4..8].try_into().unwrap()));
            assert_eq!(meta, Some(fx.ifindex(host.dev)), "{what}: metadata {}", hex(&out.meta));
        }
    }
}

#[test]
fn errors_about_nothing_xlb_knows_stay_the_stacks() {
    let mut fx = Fixture::new(&services());
    let syn = tcp(CLIENT4, 40110, VIP4, 80);
    let untouched = [
        // No flow from that client port.
        error(ROUTER4, VIP4, &reply(&syn, VIP4, 80), 28, 64, (CLIENT_MAC, Dev::Fx0.mac())),
        // Not a service's port.
        error(ROUTER4, VIP4, &reply(&tcp(CLIENT4, 40110, VIP4, 81), VIP4, 81), 28, 64, (CLIENT_MAC, Dev::Fx0.mac())),
        // Not an error: an echo request to the VIP.
        {
            let mut out = Vec::new();
            PacketBuilder::ethernet2(CLIENT_MAC, Dev::Fx0.mac())
                .ipv4([10, 250, 0, 50], [10, 250, 0, 1], 64)
                .icmpv4(Icmpv4Type::EchoRequest(IcmpEchoHeader { id: 1, seq: 1 }))
                .write(&mut out, b"ping")
                .unwrap();
            out
        },
    ];
    for input in untouched {
        let out = fx.run(&input).expect("test run");
        assert_eq!((out.action, &out.frame, out.meta.len()), (XDP_PASS, &input, 0), "changed: {}", hex(&input));
    }
}
