//! The certificate store: every certificate a TLS listener may serve, chosen by SNI.
//!
//! Certificates come from PEM files (`tls.certificates`, `tls.directory`), loaded again on
//! every reload and when their files change. A source that fails to load (unreadable,
//! malformed, expired, key not matching) is reported in the log and the status, and the
//! certificate it loaded last keeps serving. Listeners hold the store through their
//! `rustls::ServerConfig`'s resolver, so a reload swaps certificates for new handshakes
//! only: open connections keep the session they negotiated.
//!
//! Another source (an ACME client) plugs in with [`CertStore::feed`]: its certificates
//! win over files for their names. A TLS-ALPN-01 responder would answer from the same
//! resolver, looking at `ClientHello::alpn` for `acme-tls/1`.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use rustls::{
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use serde::{Deserialize, Serialize};
use tracing::{error, info};

use crate::{
    acme::{Challenges, challenge},
    config::tls::CertFiles,
    x509,
};

/// A certificate source as `xlb status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertStatus {
    /// The certificate file.
    pub cert: PathBuf,
    /// Names it serves (its subjectAltName DNS names), from the last good load.
    pub names: Vec<String>,
    /// Expiry of the certificate serving, seconds since the epoch.
    pub not_after: Option<u64>,
    /// The last load's error; the previous certificate (if any) keeps serving.
    pub error: Option<String>,
    pub default: bool,
}

/// A loaded certificate with what SNI matching needs.
#[derive(Clone)]
struct Loaded {
    key: Arc<CertifiedKey>,
    leaf: x509::Leaf,
}

/// What handshakes read: swapped whole on every load.
#[derive(Default)]
struct Names {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.test` under `example.test`: one label deep, as RFC 6125 says.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl Names {
    fn add(&mut self, name: &str, key: &Arc<CertifiedKey>) {
        match name.strip_prefix("*.") {
            Some(parent) => self.wildcard.entry(parent.to_owned()).or_insert_with(|| key.clone()),
            None => self.exact.entry(name.to_owned()).or_insert_with(|| key.clone()),
        };
    }

    fn find(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let sni = sni.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.exact.get(&sni) {
            return Some(k.clone());
        }
        let (_, parent) = sni.split_once('.')?;
        self.wildcard.get(parent).cloned()
    }
}

/// Every certificate the TLS listeners serve; the resolver of their `ServerConfig`.
pub struct CertStore {
    provider: Arc<CryptoProvider>,
    names: RwLock<Arc<Names>>,
    /// The last good load of each source, and its status.
    sources: Mutex<Vec<(CertFiles, Option<Loaded>, CertStatus)>>,
    /// Certificates fed by another module, by name.
    fed: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// TLS-ALPN-01 certificates in progress (the certificate keeper's).
    acme: Challenges,
}

/// rustls's resolver trait asks for `Debug`; the keys are not for printing.
impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertStore")
    }
}

impl CertStore {
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        Self::with_challenges(provider, Challenges::default())
    }

    /// A store that also answers the TLS-ALPN-01 checks of `acme`'s orders.
    pub fn with_challenges(provider: Arc<CryptoProvider>, acme: Challenges) -> Self {
        Self { provider, names: RwLock::default(), sources: Mutex::default(), fed: Mutex::default(), acme }
    }

    /// Loads `files` (the config's sources, in order: the first certificate naming a
    /// host serves it). A source that fails keeps its last good certificate. Returns
    /// the errors, one line per failed source.
    pub fn load(&self, files: &[CertFiles]) -> Vec<String> {
        let now = SystemTime::now();
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = Vec::with_capacity(files.len());
        let mut errors = Vec::new();
        for f in files {
            let previous = sources.iter().find(|(p, ..)| p == f).and_then(|(_, l, _)| l.clone());
            let (loaded, error) = match load_pair(f, &self.provider, now) {
                Ok(l) => {
                    if previous.as_ref().is_none_or(|p| p.key.cert != l.key.cert) {
                        info!(cert = %f.cert.display(), names = ?l.leaf.names, "tls certificate loaded");
                    }
                    (Some(l), None)
                }
                Err(e) => {
                    let kept = if previous.is_some() { "the previous certificate keeps serving" } else { "nothing served from it" };
                    error!(cert = %f.cert.display(), key = %f.key.display(), "tls certificate rejected, {kept}: {e:#}");
                    errors.push(format!("{}: {e:#}", f.cert.display()));
                    (previous, Some(format!("{e:#}")))
                }
            };
            let status = CertStatus {
                cert: f.cert.clone(),
                names: loaded.as_ref().map(|l| l.leaf.names.clone()).unwrap_or_default(),
                not_after: loaded.as_ref().and_then(|l| l.leaf.not_after.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs()),
                error,
                default: f.default,
            };
            next.push((f.clone(), loaded, status));
        }
        *sources = next;
        drop(sources);
        self.publish();
        errors
    }

    /// Serves `key` for `name` (exact or `*.` wildcard) ahead of the files, or stops
    /// serving it (`None`): the seam for certificates that arrive by other means (ACME).
    pub fn feed(&self, name: &str, key: Option<Arc<CertifiedKey>>) {
        let mut fed = self.fed.lock().unwrap_or_else(|e| e.into_inner());
        match key {
            Some(k) => fed.insert(name.to_ascii_lowercase(), k),
            None => fed.remove(&name.to_ascii_lowercase()),
        };
        drop(fed);
        self.publish();
    }

    /// Each source's state, for the status.
    pub fn status(&self) -> Vec<CertStatus> {
        self.sources.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(.., s)| s.clone()).collect()
    }

    /// Rebuilds what handshakes read from the fed certificates and the sources.
    fn publish(&self) {
        let mut names = Names::default();
        for (name, key) in self.fed.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            names.add(name, key);
        }
        for (f, loaded, _) in self.sources.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let Some(l) = loaded else { continue };
            for n in &l.leaf.names {
                names.add(n, &l.key);
            }
            if f.default {
                names.default = Some(l.key.clone());
            }
        }
        *self.names.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(names);
    }
}

impl CertStore {
    /// The certificate naming `sni`, else the default one.
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let names = self.names.read().unwrap_or_else(|e| e.into_inner()).clone();
        sni.and_then(|sni| names.find(sni)).or_else(|| names.default.clone())
    }
}

impl ResolvesServerCert for CertStore {
    /// `None` (no certificate, no default) makes rustls end the handshake with an alert.
    /// A ClientHello offering `acme-tls/1` is a CA's TLS-ALPN-01 check: it gets the
    /// challenge certificate in progress for its name, or nothing.
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if hello.alpn().is_some_and(|mut p| p.any(|p| p == challenge::ALPN)) {
            let (cert, key) = self.acme.alpn_certificate(hello.server_name()?)?;
            // `new`, not `from_der`: webpki refuses the critical acmeIdentifier extension.
            let key = self.provider.key_provider.load_private_key(PrivateKeyDer::try_from(key).ok()?).ok()?;
            return Some(Arc::new(CertifiedKey::new(vec![CertificateDer::from(cert)], key)));
        }
        self.lookup(hello.server_name())
    }
}

/// Reads and checks one certificate chain and key: parsed, with DNS names, valid now,
/// and the key matching the leaf.
fn load_pair(f: &CertFiles, provider: &CryptoProvider, now: SystemTime) -> anyhow::Result<Loaded> {
    let chain = CertificateDer::pem_file_iter(&f.cert)
        .with_context(|| format!("reading {}", f.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: bad PEM", f.cert.display()))?;
    let Some(first) = chain.first() else {
        bail!("{}: no CERTIFICATE block", f.cert.display());
    };
    let leaf = x509::leaf(first).with_context(|| format!("{}: not a certificate xlb can read", f.cert.display()))?;
    if leaf.names.is_empty() {
        bail!("{}: no DNS name in subjectAltName", f.cert.display());
    }
    if now > leaf.not_after {
        bail!("{}: expired {}s ago", f.cert.display(), now.duration_since(leaf.not_after).unwrap_or_default().as_secs());
    }
    if now < leaf.not_before {
        bail!("{}: not valid for another {}s", f.cert.display(), leaf.not_before.duration_since(now).unwrap_or_default().as_secs());
    }
    let key = PrivateKeyDer::from_pem_file(&f.key).with_context(|| format!("reading the key {}", f.key.display()))?;
    let key = CertifiedKey::from_der(chain, key, provider).with_context(|| format!("{} with {}", f.cert.display(), f.key.display()))?;
    Ok(Loaded { key: Arc::new(key), leaf })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rcgen::{CertificateParams, DnType, KeyPair};

    use super::*;

    /// Writes a self-signed certificate for `names` with subject CN `cn`.
    fn write(dir: &Path, file: &str, cn: &str, names: &[&str]) -> CertFiles {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let f = CertFiles { cert: dir.join(format!("{file}.crt")), key: dir.join(format!("{file}.key")), default: false };
        std::fs::write(&f.cert, cert.pem()).unwrap();
        std::fs::write(&f.key, key.serialize_pem()).unwrap();
        f
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default_and_a_bad_reload_keeps_the_old() {
        let dir = std::env::temp_dir().join(format!("xlb-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exact = write(&dir, "exact", "exact", &["app.test"]);
        let wild = write(&dir, "wild", "wild", &["*.app.test", "other.test"]);
        let fallback = CertFiles { default: true, ..write(&dir, "fallback", "fallback", &["fallback.test"]) };
        let store = CertStore::new(crate::proxy::tls::provider());
        assert!(store.load(&[exact.clone(), wild.clone()]).is_empty());
        let leaf = |sni: Option<&str>| store.lookup(sni).map(|k| x509::leaf(&k.cert[0]).unwrap().names);
        assert_eq!(leaf(Some("APP.test.")), Some(vec!["app.test".to_owned()]));
        assert_eq!(leaf(Some("x.app.test")), Some(vec!["*.app.test".to_owned(), "other.test".to_owned()]));
        assert_eq!(leaf(Some("y.x.app.test")), None, "a wildcard covers one label");
        assert_eq!(leaf(None), None, "no default: an alert");
        assert!(store.load(&[exact.clone(), wild.clone(), fallback.clone()]).is_empty());
        assert_eq!(leaf(Some("unknown.test")), Some(vec!["fallback.test".to_owned()]));

        std::fs::write(&exact.cert, "garbage").unwrap();
        let errors = store.load(&[exact.clone(), wild.clone(), fallback.clone()]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(leaf(Some("app.test")), Some(vec!["app.test".to_owned()]), "the old certificate keeps serving");
        let status = store.status();
        assert!(status[0].error.is_some() && status[0].names == ["app.test"] && status[1].error.is_none(), "{status:?}");

        let fed = store.lookup(Some("other.test")).unwrap();
        store.feed("app.test", Some(fed));
        assert_eq!(leaf(Some("app.test")), Some(vec!["*.app.test".to_owned(), "other.test".to_owned()]), "fed certificates win");
        store.feed("app.test", None);
        assert_eq!(leaf(Some("app.test")), Some(vec!["app.test".to_owned()]));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
