//! The scale-out topology: several xlb nodes behind a router that spreads the VIP over them
//! by ECMP, each node announcing the VIP by BGP (BIRD exports xlb's announce table), and
//! backends on the nodes' L2 segment answering clients directly (`forwarding: direct`).
//!
//! ```text
//!  client ns                router ns (BIRD, AS 65000)        node ns nI (xlb + BIRD, AS 65001)
//!  eth0 10.210.1.2/24 ----- rc  10.210.1.1/24                  eth0 10.210.0.(10+I)/24, XDP
//!                           br0 10.210.0.1/24 ── port nI ───── (I = 1..N)
//!                                             └─ port bJ ───── backend ns bJ: eth0 10.210.0.(20+J)/24,
//!                                                              VIP 10.210.100.1/32 on lo, xlb-testd :80
//! ```
//!
//! The router learns 10.210.100.1/32 from every node whose xlb announces it and installs one
//! multipath route; `fib_multipath_hash_policy=1` hashes the 5-tuple. Backends reply through
//! the router, never through a node.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use crate::{
    bird::{self, Bird},
    netns::{NetNs, Veth},
    topology::start_testd,
    util::{Proc, TempFile, try_run},
    xlb::{Xlb, XlbArgs},
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 210, 100, 1);
pub const PORT: u16 = 80;
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 210, 0, 1);
/// The kernel routing table xlb writes the VIP routes into, which BIRD exports.
pub const ANNOUNCE_TABLE: u32 = 100;
const ROUTER_AS: u32 = 65000;
const NODE_AS: u32 = 65001;
/// The interface of every node, backend and the client in their namespaces.
pub const IFACE: &str = "eth0";

pub struct Node {
    pub name: String,
    pub ip: Ipv4Addr,
    // Field order = drop order: processes before the namespace.
    pub xlb: Option<Xlb>,
    pub bird: Bird,
    pub ns: NetNs,
}

pub struct Backend {
    pub name: String,
    pub ip: Ipv4Addr,
    pub testd: Proc,
    pub ns: NetNs,
}

pub struct ScaleOut {
    pub nodes: Vec<Node>,
    pub backends: Vec<Backend>,
    pub router_bird: Option<Bird>,
    /// Nodes killed by [`ScaleOut::kill_node`].
    killed: Vec<usize>,
    config: TempFile,
    pub client: NetNs,
    pub router: NetNs,
}

impl ScaleOut {
    /// Builds the namespaces, starts the backends, the router's BIRD, then on each node
    /// xlb and its BIRD. xlb is not waited for beyond `ready`: see [`ScaleOut::wait_paths`].
    pub fn build(nodes: usize, backends: usize) -> ScaleOut {
        assert!((1..=9).contains(&nodes) && (1..=9).contains(&backends));
        let router = NetNs::new("r");
        let client = NetNs::new("c");
        router.sysctl("net.ipv4.ip_forward", "1");
        router.sysctl("net.ipv4.fib_multipath_hash_policy", "1");
        router.ip("link add br0 type bridge");
        router.ip("link set br0 up");
        router.addr_add("br0", &format!("{ROUTER}/24"));
        Veth::new(Some(&client), IFACE, Some(&router), "rc");
        client.addr_add(IFACE, "10.210.1.2/24");
        router.addr_add("rc", "10.210.1.1/24");
        client.ip("route add default via 10.210.1.1");

        let backend_ips: Vec<Ipv4Addr> = (1..=backends).map(|j| Ipv4Addr::new(10, 210, 0, 20 + j as u8)).collect();
        let services = config(&backend_ips, "active");
        let mut s = ScaleOut {
            nodes: Vec::new(),
            backends: Vec::new(),
            router_bird: None,
            killed: Vec::new(),
            config: TempFile::new(".yaml", &services),
            client,
            router,
        };

        for (j, ip) in backend_ips.iter().enumerate() {
            let name = format!("b{}", j + 1);
            let ns = NetNs::new(&name);
            s.attach(&ns, &name, *ip);
            // The VIP is the backend's own, but only on lo: ARP for it is left to nobody.
            ns.addr_add("lo", &format!("{VIP}/32"));
            ns.sysctl("net.ipv4.conf.all.arp_ignore", "1");
            ns.sysctl("net.ipv4.conf.all.arp_announce", "2");
            let testd = start_testd(&ns, &name, PORT);
            s.backends.push(Backend { name, ip: *ip, testd, ns });
        }
        let node_ips: Vec<Ipv4Addr> = (1..=nodes).map(|i| Ipv4Addr::new(10, 210, 0, 10 + i as u8)).collect();
        s.router_bird = Some(Bird::start(&s.router, "bird (router)", &bird::router_config(ROUTER, ROUTER_AS, &node_ips, NODE_AS)));
        for (i, ip) in node_ips.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let ns = NetNs::new(&name);
            s.attach(&ns, &name, *ip);
            let bird = Bird::start(&ns, &format!("bird ({name})"), &bird::node_config(*ip, NODE_AS, ROUTER, ROUTER_AS, ANNOUNCE_TABLE));
            let xlb = Xlb::start(XlbArgs { ns: Some(&ns), iface: IFACE, config: Some(s.config.path()), specs: Vec::new(), other_ifaces: Vec::new() });
            s.nodes.push(Node { name, ip: *ip, xlb: Some(xlb), bird, ns });
        }
        s
    }

    /// Links `ns`'s `eth0` (address `ip`/24, default route via the router) to the router's
    /// bridge as port `port`. GRO on the router's end lets the veth take frames a node's
    /// XDP program sends back out (`XDP_TX`) without an XDP program of its own.
    fn attach(&self, ns: &NetNs, port: &str, ip: Ipv4Addr) {
        Veth::new(Some(ns), IFACE, Some(&self.router), port);
        self.router.ip(&format!("link set {port} master br0"));
        self.router.run("ethtool", &["-K", port, "gro", "on"]);
        ns.addr_add(IFACE, &format!("{ip}/24"));
        ns.ip(&format!("route add default via {ROUTER}"));
    }

    /// Rewrites the nodes' config with every backend in `state` (`active`, `draining`);
    /// each xlb reloads it within a second (it watches the file).
    pub fn set_backend_state(&self, state: &str) {
        let ips: Vec<Ipv4Addr> = self.backends.iter().map(|b| b.ip).collect();
        self.config.write(&config(&ips, state));
    }

    pub fn vip() -> SocketAddr {
        (VIP, PORT).into()
    }

    /// The next hops of the router's route to the VIP.
    pub fn paths(&self) -> Vec<Ipv4Addr> {
        let out = self.router.ip(&format!("route show {VIP}/32"));
        let words: Vec<&str> = out.split_whitespace().collect();
        words.windows(2).filter(|w| w[0] == "via").filter_map(|w| w[1].parse().ok()).collect()
    }

    /// Waits until the router has exactly `n` next hops for the VIP (bounded by `timeout`);
    /// returns how long that took, or what the router has.
    pub fn wait_paths(&self, n: usize, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        crate::util::wait_for(timeout, Duration::from_millis(20), || (self.paths().len() == n).then(|| start.elapsed()))
            .ok_or_else(|| format!("after {timeout:?} the router has next hops {:?} for {VIP}, want {n}", self.paths()))
    }

    /// Packets the router has sent to node `i` (0-based) so far.
    pub fn packets_to_node(&self, i: usize) -> u64 {
        let port = &self.nodes[i].name;
        self.router.run("cat", &[&format!("/sys/class/net/{port}/statistics/tx_packets")]).trim().parse().expect("a packet count")
    }

    /// Node `i` dies as a machine does: its link goes down first (nothing it sends gets
    /// out, not even the FIN of its BGP session), then xlb and BIRD are killed (SIGKILL).
    pub fn kill_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.ns.ip(&format!("link set {IFACE} down"));
        node.xlb.as_mut().expect("a running xlb").kill_9();
        node.bird.kill_9();
        self.killed.push(i);
    }

    /// The BIRD logs and each running xlb's last lines, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            if let Some(x) = &n.xlb {
                let log = x.log();
                let lines: Vec<&str> = log.lines().collect();
                out += &format!("--- xlb {} (last 20 lines) ---\n{}\n", n.name, lines[lines.len().saturating_sub(20)..].join("\n"));
            }
            out += &format!("--- bird {} ---\n{}\n", n.name, n.bird.log());
        }
        if let Some(b) = &self.router_bird {
            out += &format!("--- bird router ---\n{}\n", b.log());
        }
        out
    }
}

/// Every node's config: the VIP by direct server return over `backends`, all in `state`.
fn config(backends: &[Ipv4Addr], state: &str) -> String {
    let list: Vec<String> = backends.iter().map(|ip| format!("{{ address: {ip}, state: {state} }}")).collect();
    format!(
        "dataplane: {{ hash_seed: 7 }}\nannounce: {{ table: {ANNOUNCE_TABLE} }}\nservices:\n  - name: web\n    vip: {VIP}\n    port: {PORT}\n    forwarding: direct\n    backends: [{}]\n",
        list.join(", ")
    )
}

impl Drop for ScaleOut {
    /// A killed node's xlb may have pinned its data plane: `xlb down` in its namespace
    /// removes the pins before the namespace goes.
    fn drop(&mut self) {
        let bin = crate::xlb::xlb_bin();
        for &i in &self.killed {
            if let Err(e) = try_run(&mut self.nodes[i].ns.exec(bin.to_str().expect("utf-8"), ["down", "--iface", IFACE])) {
                eprintln!("xlb-tests: cleanup: xlb down in {}: {e}", self.nodes[i].name);
            }
        }
    }
}
