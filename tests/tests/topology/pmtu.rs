//! Path MTU discovery through xlb's NAT (issue 14): the ICMP errors a router sends to the
//! VIP reach the backend translated, so its segments shrink and a transfer completes.

use xlb_tests::{
    Offload,
    netns::{NetNs, Veth},
    topology::{CLIENT_V4, CLIENT_V6, VIP4, VIP6},
};

use super::{setup, spec_for, stop, tail};

/// Path MTU discovery through xlb: the client sits behind a router whose link to it is
/// narrower (1280) than every other link (1500), so the backend's full-sized replies (with
/// DF, as Linux sends them) make that router answer "fragmentation needed" (IPv4) or
/// "packet too big" (IPv6) to their source, the VIP. Only if xlb translates that error
/// for the backend does the backend lower its segments and the download complete; without
/// it the transfer stalls. Counted on both sides: the router sent errors, and the client
/// got every byte.
#[test]
fn path_mtu_discovery_through_a_narrower_link() {
    const BYTES: usize = 300_000;
    let _g = xlb_tests::serial();
    let topo = setup(Offload::On, 1);
    // The client namespace becomes the router; the client is a namespace behind it.
    let far = NetNs::new("f");
    let _link = Veth::new(Some(&topo.client), "cf", Some(&far), "eth0");
    topo.client.sysctl("net.ipv4.ip_forward", "1");
    topo.client.sysctl("net.ipv6.conf.all.forwarding", "1");
    topo.client.addr_add("cf", "10.200.2.1/24");
    topo.client.addr_add("cf", "fd00:200:2::1/64");
    topo.client.ip("link set cf mtu 1280");
    far.addr_add("eth0", "10.200.2.2/24");
    far.addr_add("eth0", "fd00:200:2::2/64");
    far.ip("route add default via 10.200.2.1");
    far.ip("-6 route add default via fd00:200:2::1");
    topo.lb.ip(&format!("route add 10.200.2.0/24 via {CLIENT_V4}"));
    topo.lb.ip(&format!("-6 route add fd00:200:2::/64 via {CLIENT_V6}"));
    let specs = [spec_for(&topo, VIP4.into(), 80, &["b1"], None, None), spec_for(&topo, VIP6.into(), 80, &["b1"], None, None)];
    let xlb = topo.start_xlb(None, &specs);
    let errors = |file: &str, name: &str| -> u64 {
        let text = topo.client.run("cat", &[file]);
        snmp_counter(&text, name).unwrap_or_else(|| panic!("no {name} in the router's {file}:\n{text}"))
    };
    for (url, file, name) in [
        (format!("http://{VIP4}/bytes/{BYTES}"), "/proc/net/snmp", "Icmp:OutDestUnreachs"),
        (format!("http://[{VIP6}]/bytes/{BYTES}"), "/proc/net/snmp6", "Icmp6OutPktTooBigs"),
    ] {
        let before = errors(file, name);
        let got = far.try_run("curl", &["-sS", "--fail", "--max-time", "20", "-o", "/dev/null", "-w", "%{size_download}", &url]);
        let sent = errors(file, name) - before;
        let got = got.unwrap_or_else(|e| panic!("{url} through the 1280-byte link: {e} ({sent} PMTU errors sent by the router)\n{}", tail(&xlb)));
        eprintln!("{url}: {got} bytes through the 1280-byte link; the router sent {sent} PMTU errors to the VIP");
        assert_eq!(got.trim(), BYTES.to_string(), "{url}: short download");
        assert!(sent > 0, "{url}: the router sent no PMTU error, so the test proved nothing");
    }
    stop(xlb);
}

/// `name` in /proc/net/snmp (two lines per protocol: `Icmp: Name ...` then `Icmp: values`,
/// asked as `Icmp:Name`) or /proc/net/snmp6 (`Name value` lines).
fn snmp_counter(text: &str, name: &str) -> Option<u64> {
    if let Some((proto, field)) = name.split_once(':') {
        let mut rows = text.lines().filter(|l| l.starts_with(&format!("{proto}:")));
        while let (Some(names), Some(values)) = (rows.next(), rows.next()) {
            if let Some(i) = names.split_whitespace().position(|n| n == field) {
                return values.split_whitespace().nth(i)?.parse().ok();
            }
        }
        return None;
    }
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}
