//! Balancing methods: nginx's and least-time / peak-EWMA, weights, backups, max_conns.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    thread,
    time::Duration,
};

use crate::{
    backends::{Testd, backend, dead_addr},
    client::{Client, get, tally},
    lb::{Lb, svc},
};
use xlb::plan::PeerState;

#[test]
fn round_robin_is_smooth_and_weighted() {
    let (a, b, c) = (Testd::start("a"), Testd::start("b"), Testd::start("c"));
    let lb = Lb::one("method: round_robin", vec![a.view(2), b.view(1), c.view(1)]);
    let mut cl = Client::connect(lb.addr());
    let order: Vec<String> = (0..40).map(|_| cl.get("x", "/", &[]).unwrap().name()).collect();
    eprintln!("round_robin 2:1:1 first 8: {:?}", &order[..8]);
    // nginx's smooth weighted round robin: current weights [2,1,1] → a, [0,2,2] → b,
    // [2,-1,3] → c, [4,0,0] → a; then again.
    assert_eq!(order[..8], ["a", "b", "c", "a", "a", "b", "c", "a"]);
    assert_eq!(tally(order), BTreeMap::from([("a".into(), 20), ("b".into(), 10), ("c".into(), 10)]));
}

#[test]
fn least_conn_avoids_the_busy_backend() {
    let (a, b) = (Testd::start("a"), Testd::start("b"));
    a.delay(1500);
    let lb = Lb::one("method: least_conn\npin_header: app", vec![a.view(1), b.view(1)]);
    let addr = lb.addr();
    // A long request pinned to a keeps one request in flight there.
    let long = thread::spawn(move || get(addr, "x", "/", &[("app", "a")]).name());
    thread::sleep(Duration::from_millis(200));
    let names: Vec<String> = (0..10).map(|_| get(addr, "x", "/", &[]).name()).collect();
    eprintln!("least_conn while a has 1 in flight: {:?}", tally(names.clone()));
    assert!(names.iter().all(|n| n == "b"), "{names:?}");
    assert_eq!(long.join().unwrap(), "a");
    // Idle again: both used.
    let names: Vec<String> = (0..4).map(|_| get(addr, "x", "/health", &[]).name()).collect();
    assert_eq!(tally(names).len(), 1, "the /health answers carry no name");
}

#[test]
fn ip_hash_is_stable_per_24_and_spreads() {
    let ts: Vec<Testd> = ["a", "b", "c"].iter().map(|n| Testd::start(n)).collect();
    let lb = Lb::one("method: ip_hash", ts.iter().map(|t| t.view(1)).collect());
    let addr = lb.addr();
    let mut per_net = Vec::new();
    for net in 1..=24u8 {
        let names: Vec<String> =
            [1u8, 77, 200].iter().map(|&h| Client::connect_from(addr, Ipv4Addr::new(127, 9, net, h)).get("x", "/", &[]).unwrap().name()).collect();
        assert!(names.iter().all(|n| *n == names[0]), "127.9.{net}.0/24 split: {names:?}");
        per_net.push(names[0].clone());
    }
    let t = tally(per_net);
    eprintln!("ip_hash: 24 /24 networks (3 clients each) → {t:?}");
    assert_eq!(t.len(), 3, "{t:?}");
}

#[test]
fn consistent_hash_moves_about_one_nth_of_keys() {
    let ts: Vec<Testd> = ["a", "b", "c", "d"].iter().map(|n| Testd::start(n)).collect();
    let opts = "method: hash uri consistent";
    let lb = Lb::one(opts, ts.iter().map(|t| t.view(1)).collect());
    let mut cl = Client::connect(lb.addr());
    let keys: Vec<String> = (0..400).map(|k| format!("/?key={k}")).collect();
    let before: Vec<String> = keys.iter().map(|k| cl.get("x", k, &[]).unwrap().name()).collect();
    // The same keys again: deterministic.
    for (k, b) in keys.iter().zip(&before).take(50) {
        assert_eq!(&cl.get("x", k, &[]).unwrap().name(), b);
    }
    lb.update(vec![svc("web", opts, ts[..3].iter().map(|t| t.view(1)).collect())]);
    let mut cl = Client::connect(lb.addr());
    let after: Vec<String> = keys.iter().map(|k| cl.get("x", k, &[]).unwrap().name()).collect();
    let moved: Vec<usize> = (0..keys.len()).filter(|&i| before[i] != after[i]).collect();
    eprintln!("consistent hash: before {:?}; removing d moved {} of {} keys", tally(before.clone()), moved.len(), keys.len());
    assert!(moved.iter().all(|&i| before[i] == "d"), "only d's keys move");
    assert_eq!(moved.len(), before.iter().filter(|n| *n == "d").count(), "all of d's keys move");
    let frac = moved.len() as f64 / keys.len() as f64;
    assert!((0.12..=0.40).contains(&frac), "moved {frac:.2}, expected about 1/4");
}

#[test]
fn hash_by_header_and_cookie() {
    let ts: Vec<Testd> = ["a", "b", "c"].iter().map(|n| Testd::start(n)).collect();
    for (opts, key_of) in [("method: hash header:x-user", "x-user"), ("method: hash cookie:uid consistent", "cookie")] {
        let lb = Lb::one(opts, ts.iter().map(|t| t.view(1)).collect());
        let mut seen = HashMap::new();
        for user in 0..30 {
            let v = format!("user{user}");
            let hdr = if key_of == "cookie" { ("Cookie", format!("uid={v}")) } else { ("X-User", v.clone()) };
            let names: Vec<String> = (0..3).map(|_| get(lb.addr(), "x", "/", &[(hdr.0, &hdr.1)]).name()).collect();
            assert!(names.iter().all(|n| *n == names[0]), "{opts}: {v} split {names:?}");
            seen.insert(v, names[0].clone());
        }
        let t = tally(seen.into_values());
        eprintln!("{opts}: 30 keys → {t:?}");
        assert_eq!(t.len(), 3);
    }
    // `hash client`: the whole client address, unlike ip_hash's /24.
    let lb = Lb::one("method: hash client consistent", ts.iter().map(|t| t.view(1)).collect());
    let by_client: Vec<String> = (1..=30u8)
        .map(|h| {
            let names: Vec<String> = (0..3).map(|_| Client::connect_from(lb.addr(), Ipv4Addr::new(127, 9, 1, h)).get("x", "/", &[]).unwrap().name()).collect();
            assert!(names.iter().all(|n| *n == names[0]), "127.9.1.{h} split {names:?}");
            names[0].clone()
        })
        .collect();
    let t = tally(by_client);
    eprintln!("hash client consistent: 30 clients of one /24 → {t:?}");
    assert_eq!(t.len(), 3, "{t:?}");
}

#[test]
fn random_is_weighted() {
    let (a, b) = (Testd::start("a"), Testd::start("b"));
    let lb = Lb::one("method: random", vec![a.view(1), b.view(3)]);
    let mut cl = Client::connect(lb.addr());
    let t = tally((0..400).map(|_| cl.get("x", "/", &[]).unwrap().name()));
    eprintln!("random 1:3 over 400: {t:?}");
    assert!((60..=140).contains(&t["a"]), "{t:?}");
}

#[test]
fn random_two_least_conn_avoids_the_busy_backend() {
    let ts: Vec<Testd> = ["a", "b", "c"].iter().map(|n| Testd::start(n)).collect();
    ts[0].delay(1500);
    let lb = Lb::one("method: random two least_conn\npin_header: app", ts.iter().map(|t| t.view(1)).collect());
    let addr = lb.addr();
    let long = thread::spawn(move || get(addr, "x", "/", &[("app", "a")]).name());
    thread::sleep(Duration::from_millis(200));
    let t = tally((0..30).map(|_| get(addr, "x", "/", &[]).name()));
    eprintln!("random two least_conn with a busy: {t:?}");
    assert_eq!(t.get("a"), None, "{t:?}");
    assert_eq!(t.len(), 2);
    assert_eq!(long.join().unwrap(), "a");
}

/// The criterion: at least 80% of requests to a 5 ms backend against a 50 ms one.
#[test]
fn least_time_and_peak_ewma_prefer_the_fast_backend() {
    let (fast, slow) = (Testd::start("fast"), Testd::start("slow"));
    fast.delay(5);
    slow.delay(50);
    for method in ["least_time header", "least_time last_byte inflight", "random two least_time=header", "peak_ewma"] {
        let lb = Lb::one(&format!("method: {method}"), vec![fast.view(1), slow.view(1)]);
        let addr = lb.addr();
        // Sequential, then 4 clients at once.
        let mut cl = Client::connect(addr);
        let mut names: Vec<String> = (0..60).map(|_| cl.get("x", "/", &[]).unwrap().name()).collect();
        let workers: Vec<_> = (0..4)
            .map(|_| {
                thread::spawn(move || {
                    let mut cl = Client::connect(addr);
                    (0..25).map(|_| cl.get("x", "/", &[]).unwrap().name()).collect::<Vec<_>>()
                })
            })
            .collect();
        for w in workers {
            names.extend(w.join().unwrap());
        }
        let t = tally(names.clone());
        let frac = t.get("fast").copied().unwrap_or(0) as f64 / names.len() as f64;
        eprintln!("{method}: {t:?} → {:.0}% to the 5 ms backend", frac * 100.0);
        assert!(frac >= 0.8, "{method}: {t:?}");
    }
}

#[test]
fn backup_serves_only_when_primaries_fail_and_max_conns_holds() {
    let (a, spare) = (Testd::start("a"), Testd::start("spare"));
    let mut backup = spare.view(1);
    backup.backup = true;
    let lb = Lb::one("", vec![a.view(1), backup.clone()]);
    assert!((0..6).all(|_| get(lb.addr(), "x", "/", &[]).name() == "a"));
    // The primary dies: its connect failure retries on the backup, then it is out.
    lb.update(vec![svc("web", "", vec![backend("a", dead_addr(), 1), backup.clone()])]);
    let names: Vec<String> = (0..6).map(|_| get(lb.addr(), "x", "/", &[]).name()).collect();
    assert!(names.iter().all(|n| n == "spare"), "{names:?}");

    // max_conns 1 on a slow backend: a second concurrent request goes elsewhere.
    a.delay(800);
    let b = Testd::start("b");
    let lb = Lb::one("max_conns: 1\nmethod: round_robin\npin_header: app", vec![a.view(1), b.view(1)]);
    let addr = lb.addr();
    let long = thread::spawn(move || get(addr, "x", "/", &[("app", "a")]).name());
    thread::sleep(Duration::from_millis(150));
    let names: Vec<String> = (0..6).map(|_| get(addr, "x", "/", &[]).name()).collect();
    assert!(names.iter().all(|n| n == "b"), "{names:?}");
    long.join().unwrap();

    // `down` takes nothing, not even pinned requests; draining only pinned ones.
    a.delay(0);
    let c = Testd::start("c");
    let (mut down, mut draining) = (a.view(1), b.view(1));
    down.state = PeerState::Down;
    draining.state = PeerState::Draining;
    let lb = Lb::one("pin_header: app", vec![down, draining, c.view(1)]);
    let names: Vec<String> = (0..6).map(|_| get(lb.addr(), "x", "/", &[]).name()).collect();
    assert!(names.iter().all(|n| n == "c"), "{names:?}");
    assert_eq!(get(lb.addr(), "x", "/", &[("app", "a")]).name(), "c", "a pin to a down backend is balanced");
    assert_eq!(get(lb.addr(), "x", "/", &[("app", "b")]).name(), "b", "a pin reaches a draining backend");
}
