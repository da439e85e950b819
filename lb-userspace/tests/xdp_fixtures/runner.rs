//! The runner: a case is an input frame and what `xlb_xdp` must do with it (`Want`);
//! `Fixture::check` runs it and checks the action, the output frame against frames built
//! independently, the metadata XDP hands to TC and the drop counters.

use std::{io, mem, time::Duration};

use lb_common::{FwdMeta, ServiceKey};
use xlb::dataplane::monotonic_ns;

use crate::{
    harness::{Fixture, Outcome},
    net::{Dev, Host},
    ones,
    packet::{L4, L4Csum, Pkt, Seg, flow_name},
    services::{WEB_PORT, services},
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// The idle timeout of the expiry tests; entries are aged by sleeping twice as long.
pub const IDLE: Duration = Duration::from_millis(100);
/// A timeout no entry of a test reaches.
pub const LONG: Duration = Duration::from_secs(3600);

/// One fixture case: a frame and what the program must do with it.
pub struct Case {
    pub name: &'static str,
    pub input: Vec<u8>,
    pub want: Want,
}

/// What the program must do with a case's frame.
pub enum Want {
    /// `XDP_PASS`, the frame untouched, no metadata.
    Untouched,
    /// Rewritten for one of `hosts` at `port`: `XDP_TX` when the host is on the ingress
    /// interface and XDP could finish the checksum, else `XDP_PASS` with `FwdMeta`.
    Forward { sent: Pkt, hosts: Vec<&'static Host>, port: u16 },
    /// `XDP_DROP`, counted under this drop reason.
    Drop(&'static str),
    /// `XDP_PASS`, the frame untouched, counted under this reason (`no_flow`, `ttl_expired`).
    Passed(&'static str),
    /// The kernel refuses to run XDP on it (`EINVAL`).
    Refused,
}

pub fn fwd(name: &'static str, sent: Pkt, host: &'static Host, port: u16) -> Case {
    fwd_any(name, sent, &[host], port)
}

pub fn fwd_any(name: &'static str, sent: Pkt, hosts: &[&'static Host], port: u16) -> Case {
    Case { name, input: sent.bytes(), want: Want::Forward { sent, hosts: hosts.to_vec(), port } }
}

pub fn untouched(name: &'static str, input: Vec<u8>) -> Case {
    Case { name, input, want: Want::Untouched }
}

pub fn dropped(name: &'static str, sent: Pkt, reason: &'static str) -> Case {
    Case { name, input: sent.bytes(), want: Want::Drop(reason) }
}

/// A TCP segment other than a SYN that no connection entry knows: left to the stack.
pub fn no_flow(name: &'static str, sent: Pkt) -> Case {
    passed(name, sent, "no_flow")
}

/// Left to the stack untouched, counted under `reason`.
pub fn passed(name: &'static str, sent: Pkt, reason: &'static str) -> Case {
    Case { name, input: sent.bytes(), want: Want::Passed(reason) }
}

/// Runs a table of cases, in order, on one fixture serving `services()`.
pub fn run_table(cases: &[Case]) {
    let mut fx = Fixture::new(&services());
    for case in cases {
        fx.check(case);
    }
    println!("{} fixture cases passed", cases.len());
}

impl Fixture {
    /// Runs a case and checks everything it says, drop counters included; returns the
    /// backend a forwarded packet went to.
    pub fn check(&mut self, case: &Case) -> Option<&'static Host> {
        let before = self.drops();
        let got = self.run(&case.input);
        let counted = self.drops_since(&before);
        let want_counted = match case.want {
            Want::Drop(reason) | Want::Passed(reason) => vec![(reason, 1)],
            _ => Vec::new(),
        };
        assert_eq!(counted, want_counted, "{}: drop counters moved", case.name);

        match (&case.want, got) {
            (Want::Refused, got) => {
                assert_eq!(got.err(), Some(libc::EINVAL), "{}: the kernel should refuse the run", case.name);
                None
            }
            (_, Err(errno)) => panic!("{}: test run failed: {}", case.name, io::Error::from_raw_os_error(errno)),
            (Want::Untouched | Want::Passed(_), Ok(out)) => {
                expect_action(case, &out, XDP_PASS);
                assert!(out.meta.is_empty(), "{}: metadata left: {}", case.name, hex(&out.meta));
                expect_frame(case, &out.frame, std::slice::from_ref(&case.input));
                None
            }
            (Want::Drop(_), Ok(out)) => {
                expect_action(case, &out, XDP_DROP);
                None
            }
            (Want::Forward { sent, hosts, port }, Ok(out)) => {
                let frames: Vec<Vec<u8>> = hosts.iter().map(|h| sent.to(h, *port).bytes()).collect();
                let host = hosts[expect_frame(case, &out.frame, &frames)];
                self.expect_forward(case, &out, sent, host, *port);
                Some(host)
            }
        }
    }

    /// The action and metadata of a packet rewritten for `host:port`.
    fn expect_forward(&self, case: &Case, out: &Outcome, sent: &Pkt, host: &Host, port: u16) {
        let partial = matches!(sent.csum, L4Csum::Partial);
        if host.dev == Dev::Fx0 && !partial {
            expect_action(case, out, XDP_TX);
            assert!(out.meta.is_empty(), "{}: metadata left for XDP_TX: {}", case.name, hex(&out.meta));
            return;
        }
        expect_action(case, out, XDP_PASS);
        assert_eq!(out.meta.len(), mem::size_of::<FwdMeta>(), "{}: metadata {}", case.name, hex(&out.meta));
        let w = |i: usize| u32::from_ne_bytes(out.meta[i * 4..i * 4 + 4].try_into().unwrap());
        let meta = FwdMeta { magic: w(0), ifindex: w(1), l4_addr_diff: w(2), l4_port_diff: w(3), flags: w(4) };
        let ifindex = self.ifindex(host.dev);
        if !partial {
            let want = FwdMeta { magic: FwdMeta::MAGIC, ifindex, ..Default::default() };
            assert_eq!(meta, want, "{}: metadata", case.name);
            return;
        }
        assert_eq!(
            (meta.magic, meta.ifindex, meta.flags),
            (FwdMeta::MAGIC, ifindex, FwdMeta::F_FIX_L4),
            "{}: metadata {meta:?}",
            case.name
        );
        let rewritten = sent.to(host, port);
        let (addr, port_diff) = (ones::from_meta(meta.l4_addr_diff), ones::from_meta(meta.l4_port_diff));
        // What TC does to a partial checksum: fold in the pseudo-header part only.
        let folded = ones::add(sent.pseudo_sum(), addr);
        assert!(
            ones::same(folded, rewritten.pseudo_sum()),
            "{}: stale pseudo-header sum {:#06x} + addr diff {addr:#06x} = {folded:#06x}, the rewritten packet's is {:#06x}",
            case.name,
            sent.pseudo_sum(),
            rewritten.pseudo_sum()
        );
        // What TC does to a complete checksum (the guess was wrong): fold in both.
        let full = |p: &Pkt| p.clone().csum(L4Csum::Full).l4_csum();
        let fixed = ones::apply(full(sent), ones::add(addr, port_diff));
        assert!(
            ones::same(fixed, full(&rewritten)),
            "{}: complete checksum {:#06x} with both diffs gives {fixed:#06x}, want {:#06x}",
            case.name,
            full(sent),
            full(&rewritten)
        );
    }

    /// Sends `p` and returns the backend it was rewritten for, one of `hosts` at
    /// `WEB_PORT` (the rewrite is checked like any fixture case's).
    pub fn send(&mut self, what: &'static str, p: &Pkt, hosts: &[&'static Host]) -> &'static Host {
        self.check(&fwd_any(what, p.clone(), hosts, WEB_PORT)).expect("a forwarded packet names its backend")
    }

    /// Opens `p`'s flow as a client would: its SYN, then (TCP) its first ACK, which moves
    /// the flow from the half-open table to the connection table. Returns the backend.
    pub fn establish(&mut self, what: &'static str, p: &Pkt, hosts: &[&'static Host]) -> &'static Host {
        let host = self.send(what, p, hosts);
        if p.l4 == L4::Tcp {
            let ack = self.send(what, &p.seg(Seg::Ack), &[host]);
            assert_eq!(ack.ip, host.ip, "{what}: the ACK of flow {} went elsewhere than its SYN", flow_name(p));
        }
        host
    }

    /// Sends `p`; returns its backend and whether the data plane counted a new flow,
    /// i.e. chose a backend rather than following a connection entry.
    pub fn send_counting(&mut self, what: &'static str, p: &Pkt, hosts: &[&'static Host]) -> (&'static Host, bool) {
        let key = ServiceKey::new(p.dst, p.dport, p.proto());
        let before = self.new_flows(key);
        let host = self.send(what, p, hosts);
        let counted = self.new_flows(key) - before;
        assert!(counted <= 1, "{what}: one packet of {} counted {counted} new flows", flow_name(p));
        (host, counted == 1)
    }

    /// Sends `old`, lets them idle for `2 * IDLE`, sends `fresh`, and returns a time (for
    /// `expire`) when every entry of `old` has been idle longer than `IDLE` and none of
    /// `fresh` has, however slowly the sends ran.
    pub fn age(&mut self, old: &[Pkt], fresh: &[Pkt], hosts: &[&'static Host]) -> u64 {
        for p in old {
            self.establish("flow to age", p, hosts);
        }
        let old_done = monotonic_ns();
        std::thread::sleep(2 * IDLE);
        let fresh_start = monotonic_ns();
        assert!(fresh_start - old_done >= 2 * IDLE.as_nanos() as u64, "CLOCK_MONOTONIC moved slower than the sleep");
        for p in fresh {
            self.establish("fresh flow", p, hosts);
        }
        fresh_start + IDLE.as_nanos() as u64 / 2
    }
}

pub fn action_name(a: u32) -> String {
    match a {
        0 => "XDP_ABORTED".into(),
        XDP_DROP => "XDP_DROP".into(),
        XDP_PASS => "XDP_PASS".into(),
        XDP_TX => "XDP_TX".into(),
        4 => "XDP_REDIRECT".into(),
        a => format!("action {a}"),
    }
}

/// Hex in 16-bit groups, so checksums and ports read whole.
pub fn hex(b: &[u8]) -> String {
    b.chunks(2).map(|c| c.iter().map(|x| format!("{x:02x}")).collect::<String>()).collect::<Vec<_>>().join(" ")
}

fn expect_action(case: &Case, out: &Outcome, want: u32) {
    assert!(
        out.action == want,
        "{}: got {}, want {}\n  in: {}\n out: {}",
        case.name,
        action_name(out.action),
        action_name(want),
        hex(&case.input),
        hex(&out.frame)
    );
}

/// Which of `wants` the output frame is; panics showing all frames when none.
fn expect_frame(case: &Case, got: &[u8], wants: &[Vec<u8>]) -> usize {
    if let Some(i) = wants.iter().position(|w| w == got) {
        return i;
    }
    let mut msg = format!(
        "{}: output frame is none of those expected\n  in: {}\n out: {}",
        case.name,
        hex(&case.input),
        hex(got)
    );
    for w in wants {
        let at = got.iter().zip(w).position(|(a, b)| a != b).unwrap_or(got.len().min(w.len()));
        msg += &format!("\nwant: {} (first difference at byte {at})", hex(w));
    }
    panic!("{msg}");
}
