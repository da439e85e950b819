//! A service's `http.upstream`: how the proxy speaks to its backends (HTTP/1.1 or
//! HTTP/2, plain or over TLS, and how a backend's certificate is checked).

use std::path::PathBuf;

use serde::Deserialize;

/// The protocol spoken to the backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 (over TLS: ALPN `http/1.1`).
    #[default]
    Http1,
    /// HTTP/2 in clear text with prior knowledge (RFC 9113 3.3): gRPC servers, mostly.
    H2c,
    /// HTTP/2 over TLS, negotiated by ALPN `h2` (needs `tls`).
    H2,
}

impl Protocol {
    pub fn is_h2(self) -> bool {
        matches!(self, Self::H2c | Self::H2)
    }
}

/// `http.upstream`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamOptions {
    pub protocol: Protocol,
    /// The backends speak TLS (https); absent: plain TCP.
    pub tls: Option<UpstreamTls>,
}

/// How a TLS backend is met.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTls {
    /// PEM file of the certificates that may sign a backend's; absent: the system's
    /// trust store (`/etc/ssl/certs`). Read when the service's settings are applied.
    pub ca: Option<PathBuf>,
    /// `false`: any certificate is accepted (self-signed backends on a trusted network);
    /// the connection is still encrypted, but not authenticated.
    pub verify: bool,
    /// The name sent as SNI and checked against the backend's certificate; absent: the
    /// backend's address (an IP address SAN then, and no SNI).
    pub server_name: Option<String>,
}

impl Default for UpstreamTls {
    fn default() -> Self {
        Self { ca: None, verify: true, server_name: None }
    }
}

impl UpstreamOptions {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.protocol == Protocol::H2 && self.tls.is_none() {
            return Err("upstream: `protocol: h2` is HTTP/2 over TLS: give `upstream.tls`, or use `h2c` for clear text".into());
        }
        if self.protocol == Protocol::H2c && self.tls.is_some() {
            return Err("upstream: `protocol: h2c` is clear text: with `upstream.tls` use `h2`".into());
        }
        if let Some(n) = self.tls.as_ref().and_then(|t| t.server_name.as_deref())
            && rustls_pki_types::ServerName::try_from(n).is_err()
        {
            return Err(format!("upstream.tls.server_name: {n:?} is not a DNS name or IP address"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::HttpOptions;
    use super::*;

    #[test]
    fn upstream_yaml_and_its_errors() {
        let o = HttpOptions::from_yaml("upstream: { protocol: h2, tls: { ca: /etc/ca.pem, server_name: api.internal } }\n").unwrap();
        assert_eq!(o.upstream.protocol, Protocol::H2);
        let t = o.upstream.tls.unwrap();
        assert_eq!((t.ca.as_deref(), t.verify, t.server_name.as_deref()), (Some(std::path::Path::new("/etc/ca.pem")), true, Some("api.internal")));
        assert_eq!(HttpOptions::from_yaml("upstream: { tls: {} }\n").unwrap().upstream.tls, Some(UpstreamTls::default()));
        assert_eq!(HttpOptions::default().upstream, UpstreamOptions::default());
        for (bad, says) in [
            ("upstream: { protocol: h2 }\n", "give `upstream.tls`"),
            ("upstream: { protocol: h2c, tls: {} }\n", "use `h2`"),
            ("upstream: { protocol: h3 }\n", "unknown variant"),
            ("upstream: { tls: { server_name: 'a b' } }\n", "server_name"),
            ("upstream: { tls: { verfy: false } }\n", "unknown field"),
        ] {
            let e = HttpOptions::from_yaml(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
