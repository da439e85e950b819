//! Automatic certificates from an ACME CA (RFC 8555, Let's Encrypt and the like).
//!
//! For each wanted name ([`names`]) the [`Acme`] task keeps a valid certificate in the
//! state directory (`store.rs`), where the TLS layer loads it (`certs/NAME.crt` and
//! `NAME.key`, a `tls.directory`):
//!
//! ```text
//! want(names) ─► schedule: held on disk and fresh? ─ yes ─► issued, look again later
//!                     │ no (missing, or expiring within renew_before)
//!                     ▼
//!               flock locks/NAME.lock ─ held by another xlb ─► waiting, look again soon
//!                     ▼
//!               order (HTTP-01 token in `Challenges`, answered by the proxy) ─► save 0600
//!                     └─ error ─► failed (the CA's words), retried with backoff
//! ```
//!
//! A restart reads the disk first, so it never orders what it holds; nodes sharing the
//! state directory order a name once (the lock, then a second look at the disk).

mod account;
pub mod challenge;
mod order;
mod schedule;
pub mod store;

use std::collections::BTreeSet;

use tokio::sync::watch;

use self::schedule::{Statuses, Wanted};
pub use self::{challenge::Challenges, schedule::CertStatus};
use crate::{
    config::{
        Config,
        acme::{Acme as Settings, dns_name},
        http::HostPattern,
    },
    plan::ServiceView,
};

/// The certificate keeper: a task started once, told what to keep after every config
/// load; it orders, renews and retries on its own.
pub struct Acme {
    wanted: watch::Sender<Option<Wanted>>,
    status: Statuses,
}

impl Acme {
    /// Starts the task (inside a tokio runtime). `challenges` must be the store the HTTP
    /// proxy answers from.
    pub fn start(challenges: Challenges) -> Self {
        let (wanted, rx) = watch::channel(None);
        let status = Statuses::default();
        tokio::spawn(schedule::run(rx, challenges, status.clone()));
        Self { wanted, status }
    }

    /// Keeps certificates for `names` under `settings` (none: stop ordering; files stay).
    pub fn want(&self, settings: Option<&Settings>, names: BTreeSet<String>) {
        let new = settings.map(|s| Wanted { settings: s.clone(), names });
        self.wanted.send_if_modified(|w| {
            let changed = *w != new;
            *w = new;
            changed
        });
    }

    /// Each wanted name's certificate, by name.
    pub fn status(&self) -> Vec<CertStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }
}

/// The names to keep certificates for: those `acme.names` lists, and the exact host names
/// of every TLS listener (`http.tls`, or the `xlb.tls` label beside `xlb.host`). Wildcards
/// are left out: HTTP-01 cannot prove them.
pub fn names(config: &Config, http: &[ServiceView]) -> BTreeSet<String> {
    let Some(acme) = &config.acme else { return BTreeSet::new() };
    let tls_hosts = http.iter().filter(|v| v.tls).flat_map(|v| v.options.hosts.iter().chain(v.backends.iter().flat_map(|b| &b.hosts)));
    let exact = tls_hosts.filter_map(|h| match h {
        HostPattern::Exact(name) => dns_name(name).ok(),
        HostPattern::Wildcard(_) => None,
    });
    acme.names.iter().cloned().chain(exact).collect()
}
