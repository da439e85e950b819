//! End-to-end test harness for xlb.
//!
//! - [`netns`]: network namespaces and veth pairs with RAII cleanup, running code and
//!   processes inside a namespace;
//! - [`topology`]: client / LB / N backends topology running `xlb-testd`;
//! - [`xlb`]: the `xlb run` process guard (ready, SIGHUP reload, clean SIGTERM stop);
//! - [`http`]: HTTP/UDP clients (used from a namespace through [`NetNs::enter`]) and curl;
//! - [`docker`]: the `FROM scratch` xlb-testd image and labelled containers; [`compose`]:
//!   docker-compose projects; [`image`]: the xlb image (`cargo xtask image`);
//! - [`outside`]: a client outside the Docker host (a namespace linked to the root one);
//! - [`load`]: steady HTTP load through a VIP, every request recorded;
//! - [`socket`]: TCP connects that tell their source port, or use a chosen one;
//! - [`config`]: SPECs and YAML configs;
//! - [`dns`]: a DNS server answering one name with records the test switches;
//! - [`cgroup`]: a cgroup v2 child for socket-level balancing, holding only the test's clients;
//! - [`scaleout`]: xlb nodes behind an ECMP router, VIPs announced by BGP ([`bird`]).
//!
//! The tests need root, iproute2, ethtool, curl, the `xlb` binary at `$XLB_BIN` (and Docker for
//! tests/docker.rs); see [`preflight`].

pub mod bird;
pub mod cgroup;
pub mod compose;
pub mod config;
pub mod dns;
pub mod docker;
pub mod dockerd;
pub mod http;
pub mod image;
pub mod load;
pub mod netns;
pub mod outside;
pub mod scaleout;
pub mod socket;
#[cfg(feature = "status")]
pub mod status;
#[cfg(feature = "tls")]
pub mod tls;
pub mod topology;
pub mod util;
pub mod wrk;
pub mod xlb;

use std::{
    fs::File,
    io::Write as _,
    os::fd::AsRawFd,
    sync::{Mutex, MutexGuard, Once},
    time::{Duration, Instant},
};

pub use netns::{NetNs, Offload, Veth};
pub use topology::Topology;
pub use xlb::Xlb;

/// Panics with a clear message unless this runs as root with the tools the tests use and
/// `$XLB_BIN`; also removes leftovers of earlier test processes that died.
pub fn preflight() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "these tests must run as root (network namespaces, XDP)");
    for tool in ["ip", "ethtool", "curl", "sysctl"] {
        assert!(util::have(tool), "`{tool}` is not installed (needed by the tests; apt-get install iproute2 ethtool curl procps)");
    }
    xlb::xlb_bin();
    static CLEAN: Once = Once::new();
    CLEAN.call_once(cleanup_stale);
}

/// Serializes the tests that build topologies (timing-sensitive checks should not share 2 cores
/// with another topology), whatever `--test-threads` says, and across test processes: the
/// guard also holds an exclusive `flock` on [`LOCK_FILE`], so two `cargo test` runs (or two
/// test binaries) do not attach xlb to `docker0` or change Docker's rules at the same time.
/// Poisoning is ignored.
pub fn serial() -> Serial {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    Serial { file: lock_file(), _guard: guard }
}

/// The file behind the cross-process part of [`serial`].
pub const LOCK_FILE: &str = "/run/xlb-tests.lock";
/// How long [`serial`] waits for another test process before it panics.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Held while a test runs; see [`serial`].
pub struct Serial {
    // Field order = drop order: the file lock goes before the in-process one.
    file: Option<File>,
    _guard: MutexGuard<'static, ()>,
}

impl Drop for Serial {
    fn drop(&mut self) {
        // Closing the file releases the flock.
        self.file.take();
    }
}

/// Takes the exclusive flock on [`LOCK_FILE`] (`None` when the file cannot be opened, e.g. not
/// root: the tests that need the lock fail their own root check anyway).
fn lock_file() -> Option<File> {
    let mut f = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(LOCK_FILE).ok()?;
    let start = Instant::now();
    let mut told = false;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            let _ = f.set_len(0);
            let _ = writeln!(f, "{}", std::process::id());
            return Some(f);
        }
        let holder = std::fs::read_to_string(LOCK_FILE).unwrap_or_default();
        if !told {
            eprintln!("xlb-tests: waiting for test process {} ({LOCK_FILE})", holder.trim());
            told = true;
        }
        if start.elapsed() > LOCK_TIMEOUT {
            panic!("another test process ({}) has held {LOCK_FILE} for over {LOCK_TIMEOUT:?}", holder.trim());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Deletes namespaces, root-namespace links and containers left by test processes that are
/// gone (e.g. killed with SIGKILL, where no Drop ran).
pub fn cleanup_stale() {
    if let Ok(out) = util::try_run(&mut util::cmd("ip", ["netns", "list"])) {
        for name in out.lines().filter_map(|l| l.split_whitespace().next()) {
            if let Some(pid) = util::owner_pid(name)
                && !util::pid_alive(pid) {
                    netns::delete_netns(name);
                }
        }
    }
    if let Ok(out) = util::try_run(&mut util::cmd("ip", ["-o", "link", "show"])) {
        for l in out.lines() {
            // "12: xt1a2bx0h@if11: <...> ... alias xlb-tests:1234"
            let Some(name) = l.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n)) else { continue };
            let Some(owner) = l.split("alias xlb-tests:").nth(1) else { continue };
            let pid = owner.split_whitespace().next().and_then(|p| p.parse().ok());
            if pid.is_some_and(|p| !util::pid_alive(p)) {
                let _ = util::try_run(&mut util::cmd("ip", ["link", "del", "dev", name]));
            }
        }
    }
    cgroup::cleanup_stale();
    if util::have("docker") {
        docker::cleanup_stale_containers();
        docker::cleanup_stale_networks();
    }
}

/// `both_offloads!(f, g)` generates `mod f { offload_on, offload_off }` (and the same for `g`)
/// whose tests call `f(Offload::On)` and `f(Offload::Off)`.
#[macro_export]
macro_rules! both_offloads {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            fn offload_on() {
                super::$name($crate::Offload::On)
            }
            #[test]
            fn offload_off() {
                super::$name($crate::Offload::Off)
            }
        }
    )+};
}
