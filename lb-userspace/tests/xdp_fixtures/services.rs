//! The services the cases configure, and the backend each new flow must get: Maglev and
//! source hashing are predicted from `lb_common`'s hashes and user space's Maglev table.

use std::net::IpAddr;

use lb_common::{IPPROTO_TCP, IPPROTO_UDP, ServiceKey, addr_words, flow_hash, source_hash};
use xlb::{
    config::{BackendState, Forwarding, Method},
    dataplane::{
        Limits,
        maglev::{self, Entry},
    },
    plan::{Desired, DesiredBackend},
};

use crate::{
    harness::LIMITS,
    net::{B4A, B6A, CLIENT4, Host, NEAR, VIP4, VIP6, client},
    packet::{Pkt, tcp},
};

/// `vip:port/proto` over `backends` (host, port), weight 1 each, choosing by Maglev.
pub fn svc(vip: IpAddr, port: u16, proto: u8, backends: &[(&Host, u16)]) -> Desired {
    let backends = backends.iter().map(|(h, port)| (*h, *port, 1));
    service(format!("{vip}:{port}/{proto}"), ServiceKey::new(vip, port, proto), Method::Maglev, backends)
}

/// One backend per service, so every choice is known in advance.
pub fn services() -> Vec<Desired> {
    vec![
        svc(VIP4, 80, IPPROTO_TCP, &[(&B4A, 8080)]),
        svc(VIP4, 53, IPPROTO_UDP, &[(&B4A, 5353)]),
        svc(VIP6, 80, IPPROTO_TCP, &[(&B6A, 8080)]),
        svc(VIP6, 53, IPPROTO_UDP, &[(&B6A, 5353)]),
        svc(VIP4, 443, IPPROTO_TCP, &[(&NEAR, 8443)]),
        svc(VIP4, 25, IPPROTO_TCP, &[]),
    ]
}

/// The port every backend of these tests listens on.
pub const WEB_PORT: u16 = 8080;

/// VIP4:80/tcp over `backends` (host, weight), each at `WEB_PORT`, choosing by `method`.
pub fn web(method: Method, backends: &[(&Host, u32)]) -> Desired {
    let backends = backends.iter().map(|(h, weight)| (*h, WEB_PORT, *weight));
    service("web".into(), ServiceKey::new(VIP4, 80, IPPROTO_TCP), method, backends)
}

/// A service whose backends (host, port, weight) are all active.
fn service<'a>(name: String, key: ServiceKey, method: Method, backends: impl Iterator<Item = (&'a Host, u16, u32)>) -> Desired {
    let backends = backends.map(|(h, port, weight)| DesiredBackend { addr: h.ip, port, weight, state: BackendState::Active });
    Desired { name, key, method, socket_lb: true, forwarding: Forwarding::Nat, backends: backends.collect() }
}

/// `web` with weight 1 each.
pub fn even(method: Method, hosts: &[&Host]) -> Desired {
    web(method, &hosts.iter().map(|h| (*h, 1)).collect::<Vec<_>>())
}

/// `n` TCP flows to VIP4:80 from four clients, each from its own port.
pub fn web_flows(n: u16) -> Vec<Pkt> {
    (0..n).map(|i| tcp(client(i % 4), 40000 + i, VIP4, 80)).collect()
}

/// The backend a new flow `p` of `d` must get under Maglev or source hashing: the slot
/// `lb_common`'s flow (or source) hash names in the Maglev table that user space builds
/// from the backends' identities (address words, port) and the seed. Nothing else enters,
/// so every node with the same seed and backends chooses alike, and a flow whose entry is
/// lost chooses again what it had.
pub fn predict(d: &Desired, limits: &Limits, p: &Pkt) -> IpAddr {
    let mut active: Vec<&DesiredBackend> = d.backends.iter().filter(|b| b.state == BackendState::Active).collect();
    // The data plane builds hashed tables in address order (`Dataplane::sync`).
    active.sort_by_key(|b| (b.addr, b.port));
    let entries: Vec<Entry> = active
        .iter()
        .map(|b| {
            let (a, _) = addr_words(b.addr);
            Entry { identity: [a[0], a[1], a[2], a[3], b.port as u32], weight: b.weight }
        })
        .collect();
    let table = maglev::maglev(&entries, limits.table_size, limits.hash_seed);
    let (src, dst) = (addr_words(p.src).0, addr_words(p.dst).0);
    let hash = match d.method {
        Method::Maglev => flow_hash(&src, p.sport.to_be(), &dst, p.dport.to_be(), p.proto(), limits.hash_seed),
        Method::SourceHash => source_hash(&src, limits.hash_seed),
        m => panic!("{m:?} does not choose by hash"),
    };
    active[table[(hash % limits.table_size) as usize] as usize].addr
}

/// The first flow from `CLIENT4` with a source port in `ports` that `d` sends to `host`.
pub fn flow_to(d: &Desired, host: &Host, ports: std::ops::Range<u16>) -> Pkt {
    ports
        .map(|port| tcp(CLIENT4, port, VIP4, 80))
        .find(|p| predict(d, &LIMITS, p) == host.ip)
        .unwrap_or_else(|| panic!("no flow to {} among the ports", host.ip))
}

/// A client's SYN to the IPv4 web service, VIP4:80, from `sport`.
pub fn web4(sport: u16) -> Pkt {
    tcp(CLIENT4, sport, VIP4, 80)
}
