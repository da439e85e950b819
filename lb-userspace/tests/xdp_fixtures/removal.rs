//! Backends leaving: a removed backend's TCP flow ends where it began while a SYN on its
//! 4-tuple moves; a draining backend keeps its flows and takes no new ones; a removed
//! backend's id stays taken while an entry names it, and whoever takes it next starts from
//! zero counters.

use lb_common::{IPPROTO_TCP, IPPROTO_UDP};
use xlb::{
    config::{BackendState, Method},
    dataplane::Timeouts,
};

use crate::{
    harness::{Fixture, LIMITS},
    net::{B4A, B4B, B4C, CLIENT4, Host, VIP4},
    packet::{Pkt, Seg, flow_name, tcp, udp},
    runner::{IDLE, fwd, fwd_any, no_flow},
    services::{even, flow_to, predict, svc},
};

/// A removed backend's TCP flow ends where it began: its segments (ACK, FIN) still reach
/// it and count no new flow; a SYN on the same 4-tuple (a new connection) goes to an active
/// backend, and so does the next datagram of a UDP flow.
#[test]
fn tcp_flow_of_a_removed_backend_ends_there_and_a_syn_moves() {
    let both = |proto, port| svc(VIP4, port, proto, &[(&B4A, 8080), (&B4B, 8080)]);
    let one = |proto, port, h: &Host| svc(VIP4, port, proto, &[(h, 8080)]);
    let mut fx = Fixture::new(&[both(IPPROTO_TCP, 80), both(IPPROTO_UDP, 53)]);
    let p = tcp(CLIENT4, 40000, VIP4, 80);
    let first = fx.check(&fwd_any("new flow", p.clone(), &[&B4A, &B4B], 8080)).unwrap();
    let u = (40000..40100).map(|port| udp(CLIENT4, port, VIP4, 53)).find(|u| {
        fx.check(&fwd_any("new udp flow", u.clone(), &[&B4A, &B4B], 8080)).unwrap().ip == first.ip
    });
    let u = u.expect("a udp flow on the same backend as the tcp one");
    let other = if first.ip == B4A.ip { &B4B } else { &B4A };
    fx.sync(&[one(IPPROTO_TCP, 80, other), one(IPPROTO_UDP, 53, other)]);
    for seg in [Seg::Ack, Seg::FinAck, Seg::Ack] {
        let (h, new) = fx.send_counting("segment of a flow on a removed backend", &p.seg(seg), &[first]);
        assert!(!new && h.ip == first.ip, "{seg:?} went to {} (new: {new}), want its removed backend {}", h.ip, first.ip);
    }
    let (h, new) = fx.send_counting("syn on the 4-tuple of a removed backend's flow", &p, &[other]);
    assert!(new && h.ip == other.ip, "SYN went to {} (new: {new}), want a new flow to {}", h.ip, other.ip);
    fx.check(&fwd("udp flow of a removed backend", u, other, 8080));
}

#[test]
fn draining_backend_keeps_its_flows_and_takes_no_new_ones() {
    let mut both = svc(VIP4, 80, IPPROTO_TCP, &[(&B4A, 8080), (&B4B, 8080)]);
    let mut fx = Fixture::new(&[both.clone()]);
    let p = tcp(CLIENT4, 40000, VIP4, 80);
    let pinned = fx.check(&fwd_any("new flow", p.clone(), &[&B4A, &B4B], 8080)).unwrap();
    let other = if pinned.ip == B4A.ip { &B4B } else { &B4A };
    for b in &mut both.backends {
        if b.addr == pinned.ip {
            b.state = BackendState::Draining;
        }
    }
    fx.sync(&[both]);
    fx.check(&fwd("existing flow of a draining backend", p.seg(Seg::Ack), pinned, 8080));
    fx.check(&fwd("a syn on the draining backend's 4-tuple moves", p, other, 8080));
    for port in 50000..50032 {
        fx.check(&fwd("new flow while a backend drains", tcp(CLIENT4, port, VIP4, 80), other, 8080));
    }
}

/// After a backend is removed: the flow that was on it, the one on the kept backend, the
/// removed backend's id, and how many entries `expire` removed.
struct Removal {
    fx: Fixture,
    on_a: Pkt,
    on_b: Pkt,
    b_id: u32,
    expired: usize,
}

/// Serves {A, B} with a flow on each (B's left idle past `IDLE` when `idle`), removes B by
/// `sync` and runs `expire`.
fn remove_b(idle: bool) -> Removal {
    let two = even(Method::Maglev, &[&B4A, &B4B]);
    let mut fx = Fixture::new(std::slice::from_ref(&two));
    let (on_a, on_b) = (flow_to(&two, &B4A, 40000..41000), flow_to(&two, &B4B, 40000..41000));
    let (old, fresh) = if idle { (vec![on_b.clone()], vec![on_a.clone()]) } else { (vec![], vec![on_a.clone(), on_b.clone()]) };
    let now = fx.age(&old, &fresh, &[&B4A, &B4B]);
    let b_id = fx.pinned_id(&on_b, &B4B);
    fx.sync(&[even(Method::Maglev, &[&B4A])]);
    let idle = IDLE.as_nanos() as u64;
    let expired = fx.dp.expire(now, &Timeouts { tcp: idle, tcp_closed: idle, udp: idle, drain: u64::MAX }).expect("expire");
    Removal { fx, on_a, on_b, b_id, expired }
}

/// A backend removed by `sync` keeps its id while a connection entry names it, so a backend
/// added later cannot inherit its flows; once its entries expire the id is freed and the
/// next new backend takes it. Either way the removed backend's flow chooses again (a new
/// flow) where the flow hash says, and the kept backend's flow stays.
#[test]
fn removed_backend_id_is_freed_once_its_entries_expire() {
    let with_c = even(Method::Maglev, &[&B4A, &B4C]);
    for idle in [false, true] {
        let case = if idle { "entries of B expired" } else { "entries of B fresh" };
        let Removal { mut fx, on_a, on_b, b_id, expired } = remove_b(idle);
        assert_eq!(expired, if idle { 2 } else { 0 }, "{case}: entries expired");

        fx.sync(std::slice::from_ref(&with_c));
        let to_c = flow_to(&with_c, &B4C, 50000..51000);
        let (h, new) = fx.send_counting("new flow to the new backend", &to_c, &[&B4A, &B4C]);
        assert!(h.ip == B4C.ip && new, "{case}: flow {} went to {} (new: {new}), want a new flow to {}", flow_name(&to_c), h.ip, B4C.ip);
        let c_id = fx.pinned_id(&to_c, &B4C);
        if idle {
            assert_eq!(c_id, b_id, "{case}: the removed backend's id {b_id} should be free again and the next backend's");
        } else {
            assert_ne!(c_id, b_id, "{case}: the removed backend's id was given to a new backend while an entry names it");
        }

        if idle {
            fx.check(&no_flow("a segment of the removed backend's expired flow", on_b.seg(Seg::Ack)));
        } else {
            let (h, new) = fx.send_counting("a segment of the removed backend's flow", &on_b.seg(Seg::Ack), &[&B4B]);
            assert!(!new && h.ip == B4B.ip, "{case}: flow {} went to {} (new: {new}), want its removed backend", flow_name(&on_b), h.ip);
        }
        let (h, new) = fx.send_counting("a syn on the removed backend's flow", &on_b, &[&B4A, &B4C]);
        let want = predict(&with_c, &LIMITS, &on_b);
        assert!(new && h.ip == want, "{case}: flow {} went to {} (new: {new}), want a new choice, {want}", flow_name(&on_b), h.ip);
        let (h, new) = fx.send_counting("flow of the kept backend", &on_a, &[&B4A, &B4C]);
        assert!(!new && h.ip == B4A.ip, "{case}: flow {} went to {} (new: {new}), want its entry's {}", flow_name(&on_a), h.ip, B4A.ip);
        println!("removed backend, {case}: {expired} entries expired, B's id {b_id}, C's id {c_id}");
    }
}

/// A backend that takes a freed id starts from zero counters: the packets and flows of the
/// removed backend that had the id are not its own.
#[test]
fn backend_on_a_reused_id_starts_with_zero_counters() {
    let Removal { mut fx, b_id, expired, .. } = remove_b(true);
    assert_eq!(expired, 2, "entries expired");
    let with_c = even(Method::Maglev, &[&B4A, &B4C]);
    fx.sync(std::slice::from_ref(&with_c));
    let c = fx.backend_counters(&B4C);
    assert_eq!((c.packets, c.new_flows), (0, 0), "{} (on id {b_id}, freed) starts with counters (packets, new flows)", B4C.ip);
    let to_c = flow_to(&with_c, &B4C, 50000..51000);
    fx.send("new flow to the new backend", &to_c, &[&B4C]);
    let c = fx.backend_counters(&B4C);
    assert_eq!((c.packets, c.new_flows), (1, 1), "{} counters (packets, new flows) after its first flow", B4C.ip);
}

/// A removed backend's flow goes on there until the drain timeout, however busy it is;
/// after it, the expiry pass cuts the flow (its next segment finds no entry and is left to
/// the stack, which resets it) while a flow of an active backend stays.
#[test]
fn removed_backends_flows_are_cut_after_the_drain_timeout() {
    let mut fx = Fixture::new(&[svc(VIP4, 80, IPPROTO_TCP, &[(&B4A, 8080), (&B4B, 8080)])]);
    let d = svc(VIP4, 80, IPPROTO_TCP, &[(&B4A, 8080), (&B4B, 8080)]);
    let (on_a, on_b) = (flow_to(&d, &B4A, 40300..40400), flow_to(&d, &B4B, 40300..40400));
    fx.establish("flow on b4a", &on_a, &[&B4A]);
    fx.establish("flow on b4b", &on_b, &[&B4B]);
    fx.sync(&[svc(VIP4, 80, IPPROTO_TCP, &[(&B4B, 8080)])]);
    let long = u64::MAX;
    let drain = IDLE.as_nanos() as u64;
    let t = Timeouts { tcp: long, tcp_closed: long, udp: long, drain };
    assert_eq!(fx.dp.expire(xlb::dataplane::monotonic_ns(), &t).expect("expire"), 0, "cut before its drain timeout");
    fx.check(&fwd("segment of the removed backend's flow within the drain timeout", on_a.seg(Seg::Ack), &B4A, 8080));
    std::thread::sleep(IDLE * 2);
    assert_eq!(fx.dp.expire(xlb::dataplane::monotonic_ns(), &t).expect("expire"), 2, "the removed backend's flow (two entries)");
    fx.check(&no_flow("segment of the removed backend's flow after the drain timeout", on_a.seg(Seg::Ack)));
    fx.check(&fwd("segment of the active backend's flow", on_b.seg(Seg::Ack), &B4B, 8080));
}
