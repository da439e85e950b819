//! The model of `xlb_reply` (TC ingress on the backends' side):
//! - a TCP or UDP packet of a flow's backend to its client (an entry client -> backend
//!   exists, established or half open) leaves with the VIP and service port as its
//!   source, one hop less, checksums as valid as they came (a UDP checksum of 0 stays 0);
//!   a FIN or RST closes the backend entry and, if that was still open, the flow's entry;
//! - with a TTL of 1 or less it is the stack's, untouched (it answers as a router would);
//! - an ICMP error about a packet xlb forwarded (quoting client -> backend) goes to the
//!   client quoting client -> VIP:port, from the VIP when the backend itself sent it;
//! - a rewritten packet is redirected to the client when a route leads there (the MACs
//!   written when the neighbour is known), else left to the stack as rewritten;
//! - anything else is the stack's, untouched.

use lb_common::{IPPROTO_TCP, IPPROTO_UDP};

use super::{
    Expect, Model, To, outer_ip,
    route::{Route, route},
    translate::{Side, addr_at, hop, icmp_quote, translate},
};
use crate::differential::sums::{Sum, put_addr};

impl Model {
    /// What `xlb_reply` must do with `f`, received on fx1.
    pub fn reply(&mut self, f: &[u8]) -> Expect {
        let e = self.decide_reply(f);
        let outcome = match &e {
            Expect::Refused | Expect::RefusedOrPass => "reply: refused",
            Expect::Out { to: To::Redirect, .. } => "reply: redirected",
            Expect::Out { .. } => "reply: rewritten, to the stack",
            _ => "reply: passed",
        };
        *self.outcomes.entry(outcome).or_default() += 1;
        e
    }

    fn decide_reply(&mut self, f: &[u8]) -> Expect {
        if f.len() < 14 {
            return Expect::Refused;
        }
        // Test runs of skb programs on newer kernels want the whole IPv4 or IPv6 header an
        // untagged frame announces (a rule of test runs, not of xlb, which passes it).
        let l3 = match f[12..14] {
            [8, 0] => 20,
            [0x86, 0xdd] => 40,
            _ => 0,
        };
        if f.len() < 14 + l3 {
            return Expect::RefusedOrPass;
        }
        let Some(p) = outer_ip(f) else { return Expect::Pass };
        let ports = !p.fragment
            && match p.proto {
                IPPROTO_TCP => f.len() >= p.l4 + 20,
                IPPROTO_UDP => f.len() >= p.l4 + 8,
                _ => false,
            };
        if !ports {
            return self.icmp_to_client(f, &p).unwrap_or(Expect::Pass);
        }
        if p.ttl <= 1 {
            return Expect::Pass;
        }
        let (sport, dport) = (u16::from_be_bytes([f[p.l4], f[p.l4 + 1]]), u16::from_be_bytes([f[p.l4 + 2], f[p.l4 + 3]]));
        let key = (p.dst, dport, p.src, sport, p.proto);
        let closes = p.proto == IPPROTO_TCP && f[p.l4 + 13] & 0x05 != 0;
        let (flow, was_closed) = match (self.to_backend.get_mut(&key), self.half_open_backend.get(&key)) {
            (Some(entry), _) => {
                let before = *entry;
                entry.1 |= closes;
                before
            }
            (None, Some(flow)) => (*flow, false),
            (None, None) => return Expect::Pass,
        };
        if closes
            && !was_closed
            && let Some(e) = self.established.get_mut(&flow)
        {
            e.closed = true;
        }
        let mut out = f.to_vec();
        put_addr(&mut out, addr_at(&p, Side::Src), flow.vip);
        out[p.l4..p.l4 + 2].copy_from_slice(&flow.vport.to_be_bytes());
        let mut sums = hop(&mut out, &p);
        let field = p.l4 + if p.proto == IPPROTO_TCP { 16 } else { 6 };
        if !(p.proto == IPPROTO_UDP && f[field] == 0 && f[field + 1] == 0) {
            sums.push(Sum::L4 { l3: p.l3, v6: p.v6, proto: p.proto, l4: p.l4, len: p.len, field, udp: p.proto == IPPROTO_UDP });
        }
        redirect(out, sums, flow.vip, p.dst)
    }

    /// An ICMP error from the backends' side about a packet xlb forwarded, for the client.
    fn icmp_to_client(&mut self, f: &[u8], outer: &super::Ip) -> Option<Expect> {
        let (q, sport, dport) = icmp_quote(f, outer)?;
        let key = (q.src, sport, q.dst, dport, q.proto);
        let flow = self.to_backend.get(&key).map(|e| e.0).or_else(|| self.half_open_backend.get(&key).copied())?;
        let from_backend = outer.src == q.dst;
        let (out, sums) = translate(f, outer, &q, from_backend.then_some(Side::Src), Side::Dst, flow.vip, flow.vport);
        *self.outcomes.entry("reply: ICMP error translated").or_default() += 1;
        Some(redirect(out, sums, if from_backend { flow.vip } else { outer.src }, outer.dst))
    }
}

/// A rewritten reply from `from` to the client `to`: redirected when routed (MACs written
/// when the neighbour is known), else the stack's.
fn redirect(mut out: Vec<u8>, sums: Vec<Sum>, from: std::net::IpAddr, to: std::net::IpAddr) -> Expect {
    let to = match route(from, to) {
        Route::Neigh(dev, mac) => {
            out[0..6].copy_from_slice(&mac);
            out[6..12].copy_from_slice(&dev.mac());
            To::Redirect
        }
        Route::NoNeigh(_) => To::Redirect,
        Route::Blackhole | Route::Stack => To::Stack,
    };
    Expect::Out { frame: out, sums, to, partial: None }
}
