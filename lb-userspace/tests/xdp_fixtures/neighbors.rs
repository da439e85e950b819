//! ARP and NDP for VIPs: a request for a VIP's address is answered by the XDP program in
//! place with the receiving interface's MAC and passed to `xlb_fwd` to go back out (a
//! `FwdMeta` with `F_BACK_OUT`), so a VIP that is no interface's
//! address is reachable from the LAN; requests for other addresses, gratuitous ARP,
//! duplicate address detection and malformed solicitations are left to the stack, and a
//! VIP no service has any more is not answered. Replies are compared with frames built by
//! etherparse (its own ICMPv6 checksum).

use std::net::{IpAddr, Ipv6Addr};

use etherparse::{ArpEthIpv4Packet, ArpOperation, Icmpv6Type, PacketBuilder, icmpv6::NeighborAdvertisementHeader};
use lb_common::{FwdMeta, IPPROTO_TCP};

use crate::{
    harness::Fixture,
    net::{CLIENT_MAC, CLIENT6, Dev, VIP4, VIP6},
    runner::{XDP_PASS, hex},
    services::{WEB_PORT, svc},
};

const CLIENT4_OCTETS: [u8; 4] = [10, 250, 0, 100];

fn arp(op: ArpOperation, sender: ([u8; 6], [u8; 4]), target: ([u8; 6], [u8; 4]), eth_dst: [u8; 6]) -> Vec<u8> {
    let a = ArpEthIpv4Packet { operation: op, sender_mac: sender.0, sender_ipv4: sender.1, target_mac: target.0, target_ipv4: target.1 };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(sender.0, eth_dst).arp(a.into()).write(&mut out).unwrap();
    out
}

fn v4(ip: IpAddr) -> [u8; 4] {
    match ip {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(_) => unreachable!(),
    }
}

fn v6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(_) => unreachable!(),
    }
}

/// A neighbor solicitation from `src` for `target`; `lla` adds the source link-layer option.
fn solicit(src: [u8; 16], target: [u8; 16], hop_limit: u8, lla: bool) -> Vec<u8> {
    let mut payload = target.to_vec();
    if lla {
        payload.extend([1, 1]);
        payload.extend(CLIENT_MAC);
    }
    let mut out = Vec::new();
    let mut group = Ipv6Addr::from(target).octets();
    group[..13].copy_from_slice(&[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff]);
    PacketBuilder::ethernet2(CLIENT_MAC, [0x33, 0x33, 0xff, group[13], group[14], group[15]])
        .ipv6(src, group, hop_limit)
        .icmpv6(Icmpv6Type::NeighborSolicitation)
        .write(&mut out, &payload)
        .unwrap();
    out
}

fn advert(lla: bool) -> Vec<u8> {
    let mut payload = v6(VIP6).to_vec();
    if lla {
        payload.extend([2, 1]);
        payload.extend(Dev::Fx0.mac());
    }
    let na = NeighborAdvertisementHeader { router: false, solicited: true, r#override: true };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(Dev::Fx0.mac(), CLIENT_MAC)
        .ipv6(v6(VIP6), v6(CLIENT6), 255)
        .icmpv6(Icmpv6Type::NeighborAdvertisement(na))
        .write(&mut out, &payload)
        .unwrap();
    out
}

/// Runs `input`: an answer (`Some(frame)`) goes to TC with metadata to send it back out
/// of fx0; anything else passes untouched, without metadata.
fn expect(fx: &mut Fixture, name: &str, input: &[u8], answer: Option<&[u8]>) {
    let out = fx.run(input).unwrap_or_else(|e| panic!("{name}: test run failed: errno {e}"));
    assert_eq!(out.action, XDP_PASS, "{name}: action");
    let meta = answer.map(|_| FwdMeta { magic: FwdMeta::MAGIC, ifindex: fx.ifindex(Dev::Fx0), flags: FwdMeta::F_BACK_OUT, ..Default::default() });
    let got_meta = (out.meta.len() == std::mem::size_of::<FwdMeta>()).then(|| unsafe { (out.meta.as_ptr() as *const FwdMeta).read_unaligned() });
    assert_eq!(got_meta, meta, "{name}: metadata {}", hex(&out.meta));
    assert_eq!(hex(&out.frame), hex(answer.unwrap_or(input)), "{name}: frame");
}

#[test]
fn vips_are_answered_for_arp_and_ndp() {
    let mut fx = Fixture::new(&[svc(VIP4, 80, IPPROTO_TCP, &[]), svc(VIP6, 80, IPPROTO_TCP, &[])]);
    fx.dp.answer_neighbors_on(Dev::Fx0.name()).expect("writing fx0's MAC");
    let client = (CLIENT_MAC, CLIENT4_OCTETS);
    let asks = |ip: [u8; 4]| arp(ArpOperation::REQUEST, client, ([0; 6], ip), [0xff; 6]);
    let answer = arp(ArpOperation::REPLY, (Dev::Fx0.mac(), v4(VIP4)), client, CLIENT_MAC);
    // Eth + ARP is 42 bytes; the reply keeps the request's length.
    expect(&mut fx, "arp request for a vip", &asks(v4(VIP4)), Some(&answer));
    let other = asks([10, 250, 0, 77]);
    expect(&mut fx, "arp request for another address", &other, None);
    let gratuitous = arp(ArpOperation::REQUEST, (CLIENT_MAC, v4(VIP4)), ([0; 6], v4(VIP4)), [0xff; 6]);
    expect(&mut fx, "gratuitous arp for a vip", &gratuitous, None);
    let reply = arp(ArpOperation::REPLY, client, (Dev::Fx0.mac(), v4(VIP4)), Dev::Fx0.mac());
    expect(&mut fx, "arp reply naming a vip", &reply, None);
    let short = &asks(v4(VIP4))[..30];
    expect(&mut fx, "truncated arp request", short, None);

    for lla in [true, false] {
        let ns = solicit(v6(CLIENT6), v6(VIP6), 255, lla);
        expect(&mut fx, if lla { "ns for a vip" } else { "ns for a vip, no link-layer option" }, &ns, Some(&advert(lla)));
    }
    for (name, ns) in [
        ("ns for another address", solicit(v6(CLIENT6), v6("fd00:250::77".parse().unwrap()), 255, true)),
        ("ns with hop limit 64 (forwarded)", solicit(v6(CLIENT6), v6(VIP6), 64, true)),
        ("duplicate address detection", solicit([0; 16], v6(VIP6), 255, false)),
        // The source link-layer option cut short: not answered, nor changed (the
        // differential test found it passed half rewritten into an advertisement).
        ("ns for a vip, its link-layer option cut short", solicit(v6(CLIENT6), v6(VIP6), 255, true)[..14 + 40 + 24 + 5].to_vec()),
    ] {
        expect(&mut fx, name, &ns, None);
    }

    fx.sync(&[svc(VIP6, 80, IPPROTO_TCP, &[(&crate::net::B6A, WEB_PORT)])]);
    let ask = asks(v4(VIP4));
    expect(&mut fx, "arp request for a vip no service has any more", &ask, None);
    expect(&mut fx, "ns for a vip still in use", &solicit(v6(CLIENT6), v6(VIP6), 255, true), Some(&advert(true)));
}
