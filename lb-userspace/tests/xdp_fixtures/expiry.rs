//! `expire` ages the connection table: idle entries go after their protocol's timeout,
//! closed TCP flows after the short closed timeout, and an expired flow chooses again.

use lb_common::{Conn, IPPROTO_TCP, IPPROTO_UDP};
use xlb::dataplane::{Timeouts, monotonic_ns};

use crate::{
    harness::{Fixture, conn_keys},
    net::{B4A, CLIENT4, VIP4},
    packet::{L4, Pkt, Seg, flow_name, tcp, udp},
    runner::{IDLE, LONG, no_flow},
    services::{WEB_PORT, svc},
};

/// `expire` removes the entries idle longer than their protocol's timeout (two per flow)
/// and keeps the others; a flow whose entries expired chooses again (a new flow), the
/// others follow their entries.
#[test]
fn idle_entries_expire_per_protocol() {
    // (name, tcp timeout, udp timeout, tcp flows expire, udp flows expire)
    let cases = [
        ("no timeout reached", LONG, LONG, false, false),
        ("tcp timeout", IDLE, LONG, true, false),
        ("udp timeout", LONG, IDLE, false, true),
        ("both timeouts", IDLE, IDLE, true, true),
    ];
    let flows = |ports: std::ops::Range<u16>| -> Vec<Pkt> {
        ports.flat_map(|port| [tcp(CLIENT4, port, VIP4, 80), udp(CLIENT4, port, VIP4, 53)]).collect()
    };
    for (name, tcp_idle, udp_idle, tcp_expires, udp_expires) in cases {
        let mut fx = Fixture::new(&[
            svc(VIP4, 80, IPPROTO_TCP, &[(&B4A, WEB_PORT)]),
            svc(VIP4, 53, IPPROTO_UDP, &[(&B4A, WEB_PORT)]),
        ]);
        let (old, fresh) = (flows(40000..40003), flows(50000..50003));
        let now = fx.age(&old, &fresh, &[&B4A]);
        let expires = |p: &Pkt| if p.l4 == L4::Tcp { tcp_expires } else { udp_expires };
        let want = 2 * old.iter().filter(|p| expires(p)).count();
        let (tcp_ns, udp_ns) = (tcp_idle.as_nanos() as u64, udp_idle.as_nanos() as u64);
        let t = Timeouts { tcp: tcp_ns, tcp_closed: tcp_ns, udp: udp_ns, drain: u64::MAX };
        let got = fx.dp.expire(now, &t).expect("expire");
        assert_eq!(got, want, "{name}: entries expired");
        assert_eq!(fx.dp.expire(now, &t).expect("expire"), 0, "{name}: a second pass expired more");
        for p in &old {
            let (_, new) = fx.send_counting("flow after expiry", p, &[&B4A]);
            assert_eq!(new, expires(p), "{name}: idle {:?} flow {} chose a backend again: {new}", p.l4, flow_name(p));
        }
        for p in &fresh {
            let (_, new) = fx.send_counting("fresh flow after expiry", p, &[&B4A]);
            assert!(!new, "{name}: fresh {:?} flow {} lost its entry", p.l4, flow_name(p));
        }
        println!("expiry, {name}: {got} entries removed");
    }
}

/// A FIN or RST marks both entries of a flow closed, and `expire` removes them after the
/// short closed timeout though the idle one is far off; an open flow stays, and so does one
/// whose 4-tuple a SYN opened again after its FIN (its entries are written anew).
#[test]
fn closed_tcp_flows_expire_after_the_closed_timeout() {
    let mut fx = Fixture::new(&[svc(VIP4, 80, IPPROTO_TCP, &[(&B4A, WEB_PORT)])]);
    let flow = |port| tcp(CLIENT4, port, VIP4, 80);
    let (fin, rst, open, reopened) = (flow(40000), flow(40001), flow(40002), flow(40003));
    for p in [&fin, &rst, &open, &reopened] {
        fx.establish("new flow", p, &[&B4A]);
    }
    for (what, p) in [("fin", fin.seg(Seg::FinAck)), ("rst", rst.seg(Seg::Rst)), ("fin", reopened.seg(Seg::FinAck)), ("syn", reopened.clone())] {
        let (h, new) = fx.send_counting(what, &p, &[&B4A]);
        assert!(!new && h.ip == B4A.ip, "{what} of flow {}: to {} (new: {new})", flow_name(&p), h.ip);
    }
    let closed = |fx: &mut Fixture, p: &Pkt| {
        let ct = fx.conntrack();
        conn_keys(p, &B4A, WEB_PORT).map(|k| ct.get(&k, 0).unwrap_or_else(|e| panic!("entry {k:?}: {e}")).flags & Conn::F_CLOSED != 0)
    };
    for (p, want) in [(&fin, true), (&rst, true), (&open, false), (&reopened, false)] {
        assert_eq!(closed(&mut fx, p), [want, want], "flow {}: (service, backend) entries closed", flow_name(p));
    }
    std::thread::sleep(2 * IDLE);
    let (idle, long) = (IDLE.as_nanos() as u64, LONG.as_nanos() as u64);
    let expired = fx.dp.expire(monotonic_ns(), &Timeouts { tcp: long, tcp_closed: idle, udp: long, drain: u64::MAX }).expect("expire");
    assert_eq!(expired, 4, "entries of the two closed flows expired");
    fx.check(&no_flow("an ack of an expired closed flow", fin.seg(Seg::Ack)));
    fx.check(&no_flow("an ack of an expired reset flow", rst.seg(Seg::Ack)));
    for p in [&open, &reopened] {
        let (_, new) = fx.send_counting("an ack of a flow still open", &p.seg(Seg::Ack), &[&B4A]);
        assert!(!new, "flow {}", flow_name(p));
    }
}
