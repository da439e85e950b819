//! The harness itself (needs root and Docker, not xlb): namespaces, topology, cleanup,
//! offload toggling, the scratch image.

use std::{path::Path, time::Duration};

use xlb_tests::{
    NetNs, Offload, Topology, Veth, docker, http,
    netns::set_tx_offload,
    topology::{BACKEND_IF, CLIENT_IF},
    util::{self, try_run},
};

fn require_root() {
    // SAFETY: no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test must run as root");
}

fn netns_exists(name: &str) -> bool {
    Path::new(&format!("/run/netns/{name}")).exists()
}

fn tx_offload(ns: &NetNs, dev: &str) -> String {
    let out = ns.run("ethtool", &["-k", dev]);
    out.lines()
        .find(|l| l.starts_with("tx-checksumming:"))
        .unwrap_or_else(|| panic!("no tx-checksumming in {out}"))
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

#[test]
fn topology_builds_and_cleans_up() {
    require_root();
    let _g = xlb_tests::serial();
    for offload in [Offload::On, Offload::Off] {
        let topo = Topology::builder().backends(2).offload(offload).build();
        let names: Vec<String> = [&topo.client, &topo.lb]
            .into_iter()
            .chain(topo.backends.iter().map(|b| &b.ns))
            .map(|n| n.name().to_string())
            .collect();
        assert!(names.iter().all(|n| netns_exists(n)), "{names:?}");
        assert!(names.iter().all(|n| n.len() <= 15 && n.starts_with("xt")), "{names:?}");
        assert_eq!(tx_offload(&topo.client, CLIENT_IF), offload.as_str());
        assert_eq!(tx_offload(&topo.backends[0].ns, BACKEND_IF), offload.as_str());
        // Backends reach each other via the LB (plain forwarding, no xlb yet).
        let (b1, b2) = (&topo.backends[0], &topo.backends[1]);
        assert_eq!(b1.ns.enter(|| http::get_name(b2.addr4())).as_deref(), Ok("b2"));
        assert_eq!(b1.ns.enter(|| http::get_name(b2.addr6())).as_deref(), Ok("b2"));
        // The VIP is routed to the LB, which has no such address: nothing answers.
        let r = topo.client.enter(|| http::get_name(Topology::vip4(80)));
        assert!(r.is_err(), "{r:?}");
        let pids: Vec<u32> = topo.backends.iter().filter_map(|b| b.testd.as_ref().map(|p| p.pid())).collect();
        drop(topo);
        for n in &names {
            assert!(!netns_exists(n), "namespace {n} left behind");
        }
        for p in pids {
            assert!(!util::pid_alive(p), "xlb-testd {p} left running");
        }
    }
}

#[test]
fn cleanup_on_panic() {
    require_root();
    let _g = xlb_tests::serial();
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::thread::spawn(move || {
        let topo = Topology::builder().backends(1).build();
        tx.send(topo.client.name().to_string()).unwrap();
        panic!("deliberate");
    })
    .join();
    assert!(r.is_err());
    let name = rx.recv().unwrap();
    assert!(!netns_exists(&name), "namespace {name} left behind after a panic");
}

#[test]
fn root_veth_is_removed() {
    require_root();
    let ns = NetNs::new("c");
    let host = format!("xt{}h", util::unique_id());
    let v = Veth::new(None, &host, Some(&ns), "c0");
    assert!(Path::new(&format!("/sys/class/net/{host}")).exists());
    set_tx_offload(None, &host, Offload::Off);
    let alias = std::fs::read_to_string(format!("/sys/class/net/{host}/ifalias")).unwrap();
    assert_eq!(alias.trim(), xlb_tests::netns::owner_alias());
    drop(v);
    assert!(!Path::new(&format!("/sys/class/net/{host}")).exists());
    // And when the namespace goes first.
    let host2 = format!("xt{}h", util::unique_id());
    let v2 = Veth::new(None, &host2, Some(&ns), "c1");
    drop(ns);
    // The kernel deletes a namespace's links asynchronously.
    let gone = util::wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
        (!Path::new(&format!("/sys/class/net/{host2}")).exists()).then_some(())
    });
    assert!(gone.is_some(), "{host2} left behind");
    drop(v2);
}

#[test]
fn curl_and_udp_from_a_namespace() {
    require_root();
    let _g = xlb_tests::serial();
    let topo = Topology::builder().backends(1).build();
    let b1 = &topo.backends[0];
    let url = format!("http://{}:8080/", b1.v4);
    assert_eq!(http::curl(Some(&topo.lb), &url).unwrap(), "b1");
    let url6 = format!("http://[{}]:8080/", b1.v6);
    assert_eq!(http::curl(Some(&topo.lb), &url6).unwrap(), "b1");
    // From the root namespace the backend is unreachable (no route): isolation holds.
    assert!(http::get_name(b1.addr4()).is_err());
    let s = topo.lb.enter(|| http::udp_spread(b1.addr4(), 10, Duration::from_secs(10)));
    assert_eq!(s.count("b1"), 10, "{s}");
}

#[test]
fn scratch_image_serves() {
    require_root();
    docker::require_docker();
    let c = docker::Container::testd("img", &["-p", "127.0.0.1::8080/tcp"]);
    let ip = c.ip();
    let port = c.host_port("8080/tcp");
    // Published port from the host's loopback.
    let name = http::get_name((std::net::Ipv4Addr::LOCALHOST, port).into());
    assert_eq!(name.as_deref(), Ok("img"), "logs: {}", c.logs());
    // The bridge IP directly from the host.
    assert_eq!(http::get_name((ip, 8080).into()).as_deref(), Ok("img"));
    assert_eq!(http::udp_query((ip, 8080).into(), 3, Duration::from_secs(1)).as_deref(), Ok("img"));
    let id = c.id.clone();
    drop(c);
    assert!(try_run(std::process::Command::new("docker").args(["inspect", &id])).is_err(), "container left behind");
}
