//! Checksums XDP cannot finish: a UDP datagram without checksum keeps none, and a
//! CHECKSUM_PARTIAL packet (a pseudo-header sum, as from a veth) leaves its field as it was
//! and hands TC the differences to fold in (checked in `Fixture::check` with `ones`), also
//! for a backend behind the ingress, which then goes through TC instead of `XDP_TX`.

use crate::{
    net::{B4A, B6A, CLIENT4, CLIENT6, NEAR, VIP4, VIP6},
    packet::{L4Csum, tcp, udp},
    runner::{Case, fwd, run_table},
    services::web4,
};

pub fn cases() -> Vec<Case> {
    vec![
        fwd("udp4 without checksum", udp(CLIENT4, 40003, VIP4, 53).csum(L4Csum::Raw(0)), &B4A, 5353),
        fwd("tcp4 partial checksum", web4(40009).csum(L4Csum::Partial), &B4A, 8080),
        fwd("udp6 partial checksum", udp(CLIENT6, 40010, VIP6, 53).csum(L4Csum::Partial), &B6A, 5353),
        fwd("tcp4 partial checksum, near backend", tcp(CLIENT4, 40011, VIP4, 443).csum(L4Csum::Partial), &NEAR, 8443),
    ]
}

#[test]
fn frames() {
    run_table(&cases());
}
