//! Only a SYN opens a TCP flow: other segments of a flow without an entry are left to the
//! stack (`no_flow`), and an established flow stays on its backend when backends are added.

use lb_common::IPPROTO_TCP;

use crate::{
    harness::Fixture,
    net::{B4A, B4B, CLIENT4, CLIENT6, Host, VIP4, VIP6},
    packet::{Pkt, Seg, tcp},
    runner::{Case, fwd, fwd_any, no_flow, run_table},
    services::{svc, web4},
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
    let fresh: Vec<&Host> = (50000..50032)
        .map(|port| {
            fx.check(&fwd_any("new flow, two backends", tcp(CLIENT4, port, VIP4, 80), &[&B4A, &B4B], 8080)).unwrap()
        })
        .collect();
    let to_a = fresh.iter().filter(|h| h.ip == B4A.ip).count() as u64;
    assert!(0 < to_a && to_a < 32, "new flows should use both backends, {to_a} of 32 went to {}", B4A.ip);

    let stats = fx.dp.counters().expect("counters");
    let a = stats.backends.iter().find(|b| b.addr == B4A.ip).expect("counters of B4A").counters;
    let flows = flows.len() as u64;
    assert_eq!((a.packets, a.new_flows), (2 * flows + to_a, flows + to_a), "{} counters (packets, new flows)", B4A.ip);
}
