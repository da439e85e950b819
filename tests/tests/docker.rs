//! xlb on a Docker host: three `FROM scratch` xlb-testd containers on the default bridge (not
//! published) behind VIP 10.200.250.1:80, reached by a client outside the host (a namespace
//! linked to the host by a veth; xlb is attached on the host side). Docker's iptables rules
//! stay untouched and a published port of another container keeps working.
//!
//! Needs root, Docker and `XLB_BIN`.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use xlb_tests::{
    Offload, config,
    docker::{self, Container},
    http,
    outside::Outside,
    util::{cmd, run},
    xlb::{Xlb, XlbArgs},
};

xlb_tests::both_offloads!(
    containers_behind_vip,
);

/// The client link, 10.200.250.0/24 (tests/live uses 251): the host, and VIP, is .1.
const SUBNET: u8 = 250;
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 200, SUBNET, 1);

fn iptables_rules() -> String {
    let filter = run(&mut cmd("iptables", ["-S"]));
    let nat = run(&mut cmd("iptables", ["-t", "nat", "-S"]));
    format!("{filter}\n-- nat --\n{nat}")
}

fn containers_behind_vip(offload: Offload) {
    let _g = xlb_tests::serial();
    xlb_tests::preflight();
    docker::require_docker();
    assert_eq!(docker::forward_policy(), "-P FORWARD DROP", "Docker's FORWARD policy before the test");

    // Containers first (Docker adds its rules for them), then the iptables snapshot.
    let backends: Vec<Container> = (1..=3).map(|i| Container::testd(&format!("d{i}"), &[])).collect();
    let published = Container::testd("pub", &["-p", "8080/tcp"]);
    let host_port = published.host_port("8080/tcp");
    let ips: Vec<Ipv4Addr> = backends.iter().map(Container::ip).collect();
    for (c, ip) in backends.iter().zip(&ips) {
        assert!(c.inspect("{{json .NetworkSettings.Ports}}").matches("HostPort").count() == 0, "{} is published", c.name);
        assert_eq!(http::get_name((*ip, 8080).into()).as_deref(), Ok(&c.name[c.name.len() - 2..]), "host -> container {ip}");
    }
    let rules_before = iptables_rules();

    // The client outside the host.
    let out = Outside::new(SUBNET, offload);
    let client = &out.client;
    let published_addr = SocketAddr::from((HOST_IP, host_port));
    assert_eq!(client.enter(|| http::get_name(published_addr)).as_deref(), Ok("pub"), "published port before xlb");

    let targets: Vec<_> = ips.iter().map(|ip| ((*ip).into(), None)).collect();
    let spec = config::spec(Some(HOST_IP.into()), 80, &targets, Some(8080), None);
    let mut xlb = Xlb::start(XlbArgs {
        ns: None,
        iface: &out.host_if,
        config: None,
        specs: vec![spec],
        other_ifaces: vec!["docker0".into()],
    });
    let log = |x: &Xlb| format!("--- xlb log ---\n{}", x.log());

    let vip = SocketAddr::from((HOST_IP, 80));
    let s = client.enter(|| http::spread(vip, 300, Duration::from_secs(60)));
    assert!(s.errors.is_empty() && s.total_ok() == 300, "300 requests to {vip}: {s}\n{}", log(&xlb));
    for name in ["d1", "d2", "d3"] {
        let f = s.fraction(name);
        assert!((0.2..=0.5).contains(&f), "{name}: {:.1}% of 300, want 20%..50%: {s}\n{}", f * 100.0, log(&xlb));
    }
    let body = http::curl(Some(client), &format!("http://{HOST_IP}/"));
    assert!(body.as_ref().is_ok_and(|b| ["d1", "d2", "d3"].contains(&b.as_str())), "curl {vip}: {body:?}\n{}", log(&xlb));

    // Non-service traffic on the same interface still reaches the host's stack (and Docker's
    // DNAT), and so does the published port from the host itself.
    assert_eq!(client.enter(|| http::get_name(published_addr)).as_deref(), Ok("pub"), "published port from the client with xlb\n{}", log(&xlb));
    assert_eq!(http::get_name((Ipv4Addr::LOCALHOST, host_port).into()).as_deref(), Ok("pub"), "published port from the host with xlb");
    assert_eq!(docker::forward_policy(), "-P FORWARD DROP", "FORWARD policy with xlb running");

    if let Err(e) = xlb.stop() {
        panic!("{e}");
    }
    assert_eq!(docker::forward_policy(), "-P FORWARD DROP", "Docker's FORWARD policy after the test");
    assert_eq!(iptables_rules(), rules_before, "iptables rules changed while xlb ran");
    // The published port still works after xlb is gone.
    assert_eq!(client.enter(|| http::get_name(published_addr)).as_deref(), Ok("pub"));
}
