//! Where the reply program goes: on each interface replies from a planned backend arrive
//! by, and which backends are left out (no route, or an interface that refused it).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use tracing::{info, warn};

use super::Controller;
use crate::{netdev, plan::Desired};

impl Controller {
    /// Attaches the reply program where replies from the planned backends arrive.
    /// Returns the backends that cannot be served, and why: those with no route, and
    /// those whose interface could not take the program (their replies would leave
    /// untranslated). They are left out of the maps; one bad backend must not hold up
    /// every other change.
    pub(super) fn attach_reply(&mut self, services: &[Desired]) -> BTreeMap<IpAddr, String> {
        let addrs: BTreeSet<IpAddr> = services.iter().flat_map(|d| d.backends.iter().map(|b| b.addr)).collect();
        let mut failed: HashMap<String, String> = HashMap::new();
        let mut unroutable = BTreeMap::new();
        for addr in addrs {
            let iface = match netdev::route_interface(addr) {
                Ok(iface) => iface,
                Err(e) => {
                    unroutable.insert(addr, format!("{e:#}"));
                    continue;
                }
            };
            if !self.reply_ifaces.contains(&iface) && !failed.contains_key(&iface) {
                match self.forwarding.enable(&iface).and_then(|()| self.dp.attach_backend_side(&iface)) {
                    Ok(()) => {
                        self.reply_ifaces.insert(iface.clone());
                    }
                    Err(e) => {
                        failed.insert(iface.clone(), format!("replies arrive on {iface}: {e:#}"));
                    }
                }
            }
            if let Some(why) = failed.get(&iface) {
                unroutable.insert(addr, why.clone());
            }
        }
        unroutable
    }

    /// Logs the backends that became unroutable, or routable again, since the last
    /// replan (not every replan: they are retried every few seconds).
    pub(super) fn report_unroutable(&mut self, now: BTreeMap<IpAddr, String>) {
        for (addr, why) in &now {
            if self.unroutable.get(addr) != Some(why) {
                warn!(backend = %addr, "backend left out of the data plane, the others are synced: {why}");
            }
        }
        for addr in self.unroutable.keys().filter(|a| !now.contains_key(a)) {
            info!(backend = %addr, "backend routable again");
        }
        self.unroutable = now;
    }
}
