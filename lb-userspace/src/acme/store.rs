//! The state directory: the account, the certificates and the per-name lock files.
//!
//! ```text
//! STATE_DIR/                 0700
//!   accounts/<directory>.json  the account's credentials (its private key), 0600
//!   certs/<name>.crt           the issued chain, leaf first, 0600
//!   certs/<name>.key           its private key (PKCS#8 PEM), 0600
//!   locks/<name>.lock          flock'ed by the xlb ordering <name>
//!   challenges/<token>         HTTP-01 answers in progress, for every node to serve
//! ```
//!
//! `certs/` is a certificate directory in the TLS layer's format (`NAME.crt` with
//! `NAME.key`). Files are written to a temporary name and renamed, the key before the
//! chain, so a reader never sees half a file and a new chain never meets an old key.

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::{
        fd::AsRawFd as _,
        unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context as _, bail};
use rustls_pki_types::{CertificateDer, pem::PemObject as _};

/// The state directory of one CA account.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// A certificate held on disk, as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub not_after: SystemTime,
}

impl Store {
    /// Creates the directory tree (0700) if needed, and tightens one left wider.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        for sub in ["", "accounts", "certs", "locks", "challenges"] {
            let d = dir.join(sub);
            fs::DirBuilder::new().recursive(true).mode(0o700).create(&d).with_context(|| format!("creating {}", d.display()))?;
            fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).with_context(|| format!("chmod 0700 {}", d.display()))?;
        }
        Ok(Self { dir: dir.to_owned() })
    }

    /// Where the issued certificates are: a directory for the TLS layer's `tls.directory`.
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.join(crate::config::acme::CERTS_DIR)
    }

    /// The account file for the CA at `directory` (one account per CA).
    pub fn account_path(&self, directory: &str) -> PathBuf {
        let slug: String =
            directory.trim_start_matches("https://").chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
        self.dir.join("accounts").join(format!("{slug}.json"))
    }

    /// HTTP-01 answers shared between the nodes using the state directory `dir`.
    pub fn challenges_dir(dir: &Path) -> PathBuf {
        dir.join("challenges")
    }

    pub fn cert_path(&self, name: &str) -> PathBuf {
        self.certs_dir().join(format!("{name}.crt"))
    }

    pub fn key_path(&self, name: &str) -> PathBuf {
        self.certs_dir().join(format!("{name}.key"))
    }

    /// The certificate held for `name`, if its chain and key are both there and the leaf
    /// parses; `Err` for files that are there but unreadable or not a certificate.
    pub fn held(&self, name: &str) -> anyhow::Result<Option<Held>> {
        let (cert, key) = (self.cert_path(name), self.key_path(name));
        if !cert.exists() || !key.exists() {
            return Ok(None);
        }
        let pem = fs::read(&cert).with_context(|| format!("reading {}", cert.display()))?;
        let not_after = not_after(&pem).with_context(|| format!("{}", cert.display()))?;
        Ok(Some(Held { not_after }))
    }

    /// Writes an issued chain and its key (0600): the key first, then the chain.
    pub fn save(&self, name: &str, chain_pem: &str, key_pem: &str) -> anyhow::Result<Held> {
        let held = Held { not_after: not_after(chain_pem.as_bytes()).context("the CA's certificate")? };
        write_private(&self.key_path(name), key_pem.as_bytes())?;
        write_private(&self.cert_path(name), chain_pem.as_bytes())?;
        Ok(held)
    }

    /// Takes `name`'s lock if no other process holds it (`None` then).
    pub fn try_lock(&self, name: &str) -> anyhow::Result<Option<Lock>> {
        let path = self.dir.join("locks").join(format!("{name}.lock"));
        let file =
            OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a descriptor this function owns; released when `file` closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(Lock { _file: file }));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) { Ok(None) } else { Err(e).with_context(|| format!("flock {}", path.display())) }
    }
}

/// An exclusive lock on a name (or the account): held while the file stays open, and
/// released by the kernel however the process ends.
pub struct Lock {
    _file: File,
}

/// Writes `bytes` to `path` with mode 0600 through a temporary file and a rename.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// The expiry of the first certificate (the leaf) of a PEM chain.
fn not_after(pem: &[u8]) -> anyhow::Result<SystemTime> {
    let Some(first) = CertificateDer::pem_slice_iter(pem).next() else {
        bail!("no PEM CERTIFICATE block");
    };
    let first = first.map_err(|e| anyhow::anyhow!("bad PEM: {e}"))?;
    Ok(crate::x509::leaf(&first).context("not an X.509 certificate xlb can read")?.not_after)
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::MetadataExt as _, time::Duration};

    use super::*;

    /// A self-signed certificate made by rcgen (already a dependency, for CSRs).
    fn cert() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.example.com".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2030, 1, 1);
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn saved_files_are_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("xlb-acme-store-{}", std::process::id()));
        let store = Store::open(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(store.held("a.example.com").unwrap(), None);
        let (chain, key) = cert();
        let saved = store.save("a.example.com", &chain, &key).unwrap();
        assert_eq!(store.held("a.example.com").unwrap(), Some(saved));
        let expected = SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000);
        assert_eq!(saved.not_after, expected);
        for p in [store.cert_path("a.example.com"), store.key_path("a.example.com")] {
            assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600, "{}", p.display());
        }
        fs::write(store.cert_path("a.example.com"), "junk").unwrap();
        assert!(store.held("a.example.com").is_err());
        let lock = store.try_lock("a.example.com").unwrap();
        assert!(lock.is_some());
        // flock locks belong to the open file: a second open in this process conflicts too.
        assert!(store.try_lock("a.example.com").unwrap().is_none());
        drop(lock);
        assert!(store.try_lock("a.example.com").unwrap().is_some());
        fs::remove_dir_all(&dir).unwrap();
    }
}
