//! A SYN flood churns the half-open table only: spoofed sources never answer the SYN-ACK,
//! so their flows never reach the connection table, and established flows keep their
//! entries and their backends however many SYNs arrive.

use std::net::IpAddr;

use lb_common::IPPROTO_TCP;

use crate::{
    harness::{Fixture, LIMITS},
    net::{B4A, B4B, CLIENT4, Host, VIP4},
    packet::{Seg, flow_name, tcp},
    runner::no_flow,
    services::{WEB_PORT, svc},
};

/// Spoofed SYNs sent by the test: the million, bounded (a few seconds of test runs).
const FLOOD: u32 = 1_000_000;
/// Established flows that must come through: half the connection table's entries.
const ESTABLISHED: u16 = 1_024;

/// 1M SYNs from 1M spoofed (address, port) pairs into the VIP, with 1,024 established
/// flows (half of `LIMITS`' connection table) going on between them: every SYN is steered,
/// no established flow loses its entries or its backend, the connection table evicts
/// nothing, and the counters show the flood as half-open entries. The first spoofed
/// flows are gone from the half-open table by the end (it was churned, not grown).
#[test]
fn syn_flood_evicts_no_established_flow() {
    let mut fx = Fixture::new(&[svc(VIP4, 80, IPPROTO_TCP, &[(&B4A, WEB_PORT), (&B4B, WEB_PORT)])]);
    let flows: Vec<_> = (0..ESTABLISHED).map(|i| tcp(CLIENT4, 20000 + i, VIP4, 80)).collect();
    let hosts: Vec<&'static Host> = flows.iter().map(|p| fx.establish("established flow", p, &[&B4A, &B4B])).collect();
    let before = fx.dp.counters().expect("counters");

    // One SYN frame, its source address and port rewritten for each spoofed client (the
    // program checks no IPv4 header checksum, and the rewrite is incremental either way).
    let template = tcp(CLIENT4, 1, VIP4, 80).bytes();
    assert_eq!(&template[23..24], &[IPPROTO_TCP], "an IPv4 TCP frame without options or VLAN");
    let backends: Vec<[u8; 4]> = [&B4A, &B4B].iter().map(|h| v4(h.ip)).collect();
    let mut steered = 0u32;
    for i in 0..FLOOD {
        let mut f = template.clone();
        f[26..30].copy_from_slice(&(0x0b00_0000 | (i >> 4)).to_be_bytes()); // 11.0.0.0/8
        f[34..36].copy_from_slice(&(1024 + (i & 0xf) as u16).to_be_bytes());
        let out = fx.run(&f).unwrap_or_else(|e| panic!("test run of spoofed SYN {i}: errno {e}"));
        steered += backends.iter().any(|b| out.frame.get(30..34) == Some(&b[..])) as u32;
        if i % 50_000 == 0 {
            // Established traffic during the flood: a segment of a flow, to its backend.
            let k = (i / 50_000) as usize % flows.len();
            fx.send("established flow during the flood", &flows[k].seg(Seg::Ack), &[hosts[k]]);
        }
    }
    assert_eq!(steered, FLOOD, "spoofed SYNs steered to a backend");

    for (p, h) in flows.iter().zip(&hosts) {
        let (got, new) = fx.send_counting("established flow after the flood", &p.seg(Seg::Ack), &[h]);
        assert!(!new && got.ip == h.ip, "flow {} went to {} (new: {new}) after the flood, want {}", flow_name(p), got.ip, h.ip);
    }
    let after = fx.dp.counters().expect("counters");
    fx.dp.expire(xlb::dataplane::monotonic_ns(), &xlb::dataplane::Timeouts { tcp: u64::MAX, tcp_closed: u64::MAX, udp: u64::MAX, drain: u64::MAX }).expect("expire");
    let conns = fx.dp.counters().expect("counters").conns;
    assert_eq!(conns.evicted, 0, "connection entries evicted by the flood");
    assert_eq!(conns.live, 2 * ESTABLISHED as u64, "connection entries after the flood (two per established flow)");
    let half_open = after.conns.half_open - before.conns.half_open;
    assert_eq!(half_open, 2 * FLOOD as u64, "half-open entries counted (two per spoofed SYN)");
    let full = after.drops.iter().find(|(r, _)| *r == "conntrack_full").map_or(0, |(_, n)| *n);
    assert_eq!(full, 0, "inserts refused during the flood");
    // The first spoofed flow's entries were pushed out of the half-open table by the rest.
    let mut first = tcp(CLIENT4, 1024, VIP4, 80);
    first.src = IpAddr::from([11, 0, 0, 0]);
    fx.check(&no_flow("ack of the first spoofed SYN after the flood", first.seg(Seg::Ack)));
    println!(
        "SYN-FLOOD-FIGURE {FLOOD} spoofed SYNs, {ESTABLISHED} established flows: {steered} steered, {half_open} half-open entries, {} evicted, {} connection entries kept, conntrack {} / half-open {} slots",
        conns.evicted,
        conns.live,
        LIMITS.conntrack_size,
        (LIMITS.conntrack_size / 4).max(1024)
    );
}

fn v4(ip: IpAddr) -> [u8; 4] {
    match ip {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(_) => panic!("an IPv4 backend"),
    }
}
