//! The maps shared with user space. Sizes here are defaults: user space resizes the
//! connection table and the selection tables from its config before loading.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    Backend, Conn, ConnKey, Counters, DEFAULT_CONNTRACK_SIZE, DEFAULT_HALF_OPEN_SIZE, DEFAULT_MAX_SERVICES,
    DEFAULT_TABLE_SIZE, DropReason, HANDOFF_MAX_CPUS, HANDOFF_SLOTS_PER_CPU, Handoff, MAX_BACKENDS, Mac, RevNat, SOCK_REV_NAT_SIZE, Service, ServiceKey, Settings,
    SockRevKey,
};

#[map]
pub static SERVICES: HashMap<ServiceKey, Service> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);

#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

#[map]
pub static REV_NAT: Array<RevNat> = Array::with_max_entries(DEFAULT_MAX_SERVICES, 0);

/// Selection tables, `table_size` backend ids each, one spare so a rebuild can be
/// written beside the live table and then swapped in. Mmapable: user space writes a
/// table as memory, not one syscall per slot.
#[map]
pub static TABLES: Array<u32> =
    Array::with_max_entries((DEFAULT_MAX_SERVICES + 1) * DEFAULT_TABLE_SIZE, BPF_F_MMAPABLE);

/// What socket-level balancing connected a socket to, for its recvmsg() and getpeername()
/// to show the VIP instead (`sock`). An LRU: nothing tells the map a socket closed.
#[map]
pub static SOCK_REV_NAT: LruHashMap<SockRevKey, RevNat> = LruHashMap::with_max_entries(SOCK_REV_NAT_SIZE, 0);

#[map]
pub static CONNTRACK: LruHashMap<ConnKey, Conn> = LruHashMap::with_max_entries(DEFAULT_CONNTRACK_SIZE, 0);

/// Flows whose handshake is not complete (see `conntrack`): a table of their own, so
/// that SYNs never evict established flows from `CONNTRACK`.
#[map]
pub static HALF_OPEN: LruHashMap<ConnKey, Conn> = LruHashMap::with_max_entries(DEFAULT_HALF_OPEN_SIZE, 0);

/// Entries the kernel added, per CPU: to `CONNTRACK` and to `HALF_OPEN`.
#[map]
pub static CONN_CREATED: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);
pub const CREATED_ESTABLISHED: u32 = lb_common::CONN_CREATED_ESTABLISHED;
pub const CREATED_HALF_OPEN: u32 = lb_common::CONN_CREATED_HALF_OPEN;

#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Per backend id, the IPv4 source address (network order) of the outer header that
/// `tunnel` puts around packets to it: the address this host sends from towards it.
/// Written only for backends of `Service::F_TUNNEL` services.
#[map]
pub static TUNNEL_SOURCES: Array<u32> = Array::with_max_entries(MAX_BACKENDS, 0);

/// `FwdMeta`s handed from XDP to `xlb_fwd` where XDP metadata is refused (`handoff`),
/// `HANDOFF_SLOTS_PER_CPU` per CPU; user space sizes it to the machine's CPUs.
#[map]
pub static HANDOFF: Array<Handoff> = Array::with_max_entries(HANDOFF_MAX_CPUS * HANDOFF_SLOTS_PER_CPU, 0);

/// Per CPU, how many hand-offs it has made: its next slot and sequence number.
#[map]
pub static HANDOFF_NEXT: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Interfaces that accept XDP frames (`ndo_xdp_xmit`), keyed by ifindex. A packet for
/// any other interface goes through the stack, finished by `xlb_fwd`.
#[map]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(64, 0);

/// Round-robin position per service, one for the whole host: a per-CPU position would
/// let each CPU walk the sequence on its own, so sequential clients would not alternate.
/// The addresses services listen on (`ServiceKey` with port and protocol 0), answered for
/// ARP and NDP (see `neigh`).
#[map]
pub static VIPS: HashMap<ServiceKey, u32> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);

/// The MAC of each interface the XDP program is attached to, by ifindex.
#[map]
pub static IF_MACS: HashMap<u32, Mac> = HashMap::with_max_entries(64, 0);

#[map]
pub static RR: Array<u64> = Array::with_max_entries(DEFAULT_MAX_SERVICES, 0);

#[map]
pub static SERVICE_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(DEFAULT_MAX_SERVICES, 0);

#[map]
pub static BACKEND_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DropReason::COUNT, 0);

#[inline(always)]
pub fn count_drop(reason: DropReason) {
    if let Some(c) = DROPS.get_ptr_mut(reason as u32) {
        unsafe { *c += 1 };
    }
}

/// Counts a flow that opened without a packet through here (a socket-level choice).
#[inline(always)]
pub fn count_flow(map: &PerCpuArray<Counters>, index: u32) {
    if let Some(c) = map.get_ptr_mut(index) {
        unsafe { (*c).new_flows += 1 };
    }
}

#[inline(always)]
pub fn count(map: &PerCpuArray<Counters>, index: u32, bytes: u64, new_flow: bool) {
    if let Some(c) = map.get_ptr_mut(index) {
        let c = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += bytes;
        if new_flow {
            c.new_flows += 1;
        }
    }
}
