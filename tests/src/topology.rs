//! The namespace topology of the end-to-end tests:
//!
//! ```text
//!  client ns                LB ns (router, xlb)                 backend ns bI (I = 1..N)
//!  eth0 10.200.1.2/24 ----- lc  10.200.1.1/24
//!       fd00:200:1::2/64        fd00:200:1::1/64
//!                           lbI 10.200.(10+I).1/24  ----------- eth0 10.200.(10+I).2/24
//!                               fd00:200:(10+I)::1/64                fd00:200:(10+I)::2/64
//! ```
//!
//! The VIPs (10.200.100.1, fd00:200:100::1) belong to no interface: the client routes them via
//! the LB (`lc`), where xlb is attached. Backends route everything via the LB, and each runs
//! `xlb-testd --name bI --port 8080`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    http::{self, Spread, Stream},
    netns::{NetNs, Offload, Veth},
    util::{Proc, STDOUT},
    xlb::{Xlb, XlbArgs},
};

pub const VIP4: Ipv4Addr = Ipv4Addr::new(10, 200, 100, 1);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0x100, 0, 0, 0, 0, 1);
/// The client's interface (in the client namespace).
pub const CLIENT_IF: &str = "eth0";
/// The LB's side of the client link: xlb's `--iface`.
pub const LB_CLIENT_IF: &str = "lc";
/// Each backend's interface (in its namespace).
pub const BACKEND_IF: &str = "eth0";
/// Port xlb-testd serves (TCP and UDP) on the backends.
pub const TESTD_PORT: u16 = 8080;

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 1, 0, 0, 0, 0, 2);
pub const LB_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 1);
pub const LB_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 1, 0, 0, 0, 0, 1);

/// The `xlb-testd` binary: `$XLB_TESTD_BIN`, else the one cargo built next to the running test
/// executable (`target/<profile>/xlb-testd`).
pub fn testd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("XLB_TESTD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("xlb-testd"))
        .collect();
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!(
            "xlb-testd not found (looked at {candidates:?}): build it with \
             `cargo build -p xlb-tests --bins` or set XLB_TESTD_BIN"
        )
    })
}

/// Starts xlb-testd in `ns` and waits until it listens.
pub fn start_testd(ns: &NetNs, name: &str, port: u16) -> Proc {
    let bin = testd_bin();
    let port = port.to_string();
    let mut p = ns.spawn(
        &format!("xlb-testd {name}"),
        bin.to_str().expect("utf-8 path"),
        &["--name", name, "--port", &port, "--quiet"],
    );
    if let Err(e) = p.wait_line(STDOUT, "listening", Duration::from_secs(10)) {
        panic!("backend {name}: {e}");
    }
    p
}

pub struct Backend {
    /// `b1`, `b2`, ...: also what its xlb-testd answers.
    pub name: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// The LB's interface towards this backend (`lbI`).
    pub lb_iface: String,
    // Field order = drop order: the process goes before its namespace.
    pub testd: Option<Proc>,
    pub ns: NetNs,
}

impl Backend {
    pub fn addr4(&self) -> SocketAddr {
        (self.v4, TESTD_PORT).into()
    }

    pub fn addr6(&self) -> SocketAddr {
        (self.v6, TESTD_PORT).into()
    }
}

pub struct Topology {
    pub offload: Offload,
    pub backends: Vec<Backend>,
    pub client: NetNs,
    pub lb: NetNs,
}

pub struct TopologyBuilder {
    backends: usize,
    offload: Offload,
    start_testd: bool,
}

impl TopologyBuilder {
    pub fn backends(mut self, n: usize) -> Self {
        assert!((1..=50).contains(&n));
        self.backends = n;
        self
    }

    pub fn offload(mut self, o: Offload) -> Self {
        self.offload = o;
        self
    }

    /// Whether to run xlb-testd in each backend (default: yes).
    pub fn start_testd(mut self, yes: bool) -> Self {
        self.start_testd = yes;
        self
    }

    pub fn build(self) -> Topology {
        // Everything made so far is owned by `topo` at once, so a failure half way cleans up.
        let mut topo = Topology {
            offload: self.offload,
            backends: Vec::new(),
            client: NetNs::new("c"),
            lb: NetNs::new("l"),
        };
        let (client, lb) = (&topo.client, &topo.lb);

        lb.sysctl("net.ipv4.ip_forward", "1");
        lb.sysctl("net.ipv6.conf.all.forwarding", "1");

        Veth::new(Some(client), CLIENT_IF, Some(lb), LB_CLIENT_IF);
        client.addr_add(CLIENT_IF, &format!("{CLIENT_V4}/24"));
        client.addr_add(CLIENT_IF, &format!("{CLIENT_V6}/64"));
        lb.addr_add(LB_CLIENT_IF, &format!("{LB_CLIENT_V4}/24"));
        lb.addr_add(LB_CLIENT_IF, &format!("{LB_CLIENT_V6}/64"));
        client.ip(&format!("route add {VIP4}/32 via {LB_CLIENT_V4}"));
        client.ip(&format!("-6 route add {VIP6}/128 via {LB_CLIENT_V6}"));
        client.set_tx_offload(CLIENT_IF, self.offload);

        for i in 1..=self.backends {
            let x = 10 + i as u16;
            let name = format!("b{i}");
            let ns = NetNs::new(&name);
            let lb_iface = format!("lb{i}");
            Veth::new(Some(&ns), BACKEND_IF, Some(lb), &lb_iface);
            let v4 = Ipv4Addr::new(10, 200, x as u8, 2);
            let v6 = Ipv6Addr::new(0xfd00, 0x200, x, 0, 0, 0, 0, 2);
            ns.addr_add(BACKEND_IF, &format!("{v4}/24"));
            ns.addr_add(BACKEND_IF, &format!("{v6}/64"));
            lb.addr_add(&lb_iface, &format!("10.200.{x}.1/24"));
            lb.addr_add(&lb_iface, &format!("fd00:200:{x:x}::1/64"));
            ns.ip(&format!("route add default via 10.200.{x}.1"));
            ns.ip(&format!("-6 route add default via fd00:200:{x:x}::1"));
            ns.set_tx_offload(BACKEND_IF, self.offload);
            topo.backends.push(Backend { name, v4, v6, lb_iface, testd: None, ns });
        }
        if self.start_testd {
            for b in &mut topo.backends {
                b.testd = Some(start_testd(&b.ns, &b.name, TESTD_PORT));
            }
            topo.check_backends();
        }
        topo
    }
}

impl Topology {
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder { backends: 3, offload: Offload::On, start_testd: true }
    }

    pub fn backend(&self, name: &str) -> &Backend {
        self.backends
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name}"))
    }

    pub fn names(&self) -> Vec<String> {
        self.backends.iter().map(|b| b.name.clone()).collect()
    }

    /// The LB's interfaces towards the backends.
    pub fn lb_backend_ifaces(&self) -> Vec<String> {
        self.backends.iter().map(|b| b.lb_iface.clone()).collect()
    }

    pub fn vip4(port: u16) -> SocketAddr {
        (VIP4, port).into()
    }

    pub fn vip6(port: u16) -> SocketAddr {
        (VIP6, port).into()
    }

    /// Checks, without xlb, that the LB namespace reaches every backend over v4 and v6 (TCP and
    /// UDP), so a data-plane failure later is not a broken topology.
    #[track_caller]
    pub fn check_backends(&self) {
        for b in &self.backends {
            for addr in [b.addr4(), b.addr6()] {
                let got = self.lb.enter(|| http::get_name(addr));
                assert_eq!(got.as_deref(), Ok(b.name.as_str()), "topology: LB -> {} TCP {addr}", b.name);
                let got = self.lb.enter(|| http::udp_query(addr, 3, Duration::from_secs(1)));
                assert_eq!(got.as_deref(), Ok(b.name.as_str()), "topology: LB -> {} UDP {addr}", b.name);
            }
        }
    }

    /// Starts xlb in the LB namespace on [`LB_CLIENT_IF`].
    pub fn start_xlb(&self, config: Option<&Path>, specs: &[String]) -> Xlb {
        Xlb::start(XlbArgs {
            ns: Some(&self.lb),
            iface: LB_CLIENT_IF,
            config,
            specs: specs.to_vec(),
            other_ifaces: self.lb_backend_ifaces(),
        })
    }

    /// `GET /` from the client on a new connection.
    pub fn get(&self, addr: SocketAddr) -> Result<String, String> {
        self.client.enter(|| http::get_name(addr))
    }

    /// `count` new connections from the client (bounded by 60 s).
    pub fn spread(&self, addr: SocketAddr, count: usize) -> Spread {
        self.client.enter(|| http::spread(addr, count, Duration::from_secs(60)))
    }

    /// `count` UDP queries from new sockets in the client (bounded by 60 s).
    pub fn udp_spread(&self, addr: SocketAddr, count: usize) -> Spread {
        self.client.enter(|| http::udp_spread(addr, count, Duration::from_secs(60)))
    }

    /// A long-lived `/stream` connection from the client.
    pub fn stream(&self, addr: SocketAddr, secs: u64) -> Stream {
        Stream::start(Some(&self.client), addr, secs)
    }

    /// `IpAddr` of backend `name`, v4 or v6.
    pub fn ip(&self, name: &str, v6: bool) -> IpAddr {
        let b = self.backend(name);
        if v6 { b.v6.into() } else { b.v4.into() }
    }
}
