//! The data plane under test: a fresh network namespace per fixture, `xlb_xdp` loaded in
//! it, a test run of one frame, and what the program keeps (drop and flow counters, the
//! connection table).
//!
//! `bpf_fib_lookup` answers from the network namespace of the ingress device, and test
//! runs look that device up in the calling thread's namespace, so each fixture runs in a
//! namespace of its own (`Netns`): a client-side interface fx0, a backend-side interface
//! fx1 and permanent neighbour entries, so every host routes alike. The interfaces are
//! veth pairs because the dummy driver is not on every kernel.

use std::{
    ffi::CString,
    fs::File,
    io,
    net::IpAddr,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::{
    maps::{HashMap as BpfHashMap, Map, MapData},
    programs::{ProgramError, TestRun, TestRunOptions},
};
use lb_common::{Conn, ConnKey, ConnKind, Counters, Handoff, ServiceKey, addr_words, names};
use xlb::{
    dataplane::{Dataplane, Limits},
    plan::Desired,
};

use crate::{
    net::{Dev, HOSTS, Host},
    packet::{Pkt, flow_name},
    services::WEB_PORT,
};

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn setns(ns: &File) -> io::Result<()> {
    // SAFETY: a valid namespace descriptor; only the calling thread moves.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn mac_text(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// A fresh network namespace that the calling thread enters; on drop (panics included)
/// the thread goes back and the namespace is deleted.
struct Netns {
    name: String,
    home: File,
}

impl Netns {
    fn enter() -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!("xfx{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let home = File::open("/proc/thread-self/ns/net").expect("opening this thread's namespace");
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name, home };
        let mut setup = vec!["link set lo up".to_string()];
        for dev in Dev::ALL {
            let (name, mac) = (dev.name(), mac_text(dev.mac()));
            setup.push(format!("link add {name} address {mac} type veth peer name {name}p"));
            setup.push(format!("link set {name}p up"));
            setup.push(format!("link set {name} up"));
            setup.extend(dev.addrs().map(|a| format!("addr add {a} dev {name} nodad")));
        }
        setup.extend(
            HOSTS
                .iter()
                .map(|h| format!("neigh add {} lladdr {} dev {} nud permanent", h.ip, mac_text(h.mac), h.dev.name())),
        );
        for line in &setup {
            let args: Vec<&str> = ["ip", "-n", &ns.name].into_iter().chain(line.split(' ')).collect();
            sh(&args);
        }
        for key in ["net.ipv4.conf.all.forwarding", "net.ipv6.conf.all.forwarding"] {
            sh(&["ip", "netns", "exec", &ns.name, "sysctl", "-qw", &format!("{key}=1")]);
        }
        let target = File::open(format!("/run/netns/{}", ns.name)).expect("opening the new namespace");
        setns(&target).expect("entering the test namespace");
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let back = setns(&self.home);
        let del = Command::new("ip").args(["netns", "del", &self.name]).status();
        if !std::thread::panicking() {
            back.expect("returning to the original namespace");
            assert!(del.is_ok_and(|s| s.success()), "deleting namespace {}", self.name);
        }
    }
}

/// What one test run gave back.
pub struct Outcome {
    pub action: u32,
    pub meta: Vec<u8>,
    pub frame: Vec<u8>,
}

/// A loaded data plane in its own namespace. Field order is drop order: the programs
/// go before the namespace.
pub struct Fixture {
    pub dp: Dataplane,
    ifindex: [u32; 2],
    _ns: Netns,
}

/// The data plane's sizes and seed in these tests.
pub const LIMITS: Limits = Limits { conntrack_size: 4096, table_size: 251, max_services: 8, hash_seed: 7 };

impl Fixture {
    pub fn new(services: &[Desired]) -> Self {
        Self::with_limits(LIMITS, services)
    }

    pub fn with_limits(limits: Limits, services: &[Desired]) -> Self {
        let ns = Netns::enter();
        let ifindex = Dev::ALL.map(|d| {
            let name = CString::new(d.name()).unwrap();
            // SAFETY: a valid C string.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            assert_ne!(index, 0, "no interface {}", d.name());
            index
        });
        let (dp, _log) = Dataplane::load(limits, aya_log::Level::Error).expect("loading the data plane");
        let mut fx = Fixture { dp, ifindex, _ns: ns };
        fx.sync(services);
        fx
    }

    pub fn sync(&mut self, services: &[Desired]) {
        self.dp.sync(services).expect("sync");
    }

    pub fn ifindex(&self, dev: Dev) -> u32 {
        self.ifindex[dev as usize]
    }

    /// Runs the XDP program on `frame` as received on fx0; `Err(errno)` when the kernel
    /// refuses the run.
    pub fn run(&mut self, input: &[u8]) -> Result<Outcome, i32> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. data_end is how much of the frame is linear: all of it (with
        // 0 the program would see an empty frame and pass everything).
        let md = [0, input.len() as u32, 0, self.ifindex(Dev::Fx0), 0, 0];
        let ctx_in: Vec<u8> = md.iter().flat_map(|w: &u32| w.to_ne_bytes()).collect();
        let mut ctx_out = [0u8; 24];
        // Room for the frame and the metadata the program may put in front of it.
        let mut data = vec![0u8; input.len() + 64];
        let xdp = self.dp.xdp().expect("the XDP program");
        let opts = TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut data),
            ctx_in: Some(&ctx_in),
            ctx_out: Some(&mut ctx_out),
            ..Default::default()
        };
        match xdp.test_run(opts) {
            Ok(r) => {
                data.truncate(r.data_size_out as usize);
                // The output starts at data_meta; xdp_md.data says where the frame begins.
                let meta_len = u32::from_ne_bytes(ctx_out[..4].try_into().unwrap()) as usize;
                let frame = data.split_off(meta_len);
                let out = Outcome { action: r.return_value, meta: data, frame };
                Ok(if out.frame.get(6..12) == input.get(6..12) { out } else { self.unstash(out) })
            }
            Err(ProgramError::SyscallError(e)) => Err(e.io_error.raw_os_error().unwrap_or(0)),
            Err(e) => panic!("test run: {e}"),
        }
    }

    /// On a kernel without XDP metadata the program hands a frame to TC through a
    /// `HANDOFF` slot that its (changed) source MAC names: reads the slot and does what
    /// `xlb_fwd` does, so the cases see one outcome on every kernel.
    fn unstash(&mut self, mut out: Outcome) -> Outcome {
        let Some((index, seq)) = out.frame.get(6..12).and_then(|m| Handoff::marked(m.try_into().ok()?)) else { return out };
        assert!(out.meta.is_empty(), "metadata and a handoff both: {:02x?}", out.meta);
        let slot = self.dp.handoff(index).expect("the handoff slot");
        assert_eq!(slot.seq, seq, "handoff slot reused");
        out.frame[6..12].copy_from_slice(&slot.src);
        let m = slot.meta;
        out.meta = [m.magic, m.ifindex, m.l4_addr_diff, m.l4_port_diff, m.flags].iter().flat_map(|w| w.to_ne_bytes()).collect();
        out
    }

    /// Runs the reply program (TC) on `frame` as received on fx1, the backends' side;
    /// `Err(errno)` when the kernel refuses the run.
    pub fn run_reply(&mut self, frame: &[u8]) -> Result<Outcome, i32> {
        // struct __sk_buff up to ifindex: ingress_ifindex (word 9), the program's FIB
        // lookup starts there; ifindex (word 10), the skb's device (its namespace).
        let mut skb = [0u32; 11];
        skb[9] = self.ifindex(Dev::Fx1);
        skb[10] = self.ifindex(Dev::Fx1);
        let ctx_in: Vec<u8> = skb.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut data = vec![0u8; frame.len() + 64];
        let prog = self.dp.reply().expect("the reply program");
        let opts = TestRunOptions { data_in: Some(frame), data_out: Some(&mut data), ctx_in: Some(&ctx_in), ..Default::default() };
        match prog.test_run(opts) {
            Ok(r) => {
                data.truncate(r.data_size_out as usize);
                Ok(Outcome { action: r.return_value, meta: Vec::new(), frame: data })
            }
            Err(ProgramError::SyscallError(e)) => Err(e.io_error.raw_os_error().unwrap_or(0)),
            Err(e) => panic!("test run: {e}"),
        }
    }

    pub fn drops(&mut self) -> Vec<(&'static str, u64)> {
        self.dp.counters().expect("counters").drops
    }

    /// The drop reasons counted since `before`, with how many each.
    pub fn drops_since(&mut self, before: &[(&'static str, u64)]) -> Vec<(&'static str, u64)> {
        self.drops().into_iter().zip(before).filter(|(now, then)| now.1 != then.1).map(|(now, then)| (now.0, now.1 - then.1)).collect()
    }

    /// The new flows a service has counted.
    pub fn new_flows(&mut self, key: ServiceKey) -> u64 {
        let stats = self.dp.counters().expect("counters");
        stats.services.iter().find(|(k, _)| *k == key).map(|(_, c)| c.new_flows).expect("counters of the service")
    }

    pub fn backend_counters(&mut self, host: &Host) -> Counters {
        let stats = self.dp.counters().expect("counters");
        stats.backends.iter().find(|b| b.addr == host.ip).map(|b| b.counters).unwrap_or_else(|| panic!("no counters of {}", host.ip))
    }

    /// The connection table, opened by id from the XDP program's maps (see [`Self::map`]).
    pub fn conntrack(&mut self) -> BpfHashMap<MapData, ConnKey, Conn> {
        BpfHashMap::try_from(self.map(names::CONNTRACK)).expect("CONNTRACK as a hash map")
    }

    /// One of the XDP program's maps, opened by id: `Dataplane` keeps its handles to
    /// itself, and by name alone another loaded xlb's map could answer.
    pub fn map(&mut self, name: &str) -> Map {
        let prog = self.dp.xdp().expect("the XDP program").info().expect("program info");
        for id in prog.map_ids().expect("map ids").expect("this kernel lists a program's maps") {
            let data = MapData::from_id(id).expect("opening a map by id");
            if data.info().expect("map info").name_as_str() == Some(name) {
                return Map::from_map_data(data).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
        panic!("the XDP program uses no map named {name}");
    }

    /// The half-open table: TCP flows between their SYN and the client's next segment.
    pub fn half_open(&mut self) -> BpfHashMap<MapData, ConnKey, Conn> {
        BpfHashMap::try_from(self.map(names::HALF_OPEN)).expect("HALF_OPEN as a hash map")
    }

    /// The backend id a flow's service entry names, established or half open.
    pub fn pinned_id(&mut self, p: &Pkt, backend: &Host) -> u32 {
        let key = conn_keys(p, backend, WEB_PORT)[0];
        let entry = self.conntrack().get(&key, 0).or_else(|_| self.half_open().get(&key, 0));
        entry.unwrap_or_else(|e| panic!("no service entry of {}: {e}", flow_name(p))).backend
    }
}

/// A flow's two connection entries as the kernel keys them: client -> VIP (the service
/// entry, holding the backend) and client -> backend (for replies).
pub fn conn_keys(p: &Pkt, backend: &Host, port: u16) -> [ConnKey; 2] {
    let (client, family) = addr_words(p.src);
    let key = |peer: IpAddr, peer_port: u16, kind: ConnKind| ConnKey {
        client,
        peer: addr_words(peer).0,
        client_port: p.sport.to_be(),
        peer_port: peer_port.to_be(),
        proto: p.proto(),
        family,
        kind: kind as u8,
        _pad: 0,
    };
    [key(p.dst, p.dport, ConnKind::Service), key(backend.ip, port, ConnKind::Backend)]
}
