//! One order (RFC 8555 7.4) for one name, validated by HTTP-01 (the token served by xlb's
//! own HTTP listeners) or TLS-ALPN-01 (a challenge certificate its TLS listeners present to
//! a ClientHello offering `acme-tls/1`), both from `Challenges`, while the CA checks.

use std::time::Duration;

use anyhow::{Context as _, bail};
use instant_acme::{Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy};

use super::challenge::Challenges;
use crate::config::acme::Challenge;

/// How long the CA may take to validate and to issue (pebble sleeps up to 15 s by
/// default before it validates).
const POLL: RetryPolicy = RetryPolicy::new().initial_delay(Duration::from_millis(500)).backoff(1.5).timeout(Duration::from_secs(120));

/// An issued certificate: the chain (leaf first) and its private key, both PEM.
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// Orders a certificate for `name`. An error carries the CA's own words (its problem
/// document, or the failed challenge's).
pub async fn order(account: &Account, name: &str, kind: Challenge, challenges: &Challenges) -> anyhow::Result<Issued> {
    let ids = [Identifier::Dns(name.to_owned())];
    let mut order = account.new_order(&NewOrder::new(&ids)).await.context("new order")?;
    let mut served = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.context("reading the authorization")?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => bail!("authorization for {name} is {other:?}"),
        }
        let mut challenge = match kind {
            Challenge::Http01 => authz.challenge(ChallengeType::Http01).context("the CA offers no http-01 challenge")?,
            Challenge::TlsAlpn01 => authz.challenge(ChallengeType::TlsAlpn01).context("the CA offers no tls-alpn-01 challenge")?,
        };
        served.push(match kind {
            Challenge::Http01 => challenges.serve(challenge.token.clone(), challenge.key_authorization().as_str().to_owned()),
            Challenge::TlsAlpn01 => {
                let (cert, key) = alpn_certificate(name, challenge.key_authorization().digest().as_ref())?;
                challenges.serve_alpn(name, cert, key)
            }
        });
        challenge.set_ready().await.context("answering the challenge")?;
    }
    let status = order.poll_ready(&POLL).await.context("waiting for validation")?;
    if status != OrderStatus::Ready {
        bail!("order {status:?}: {}", why_invalid(&mut order).await);
    }
    drop(served);
    let key_pem = order.finalize().await.context("finalizing")?;
    let chain_pem = order.poll_certificate(&POLL).await.context("downloading the certificate")?;
    Ok(Issued { chain_pem, key_pem })
}

/// RFC 8737's challenge certificate: self-signed for `name`, carrying the SHA-256 of the
/// key authorization in the critical acmeIdentifier extension. Returns it and its key (DER).
fn alpn_certificate(name: &str, digest: &[u8]) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let key = rcgen::KeyPair::generate().context("a key for the tls-alpn-01 certificate")?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).context("the tls-alpn-01 certificate")?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).context("signing the tls-alpn-01 certificate")?;
    Ok((cert.der().to_vec(), key.serialize_der()))
}

/// The CA's explanation of an order that went invalid: the order's problem, else the
/// failed challenge's.
async fn why_invalid(order: &mut instant_acme::Order) -> String {
    if let Some(p) = &order.state().error {
        return p.to_string();
    }
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        if let Some(p) = authz.challenges.iter().find_map(|c| c.error.as_ref()) {
            return p.to_string();
        }
    }
    "the CA gave no reason".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The TLS-ALPN-01 certificate carries the digest in a critical extension (which webpki,
    /// and so `CertifiedKey::from_der`, refuses), and its key loads as a signer.
    #[test]
    fn the_tls_alpn_certificate_is_servable() {
        let (cert, key) = alpn_certificate("a.example.com", &[7u8; 32]).unwrap();
        assert!(cert.windows(32).any(|w| w == [7u8; 32]), "the digest is in the certificate");
        let key = rustls::pki_types::PrivateKeyDer::try_from(key).unwrap();
        rustls::crypto::ring::default_provider().key_provider.load_private_key(key).unwrap();
    }
}
