//! One order (RFC 8555 7.4) for one name, validated by HTTP-01: the token is served by
//! xlb's own HTTP listeners (`Challenges`) while the CA checks it.

use std::time::Duration;

use anyhow::{Context as _, bail};
use instant_acme::{Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy};

use super::challenge::Challenges;

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
pub async fn order(account: &Account, name: &str, challenges: &Challenges) -> anyhow::Result<Issued> {
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
        let mut challenge = authz.challenge(ChallengeType::Http01).context("the CA offers no http-01 challenge")?;
        served.push(challenges.serve(challenge.token.clone(), challenge.key_authorization().as_str().to_owned()));
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
