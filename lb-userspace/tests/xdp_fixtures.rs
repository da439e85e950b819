//! Packet fixtures for `xlb_xdp`, run through `BPF_PROG_TEST_RUN`.
//!
//! Each case is an input frame, the XDP action, and the frame and metadata the program
//! must leave. Frames are built from scratch by etherparse, so the checksums a case
//! expects come from an implementation independent of xlb's; the `ones` module checks
//! the checksum differences that XDP hands to TC with arithmetic of its own.
//!
//! `bpf_fib_lookup` answers from the network namespace of the ingress device, and test
//! runs look that device up in the calling thread's namespace, so each test runs in a
//! fresh namespace of its own (`Netns`): a client-side interface fx0, a backend-side
//! interface fx1 and permanent neighbour entries, so every host routes alike. The
//! interfaces are veth pairs because the dummy driver is not on every kernel.
//!
//! Needs root (BPF, namespaces).

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    fs::File,
    io, mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use aya::{
    maps::{HashMap as BpfHashMap, Map, MapData},
    programs::{ProgramError, TestRun, TestRunOptions},
};
use etherparse::{
    ArpEthIpv4Packet, ArpOperation, IpFragOffset, IpHeaders, Ipv4Header, Ipv6Header, PacketBuilder, VlanId, ip_number,
};
use lb_common::{Conn, ConnKey, ConnKind, Counters, FwdMeta, IPPROTO_TCP, IPPROTO_UDP, ServiceKey, addr_words, flow_hash, names, source_hash};
use xlb::{
    config::{BackendState, Method},
    dataplane::{
        Dataplane, Limits, Timeouts,
        maglev::{self, Entry},
        monotonic_ns,
    },
    plan::{Desired, DesiredBackend},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0xc1, 0];
const CLIENT4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 250, 0, 100));
const CLIENT6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 0x100));
/// The VIPs are fx0's own addresses, as xlb's default VIP is the interface's.
const VIP4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 250, 0, 1));
const VIP6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 1));

/// The interfaces of the test namespace.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dev {
    /// Where clients' packets arrive (the XDP ingress).
    Fx0,
    /// Where most backends are; not in `TX_PORTS`, so packets for it go through TC.
    Fx1,
}

impl Dev {
    const ALL: [Dev; 2] = [Dev::Fx0, Dev::Fx1];

    fn name(self) -> &'static str {
        match self {
            Dev::Fx0 => "fx0",
            Dev::Fx1 => "fx1",
        }
    }

    fn mac(self) -> [u8; 6] {
        match self {
            Dev::Fx0 => [2, 0, 0, 0, 0xf0, 0],
            Dev::Fx1 => [2, 0, 0, 0, 0xf1, 0],
        }
    }

    fn addrs(self) -> [&'static str; 2] {
        match self {
            Dev::Fx0 => ["10.250.0.1/24", "fd00:250::1/64"],
            Dev::Fx1 => ["10.251.0.1/24", "fd00:251::1/64"],
        }
    }
}

/// A backend host: its address, the MAC its neighbour entry gives, and its interface.
#[derive(Debug)]
struct Host {
    ip: IpAddr,
    mac: [u8; 6],
    dev: Dev,
}

static B4A: Host = Host { ip: IpAddr::V4(Ipv4Addr::new(10, 251, 0, 2)), mac: [2, 0, 0, 0, 0, 2], dev: Dev::Fx1 };
static B4B: Host = Host { ip: IpAddr::V4(Ipv4Addr::new(10, 251, 0, 3)), mac: [2, 0, 0, 0, 0, 3], dev: Dev::Fx1 };
static B4C: Host = Host { ip: IpAddr::V4(Ipv4Addr::new(10, 251, 0, 4)), mac: [2, 0, 0, 0, 0, 4], dev: Dev::Fx1 };
static B6A: Host =
    Host { ip: IpAddr::V6(Ipv6Addr::new(0xfd00, 0x251, 0, 0, 0, 0, 0, 2)), mac: [2, 0, 0, 0, 0, 2], dev: Dev::Fx1 };
/// On the clients' subnet: reached back out of the ingress interface, by `XDP_TX`.
static NEAR: Host = Host { ip: IpAddr::V4(Ipv4Addr::new(10, 250, 0, 9)), mac: [2, 0, 0, 0, 0, 9], dev: Dev::Fx0 };
static HOSTS: [&Host; 5] = [&B4A, &B4B, &B4C, &B6A, &NEAR];

// ---------------------------------------------------------------------------------
// Frames

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum L4 {
    Tcp,
    Udp,
}

/// A TCP segment's flags: only a SYN may open a flow.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Seg {
    Syn,
    SynAck,
    Ack,
    FinAck,
    Rst,
}

/// What the L4 checksum field holds.
#[derive(Clone, Copy, Debug)]
enum L4Csum {
    /// The complete checksum, as etherparse computes it.
    Full,
    /// The pseudo-header sum, as a CHECKSUM_PARTIAL packet from a veth carries it.
    Partial,
    /// This value (network order), e.g. 0 for a UDP packet without checksum.
    Raw(u16),
}

/// Odd length, so checksums cover a padded last byte.
const PAYLOAD: &[u8] = b"xlb fixture";

/// A TCP or UDP frame, described field by field and serialized by etherparse.
#[derive(Clone, Debug)]
struct Pkt {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlan: Option<u16>,
    src: IpAddr,
    dst: IpAddr,
    l4: L4,
    sport: u16,
    dport: u16,
    ip_options: Vec<u8>,
    /// IPv4 more-fragments flag and fragment offset (8-byte units).
    frag: (bool, u16),
    csum: L4Csum,
    /// TCP flags; ignored for UDP.
    seg: Seg,
    /// IPv4 TTL or IPv6 hop limit.
    ttl: u8,
}

/// A client's SYN to `dst:dport`, as it arrives on fx0.
fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Pkt {
    Pkt {
        src_mac: CLIENT_MAC,
        dst_mac: Dev::Fx0.mac(),
        vlan: None,
        src,
        dst,
        l4: L4::Tcp,
        sport,
        dport,
        ip_options: Vec::new(),
        frag: (false, 0),
        csum: L4Csum::Full,
        seg: Seg::Syn,
        ttl: 64,
    }
}

fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Pkt {
    Pkt { l4: L4::Udp, ..tcp(src, sport, dst, dport) }
}

impl Pkt {
    fn vlan(self, id: u16) -> Self {
        Pkt { vlan: Some(id), ..self }
    }

    fn ip_options(self, options: &[u8]) -> Self {
        Pkt { ip_options: options.to_vec(), ..self }
    }

    fn fragment(self, more: bool, offset: u16) -> Self {
        Pkt { frag: (more, offset), ..self }
    }

    fn csum(self, csum: L4Csum) -> Self {
        Pkt { csum, ..self }
    }

    fn ttl(self, ttl: u8) -> Self {
        Pkt { ttl, ..self }
    }

    /// The same flow's segment with these flags.
    fn seg(&self, seg: Seg) -> Self {
        Pkt { seg, ..self.clone() }
    }

    /// The packet as xlb must leave it for `host:port`: destination rewritten, the next
    /// hop's MACs, one hop less, and a partial checksum left as it was (TC finishes it).
    fn to(&self, host: &Host, port: u16) -> Pkt {
        let csum = match self.csum {
            L4Csum::Partial => L4Csum::Raw(self.pseudo_sum()),
            c => c,
        };
        Pkt { src_mac: host.dev.mac(), dst_mac: host.mac, dst: host.ip, dport: port, csum, ttl: self.ttl - 1, ..self.clone() }
    }

    fn bytes(&self) -> Vec<u8> {
        let ip = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut h = Ipv4Header::new(0, self.ttl, ip_number::TCP, s.octets(), d.octets()).unwrap();
                h.options = self.ip_options.as_slice().try_into().unwrap();
                h.more_fragments = self.frag.0;
                h.fragment_offset = IpFragOffset::try_new(self.frag.1).unwrap();
                IpHeaders::Ipv4(h, Default::default())
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let h = Ipv6Header { hop_limit: self.ttl, source: s.octets(), destination: d.octets(), ..Default::default() };
                IpHeaders::Ipv6(h, Default::default())
            }
            _ => panic!("mixed address families"),
        };
        let eth = PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        let ip = match self.vlan {
            Some(id) => eth.single_vlan(VlanId::try_new(id).unwrap()).ip(ip),
            None => eth.ip(ip),
        };
        let mut out = Vec::new();
        match self.l4 {
            L4::Tcp => {
                let tcp = ip.tcp(self.sport, self.dport, 1, 64240);
                match self.seg {
                    Seg::Syn => tcp.syn(),
                    Seg::SynAck => tcp.syn().ack(1),
                    Seg::Ack => tcp.ack(1),
                    Seg::FinAck => tcp.fin().ack(1),
                    Seg::Rst => tcp.rst(),
                }
                .write(&mut out, PAYLOAD)
            }
            L4::Udp => ip.udp(self.sport, self.dport).write(&mut out, PAYLOAD),
        }
        .unwrap();
        let field = match self.csum {
            L4Csum::Full => None,
            L4Csum::Partial => Some(self.pseudo_sum()),
            L4Csum::Raw(v) => Some(v),
        };
        if let Some(v) = field {
            let off = self.csum_offset();
            out[off..off + 2].copy_from_slice(&v.to_be_bytes());
        }
        out
    }

    /// The first `len` bytes of the frame.
    fn cut(&self, len: usize) -> Vec<u8> {
        let mut b = self.bytes();
        assert!(len < b.len(), "cutting a {}-byte frame to {len}", b.len());
        b.truncate(len);
        b
    }

    fn l3_offset(&self) -> usize {
        14 + if self.vlan.is_some() { 4 } else { 0 }
    }

    fn l4_offset(&self) -> usize {
        self.l3_offset() + if self.src.is_ipv4() { 20 + self.ip_options.len() } else { 40 }
    }

    fn csum_offset(&self) -> usize {
        self.l4_offset() + if self.l4 == L4::Tcp { 16 } else { 6 }
    }

    fn proto(&self) -> u8 {
        if self.l4 == L4::Tcp { IPPROTO_TCP } else { IPPROTO_UDP }
    }

    fn pseudo_sum(&self) -> u16 {
        let l4_len = if self.l4 == L4::Tcp { 20 } else { 8 } + PAYLOAD.len();
        ones::pseudo_header(self.src, self.dst, self.proto(), l4_len)
    }

    /// The L4 checksum field of the serialized frame.
    fn l4_csum(&self) -> u16 {
        let b = self.bytes();
        u16::from_be_bytes([b[self.csum_offset()], b[self.csum_offset() + 1]])
    }
}

fn arp_request() -> Vec<u8> {
    let arp = ArpEthIpv4Packet {
        operation: ArpOperation::REQUEST,
        sender_mac: CLIENT_MAC,
        sender_ipv4: [10, 250, 0, 100],
        target_mac: [0; 6],
        target_ipv4: [10, 250, 0, 1],
    };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, [0xff; 6]).arp(arp.into()).write(&mut out).unwrap();
    out
}

/// One's-complement arithmetic (RFC 1071) written for these tests, apart from xlb's
/// `csum.rs` and from etherparse. Values are in network order.
mod ones {
    use std::net::IpAddr;

    pub fn fold(mut sum: u64) -> u16 {
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    pub fn add(a: u16, b: u16) -> u16 {
        fold(a as u64 + b as u64)
    }

    /// Folds a difference into a complete checksum: C' = ~(~C + d).
    pub fn apply(check: u16, diff: u16) -> u16 {
        !add(!check, diff)
    }

    /// +0 and -0 are the same one's-complement number.
    pub fn same(a: u16, b: u16) -> bool {
        a == b || (a | b == 0xffff && a & b == 0)
    }

    /// The folded pseudo-header sum (RFC 768, RFC 793, RFC 8200 §8.1).
    pub fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, l4_len: usize) -> u16 {
        let mut bytes = octets(src);
        bytes.extend(octets(dst));
        let words = bytes.chunks(2).map(|w| u16::from_be_bytes([w[0], w[1]]) as u64);
        fold(words.sum::<u64>() + proto as u64 + l4_len as u64)
    }

    /// A `FwdMeta` difference in network order. xlb sums 16-bit words as loaded from
    /// memory (host order); one's-complement sums commute with byte swaps (RFC 1071
    /// §2(B)), so the folded sum's memory bytes read big-endian give the network value.
    pub fn from_meta(diff: u32) -> u16 {
        u16::from_be_bytes(fold(diff as u64).to_ne_bytes())
    }

    fn octets(a: IpAddr) -> Vec<u8> {
        match a {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }
}

// ---------------------------------------------------------------------------------
// The test namespace and the loaded data plane

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
struct Outcome {
    action: u32,
    meta: Vec<u8>,
    frame: Vec<u8>,
}

/// A loaded data plane in its own namespace. Field order is drop order: the programs
/// go before the namespace.
struct Fixture {
    dp: Dataplane,
    ifindex: [u32; 2],
    _ns: Netns,
}

/// The data plane's sizes and seed in these tests.
const LIMITS: Limits = Limits { conntrack_size: 4096, table_size: 251, max_services: 8, hash_seed: 7 };

impl Fixture {
    fn new(services: &[Desired]) -> Self {
        Self::with_limits(LIMITS, services)
    }

    fn with_limits(limits: Limits, services: &[Desired]) -> Self {
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

    fn sync(&mut self, services: &[Desired]) {
        self.dp.sync(services).expect("sync");
    }

    fn ifindex(&self, dev: Dev) -> u32 {
        self.ifindex[dev as usize]
    }

    /// Runs the XDP program on `frame` as received on fx0; `Err(errno)` when the kernel
    /// refuses the run.
    fn run(&mut self, frame: &[u8]) -> Result<Outcome, i32> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. data_end is how much of the frame is linear: all of it (with
        // 0 the program would see an empty frame and pass everything).
        let md = [0, frame.len() as u32, 0, self.ifindex(Dev::Fx0), 0, 0];
        let ctx_in: Vec<u8> = md.iter().flat_map(|w: &u32| w.to_ne_bytes()).collect();
        let mut ctx_out = [0u8; 24];
        // Room for the frame and the metadata the program may put in front of it.
        let mut data = vec![0u8; frame.len() + 64];
        let xdp = self.dp.xdp().expect("the XDP program");
        let opts = TestRunOptions {
            data_in: Some(frame),
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
                Ok(Outcome { action: r.return_value, meta: data, frame })
            }
            Err(ProgramError::SyscallError(e)) => Err(e.io_error.raw_os_error().unwrap_or(0)),
            Err(e) => panic!("test run: {e}"),
        }
    }

    fn drops(&mut self) -> Vec<(&'static str, u64)> {
        self.dp.counters().expect("counters").drops
    }

    /// The drop reasons counted since `before`, with how many each.
    fn drops_since(&mut self, before: &[(&'static str, u64)]) -> Vec<(&'static str, u64)> {
        self.drops().into_iter().zip(before).filter(|(now, then)| now.1 != then.1).map(|(now, then)| (now.0, now.1 - then.1)).collect()
    }

    /// Runs a case and checks everything it says, drop counters included; returns the
    /// backend a forwarded packet went to.
    fn check(&mut self, case: &Case) -> Option<&'static Host> {
        let before = self.drops();
        let got = self.run(&case.input);
        let counted = self.drops_since(&before);
        let want_counted = match case.want {
            Want::Drop(reason) | Want::Passed(reason) => vec![(reason, 1)],
            _ => Vec::new(),
        };
        assert_eq!(counted, want_counted, "{}: drop counters moved", case.name);

        match (&case.want, got) {
            (Want::Refused, got) => {
                assert_eq!(got.err(), Some(libc::EINVAL), "{}: the kernel should refuse the run", case.name);
                None
            }
            (_, Err(errno)) => panic!("{}: test run failed: {}", case.name, io::Error::from_raw_os_error(errno)),
            (Want::Untouched | Want::Passed(_), Ok(out)) => {
                expect_action(case, &out, XDP_PASS);
                assert!(out.meta.is_empty(), "{}: metadata left: {}", case.name, hex(&out.meta));
                expect_frame(case, &out.frame, std::slice::from_ref(&case.input));
                None
            }
            (Want::Drop(_), Ok(out)) => {
                expect_action(case, &out, XDP_DROP);
                None
            }
            (Want::Forward { sent, hosts, port }, Ok(out)) => {
                let frames: Vec<Vec<u8>> = hosts.iter().map(|h| sent.to(h, *port).bytes()).collect();
                let host = hosts[expect_frame(case, &out.frame, &frames)];
                self.expect_forward(case, &out, sent, host, *port);
                Some(host)
            }
        }
    }

    /// The action and metadata of a packet rewritten for `host:port`.
    fn expect_forward(&self, case: &Case, out: &Outcome, sent: &Pkt, host: &Host, port: u16) {
        let partial = matches!(sent.csum, L4Csum::Partial);
        if host.dev == Dev::Fx0 && !partial {
            expect_action(case, out, XDP_TX);
            assert!(out.meta.is_empty(), "{}: metadata left for XDP_TX: {}", case.name, hex(&out.meta));
            return;
        }
        expect_action(case, out, XDP_PASS);
        assert_eq!(out.meta.len(), mem::size_of::<FwdMeta>(), "{}: metadata {}", case.name, hex(&out.meta));
        let w = |i: usize| u32::from_ne_bytes(out.meta[i * 4..i * 4 + 4].try_into().unwrap());
        let meta = FwdMeta { magic: w(0), ifindex: w(1), l4_addr_diff: w(2), l4_port_diff: w(3), flags: w(4) };
        let ifindex = self.ifindex(host.dev);
        if !partial {
            let want = FwdMeta { magic: FwdMeta::MAGIC, ifindex, ..Default::default() };
            assert_eq!(meta, want, "{}: metadata", case.name);
            return;
        }
        assert_eq!(
            (meta.magic, meta.ifindex, meta.flags),
            (FwdMeta::MAGIC, ifindex, FwdMeta::F_FIX_L4),
            "{}: metadata {meta:?}",
            case.name
        );
        let rewritten = sent.to(host, port);
        let (addr, port_diff) = (ones::from_meta(meta.l4_addr_diff), ones::from_meta(meta.l4_port_diff));
        // What TC does to a partial checksum: fold in the pseudo-header part only.
        let folded = ones::add(sent.pseudo_sum(), addr);
        assert!(
            ones::same(folded, rewritten.pseudo_sum()),
            "{}: stale pseudo-header sum {:#06x} + addr diff {addr:#06x} = {folded:#06x}, the rewritten packet's is {:#06x}",
            case.name,
            sent.pseudo_sum(),
            rewritten.pseudo_sum()
        );
        // What TC does to a complete checksum (the guess was wrong): fold in both.
        let full = |p: &Pkt| p.clone().csum(L4Csum::Full).l4_csum();
        let fixed = ones::apply(full(sent), ones::add(addr, port_diff));
        assert!(
            ones::same(fixed, full(&rewritten)),
            "{}: complete checksum {:#06x} with both diffs gives {fixed:#06x}, want {:#06x}",
            case.name,
            full(sent),
            full(&rewritten)
        );
    }
}

fn action_name(a: u32) -> String {
    match a {
        0 => "XDP_ABORTED".into(),
        XDP_DROP => "XDP_DROP".into(),
        XDP_PASS => "XDP_PASS".into(),
        XDP_TX => "XDP_TX".into(),
        4 => "XDP_REDIRECT".into(),
        a => format!("action {a}"),
    }
}

/// Hex in 16-bit groups, so checksums and ports read whole.
fn hex(b: &[u8]) -> String {
    b.chunks(2).map(|c| c.iter().map(|x| format!("{x:02x}")).collect::<String>()).collect::<Vec<_>>().join(" ")
}

fn expect_action(case: &Case, out: &Outcome, want: u32) {
    assert!(
        out.action == want,
        "{}: got {}, want {}\n  in: {}\n out: {}",
        case.name,
        action_name(out.action),
        action_name(want),
        hex(&case.input),
        hex(&out.frame)
    );
}

/// Which of `wants` the output frame is; panics showing all frames when none.
fn expect_frame(case: &Case, got: &[u8], wants: &[Vec<u8>]) -> usize {
    if let Some(i) = wants.iter().position(|w| w == got) {
        return i;
    }
    let mut msg = format!(
        "{}: output frame is none of those expected\n  in: {}\n out: {}",
        case.name,
        hex(&case.input),
        hex(got)
    );
    for w in wants {
        let at = got.iter().zip(w).position(|(a, b)| a != b).unwrap_or(got.len().min(w.len()));
        msg += &format!("\nwant: {} (first difference at byte {at})", hex(w));
    }
    panic!("{msg}");
}

// ---------------------------------------------------------------------------------
// Cases

struct Case {
    name: &'static str,
    input: Vec<u8>,
    want: Want,
}

enum Want {
    /// `XDP_PASS`, the frame untouched, no metadata.
    Untouched,
    /// Rewritten for one of `hosts` at `port`: `XDP_TX` when the host is on the ingress
    /// interface and XDP could finish the checksum, else `XDP_PASS` with `FwdMeta`.
    Forward { sent: Pkt, hosts: Vec<&'static Host>, port: u16 },
    /// `XDP_DROP`, counted under this drop reason.
    Drop(&'static str),
    /// `XDP_PASS`, the frame untouched, counted under this reason (`no_flow`, `ttl_expired`).
    Passed(&'static str),
    /// The kernel refuses to run XDP on it (`EINVAL`).
    Refused,
}

fn fwd(name: &'static str, sent: Pkt, host: &'static Host, port: u16) -> Case {
    fwd_any(name, sent, &[host], port)
}

fn fwd_any(name: &'static str, sent: Pkt, hosts: &[&'static Host], port: u16) -> Case {
    Case { name, input: sent.bytes(), want: Want::Forward { sent, hosts: hosts.to_vec(), port } }
}

fn untouched(name: &'static str, input: Vec<u8>) -> Case {
    Case { name, input, want: Want::Untouched }
}

fn dropped(name: &'static str, sent: Pkt, reason: &'static str) -> Case {
    Case { name, input: sent.bytes(), want: Want::Drop(reason) }
}

/// A TCP segment other than a SYN that no connection entry knows: left to the stack.
fn no_flow(name: &'static str, sent: Pkt) -> Case {
    Case { name, input: sent.bytes(), want: Want::Passed("no_flow") }
}

fn svc(vip: IpAddr, port: u16, proto: u8, backends: &[(&Host, u16)]) -> Desired {
    Desired {
        name: format!("{vip}:{port}/{proto}"),
        key: ServiceKey::new(vip, port, proto),
        method: Method::Maglev,
        backends: backends
            .iter()
            .map(|(h, port)| DesiredBackend { addr: h.ip, port: *port, weight: 1, state: BackendState::Active })
            .collect(),
    }
}

/// One backend per service, so every choice is known in advance.
fn services() -> Vec<Desired> {
    vec![
        svc(VIP4, 80, IPPROTO_TCP, &[(&B4A, 8080)]),
        svc(VIP4, 53, IPPROTO_UDP, &[(&B4A, 5353)]),
        svc(VIP6, 80, IPPROTO_TCP, &[(&B6A, 8080)]),
        svc(VIP6, 53, IPPROTO_UDP, &[(&B6A, 5353)]),
        svc(VIP4, 443, IPPROTO_TCP, &[(&NEAR, 8443)]),
        svc(VIP4, 25, IPPROTO_TCP, &[]),
    ]
}

fn cases() -> Vec<Case> {
    let web4 = |sport| tcp(CLIENT4, sport, VIP4, 80);
    // Router alert, three no-ops and end of options: 8 bytes, IHL 7.
    let options = [0x94, 4, 0, 0, 1, 1, 1, 0];
    vec![
        fwd("tcp4", web4(40001), &B4A, 8080),
        fwd("udp4", udp(CLIENT4, 40002, VIP4, 53), &B4A, 5353),
        fwd("udp4 without checksum", udp(CLIENT4, 40003, VIP4, 53).csum(L4Csum::Raw(0)), &B4A, 5353),
        fwd("tcp6", tcp(CLIENT6, 40004, VIP6, 80), &B6A, 8080),
        fwd("udp6", udp(CLIENT6, 40005, VIP6, 53), &B6A, 5353),
        fwd("tcp4 in an 802.1Q tag", web4(40006).vlan(100), &B4A, 8080),
        fwd("tcp4 with IP options", web4(40007).ip_options(&options), &B4A, 8080),
        fwd("tcp4, near backend (XDP_TX)", tcp(CLIENT4, 40008, VIP4, 443), &NEAR, 8443),
        fwd("tcp4 partial checksum", web4(40009).csum(L4Csum::Partial), &B4A, 8080),
        fwd("udp6 partial checksum", udp(CLIENT6, 40010, VIP6, 53).csum(L4Csum::Partial), &B6A, 5353),
        fwd("tcp4 partial checksum, near backend", tcp(CLIENT4, 40011, VIP4, 443).csum(L4Csum::Partial), &NEAR, 8443),
        dropped("service without backends", tcp(CLIENT4, 40012, VIP4, 25), "no_backend"),
        untouched("non-service port", tcp(CLIENT4, 40013, VIP4, 81).bytes()),
        untouched("udp to a tcp service's port", udp(CLIENT4, 40014, VIP4, 80).bytes()),
        untouched("arp", arp_request()),
        untouched("first fragment (MF)", web4(40015).fragment(true, 0).bytes()),
        untouched("later fragment", web4(40016).fragment(false, 185).bytes()),
        // Test runs refuse frames shorter than an Ethernet header (ETH_HLEN), so the
        // program never sees one here.
        Case { name: "truncated ethernet", input: web4(40017).cut(13), want: Want::Refused },
        untouched("truncated vlan tag", web4(40018).vlan(100).cut(14 + 3)),
        untouched("truncated ipv4", web4(40019).cut(14 + 19)),
        untouched("truncated ipv4 options", web4(40020).ip_options(&options).cut(14 + 20 + 4)),
        untouched("truncated ipv6", tcp(CLIENT6, 40021, VIP6, 80).cut(14 + 39)),
        untouched("truncated tcp", web4(40022).cut(14 + 20 + 19)),
        untouched("truncated udp", udp(CLIENT4, 40023, VIP4, 53).cut(14 + 20 + 7)),
        // Only a SYN opens a flow; these flows have no entry.
        no_flow("ack of an unknown flow", web4(40024).seg(Seg::Ack)),
        no_flow("fin+ack of an unknown flow", web4(40025).seg(Seg::FinAck)),
        no_flow("rst of an unknown flow", web4(40026).seg(Seg::Rst)),
        no_flow("syn+ack to a vip", web4(40027).seg(Seg::SynAck)),
        no_flow("tcp6 ack of an unknown flow", tcp(CLIENT6, 40028, VIP6, 80).seg(Seg::Ack)),
        no_flow("ack of an unknown flow, service without backends", tcp(CLIENT4, 40029, VIP4, 25).seg(Seg::Ack)),
        // A router's hop: the TTL (hop limit) goes down by one; at 1 the stack answers.
        fwd("tcp4 ttl 2", web4(40030).ttl(2), &B4A, 8080),
        fwd("tcp6 hop limit 2", tcp(CLIENT6, 40031, VIP6, 80).ttl(2), &B6A, 8080),
        fwd("tcp4 ttl 255", web4(40032).ttl(255), &B4A, 8080),
        Case { name: "tcp4 ttl 1", input: web4(40033).ttl(1).bytes(), want: Want::Passed("ttl_expired") },
        Case { name: "udp4 ttl 0", input: udp(CLIENT4, 40034, VIP4, 53).ttl(0).bytes(), want: Want::Passed("ttl_expired") },
        Case { name: "tcp6 hop limit 1", input: tcp(CLIENT6, 40035, VIP6, 80).ttl(1).bytes(), want: Want::Passed("ttl_expired") },
        untouched("ttl 1, not a service", tcp(CLIENT4, 40036, VIP4, 81).ttl(1).bytes()),
    ]
}

// ---------------------------------------------------------------------------------
// Tests

#[test]
fn fixtures() {
    let mut fx = Fixture::new(&services());
    let cases = cases();
    for case in &cases {
        fx.check(case);
    }
    println!("{} fixture cases passed", cases.len());
}

#[test]
fn established_flows_keep_their_backend() {
    let mut fx = Fixture::new(&[svc(VIP4, 80, IPPROTO_TCP, &[(&B4A, 8080)])]);
    let flows: Vec<Pkt> = (40000..40016).map(|port| tcp(CLIENT4, port, VIP4, 80)).collect();
    for p in &flows {
        fx.check(&fwd("new flow", p.clone(), &B4A, 8080));
    }
    fx.sync(&[svc(VIP4, 80, IPPROTO_TCP, &[(&B4A, 8080), (&B4B, 8080)])]);
    for p in &flows {
        fx.check(&fwd("established flow after a backend was added", p.seg(Seg::Ack), &B4A, 8080));
    }
    let fresh: Vec<&Host> = (50000..50032)
        .map(|port| {
            fx.check(&fwd_any("new flow, two backends", tcp(CLIENT4, port, VIP4, 80), &[&B4A, &B4B], 8080)).unwrap()
        })
        .collect();
    let to_a = fresh.iter().filter(|h| h.ip == B4A.ip).count() as u64;
    assert!(0 < to_a && to_a < 32, "new flows should use both backends, {to_a} of 32 went to {}", B4A.ip);

    let stats = fx.dp.counters().expect("counters");
    let a = stats.backends.iter().find(|b| b.addr == B4A.ip).expect("counters of B4A").counters;
    let flows = flows.len() as u64;
    assert_eq!((a.packets, a.new_flows), (2 * flows + to_a, flows + to_a), "{} counters (packets, new flows)", B4A.ip);
}

/// A removed backend's TCP flow ends where it began: its segments (ACK, FIN) still reach
/// it and count no new flow; a SYN on the same 4-tuple (a new connection) goes to an active
/// backend, and so does the next datagram of a UDP flow.
#[test]
fn tcp_flow_of_a_removed_backend_ends_there_and_a_syn_moves() {
    let both = |proto, port| svc(VIP4, port, proto, &[(&B4A, 8080), (&B4B, 8080)]);
    let one = |proto, port, h: &Host| svc(VIP4, port, proto, &[(h, 8080)]);
    let mut fx = Fixture::new(&[both(IPPROTO_TCP, 80), both(IPPROTO_UDP, 53)]);
    let p = tcp(CLIENT4, 40000, VIP4, 80);
    let first = fx.check(&fwd_any("new flow", p.clone(), &[&B4A, &B4B], 8080)).unwrap();
    let u = (40000..40100).map(|port| udp(CLIENT4, port, VIP4, 53)).find(|u| {
        fx.check(&fwd_any("new udp flow", u.clone(), &[&B4A, &B4B], 8080)).unwrap().ip == first.ip
    });
    let u = u.expect("a udp flow on the same backend as the tcp one");
    let other = if first.ip == B4A.ip { &B4B } else { &B4A };
    fx.sync(&[one(IPPROTO_TCP, 80, other), one(IPPROTO_UDP, 53, other)]);
    for seg in [Seg::Ack, Seg::FinAck, Seg::Ack] {
        let (h, new) = fx.send_counting("segment of a flow on a removed backend", &p.seg(seg), &[first]);
        assert!(!new && h.ip == first.ip, "{seg:?} went to {} (new: {new}), want its removed backend {}", h.ip, first.ip);
    }
    let (h, new) = fx.send_counting("syn on the 4-tuple of a removed backend's flow", &p, &[other]);
    assert!(new && h.ip == other.ip, "SYN went to {} (new: {new}), want a new flow to {}", h.ip, other.ip);
    fx.check(&fwd("udp flow of a removed backend", u, other, 8080));
}

#[test]
fn draining_backend_keeps_its_flows_and_takes_no_new_ones() {
    let mut both = svc(VIP4, 80, IPPROTO_TCP, &[(&B4A, 8080), (&B4B, 8080)]);
    let mut fx = Fixture::new(&[both.clone()]);
    let p = tcp(CLIENT4, 40000, VIP4, 80);
    let pinned = fx.check(&fwd_any("new flow", p.clone(), &[&B4A, &B4B], 8080)).unwrap();
    let other = if pinned.ip == B4A.ip { &B4B } else { &B4A };
    for b in &mut both.backends {
        if b.addr == pinned.ip {
            b.state = BackendState::Draining;
        }
    }
    fx.sync(&[both]);
    fx.check(&fwd("existing flow of a draining backend", p.seg(Seg::Ack), pinned, 8080));
    fx.check(&fwd("a syn on the draining backend's 4-tuple moves", p, other, 8080));
    for port in 50000..50032 {
        fx.check(&fwd("new flow while a backend drains", tcp(CLIENT4, port, VIP4, 80), other, 8080));
    }
}

/// A seeded xorshift64*: the same frames on every run, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Garbage must never crash or wedge the program: every frame the kernel accepts ends
/// in `XDP_PASS`, or in `XDP_DROP` with exactly one drop counted. Half the frames are
/// random bytes, half are fixture frames with random bytes changed, so the deeper
/// parsing and rewriting paths see garbage too.
#[test]
fn garbage_frames_pass_or_drop() {
    // No backend on the ingress interface: XDP_TX is never right here.
    let services: Vec<Desired> =
        services().into_iter().filter(|d| d.backends.iter().all(|b| b.addr != NEAR.ip)).collect();
    let mut fx = Fixture::new(&services);
    let templates: Vec<Vec<u8>> = cases().into_iter().map(|c| c.input).collect();
    let mut rng = Rng(0x786c_6221_5eed);
    let (mut refused, mut passed, mut dropped) = (0, 0, 0);
    for i in 0..2000 {
        let len = rng.below(200);
        let mut frame: Vec<u8> = if i % 2 == 0 {
            Vec::new()
        } else {
            let mut t = templates[rng.below(templates.len())].clone();
            for _ in 0..=rng.below(4) {
                let at = rng.below(t.len());
                t[at] = rng.next() as u8;
            }
            t
        };
        frame.resize_with(len, || rng.next() as u8);
        let before = fx.drops();
        let got = fx.run(&frame);
        let counted = fx.drops_since(&before);
        match got {
            Err(errno) => {
                assert!(
                    len < 14 && errno == libc::EINVAL,
                    "frame {i}: {}\n{}",
                    io::Error::from_raw_os_error(errno),
                    hex(&frame)
                );
                refused += 1;
            }
            Ok(out) => {
                let tally = match out.action {
                    XDP_PASS => &mut passed,
                    XDP_DROP => &mut dropped,
                    a => panic!("frame {i}: {}\n{}", action_name(a), hex(&frame)),
                };
                // A drop counts one reason; a pass counts nothing, or one reason it passes by.
                let passes = |r: &str| r == "no_flow" || r == "ttl_expired";
                let fits = match (out.action, counted.as_slice()) {
                    (XDP_PASS, []) => true,
                    (XDP_PASS, [(r, 1)]) => passes(r),
                    (XDP_DROP, [(r, 1)]) => !passes(r),
                    _ => false,
                };
                assert!(fits, "frame {i} ({}): counted {counted:?}\n{}", action_name(out.action), hex(&frame));
                *tally += 1;
            }
        }
    }
    println!("garbage: {refused} refused by the kernel (shorter than Ethernet), {passed} passed, {dropped} dropped");
}

// ---------------------------------------------------------------------------------
// Backend choice and the connection table

/// The backends of the selection tests, all on fx1.
static TRIO: [&Host; 3] = [&B4A, &B4B, &B4C];
/// The port every backend of these tests listens on.
const WEB_PORT: u16 = 8080;
/// The idle timeout of the expiry tests; entries are aged by sleeping twice as long.
const IDLE: Duration = Duration::from_millis(100);
/// A timeout no entry of a test reaches.
const LONG: Duration = Duration::from_secs(3600);

/// VIP4:80/tcp over `backends` (host, weight), each at `WEB_PORT`, choosing by `method`.
fn web(method: Method, backends: &[(&Host, u32)]) -> Desired {
    Desired {
        name: "web".into(),
        key: ServiceKey::new(VIP4, 80, IPPROTO_TCP),
        method,
        backends: backends
            .iter()
            .map(|(h, weight)| DesiredBackend { addr: h.ip, port: WEB_PORT, weight: *weight, state: BackendState::Active })
            .collect(),
    }
}

/// `web` with weight 1 each.
fn even(method: Method, hosts: &[&Host]) -> Desired {
    web(method, &hosts.iter().map(|h| (*h, 1)).collect::<Vec<_>>())
}

/// Client `n` of 100: 10.250.0.100 (`CLIENT4`) to 10.250.0.199.
fn client(n: u16) -> IpAddr {
    assert!(n < 100, "client {n}: only 100 client addresses");
    IpAddr::V4(Ipv4Addr::new(10, 250, 0, 100 + n as u8))
}

/// `n` TCP flows to VIP4:80 from four clients, each from its own port.
fn web_flows(n: u16) -> Vec<Pkt> {
    (0..n).map(|i| tcp(client(i % 4), 40000 + i, VIP4, 80)).collect()
}

/// `client:port`, for messages.
fn flow_name(p: &Pkt) -> String {
    format!("{}:{}", p.src, p.sport)
}

/// The backend a new flow `p` of `d` must get under Maglev or source hashing: the slot
/// `lb_common`'s flow (or source) hash names in the Maglev table that user space builds
/// from the backends' identities (address words, port) and the seed. Nothing else enters,
/// so every node with the same seed and backends chooses alike, and a flow whose entry is
/// lost chooses again what it had.
fn predict(d: &Desired, limits: &Limits, p: &Pkt) -> IpAddr {
    let active: Vec<&DesiredBackend> = d.backends.iter().filter(|b| b.state == BackendState::Active).collect();
    let entries: Vec<Entry> = active
        .iter()
        .map(|b| {
            let (a, _) = addr_words(b.addr);
            Entry { identity: [a[0], a[1], a[2], a[3], b.port as u32], weight: b.weight }
        })
        .collect();
    let table = maglev::maglev(&entries, limits.table_size, limits.hash_seed);
    let (src, dst) = (addr_words(p.src).0, addr_words(p.dst).0);
    let hash = match d.method {
        Method::Maglev => flow_hash(&src, p.sport.to_be(), &dst, p.dport.to_be(), p.proto(), limits.hash_seed),
        Method::SourceHash => source_hash(&src, limits.hash_seed),
        m => panic!("{m:?} does not choose by hash"),
    };
    active[table[(hash % limits.table_size) as usize] as usize].addr
}

/// The first flow from `CLIENT4` with a source port in `ports` that `d` sends to `host`.
fn flow_to(d: &Desired, host: &Host, ports: std::ops::Range<u16>) -> Pkt {
    ports
        .map(|port| tcp(CLIENT4, port, VIP4, 80))
        .find(|p| predict(d, &LIMITS, p) == host.ip)
        .unwrap_or_else(|| panic!("no flow to {} among the ports", host.ip))
}

/// A flow's two connection entries as the kernel keys them: client -> VIP (the service
/// entry, holding the backend) and client -> backend (for replies).
fn conn_keys(p: &Pkt, backend: &Host, port: u16) -> [ConnKey; 2] {
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

/// Pins the calling thread to the CPU it is on until dropped. Round-robin positions are
/// per CPU and a test run executes on the caller's CPU, so consecutive runs then walk one
/// position.
struct PinCpu(libc::cpu_set_t);

impl PinCpu {
    fn here() -> Self {
        // SAFETY: cpu_set_t is plain data; the calls get valid pointers and their sizes.
        unsafe {
            let mut saved: libc::cpu_set_t = mem::zeroed();
            let size = mem::size_of::<libc::cpu_set_t>();
            assert_eq!(libc::sched_getaffinity(0, size, &mut saved), 0, "sched_getaffinity: {}", io::Error::last_os_error());
            let cpu = libc::sched_getcpu();
            assert!(cpu >= 0, "sched_getcpu: {}", io::Error::last_os_error());
            let mut one: libc::cpu_set_t = mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut one);
            assert_eq!(libc::sched_setaffinity(0, size, &one), 0, "pinning to CPU {cpu}: {}", io::Error::last_os_error());
            PinCpu(saved)
        }
    }
}

impl Drop for PinCpu {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &self.0) };
    }
}

impl Fixture {
    /// Sends `p` and returns the backend it was rewritten for, one of `hosts` at
    /// `WEB_PORT` (the rewrite is checked like any fixture case's).
    fn send(&mut self, what: &'static str, p: &Pkt, hosts: &[&'static Host]) -> &'static Host {
        self.check(&fwd_any(what, p.clone(), hosts, WEB_PORT)).expect("a forwarded packet names its backend")
    }

    /// Sends `p`; returns its backend and whether the data plane counted a new flow,
    /// i.e. chose a backend rather than following a connection entry.
    fn send_counting(&mut self, what: &'static str, p: &Pkt, hosts: &[&'static Host]) -> (&'static Host, bool) {
        let key = ServiceKey::new(p.dst, p.dport, p.proto());
        let before = self.new_flows(key);
        let host = self.send(what, p, hosts);
        let counted = self.new_flows(key) - before;
        assert!(counted <= 1, "{what}: one packet of {} counted {counted} new flows", flow_name(p));
        (host, counted == 1)
    }

    /// The new flows a service has counted.
    fn new_flows(&mut self, key: ServiceKey) -> u64 {
        let stats = self.dp.counters().expect("counters");
        stats.services.iter().find(|(k, _)| *k == key).map(|(_, c)| c.new_flows).expect("counters of the service")
    }

    fn backend_counters(&mut self, host: &Host) -> Counters {
        let stats = self.dp.counters().expect("counters");
        stats.backends.iter().find(|b| b.addr == host.ip).map(|b| b.counters).unwrap_or_else(|| panic!("no counters of {}", host.ip))
    }

    /// The connection table, opened by id from the XDP program's maps: `Dataplane` keeps
    /// its handle to itself, and by name alone another loaded xlb's table could answer.
    fn conntrack(&mut self) -> BpfHashMap<MapData, ConnKey, Conn> {
        let prog = self.dp.xdp().expect("the XDP program").info().expect("program info");
        for id in prog.map_ids().expect("map ids").expect("this kernel lists a program's maps") {
            let data = MapData::from_id(id).expect("opening a map by id");
            if data.info().expect("map info").name_as_str() == Some(names::CONNTRACK) {
                return Map::from_map_data(data).and_then(BpfHashMap::try_from).expect("CONNTRACK as a hash map");
            }
        }
        panic!("the XDP program uses no map named {}", names::CONNTRACK);
    }

    /// The backend id a flow's service entry names.
    fn pinned_id(&mut self, p: &Pkt, backend: &Host) -> u32 {
        let key = conn_keys(p, backend, WEB_PORT)[0];
        self.conntrack().get(&key, 0).unwrap_or_else(|e| panic!("no service entry of {}: {e}", flow_name(p))).backend
    }

    /// Sends `old`, lets them idle for `2 * IDLE`, sends `fresh`, and returns a time (for
    /// `expire`) when every entry of `old` has been idle longer than `IDLE` and none of
    /// `fresh` has, however slowly the sends ran.
    fn age(&mut self, old: &[Pkt], fresh: &[Pkt], hosts: &[&'static Host]) -> u64 {
        for p in old {
            self.send("flow to age", p, hosts);
        }
        let old_done = monotonic_ns();
        std::thread::sleep(2 * IDLE);
        let fresh_start = monotonic_ns();
        assert!(fresh_start - old_done >= 2 * IDLE.as_nanos() as u64, "CLOCK_MONOTONIC moved slower than the sleep");
        for p in fresh {
            self.send("fresh flow", p, hosts);
        }
        fresh_start + IDLE.as_nanos() as u64 / 2
    }
}

/// Maglev's choice is a pure function of the 5-tuple and the seed: the kernel picks exactly
/// the backend that `lb_common::flow_hash` names in the table user space built, and a flow
/// whose connection entries are deleted (as the LRU table evicts them) comes back to the
/// same backend with its next SYN, counted as a new flow, while the others stay pinned; a
/// mid-flow segment of an evicted flow is left to the stack, not steered.
#[test]
fn maglev_choice_is_the_flow_hash_and_survives_eviction() {
    let d = even(Method::Maglev, &TRIO);
    let mut fx = Fixture::new(std::slice::from_ref(&d));
    let flows = web_flows(60);
    let first: Vec<&Host> = flows.iter().map(|p| fx.send("maglev: new flow", p, &TRIO)).collect();
    for (p, h) in flows.iter().zip(&first) {
        let want = predict(&d, &LIMITS, p);
        assert_eq!(h.ip, want, "flow {}: the kernel chose {}, the flow hash names {want}", flow_name(p), h.ip);
    }
    let used: BTreeSet<IpAddr> = first.iter().map(|h| h.ip).collect();
    assert_eq!(used.len(), 3, "60 flows should reach all three backends, reached {used:?}");

    // Evict every other flow: both its entries, as an LRU eviction may.
    let mut ct = fx.conntrack();
    for (p, h) in flows.iter().zip(&first).step_by(2) {
        for k in conn_keys(p, h, WEB_PORT) {
            ct.remove(&k).unwrap_or_else(|e| panic!("deleting {k:?} of flow {}: {e}", flow_name(p)));
        }
    }
    for (i, (p, h)) in flows.iter().zip(&first).enumerate() {
        let evicted = i % 2 == 0;
        if evicted {
            fx.check(&no_flow("maglev: a segment of an evicted flow is not steered afresh", p.seg(Seg::Ack)));
        } else {
            let again = fx.send("maglev: a segment of a kept flow", &p.seg(Seg::Ack), &TRIO);
            assert_eq!(again.ip, h.ip, "flow {} moved from {} to {}", flow_name(p), h.ip, again.ip);
        }
        let (again, new) = fx.send_counting("maglev: a syn after an eviction", p, &TRIO);
        assert_eq!(new, evicted, "flow {} (evicted: {evicted}) counted as a new flow: {new}", flow_name(p));
        assert_eq!(again.ip, h.ip, "flow {} (evicted: {evicted}) moved from {} to {}", flow_name(p), h.ip, again.ip);
    }
    println!("maglev: 60 flows as the flow hash predicts over {used:?}; 30 evicted came back to their backends");
}

/// Equal seeds make separately loaded data planes (two xlb nodes) choose alike; another seed
/// chooses differently for some flows. Each load chooses what its own seed predicts.
#[test]
fn equal_seeds_choose_alike_across_loads() {
    let d = even(Method::Maglev, &TRIO);
    let flows = web_flows(60);
    let choices = |seed: u32| -> Vec<IpAddr> {
        let limits = Limits { hash_seed: seed, ..LIMITS };
        let mut fx = Fixture::with_limits(limits, std::slice::from_ref(&d));
        flows
            .iter()
            .map(|p| {
                let h = fx.send("seeded load: new flow", p, &TRIO);
                let want = predict(&d, &limits, p);
                assert_eq!(h.ip, want, "seed {seed}: flow {} went to {}, the flow hash names {want}", flow_name(p), h.ip);
                h.ip
            })
            .collect()
    };
    let seed = LIMITS.hash_seed;
    let (node1, node2, other) = (choices(seed), choices(seed), choices(seed + 1));
    assert_eq!(node1, node2, "two data planes loaded with seed {seed} chose differently");
    let moved = node1.iter().zip(&other).filter(|(a, b)| a != b).count();
    println!("seeds: {seed} twice chose alike for 60 flows; seed {} moved {moved} of them", seed + 1);
    // Independent choices over three backends differ for ~2/3 of the flows.
    assert!(moved >= flows.len() / 4, "seed {} moved only {moved} of {} flows", seed + 1, flows.len());
}

/// Source hashing sends every flow of a client (any port) to one backend, the one the
/// source hash names, while different clients spread over all backends.
#[test]
fn source_hash_keeps_each_client_on_one_backend() {
    let d = even(Method::SourceHash, &TRIO);
    let mut fx = Fixture::new(std::slice::from_ref(&d));
    let mut by_client: BTreeMap<IpAddr, BTreeSet<IpAddr>> = BTreeMap::new();
    for c in 0..24 {
        for port in (40000..).step_by(97).take(16) {
            let p = tcp(client(c), port, VIP4, 80);
            let h = fx.send("source hash: new flow", &p, &TRIO);
            let want = predict(&d, &LIMITS, &p);
            assert_eq!(h.ip, want, "flow {} went to {}, the source hash names {want}", flow_name(&p), h.ip);
            by_client.entry(p.src).or_default().insert(h.ip);
        }
    }
    for (c, backends) in &by_client {
        assert_eq!(backends.len(), 1, "client {c}'s 16 flows went to {backends:?}");
    }
    let mut clients_per_backend: BTreeMap<IpAddr, usize> = BTreeMap::new();
    by_client.values().flatten().for_each(|b| *clients_per_backend.entry(*b).or_default() += 1);
    println!("source hash: 24 clients x 16 ports, clients per backend {clients_per_backend:?}");
    assert_eq!(clients_per_backend.len(), 3, "24 clients should spread over all three backends: {clients_per_backend:?}");
}

/// The backends `n` consecutive new flows went to, all on one CPU.
fn sequence(fx: &mut Fixture, n: u16, hosts: &[&'static Host]) -> Vec<&'static Host> {
    let _pin = PinCpu::here();
    web_flows(n).iter().map(|p| fx.send("round robin: new flow", p, hosts)).collect()
}

/// Hosts as one letter each (a, b, c), for printing sequences.
fn letters(seq: &[&Host]) -> String {
    seq.iter().map(|h| (b'a' + TRIO.iter().position(|t| t.ip == h.ip).unwrap() as u8) as char).collect()
}

/// Round robin walks the smooth weighted sequence: consecutive new flows repeat it with a
/// period of the total weight (equal weights: a cycle through every backend), and the
/// shares over 300 flows are the weights' exactly, or within one flow.
#[test]
fn round_robin_cycles_in_weight_proportion() {
    let cases: [(&str, &[(&Host, u32)], u16, &[usize]); 3] = [
        ("1:1:1", &[(&B4A, 1), (&B4B, 1), (&B4C, 1)], 300, &[100, 100, 100]),
        ("1:2", &[(&B4A, 1), (&B4B, 2)], 300, &[100, 200]),
        ("1:2:3", &[(&B4A, 1), (&B4B, 2), (&B4C, 3)], 600, &[100, 200, 300]),
    ];
    for (name, backends, n, want) in cases {
        let hosts: Vec<&'static Host> = TRIO[..backends.len()].to_vec();
        let mut fx = Fixture::new(&[web(Method::RoundRobin, backends)]);
        let seq = sequence(&mut fx, n, &hosts);
        let counts: Vec<usize> = hosts.iter().map(|h| seq.iter().filter(|s| s.ip == h.ip).count()).collect();
        println!("round robin {name}: {n} flows -> {counts:?}; first flows {}", letters(&seq[..12]));
        for ((h, got), want) in hosts.iter().zip(&counts).zip(want) {
            assert!(got.abs_diff(*want) <= 1, "{name}: {} got {got} of {n} flows, want {want} (±1): {counts:?}", h.ip);
        }
        // Within one table (where the position does not wrap) the sequence is periodic.
        let period: usize = backends.iter().map(|b| b.1 as usize).sum();
        let within = (LIMITS.table_size as usize).min(seq.len());
        if let Some(i) = (period..within).find(|&i| seq[i].ip != seq[i - period].ip) {
            panic!("{name}: flow {i} went to {}, flow {} (one period before) to {}: {}", seq[i].ip, i - period, seq[i - period].ip, letters(&seq[..within]));
        }
        if backends.iter().all(|b| b.1 == 1) {
            let cycle: BTreeSet<IpAddr> = seq[..period].iter().map(|h| h.ip).collect();
            assert_eq!(cycle.len(), period, "{name}: the first {period} flows should visit every backend once: {}", letters(&seq[..period]));
        }
    }
}

/// The cycle goes on where the per-CPU position wraps around the end of the table: with 3
/// equal backends no backend is skipped or chosen twice in a row there either.
#[test]
fn round_robin_cycle_continues_past_the_table_end() {
    let mut fx = Fixture::new(&[even(Method::RoundRobin, &TRIO)]);
    let size = LIMITS.table_size as usize;
    let seq = sequence(&mut fx, 2 * size as u16 + 10, &TRIO);
    let breaks: Vec<usize> = (3..seq.len()).filter(|&i| seq[i].ip != seq[i - 3].ip).collect();
    let around = |i: usize| letters(&seq[i.saturating_sub(6)..(i + 6).min(seq.len())]);
    assert!(
        breaks.is_empty(),
        "the a-b-c cycle breaks at flows {breaks:?} (table of {size} slots; {size} % 3 = {}); around the first: {}",
        size % 3,
        breaks.first().map(|&i| around(i)).unwrap_or_default()
    );
}

/// Random choice spreads 600 new flows over three equal backends, 20%..50% each (expected
/// 33.3%, standard deviation 1.9 points: the bounds are > 6 sigma).
#[test]
fn random_spreads_over_all_backends() {
    let mut fx = Fixture::new(&[even(Method::Random, &TRIO)]);
    let n = 600;
    let seq: Vec<&Host> = web_flows(n).iter().map(|p| fx.send("random: new flow", p, &TRIO)).collect();
    let counts: Vec<usize> = TRIO.iter().map(|h| seq.iter().filter(|s| s.ip == h.ip).count()).collect();
    println!("random: {n} flows -> {counts:?}");
    for (h, c) in TRIO.iter().zip(&counts) {
        let share = *c as f64 / n as f64;
        assert!((0.2..=0.5).contains(&share), "{} got {c} of {n} flows ({:.1}%), want 20%..50%: {counts:?}", h.ip, share * 100.0);
    }
}

/// `expire` removes the entries idle longer than their protocol's timeout (two per flow)
/// and keeps the others; a flow whose entries expired chooses again (a new flow), the
/// others follow their entries.
#[test]
fn idle_entries_expire_per_protocol() {
    // (name, tcp timeout, udp timeout, tcp flows expire, udp flows expire)
    let cases = [
        ("no timeout reached", LONG, LONG, false, false),
        ("tcp timeout", IDLE, LONG, true, false),
        ("udp timeout", LONG, IDLE, false, true),
        ("both timeouts", IDLE, IDLE, true, true),
    ];
    let flows = |ports: std::ops::Range<u16>| -> Vec<Pkt> {
        ports.flat_map(|port| [tcp(CLIENT4, port, VIP4, 80), udp(CLIENT4, port, VIP4, 53)]).collect()
    };
    for (name, tcp_idle, udp_idle, tcp_expires, udp_expires) in cases {
        let mut fx = Fixture::new(&[
            svc(VIP4, 80, IPPROTO_TCP, &[(&B4A, WEB_PORT)]),
            svc(VIP4, 53, IPPROTO_UDP, &[(&B4A, WEB_PORT)]),
        ]);
        let (old, fresh) = (flows(40000..40003), flows(50000..50003));
        let now = fx.age(&old, &fresh, &[&B4A]);
        let expires = |p: &Pkt| if p.l4 == L4::Tcp { tcp_expires } else { udp_expires };
        let want = 2 * old.iter().filter(|p| expires(p)).count();
        let (tcp_ns, udp_ns) = (tcp_idle.as_nanos() as u64, udp_idle.as_nanos() as u64);
        let t = Timeouts { tcp: tcp_ns, tcp_closed: tcp_ns, udp: udp_ns };
        let got = fx.dp.expire(now, &t).expect("expire");
        assert_eq!(got, want, "{name}: entries expired");
        assert_eq!(fx.dp.expire(now, &t).expect("expire"), 0, "{name}: a second pass expired more");
        for p in &old {
            let (_, new) = fx.send_counting("flow after expiry", p, &[&B4A]);
            assert_eq!(new, expires(p), "{name}: idle {:?} flow {} chose a backend again: {new}", p.l4, flow_name(p));
        }
        for p in &fresh {
            let (_, new) = fx.send_counting("fresh flow after expiry", p, &[&B4A]);
            assert!(!new, "{name}: fresh {:?} flow {} lost its entry", p.l4, flow_name(p));
        }
        println!("expiry, {name}: {got} entries removed");
    }
}

/// A FIN or RST marks both entries of a flow closed, and `expire` removes them after the
/// short closed timeout though the idle one is far off; an open flow stays, and so does one
/// whose 4-tuple a SYN opened again after its FIN (its entries are written anew).
#[test]
fn closed_tcp_flows_expire_after_the_closed_timeout() {
    let mut fx = Fixture::new(&[svc(VIP4, 80, IPPROTO_TCP, &[(&B4A, WEB_PORT)])]);
    let flow = |port| tcp(CLIENT4, port, VIP4, 80);
    let (fin, rst, open, reopened) = (flow(40000), flow(40001), flow(40002), flow(40003));
    for p in [&fin, &rst, &open, &reopened] {
        fx.send("new flow", p, &[&B4A]);
    }
    for (what, p) in [("fin", fin.seg(Seg::FinAck)), ("rst", rst.seg(Seg::Rst)), ("fin", reopened.seg(Seg::FinAck)), ("syn", reopened.clone())] {
        let (h, new) = fx.send_counting(what, &p, &[&B4A]);
        assert!(!new && h.ip == B4A.ip, "{what} of flow {}: to {} (new: {new})", flow_name(&p), h.ip);
    }
    let closed = |fx: &mut Fixture, p: &Pkt| {
        let ct = fx.conntrack();
        conn_keys(p, &B4A, WEB_PORT).map(|k| ct.get(&k, 0).unwrap_or_else(|e| panic!("entry {k:?}: {e}")).flags & Conn::F_CLOSED != 0)
    };
    for (p, want) in [(&fin, true), (&rst, true), (&open, false), (&reopened, false)] {
        assert_eq!(closed(&mut fx, p), [want, want], "flow {}: (service, backend) entries closed", flow_name(p));
    }
    std::thread::sleep(2 * IDLE);
    let (idle, long) = (IDLE.as_nanos() as u64, LONG.as_nanos() as u64);
    let expired = fx.dp.expire(monotonic_ns(), &Timeouts { tcp: long, tcp_closed: idle, udp: long }).expect("expire");
    assert_eq!(expired, 4, "entries of the two closed flows expired");
    fx.check(&no_flow("an ack of an expired closed flow", fin.seg(Seg::Ack)));
    fx.check(&no_flow("an ack of an expired reset flow", rst.seg(Seg::Ack)));
    for p in [&open, &reopened] {
        let (_, new) = fx.send_counting("an ack of a flow still open", &p.seg(Seg::Ack), &[&B4A]);
        assert!(!new, "flow {}", flow_name(p));
    }
}

/// After a backend is removed: the flow that was on it, the one on the kept backend, the
/// removed backend's id, and how many entries `expire` removed.
struct Removal {
    fx: Fixture,
    on_a: Pkt,
    on_b: Pkt,
    b_id: u32,
    expired: usize,
}

/// Serves {A, B} with a flow on each (B's left idle past `IDLE` when `idle`), removes B by
/// `sync` and runs `expire`.
fn remove_b(idle: bool) -> Removal {
    let two = even(Method::Maglev, &[&B4A, &B4B]);
    let mut fx = Fixture::new(std::slice::from_ref(&two));
    let (on_a, on_b) = (flow_to(&two, &B4A, 40000..41000), flow_to(&two, &B4B, 40000..41000));
    let (old, fresh) = if idle { (vec![on_b.clone()], vec![on_a.clone()]) } else { (vec![], vec![on_a.clone(), on_b.clone()]) };
    let now = fx.age(&old, &fresh, &[&B4A, &B4B]);
    let b_id = fx.pinned_id(&on_b, &B4B);
    fx.sync(&[even(Method::Maglev, &[&B4A])]);
    let idle = IDLE.as_nanos() as u64;
    let expired = fx.dp.expire(now, &Timeouts { tcp: idle, tcp_closed: idle, udp: idle }).expect("expire");
    Removal { fx, on_a, on_b, b_id, expired }
}

/// A backend removed by `sync` keeps its id while a connection entry names it, so a backend
/// added later cannot inherit its flows; once its entries expire the id is freed and the
/// next new backend takes it. Either way the removed backend's flow chooses again (a new
/// flow) where the flow hash says, and the kept backend's flow stays.
#[test]
fn removed_backend_id_is_freed_once_its_entries_expire() {
    let with_c = even(Method::Maglev, &[&B4A, &B4C]);
    for idle in [false, true] {
        let case = if idle { "entries of B expired" } else { "entries of B fresh" };
        let Removal { mut fx, on_a, on_b, b_id, expired } = remove_b(idle);
        assert_eq!(expired, if idle { 2 } else { 0 }, "{case}: entries expired");

        fx.sync(std::slice::from_ref(&with_c));
        let to_c = flow_to(&with_c, &B4C, 50000..51000);
        let (h, new) = fx.send_counting("new flow to the new backend", &to_c, &[&B4A, &B4C]);
        assert!(h.ip == B4C.ip && new, "{case}: flow {} went to {} (new: {new}), want a new flow to {}", flow_name(&to_c), h.ip, B4C.ip);
        let c_id = fx.pinned_id(&to_c, &B4C);
        if idle {
            assert_eq!(c_id, b_id, "{case}: the removed backend's id {b_id} should be free again and the next backend's");
        } else {
            assert_ne!(c_id, b_id, "{case}: the removed backend's id was given to a new backend while an entry names it");
        }

        if idle {
            fx.check(&no_flow("a segment of the removed backend's expired flow", on_b.seg(Seg::Ack)));
        } else {
            let (h, new) = fx.send_counting("a segment of the removed backend's flow", &on_b.seg(Seg::Ack), &[&B4B]);
            assert!(!new && h.ip == B4B.ip, "{case}: flow {} went to {} (new: {new}), want its removed backend", flow_name(&on_b), h.ip);
        }
        let (h, new) = fx.send_counting("a syn on the removed backend's flow", &on_b, &[&B4A, &B4C]);
        let want = predict(&with_c, &LIMITS, &on_b);
        assert!(new && h.ip == want, "{case}: flow {} went to {} (new: {new}), want a new choice, {want}", flow_name(&on_b), h.ip);
        let (h, new) = fx.send_counting("flow of the kept backend", &on_a, &[&B4A, &B4C]);
        assert!(!new && h.ip == B4A.ip, "{case}: flow {} went to {} (new: {new}), want its entry's {}", flow_name(&on_a), h.ip, B4A.ip);
        println!("removed backend, {case}: {expired} entries expired, B's id {b_id}, C's id {c_id}");
    }
}

/// A backend that takes a freed id starts from zero counters: the packets and flows of the
/// removed backend that had the id are not its own.
#[test]
fn backend_on_a_reused_id_starts_with_zero_counters() {
    let Removal { mut fx, b_id, expired, .. } = remove_b(true);
    assert_eq!(expired, 2, "entries expired");
    let with_c = even(Method::Maglev, &[&B4A, &B4C]);
    fx.sync(std::slice::from_ref(&with_c));
    let c = fx.backend_counters(&B4C);
    assert_eq!((c.packets, c.new_flows), (0, 0), "{} (on id {b_id}, freed) starts with counters (packets, new flows)", B4C.ip);
    let to_c = flow_to(&with_c, &B4C, 50000..51000);
    fx.send("new flow to the new backend", &to_c, &[&B4C]);
    let c = fx.backend_counters(&B4C);
    assert_eq!((c.packets, c.new_flows), (1, 1), "{} counters (packets, new flows) after its first flow", B4C.ip);
}
