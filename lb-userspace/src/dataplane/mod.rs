//! The kernel side of xlb as user space holds it: the loaded programs, their
//! attachments, and the maps, written from the desired set of services.

pub mod features;
pub mod maglev;
pub mod pin;

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapInfo, MapType, PerCpuArray, PerCpuValues},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{self, SchedClassifierLink, SchedClassifierLinkId},
        xdp::{XdpLink, XdpLinkId},
    },
};
use lb_common::{
    Backend as KBackend, BackendState as KState, Conn, ConnKey, Counters, DropReason, RevNat, Service as KService, ServiceKey, Settings, addr_words, names,
    words_addr,
};
use tracing::{debug, info, warn};

use crate::{
    config::{self, BackendState},
    plan::{Desired, DesiredBackend},
};
use maglev::Entry;
use pin::Scope;

/// The kernel object built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// The maps a kept data plane keeps: all the programs read, write or count into. The
/// kernel log's ring buffer and the programs' constants are made anew by each run.
const KEPT_MAPS: [&str; 11] = [
    names::SERVICES,
    names::BACKENDS,
    names::REV_NAT,
    names::TABLES,
    names::CONNTRACK,
    names::SETTINGS,
    names::TX_PORTS,
    names::RR,
    names::SERVICE_STATS,
    names::BACKEND_STATS,
    names::DROPS,
];
const PROGRAMS: [&str; 3] = [names::PROG_XDP, names::PROG_FWD, names::PROG_REPLY];

/// How long connection entries live without a packet, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub tcp: u64,
    /// A TCP flow's, after its FIN or RST.
    pub tcp_closed: u64,
    pub udp: u64,
}

impl From<&config::Dataplane> for Timeouts {
    fn from(d: &config::Dataplane) -> Self {
        let ns = |d: std::time::Duration| d.as_nanos() as u64;
        Self { tcp: ns(d.tcp_idle_timeout), tcp_closed: ns(d.tcp_closed_timeout), udp: ns(d.udp_idle_timeout) }
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
    fn map_sizes(&self) -> anyhow::Result<[(&'static str, u32); 6]> {
        let tables = self.tables_len()?;
        Ok([
            (names::CONNTRACK, self.conntrack_size),
            (names::SERVICES, self.max_services),
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

/// A backend id is owned by one (service, address, port): its state is per service.
type BackendIdent = (ServiceKey, IpAddr, u16);

struct ServiceSlot {
    id: u32,
    table: u32,
    backends: Vec<(u32, DesiredBackend)>,
    table_ids: Vec<u32>,
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
    backend_ids: HashMap<BackendIdent, u32>,
    /// Ids of removed backends, freed once no connection entry names them.
    retired: BTreeSet<u32>,
    free_backend_ids: Vec<u32>,
    free_service_ids: Vec<u32>,
    free_tables: Vec<u32>,
    tables: Tables,
    /// Live flows per backend id, from the last `expire` pass.
    active: HashMap<u32, u64>,
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
        let mut ebpf = loader.override_global(aya_log::LEVEL, &level, true).load(OBJECT).context("loading the kernel programs")?;
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
            backend_ids: HashMap::new(),
            retired: BTreeSet::new(),
            free_backend_ids: (0..lb_common::MAX_BACKENDS).rev().collect(),
            free_service_ids: (0..limits.max_services).rev().collect(),
            free_tables: (0..=limits.max_services).rev().collect(),
            tables,
            active: HashMap::new(),
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
        let services: BpfHashMap<_, ServiceKey, KService> = map(&mut self.ebpf, names::SERVICES)?;
        let services = services.iter().collect::<Result<Vec<_>, _>>()?;
        let mut owner = HashMap::new();
        for (key, s) in services {
            if s.id >= self.limits.max_services || s.table > self.limits.max_services || s.len > size {
                bail!("service entry {s:?} does not fit the data plane's sizes");
            }
            let table_ids = self.tables.read(s.table as usize * size as usize, s.len as usize);
            for id in &table_ids {
                owner.insert(*id, key);
            }
            self.services.insert(key, ServiceSlot { id: s.id, table: s.table, backends: Vec::new(), table_ids });
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
                    self.retired.insert(id);
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
        Ok(())
    }

    /// What the maps hold right now: services, backend ids in use, connection entries.
    pub fn adopted(&mut self) -> anyhow::Result<Adopted> {
        let ct: BpfHashMap<_, ConnKey, Conn> = map(&mut self.ebpf, names::CONNTRACK)?;
        let connections = ct.keys().filter(Result::is_ok).count();
        Ok(Adopted { services: self.services.len(), backends: self.backend_ids.len() + self.unclaimed.len(), connections })
    }

    /// Interfaces a kept data plane had the reply program on.
    pub fn kept_reply_ifaces(&self) -> Vec<String> {
        let mut out: Vec<String> = self.kept_links.keys().filter(|(p, _)| p == names::PROG_REPLY).map(|(_, i)| i.clone()).collect();
        out.sort();
        out
    }

    /// Ends an adoption: the links not taken over are let go, and the pins removed (this
    /// process holds the descriptors now; the next keep pins again).
    pub fn finish_adoption(&mut self, scope: &Scope) -> anyhow::Result<()> {
        for ((program, iface), _) in self.kept_links.drain() {
            warn!(program, %iface, "a kept attachment is no longer needed: detaching it");
        }
        scope.remove().map(drop)
    }

    /// Pins the maps, the programs and their attachments under `scope` and lets go of
    /// the attachments: once this process exits, the kernel keeps forwarding with what
    /// it has until the next `xlb run` adopts it. Returns how many links were pinned.
    pub fn keep(&mut self, scope: &Scope) -> anyhow::Result<usize> {
        for name in KEPT_MAPS {
            let m = self.ebpf.map(name).with_context(|| format!("map {name} missing"))?;
            let path = scope.map(name);
            m.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
        }
        for name in PROGRAMS {
            let prog = self.ebpf.program_mut(name).with_context(|| format!("program {name} missing"))?;
            let path = scope.program(name);
            prog.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
        }
        let attachments = std::mem::take(&mut self.attachments);
        let count = attachments.len();
        for a in attachments {
            let path = scope.link(a.program, &a.iface);
            let link: FdLink = match a.link {
                LinkId::Xdp(id) => program::<Xdp>(&mut self.ebpf, a.program)?.take_link(id)?.try_into(),
                LinkId::Tc(id) => program::<SchedClassifier>(&mut self.ebpf, a.program)?.take_link(id)?.try_into(),
            }
            .with_context(|| format!("{} on {} is not a BPF link (kernel too old to keep it)", a.program, a.iface))?;
            link.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
        }
        Ok(count)
    }

    /// Attaches the XDP program (native mode, else generic) and the TC program that
    /// finishes its stack-bound packets to the interface clients reach.
    pub fn attach_client_side(&mut self, iface: &str) -> anyhow::Result<()> {
        if let Some(kept) = self.kept_link(names::PROG_XDP, iface) {
            let xdp: &mut Xdp = program(&mut self.ebpf, names::PROG_XDP)?;
            match XdpLink::try_from(kept).map_err(anyhow::Error::from).and_then(|l| Ok(xdp.attach_to_link(l)?)) {
                Ok(id) => {
                    info!(%iface, program = names::PROG_XDP, "took over the kept attachment (program replaced in place)");
                    self.attachments.push(Attachment { program: names::PROG_XDP, iface: iface.to_owned(), link: LinkId::Xdp(id) });
                    return self.attach_tc(names::PROG_FWD, iface);
                }
                Err(e) => {
                    warn!(%iface, error = %e, "the kept XDP attachment is unusable: attaching anew")
                }
            }
        }
        let xdp: &mut Xdp = program(&mut self.ebpf, names::PROG_XDP)?;
        let (id, mode) = match xdp.attach(iface, XdpMode::Driver) {
            Ok(id) => (id, "native"),
            Err(e) if is_busy(&e) => {
                bail!("{iface} already has an XDP program (is another xlb running? `ip link show {iface}`)")
            }
            Err(e) => {
                warn!(%iface, error = %e, "native XDP unavailable, using generic XDP");
                (xdp.attach(iface, XdpMode::Skb).with_context(|| format!("attaching XDP to {iface}"))?, "generic")
            }
        };
        info!(%iface, program = names::PROG_XDP, mode, "attached");
        self.attachments.push(Attachment { program: names::PROG_XDP, iface: iface.to_owned(), link: LinkId::Xdp(id) });
        self.attach_tc(names::PROG_FWD, iface)
    }

    /// Attaches the reply program to an interface that faces backends.
    pub fn attach_backend_side(&mut self, iface: &str) -> anyhow::Result<()> {
        self.attach_tc(names::PROG_REPLY, iface)
    }

    fn attach_tc(&mut self, name: &'static str, iface: &str) -> anyhow::Result<()> {
        if let Some(kept) = self.kept_link(name, iface) {
            let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
            match SchedClassifierLink::try_from(kept).map_err(anyhow::Error::from).and_then(|l| Ok(prog.attach_to_link(l)?)) {
                Ok(id) => {
                    info!(%iface, program = name, "took over the kept attachment (program replaced in place)");
                    self.attachments.push(Attachment { program: name, iface: iface.to_owned(), link: LinkId::Tc(id) });
                    return Ok(());
                }
                Err(e) => {
                    warn!(%iface, program = name, error = %e, "the kept TC attachment is unusable: attaching anew")
                }
            }
        }
        // Kernels before 6.6 attach through a clsact qdisc; later ones use TCX links.
        if let Err(e) = tc::qdisc_add_clsact(iface) {
            debug!(%iface, error = %e, "clsact qdisc not added (exists, or TCX is used)");
        }
        let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
        let id = prog.attach(iface, TcAttachType::Ingress).with_context(|| format!("attaching {name} to {iface}"))?;
        info!(%iface, program = name, "attached");
        self.attachments.push(Attachment { program: name, iface: iface.to_owned(), link: LinkId::Tc(id) });
        Ok(())
    }

    /// The kept link of `program` on `iface`, if a kept data plane had one. Taking it
    /// over (`attach_to_link`) swaps the program in one `BPF_LINK_UPDATE`: packets see
    /// the old program or the new one, never none.
    fn kept_link(&mut self, program: &str, iface: &str) -> Option<FdLink> {
        self.kept_links.remove(&(program.to_owned(), iface.to_owned())).map(FdLink::from)
    }

    /// The XDP program, for `BPF_PROG_TEST_RUN`.
    pub fn xdp(&mut self) -> anyhow::Result<&mut Xdp> {
        program(&mut self.ebpf, names::PROG_XDP)
    }

    /// Makes the maps match `desired`. Order matters for packets in flight: new
    /// backends are written before any table names them, a table is complete before
    /// its service points at it, and removed backends are marked last.
    pub fn sync(&mut self, desired: &[Desired]) -> anyhow::Result<()> {
        let wanted: HashMap<ServiceKey, &Desired> = desired.iter().map(|d| (d.key, d)).collect();
        if wanted.len() > self.limits.max_services as usize {
            bail!("{} services configured, the data plane was sized for {} (dataplane.max_services)", wanted.len(), self.limits.max_services);
        }
        let mut removed = Vec::new();
        for d in desired {
            removed.extend(self.sync_service(d)?);
        }
        let gone: Vec<ServiceKey> = self.services.keys().filter(|k| !wanted.contains_key(k)).copied().collect();
        for key in gone {
            let slot = self.services.remove(&key).expect("listed above");
            let mut services: BpfHashMap<_, ServiceKey, KService> = map(&mut self.ebpf, names::SERVICES)?;
            services.remove(&key).context("removing a service")?;
            self.free_tables.push(slot.table);
            self.free_service_ids.push(slot.id);
            removed.extend(slot.backends.iter().map(|(id, b)| (*id, (key, b.addr, b.port))));
        }
        let mut backends: Array<_, KBackend> = map(&mut self.ebpf, names::BACKENDS)?;
        for (id, ident) in removed {
            let mut b = backends.get(&id, 0)?;
            b.state = KState::Removed as u8;
            backends.set(id, b, 0)?;
            self.backend_ids.remove(&ident);
            self.retired.insert(id);
        }
        // A kept data plane's backends that no service claimed are gone.
        for (id, _) in self.unclaimed.drain() {
            let mut b = backends.get(&id, 0)?;
            b.state = KState::Removed as u8;
            backends.set(id, b, 0)?;
            self.retired.insert(id);
        }
        Ok(())
    }

    /// Updates one service; returns the backends it no longer has.
    fn sync_service(&mut self, d: &Desired) -> anyhow::Result<Vec<(u32, BackendIdent)>> {
        let mut backends = Vec::with_capacity(d.backends.len());
        // Draining marks wait until the service points at a table that no longer names them.
        let mut drain_later = Vec::new();
        for b in &d.backends {
            let ident = (d.key, b.addr, b.port);
            let id = match self.backend_ids.get(&ident).copied().or_else(|| self.claim(b.addr, b.port)) {
                Some(id) => {
                    self.backend_ids.insert(ident, id);
                    id
                }
                None => {
                    let id = self.free_backend_ids.pop().context("out of backend ids")?;
                    self.backend_ids.insert(ident, id);
                    self.zero(names::BACKEND_STATS, id)?;
                    id
                }
            };
            let state = match b.state {
                BackendState::Active => KState::Active,
                BackendState::Draining => KState::Draining,
            };
            let (addr, family) = addr_words(b.addr);
            let entry = KBackend { addr, port: b.port.to_be(), family, state: state as u8 };
            if b.state == BackendState::Draining {
                drain_later.push((id, entry));
            } else {
                let mut map: Array<_, KBackend> = map(&mut self.ebpf, names::BACKENDS)?;
                map.set(id, entry, 0)?;
            }
            backends.push((id, *b));
        }

        let active: Vec<(u32, Entry)> = backends
            .iter()
            .filter(|(_, b)| b.state == BackendState::Active)
            .map(|(id, b)| {
                let (a, _) = addr_words(b.addr);
                (*id, Entry { identity: [a[0], a[1], a[2], a[3], b.port as u32], weight: b.weight })
            })
            .collect();
        let entries: Vec<Entry> = active.iter().map(|(_, e)| *e).collect();
        let size = self.limits.table_size;
        let picks = match d.method {
            config::Method::Maglev | config::Method::SourceHash => maglev::maglev(&entries, size, self.limits.hash_seed),
            config::Method::RoundRobin | config::Method::Random => maglev::round_robin(&entries, size),
        };
        let table_ids: Vec<u32> = picks.iter().map(|&i| active[i as usize].0).collect();

        let (id, old_table, old_ids, old_backends) = match self.services.get(&d.key) {
            Some(s) => (s.id, Some(s.table), s.table_ids.clone(), s.backends.clone()),
            None => {
                let id = self.free_service_ids.pop().context("out of service ids")?;
                self.zero(names::SERVICE_STATS, id)?;
                let mut rr: Array<_, u64> = map(&mut self.ebpf, names::RR)?;
                rr.set(id, 0, 0)?;
                (id, None, Vec::new(), Vec::new())
            }
        };
        let method = lb_common::Method::from(d.method) as u8;
        let mut entry = KService { id, table: old_table.unwrap_or(0), len: table_ids.len() as u32, method, _pad: [0; 3] };
        if old_table.is_none() || table_ids != old_ids {
            let slot = self.free_tables.pop().context("no spare selection table")?;
            self.tables.write(slot as usize * size as usize, &table_ids);
            entry.table = slot;
            if let Some(old) = old_table {
                self.free_tables.push(old);
            }
        }
        let mut rev: Array<_, RevNat> = map(&mut self.ebpf, names::REV_NAT)?;
        rev.set(id, RevNat { addr: d.key.addr, port: d.key.port, family: d.key.family, _pad: 0 }, 0)?;
        let mut services: BpfHashMap<_, ServiceKey, KService> = map(&mut self.ebpf, names::SERVICES)?;
        services.insert(d.key, entry, 0).context("writing a service")?;
        if !drain_later.is_empty() {
            let mut map: Array<_, KBackend> = map(&mut self.ebpf, names::BACKENDS)?;
            for (id, e) in drain_later {
                map.set(id, e, 0)?;
            }
        }

        let kept: BTreeSet<u32> = backends.iter().map(|(id, _)| *id).collect();
        let removed = old_backends.iter().filter(|(id, _)| !kept.contains(id)).map(|(id, b)| (*id, (d.key, b.addr, b.port))).collect();
        self.services.insert(d.key, ServiceSlot { id, table: entry.table, backends, table_ids });
        Ok(removed)
    }

    /// Takes the id a kept data plane gave this backend, if it is still unclaimed.
    fn claim(&mut self, addr: IpAddr, port: u16) -> Option<u32> {
        let id = self.unclaimed.iter().find(|(_, a)| **a == (addr, port)).map(|(id, _)| *id)?;
        self.unclaimed.remove(&id);
        Some(id)
    }

    /// Clears a reused id's per-CPU counters: a new backend or service starts at zero.
    fn zero(&mut self, name: &str, id: u32) -> anyhow::Result<()> {
        let mut stats: PerCpuArray<_, Counters> = map(&mut self.ebpf, name)?;
        stats.set(id, PerCpuValues::try_from(vec![Counters::default(); nr_cpus()?])?, 0)?;
        Ok(())
    }

    /// Deletes connection entries idle longer than their timeout, and frees the ids of
    /// removed backends no entry names any more. Returns how many expired.
    pub fn expire(&mut self, now_ns: u64, t: &Timeouts) -> anyhow::Result<usize> {
        // aya's HashMap also opens LRU hash maps.
        let mut ct: BpfHashMap<_, ConnKey, Conn> = map(&mut self.ebpf, names::CONNTRACK)?;
        let mut idle = Vec::new();
        let mut referenced = BTreeSet::new();
        self.active.clear();
        for item in ct.iter() {
            let Ok((k, v)) = item else { continue };
            let limit = match k.proto {
                lb_common::IPPROTO_TCP if v.flags & Conn::F_CLOSED != 0 => t.tcp_closed.min(t.tcp),
                lb_common::IPPROTO_TCP => t.tcp,
                _ => t.udp,
            };
            if now_ns.saturating_sub(v.last_seen) > limit {
                idle.push(k);
            } else {
                referenced.insert(v.backend);
                if k.kind == lb_common::ConnKind::Service as u8 {
                    *self.active.entry(v.backend).or_default() += 1;
                }
            }
        }
        for k in &idle {
            // Already gone (evicted) is fine.
            let _ = ct.remove(k);
        }
        let freeable: Vec<u32> = self.retired.iter().filter(|id| !referenced.contains(id)).copied().collect();
        let mut backends: Array<_, KBackend> = map(&mut self.ebpf, names::BACKENDS)?;
        for id in freeable {
            backends.set(id, KBackend::default(), 0)?;
            self.retired.remove(&id);
            self.free_backend_ids.push(id);
        }
        Ok(idle.len())
    }

    /// Per-CPU counters summed, per service, per backend and per drop reason, with each
    /// backend's live connections as the last `expire` pass counted them (walking the
    /// connection table costs a syscall an entry, so it is done once for both).
    pub fn counters(&mut self) -> anyhow::Result<Stats> {
        let sum = |v: aya::maps::PerCpuValues<Counters>| {
            v.iter().fold(Counters::default(), |a, c| Counters {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
                new_flows: a.new_flows + c.new_flows,
            })
        };
        let svc: PerCpuArray<_, Counters> = map(&mut self.ebpf, names::SERVICE_STATS)?;
        let services = self.services.iter().map(|(k, s)| Ok((*k, sum(svc.get(&s.id, 0)?)))).collect::<anyhow::Result<_>>()?;
        let be: PerCpuArray<_, Counters> = map(&mut self.ebpf, names::BACKEND_STATS)?;
        let backends = self
            .services
            .iter()
            .flat_map(|(key, s)| s.backends.iter().map(move |(id, b)| (key, id, b)))
            .map(|(key, id, b)| {
                Ok(BackendStats { service: *key, addr: b.addr, port: b.port, counters: sum(be.get(id, 0)?), active: self.active.get(id).copied().unwrap_or(0) })
            })
            .collect::<anyhow::Result<_>>()?;
        let drops_map: PerCpuArray<_, u64> = map(&mut self.ebpf, names::DROPS)?;
        let drops = DropReason::ALL.iter().map(|r| Ok((r.name(), drops_map.get(&(*r as u32), 0)?.iter().sum()))).collect::<anyhow::Result<_>>()?;
        Ok(Stats { services, backends, drops })
    }
}

pub struct Stats {
    pub services: Vec<(ServiceKey, Counters)>,
    pub backends: Vec<BackendStats>,
    pub drops: Vec<(&'static str, u64)>,
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

/// The `TABLES` array mapped into our memory (it is created `BPF_F_MMAPABLE`). The
/// kernel lays array elements out 8 bytes apart: each `u32` id starts an 8-byte slot.
struct Tables {
    ptr: std::ptr::NonNull<u32>,
    len: usize,
    bytes: usize,
}

impl Tables {
    fn map(ebpf: &Ebpf, len: u32) -> anyhow::Result<Self> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let Some(aya::maps::Map::Array(data)) = ebpf.map(names::TABLES) else { bail!("map {} missing or not an array", names::TABLES) };
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let bytes = (len as usize * 8).next_multiple_of(page);
        // SAFETY: a shared mapping of a BPF array of at least `bytes` (the kernel rounds
        // mmapable arrays up to whole pages); unmapped in Drop.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), bytes, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, data.fd().as_fd().as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mapping the selection tables");
        }
        let ptr = std::ptr::NonNull::new(ptr.cast()).context("mmap returned null")?;
        Ok(Self { ptr, len: len as usize, bytes })
    }

    /// Reads `len` ids from `start`.
    fn read(&self, start: usize, len: usize) -> Vec<u32> {
        assert!(start + len <= self.len, "table read past the TABLES array");
        // SAFETY: in bounds (checked above) of a live mapping we own.
        let words = unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(start * 2), len * 2) };
        words.chunks_exact(2).map(|element| element[0]).collect()
    }

    /// Writes `ids` from `start`. The caller makes the table live afterwards with a map
    /// update (a syscall, which orders these stores before it).
    fn write(&mut self, start: usize, ids: &[u32]) {
        assert!(start + ids.len() <= self.len, "table write past the TABLES array");
        // SAFETY: in bounds (checked above) of a live mapping we own.
        let words = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(start * 2), ids.len() * 2) };
        for (element, id) in words.chunks_exact_mut(2).zip(ids) {
            element[0] = *id;
        }
    }
}

impl Drop for Tables {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
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
