//! TLS termination settings: the top-level `tls:` block (where certificates come from)
//! and a service's `http.tls` (which of its listeners are TLS, redirect, HSTS).

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer, de};

use super::units::opt_duration;

/// Certificates for every TLS listener: SNI picks among them by their SAN names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// Certificate chain and key files, each a PEM file.
    #[serde(deserialize_with = "certificates")]
    pub certificates: Vec<CertFiles>,
    /// A directory of PEM pairs: `NAME.crt` (or `NAME.pem`) with `NAME.key`.
    pub directory: Option<PathBuf>,
    /// The port of the TLS listener that Docker's `xlb.tls` label puts a service's
    /// hosts on, when the service has no `http.tls` of its own.
    #[serde(deserialize_with = "super::service::port")]
    pub port: u16,
}

impl Default for Tls {
    fn default() -> Self {
        Self { certificates: Vec::new(), directory: None, port: 443 }
    }
}

impl Tls {
    /// Every certificate source, listed and found in `directory`, as pairs to load.
    pub fn files(&self) -> Vec<CertFiles> {
        let mut out = self.certificates.clone();
        if let Some(dir) = &self.directory {
            out.extend(directory_pairs(dir));
        }
        out
    }
}

/// A certificate chain and its key. `default`: the certificate of a client whose SNI
/// names no certificate (or who sends none); without one, such a client gets an alert.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub default: bool,
}

/// At most one default certificate, checked in the list so the error has its position.
fn certificates<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<CertFiles>, D::Error> {
    let list = Vec::<CertFiles>::deserialize(d)?;
    if list.iter().filter(|c| c.default).count() > 1 {
        return Err(de::Error::custom("more than one certificate has `default: true`"));
    }
    Ok(list)
}

/// The pairs of a certificate directory, by file name: `NAME.crt` or `NAME.pem` with
/// `NAME.key`. A directory that cannot be read gives none here; loading reports it.
pub(super) fn directory_pairs(dir: &std::path::Path) -> Vec<CertFiles> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<CertFiles> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("crt" | "pem")))
        .map(|cert| CertFiles { key: cert.with_extension("key"), cert, default: false })
        .filter(|c| c.key.exists())
        .collect();
    out.sort_by(|a, b| a.cert.cmp(&b.cert));
    out
}

/// A service's `http.tls`: the service is also (or only) served over TLS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceTls {
    /// The TLS listener's port, on the service's VIP. Equal to the service's `port`: the
    /// service is served over TLS only.
    #[serde(deserialize_with = "super::service::port")]
    pub port: u16,
    /// Requests on the plain port get `308` to `https://` (path and query kept).
    pub redirect: bool,
    /// `Strict-Transport-Security: max-age=...` on TLS responses; none: no header.
    #[serde(deserialize_with = "opt_duration")]
    pub hsts: Option<Duration>,
    /// Adds `; includeSubDomains` to the HSTS header.
    pub hsts_subdomains: bool,
    /// The backends terminate TLS themselves: a connection whose ClientHello names one of
    /// the service's `hosts` is passed to a backend unread (no certificate needed here).
    pub passthrough: bool,
}

impl Default for ServiceTls {
    fn default() -> Self {
        Self { port: 443, redirect: false, hsts: None, hsts_subdomains: false, passthrough: false }
    }
}

impl ServiceTls {
    /// The HSTS header value, if any.
    pub fn hsts_header(&self) -> Option<String> {
        let age = self.hsts?.as_secs();
        Some(if self.hsts_subdomains { format!("max-age={age}; includeSubDomains") } else { format!("max-age={age}") })
    }
}
