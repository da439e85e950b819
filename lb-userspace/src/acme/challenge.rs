//! HTTP-01 answers: the key authorizations of challenges in progress, by token. The
//! orders write them, the HTTP proxy reads them before routing a request (so a challenge
//! is answered whatever the host's services and redirects are).
//!
//! Each token is also written to the state directory's `challenges/`, and a token not
//! held in memory is looked for there: nodes sharing the state directory answer for each
//! other, so the CA may reach any of them whichever one is ordering.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, RwLock},
};

use tracing::warn;

/// The path prefix a CA asks for (RFC 8555 8.3).
pub const PATH: &str = "/.well-known/acme-challenge/";
/// The ALPN protocol a CA offers for a TLS-ALPN-01 check (RFC 8737).
pub const ALPN: &[u8] = b"acme-tls/1";

/// Tokens in progress and their key authorizations. Cheap to clone (one shared map).
#[derive(Debug, Clone, Default)]
pub struct Challenges(Arc<RwLock<Inner>>);

#[derive(Debug, Default)]
struct Inner {
    tokens: HashMap<String, String>,
    /// TLS-ALPN-01: each name's challenge certificate and key (DER), answered to a
    /// ClientHello offering `acme-tls/1` (not shared with other nodes).
    alpn: HashMap<String, (Vec<u8>, Vec<u8>)>,
    /// The shared `challenges/` directory, once the state directory is known.
    shared: Option<PathBuf>,
}

impl Challenges {
    /// The body to answer a request for `path` with, if it asks for a token in progress
    /// here or on a node sharing the state directory (a small file read, only for
    /// challenge paths this node does not hold).
    pub fn answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(PATH)?;
        let inner = self.0.read().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = inner.tokens.get(token) {
            return Some(k.clone());
        }
        let dir = inner.shared.clone()?;
        drop(inner);
        // Tokens are base64url (RFC 8555 8.1): anything else never names a file.
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return None;
        }
        std::fs::read_to_string(dir.join(token)).ok()
    }

    /// The TLS-ALPN-01 certificate and key (DER) in progress for `name`.
    pub fn alpn_certificate(&self, name: &str) -> Option<(Vec<u8>, Vec<u8>)> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).alpn.get(&name.to_ascii_lowercase()).cloned()
    }

    /// Serves a TLS-ALPN-01 certificate for `name` until the returned guard is dropped.
    pub fn serve_alpn(&self, name: &str, cert_der: Vec<u8>, key_der: Vec<u8>) -> Served {
        self.0.write().unwrap_or_else(|e| e.into_inner()).alpn.insert(name.to_owned(), (cert_der, key_der));
        Served { challenges: self.clone(), token: String::new(), alpn: Some(name.to_owned()), file: None }
    }

    /// Where tokens are shared with other nodes (the state directory's `challenges/`).
    pub fn share(&self, dir: Option<PathBuf>) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).shared = dir;
    }

    /// Serves `key_authorization` for `token` until the returned guard is dropped.
    pub fn serve(&self, token: String, key_authorization: String) -> Served {
        let mut inner = self.0.write().unwrap_or_else(|e| e.into_inner());
        let file = inner.shared.as_ref().map(|d| d.join(&token));
        if let Some(f) = &file
            && let Err(e) = super::store::write_private(f, key_authorization.as_bytes())
        {
            warn!("sharing an ACME challenge with other nodes: {e:#}");
        }
        inner.tokens.insert(token.clone(), key_authorization);
        Served { challenges: self.clone(), token, alpn: None, file }
    }
}

/// A token being served; dropping it (the order done, failed or cancelled) removes it.
pub struct Served {
    challenges: Challenges,
    token: String,
    alpn: Option<String>,
    file: Option<PathBuf>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let mut inner = self.challenges.0.write().unwrap_or_else(|e| e.into_inner());
        inner.tokens.remove(&self.token);
        if let Some(name) = &self.alpn {
            inner.alpn.remove(name);
        }
        drop(inner);
        if let Some(f) = &self.file {
            let _ = std::fs::remove_file(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_answered_while_served_here_or_by_a_node_sharing_the_directory() {
        let c = Challenges::default();
        let served = c.serve("tok".into(), "tok.thumb".into());
        assert_eq!(c.answer("/.well-known/acme-challenge/tok").as_deref(), Some("tok.thumb"));
        assert_eq!(c.answer("/.well-known/acme-challenge/other"), None);
        assert_eq!(c.answer("/tok"), None);
        drop(served);
        assert_eq!(c.answer("/.well-known/acme-challenge/tok"), None);

        let dir = std::env::temp_dir().join(format!("xlb-acme-challenges-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (here, other) = (Challenges::default(), Challenges::default());
        here.share(Some(dir.clone()));
        other.share(Some(dir.clone()));
        let served = other.serve("T0k-_".into(), "T0k-_.thumb".into());
        assert_eq!(here.answer("/.well-known/acme-challenge/T0k-_").as_deref(), Some("T0k-_.thumb"));
        std::fs::write(dir.join("secret"), "x").unwrap();
        assert_eq!(here.answer("/.well-known/acme-challenge/../secret"), None, "only base64url tokens name files");
        drop(served);
        assert_eq!(here.answer("/.well-known/acme-challenge/T0k-_"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
