//! The kernel side of xlb as user space holds it: the loaded programs, their
//! attachments, and the maps, written from the desired set of services.

mod attach;
mod batch;
mod conntrack;
pub mod features;
pub mod maglev;
pub mod pin;
mod socket;
mod sync;
mod tables;

use tables::Tables;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapInfo, MapType},
    programs::{SchedClassifier, Xdp, cgroup_sock_addr::CgroupSockAddrLinkId, links::PinnedLink, tc::SchedClassifierLinkId, xdp::XdpLinkId},
};
use lb_common::{Backend as KBackend, BackendState as KState, Counters, Service as KService, ServiceKey, Settings, names, words_addr};

use crate::{
    config::{self, BackendState},
    plan::{Desired, DesiredBackend},
};
use pin::Scope;

/// The kernel object built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// The maps a kept data plane keeps: all the programs read, write or count into. The
/// kernel log's ring buffer and the programs' constants are made anew by each run.
const KEPT_MAPS: [&str; 18] = [
    names::SERVICES,
    names::BACKENDS,
    names::REV_NAT,
    names::TABLES,
    names::CONNTRACK,
    names::HALF_OPEN,
    names::CONN_CREATED,
    names::SETTINGS,
    names::TX_PORTS,
    names::VIPS,
    names::IF_MACS,
    names::RR,
    names::SERVICE_STATS,
    names::BACKEND_STATS,
    names::DROPS,
    names::SOCK_REV_NAT,
    names::SOCK_PEER,
    names::TUNNEL_SOURCES,
];
const PROGRAMS: [&str; 3] = [names::PROG_XDP, names::PROG_FWD, names::PROG_REPLY];

/// How long connection entries live, in nanoseconds: without a packet, and on a removed
/// backend.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub tcp: u64,
    /// A TCP flow's, after its FIN or RST.
    pub tcp_closed: u64,
    pub udp: u64,
    /// A flow's on a backend since its removal, whatever its packets.
    pub drain: u64,
}

impl From<&config::Dataplane> for Timeouts {
    fn from(d: &config::Dataplane) -> Self {
        let ns = |d: std::time::Duration| d.as_nanos() as u64;
        Self { tcp: ns(d.tcp_idle_timeout), tcp_closed: ns(d.tcp_closed_timeout), udp: ns(d.udp_idle_timeout), drain: ns(d.drain_timeout) }
    }
}

/// Sizes fixed when the programs are loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub conntrack_size: u32,
    pub table_size: u32,
    pub max_services: u32,
    pub hash_seed: u32,
}

impl Limits {
    /// Entries of `TABLES`: a table per service and a spare.
    fn tables_len(&self) -> anyhow::Result<u32> {
        (self.max_services + 1).checked_mul(self.table_size).filter(|n| *n <= 1 << 28).context("max_services x table_size is too large for one map")
    }

    /// The maps whose size the config sets, with that size.
    fn map_sizes(&self) -> anyhow::Result<[(&'static str, u32); 9]> {
        let tables = self.tables_len()?;
        let quarter = (self.conntrack_size / 4).max(1024);
        Ok([
            (names::CONNTRACK, self.conntrack_size),
            // Flows between SYN and the handshake's end: a quarter of the connection
            // table outlasts a SYN flood's churn for any handshake of a real client.
            (names::HALF_OPEN, quarter),
            // (unconnected UDP socket, backend) pairs of socket-level balancing, flows of
            // local callers: as many as half-open flows.
            (names::SOCK_REV_NAT, quarter),
            (names::SERVICES, self.max_services),
            (names::VIPS, self.max_services),
            (names::REV_NAT, self.max_services),
            (names::RR, self.max_services),
            (names::SERVICE_STATS, self.max_services),
            (names::TABLES, tables),
        ])
    }
}

impl From<&config::Dataplane> for Limits {
    fn from(d: &config::Dataplane) -> Self {
        Self { conntrack_size: d.conntrack_size.0, table_size: d.table_size.0, max_services: d.max_services.0, hash_seed: d.hash_seed }
    }
}

/// A flow whose entries an expiry pass removed (for the access log: `record_ended`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub client: SocketAddr,
    /// The VIP and port, from the flow's forward entry (none if the LRU took it).
    pub service: Option<SocketAddr>,
    /// The backend, from the flow's reply entry (likewise).
    pub backend: Option<SocketAddr>,
    pub proto: u8,
    /// A FIN or RST was seen.
    pub closed: bool,
    /// Cut because its backend's drain timeout passed.
    pub drained: bool,
    /// `bpf_ktime_get_ns` of its last packet.
    pub last_seen: u64,
}

/// A backend id is owned by one (service, address, port): its state is per service.
type BackendIdent = (ServiceKey, IpAddr, u16);

struct ServiceSlot {
    id: u32,
    table: u32,
    backends: Vec<(u32, DesiredBackend)>,
    /// Slots its table has in use (the ids are in `TABLES` only, not copied here).
    table_len: u32,
    /// What the last sync wrote for it; `None` for a service taken over from a kept plane.
    synced: Option<Desired>,
}

/// One attachment of one of our programs, so that it can be pinned on the way out.
struct Attachment {
    program: &'static str,
    iface: String,
    link: LinkId,
}

enum LinkId {
    Xdp(XdpLinkId),
    Tc(SchedClassifierLinkId),
    Sock(CgroupSockAddrLinkId),
}

/// What an adopted data plane held, for the log.
pub struct Adopted {
    pub services: usize,
    pub backends: usize,
    pub connections: usize,
}

pub struct Dataplane {
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
    /// Links of a kept data plane not yet taken over, by (program, interface).
    kept_links: HashMap<(String, String), PinnedLink>,
    /// Backend ids a kept data plane held outside any selection table (draining, as
    /// far as can be told), by address: the first sync gives each back to the service
    /// that still has that backend, and retires the rest.
    unclaimed: HashMap<u32, (IpAddr, u16)>,
    limits: Limits,
    services: HashMap<ServiceKey, ServiceSlot>,
    /// The addresses in `VIPS` (port and protocol 0), answered for ARP and NDP.
    vips: HashSet<ServiceKey>,
    backend_ids: HashMap<BackendIdent, u32>,
    /// Ids of removed backends, with when (monotonic ns), freed once no connection entry
    /// names them.
    retired: BTreeMap<u32, u64>,
    /// Ids of removed services, freed once no connection entry names them for rev-NAT.
    retired_services: BTreeSet<u32>,
    free_backend_ids: Vec<u32>,
    free_service_ids: Vec<u32>,
    free_tables: Vec<u32>,
    tables: Tables,
    /// Live flows per backend id, from the last `expire` pass.
    active: HashMap<u32, u64>,
    /// Where everything is pinned as it is attached (`keep_while_running`).
    pins: Option<Scope>,
    conns: Conns,
    /// Flows removed by expiry passes, kept for the access log once asked for.
    ended: Option<Vec<Ended>>,
    /// `dataplane.socket_lb` as the start applied it (fixed until a restart).
    socket_lb: config::SocketLb,
}

impl Dataplane {
    /// Loads the programs and creates the maps at the configured sizes.
    pub fn load(limits: Limits, kernel_log: aya_log::Level) -> anyhow::Result<(Self, aya_log::EbpfLogger<&'static dyn log::Log>)> {
        Self::open(limits, kernel_log, None)
    }

    /// Loads the programs onto the maps of the data plane kept in `scope` (after checking
    /// that their layout is the one these programs and `limits` expect) and takes over its
    /// ids. Its links are taken over as the programs are attached.
    pub fn adopt(limits: Limits, kernel_log: aya_log::Level, scope: &Scope) -> anyhow::Result<(Self, aya_log::EbpfLogger<&'static dyn log::Log>)> {
        Self::open(limits, kernel_log, Some(scope))
    }

    fn open(limits: Limits, kernel_log: aya_log::Level, kept: Option<&Scope>) -> anyhow::Result<(Self, aya_log::EbpfLogger<&'static dyn log::Log>)> {
        if limits.max_services == 0 || limits.table_size < 3 {
            bail!("max_services must be above 0 and table_size at least 3");
        }
        let sizes = limits.map_sizes()?;
        let tables = limits.tables_len()?;
        let level = kernel_log as u8;
        let mut loader = EbpfLoader::new();
        for (name, size) in sizes {
            loader.map_max_entries(name, size);
        }
        let mut kept_links = HashMap::new();
        if let Some(scope) = kept {
            check_layout(scope, &sizes)?;
            for name in KEPT_MAPS {
                loader.map_pin_path(name, scope.map(name));
            }
            for (program, iface, path) in scope.links()? {
                let link = PinnedLink::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
                kept_links.insert((program, iface), link);
            }
        }
        let metadata = u8::from(features::xdp_metadata()?);
        if metadata == 0 {
            tracing::debug!("this kernel refuses XDP metadata: XDP hands packets to TC through the HANDOFF map");
        }
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        loader.map_max_entries(names::HANDOFF, (cpus as u32).clamp(1, lb_common::HANDOFF_MAX_CPUS) * lb_common::HANDOFF_SLOTS_PER_CPU);
        let mut ebpf = loader
            .override_global(aya_log::LEVEL, &level, true)
            .override_global("XDP_METADATA", &metadata, true)
            .load(OBJECT)
            .context("loading the kernel programs")?;
        let logger = aya_log::EbpfLogger::init(&mut ebpf).context("opening the kernel log")?;
        let xdp: &mut Xdp = program(&mut ebpf, names::PROG_XDP)?;
        xdp.load().with_context(|| format!("verifying {}", names::PROG_XDP))?;
        for name in [names::PROG_FWD, names::PROG_REPLY] {
            let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
            prog.load().with_context(|| format!("verifying {name}"))?;
        }
        let mut settings: Array<_, Settings> = map(&mut ebpf, names::SETTINGS)?;
        settings.set(0, Settings { table_size: limits.table_size, hash_seed: limits.hash_seed }, 0)?;
        let tables = Tables::map(&ebpf, tables)?;
        let mut dp = Self {
            ebpf,
            attachments: Vec::new(),
            kept_links,
            unclaimed: HashMap::new(),
            limits,
            services: HashMap::new(),
            vips: HashSet::new(),
            backend_ids: HashMap::new(),
            retired: BTreeMap::new(),
            retired_services: BTreeSet::new(),
            free_backend_ids: (0..lb_common::MAX_BACKENDS).rev().collect(),
            free_service_ids: (0..limits.max_services).rev().collect(),
            free_tables: (0..=limits.max_services).rev().collect(),
            tables,
            active: HashMap::new(),
            pins: None,
            conns: Conns::default(),
            ended: None,
            socket_lb: config::SocketLb::default(),
        };
        if kept.is_some() {
            dp.take_over_ids().context("reading the kept data plane's maps")?;
        }
        Ok((dp, logger))
    }

    /// Rebuilds the id allocation from the maps of a kept data plane, so the entries of
    /// its connection table (which name backend ids and rev-NAT indexes) stay valid.
    /// A service keeps its id and table; a backend in a service's table stays that
    /// service's; other live backends wait in `unclaimed` for the first sync.
    fn take_over_ids(&mut self) -> anyhow::Result<()> {
        let size = self.limits.table_size;
        let vips: BpfHashMap<_, ServiceKey, u32> = map(&mut self.ebpf, names::VIPS)?;
        self.vips = vips.keys().collect::<Result<_, _>>()?;
        let services: BpfHashMap<_, ServiceKey, KService> = map(&mut self.ebpf, names::SERVICES)?;
        let services = services.iter().collect::<Result<Vec<_>, _>>()?;
        let mut owner = HashMap::new();
        for (key, s) in services {
            if s.id >= self.limits.max_services || s.table > self.limits.max_services || s.len > size {
                bail!("service entry {s:?} does not fit the data plane's sizes");
            }
            for id in self.tables.read(s.table as usize * size as usize, s.len as usize)? {
                owner.insert(id, key);
            }
            self.services.insert(key, ServiceSlot { id: s.id, table: s.table, backends: Vec::new(), table_len: s.len, synced: None });
        }
        let backends: Array<_, KBackend> = map(&mut self.ebpf, names::BACKENDS)?;
        let mut free = Vec::new();
        for id in 0..lb_common::MAX_BACKENDS {
            let b = backends.get(&id, 0)?;
            let addr = words_addr(&b.addr, b.family);
            let port = u16::from_be(b.port);
            match b.state {
                s if s == KState::Empty as u8 => free.push(id),
                s if s == KState::Removed as u8 => {
                    self.retired.insert(id, monotonic_ns());
                }
                s => {
                    let state = if s == KState::Active as u8 { BackendState::Active } else { BackendState::Draining };
                    let slot = owner.get(&id).and_then(|key| Some((*key, self.services.get_mut(key)?)));
                    match slot {
                        Some((key, slot)) if !self.backend_ids.contains_key(&(key, addr, port)) => {
                            self.backend_ids.insert((key, addr, port), id);
                            slot.backends.push((id, DesiredBackend { addr, port, weight: 0, state }));
                        }
                        _ => {
                            self.unclaimed.insert(id, (addr, port));
                        }
                    }
                }
            }
        }
        self.free_backend_ids = free.into_iter().rev().collect();
        let used_ids: BTreeSet<u32> = self.services.values().map(|s| s.id).collect();
        let used_tables: BTreeSet<u32> = self.services.values().map(|s| s.table).collect();
        self.free_service_ids.retain(|id| !used_ids.contains(id));
        self.free_tables.retain(|t| !used_tables.contains(t));
        // What the kept plane's entries count so far is not this run's to call evictions;
        // the ids its flows name for rev-NAT wait, as after a removal, if no service has them.
        let entries = self.conntrack_entries()?;
        let live = entries.len() as u64;
        for (_, conn) in entries {
            if !used_ids.contains(&conn.rev_nat) {
                self.retired_services.insert(conn.rev_nat);
            }
        }
        self.free_service_ids.retain(|id| !self.retired_services.contains(id));
        self.conns.live = live;
        self.conns.removed = self.created()?.saturating_sub(live);
        Ok(())
    }

    /// What the kept data plane held when it was adopted: services, backend ids, connection entries.
    pub fn adopted(&self) -> anyhow::Result<Adopted> {
        Ok(Adopted { services: self.services.len(), backends: self.backend_ids.len() + self.unclaimed.len(), connections: self.conns.live as usize })
    }
}

/// Refuses a kept data plane whose maps differ from what these programs and this config
/// would create (type, key and value sizes, flags, entries): adopting it would make the
/// programs misread every entry. Sizes are checked against the config, so a resized
/// connection table or selection table is refused too.
fn check_layout(scope: &Scope, sizes: &[(&str, u32)]) -> anyhow::Result<()> {
    let object = aya_obj::Object::parse(OBJECT).context("parsing the kernel object")?;
    let mut problems = Vec::new();
    for name in KEPT_MAPS {
        let def = object.maps.get(name).with_context(|| format!("map {name} missing from the object"))?;
        let max = sizes.iter().find(|(n, _)| *n == name).map_or(def.max_entries(), |(_, m)| *m);
        let info = match MapInfo::from_pin(scope.map(name)) {
            Ok(i) => i,
            Err(e) => {
                problems.push(format!("{name}: not kept ({e})"));
                continue;
            }
        };
        let kind = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
        // aya picks a device map's value size from what the kernel supports, and the
        // kernel adds flags of its own (read-only to programs).
        let devmap = [MapType::DevMap as u32, MapType::DevMapHash as u32].contains(&kind);
        let want = (def.map_type(), def.key_size(), (!devmap).then(|| (def.value_size(), def.map_flags())), max);
        let got = (kind, info.key_size(), (!devmap).then(|| (info.value_size(), info.map_flags())), info.max_entries());
        if want != got {
            problems.push(format!("{name}: kept (type, key size, (value size, flags), entries) {got:?}, this xlb needs {want:?}"));
        }
    }
    if !problems.is_empty() {
        bail!(
            "the data plane kept in {} does not fit this xlb and config:\n  {}\n\
             Nothing was changed. Start it with the config it was kept with, or remove it with \
             `xlb down` (this drops the connections it tracks)",
            scope.dir().display(),
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// Possible CPUs: the length of every per-CPU map value.
fn nr_cpus() -> anyhow::Result<usize> {
    aya::util::nr_cpus().map_err(|(path, e)| anyhow::anyhow!("reading {path}: {e}"))
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf.program_mut(name).with_context(|| format!("program {name} missing from the object"))?;
    prog.try_into().with_context(|| format!("program {name} has an unexpected type"))
}

fn map<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let m = ebpf.map_mut(name).with_context(|| format!("map {name} missing from the object"))?;
    T::try_from(m).with_context(|| format!("map {name} has an unexpected type"))
}

fn is_busy(e: &aya::programs::ProgramError) -> bool {
    let text = format!("{e:?}");
    text.contains("EBUSY") || text.contains("Device or resource busy") || text.contains("AlreadyAttached")
}

/// The connection table's accounting across expiry passes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Conns {
    /// Entries after the last pass.
    pub live: u64,
    /// Entries expired by user space (and, for an adopted data plane, all that were gone
    /// before it was adopted).
    pub removed: u64,
    /// Entries the LRU pushed out to make room: created - removed - live, never falling.
    pub evicted: u64,
    /// Entries the kernel added to the half-open table (two a SYN that opened a flow);
    /// a SYN flood shows here, not in `evicted`.
    pub half_open: u64,
}

pub struct Stats {
    pub services: Vec<(ServiceKey, Counters)>,
    pub backends: Vec<BackendStats>,
    pub drops: Vec<(&'static str, u64)>,
    pub conns: Conns,
}

pub struct BackendStats {
    pub service: ServiceKey,
    pub addr: IpAddr,
    pub port: u16,
    pub counters: Counters,
    /// Flows pinned to it in the connection table.
    pub active: u64,
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
