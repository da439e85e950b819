//! Frames the program must not touch however they are cut: ARP, fragments (no ports to
//! balance by: passed and counted), every header truncated; and 2,000 garbage frames that must pass or drop,
//! never crash, wedge or go out.

use std::io;

use xlb::plan::Desired;

use crate::{
    all_cases,
    harness::Fixture,
    net::{CLIENT4, CLIENT6, NEAR, VIP4, VIP6},
    packet::{IP_OPTIONS, arp_request, tcp, udp},
    runner::{Case, Want, XDP_DROP, XDP_PASS, action_name, hex, passed, run_table, untouched},
    services::{services, web4},
};

pub fn cases() -> Vec<Case> {
    vec![
        untouched("arp", arp_request()),
        passed("first fragment (MF)", web4(40015).fragment(true, 0), "fragment"),
        passed("later fragment", web4(40016).fragment(false, 185), "fragment"),
        // Test runs refuse frames shorter than an Ethernet header (ETH_HLEN), so the
        // program never sees one here.
        Case { name: "truncated ethernet", input: web4(40017).cut(13), want: Want::Refused },
        untouched("truncated vlan tag", web4(40018).vlan(100).cut(14 + 3)),
        untouched("truncated ipv4", web4(40019).cut(14 + 19)),
        untouched("truncated ipv4 options", web4(40020).ip_options(&IP_OPTIONS).cut(14 + 20 + 4)),
        untouched("truncated ipv6", tcp(CLIENT6, 40021, VIP6, 80).cut(14 + 39)),
        untouched("truncated tcp", web4(40022).cut(14 + 20 + 19)),
        untouched("truncated udp", udp(CLIENT4, 40023, VIP4, 53).cut(14 + 20 + 7)),
    ]
}

#[test]
fn frames() {
    run_table(&cases());
}

/// A seeded xorshift64*: the same frames on every run, no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Garbage must never crash or wedge the program: every frame the kernel accepts ends
/// in `XDP_PASS`, or in `XDP_DROP` with exactly one drop counted. Half the frames are
/// random bytes, half are fixture frames with random bytes changed, so the deeper
/// parsing and rewriting paths see garbage too.
#[test]
fn garbage_frames_pass_or_drop() {
    // No backend on the ingress interface: XDP_TX is never right here.
    let services: Vec<Desired> =
        services().into_iter().filter(|d| d.backends.iter().all(|b| b.addr != NEAR.ip)).collect();
    let mut fx = Fixture::new(&services);
    let templates: Vec<Vec<u8>> = all_cases().into_iter().map(|c| c.input).collect();
    let mut rng = Rng(0x786c_6221_5eed);
    let (mut refused, mut passed, mut dropped) = (0, 0, 0);
    for i in 0..2000 {
        let len = rng.below(200);
        let mut frame: Vec<u8> = if i % 2 == 0 {
            Vec::new()
        } else {
            let mut t = templates[rng.below(templates.len())].clone();
            for _ in 0..=rng.below(4) {
                let at = rng.below(t.len());
                t[at] = rng.next() as u8;
            }
            t
        };
        frame.resize_with(len, || rng.next() as u8);
        let before = fx.drops();
        let got = fx.run(&frame);
        let counted = fx.drops_since(&before);
        match got {
            Err(errno) => {
                assert!(
                    len < 14 && errno == libc::EINVAL,
                    "frame {i}: {}\n{}",
                    io::Error::from_raw_os_error(errno),
                    hex(&frame)
                );
                refused += 1;
            }
            Ok(out) => {
                let tally = match out.action {
                    XDP_PASS => &mut passed,
                    XDP_DROP => &mut dropped,
                    a => panic!("frame {i}: {}\n{}", action_name(a), hex(&frame)),
                };
                // A drop counts one reason; a pass counts nothing, or one reason it passes by.
                let passes = |r: &str| matches!(r, "no_flow" | "ttl_expired" | "fragment");
                let fits = match (out.action, counted.as_slice()) {
                    (XDP_PASS, []) => true,
                    (XDP_PASS, [(r, 1)]) => passes(r),
                    (XDP_DROP, [(r, 1)]) => !passes(r),
                    _ => false,
                };
                assert!(fits, "frame {i} ({}): counted {counted:?}\n{}", action_name(out.action), hex(&frame));
                *tally += 1;
            }
        }
    }
    println!("garbage: {refused} refused by the kernel (shorter than Ethernet), {passed} passed, {dropped} dropped");
}
