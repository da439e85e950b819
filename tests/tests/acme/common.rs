//! What every ACME test sets up: the namespace topology (client, LB with xlb, one backend),
//! the test's DNS server and pebble in the client namespace, and xlb's config.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use xlb::acme::CertStatus;
use xlb_tests::{
    Topology, Xlb,
    dns::DnsServer,
    netns::NetNs,
    status::xlb_status,
    topology::{CLIENT_V4, LB_CLIENT_V4, TESTD_PORT},
    util::{TempDir, TempFile, wait_for},
};

use super::pebble::Pebble;

/// The name ordered: the DNS server answers it with xlb's address (the LB's, client side).
pub const NAME: &str = "app.xlb.test";
/// How long an order may take end to end (pebble validates at once: NOSLEEP).
pub const ISSUE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Ca {
    // Field order = drop order: pebble and the DNS server before their namespace.
    pub pebble: Option<Pebble>,
    pub dns: DnsServer,
    pub state: TempDir,
    /// Pebble's files (its HTTPS certificate and CA), kept across its restarts.
    pub pebble_dir: TempDir,
    pub topo: Topology,
}

impl Ca {
    /// A topology with one backend, the DNS server and pebble (validating on port 80).
    pub fn start() -> Ca {
        let topo = Topology::builder().backends(1).build();
        let dns = DnsServer::start(&topo.client, NAME, &[LB_CLIENT_V4]);
        let pebble_dir = TempDir::new();
        let pebble = Pebble::start(&topo.client, CLIENT_V4, dns.addr(), 80, pebble_dir.path());
        Ca { pebble: Some(pebble), dns, state: TempDir::new(), pebble_dir, topo }
    }

    /// Starts pebble again after [`Pebble::stop`] (a new issuing root, no accounts).
    pub fn restart_pebble(&mut self) {
        self.pebble = Some(Pebble::start(&self.topo.client, CLIENT_V4, self.dns.addr(), 80, self.pebble_dir.path()));
    }

    pub fn pebble(&self) -> &Pebble {
        self.pebble.as_ref().expect("pebble is running")
    }

    /// The `acme:` block for `names`, with short retries (1 s doubling to 8 s).
    pub fn acme_yaml(&self, names: &[&str]) -> String {
        let pebble = self.pebble();
        format!(
            "acme:\n  directory: {}\n  email: ops@xlb.test\n  state_dir: {}\n  ca_roots: {}\n  names: [{}]\n  retry_min: 1s\n  retry_max: 8s\n",
            pebble.directory(),
            self.state.path().display(),
            pebble.api_ca.display(),
            names.join(", ")
        )
    }

    /// xlb's config: service `web` (HTTP on port 80, the port pebble validates on) before
    /// the backend, and the `acme:` block.
    pub fn yaml(&self, names: &[&str]) -> String {
        let b = &self.topo.backends[0];
        format!(
            "services:\n  - name: web\n    port: 80\n    protocol: http\n    backends: [{{ address: \"{}\", port: {TESTD_PORT} }}]\n{}",
            b.v4,
            self.acme_yaml(names)
        )
    }

    /// Starts xlb in the LB namespace with [`Ca::yaml`].
    pub fn start_xlb(&self, names: &[&str]) -> (Xlb, TempFile) {
        let cfg = TempFile::new(".yaml", &self.yaml(names));
        (self.topo.start_xlb(Some(cfg.path()), &[]), cfg)
    }

    pub fn cert_path(&self, name: &str) -> PathBuf {
        self.state.path().join("certs").join(format!("{name}.crt"))
    }

    pub fn key_path(&self, name: &str) -> PathBuf {
        self.state.path().join("certs").join(format!("{name}.key"))
    }
}

/// The certificate status of `name` in `xlb status --json` (run in `ns`).
pub fn cert_status(ns: &NetNs, name: &str) -> Option<CertStatus> {
    xlb_status(ns).ok()?.snapshot.acme.into_iter().find(|c| c.name == name)
}

/// Waits until `name`'s status satisfies `ok`; panics with the last status and both logs.
pub fn wait_status(ns: &NetNs, xlb: &Xlb, pebble: Option<&Pebble>, name: &str, timeout: Duration, ok: impl Fn(&CertStatus) -> bool) -> CertStatus {
    let mut last = None;
    let found = wait_for(timeout, Duration::from_millis(250), || {
        last = cert_status(ns, name);
        last.clone().filter(|s| ok(s))
    });
    found.unwrap_or_else(|| {
        let pebble_log = pebble.map(Pebble::log).unwrap_or_default();
        panic!("{name}: last status {last:?} after {timeout:?}\nxlb's log:\n{}\npebble's log:\n{pebble_log}", xlb.log())
    })
}

/// A file's permission bits.
pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).mode() & 0o777
}

/// The lines of xlb's log about `name` that contain `what`.
pub fn log_lines(xlb: &Xlb, name: &str, what: &str) -> Vec<String> {
    xlb.log().lines().filter(|l| l.contains(what) && l.contains(name)).map(str::to_owned).collect()
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
}
