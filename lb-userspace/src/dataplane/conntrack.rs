//! The connection table seen from user space: expiry of idle entries, and the counters
//! read with it.

use std::{collections::BTreeSet, net::IpAddr};

use aya::maps::{Array, HashMap as BpfHashMap, PerCpuArray};
use lb_common::{Backend as KBackend, Conn, ConnKey, Counters, DropReason, ServiceKey, names};

use super::{Dataplane, Timeouts, map};

impl Dataplane {
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
