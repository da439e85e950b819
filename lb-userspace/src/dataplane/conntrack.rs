//! The connection table seen from user space: expiry of idle entries, and the counters
//! read with it.

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
};

use aya::maps::{Array, HashMap as BpfHashMap, PerCpuArray};
use lb_common::{Addr, Backend as KBackend, Conn, ConnKey, ConnKind, Counters, DropReason, names, words_addr};

use super::{BackendStats, Conns, Dataplane, Ended, Stats, Timeouts, batch, map};

/// What a flow's two entries share: the kernel writes both from one `Conn`.
type FlowId = (Addr, u16, u8, u8, u32, u32);

/// A flow's entries as one expiry pass found them: its service entry's key and its
/// backend entry's (by `ConnKind`), held in place: a table of 262,144 entries would
/// otherwise make as many small allocations, which malloc keeps after the pass.
#[derive(Default)]
struct Flow {
    keys: [Option<ConnKey>; 2],
    last_seen: u64,
    closed: bool,
}

impl Flow {
    /// Whether the forward (service) entry is among them: that one counts the flow.
    fn forward(&self) -> bool {
        self.keys[ConnKind::Service as usize].is_some()
    }
}

impl Ended {
    fn of(f: &Flow, drained: bool) -> Option<Self> {
        let k = f.keys.iter().flatten().next()?;
        let at = |addr: &Addr, port: u16| SocketAddr::new(words_addr(addr, k.family), u16::from_be(port));
        let peer = |kind: ConnKind| f.keys[kind as usize].as_ref().map(|k| at(&k.peer, k.peer_port));
        Some(Self {
            client: at(&k.client, k.client_port),
            service: peer(ConnKind::Service),
            backend: peer(ConnKind::Backend),
            proto: k.proto,
            closed: f.closed,
            drained,
            last_seen: f.last_seen,
        })
    }
}

impl Dataplane {
    /// Whether the expiry passes keep the flows they remove, for [`Self::take_ended`].
    pub fn record_ended(&mut self, yes: bool) {
        self.ended = yes.then(Vec::new);
    }

    /// The flows removed since the last call (none unless [`Self::record_ended`]).
    pub fn take_ended(&mut self) -> Vec<Ended> {
        self.ended.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Deletes flows idle longer than their timeout (both entries of a flow together, by
    /// the later of their two refreshes) and flows on a backend removed longer ago than
    /// the drain timeout (their next segment finds no entry: the stack resets it); frees
    /// the ids of removed backends and services no entry names any more, and counts what
    /// the LRU evicted. Returns how many entries expired.
    pub fn expire(&mut self, now_ns: u64, t: &Timeouts) -> anyhow::Result<usize> {
        // Read before the walk: an entry added during it makes `live` larger, so the
        // eviction count can lag, never run ahead.
        let created = self.created()?;
        let entries = self.conntrack_entries()?;
        // aya's HashMap also opens LRU hash maps.
        let mut ct: BpfHashMap<_, ConnKey, Conn> = map(&mut self.ebpf, names::CONNTRACK)?;
        let mut flows: HashMap<FlowId, Flow> = HashMap::new();
        let live = entries.len() as u64;
        for (k, v) in entries {
            let f = flows.entry((k.client, k.client_port, k.proto, k.family, v.backend, v.rev_nat)).or_default();
            f.keys[usize::from(k.kind == ConnKind::Backend as u8)] = Some(k);
            f.last_seen = f.last_seen.max(v.last_seen);
            f.closed |= v.flags & Conn::F_CLOSED != 0;
        }
        let mut idle = Vec::new();
        let (mut referenced, mut rev_nats) = (BTreeSet::new(), BTreeSet::new());
        self.active.clear();
        for ((_, _, proto, _, backend, rev_nat), f) in flows {
            let limit = match proto {
                lb_common::IPPROTO_TCP if f.closed => t.tcp_closed.min(t.tcp),
                lb_common::IPPROTO_TCP => t.tcp,
                _ => t.udp,
            };
            let drained = self.retired.get(&backend).is_some_and(|at| now_ns.saturating_sub(*at) > t.drain);
            if drained || now_ns.saturating_sub(f.last_seen) > limit {
                if let Some(ended) = &mut self.ended {
                    ended.extend(Ended::of(&f, drained));
                }
                idle.extend(f.keys.into_iter().flatten());
            } else {
                referenced.insert(backend);
                rev_nats.insert(rev_nat);
                if f.forward() {
                    *self.active.entry(backend).or_default() += 1;
                }
            }
        }
        // An entry already gone was evicted: it is counted as such, not as expired.
        let removed = idle.iter().filter(|k| ct.remove(k).is_ok()).count() as u64;
        self.conns.removed += removed;
        self.conns.live = live - removed;
        self.conns.evicted = self.conns.evicted.max(created.saturating_sub(self.conns.removed + self.conns.live));
        let freeable: Vec<u32> = self.retired.keys().filter(|id| !referenced.contains(id)).copied().collect();
        let mut backends: Array<_, KBackend> = map(&mut self.ebpf, names::BACKENDS)?;
        for id in freeable {
            backends.set(id, KBackend::default(), 0)?;
            self.retired.remove(&id);
            self.free_backend_ids.push(id);
        }
        let free: Vec<u32> = self.retired_services.iter().filter(|id| !rev_nats.contains(id)).copied().collect();
        for id in free {
            self.retired_services.remove(&id);
            self.free_service_ids.push(id);
        }
        Ok(removed as usize)
    }

    /// The connection table's entries: read in batches of thousands where the kernel can
    /// (5.6 on), else one entry at a time.
    pub(super) fn conntrack_entries(&mut self) -> anyhow::Result<Vec<(ConnKey, Conn)>> {
        let Some(aya::maps::Map::LruHashMap(data)) = self.ebpf.map(names::CONNTRACK) else {
            anyhow::bail!("map {} missing or not an LRU hash map", names::CONNTRACK);
        };
        match batch::dump(data) {
            Ok(entries) => Ok(entries),
            Err(e) => {
                tracing::debug!("batch lookup of the connection table: {e}; walking it entry by entry");
                let ct: BpfHashMap<_, ConnKey, Conn> = map(&mut self.ebpf, names::CONNTRACK)?;
                Ok(ct.iter().filter_map(Result::ok).collect())
            }
        }
    }

    /// Connection entries the kernel has added since the maps were created.
    pub(super) fn created(&mut self) -> anyhow::Result<u64> {
        self.created_in(lb_common::CONN_CREATED_ESTABLISHED)
    }

    /// Half-open entries the kernel has added (two a SYN that opened a flow).
    pub(super) fn created_half_open(&mut self) -> anyhow::Result<u64> {
        self.created_in(lb_common::CONN_CREATED_HALF_OPEN)
    }

    fn created_in(&mut self, slot: u32) -> anyhow::Result<u64> {
        let created: PerCpuArray<_, u64> = map(&mut self.ebpf, names::CONN_CREATED)?;
        Ok(created.get(&slot, 0)?.iter().sum())
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
        let half_open = self.created_half_open()?;
        Ok(Stats { services, backends, drops, conns: Conns { half_open, ..self.conns } })
    }
}

