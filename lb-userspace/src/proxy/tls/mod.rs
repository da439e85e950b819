//! TLS termination: the certificate store (SNI), and the rustls server configuration
//! every TLS listener shares; the ClientHello's server name for passthrough (`hello`). The handshake itself is in `listen/accept.rs`; after it a
//! connection is served like a plain one (`listen/transport.rs`).

pub mod hello;
pub mod store;

use std::sync::Arc;

use rustls::{ServerConfig, crypto::CryptoProvider, version};
pub use store::{CertStatus, CertStore};

use crate::acme::challenge::ALPN as ACME_TLS_ALPN;

/// ring: already built for the rest of xlb (DNS); aws-lc-rs would add a cmake build of
/// aws-lc. rustls 0.23.48 deprecates it for lacking post-quantum key exchange (X25519MLKEM768),
/// which clients fall back from to X25519.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.3 and 1.2 with rustls's default (modern, AEAD-only) suites; ALPN `h2` first,
/// then `http/1.1` (hyper's server tells them apart by the HTTP/2 preface); the
/// certificate from `store` by SNI.
pub fn server_config(provider: Arc<CryptoProvider>, store: Arc<CertStore>) -> Arc<ServerConfig> {
    let mut c = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(store);
    // `acme-tls/1` last: only a CA's TLS-ALPN-01 check offers it (`CertStore::resolve`).
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    Arc::new(c)
}
