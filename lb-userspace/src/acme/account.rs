//! The ACME account: created once per CA and kept in the state directory (its
//! credentials hold its private key), so a restart or a second node reuses it.

use std::{fs, time::Duration};

use anyhow::{Context as _, bail};
use instant_acme::{Account, AccountBuilder, AccountCredentials, NewAccount};
use tracing::info;

use super::store::{self, Store};
use crate::config::acme::Acme;

/// How long to wait for another process creating the same account.
const CREATE_WAIT: Duration = Duration::from_secs(30);

/// The account for `settings.directory`: read from the state directory, else created
/// at the CA (under a lock, so two nodes starting together create one) and saved 0600.
pub async fn load_or_create(settings: &Acme, store: &Store) -> anyhow::Result<Account> {
    let path = store.account_path(&settings.directory);
    let started = std::time::Instant::now();
    let _lock = loop {
        if let Some(lock) = store.try_lock("account")? {
            break lock;
        }
        if started.elapsed() > CREATE_WAIT {
            bail!("another process has held the account lock for {}s", CREATE_WAIT.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if path.exists() {
        let text = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let credentials: AccountCredentials = serde_json::from_slice(&text).with_context(|| format!("decoding {}", path.display()))?;
        return builder(settings)?.from_credentials(credentials).await.with_context(|| format!("the account in {}", path.display()));
    }
    let contact = settings.email.iter().map(|e| format!("mailto:{e}")).collect::<Vec<_>>();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let new = NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false };
    let (account, credentials) = builder(settings)?.create(&new, settings.directory.clone(), None).await.context("creating the account")?;
    store::write_private(&path, &serde_json::to_vec(&credentials)?)?;
    info!(directory = %settings.directory, id = account.id(), file = %path.display(), "ACME account created");
    Ok(account)
}

/// An HTTPS client for the CA: the system's roots, or `ca_roots` alone.
fn builder(settings: &Acme) -> anyhow::Result<AccountBuilder> {
    match &settings.ca_roots {
        Some(pem) => Account::builder_with_root(pem).with_context(|| format!("acme.ca_roots {}", pem.display())),
        None => Account::builder().context("the system's root certificates"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The system's roots (the default, for Let's Encrypt) load with the one rustls
    /// provider compiled in; a `ca_roots` file that is not there is named in the error.
    #[test]
    fn https_clients_for_the_ca() {
        builder(&Acme::default()).expect("the system's roots");
        let missing = Acme { ca_roots: Some("/nonexistent/ca.pem".into()), ..Acme::default() };
        let e = builder(&missing).err().expect("a missing ca_roots file fails").to_string();
        assert!(e.contains("acme.ca_roots /nonexistent/ca.pem"), "{e}");
    }
}
