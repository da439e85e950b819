//! BIRD 2 (Debian's `bird2`) for the scale-out tests: the router that spreads a VIP over
//! the xlb nodes by ECMP, and on each node the daemon that exports xlb's announce table by
//! BGP. Short timers (hold 3 s, keepalive 1 s) so a dead node is noticed within seconds.

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use crate::{
    netns::NetNs,
    util::{Proc, TempDir, cmd, have, try_run},
};

/// The BGP hold time of every session: a peer silent this long is declared dead.
pub const HOLD_SECS: u64 = 3;
const TIMERS: &str = "hold time 3; keepalive time 1; connect retry time 1; error wait time 1, 2;";

/// A `bird -f` process in a namespace, with its control socket.
pub struct Bird {
    // Field order = drop order: the process before its directory.
    proc: Proc,
    ctl: PathBuf,
    _dir: TempDir,
}

impl Bird {
    /// Starts BIRD in `ns` with `config`; panics (with the log) if it exits at once.
    pub fn start(ns: &NetNs, name: &str, config: &str) -> Bird {
        assert!(have("bird"), "`bird` is not installed: run `cargo xtask setup` (Debian package bird2)");
        let dir = TempDir::new();
        let conf = dir.path().join("bird.conf");
        let ctl = dir.path().join("bird.ctl");
        std::fs::write(&conf, config).unwrap_or_else(|e| panic!("writing {}: {e}", conf.display()));
        // Each its own control socket and PID file (the default PID file is locked by the first).
        let pid = dir.path().join("bird.pid");
        let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_owned();
        let mut proc = ns.spawn(name, "bird", &["-f", "-c", &path(&conf), "-s", &path(&ctl), "-P", &path(&pid)]);
        let up = crate::util::wait_for(Duration::from_secs(5), Duration::from_millis(20), || ctl.exists().then_some(()));
        if up.is_none() || proc.try_wait().is_some() {
            panic!("{name} did not start:\n{}\n--- config ---\n{config}", proc.log().text());
        }
        Bird { proc, ctl, _dir: dir }
    }

    /// `birdc -s CTL COMMAND...`, its output (or why it failed).
    pub fn birdc(&self, command: &str) -> Result<String, String> {
        try_run(cmd("birdc", ["-s", self.ctl.to_str().expect("utf-8")]).args(command.split_whitespace()))
    }

    /// SIGKILL, as a node dies.
    pub fn kill_9(&mut self) {
        self.proc.kill();
    }

    pub fn log(&self) -> String {
        self.proc.log().text()
    }
}

/// The router: one eBGP session per node (`peers`, all in `peer_as`); routes the nodes
/// announce for one prefix are merged into one multipath route in the kernel (`merge paths`),
/// which then spreads flows by its hash policy.
pub fn router_config(id: Ipv4Addr, asn: u32, peers: &[Ipv4Addr], peer_as: u32) -> String {
    let mut c = format!(
        "router id {id};\n\
         protocol device {{ scan time 1; }}\n\
         protocol kernel {{ ipv4 {{ import none; export all; }}; merge paths on; }}\n\
         template bgp node {{ local {id} as {asn}; {TIMERS} ipv4 {{ import all; export none; }}; }}\n"
    );
    for (i, p) in peers.iter().enumerate() {
        c += &format!("protocol bgp node{} from node {{ neighbor {p} as {peer_as}; }}\n", i + 1);
    }
    c
}

/// An xlb node: learns the routes xlb writes into kernel table `table` (`learn`: routes of
/// other programs) and exports them to the router.
pub fn node_config(id: Ipv4Addr, asn: u32, router: Ipv4Addr, router_as: u32, table: u32) -> String {
    format!(
        "router id {id};\n\
         protocol device {{ scan time 1; }}\n\
         protocol kernel {{ kernel table {table}; learn; scan time 1; ipv4 {{ import all; export none; }}; }}\n\
         protocol bgp uplink {{ local {id} as {asn}; neighbor {router} as {router_as}; {TIMERS} ipv4 {{ import none; export all; }}; }}\n"
    )
}
