//! `cargo xtask setup`, and the checks the other tasks make before they start so that a
//! missing piece shows up as one line saying what to do rather than deep in a build log.
use std::{path::Path, process::Command, time::Instant};

use anyhow::{Result, bail};

use crate::{apt, cmd, docker, linker, toolchain};

/// Programs the integration tests call, with the Debian package that provides each.
const TEST_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("iptables", "iptables"),
    ("curl", "curl"),
    ("docker", "docker.io"),
    // The dashboard test loads the page in a headless browser.
    ("chromium", "chromium"),
    // The differential HTTP test (tests/tests/proxy/differential/) runs real nginx beside xlb.
    ("nginx", "nginx"),
    // libfuzzer-sys compiles libFuzzer (C++) for the fuzz targets (fuzz/).
    ("c++", "g++"),
    // tests/tests/acme/: a local ACME CA, and the checks of what it issued.
    ("pebble", "pebble"),
    ("openssl", "openssl"),
    // tests/tests/tls/: HTTPS and gRPC backends (with TEST_PYTHON's modules).
    ("python3", "python3"),
    // tests/tests/scaleout.rs: the router and the xlb nodes' BGP daemons.
    ("bird", "bird2"),
    // tests/tests/proxy/slow_clients.rs: slowloris and slow bodies, and many HTTP/2 streams.
    ("slowhttptest", "slowhttptest"),
    ("h2load", "nghttp2-client"),
    // Faults under a bounded load (proxy/faults.rs, dns.rs, restart.rs, acme/failures.rs).
    ("wrk", "wrk"),
];

/// Python modules the integration tests import, with the Debian package of each.
const TEST_PYTHON: &[(&str, &str)] = &[
    // tests/tests/tls/grpc.rs: a real gRPC server and client (generic handlers, no protoc).
    ("grpc", "python3-grpcio"),
];

/// Debian's Python, the one apt's `python3-*` packages serve and the TLS tests run
/// (`xlb_tests::tls::PYTHON`): a pyenv or venv `python3` earlier on PATH has not got them.
const PYTHON: &str = "/usr/bin/python3";

/// Whether Debian's Python can import `module`.
fn python_has(module: &str) -> bool {
    cmd::probe(Command::new(PYTHON).args(["-c", &format!("import {module}")]))
}

/// Installs whatever is missing; each step is skipped when its piece is already there,
/// and says what it does and how long it took.
pub fn setup() -> Result<()> {
    let started = Instant::now();
    step(1, "rust-src (the BPF target builds core from source)", toolchain::ensure_rust_src)?;
    step(2, "bpf-linker, built against this rustc's LLVM (minutes if missing)", || {
        if !linker::works() {
            linker::install()?;
            if !linker::works() {
                bail!("bpf-linker was installed but does not start: is cargo's bin directory on PATH?");
            }
        }
        Ok(())
    })?;
    // docker.io only when no docker client is there: it may come from another package.
    let packages: Vec<&str> = TEST_TOOLS
        .iter()
        .filter(|(tool, package)| *package != "docker.io" || cmd::which(tool).is_none())
        .map(|(_, package)| *package)
        .chain(TEST_PYTHON.iter().filter(|(module, _)| !python_has(module)).map(|(_, package)| *package))
        .collect();
    step(3, "Debian packages the tests call (apt-get, if any is missing)", || apt::ensure(&packages))?;
    step(4, "the benchmark's packages (wrk, nginx, HAProxy, h2load)", ensure_bench_packages)?;
    step(5, "the Docker daemon", docker::ensure_running)?;
    eprintln!("setup: everything is in place ({:.0} s)", started.elapsed().as_secs_f64());
    Ok(())
}

/// One of setup's [`STEPS`] steps: a line before it (what it waits for) and one after it with
/// how long it took.
fn step(n: usize, what: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    eprintln!("setup [{n}/{STEPS}] {what}");
    let started = Instant::now();
    let r = f();
    eprintln!("setup [{n}/{STEPS}] {} in {:.1} s", if r.is_ok() { "done" } else { "failed" }, started.elapsed().as_secs_f64());
    r
}

const STEPS: usize = 5;

/// What building the kernel programs needs.
pub fn check_build() -> Result<()> {
    if !toolchain::has_rust_src()? {
        bail!("rust-src is not installed for this toolchain: run `cargo xtask setup`");
    }
    if !linker::works() {
        bail!("bpf-linker is missing or does not start: run `cargo xtask setup`");
    }
    Ok(())
}

/// What running the tests needs on top of the build.
pub fn check_test() -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "the tests need root (XDP, network namespaces, Docker): run `cargo xtask test` as root"
        );
    }
    for (tool, _) in TEST_TOOLS {
        if cmd::which(tool).is_none() {
            bail!("{tool} is not on PATH: run `cargo xtask setup` as root");
        }
    }
    for (module, package) in TEST_PYTHON {
        if !python_has(module) {
            bail!("{PYTHON} cannot import {module} ({package}): run `cargo xtask setup` as root");
        }
    }
    if !docker::answers() {
        bail!(
            "`docker info` failed, the Docker daemon does not answer: run `cargo xtask setup` as root to start it"
        );
    }
    Ok(())
}

/// Debian packages the benchmark runs (the kernel tools come with `cargo xtask setup`).
/// h2load (nghttp2-client) loads the HTTP/2 rows.
const BENCH_PACKAGES: &[&str] = &["wrk", "nghttp2-client", "nginx", "libnginx-mod-stream", "haproxy", "curl", "iproute2", "fonts-dejavu-core"];

/// Installs what is missing for `cargo xtask bench` (also part of `cargo xtask setup`). Debian starts the nginx
/// and HAProxy services it installs on hosts that run systemd: the benchmark runs its own
/// instances in namespaces, so services it caused to be installed are stopped and
/// disabled again.
pub fn ensure_bench_packages() -> Result<()> {
    let had = ["nginx", "haproxy"].map(|p| cmd::which(p).is_some());
    apt::ensure(BENCH_PACKAGES)?;
    if Path::new("/run/systemd/system").exists() {
        for (name, had) in ["nginx", "haproxy"].into_iter().zip(had) {
            if !had {
                let _ = cmd::probe(Command::new("systemctl").args(["disable", "--now", name]));
            }
        }
    }
    Ok(())
}
