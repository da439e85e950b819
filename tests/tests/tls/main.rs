//! TLS termination by the real xlb binary, in namespaces (client → LB → backend b1),
//! checked with real clients: curl and `openssl s_client`. Certificates come from a test
//! CA made at test time (`certs.rs`).

mod grpc;
mod passthrough;
mod reload;
mod upstream;

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use xlb_tests::{
    Topology, Xlb,
    tls::Ca,
    topology::{LB_CLIENT_IF, LB_CLIENT_V4, TESTD_PORT},
    util::{TempDir, wait_for},
    xlb::XlbArgs,
};

/// Where the client reaches xlb (the interface address: the services have no VIP).
pub const LB: std::net::Ipv4Addr = LB_CLIENT_V4;

pub struct Setup {
    pub _g: xlb_tests::Serial,
    pub topo: Topology,
    pub dir: TempDir,
    pub ca: Ca,
}

impl Setup {
    pub fn new() -> Setup {
        let g = xlb_tests::serial();
        xlb_tests::preflight();
        let topo = Topology::builder().backends(1).build();
        let dir = TempDir::new();
        let ca = Ca::new();
        fs::write(dir.path().join("ca.pem"), &ca.pem).expect("write CA");
        Setup { _g: g, topo, dir, ca }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Writes `xlb.yaml`: service `web` on b1, plain on 80 and TLS on 443, with `tls`
    /// (the service's `http.tls`) and the top-level `tls:` block `certs`.
    pub fn config(&self, certs: &str, tls: &str) -> PathBuf {
        let b1 = self.topo.ip("b1", false);
        let yaml = format!(
            "tls:\n{certs}services:\n  - name: web\n    port: 80\n    protocol: http\n    backends: [{{ address: {b1}, port: {TESTD_PORT} }}]\n    http:\n      tls: {tls}\n"
        );
        let path = self.path("xlb.yaml");
        fs::write(&path, yaml).expect("write config");
        path
    }

    pub fn start(&self, config: &Path) -> Xlb {
        let xlb = Xlb::start(XlbArgs { ns: Some(&self.topo.lb), iface: LB_CLIENT_IF, config: Some(config), specs: vec![], other_ifaces: self.topo.lb_backend_ifaces() });
        let at = SocketAddr::from((LB, 443));
        let up = wait_for(Duration::from_secs(10), Duration::from_millis(100), || self.sh(&format!("exec 3<>/dev/tcp/{LB}/443")).is_ok().then_some(()));
        assert!(up.is_some(), "nothing listens on {at}\n{}", xlb.log());
        xlb
    }

    /// A shell command in the client namespace: its stdout, or its stderr as the error.
    pub fn sh(&self, script: &str) -> Result<String, String> {
        let out = self.topo.client.exec("bash", ["-c", script]).output().expect("run bash");
        if out.status.success() { Ok(String::from_utf8_lossy(&out.stdout).into_owned()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
    }

    /// The subject of the certificate xlb serves for SNI `name` (`openssl s_client
    /// -servername`), or the handshake's error.
    pub fn subject(&self, name: &str) -> Result<String, String> {
        let script = format!(
            "set -o pipefail; openssl s_client -connect {LB}:443 -servername {name} -CAfile {ca} -verify_return_error </dev/null 2>/tmp/xt-s_client.err | openssl x509 -noout -subject || {{ cat /tmp/xt-s_client.err >&2; false; }}",
            ca = self.path("ca.pem").display()
        );
        self.sh(&script).map(|s| s.trim().to_owned())
    }

    /// curl to `https://host/path` with the test CA and `--resolve`; `-w` prints the
    /// HTTP version and status, then the body.
    pub fn curl(&self, url: &str, extra: &str) -> Result<String, String> {
        let host = url.split("//").nth(1).and_then(|r| r.split(['/', ':']).next()).unwrap_or_default();
        let script = format!(
            "curl -sS --max-time 5 --cacert {ca} --resolve {host}:443:{LB} --resolve {host}:80:{LB} {extra} -w '\\n%{{http_version}} %{{response_code}}' '{url}'",
            ca = self.path("ca.pem").display()
        );
        self.sh(&script)
    }
}

/// The `tls:` block of these tests: `app.test` (exact), `*.wild.test` from a directory,
/// and `default.test` as the default certificate.
fn three_certs(s: &Setup) -> String {
    fs::create_dir_all(s.path("certs")).expect("mkdir certs");
    s.ca.leaf(s.dir.path(), "app", "app one", &["app.test"], false);
    s.ca.leaf(&s.path("certs"), "wild", "wildcard", &["*.wild.test"], false);
    s.ca.leaf(s.dir.path(), "default", "fallback", &["default.test"], false);
    let d = s.dir.path().display();
    format!(
        "  certificates:\n    - {{ cert: {d}/app.crt, key: {d}/app.key }}\n    - {{ cert: {d}/default.crt, key: {d}/default.key, default: true }}\n  directory: {d}/certs\n"
    )
}

/// SNI picks the exact and the wildcard certificate, an unknown name gets the default
/// one; TLS 1.2 and 1.3 both work, ALPN `h2` gives HTTP/2; the plain port redirects
/// with 308 keeping path and query; HSTS is set on TLS answers only.
#[test]
fn sni_alpn_versions_redirect_and_hsts() {
    let s = Setup::new();
    let certs = three_certs(&s);
    let cfg = s.config(&certs, "{ redirect: true, hsts: 24h, hsts_subdomains: true }");
    let mut xlb = s.start(&cfg);
    let log = || xlb.log();
    for (sni, want) in [("app.test", "CN = app one"), ("x.wild.test", "CN = wildcard"), ("unknown.test", "CN = fallback")] {
        let got = s.subject(sni).unwrap_or_else(|e| panic!("SNI {sni}: {e}\n{}", log()));
        assert!(got.ends_with(want), "SNI {sni}: served {got:?}, want {want}");
    }
    assert!(s.subject("a.b.wild.test").unwrap().ends_with("CN = fallback"), "a wildcard covers one label only");
    let h2 = s.curl("https://app.test/", "--http2 -D -").unwrap_or_else(|e| panic!("curl --http2: {e}\n{}", log()));
    assert!(h2.ends_with("\n2 200"), "ALPN h2 → HTTP/2: {h2}");
    assert!(h2.contains("b1\n"), "answered by b1: {h2}");
    assert!(h2.to_ascii_lowercase().contains("strict-transport-security: max-age=86400; includesubdomains"), "HSTS: {h2}");
    let h2_openssl = s.sh(&format!("openssl s_client -connect {LB}:443 -servername app.test -alpn h2 </dev/null 2>&1")).unwrap_or_else(|e| e);
    assert!(h2_openssl.contains("ALPN protocol: h2"), "s_client -alpn h2: {h2_openssl}");
    let v12 = s.curl("https://app.test/", "--http1.1 --tlsv1.2 --tls-max 1.2 -v").unwrap_or_else(|e| panic!("TLS 1.2: {e}"));
    assert!(v12.ends_with("\n1.1 200"), "TLS 1.2: {v12}");
    let v12_log = s.sh(&format!("curl -sS -v --cacert {} --resolve app.test:443:{LB} --tlsv1.2 --tls-max 1.2 https://app.test/ 2>&1 >/dev/null", s.path("ca.pem").display())).unwrap();
    assert!(v12_log.contains("TLSv1.2"), "negotiated TLS 1.2: {v12_log}");
    let v13_log = s.sh(&format!("curl -sS -v --cacert {} --resolve app.test:443:{LB} --tlsv1.3 https://app.test/ 2>&1 >/dev/null", s.path("ca.pem").display())).unwrap();
    assert!(v13_log.contains("TLSv1.3"), "negotiated TLS 1.3: {v13_log}");
    let plain = s.curl("http://app.test/a/b?c=d&e", "-D -").unwrap_or_else(|e| panic!("plain: {e}"));
    assert!(plain.ends_with("\n1.1 308"), "redirect: {plain}");
    assert!(plain.contains("location: https://app.test/a/b?c=d&e") || plain.contains("Location: https://app.test/a/b?c=d&e"), "Location keeps path and query: {plain}");
    assert!(!plain.to_ascii_lowercase().contains("strict-transport-security"), "no HSTS over plain HTTP: {plain}");
    let followed = s.curl("http://x.wild.test/", "-L").unwrap_or_else(|e| panic!("curl -L: {e}"));
    assert!(followed.ends_with("\n1.1 200") || followed.ends_with("\n2 200"), "followed to https: {followed}");
    xlb.assert_running();
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}
