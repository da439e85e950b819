//! The task that keeps each wanted name's certificate: when to look at the disk, when
//! to order, and how long to back off after a failure.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use instant_acme::Account;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{account, challenge::Challenges, order, store::Store};
use crate::config::acme::Acme as Settings;

/// The longest a fresh certificate goes without a look at the disk (another node
/// sharing the state directory may have renewed it).
const RECHECK: Duration = Duration::from_secs(3600);
/// How soon to look again while another process holds a name's lock.
const LOCKED_RETRY: Duration = Duration::from_secs(2);

/// One name's certificate, as `xlb status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertStatus {
    pub name: String,
    /// `issued`, `ordering` (none held yet), `renewing` (expiring within
    /// `renew_before`), `waiting` (another xlb on the state directory is ordering it) or
    /// `failed` (the last order failed; `error` says why, `retry_at` when it is retried).
    pub state: String,
    /// Expiry of the certificate held, Unix seconds.
    pub expires: Option<u64>,
    /// The last failure: the CA's problem document, or what else went wrong.
    pub error: Option<String>,
    /// Failed orders in a row.
    pub failures: u32,
    /// When the next order is tried after a failure, Unix seconds.
    pub retry_at: Option<u64>,
    /// Certificates this process ordered and got for the name.
    pub orders: u64,
}

/// What the task is asked to keep: the settings in force and the names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub settings: Settings,
    pub names: BTreeSet<String>,
}

pub type Statuses = Arc<Mutex<BTreeMap<String, CertStatus>>>;

/// Runs until the [`super::Acme`] is dropped.
pub async fn run(mut wanted: watch::Receiver<Option<Wanted>>, challenges: Challenges, status: Statuses) {
    let mut keeper: Option<Keeper> = None;
    let mut next: HashMap<String, Instant> = HashMap::new();
    loop {
        let now_wanted = wanted.borrow_and_update().clone();
        match now_wanted {
            None => {
                keeper = None;
                next.clear();
                challenges.share(None);
            }
            Some(w) => {
                if keeper.as_ref().is_none_or(|k| k.settings != w.settings) {
                    // Shared at once, also with no name to order: this node answers for the others.
                    challenges.share(Some(Store::challenges_dir(&w.settings.state_dir)));
                    keeper = Some(Keeper::new(w.settings.clone(), challenges.clone(), status.clone()));
                    next.clear();
                }
                next.retain(|n, _| w.names.contains(n));
                let k = keeper.as_mut().expect("set above");
                for name in &w.names {
                    if next.get(name).is_none_or(|at| *at <= Instant::now()) {
                        let wait = k.tend(name).await;
                        next.insert(name.clone(), Instant::now() + wait);
                    }
                }
            }
        }
        status.lock().unwrap_or_else(|e| e.into_inner()).retain(|n, _| next.contains_key(n));
        let until = next.values().min().copied().unwrap_or_else(|| Instant::now() + RECHECK);
        tokio::select! {
            () = tokio::time::sleep_until(until.into()) => {}
            changed = wanted.changed() => if changed.is_err() { return },
        }
    }
}

/// Certificates under one set of settings.
struct Keeper {
    settings: Settings,
    challenges: Challenges,
    status: Statuses,
    /// Loaded (or created) at the first order.
    account: Option<Account>,
}

impl Keeper {
    fn new(settings: Settings, challenges: Challenges, status: Statuses) -> Self {
        Self { settings, challenges, status, account: None }
    }

    /// Looks after one name; returns when to look again.
    async fn tend(&mut self, name: &str) -> Duration {
        match self.try_tend(name).await {
            Ok(wait) => wait,
            Err(e) => {
                let error = format!("{e:#}");
                let failures = self.get(name).failures + 1;
                let wait = backoff(&self.settings, failures);
                warn!(name, failures, retry_in_ms = wait.as_millis() as u64, "certificate order failed: {error}");
                self.set(name, |s| {
                    (s.state, s.error, s.failures, s.retry_at) = ("failed".into(), Some(error), failures, Some(unix(SystemTime::now() + wait)));
                });
                wait
            }
        }
    }

    async fn try_tend(&mut self, name: &str) -> anyhow::Result<Duration> {
        let store = Store::open(&self.settings.state_dir).context("acme.state_dir")?;
        if let Some(wait) = self.fresh(name, &store) {
            return Ok(wait);
        }
        let Some(_lock) = store.try_lock(name)? else {
            if self.get(name).state != "waiting" {
                info!(name, "another process on the state directory is ordering this certificate: waiting for it");
            }
            self.set(name, |s| s.state = "waiting".into());
            return Ok(LOCKED_RETRY);
        };
        // Another node may have finished the order while this one waited for the lock.
        if let Some(wait) = self.fresh(name, &store) {
            return Ok(wait);
        }
        let renewing = self.get(name).expires.is_some();
        self.set(name, |s| s.state = if renewing { "renewing" } else { "ordering" }.into());
        let account = match &self.account {
            Some(a) => a.clone(),
            None => self.account.insert(account::load_or_create(&self.settings, &store).await?).clone(),
        };
        info!(name, renewing, challenge = ?self.settings.challenge, directory = %self.settings.directory, "ordering a certificate");
        let issued = order::order(&account, name, self.settings.challenge, &self.challenges).await?;
        let held = store.save(name, &issued.chain_pem, &issued.key_pem)?;
        info!(name, expires = unix(held.not_after), file = %store.cert_path(name).display(), "certificate issued");
        self.set(name, |s| {
            s.orders += 1;
            *s = CertStatus { name: s.name.clone(), orders: s.orders, ..CertStatus::default() };
        });
        Ok(self.fresh(name, &store).unwrap_or(RECHECK))
    }

    /// When the certificate on disk is valid beyond `renew_before`: marks it issued and
    /// says when to look again. A file that cannot be read counts as none (ordered anew).
    fn fresh(&self, name: &str, store: &Store) -> Option<Duration> {
        let held = store.held(name).unwrap_or_else(|e| {
            warn!(name, "the certificate held cannot be read, ordering a new one: {e:#}");
            None
        })?;
        self.set(name, |s| s.expires = Some(unix(held.not_after)));
        let left = held.not_after.duration_since(SystemTime::now()).ok()?;
        let until_renewal = left.checked_sub(self.settings.renew_before).filter(|d| !d.is_zero())?;
        self.set(name, |s| (s.state, s.error, s.failures, s.retry_at) = ("issued".into(), None, 0, None));
        Some(until_renewal.min(RECHECK))
    }

    fn get(&self, name: &str) -> CertStatus {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned().unwrap_or_default()
    }

    fn set(&self, name: &str, f: impl FnOnce(&mut CertStatus)) {
        let mut all = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let s = all.entry(name.to_owned()).or_insert_with(|| CertStatus { name: name.to_owned(), ..CertStatus::default() });
        f(s);
    }
}

/// The wait after `failures` failed orders in a row: `retry_min` doubled each time up to
/// `retry_max`, then ±25 % jitter so nodes (and names) that failed together spread out.
fn backoff(settings: &Settings, failures: u32) -> Duration {
    let doubled = settings.retry_min.saturating_mul(1 << failures.saturating_sub(1).min(20));
    doubled.min(settings.retry_max).mul_f64(rand::random_range(0.75..=1.25))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let s = Settings { retry_min: Duration::from_secs(10), retry_max: Duration::from_secs(100), ..Settings::default() };
        for (failures, base) in [(1, 10.0), (2, 20.0), (3, 40.0), (4, 80.0), (5, 100.0), (60, 100.0)] {
            for _ in 0..50 {
                let got = backoff(&s, failures).as_secs_f64();
                assert!((base * 0.75..=base * 1.25).contains(&got), "failures {failures}: {got}");
            }
        }
    }
}
