//! A router's hop: the TTL (hop limit) goes down by one; at 1 or 0 the packet is left to
//! the stack, which answers with ICMP, and counted as `ttl_expired`.

use crate::{
    net::{B4A, B6A, CLIENT4, CLIENT6, VIP4, VIP6},
    packet::{tcp, udp},
    runner::{Case, Want, fwd, run_table, untouched},
    services::web4,
};

pub fn cases() -> Vec<Case> {
    let expired = |name, input: Vec<u8>| Case { name, input, want: Want::Passed("ttl_expired") };
    vec![
        fwd("tcp4 ttl 2", web4(40030).ttl(2), &B4A, 8080),
        fwd("tcp6 hop limit 2", tcp(CLIENT6, 40031, VIP6, 80).ttl(2), &B6A, 8080),
        fwd("tcp4 ttl 255", web4(40032).ttl(255), &B4A, 8080),
        expired("tcp4 ttl 1", web4(40033).ttl(1).bytes()),
        expired("udp4 ttl 0", udp(CLIENT4, 40034, VIP4, 53).ttl(0).bytes()),
        expired("tcp6 hop limit 1", tcp(CLIENT6, 40035, VIP6, 80).ttl(1).bytes()),
        untouched("ttl 1, not a service", tcp(CLIENT4, 40036, VIP4, 81).ttl(1).bytes()),
    ]
}

#[test]
fn frames() {
    run_table(&cases());
}
