//! HTTP-01 answers: the key authorizations of challenges in progress, by token. The
//! orders write them, the HTTP proxy reads them before routing a request (so a challenge
//! is answered whatever the host's services and redirects are).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

/// The path prefix a CA asks for (RFC 8555 8.3).
pub const PATH: &str = "/.well-known/acme-challenge/";

/// Tokens in progress and their key authorizations. Cheap to clone (one shared map).
#[derive(Debug, Clone, Default)]
pub struct Challenges(Arc<RwLock<HashMap<String, String>>>);

impl Challenges {
    /// The body to answer a request for `path` with, if it asks for a token in progress.
    pub fn answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(PATH)?;
        self.0.read().unwrap_or_else(|e| e.into_inner()).get(token).cloned()
    }

    /// Serves `key_authorization` for `token` until the returned guard is dropped.
    pub fn serve(&self, token: String, key_authorization: String) -> Served {
        self.0.write().unwrap_or_else(|e| e.into_inner()).insert(token.clone(), key_authorization);
        Served { challenges: self.clone(), token }
    }
}

/// A token being served; dropping it (the order done, failed or cancelled) removes it.
pub struct Served {
    challenges: Challenges,
    token: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.challenges.0.write().unwrap_or_else(|e| e.into_inner()).remove(&self.token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_answered_while_served() {
        let c = Challenges::default();
        let served = c.serve("tok".into(), "tok.thumb".into());
        assert_eq!(c.answer("/.well-known/acme-challenge/tok").as_deref(), Some("tok.thumb"));
        assert_eq!(c.answer("/.well-known/acme-challenge/other"), None);
        assert_eq!(c.answer("/tok"), None);
        drop(served);
        assert_eq!(c.answer("/.well-known/acme-challenge/tok"), None);
    }
}
