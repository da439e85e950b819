//! TLS to backends (`http.upstream.tls`): one rustls client config per service, so its
//! session cache resumes sessions across the service's connections (fewer full
//! handshakes when a backend closes its connections), and the handshake of a new one.

use std::{io, net::SocketAddr, sync::Arc};

use anyhow::{Context as _, bail};
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::warn;

use crate::config::http::{Protocol, UpstreamTls};

/// How a service's TLS backends are met.
pub struct Tls {
    connector: TlsConnector,
    /// `server_name`, else each backend's address.
    name: Option<ServerName<'static>>,
    /// ALPN must have chosen `h2`.
    h2: bool,
}

impl Tls {
    pub fn new(t: &UpstreamTls, protocol: Protocol) -> anyhow::Result<Self> {
        let provider = crate::proxy::tls::provider();
        let builder = ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().context("TLS versions")?;
        let mut config = if t.verify {
            builder.with_root_certificates(roots(t)?).with_no_client_auth()
        } else {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))).with_no_client_auth()
        };
        config.alpn_protocols = vec![if protocol.is_h2() { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
        let name = t.server_name.as_deref().map(|n| ServerName::try_from(n).map(|n| n.to_owned())).transpose().context("server_name")?;
        Ok(Self { connector: TlsConnector::from(Arc::new(config)), name, h2: protocol.is_h2() })
    }

    /// The TLS handshake on a connected socket. A refused certificate is logged here,
    /// with the backend and rustls's reason, as it is a setup fault, not a passing one.
    pub async fn handshake(&self, tcp: TcpStream, addr: SocketAddr) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = self.name.clone().unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let tls = self.connector.connect(name, tcp).await.inspect_err(|e| {
            if let Some(rustls::Error::InvalidCertificate(why)) = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                warn!(backend = %addr, "upstream tls: backend certificate refused: {why:?}");
            }
        })?;
        if self.h2 && tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(io::Error::other("the backend did not choose h2 by ALPN"));
        }
        Ok(tls)
    }
}

/// `ca`'s certificates, else the system's.
fn roots(t: &UpstreamTls) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match &t.ca {
        Some(path) => {
            let certs: Vec<CertificateDer> =
                CertificateDer::pem_file_iter(path).and_then(|i| i.collect()).with_context(|| format!("upstream.tls.ca {}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                bail!("upstream.tls.ca {}: no usable certificate", path.display());
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                bail!("upstream.tls: the system's trust store has no certificate ({:?}): give `ca`", found.errors);
            }
        }
    }
    Ok(roots)
}

/// `verify: false`: any certificate is taken; the handshake's signatures are still
/// checked, so the session is with whoever holds the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
