//! The xlb binary itself: an HTTP SPEC served in namespaces.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use xlb_tests::{
    Topology, config,
    topology::{LB_CLIENT_V4, TESTD_PORT},
    util::wait_for,
};

use crate::{
    backends::listening,
    client::{get, tally},
};

/// The real binary, root and namespaces (client → LB → backends b1..b3): a `/http` SPEC
/// is served by xlb's proxy on the interface's address; a backend that dies is retried
/// around with no failed request and reported to xlb's health (the passive check).
#[test]
fn xlb_serves_an_http_spec_and_feeds_passive_health() {
    let _g = xlb_tests::serial();
    xlb_tests::preflight();
    let mut topo = Topology::builder().backends(3).build();
    let targets: Vec<(IpAddr, Option<u32>)> = topo.names().iter().map(|n| (topo.ip(n, false), None)).collect();
    let spec = config::spec(None, 80, &targets, Some(TESTD_PORT), Some("http"));
    let mut xlb = topo.start_xlb(None, std::slice::from_ref(&spec));
    let vip = SocketAddr::from((LB_CLIENT_V4, 80));
    let fetch = |n: usize| -> Vec<String> {
        topo.client.enter(|| {
            (0..n)
                .map(|_| {
                    let r = get(vip, "app.dev", "/", &[]);
                    if r.status == 200 { r.name() } else { r.status.to_string() }
                })
                .collect()
        })
    };
    let up = wait_for(Duration::from_secs(10), Duration::from_millis(100), || topo.client.enter(|| listening(vip)).then_some(()));
    assert!(up.is_some(), "nothing listens on {vip} for SPEC {spec}\n{}", xlb.log());
    let t = tally(fetch(30));
    eprintln!("xlb {spec}: 30 requests → {t:?}");
    assert_eq!(t, BTreeMap::from([("b1".into(), 10), ("b2".into(), 10), ("b3".into(), 10)]), "smooth round robin\n{}", xlb.log());

    let b2 = topo.ip("b2", false);
    drop(topo.backends[1].testd.take());
    let t = tally(fetch(30));
    eprintln!("b2 stopped: 30 requests → {t:?}");
    assert_eq!(t.get("b2"), None, "{t:?}");
    assert_eq!(t.values().sum::<usize>(), 30);
    assert!(t.keys().all(|n| n == "b1" || n == "b3"), "every request answered: {t:?}\n{}", xlb.log());
    let marked = format!("addr={b2}:{TESTD_PORT}");
    let log = xlb.log();
    assert!(log.lines().any(|l| l.contains("out for") && l.contains(&marked)), "the proxy's failure reached health ({marked}):\n{log}");
    xlb.assert_running();
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}
