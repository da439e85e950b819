//! A test CA and its certificates, made at test time (no private key is committed), for
//! the TLS tests (`tests/tls/`, the `xlb.tls` label in `tests/proxy/`).

use std::{fs, path::Path};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, date_time_ymd};

/// The Python of the TLS tests' peers: Debian's, whose modules `cargo xtask setup`
/// installs with apt (python3-grpcio); a pyenv or venv `python3` earlier on PATH has
/// not got them.
pub const PYTHON: &str = "/usr/bin/python3";

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

impl Ca {
    pub fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "xlb test CA");
        let key = KeyPair::generate().expect("CA key");
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        Ca { issuer: Issuer::new(params, key), pem }
    }

    /// Writes `dir/file.crt` and `dir/file.key`: a leaf with subject CN `cn` and DNS
    /// names `names`, expired when `expired`.
    pub fn leaf(&self, dir: &Path, file: &str, cn: &str, names: &[&str], expired: bool) {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        fs::write(dir.join(format!("{file}.crt")), cert.pem()).expect("write certificate");
        fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).expect("write key");
    }
}
