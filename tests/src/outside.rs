//! A client outside the Docker host: a namespace linked to the root namespace by a veth.
//!
//! ```text
//!  client ns                          root namespace (the Docker host, xlb)
//!  eth0 10.200.S.2/24 --------------- xt<id>h 10.200.S.1/24   (xlb's --iface; the VIP is
//!                                                              10.200.S.1 itself)
//! ```
//!
//! The client reaches the host's address directly; xlb, attached to the host's end, takes the
//! VIP's port and leaves everything else to the host's stack (and to Docker's rules).

use std::net::{Ipv4Addr, SocketAddr};

use crate::{
    netns::{NetNs, Offload, Veth, addr_add, set_tx_offload},
    util,
};

pub struct Outside {
    /// The host's end of the link, in the root namespace: xlb's `--iface`.
    pub host_if: String,
    pub host_ip: Ipv4Addr,
    pub client_ip: Ipv4Addr,
    // Field order = drop order: the root end goes first, then the namespace.
    _veth: Veth,
    pub client: NetNs,
}

impl Outside {
    /// Links a new client namespace to the root one on 10.200.`subnet`.0/24 (the host gets .1,
    /// the client .2). `subnet` must not be used by another test running at the same time
    /// (tests/docker.rs uses 250).
    pub fn new(subnet: u8, offload: Offload) -> Outside {
        let host_ip = Ipv4Addr::new(10, 200, subnet, 1);
        let client_ip = Ipv4Addr::new(10, 200, subnet, 2);
        let routes = util::try_run(&mut util::cmd("ip", ["-4", "route", "show", "match", &host_ip.to_string()])).unwrap_or_default();
        assert!(
            !routes.lines().any(|l| l.starts_with(&format!("10.200.{subnet}.0/24"))),
            "10.200.{subnet}.0/24 is already routed on this host (another test running?):\n{routes}"
        );
        let client = NetNs::new("c");
        let host_if = format!("xt{}h", util::unique_id());
        let veth = Veth::new(None, &host_if, Some(&client), "eth0");
        addr_add(None, &host_if, &format!("{host_ip}/24"));
        client.addr_add("eth0", &format!("{client_ip}/24"));
        set_tx_offload(Some(&client), "eth0", offload);
        Outside { host_if, host_ip, client_ip, _veth: veth, client }
    }

    /// `host_ip:port`, the VIP of a service on the host's own address.
    pub fn vip(&self, port: u16) -> SocketAddr {
        (self.host_ip, port).into()
    }
}
