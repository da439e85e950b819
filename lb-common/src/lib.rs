//! Types shared by the kernel programs (`lb-ebpf`) and the control plane (`xlb`).
//!
//! Every type here is the key or value of a BPF map, so it is `#[repr(C)]`, has no
//! implicit padding and is `Copy`. Addresses and ports are kept in network byte order,
//! exactly as they sit in packets, so the kernel never swaps bytes on the hot path.
#![no_std]

/// Names of the BPF maps and programs, so both sides spell them alike.
pub mod names {
    pub const SERVICES: &str = "SERVICES";
    pub const BACKENDS: &str = "BACKENDS";
    pub const REV_NAT: &str = "REV_NAT";
    pub const TABLES: &str = "TABLES";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const HALF_OPEN: &str = "HALF_OPEN";
    pub const CONN_CREATED: &str = "CONN_CREATED";
    pub const SETTINGS: &str = "SETTINGS";
    pub const TX_PORTS: &str = "TX_PORTS";
    pub const VIPS: &str = "VIPS";
    pub const IF_MACS: &str = "IF_MACS";
    pub const RR: &str = "RR";
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const DROPS: &str = "DROPS";
    pub const SOCK_REV_NAT: &str = "SOCK_REV_NAT";
    pub const TUNNEL_SOURCES: &str = "TUNNEL_SOURCES";
    pub const HANDOFF: &str = "HANDOFF";
    pub const PROG_XDP: &str = "xlb_xdp";
    pub const PROG_FWD: &str = "xlb_fwd";
    pub const PROG_REPLY: &str = "xlb_reply";
    /// The socket-level programs (cgroup sock_addr hooks), by the hook each is for.
    pub const SOCK_PROGS: [(&str, &str); 8] = [
        ("xlb_connect4", "connect4"),
        ("xlb_connect6", "connect6"),
        ("xlb_sendmsg4", "sendmsg4"),
        ("xlb_sendmsg6", "sendmsg6"),
        ("xlb_recvmsg4", "recvmsg4"),
        ("xlb_recvmsg6", "recvmsg6"),
        ("xlb_getpeername4", "getpeername4"),
        ("xlb_getpeername6", "getpeername6"),
    ];
}

/// Default number of slots of one selection table (a prime, as Maglev requires).
pub const DEFAULT_TABLE_SIZE: u32 = 65537;
/// Default size of the connection table.
pub const DEFAULT_CONNTRACK_SIZE: u32 = 262_144;
/// Default size of the half-open table (TCP flows between SYN and handshake's end).
pub const DEFAULT_HALF_OPEN_SIZE: u32 = DEFAULT_CONNTRACK_SIZE / 4;
/// `CONN_CREATED` slots: entries added to the connection table, and to the half-open one.
pub const CONN_CREATED_ESTABLISHED: u32 = 0;
pub const CONN_CREATED_HALF_OPEN: u32 = 1;
/// Upper bound of backend ids (the `BACKENDS` array size).
pub const MAX_BACKENDS: u32 = 16_384;
/// Upper bound of service ids.
pub const DEFAULT_MAX_SERVICES: u32 = 64;
/// Size of `SOCK_REV_NAT` (an LRU: a socket gone leaves its entries to be pushed out).
pub const SOCK_REV_NAT_SIZE: u32 = 65_536;

pub const AF_INET: u8 = 4;
pub const AF_INET6: u8 = 6;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// IPv4 in IPv4 (RFC 2003): the outer header of `Service::F_TUNNEL` forwarding.
pub const IPPROTO_IPIP: u8 = 4;

/// An IPv4 or IPv6 address as four network-order words; IPv4 uses word 0 only.
pub type Addr = [u32; 4];

/// How a service picks the backend of a new flow. All methods index one weighted
/// table of `table_size` slots that user space fills; they differ in the index.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Hash of the 5-tuple into a Maglev table: consistent across nodes and re-hashes.
    Maglev = 0,
    /// A host-wide counter walking a smooth weighted round-robin sequence.
    RoundRobin = 1,
    /// A random slot of the weighted sequence.
    Random = 2,
    /// Hash of the client address into the Maglev table.
    SourceHash = 3,
}

impl Method {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Maglev),
            1 => Some(Self::RoundRobin),
            2 => Some(Self::Random),
            3 => Some(Self::SourceHash),
            _ => None,
        }
    }
}

/// `SERVICES` key: what a client addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceKey {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// `IF_MACS` value: an interface's MAC address, which ARP and NDP answers name.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Mac {
    pub bytes: [u8; 6],
    pub _pad: [u8; 2],
}

/// `SERVICES` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Service {
    /// Index into `REV_NAT` and `SERVICE_STATS`.
    pub id: u32,
    /// Which slot of `TABLES` (in units of `table_size`) holds this service's table.
    /// User space fills a spare slot and then flips this field: the swap is atomic.
    pub table: u32,
    /// Slots of the table in use: `table_size` for hashed methods, one period of the
    /// weighted sequence for round_robin and random (so a walk never breaks its
    /// cycle). 0 when no backend takes new flows: they drop (`DropReason::NoBackend`).
    pub len: u32,
    /// `Method` as u8.
    pub method: u8,
    /// `Service::F_*` bits.
    pub flags: u8,
    pub _pad: [u8; 2],
}

impl Service {
    /// Local callers in the socket-LB cgroup reach it by socket-level balancing (their
    /// connect() and sendmsg() go straight to a backend); without it they go the packet way.
    pub const F_SOCKET_LB: u8 = 1;
    /// Direct server return on one L2 segment: the packet goes unchanged to the backend's
    /// MAC, and the backend answers the client itself. A TCP segment of a flow the node
    /// does not know is steered by the selection table like a new flow (several nodes
    /// behind ECMP share flows). So with `F_TUNNEL`.
    pub const F_DIRECT: u8 = 2;
    /// Direct server return through IPIP: the unchanged packet inside an IPv4 header to
    /// the backend.
    pub const F_TUNNEL: u8 = 4;
    /// Either: no reply passes this node.
    pub const F_RETURNS_DIRECTLY: u8 = Self::F_DIRECT | Self::F_TUNNEL;
}

/// Backend lifecycle as the kernel sees it.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendState {
    /// Unused id.
    Empty = 0,
    /// Takes new flows (when in a table) and keeps existing ones.
    Active = 1,
    /// Takes no new flows; existing flows continue.
    Draining = 2,
    /// Gone from the service: takes no new flow; the TCP segments of its flows still
    /// reach it (so they close where they began), while a SYN or a UDP datagram picks anew.
    /// Its id is not reused while a connection entry names it.
    Removed = 3,
}

/// `BACKENDS[id]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    /// `BackendState` as u8.
    pub state: u8,
    /// The id of the service whose table names it. A table slot freed by one service is
    /// soon rewritten for another; a packet that read the old slot number just before
    /// finds another service's backend there, and is dropped instead of misdelivered.
    pub service: u32,
}

/// `REV_NAT[service id]`: what a reply's source is rewritten to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RevNat {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
}

/// `SOCK_REV_NAT` key: a socket (by its cookie) that socket-level balancing connected (or
/// sent) to a backend, and that backend; the value is the VIP:port the application asked
/// for, which its recvmsg() and getpeername() are shown.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockRevKey {
    pub cookie: u64,
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: [u8; 5],
}

/// Which of a flow's two connection entries a key names.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnKind {
    /// client -> VIP:port, found by forward packets; holds the chosen backend.
    Service = 0,
    /// client -> backend:port, found by replies (reversed); holds the rev-NAT index.
    Backend = 1,
}

/// `CONNTRACK` key, always written from the client's side of the flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ConnKey {
    pub client: Addr,
    /// VIP for `ConnKind::Service`, backend address for `ConnKind::Backend`.
    pub peer: Addr,
    pub client_port: u16,
    pub peer_port: u16,
    pub proto: u8,
    pub family: u8,
    /// `ConnKind` as u8.
    pub kind: u8,
    pub _pad: u8,
}

/// `CONNTRACK` value. The kernel creates and refreshes entries, never deletes them:
/// user space expires idle ones by `last_seen`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Conn {
    pub backend: u32,
    /// Service id, the index into `REV_NAT`.
    pub rev_nat: u32,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) of the last packet.
    pub last_seen: u64,
    /// `Conn::F_*`.
    pub flags: u32,
    pub _pad: u32,
}

impl Conn {
    /// A FIN or RST went either way: the connection is closing, and its entries expire
    /// after the short `tcp_closed_timeout`, not the idle one.
    pub const F_CLOSED: u32 = 1;
}

/// `SETTINGS[0]`: data plane knobs set by user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    /// Slots per selection table (prime).
    pub table_size: u32,
    /// Seed of the flow hash; equal seeds make several xlb nodes choose alike.
    pub hash_seed: u32,
}

/// Per-CPU traffic counters, per service and per backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// Declares [`DropReason`] from one list (variant, index, name in the metrics), so that
/// `ALL`, `COUNT` and `name` cannot miss a reason.
macro_rules! drop_reasons {
    ($($(#[$doc:meta])* $variant:ident = $index:literal, $name:literal;)*) => {
        /// Why the data plane dropped a packet; the index into the per-CPU `DROPS` array.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum DropReason {
            $($(#[$doc])* $variant = $index,)*
        }

        impl DropReason {
            pub const COUNT: u32 = [$($name),*].len() as u32;
            pub const ALL: [DropReason; Self::COUNT as usize] = [$(Self::$variant),*];

            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }
        }
    };
}

drop_reasons! {
    /// A new flow for a service with no active backend.
    NoBackend = 0, "no_backend";
    /// The selection table pointed at an id with no usable backend (a table being rebuilt).
    BadTableEntry = 1, "bad_table_entry";
    /// The connection table refused an insert.
    ConntrackFull = 2, "conntrack_full";
    /// The route to the backend is a blackhole, unreachable or prohibited.
    FibUnreachable = 3, "fib_unreachable";
    /// No room for the metadata handed from XDP to TC, or (without XDP metadata) its
    /// `HANDOFF` slot reused before TC read it.
    NoMetaRoom = 4, "no_meta_room";
    /// The kernel's L4 checksum helper refused the packet.
    ChecksumFailed = 5, "checksum_failed";
    /// A TCP segment other than a SYN for a flow the connection table does not hold
    /// (closed, expired, evicted, or from before xlb): not steered anywhere new, but
    /// passed to the stack, which resets it when the VIP is a local address.
    NoFlow = 6, "no_flow";
    /// A packet for a service whose TTL (hop limit) would reach 0 here: not steered, but
    /// passed to the stack, which answers it as a router or a host would.
    TtlExpired = 7, "ttl_expired";
    /// An IPv4 fragment, left to the stack: xlb balances whole datagrams only.
    Fragment = 8, "fragment";
}

/// Metadata the XDP program leaves in front of a packet it passes to the stack, for
/// `xlb_fwd` (TC ingress) to finish: XDP cannot see whether a veth packet carries a
/// partial checksum (CHECKSUM_PARTIAL), but TC's checksum helpers handle both cases.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FwdMeta {
    /// `FwdMeta::MAGIC`, so TC ignores metadata that is not ours.
    pub magic: u32,
    /// Interface to redirect to (from the FIB lookup).
    pub ifindex: u32,
    /// One's-complement difference of the pseudo-header (addresses) to fold into the
    /// L4 checksum, or 0 when XDP already fixed the checksum.
    pub l4_addr_diff: u32,
    /// Same for the port word, which is not part of the pseudo-header.
    pub l4_port_diff: u32,
    /// `FwdMeta::F_*` bits.
    pub flags: u32,
}

impl FwdMeta {
    pub const MAGIC: u32 = 0x786c_6221; // "xlb!"
    /// The L4 checksum still needs `l4_*_diff` folded in.
    pub const F_FIX_L4: u32 = 1;
    /// An answer (ARP, NDP), or a direct-server-return frame whose MACs are written, to
    /// send out of `ifindex` as it is: a TC redirect to
    /// egress reaches any device, where `XDP_TX` into a veth is dropped unless the
    /// veth's peer runs an XDP program.
    pub const F_BACK_OUT: u32 = 2;
}

/// Where XDP leaves a [`FwdMeta`] on kernels that refuse it `bpf_xdp_adjust_meta`: a
/// `HANDOFF` slot named in the frame's source MAC ([`Handoff::mark`]; a group-bit source
/// MAC never comes from a wire, so no other frame is taken for one); TC writes `src` back.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Handoff {
    pub meta: FwdMeta,
    /// The frame's source MAC as XDP left it.
    pub src: [u8; 6],
    pub _pad: [u8; 2],
    /// Which use of the slot this is (24 bits): a slot reused before TC read it is seen.
    pub seq: u32,
}

/// First byte of a handed-off frame's source MAC: group and local bits set.
pub const HANDOFF_MARK: u8 = 0xfb;

impl Handoff {
    /// The source MAC that names slot `index` in its use `seq`.
    #[inline(always)]
    pub fn mark(index: u32, seq: u32) -> [u8; 6] {
        let ([_, _, i1, i0], [_, s2, s1, s0]) = (index.to_be_bytes(), seq.to_be_bytes());
        [HANDOFF_MARK, i1, i0, s2, s1, s0]
    }

    /// The slot index and use a source MAC names, if it is a hand-off's.
    #[inline(always)]
    pub fn marked(mac: [u8; 6]) -> Option<(u32, u32)> {
        let [mark, i1, i0, s2, s1, s0] = mac;
        (mark == HANDOFF_MARK).then(|| (u32::from_be_bytes([0, 0, i1, i0]), u32::from_be_bytes([0, s2, s1, s0])))
    }
}
/// `HANDOFF` slots per CPU, used in turn: more than the frames XDP can run ahead of TC
/// on one CPU (a NAPI poll's budget of 64).
pub const HANDOFF_SLOTS_PER_CPU: u32 = 256;
/// CPUs the slot index (2 bytes: CPU and slot) can name.
pub const HANDOFF_MAX_CPUS: u32 = 256;

/// The flow hash, shared so user space and tests can predict the kernel's choices.
///
/// A seeded murmur3-style mix of 32-bit words: cheap in BPF (no loops over bytes) and
/// identical on every node given the same seed.
#[inline(always)]
pub fn hash_words(words: &[u32], seed: u32) -> u32 {
    let mut h = seed ^ 0x9e37_79b9;
    let mut i = 0;
    while i < words.len() {
        let mut k = words[i].wrapping_mul(0xcc9e_2d51);
        k = k.rotate_left(15).wrapping_mul(0x1b87_3593);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
        i += 1;
    }
    h ^= (words.len() as u32) * 4;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of a flow as the kernel computes it for `Method::Maglev`.
#[inline(always)]
pub fn flow_hash(client: &Addr, client_port: u16, vip: &Addr, vip_port: u16, proto: u8, seed: u32) -> u32 {
    let words = [
        client[0],
        client[1],
        client[2],
        client[3],
        vip[0],
        vip[1],
        vip[2],
        vip[3],
        ((client_port as u32) << 16) | vip_port as u32,
        proto as u32,
    ];
    hash_words(&words, seed)
}

/// Hash of a client address as the kernel computes it for `Method::SourceHash`.
#[inline(always)]
pub fn source_hash(client: &Addr, seed: u32) -> u32 {
    hash_words(client, seed)
}

/// Addresses as user space writes and reads them in keys.
#[cfg(feature = "user")]
mod addr {
    use core::net::IpAddr;

    use super::*;

    /// An address as the kernel keys it: network-order words, IPv4 in word 0.
    pub fn addr_words(addr: IpAddr) -> (Addr, u8) {
        match addr {
            IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], AF_INET),
            IpAddr::V6(v6) => {
                let o = v6.octets();
                let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                ([w(0), w(4), w(8), w(12)], AF_INET6)
            }
        }
    }

    /// The address kernel words of `family` hold.
    pub fn words_addr(w: &Addr, family: u8) -> IpAddr {
        if family == AF_INET {
            IpAddr::from(w[0].to_ne_bytes())
        } else {
            let mut o = [0u8; 16];
            for (i, word) in w.iter().enumerate() {
                o[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
            }
            IpAddr::from(o)
        }
    }

    impl ServiceKey {
        pub fn new(vip: IpAddr, port: u16, proto: u8) -> Self {
            let (addr, family) = addr_words(vip);
            ServiceKey { addr, port: port.to_be(), proto, family }
        }

        pub fn ip(&self) -> IpAddr {
            words_addr(&self.addr, self.family)
        }
    }
}
#[cfg(feature = "user")]
pub use addr::{addr_words, words_addr};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C), Copy, without padding, valid for any bit pattern.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for Mac {}
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for RevNat {}
    unsafe impl aya::Pod for ConnKey {}
    unsafe impl aya::Pod for Conn {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for SockRevKey {}
    unsafe impl aya::Pod for Handoff {}
}
