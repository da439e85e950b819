//! A SYN or datagram to a service is rewritten for its backend, over IPv4 and IPv6, TCP and
//! UDP, in an 802.1Q tag, with IP options, to a backend behind the ingress (`XDP_TX`); what
//! is no service's is left untouched.

use crate::{
    net::{B4A, B6A, CLIENT4, CLIENT6, NEAR, VIP4, VIP6},
    packet::{IP_OPTIONS, tcp, udp},
    runner::{Case, dropped, fwd, run_table, untouched},
    services::web4,
};

pub fn cases() -> Vec<Case> {
    vec![
        fwd("tcp4", web4(40001), &B4A, 8080),
        fwd("udp4", udp(CLIENT4, 40002, VIP4, 53), &B4A, 5353),
        fwd("tcp6", tcp(CLIENT6, 40004, VIP6, 80), &B6A, 8080),
        fwd("udp6", udp(CLIENT6, 40005, VIP6, 53), &B6A, 5353),
        fwd("tcp4 in an 802.1Q tag", web4(40006).vlan(100), &B4A, 8080),
        fwd("tcp4 with IP options", web4(40007).ip_options(&IP_OPTIONS), &B4A, 8080),
        fwd("tcp4, near backend (XDP_TX)", tcp(CLIENT4, 40008, VIP4, 443), &NEAR, 8443),
        dropped("service without backends", tcp(CLIENT4, 40012, VIP4, 25), "no_backend"),
        untouched("non-service port", tcp(CLIENT4, 40013, VIP4, 81).bytes()),
        untouched("udp to a tcp service's port", udp(CLIENT4, 40014, VIP4, 80).bytes()),
    ]
}

#[test]
fn frames() {
    run_table(&cases());
}
