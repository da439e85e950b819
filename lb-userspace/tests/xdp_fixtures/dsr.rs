//! Direct server return. `forwarding: tunnel`: the client's packet leaves unchanged inside
//! an IPIP header from the host (fx1's address, its source towards the backends) to the
//! chosen backend; `forwarding: direct`: unchanged but for the MACs of the backend. A TCP
//! segment of a flow the node does not know is steered by the table (the backend its SYN
//! got), not left to the stack; and two nodes whose backends were listed in different
//! orders choose alike.

use std::{mem, net::IpAddr};

use etherparse::{IpNumber, Ipv4Header};
use lb_common::{FwdMeta, IPPROTO_TCP, IPPROTO_UDP, ServiceKey};
use xlb::{config::Forwarding, plan::Desired};

use crate::{
    harness::{Fixture, LIMITS, conn_keys},
    net::{B4A, B4B, B4C, CLIENT4, Dev, Host, NEAR, TRIO, VIP4},
    packet::{L4Csum, Pkt, Seg, tcp, udp},
    runner::{XDP_PASS, action_name, hex, no_flow},
    services::{WEB_PORT, predict, svc, web_flows},
};

/// fx1's address: the source the host picks towards the backends.
const SOURCE: [u8; 4] = [10, 251, 0, 1];

fn tunnel(mut d: Desired) -> Desired {
    d.forwarding = Forwarding::Tunnel;
    d
}

/// VIP4:80/tcp and VIP4:53/udp over `hosts`, by tunnel.
fn services(hosts: &[&Host]) -> Vec<Desired> {
    let backends = |port| hosts.iter().map(|h| (*h, port)).collect::<Vec<_>>();
    vec![tunnel(svc(VIP4, 80, IPPROTO_TCP, &backends(WEB_PORT))), tunnel(svc(VIP4, 53, IPPROTO_UDP, &backends(WEB_PORT)))]
}

/// The frame xlb must send for `p` to `host`: next hop's MACs, an outer IPv4 header
/// (built by etherparse), the client's packet byte for byte.
fn encapsulated(p: &Pkt, host: &Host) -> Vec<u8> {
    let inner = p.bytes()[14..].to_vec();
    let IpAddr::V4(dst) = host.ip else { panic!("IPv4 only") };
    let mut outer = Ipv4Header::new(inner.len() as u16, 64, IpNumber::IPV4, SOURCE, dst.octets()).unwrap();
    outer.dont_fragment = false;
    outer.identification = 0;
    outer.header_checksum = outer.calc_header_checksum();
    let mut frame = Vec::new();
    frame.extend_from_slice(&host.mac);
    frame.extend_from_slice(&host.dev.mac());
    frame.extend_from_slice(&[0x08, 0x00]);
    outer.write(&mut frame).unwrap();
    frame.extend_from_slice(&inner);
    frame
}

impl Fixture {
    /// Sends `p` and checks it left encapsulated for the backend the table predicts,
    /// through TC to fx1 (not in `TX_PORTS`); returns that backend.
    fn tunnelled(&mut self, what: &str, d: &Desired, p: &Pkt) -> &'static Host {
        let ip = predict(d, &LIMITS, p);
        let host = *TRIO.iter().find(|h| h.ip == ip).expect("a TRIO backend");
        let before = self.drops();
        let out = self.run(&p.bytes()).unwrap_or_else(|e| panic!("{what}: test run failed: {e}"));
        assert_eq!(self.drops_since(&before), vec![], "{what}: drop counters moved");
        assert!(out.action == XDP_PASS, "{what}: got {}", action_name(out.action));
        let want = encapsulated(p, host);
        assert!(out.frame == want, "{what}: frame\n  got: {}\n want: {}", hex(&out.frame), hex(&want));
        assert_eq!(out.meta.len(), mem::size_of::<FwdMeta>(), "{what}: metadata {}", hex(&out.meta));
        let w = |i: usize| u32::from_ne_bytes(out.meta[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!((w(0), w(1), w(4)), (FwdMeta::MAGIC, self.ifindex(Dev::Fx1), 0), "{what}: metadata");
        host
    }
}

#[test]
fn new_flows_leave_encapsulated() {
    let d = services(&TRIO);
    let mut fx = Fixture::new(&d);
    for p in web_flows(24) {
        let host = fx.tunnelled("syn", &d[0], &p);
        assert_eq!(fx.tunnelled("ack of the same flow", &d[0], &p.seg(Seg::Ack)).ip, host.ip);
    }
    fx.tunnelled("udp datagram", &d[1], &udp(CLIENT4, 41000, VIP4, 53));
}

/// A flow that ECMP moved here mid-stream: its first segment is an ACK, steered to the
/// backend its SYN got on the other node, counted as a new flow of this node, and pinned
/// by an established entry (no half-open one).
#[test]
fn unknown_segments_are_steered_by_the_table() {
    let d = services(&TRIO);
    let mut fx = Fixture::new(&d);
    let key = ServiceKey::new(VIP4, 80, IPPROTO_TCP);
    for (i, p) in web_flows(24).iter().enumerate() {
        let before = fx.new_flows(key);
        let host = fx.tunnelled("ack of a flow this node never saw", &d[0], &p.seg(Seg::Ack));
        assert_eq!(fx.new_flows(key) - before, 1, "flow {i}: counted as a new flow of this node");
        let [service, _] = conn_keys(p, host, WEB_PORT);
        assert!(fx.conntrack().get(&service, 0).is_ok(), "flow {i}: no established entry");
        assert!(fx.half_open().get(&service, 0).is_err(), "flow {i}: a half-open entry");
        fx.tunnelled("next segment", &d[0], &p.seg(Seg::FinAck));
    }
}

/// The default (NAT) service beside it still leaves unknown segments to the stack.
#[test]
fn nat_services_still_leave_unknown_segments_to_the_stack() {
    let mut fx = Fixture::new(&[svc(VIP4, 80, IPPROTO_TCP, &[(&B4A, WEB_PORT)])]);
    fx.check(&no_flow("ack of an unknown flow, nat", tcp(CLIENT4, 41001, VIP4, 80).seg(Seg::Ack)));
}

/// Two nodes with the same backends, found in different orders (so with other ids): every
/// flow gets the same backend on both.
#[test]
fn nodes_choose_alike_whatever_the_backend_order() {
    let (one, two) = (services(&[&B4A, &B4B, &B4C]), services(&[&B4C, &B4A, &B4B]));
    let mut a = Fixture::new(&one);
    let picks: Vec<IpAddr> = web_flows(48).iter().map(|p| a.tunnelled("node a", &one[0], p).ip).collect();
    drop(a);
    let mut b = Fixture::new(&two);
    for (p, want) in web_flows(48).iter().zip(picks) {
        assert_eq!(b.tunnelled("node b", &two[0], p).ip, want, "flow from port {}", p.sport);
    }
}

/// `forwarding: direct`: the frame as it came, but for the backend's MACs, out of the
/// backend's interface by TC's plain redirect (`F_BACK_OUT`: the stack would route it by
/// the VIP; a partial checksum stays partial), also back out of fx0. A segment of an
/// unknown flow is steered like a SYN.
#[test]
fn direct_sends_the_frame_unchanged_to_the_backends_mac() {
    let mut d = svc(VIP4, 80, IPPROTO_TCP, &[(&B4B, 80)]);
    d.forwarding = Forwarding::Direct;
    let mut near = svc(VIP4, 443, IPPROTO_TCP, &[(&NEAR, 443)]);
    near.forwarding = Forwarding::Direct;
    let mut fx = Fixture::new(&[d, near]);
    let cases = [
        ("syn", tcp(CLIENT4, 41010, VIP4, 80), &B4B),
        ("ack of an unknown flow", tcp(CLIENT4, 41011, VIP4, 80).seg(Seg::Ack), &B4B),
        ("partial checksum", tcp(CLIENT4, 41012, VIP4, 80).csum(L4Csum::Partial), &B4B),
        ("backend on the ingress interface", tcp(CLIENT4, 41013, VIP4, 443), &NEAR),
    ];
    for (what, p, host) in cases {
        let before = fx.drops();
        let out = fx.run(&p.bytes()).unwrap();
        assert_eq!(fx.drops_since(&before), vec![], "{what}: drop counters moved");
        let want = Pkt { src_mac: host.dev.mac(), dst_mac: host.mac, ..p.clone() }.bytes();
        assert!(out.action == XDP_PASS && out.frame == want, "{what}: {}\n  got: {}\n want: {}", action_name(out.action), hex(&out.frame), hex(&want));
        let w = |i: usize| u32::from_ne_bytes(out.meta[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!((w(0), w(1), w(4)), (FwdMeta::MAGIC, fx.ifindex(host.dev), FwdMeta::F_BACK_OUT), "{what}: metadata");
    }
}
