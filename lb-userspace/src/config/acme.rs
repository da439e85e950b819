//! The `acme:` block: where certificates are ordered (RFC 8555), for which names, and
//! where they are kept. Each value is checked in its own deserializer so that a bad one
//! is reported at its line and column.

use std::{fmt, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer, de};

use super::units::duration;

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Acme {
    /// The CA's directory URL (https).
    #[serde(deserialize_with = "https_url")]
    pub directory: String,
    /// Contact for the account (expiry notices), as `mailto:`.
    #[serde(deserialize_with = "email")]
    pub email: Option<String>,
    /// Account key, certificates and lock files; 0700, files 0600. Nodes sharing it
    /// share certificates and never order the same name twice at once.
    pub state_dir: PathBuf,
    /// A certificate is renewed once it expires within this.
    #[serde(deserialize_with = "duration")]
    pub renew_before: Duration,
    /// PEM file of the root that signs the CA's own HTTPS certificate, for a test CA
    /// (pebble); default: the system's roots.
    pub ca_roots: Option<PathBuf>,
    /// Names to order a certificate for (one each), besides the hosts of TLS services.
    #[serde(deserialize_with = "dns_names")]
    pub names: Vec<String>,
    /// The first wait after a failed order; each failure in a row doubles it (with
    /// jitter) up to `retry_max`. Long by default: CAs limit failed validations
    /// (Let's Encrypt: 5 per name and hour).
    #[serde(deserialize_with = "duration")]
    pub retry_min: Duration,
    #[serde(deserialize_with = "duration")]
    pub retry_max: Duration,
    /// How the CA checks that xlb serves a name.
    pub challenge: Challenge,
}

/// RFC 8555's HTTP-01 (port 80) or RFC 8737's TLS-ALPN-01 (port 443, a TLS listener).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Challenge {
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

/// The state directory's subdirectory of issued certificates (`NAME.crt` with `NAME.key`).
pub const CERTS_DIR: &str = "certs";

impl Acme {
    /// Where the certificates ordered are kept: a certificate directory the TLS listeners
    /// serve from (`Config::certificate_files`).
    pub fn certs_dir(&self) -> PathBuf {
        self.state_dir.join(CERTS_DIR)
    }
}

impl Default for Acme {
    fn default() -> Self {
        Self {
            directory: LETS_ENCRYPT.to_owned(),
            email: None,
            state_dir: PathBuf::from("/var/lib/xlb/acme"),
            renew_before: Duration::from_secs(30 * 24 * 3600),
            ca_roots: None,
            names: Vec::new(),
            retry_min: Duration::from_secs(60),
            retry_max: Duration::from_secs(6 * 3600),
            challenge: Challenge::Http01,
        }
    }
}

/// Checks a string inside its own visitor, where serde_yaml still knows its position.
fn checked<'de, D: Deserializer<'de>, T>(d: D, check: fn(&str) -> Result<T, String>) -> Result<T, D::Error> {
    struct V<T>(fn(&str) -> Result<T, String>);
    impl<T> de::Visitor<'_> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
            (self.0)(s).map_err(E::custom)
        }
    }
    d.deserialize_str(V(check))
}

fn https_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked(d, |s| match s.strip_prefix("https://") {
        Some(rest) if !rest.is_empty() && !rest.contains(char::is_whitespace) => Ok(s.to_owned()),
        _ => Err(format!("{s:?}: expected the CA's directory as an https:// URL")),
    })
}

fn email<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, |s| match s.split_once('@') {
        Some((user, host)) if !user.is_empty() && host.contains('.') && !s.contains(char::is_whitespace) => Ok(Some(s.to_owned())),
        _ => Err(format!("{s:?}: expected an email address")),
    })
}

fn dns_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct V;
    impl<'de> de::Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of DNS names")
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut out: Vec<String> = Vec::new();
            while let Some(name) = seq.next_element::<String>()? {
                let name = dns_name(&name).map_err(de::Error::custom)?;
                if !out.contains(&name) {
                    out.push(name);
                }
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V)
}

/// A name a CA can validate over HTTP: letters, digits and hyphens in dot-separated
/// labels, at least two of them; no wildcard (HTTP-01 cannot prove one). Lowercased.
pub fn dns_name(s: &str) -> Result<String, String> {
    let name = s.trim().trim_end_matches('.').to_ascii_lowercase();
    let label_ok =
        |l: &str| (1..=63).contains(&l.len()) && !l.starts_with('-') && !l.ends_with('-') && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if name.starts_with("*.") {
        return Err(format!("{s:?}: a wildcard needs the DNS-01 challenge, which xlb does not answer"));
    }
    if name.len() > 253 || name.split('.').count() < 2 || !name.split('.').all(label_ok) {
        return Err(format!("{s:?}: expected a DNS name such as app.example.com"));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    #[test]
    fn bad_values_are_reported_at_their_position() {
        let cases = [
            ("acme:\n  directory: http://ca/dir\n", "x.yaml:2:14: acme.directory: \"http://ca/dir\": expected the CA's directory as an https:// URL"),
            ("acme:\n  email: nobody\n", "x.yaml:2:10: acme.email: \"nobody\": expected an email address"),
            ("acme:\n  names: [a.example.com, \"*.example.com\"]\n", "x.yaml:2:10: acme.names: \"*.example.com\": a wildcard needs the DNS-01"),
            ("acme:\n  names:\n    - a.example.com\n    - localhost\n", "x.yaml:3:5: acme.names: \"localhost\": expected a DNS name"),
            ("acme:\n  renew_before: 30x\n", "x.yaml:2:17: acme.renew_before: bad duration"),
            ("acme:\n  colour: red\n", "x.yaml:2:3: acme: unknown field `colour`"),
        ];
        for (text, want) in cases {
            let got = Config::parse(text, Path::new("x.yaml")).unwrap_err().to_string();
            assert!(got.starts_with(want), "got {got:?}, want {want:?}");
        }
    }

    /// What ACME keeps is served like a `tls.directory`: its pairs are certificate files, its
    /// directory is watched.
    #[test]
    fn the_certificates_ordered_are_served() {
        let dir = std::env::temp_dir().join(format!("xlb-acme-config-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        for f in ["a.example.com.crt", "a.example.com.key", "b.example.com.crt"] {
            std::fs::write(dir.join("certs").join(f), "").unwrap();
        }
        let c = Config::parse(&format!("acme:\n  state_dir: {}\n", dir.display()), Path::new("x")).unwrap();
        let files = c.certificate_files();
        let certs: Vec<_> = files.iter().map(|f| f.cert.file_name().unwrap().to_str().unwrap()).collect();
        assert_eq!(certs, ["a.example.com.crt"], "pairs only");
        assert_eq!(c.certificate_dirs(), [dir.join("certs")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn defaults_and_a_full_block() {
        let c = Config::parse("acme: {}\n", Path::new("x")).unwrap().acme.unwrap();
        assert_eq!((c.renew_before.as_secs(), c.directory.as_str()), (30 * 24 * 3600, super::LETS_ENCRYPT));
        let text = "acme:\n  directory: https://127.0.0.1:14000/dir\n  email: ops@example.com\n  state_dir: /tmp/x\n  renew_before: 10d\n  ca_roots: /tmp/ca.pem\n  names: [App.Example.com., app.example.com, b.example.com]\n  retry_min: 1s\n  retry_max: 10s\n";
        let c = Config::parse(text, Path::new("x")).unwrap().acme.unwrap();
        assert_eq!(c.names, ["app.example.com", "b.example.com"]);
        assert_eq!((c.renew_before.as_secs(), c.retry_min.as_secs(), c.email.as_deref()), (10 * 24 * 3600, 1, Some("ops@example.com")));
    }
}
