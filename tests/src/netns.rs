//! Network namespaces and veth pairs (iproute2), with RAII cleanup.

use std::{
    fs::File,
    io,
    os::fd::AsRawFd,
    process::Command,
    thread,
    time::Duration,
};

use crate::util::{Proc, cmd, run, try_run, unique_id};

/// Checksum offload setting for a test run (`ethtool -K DEV tx on|off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offload {
    On,
    Off,
}

impl Offload {
    pub fn as_str(self) -> &'static str {
        match self {
            Offload::On => "on",
            Offload::Off => "off",
        }
    }
}

/// Moves the calling thread into the network namespace `name` (`/run/netns/NAME`).
/// Only ever call it on a thread made for that purpose (see [`NetNs::enter`]).
pub fn setns_current_thread(name: &str) -> io::Result<()> {
    let f = File::open(format!("/run/netns/{name}"))
        .or_else(|_| File::open(format!("/var/run/netns/{name}")))?;
    // SAFETY: setns(2) on an fd we own; CLONE_NEWNET is allowed in multi-threaded processes
    // and only affects the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A network namespace `xt<id><role>`; on drop every process in it is killed and it is deleted
/// (which also deletes its interfaces, and so the veth pairs with an end in it).
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `xt<unique id><role>` with `lo` up.
    pub fn new(role: &str) -> NetNs {
        let name = format!("xt{}{role}", unique_id());
        run(&mut cmd("ip", ["netns", "add", &name]));
        let ns = NetNs { name };
        ns.ip("link set lo up");
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NS prog args...`
    pub fn exec<S: AsRef<std::ffi::OsStr>>(&self, prog: &str, args: impl IntoIterator<Item = S>) -> Command {
        let mut c = cmd("ip", ["netns", "exec", &self.name, prog]);
        c.args(args);
        c
    }

    #[track_caller]
    pub fn run(&self, prog: &str, args: &[&str]) -> String {
        run(&mut self.exec(prog, args))
    }

    pub fn try_run(&self, prog: &str, args: &[&str]) -> Result<String, String> {
        try_run(&mut self.exec(prog, args))
    }

    /// `ip -n NS ARGS` (ARGS split on whitespace); panics on failure.
    #[track_caller]
    pub fn ip(&self, args: &str) -> String {
        run(cmd("ip", ["-n", &self.name]).args(args.split_whitespace()))
    }

    pub fn try_ip(&self, args: &str) -> Result<String, String> {
        try_run(cmd("ip", ["-n", &self.name]).args(args.split_whitespace()))
    }

    /// `sysctl -w KEY=VALUE` inside the namespace.
    #[track_caller]
    pub fn sysctl(&self, key: &str, value: &str) {
        self.run("sysctl", &["-q", "-w", &format!("{key}={value}")]);
    }

    /// Adds an address (IPv6 ones with `nodad`, so they are usable at once).
    #[track_caller]
    pub fn addr_add(&self, dev: &str, cidr: &str) {
        addr_add(Some(self), dev, cidr)
    }

    /// `ethtool -K DEV tx on|off` (checksum offload; also turns off TSO when off).
    #[track_caller]
    pub fn set_tx_offload(&self, dev: &str, offload: Offload) {
        set_tx_offload(Some(self), dev, offload)
    }

    /// Spawns `prog args...` inside the namespace with its output collected.
    pub fn spawn(&self, name: &str, prog: &str, args: &[&str]) -> Proc {
        Proc::spawn(name, self.exec(prog, args))
    }

    /// Runs `f` on a new thread that lives in this namespace: sockets it creates belong here.
    pub fn enter<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        thread::scope(|s| {
            s.spawn(|| {
                setns_current_thread(&self.name)
                    .unwrap_or_else(|e| panic!("setns into {}: {e}", self.name));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Like [`NetNs::enter`], but in the background.
    pub fn spawn_thread<F, R>(&self, f: F) -> thread::JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let name = self.name.clone();
        thread::spawn(move || {
            setns_current_thread(&name).unwrap_or_else(|e| panic!("setns into {name}: {e}"));
            f()
        })
    }

    /// Pids of the processes in the namespace.
    pub fn pids(&self) -> Vec<u32> {
        pids_in(&self.name)
    }
}

fn pids_in(ns: &str) -> Vec<u32> {
    try_run(&mut cmd("ip", ["netns", "pids", ns]))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Kills everything in namespace `name` and deletes it (errors only logged).
pub fn delete_netns(name: &str) {
    for _ in 0..3 {
        let pids = pids_in(name);
        if pids.is_empty() {
            break;
        }
        for p in pids {
            crate::util::send_signal(p, libc::SIGKILL);
        }
        thread::sleep(Duration::from_millis(50));
    }
    if let Err(e) = try_run(&mut cmd("ip", ["netns", "del", name])) {
        eprintln!("xlb-tests: cleanup: {e}");
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        delete_netns(&self.name);
    }
}

fn ip_in(ns: Option<&NetNs>) -> Command {
    match ns {
        Some(ns) => cmd("ip", ["-n", ns.name()]),
        None => Command::new("ip"),
    }
}

/// Adds an address in `ns` (`None`: the root namespace).
#[track_caller]
pub fn addr_add(ns: Option<&NetNs>, dev: &str, cidr: &str) {
    let mut c = ip_in(ns);
    c.args(["addr", "add", cidr, "dev", dev]);
    if cidr.contains(':') {
        c.arg("nodad");
    }
    run(&mut c);
}

/// `ethtool -K DEV tx on|off` in `ns` (`None`: the root namespace).
#[track_caller]
pub fn set_tx_offload(ns: Option<&NetNs>, dev: &str, offload: Offload) {
    let args = ["-K", dev, "tx", offload.as_str()];
    match ns {
        Some(ns) => ns.run("ethtool", &args),
        None => run(&mut cmd("ethtool", args)),
    };
}

/// A veth pair. Ends in a namespace vanish with it; an end in the root namespace is deleted
/// when this guard drops.
pub struct Veth {
    pub a: String,
    pub b: String,
    root_end: Option<String>,
}

/// Alias put on root-namespace links, so that leftovers of a dead test run can be found.
pub fn owner_alias() -> String {
    format!("xlb-tests:{}", std::process::id())
}

impl Veth {
    /// Creates `a_name` in `a` and its peer `b_name` in `b` (`None`: the root namespace; its
    /// name must be unique there, e.g. `xt<id>h`) and brings both up. Each end is created
    /// directly in its namespace, so names inside namespaces never clash.
    #[track_caller]
    pub fn new(a: Option<&NetNs>, a_name: &str, b: Option<&NetNs>, b_name: &str) -> Veth {
        assert!(a_name.len() <= 15 && b_name.len() <= 15, "interface name too long");
        assert!(a.is_some() || b.is_some(), "at most one veth end can be in the root namespace");
        let mut c = Command::new("ip");
        c.args(["link", "add", "name", a_name]);
        if let Some(ns) = a {
            c.args(["netns", ns.name()]);
        }
        c.args(["type", "veth", "peer", "name", b_name]);
        if let Some(ns) = b {
            c.args(["netns", ns.name()]);
        }
        run(&mut c);
        let root_end = match (a, b) {
            (None, _) => Some(a_name.to_string()),
            (_, None) => Some(b_name.to_string()),
            _ => None,
        };
        let veth = Veth { a: a_name.into(), b: b_name.into(), root_end };
        if let Some(r) = &veth.root_end {
            run(&mut cmd("ip", ["link", "set", "dev", r, "alias", &owner_alias()]));
        }
        run(ip_in(a).args(["link", "set", "dev", a_name, "up"]));
        run(ip_in(b).args(["link", "set", "dev", b_name, "up"]));
        veth
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        if let Some(r) = &self.root_end {
            // Gone already if the namespace of the other end was deleted first.
            if std::path::Path::new(&format!("/sys/class/net/{r}")).exists()
                && let Err(e) = try_run(&mut cmd("ip", ["link", "del", "dev", r])) {
                    eprintln!("xlb-tests: cleanup: {e}");
                }
        }
    }
}
