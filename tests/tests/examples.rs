//! examples/: each folder brought up with docker-compose as its README says (`XLB_IFACE`
//! set to the host's end of a client namespace, `XLB_BPFFS` to the tests' BPF file system),
//! its promise checked with curl from that namespace, then `docker-compose down`:
//!
//! - `registry_trio`: round robin gives each registry a third, least_conn, least_time and
//!   random reach all three, ip_hash keeps a client on one, the URI hash keeps a path on
//!   one and spreads paths, the kernel's maglev spreads connections;
//! - `pinning`: the `app` header and cookie name the backend, no name (or an unknown one)
//!   is balanced;
//! - `subdomains`: `api.app.dev` spreads over the `--scale`d replicas, `app.app.dev` is the
//!   frontend, another host is 404, scaling down leaves only the replica that is left;
//! - `dns_discovery`: `80:webserver:8080` (kernel TCP) follows the replicas up and down;
//! - `hostname`: the two replicas' hostnames alternate.
//!
//! Needs root, Docker and docker-compose; builds the images as `cargo xtask image` does
//! (a static release xlb the first time: minutes). Each example takes under a minute.
//! Run with `cargo test -p xlb-tests --test examples -- --nocapture`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::Duration,
};

use xlb_tests::{
    Offload,
    compose::Compose,
    docker, image,
    outside::Outside,
    util::{cmd, try_run, wait_for},
    xlb::{BPFFS, ensure_bpffs, xlb_bin},
};

/// The client namespace's subnet (10.200.246.0/24), no other test's.
const SUBNET: u8 = 246;
/// How long replicas may take to be served after `up` (discovery, first probe).
const SERVED_WITHIN: Duration = Duration::from_secs(60);

/// An example up: its compose project, the client outside, and the xlb data plane removed
/// whatever happens (a failed `down` could leave it pinned in the tests' BPF file system).
struct Example {
    compose: Compose,
    out: Outside,
}

impl Example {
    /// `docker-compose up -d [--scale ...]` in examples/`name`, then waits for xlb's `ready`.
    fn up(name: &str, scale: &[(&str, usize)]) -> Example {
        docker::require_docker();
        ensure_bpffs();
        image::build().unwrap_or_else(|e| panic!("building {}: {e}", image::IMAGE));
        image::build_backend().unwrap_or_else(|e| panic!("building {}: {e}", image::BACKEND));
        let out = Outside::new(SUBNET, Offload::On);
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name);
        let compose = Compose::at(&dir, &[("XLB_IFACE", &out.host_if), ("XLB_BPFFS", BPFFS)]);
        let example = Example { compose, out };
        example.compose.up(scale);
        let ready = wait_for(Duration::from_secs(30), Duration::from_millis(200), || example.logs().contains(" ready").then_some(()));
        assert!(ready.is_some(), "{name}: xlb did not become ready:\n{}", example.logs());
        example
    }

    fn logs(&self) -> String {
        self.compose.cli(&["logs", "--no-color", "xlb"]).unwrap_or_else(|e| e)
    }

    /// `count` GETs of `path` on `port` from the client, by one curl: the body (a backend's
    /// name) of each, in order. `new_conns`: each on its own connection (the kernel balances
    /// connections, not requests).
    fn names(&self, port: u16, path: &str, count: usize, headers: &[&str], new_conns: bool) -> Result<Vec<String>, String> {
        let url = format!("http://{}:{port}{path}{}[1-{count}]", self.out.host_ip, if path.contains('?') { "&n=" } else { "?n=" });
        let mut args = vec!["-sS", "--fail", "--max-time", "5", "-w", "\\n"];
        for h in headers {
            args.extend(["-H", h]);
        }
        if new_conns {
            args.extend(["-H", "Connection: close"]);
        }
        args.push(&url);
        let out = self.out.client.try_run("curl", &args)?;
        let names: Vec<String> = out.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
        if names.len() == count { Ok(names) } else { Err(format!("{count} requests, {} answers: {out}", names.len())) }
    }

    /// [`Self::names`] once every name of `want` answers (bounded by [`SERVED_WITHIN`]).
    fn served(&self, port: u16, headers: &[&str], new_conns: bool, want: impl Fn(&BTreeSet<String>) -> bool) -> BTreeSet<String> {
        let mut last = Err(String::new());
        let got = wait_for(SERVED_WITHIN, Duration::from_millis(500), || {
            last = self.names(port, "/", 30, headers, new_conns);
            let seen: BTreeSet<String> = last.as_ref().ok()?.iter().cloned().collect();
            want(&seen).then_some(seen)
        });
        got.unwrap_or_else(|| panic!("port {port}: never served as expected; last: {last:?}\nxlb:\n{}", self.logs()))
    }

    /// The HTTP status of `GET /` with `headers`.
    fn status(&self, port: u16, headers: &[&str]) -> String {
        let url = format!("http://{}:{port}/", self.out.host_ip);
        let mut args = vec!["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"];
        for h in headers {
            args.extend(["-H", h]);
        }
        args.push(&url);
        self.out.client.try_run("curl", &args).unwrap_or_else(|e| e)
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("xlb's log:\n{}", self.logs());
        }
        let _ = self.compose.cli(&["down", "-t", "10", "--remove-orphans"]);
        let _ = try_run(&mut cmd(xlb_bin().to_str().unwrap(), ["down", "--bpffs", BPFFS, "--iface", &self.out.host_if]));
    }
}

fn tally(names: &[String]) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for n in names {
        *t.entry(n.clone()).or_default() += 1;
    }
    t
}

fn ok(r: Result<Vec<String>, String>) -> Vec<String> {
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn registry_trio() {
    let ex = Example::up("registry-trio", &[]);
    let trio: BTreeSet<String> = ["registry1", "registry2", "registry3"].map(String::from).into();
    ex.served(8002, &[], false, |s| *s == trio);

    let rr = tally(&ok(ex.names(8002, "/", 30, &[], false)));
    assert_eq!(rr, trio.iter().map(|n| (n.clone(), 10)).collect(), "round_robin: a third each");
    for (port, method) in [(8003, "least_conn"), (8006, "least_time header"), (8007, "random")] {
        let seen = ex.served(port, &[], false, |s| *s == trio);
        eprintln!("{method}: {seen:?}");
    }
    let ip_hash = tally(&ok(ex.names(8004, "/", 20, &[], false)));
    assert_eq!(ip_hash.len(), 1, "ip_hash keeps one client on one registry: {ip_hash:?}");
    // The key is the path and query (the backend answers `/` only, so the query varies).
    let same: BTreeSet<String> = (0..10).map(|_| ok(ex.names(8005, "/?tag=1", 1, &[], false)).remove(0)).collect();
    assert_eq!(same.len(), 1, "hash uri: one URI, one registry: {same:?}");
    let paths: BTreeSet<String> = (0..30).map(|i| ok(ex.names(8005, &format!("/?image={i}"), 1, &[], false)).remove(0)).collect();
    assert!(paths.len() >= 2, "hash uri: 30 URIs on one registry: {paths:?}");
    let maglev = ex.served(8008, &[], true, |s| s.len() >= 2);
    assert!(maglev.is_subset(&trio), "{maglev:?}");
    println!("EXAMPLE registry-trio: round robin {rr:?}, ip_hash {ip_hash:?}, hash uri {} registries over 30 URIs, maglev {maglev:?}", paths.len());
}

fn pinning() {
    let ex = Example::up("pinning", &[]);
    let apps: BTreeSet<String> = ["app1", "app2", "app3"].map(String::from).into();
    ex.served(8000, &[], false, |s| *s == apps);
    let header = tally(&ok(ex.names(8000, "/", 10, &["app: app2"], false)));
    assert_eq!(header, BTreeMap::from([("app2".into(), 10)]), "pinned by header");
    let cookie = tally(&ok(ex.names(8000, "/", 10, &["Cookie: app=app3"], false)));
    assert_eq!(cookie, BTreeMap::from([("app3".into(), 10)]), "pinned by cookie");
    let balanced = tally(&ok(ex.names(8000, "/", 30, &[], false)));
    assert_eq!(balanced, apps.iter().map(|n| (n.clone(), 10)).collect(), "no pin: round robin");
    let unknown = tally(&ok(ex.names(8000, "/", 30, &["app: app9"], false)));
    assert_eq!(unknown.len(), 3, "an unknown name is balanced: {unknown:?}");
    println!("EXAMPLE pinning: header {header:?}, cookie {cookie:?}, none {balanced:?}");
}

fn subdomains() {
    let ex = Example::up("subdomains", &[("api", 3)]);
    let api = ["Host: api.app.dev"];
    let replicas = ex.served(80, &api, false, |s| s.len() == 3);
    let spread = tally(&ok(ex.names(80, "/", 30, &api, false)));
    assert_eq!(spread, replicas.iter().map(|n| (n.clone(), 10)).collect(), "api.app.dev over three replicas");
    let front = tally(&ok(ex.names(80, "/", 5, &["Host: app.app.dev"], false)));
    assert_eq!(front, BTreeMap::from([("frontend".into(), 5)]));
    assert_eq!(ex.status(80, &["Host: other.dev"]), "404");
    ex.compose.up(&[("api", 1)]);
    let left = ex.served(80, &api, false, |s| s.len() == 1);
    assert!(left.is_subset(&replicas), "{left:?} not one of {replicas:?}");
    println!("EXAMPLE subdomains: --scale api=3 {spread:?}; app.app.dev frontend; --scale api=1 {left:?}");
}

fn dns_discovery() {
    let ex = Example::up("dns-discovery", &[("webserver", 2)]);
    let two = ex.served(80, &[], true, |s| s.len() == 2);
    ex.compose.up(&[("webserver", 3)]);
    let three = ex.served(80, &[], true, |s| s.len() == 3);
    assert!(two.is_subset(&three), "{two:?} {three:?}");
    ex.compose.up(&[("webserver", 1)]);
    let one = ex.served(80, &[], true, |s| s.len() == 1);
    assert!(one.is_subset(&three), "{one:?} {three:?}");
    println!("EXAMPLE dns-discovery: 2 {two:?} -> 3 {three:?} -> 1 {one:?}");
}

fn hostname() {
    let ex = Example::up("hostname", &[]);
    ex.served(8080, &[], false, |s| s.len() == 2);
    let names = ok(ex.names(8080, "/", 10, &[], false));
    assert!(names.windows(2).all(|w| w[0] != w[1]), "the two hostnames alternate: {names:?}");
    assert_eq!(names.iter().collect::<BTreeSet<_>>().len(), 2, "{names:?}");
    println!("EXAMPLE hostname: {names:?}");
}

/// The five in one test, under one hold of the tests' lock (other suites queue for it
/// between tests); each runs to its end, and every failure is reported.
#[test]
fn examples_keep_their_promises() {
    let _g = xlb_tests::serial();
    xlb_tests::preflight();
    let examples: [(&str, fn()); 5] =
        [("registry-trio", registry_trio), ("pinning", pinning), ("subdomains", subdomains), ("dns-discovery", dns_discovery), ("hostname", hostname)];
    let failed: Vec<&str> = examples
        .iter()
        .filter(|(name, f)| {
            eprintln!("--- example {name}");
            std::panic::catch_unwind(f).is_err()
        })
        .map(|(name, _)| *name)
        .collect();
    assert!(failed.is_empty(), "examples that failed (their panics above): {failed:?}");
}
