//! The status snapshot behind `xlb status`, `/api/v1/services` and `/metrics`.

use std::{sync::Arc, time::Instant};

use super::Controller;
use crate::observe;

impl Controller {
    /// Builds the status snapshot and hands it to the admin endpoint.
    pub(super) fn publish_status(&mut self) -> anyhow::Result<()> {
        let stats = self.dp.counters()?;
        let mut snapshot = observe::build::snapshot(&observe::build::Inputs {
            config: &self.config,
            kernel: &self.plan,
            http: &self.http_plan,
            registry: &self.registry,
            health: &self.health,
            stats: &stats,
            proxy: &self.proxy,
            backend_transitions: &self.backend_transitions,
            unroutable: &self.unroutable,
            discovery_events: &self.discovery_events,
            reloads: &self.reloads,
            acme: self.acme.status(),
            access_log: self.access_log.as_deref(),
            announced: self.announcer.as_ref().map(|a| observe::Announced { table: a.table(), vips: a.routes().iter().copied().collect() }),
        });
        let now = Instant::now();
        if let Some((at, prev)) = &self.last_status {
            observe::rates(&mut snapshot, prev, now.duration_since(*at).as_secs_f64());
        }
        self.snapshots.send_replace(Arc::new(snapshot.clone()));
        self.last_status = Some((now, snapshot));
        Ok(())
    }
}
