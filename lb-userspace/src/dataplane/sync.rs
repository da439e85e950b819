//! Writing the desired services into the maps, in an order that packets in flight can
//! live with.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use anyhow::{Context as _, bail};
use aya::maps::{Array, HashMap as BpfHashMap, PerCpuArray, PerCpuValues};
use lb_common::{Backend as KBackend, BackendState as KState, Counters, RevNat, Service as KService, ServiceKey, addr_words, names};

use super::{BackendIdent, Dataplane, ServiceSlot, maglev, maglev::Entry, map, monotonic_ns, nr_cpus};
use crate::{
    config::{self, BackendState},
    netdev,
    plan::{Desired, DesiredBackend},
};

/// A service's backends with their ids, and the draining ones' entries still to write.
type Written = (Vec<(u32, DesiredBackend)>, Vec<(u32, KBackend)>);

impl Dataplane {
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
        self.sync_vips(desired)?;
        let gone: Vec<ServiceKey> = self.services.keys().filter(|k| !wanted.contains_key(k)).copied().collect();
        for key in gone {
            let slot = self.services.remove(&key).expect("listed above");
            let mut services: BpfHashMap<_, ServiceKey, KService> = map(&mut self.ebpf, names::SERVICES)?;
            services.remove(&key).context("removing a service")?;
            self.free_tables.push(slot.table);
            // Its flows' replies still name the id (rev-NAT): freed once none is left.
            self.retired_services.insert(slot.id);
            removed.extend(slot.backends.iter().map(|(id, b)| (*id, (key, b.addr, b.port))));
        }
        let mut retire: Vec<u32> = removed
            .into_iter()
            .map(|(id, ident)| {
                self.backend_ids.remove(&ident);
                id
            })
            .collect();
        // A kept data plane's backends that no service claimed are gone too.
        retire.extend(self.unclaimed.drain().map(|(id, _)| id));
        let mut backends: Array<_, KBackend> = map(&mut self.ebpf, names::BACKENDS)?;
        let now = monotonic_ns();
        for id in retire {
            let mut b = backends.get(&id, 0)?;
            b.state = KState::Removed as u8;
            backends.set(id, b, 0)?;
            self.retired.insert(id, now);
        }
        Ok(())
    }

    /// Makes `VIPS` hold the services' addresses: a new one is answered for ARP and NDP
    /// before its first client asks, one no service has any more is not.
    fn sync_vips(&mut self, desired: &[Desired]) -> anyhow::Result<()> {
        let wanted: HashSet<ServiceKey> = desired.iter().map(|d| ServiceKey { port: 0, proto: 0, ..d.key }).collect();
        if wanted == self.vips {
            return Ok(());
        }
        let mut vips: BpfHashMap<_, ServiceKey, u32> = map(&mut self.ebpf, names::VIPS)?;
        for k in wanted.difference(&self.vips) {
            vips.insert(k, 1, 0).context("adding a VIP")?;
        }
        for k in self.vips.difference(&wanted) {
            vips.remove(k).context("removing a VIP")?;
        }
        self.vips = wanted;
        Ok(())
    }

    /// Updates one service; returns the backends it no longer has.
    fn sync_service(&mut self, d: &Desired) -> anyhow::Result<Vec<(u32, BackendIdent)>> {
        // What the maps hold for it already: a sync costs what changed, not what exists.
        if self.services.get(&d.key).is_some_and(|s| s.synced.as_ref() == Some(d)) {
            return Ok(Vec::new());
        }
        let (service, old_table, old_backends) = match self.services.get(&d.key) {
            Some(s) => (s.id, Some((s.table, s.table_len)), s.backends.clone()),
            None => {
                let id = self.free_service_ids.pop().context("out of service ids")?;
                self.zero(names::SERVICE_STATS, id)?;
                let mut rr: Array<_, u64> = map(&mut self.ebpf, names::RR)?;
                rr.set(id, 0, 0)?;
                (id, None, Vec::new())
            }
        };
        let (backends, drain_later) = self.write_backends(d, service)?;

        let mut active: Vec<&(u32, DesiredBackend)> = backends.iter().filter(|(_, b)| b.state == BackendState::Active).collect();
        // Maglev resolves two backends' claims on a slot by their order: in address order,
        // every node with the same backends builds the same table, whatever order discovery
        // found them in and whatever ids they got here.
        if matches!(d.method, config::Method::Maglev | config::Method::SourceHash) {
            active.sort_by_key(|(_, b)| (b.addr, b.port));
        }
        let active: Vec<(u32, Entry)> = active
            .into_iter()
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

        let method = lb_common::Method::from(d.method) as u8;
        let forwarding = match d.forwarding {
            config::Forwarding::Nat => 0,
            config::Forwarding::Direct => KService::F_DIRECT,
            config::Forwarding::Tunnel => KService::F_TUNNEL,
        };
        let flags = if d.socket_lb { KService::F_SOCKET_LB } else { 0 } | forwarding;
        let len = table_ids.len() as u32;
        let mut entry = KService { id: service, table: old_table.map_or(0, |(t, _)| t), len, method, flags, _pad: [0; 2] };
        let unchanged = match old_table {
            Some((t, old_len)) => old_len == len && self.tables.read(t as usize * size as usize, len as usize)? == table_ids,
            None => false,
        };
        if !unchanged {
            let slot = self.free_tables.pop().context("no spare selection table")?;
            self.tables.write(slot as usize * size as usize, &table_ids)?;
            entry.table = slot;
            if let Some((old, _)) = old_table {
                self.free_tables.push(old);
            }
        }
        let mut rev: Array<_, RevNat> = map(&mut self.ebpf, names::REV_NAT)?;
        rev.set(service, RevNat { addr: d.key.addr, port: d.key.port, family: d.key.family, _pad: 0 }, 0)?;
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
        self.services.insert(d.key, ServiceSlot { id: service, table: entry.table, backends, table_len: len, synced: Some(d.clone()) });
        Ok(removed)
    }

    /// Gives each of the service's backends its id (kept, claimed from a kept plane, or
    /// new) and writes the active ones; returns them all, and the draining ones' entries,
    /// which wait until the service points at a table that no longer names them.
    fn write_backends(&mut self, d: &Desired, service: u32) -> anyhow::Result<Written> {
        let mut backends = Vec::with_capacity(d.backends.len());
        let mut drain_later = Vec::new();
        for b in &d.backends {
            let ident = (d.key, b.addr, b.port);
            let id = match self.backend_ids.get(&ident).copied().or_else(|| self.claim(b.addr, b.port)) {
                Some(id) => id,
                None => {
                    let id = self.free_backend_ids.pop().context("out of backend ids")?;
                    self.zero(names::BACKEND_STATS, id)?;
                    id
                }
            };
            self.backend_ids.insert(ident, id);
            let state = match b.state {
                BackendState::Active => KState::Active,
                BackendState::Draining => KState::Draining,
            };
            match d.forwarding {
                config::Forwarding::Tunnel => self.write_tunnel_source(id, b.addr)?,
                // The kernel sends to the backend's MAC and cannot resolve it itself.
                config::Forwarding::Direct => netdev::solicit_neighbour(b.addr),
                config::Forwarding::Nat => {}
            }
            let (addr, family) = addr_words(b.addr);
            let entry = KBackend { addr, port: b.port.to_be(), family, state: state as u8, service };
            if b.state == BackendState::Draining {
                drain_later.push((id, entry));
            } else {
                let mut map: Array<_, KBackend> = map(&mut self.ebpf, names::BACKENDS)?;
                map.set(id, entry, 0)?;
            }
            backends.push((id, *b));
        }
        Ok((backends, drain_later))
    }

    /// The outer source address of tunnelled packets to backend `id` at `addr`: the one
    /// this host sends from towards it. Before the backend is in any table.
    fn write_tunnel_source(&mut self, id: u32, addr: IpAddr) -> anyhow::Result<()> {
        let IpAddr::V4(src) = netdev::route_source(addr)? else { bail!("backend {addr}: tunnel forwarding is IPv4 only") };
        let mut sources: Array<_, u32> = map(&mut self.ebpf, names::TUNNEL_SOURCES)?;
        sources.set(id, u32::from_ne_bytes(src.octets()), 0).context("writing a tunnel source")
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
}
