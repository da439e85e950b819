//! Debian's `pebble` (a real RFC 8555 CA for tests) in the client namespace: its HTTPS API
//! certificate signed by a CA made here with openssl (once per directory, so a restarted
//! pebble keeps it) (trusted by xlb through
//! `acme.ca_roots` and by the test's curl only), validation over the test's DNS server, and
//! the real validation (`PEBBLE_VA_ALWAYS_VALID` is never set).

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use xlb_tests::{
    netns::NetNs,
    util::{Proc, STDOUT, cmd, run},
};

const API_PORT: u16 = 14000;
const MANAGEMENT_PORT: u16 = 15000;

pub struct Pebble {
    proc: Proc,
    addr: Ipv4Addr,
    /// The CA of pebble's own HTTPS certificate (not of what it issues).
    pub api_ca: PathBuf,
}

impl Pebble {
    /// Starts pebble on `addr` in `ns`: it resolves names at `dns` and validates HTTP-01 on
    /// port `http_port` of the address it finds. Its files go to `dir`.
    pub fn start(ns: &NetNs, addr: Ipv4Addr, dns: SocketAddr, http_port: u16, dir: &Path) -> Pebble {
        let p = |f: &str| dir.join(f);
        let (ca, key, cert) = (p("ca.pem"), p("api.key"), p("api.pem"));
        if !ca.exists() {
            api_certificate(addr, dir);
        }
        let config = serde_json::json!({ "pebble": {
            "listenAddress": format!("{addr}:{API_PORT}"),
            "managementListenAddress": format!("{addr}:{MANAGEMENT_PORT}"),
            "certificate": s(&cert), "privateKey": s(&key),
            "httpPort": http_port, "tlsPort": 443,
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
        }});
        std::fs::write(p("pebble.json"), config.to_string()).expect("write pebble.json");
        // No random sleep before validating, and no nonce rejected (bounded run time).
        let mut c =
            ns.exec("env", ["PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "pebble", "-config", &s(&p("pebble.json")), "-dnsserver", &dns.to_string()]);
        c.current_dir(dir);
        let mut proc = Proc::spawn("pebble", c);
        if let Err(e) = proc.wait_line(STDOUT, "ACME directory available", Duration::from_secs(20)) {
            panic!("pebble did not start: {e}");
        }
        Pebble { proc, addr, api_ca: ca }
    }

    /// The directory URL xlb is given.
    pub fn directory(&self) -> String {
        format!("https://{}:{API_PORT}/dir", self.addr)
    }

    /// The root that signs what pebble issues (new at every start), PEM.
    pub fn issuing_root(&self, ns: &NetNs) -> String {
        let url = format!("https://{}:{MANAGEMENT_PORT}/roots/0", self.addr);
        ns.try_run("curl", &["-sS", "--fail", "--max-time", "5", "--cacert", self.api_ca.to_str().expect("utf-8"), &url])
            .unwrap_or_else(|e| panic!("pebble's root: {e}"))
    }

    /// New orders pebble received (its log line per request).
    pub fn orders(&self) -> usize {
        self.proc.log().lines().iter().filter(|l| l.contains("POST /order-plz")).count()
    }

    pub fn log(&self) -> String {
        self.proc.log().text()
    }

    /// Stops pebble (the CA goes away, as in an outage).
    pub fn stop(mut self) {
        self.proc.kill();
    }
}

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_owned()
}

/// `dir/ca.pem`, a CA made for the test, and `dir/api.pem` with `api.key`, pebble's HTTPS
/// certificate for `addr` signed by it (an end-entity certificate, as rustls wants).
fn api_certificate(addr: Ipv4Addr, dir: &Path) {
    let p = |f: &str| s(&dir.join(f));
    let openssl = |args: &[&str]| run(&mut cmd("openssl", args));
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    openssl(&[&["req", "-x509"][..], &ec, &["-days", "2", "-subj", "/CN=xlb test: pebble API CA", "-keyout", &p("ca.key"), "-out", &p("ca.pem")]].concat());
    openssl(&[&["req"][..], &ec, &["-subj", "/CN=pebble", "-keyout", &p("api.key"), "-out", &p("api.csr")]].concat());
    std::fs::write(dir.join("ext.cnf"), format!("subjectAltName=IP:{addr}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")).expect("write ext.cnf");
    let ca_args = ["-CA", &p("ca.pem"), "-CAkey", &p("ca.key"), "-CAcreateserial"];
    openssl(&[&["x509", "-req", "-in", &p("api.csr")][..], &ca_args, &["-days", "2", "-extfile", &p("ext.cnf"), "-out", &p("api.pem")]].concat());
}
