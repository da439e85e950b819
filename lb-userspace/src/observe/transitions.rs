//! Health transitions per backend, as the status and `/metrics` show them.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
};

use super::snapshot::{HealthEvent, unix_ms};

/// How many recent changes the dashboard is shown.
const RECENT: usize = 50;

/// Health changes per (service, backend address), and their total since the start.
/// Backends that left the plan are forgotten (`retain`), so discovery churn does not
/// grow the map for ever; the total keeps their changes, as
/// `xlb_health_transitions_total` is a counter and never goes down. The latest changes
/// are kept in order, forgotten backends' too, for the dashboard.
#[derive(Debug, Default, Clone)]
pub struct Transitions {
    per_backend: HashMap<(String, SocketAddr), u64>,
    total: u64,
    recent: VecDeque<HealthEvent>,
}

impl Transitions {
    pub fn record(&mut self, service: &str, addr: SocketAddr, healthy: bool) {
        *self.per_backend.entry((service.to_owned(), addr)).or_default() += 1;
        self.total += 1;
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(HealthEvent { at_ms: unix_ms(), service: service.to_owned(), backend: addr.to_string(), healthy });
    }

    /// The latest changes, oldest first.
    pub fn recent(&self) -> Vec<HealthEvent> {
        self.recent.iter().cloned().collect()
    }

    pub fn get(&self, service: &str, addr: SocketAddr) -> u64 {
        self.per_backend.get(&(service.to_owned(), addr)).copied().unwrap_or(0)
    }

    /// Every change since the start, of forgotten backends too.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Backends with a count.
    pub fn len(&self) -> usize {
        self.per_backend.len()
    }

    pub fn is_empty(&self) -> bool {
        self.per_backend.is_empty()
    }

    /// Keeps the counts of the backends `keep` names.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, SocketAddr) -> bool) {
        self.per_backend.retain(|(service, addr), _| keep(service, *addr));
    }
}
