//! What keeps a packet from going astray while the control plane rewrites the maps or the
//! table loses entries: a table slot read just before it was rewritten for another service,
//! a flow's reply entry lost on its own, a removed service's id while its flows live.

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use lb_common::{Conn, IPPROTO_TCP, Service as KService, ServiceKey, names};
use xlb::dataplane::{Timeouts, monotonic_ns};

use crate::{
    harness::{Fixture, LIMITS, conn_keys},
    net::{B4A, B4B, CLIENT4, VIP4},
    packet::{Seg, tcp},
    runner::{LONG, dropped},
    services::{WEB_PORT, svc, web4},
};

fn services_map(fx: &mut Fixture) -> BpfHashMap<MapData, ServiceKey, KService> {
    BpfHashMap::try_from(fx.map(names::SERVICES)).expect("SERVICES as a hash map")
}

/// A packet that read its service's table slot number just before user space freed that
/// slot and filled it for another service finds the other service's backend there: it is
/// dropped (`bad_table_entry`, the client sends its SYN again), not delivered to a backend
/// of a service it never addressed.
#[test]
fn a_table_rewritten_for_another_service_is_not_followed() {
    let (web, other) = (svc(VIP4, 80, IPPROTO_TCP, &[(&B4A, WEB_PORT)]), svc(VIP4, 81, IPPROTO_TCP, &[(&B4B, WEB_PORT)]));
    let mut fx = Fixture::new(&[web.clone(), other.clone()]);
    let services = services_map(&mut fx);
    let (web_entry, other_entry) = (services.get(&web.key, 0).unwrap(), services.get(&other.key, 0).unwrap());
    let mut tables: Array<MapData, u32> = Array::try_from(fx.map(names::TABLES)).expect("TABLES as an array");
    let other_backend = tables.get(&(other_entry.table * LIMITS.table_size), 0).unwrap();
    for i in 0..LIMITS.table_size {
        tables.set(web_entry.table * LIMITS.table_size + i, other_backend, 0).unwrap();
    }
    fx.check(&dropped("web's slot holding the other service's backend", web4(40201), "bad_table_entry"));
}

/// A flow's reply entry lost on its own (evicted) is written back by the flow's next
/// forward packet once the flow has been quiet for a second, so replies keep being
/// rewritten; a flow seen within the second is not looked at again.
#[test]
fn a_lost_reply_entry_is_written_back() {
    let mut fx = Fixture::new(&[svc(VIP4, 80, IPPROTO_TCP, &[(&B4A, WEB_PORT)])]);
    let syn = web4(40202);
    fx.establish("handshake", &syn, &[&B4A]);
    let [service, reply] = conn_keys(&syn, &B4A, WEB_PORT);
    let mut ct = fx.conntrack();
    ct.remove(&reply).unwrap();
    fx.send("ack within the second", &syn.seg(Seg::Ack), &[&B4A]);
    assert!(fx.conntrack().get(&reply, 0).is_err(), "the reply entry came back though the flow was seen within the second");
    let mut ct = fx.conntrack();
    let entry = ct.get(&service, 0).unwrap();
    ct.insert(service, Conn { last_seen: entry.last_seen - 2_000_000_000, ..entry }, 0).unwrap();
    fx.send("ack after two quiet seconds", &syn.seg(Seg::Ack), &[&B4A]);
    let back = fx.conntrack().get(&reply, 0).expect("the reply entry is back");
    assert_eq!((back.backend, back.rev_nat), (entry.backend, entry.rev_nat), "written back from the flow's entry");
}

/// A removed service's id names its flows' rev-NAT: a service added while they live gets
/// another id (else their replies would leave with the new service's VIP); once the flows
/// expire, the id is free again.
#[test]
fn a_removed_services_id_waits_for_its_flows() {
    let (web, other) = (svc(VIP4, 80, IPPROTO_TCP, &[(&B4A, WEB_PORT)]), svc(VIP4, 81, IPPROTO_TCP, &[(&B4B, WEB_PORT)]));
    let mut fx = Fixture::new(std::slice::from_ref(&web));
    let syn = web4(40203);
    fx.establish("handshake", &syn, &[&B4A]);
    let web_id = fx.conntrack().get(&conn_keys(&syn, &B4A, WEB_PORT)[0], 0).unwrap().rev_nat;
    fx.sync(&[]);
    fx.sync(std::slice::from_ref(&other));
    let other_id = services_map(&mut fx).get(&other.key, 0).unwrap().id;
    assert_ne!(other_id, web_id, "a new service took the id the removed one's flow still names");
    fx.dp.expire(monotonic_ns() + 1, &Timeouts { tcp: 0, tcp_closed: 0, udp: LONG.as_nanos() as u64, drain: u64::MAX }).expect("expire");
    fx.sync(&[]);
    fx.sync(&[other.clone(), web.clone()]);
    let ids = [&other, &web].map(|d| services_map(&mut fx).get(&d.key, 0).unwrap().id);
    assert!(ids.contains(&web_id), "the id is free again once its flows expired: {ids:?}, was {web_id}");
}

/// Two services (VIP4:80 and VIP4:81) over one backend address:port: each flow's reply
/// entry names the service the flow came through, so its replies leave from that VIP.
#[test]
fn two_services_share_a_backend() {
    let (web, other) = (svc(VIP4, 80, IPPROTO_TCP, &[(&B4A, WEB_PORT)]), svc(VIP4, 81, IPPROTO_TCP, &[(&B4A, WEB_PORT)]));
    let mut fx = Fixture::new(&[web.clone(), other.clone()]);
    let ids = [&web, &other].map(|d| services_map(&mut fx).get(&d.key, 0).unwrap().id);
    assert_ne!(ids[0], ids[1], "two services, one id");
    let syns = [web4(40204), tcp(CLIENT4, 40205, VIP4, 81)];
    for (syn, id) in syns.iter().zip(ids) {
        fx.establish("handshake", syn, &[&B4A]);
        let reply = fx.conntrack().get(&conn_keys(syn, &B4A, WEB_PORT)[1], 0).expect("the flow's reply entry");
        assert_eq!(reply.rev_nat, id, "the reply entry of {}:{} names another service", syn.dst, syn.dport);
    }
}
