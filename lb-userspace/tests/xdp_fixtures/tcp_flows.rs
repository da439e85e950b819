//! Only a SYN opens a TCP flow: other segments of a flow without an entry are left to the
//! stack (`no_flow`), and an established flow stays on its backend when backends are added.
//! Once a flow has ended (an RST, or the last ACK after both FINs), its backend's packets
//! to the client's port are no longer its replies.

use std::net::IpAddr;

use lb_common::{Conn, IPPROTO_TCP};

use crate::{
    harness::{Fixture, conn_keys},
    net::{B4A, B4B, CLIENT4, CLIENT6, Host, VIP4, VIP6},
    packet::{Pkt, Seg, tcp},
    runner::{Case, fwd, fwd_any, no_flow, run_table},
    services::{WEB_PORT, svc, web4},
};

pub fn cases() -> Vec<Case> {
    vec![
        no_flow("ack of an unknown flow", web4(40024).seg(Seg::Ack)),
        no_flow("fin+ack of an unknown flow", web4(40025).seg(Seg::FinAck)),
        no_flow("rst of an unknown flow", web4(40026).seg(Seg::Rst)),
        no_flow("syn+ack to a vip", web4(40027).seg(Seg::SynAck)),
        no_flow("tcp6 ack of an unknown flow", tcp(CLIENT6, 40028, VIP6, 80).seg(Seg::Ack)),
        no_flow("ack of an unknown flow, service without backends", tcp(CLIENT4, 40029, VIP4, 25).seg(Seg::Ack)),
    ]
}

#[test]
fn frames() {
    run_table(&cases());
}

#[test]
fn established_flows_keep_their_backend() {
    let mut fx = Fixture::new(&[svc(VIP4, 80, IPPROTO_TCP, &[(&B4A, 8080)])]);
    let flows: Vec<Pkt> = (40000..40016).map(|port| tcp(CLIENT4, port, VIP4, 80)).collect();
    for p in &flows {
        fx.check(&fwd("new flow", p.clone(), &B4A, 8080));
    }
    fx.sync(&[svc(VIP4, 80, IPPROTO_TCP, &[(&B4A, 8080), (&B4B, 8080)])]);
    for p in &flows {
        fx.check(&fwd("established flow after a backend was added", p.seg(Seg::Ack), &B4A, 8080));
    }
    let fresh: Vec<&Host> =
        (50000..50032).map(|port| fx.check(&fwd_any("new flow, two backends", tcp(CLIENT4, port, VIP4, 80), &[&B4A, &B4B], 8080)).unwrap()).collect();
    let to_a = fresh.iter().filter(|h| h.ip == B4A.ip).count() as u64;
    assert!(0 < to_a && to_a < 32, "new flows should use both backends, {to_a} of 32 went to {}", B4A.ip);

    let stats = fx.dp.counters().expect("counters");
    let a = stats.backends.iter().find(|b| b.addr == B4A.ip).expect("counters of B4A").counters;
    let flows = flows.len() as u64;
    assert_eq!((a.packets, a.new_flows), (2 * flows + to_a, flows + to_a), "{} counters (packets, new flows)", B4A.ip);
}

/// A segment from the backend to `p`'s client, as the backend sends it.
fn from_backend(p: &Pkt, seg: Seg) -> Pkt {
    Pkt { src: B4A.ip, dst: p.src, sport: WEB_PORT, dport: p.sport, ..p.seg(seg) }
}

/// Whether the reply program gave `p`'s backend segment the VIP as its source.
fn rewritten(fx: &mut Fixture, p: &Pkt, seg: Seg) -> bool {
    let out = fx.run_reply(&from_backend(p, seg).bytes()).expect("test run of the reply program");
    let IpAddr::V4(vip) = VIP4 else { unreachable!() };
    out.frame.get(26..30) == Some(&vip.octets()[..])
}

/// A VIP flow closed by FINs both ways (either side first) or by an RST from either side:
/// its segments up to the end go through both ways; after the last ACK or the RST, a
/// connection from the same client port straight to the backend (its SYN-ACK) is left
/// untouched, while the flow's own service entry stays, closed and ended, for a
/// retransmission to reach its backend until `tcp_closed_timeout`.
#[test]
fn ended_flows_leave_direct_connections_alone() {
    let mut fx = Fixture::new(&[svc(VIP4, 80, IPPROTO_TCP, &[(&B4A, WEB_PORT)])]);
    // Each close: its segments in order, `true` for the client's (forward), with flags.
    let closes: [(&str, &[(bool, Seg)]); 4] = [
        ("client closes first", &[(true, Seg::FinAck), (false, Seg::Ack), (false, Seg::FinAck), (true, Seg::Ack)]),
        ("backend closes first", &[(false, Seg::FinAck), (true, Seg::Ack), (true, Seg::FinAck), (false, Seg::Ack)]),
        ("client resets", &[(true, Seg::Rst)]),
        ("backend resets", &[(false, Seg::Rst)]),
    ];
    for (i, (what, segments)) in closes.iter().enumerate() {
        let p = tcp(CLIENT4, 40060 + i as u16, VIP4, 80);
        fx.establish(what, &p, &[&B4A]);
        assert!(rewritten(&mut fx, &p, Seg::Ack), "{what}: a reply of the open flow keeps the VIP as its source");
        for &(client, seg) in segments.iter() {
            if client {
                fx.send(what, &p.seg(seg), &[&B4A]);
            } else {
                assert!(rewritten(&mut fx, &p, seg), "{what}: the backend's {seg:?} of the closing flow is rewritten");
            }
        }
        assert!(!rewritten(&mut fx, &p, Seg::SynAck), "{what}: a direct connection's SYN-ACK on the ended flow's ports is rewritten");
        let [service, backend] = conn_keys(&p, &B4A, WEB_PORT);
        let ct = fx.conntrack();
        let flags = ct.get(&service, 0).expect("the ended flow's service entry").flags;
        assert_eq!(flags & (Conn::F_CLOSED | Conn::F_ENDED), Conn::F_CLOSED | Conn::F_ENDED, "{what}: service entry flags {flags:#x}");
        assert!(ct.get(&backend, 0).is_err(), "{what}: the ended flow's reply entry is still there");
        fx.send("a retransmission of the ended flow", &p.seg(Seg::Ack), &[&B4A]);
    }
}
