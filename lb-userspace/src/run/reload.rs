//! Reloading the config: check it, apply it, and put the previous one back when it
//! cannot be applied, so the running config keeps serving either way.

use std::time::{Instant, SystemTime};

use anyhow::bail;
use tracing::{error, info, warn};

use super::{
    Controller,
    stamp::{cert_stamps, stamp},
};
use crate::{
    announce::Announcer,
    config::{Config, Source},
    dataplane::Limits,
    observe::{admin, reloads::Outcome},
    plan::{self, Vitals},
};

impl Controller {
    /// Re-reads the config and applies it. A file that does not parse or fit is
    /// rejected; one whose changes cannot be applied (an HTTP listener that cannot be
    /// bound, a map write that fails) is rolled back. Either way the running config keeps
    /// serving. Returns whether a slow start is ramping, when anything was replanned.
    pub(super) fn reload(&mut self, source: &Source) -> Option<bool> {
        let config = match source.load().and_then(|c| self.fits(&c).map(|()| c)) {
            Ok(config) => config,
            Err(e) => {
                error!("reload rejected, the previous config keeps serving: {e:#}");
                self.reloads.record(Outcome::Rejected, format!("{e:#}"));
                return None;
            }
        };
        let previous = std::mem::replace(&mut self.config, config);
        // Before the listeners: a new TLS listener starts with its certificates.
        self.load_certificates();
        match self.replan(true) {
            Ok(ramping) => {
                self.restart_needed();
                self.adopt();
                self.reloads.record(Outcome::Applied, format!("{} services", self.config.services.len()));
                Some(ramping)
            }
            Err(e) => {
                error!("reload could not be applied, the previous config keeps serving: {e:#}");
                self.reloads.record(Outcome::RolledBack, format!("{e:#}"));
                self.config = previous;
                self.load_certificates();
                match self.replan(false) {
                    Ok(ramping) => Some(ramping),
                    Err(e) => {
                        error!("restoring the previous config: {e:#}");
                        None
                    }
                }
            }
        }
    }

    /// Called every `WATCH_FILE_EVERY`: reloads the config when its file changed, else
    /// the certificates when one of their files did. `file_stamp`: the config file's.
    pub(super) fn watch_files(&mut self, source: &Source, file_stamp: &mut Option<(SystemTime, u64)>) -> Option<bool> {
        let now = stamp(source.file.as_deref());
        if now != std::mem::replace(file_stamp, now) {
            return self.reload(source);
        }
        if self.cert_stamps != cert_stamps(&self.config) {
            info!("certificate files changed");
            self.load_certificates();
        }
        None
    }

    /// (Re)reads every certificate of `tls:`; a failed one is logged by the store and
    /// keeps its previous certificate. Open TLS connections are untouched.
    pub(super) fn load_certificates(&mut self) {
        self.cert_stamps = cert_stamps(&self.config);
        let files = self.config.certificate_files();
        if files.is_empty() && self.proxy.certificates().is_empty() {
            return;
        }
        let failed = self.proxy.load_certificates(&files);
        info!(certificates = files.len(), failed = failed.len(), "tls certificates loaded");
    }

    /// Checks what parsing cannot: that the services resolve and fit the data plane.
    fn fits(&self, config: &Config) -> anyhow::Result<()> {
        let plan = plan::plan(config, &self.iface, &self.registry, Instant::now(), |_, _| Vitals::default())?;
        if plan.services.len() > self.limits.max_services as usize {
            bail!("{} services, the data plane holds {} (dataplane.max_services, fixed at start)", plan.services.len(), self.limits.max_services);
        }
        Ok(())
    }

    /// Says which changes of a reloaded config wait for a restart: the data plane's
    /// sizes, its interface, the announce table, the admin address and the access log are
    /// fixed at start.
    fn restart_needed(&self) {
        let new = &self.config;
        if Limits::from(&new.dataplane) != self.limits {
            warn!("data plane sizes and seed changed; they apply at the next start");
        }
        if new.dataplane.interface.as_deref() != Some(self.iface.as_str()) {
            let wanted = new.dataplane.interface.as_deref().unwrap_or("none");
            warn!(running = %self.iface, wanted, "dataplane.interface changed: xlb stays on {}, restart xlb to move it", self.iface);
        }
        if new.dataplane.socket_lb != *self.dp.socket_lb_config() {
            warn!("dataplane.socket_lb changed: it applies at the next start");
        }
        if new.announce.map(|a| a.table) != self.announcer.as_ref().map(Announcer::table) {
            warn!("announce changed: it applies at the next start");
        }
        if new.access_log.as_ref() != self.access_log.as_ref().map(|l| l.config()) {
            warn!("access_log changed: it applies at the next start");
        }
        if new.admin.address != self.admin_address {
            warn!(running = %self.admin_address, wanted = %new.admin.address, "admin.address changed: the admin endpoint stays on {}, restart xlb to move it", self.admin_address);
        }
    }

    /// Completes a reload whose config is now in force: forgets discovery results of
    /// services it dropped, follows its sources, hands its token to the admin endpoint.
    fn adopt(&mut self) {
        let names: Vec<&str> = self.config.services.iter().map(|s| s.name.as_str()).collect();
        self.registry.retain(&names);
        self.sources.watch(&self.config);
        let token = self.config.admin.token.clone();
        if *self.admin_token.borrow() != token {
            admin::warn_if_exposed(self.admin_address, token.as_deref());
            let set = token.is_some();
            self.admin_token.send_replace(token);
            info!(set, "admin.token changed");
        }
    }
}

