//! `xlb-kernel-bench`: the micro-figures of `cargo xtask bench`, through the xlb library.
//! Built with `--features kernel-bench` and run as root by the bench, which reads the one
//! JSON object it prints on stdout (progress goes to stderr). `--quick` runs fewer
//! iterations.
//!
//! - **XDP program, ns per packet.** `BPF_PROG_TEST_RUN` of `xlb_xdp` on frames "received"
//!   on an interface of a namespace of its own (routes and permanent neighbour entries, so
//!   the FIB lookup succeeds as on a real host). Every run is a separate call with
//!   `repeat = 1`: with `repeat = N` the kernel runs the program N times on the *same*
//!   buffer, which the first run has already rewritten to the backend, so runs 2..N would
//!   time a service miss. The kernel's own timing of each run is used (it covers the
//!   program, and one clock read and bottom-half toggle around it, not the syscall); the
//!   "not a service" case shows that floor. Counters check that each case took the path it
//!   names.
//! - **Maglev table build** (`xlb::dataplane::maglev::maglev`) for 10, 100 and 1,000 backends.
//! - **Map sync** (`Dataplane::sync`) of 1,000 services and 10,000 backends, then of a
//!   one-backend change.
use std::{
    net::{IpAddr, Ipv4Addr},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{TestRun as _, TestRunOptions};
use serde_json::{Value, json};
use lb_common::ServiceKey;
use xlb::{
    config::{BackendState, Forwarding, Method},
    dataplane::{
        Dataplane, Limits,
        maglev::{self, Entry},
    },
    plan::{Desired, DesiredBackend},
};

const IPPROTO_TCP: u8 = 6;
/// xlb's weight unit (`plan::WEIGHT_SCALE`): weight 1 in a config.
const WEIGHT: u32 = 100;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
const BACKENDS: [Ipv4Addr; 3] =
    [Ipv4Addr::new(10, 251, 0, 2), Ipv4Addr::new(10, 251, 0, 3), Ipv4Addr::new(10, 251, 0, 4)];

fn main() -> ExitCode {
    let quick = std::env::args().any(|a| a == "--quick");
    match run(quick) {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xlb-kernel-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(quick: bool) -> Result<Value> {
    let ns = Netns::create()?;
    let iterations = if quick { 20_000 } else { 200_000 };
    let xdp = ns.enter(|| xdp_cases(iterations))?;
    let maglev = maglev_times(quick);
    let sync = sync_times()?;
    Ok(json!({ "xdp": xdp, "maglev": maglev, "sync": sync }))
}

// ---------------------------------------------------------------------------------------
// The namespace: fx0 (where client frames arrive), fx1 (towards the backends).

struct Netns {
    name: String,
}

impl Netns {
    fn create() -> Result<Netns> {
        let name = format!("xb{:x}-k", std::process::id());
        sh(&["ip", "netns", "add", &name])?;
        let ns = Netns { name };
        let n = ns.name.as_str();
        for args in [
            "link set lo up",
            "link add fx0 type veth peer name fx0p",
            "link add fx1 type veth peer name fx1p",
            "link set fx0 up",
            "link set fx0p up",
            "link set fx1 up",
            "link set fx1p up",
            "addr add 10.250.0.1/24 dev fx0",
            "addr add 10.251.0.1/24 dev fx1",
        ] {
            let mut argv = vec!["ip", "-n", n];
            argv.extend(args.split_whitespace());
            sh(&argv)?;
        }
        // bpf_fib_lookup answers only for packets that arrive where forwarding is on.
        sh(&["ip", "netns", "exec", n, "sysctl", "-qw", "net.ipv4.conf.all.forwarding=1"])?;
        for (i, b) in BACKENDS.iter().enumerate() {
            let mac = format!("02:00:00:00:00:{:02x}", i + 2);
            let addr = b.to_string();
            sh(&["ip", "-n", n, "neigh", "replace", &addr, "lladdr", &mac, "dev", "fx1", "nud", "permanent"])?;
        }
        Ok(ns)
    }

    /// Runs `f` on a thread inside the namespace (test runs look the ingress device up in
    /// the calling thread's namespace).
    fn enter<R: Send>(&self, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
        use std::os::fd::AsRawFd as _;
        let file = std::fs::File::open(format!("/run/netns/{}", self.name))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns(2) on a descriptor we own; it moves only this thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns: {}", std::io::Error::last_os_error());
                }
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = sh(&["ip", "netns", "del", &self.name]) {
            eprintln!("xlb-kernel-bench: cleanup: {e:#}");
        }
    }
}

fn sh(argv: &[&str]) -> Result<()> {
    let out = Command::new(argv[0]).args(&argv[1..]).output().with_context(|| format!("starting {}", argv[0]))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", argv.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// XDP test runs.

struct Bench {
    dp: Dataplane,
    ifindex: u32,
}

impl Bench {
    fn load(conntrack_size: u32) -> Result<Bench> {
        let limits = Limits { conntrack_size, table_size: 65537, max_services: 8, hash_seed: 0 };
        let (mut dp, _log) = Dataplane::load(limits, aya_log::Level::Error)?;
        let backends = BACKENDS
            .iter()
            .map(|b| DesiredBackend { addr: IpAddr::V4(*b), port: 8080, weight: WEIGHT, state: BackendState::Active })
            .collect();
        let key = ServiceKey::new(IpAddr::V4(VIP), 80, IPPROTO_TCP);
        dp.sync(&[Desired { name: "bench".into(), key, method: Method::Maglev, backends, socket_lb: false, forwarding: Forwarding::Nat }])?;
        let name = std::ffi::CString::new("fx0")?;
        // SAFETY: a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            bail!("no fx0 in the benchmark namespace");
        }
        Ok(Bench { dp, ifindex })
    }

    /// One test run; the XDP action and the kernel's time for it.
    fn run(&mut self, frame: &[u8]) -> Result<(u32, u64)> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let md = [0, frame.len() as u32, 0, self.ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w: &u32| w.to_ne_bytes()).collect();
        let opts = TestRunOptions { data_in: Some(frame), ctx_in: Some(&ctx), ..Default::default() };
        let r = self.dp.xdp()?.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        Ok((r.return_value, r.duration.as_nanos() as u64))
    }

    /// (packets, new flows) counted for the service so far.
    fn counted(&mut self) -> Result<(u64, u64)> {
        let stats = self.dp.counters()?;
        Ok(stats.services.iter().fold((0, 0), |(p, n), (_, c)| (p + c.packets, n + c.new_flows)))
    }

    /// Runs `n` frames from `frame(i)`; checks the counters moved by `want` (packets, new
    /// flows) and returns the case's figures.
    fn case(&mut self, name: &str, n: u32, want: (u64, u64), frame: impl Fn(u32) -> Vec<u8>) -> Result<Value> {
        let before = self.counted()?;
        let mut times = Vec::with_capacity(n as usize);
        let mut actions = [0u64; 5];
        for i in 0..n {
            let (action, ns) = self.run(&frame(i))?;
            actions[(action as usize).min(4)] += 1;
            times.push(ns);
        }
        let after = self.counted()?;
        let moved = (after.0 - before.0, after.1 - before.1);
        if moved != want {
            bail!("{name}: the service counted {moved:?} (packets, new flows), expected {want:?}");
        }
        times.sort_unstable();
        let mean = times.iter().sum::<u64>() as f64 / f64::from(n);
        let pick = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        let action = ["aborted", "drop", "pass", "tx", "redirect"][actions.iter().enumerate().max_by_key(|(_, c)| **c).unwrap().0];
        eprintln!("xlb-kernel-bench: {name}: {mean:.0} ns mean over {n} runs ({action})");
        Ok(json!({
            "name": name, "runs": n, "mean_ns": mean, "median_ns": pick(0.5), "p99_ns": pick(0.99),
            "action": action,
        }))
    }
}

fn xdp_cases(n: u32) -> Result<Value> {
    // Distinct clients for new flows: 50,000 ports on each of as many addresses as needed.
    let nth = |i: u32| (Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 1, 0)) + i / 50_000), 10_000 + (i % 50_000) as u16);
    let mut cases = Vec::new();

    let mut b = Bench::load(1 << 20)?;
    cases.push(b.case("not a service (pass, untouched)", n, (0, 0), |_| tcp_frame(CLIENT, 40000, VIP, 81, ACK, &PAYLOAD))?);
    cases.extend(flow_cases(&mut b, n, &nth, ["new flow (SYN)", "established flow (64-byte segment)"])?);
    drop(b);

    // A small table, filled with established flows first (SYN, then the ACK that moves
    // a flow from the half-open table): every new flow evicts, from the half-open table.
    let size = 65_536;
    let mut b = Bench::load(size)?;
    for i in 0..size {
        let (addr, port) = nth(n + i);
        b.run(&tcp_frame(addr, port, VIP, 80, SYN, &[]))?;
        b.run(&tcp_frame(addr, port, VIP, 80, ACK, &[]))?;
    }
    // An expiry pass over the full table that finds nothing idle: the walk alone.
    let long = u64::MAX;
    let t = Instant::now();
    b.dp.expire(xlb::dataplane::monotonic_ns(), &xlb::dataplane::Timeouts { tcp: long, tcp_closed: long, udp: long, drain: long })?;
    let walk_ms = t.elapsed().as_secs_f64() * 1e3;
    eprintln!("xlb-kernel-bench: expiry pass over {size} entries, none idle: {walk_ms:.1} ms");
    let new = format!("new flow, connection table ({size}) full");
    cases.extend(flow_cases(&mut b, n, &nth, [&new, "established flow, connection table full"])?);
    Ok(json!({ "method": "BPF_PROG_TEST_RUN, repeat 1 per call, kernel-timed", "cases": cases, "expiry_walk_ms": walk_ms, "expiry_entries": size }))
}

/// The client of the established flow, and its segments' payload.
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
const PAYLOAD: [u8; 64] = [0x61; 64];

/// Two cases, `names`: a SYN from another client (`nth`) each run, each a new flow; then
/// 64-byte segments of one established flow.
fn flow_cases(b: &mut Bench, n: u32, nth: &dyn Fn(u32) -> (Ipv4Addr, u16), names: [&str; 2]) -> Result<[Value; 2]> {
    let new = b.case(names[0], n, (u64::from(n), u64::from(n)), |i| {
        let (addr, port) = nth(i);
        tcp_frame(addr, port, VIP, 80, SYN, &[])
    })?;
    // Only a SYN opens a flow.
    b.run(&tcp_frame(CLIENT, 40000, VIP, 80, SYN, &[]))?;
    let established = b.case(names[1], n, (u64::from(n), 0), |_| tcp_frame(CLIENT, 40000, VIP, 80, ACK, &PAYLOAD))?;
    Ok([new, established])
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// An Ethernet/IPv4/TCP frame with correct checksums.
fn tcp_frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(54 + payload.len());
    f.extend_from_slice(&[2, 0, 0, 0, 0xf0, 0, 2, 0, 0, 0, 0xc1, 0, 0x08, 0x00]);
    let total = (20 + 20 + payload.len()) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = IPPROTO_TCP;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    if flags & ACK != 0 {
        tcp[8..12].copy_from_slice(&1u32.to_be_bytes());
    }
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = IPPROTO_TCP;
    pseudo[10..12].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    let c = checksum(&[&pseudo, &tcp, payload]);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&tcp);
    f.extend_from_slice(payload);
    f
}

/// The Internet checksum of the concatenated parts (each part but the last even-sized).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for part in parts {
        for chunk in part.chunks(2) {
            let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

// ---------------------------------------------------------------------------------------
// Maglev and map sync.

fn entries(n: usize) -> Vec<Entry> {
    (0..n)
        .map(|i| {
            let addr = u32::from_ne_bytes([10, 210, (i / 250) as u8, (i % 250 + 1) as u8]);
            Entry { identity: [addr, 0, 0, 0, 8080], weight: WEIGHT }
        })
        .collect()
}

fn maglev_times(quick: bool) -> Vec<Value> {
    let budget = Duration::from_millis(if quick { 150 } else { 1000 });
    let mut out = Vec::new();
    for size in [65_537u32, 4099] {
        for n in [10usize, 100, 1000] {
            let e = entries(n);
            let mut times = Vec::new();
            let started = Instant::now();
            while times.len() < 3 || (started.elapsed() < budget && times.len() < 200) {
                let t = Instant::now();
                let table = maglev::maglev(&e, size, 0);
                times.push(t.elapsed().as_secs_f64() * 1e6);
                assert_eq!(table.len(), size as usize);
            }
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            eprintln!("xlb-kernel-bench: maglev {n} backends, {size} slots: {median:.0} us");
            out.push(json!({
                "backends": n, "table_size": size, "runs": times.len(),
                "median_us": median, "min_us": times[0], "max_us": times[times.len() - 1],
            }));
        }
    }
    out
}

/// `Dataplane::sync` of 1,000 services of ten backends each (tables of 4,099 slots), then
/// of one backend removed from one service, then of nothing changed.
fn sync_times() -> Result<Vec<Value>> {
    let limits = Limits { conntrack_size: 65_536, table_size: 4099, max_services: 1024, hash_seed: 0 };
    let (mut dp, _log) = Dataplane::load(limits, aya_log::Level::Error)?;
    let all = entries(10_000);
    let mut desired: Vec<Desired> = (0..1000)
        .map(|j| {
            let vip = IpAddr::V4(Ipv4Addr::new(10, 201, (j / 250) as u8, (j % 250 + 1) as u8));
            let backends = all[j * 10..j * 10 + 10]
                .iter()
                .map(|e| DesiredBackend {
                    addr: IpAddr::V4(Ipv4Addr::from(e.identity[0].to_ne_bytes())),
                    port: 8080,
                    weight: WEIGHT,
                    state: BackendState::Active,
                })
                .collect();
            Desired { name: format!("s{j}"), key: ServiceKey::new(vip, 80, IPPROTO_TCP), method: Method::Maglev, backends, socket_lb: false, forwarding: Forwarding::Nat }
        })
        .collect();
    let mut out = Vec::new();
    let mut time = |what: &str, dp: &mut Dataplane, desired: &[Desired]| -> Result<()> {
        let t = Instant::now();
        dp.sync(desired)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        eprintln!("xlb-kernel-bench: sync, {what}: {ms:.1} ms");
        out.push(json!({ "what": what, "ms": ms }));
        Ok(())
    };
    time("1,000 services, 10,000 backends, from empty", &mut dp, &desired)?;
    desired[500].backends.pop();
    time("one backend removed from one service", &mut dp, &desired)?;
    time("nothing changed", &mut dp, &desired)?;
    Ok(out)
}
