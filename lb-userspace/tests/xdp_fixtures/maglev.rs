//! Choice by hash: Maglev picks what `lb_common::flow_hash` names in user space's table,
//! alike across loads with one seed and again after an eviction; source hashing keeps each
//! client on one backend.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use xlb::{config::Method, dataplane::Limits};

use crate::{
    harness::{Fixture, LIMITS, conn_keys},
    net::{Host, TRIO, VIP4, client},
    packet::{Seg, flow_name, tcp},
    runner::no_flow,
    services::{WEB_PORT, even, predict, web_flows},
};

/// Maglev's choice is a pure function of the 5-tuple and the seed: the kernel picks exactly
/// the backend that `lb_common::flow_hash` names in the table user space built, and a flow
/// whose connection entries are deleted (as the LRU table evicts them) comes back to the
/// same backend with its next SYN, counted as a new flow, while the others stay pinned; a
/// mid-flow segment of an evicted flow is left to the stack, not steered.
#[test]
fn maglev_choice_is_the_flow_hash_and_survives_eviction() {
    let d = even(Method::Maglev, &TRIO);
    let mut fx = Fixture::new(std::slice::from_ref(&d));
    let flows = web_flows(60);
    let first: Vec<&Host> = flows.iter().map(|p| fx.establish("maglev: new flow", p, &TRIO)).collect();
    for (p, h) in flows.iter().zip(&first) {
        let want = predict(&d, &LIMITS, p);
        assert_eq!(h.ip, want, "flow {}: the kernel chose {}, the flow hash names {want}", flow_name(p), h.ip);
    }
    let used: BTreeSet<IpAddr> = first.iter().map(|h| h.ip).collect();
    assert_eq!(used.len(), 3, "60 flows should reach all three backends, reached {used:?}");

    // Evict every other flow: both its entries, as an LRU eviction may.
    let mut ct = fx.conntrack();
    for (p, h) in flows.iter().zip(&first).step_by(2) {
        for k in conn_keys(p, h, WEB_PORT) {
            ct.remove(&k).unwrap_or_else(|e| panic!("deleting {k:?} of flow {}: {e}", flow_name(p)));
        }
    }
    for (i, (p, h)) in flows.iter().zip(&first).enumerate() {
        let evicted = i % 2 == 0;
        if evicted {
            fx.check(&no_flow("maglev: a segment of an evicted flow is not steered afresh", p.seg(Seg::Ack)));
        } else {
            let again = fx.send("maglev: a segment of a kept flow", &p.seg(Seg::Ack), &TRIO);
            assert_eq!(again.ip, h.ip, "flow {} moved from {} to {}", flow_name(p), h.ip, again.ip);
        }
        let (again, new) = fx.send_counting("maglev: a syn after an eviction", p, &TRIO);
        assert_eq!(new, evicted, "flow {} (evicted: {evicted}) counted as a new flow: {new}", flow_name(p));
        assert_eq!(again.ip, h.ip, "flow {} (evicted: {evicted}) moved from {} to {}", flow_name(p), h.ip, again.ip);
    }
    println!("maglev: 60 flows as the flow hash predicts over {used:?}; 30 evicted came back to their backends");
}

/// Equal seeds make separately loaded data planes (two xlb nodes) choose alike; another seed
/// chooses differently for some flows. Each load chooses what its own seed predicts.
#[test]
fn equal_seeds_choose_alike_across_loads() {
    let d = even(Method::Maglev, &TRIO);
    let flows = web_flows(60);
    let choices = |seed: u32| -> Vec<IpAddr> {
        let limits = Limits { hash_seed: seed, ..LIMITS };
        let mut fx = Fixture::with_limits(limits, std::slice::from_ref(&d));
        flows
            .iter()
            .map(|p| {
                let h = fx.send("seeded load: new flow", p, &TRIO);
                let want = predict(&d, &limits, p);
                assert_eq!(h.ip, want, "seed {seed}: flow {} went to {}, the flow hash names {want}", flow_name(p), h.ip);
                h.ip
            })
            .collect()
    };
    let seed = LIMITS.hash_seed;
    let (node1, node2, other) = (choices(seed), choices(seed), choices(seed + 1));
    assert_eq!(node1, node2, "two data planes loaded with seed {seed} chose differently");
    let moved = node1.iter().zip(&other).filter(|(a, b)| a != b).count();
    println!("seeds: {seed} twice chose alike for 60 flows; seed {} moved {moved} of them", seed + 1);
    // Independent choices over three backends differ for ~2/3 of the flows.
    assert!(moved >= flows.len() / 4, "seed {} moved only {moved} of {} flows", seed + 1, flows.len());
}

/// Source hashing sends every flow of a client (any port) to one backend, the one the
/// source hash names, while different clients spread over all backends.
#[test]
fn source_hash_keeps_each_client_on_one_backend() {
    let d = even(Method::SourceHash, &TRIO);
    let mut fx = Fixture::new(std::slice::from_ref(&d));
    let mut by_client: BTreeMap<IpAddr, BTreeSet<IpAddr>> = BTreeMap::new();
    for c in 0..24 {
        for port in (40000..).step_by(97).take(16) {
            let p = tcp(client(c), port, VIP4, 80);
            let h = fx.send("source hash: new flow", &p, &TRIO);
            let want = predict(&d, &LIMITS, &p);
            assert_eq!(h.ip, want, "flow {} went to {}, the source hash names {want}", flow_name(&p), h.ip);
            by_client.entry(p.src).or_default().insert(h.ip);
        }
    }
    for (c, backends) in &by_client {
        assert_eq!(backends.len(), 1, "client {c}'s 16 flows went to {backends:?}");
    }
    let mut clients_per_backend: BTreeMap<IpAddr, usize> = BTreeMap::new();
    by_client.values().flatten().for_each(|b| *clients_per_backend.entry(*b).or_default() += 1);
    println!("source hash: 24 clients x 16 ports, clients per backend {clients_per_backend:?}");
    assert_eq!(clients_per_backend.len(), 3, "24 clients should spread over all three backends: {clients_per_backend:?}");
}
