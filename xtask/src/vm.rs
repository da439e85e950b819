//! `cargo xtask vm`: the data plane tests on other kernels, each booted under QEMU.
//!
//! The design follows aya's `cargo xtask integration-test vm`: the test binaries are built on
//! the host and packed into an initramfs together with a busybox, iproute2, ethtool and curl
//! (with the shared libraries `ldd` names) and the kernel modules the tests load; its `/init`
//! mounts the usual file systems, runs each test binary and prints `XLB-VM-...` markers on the
//! serial console, then powers the machine off. QEMU boots each kernel with it (KVM when that
//! boots, TCG otherwise); pass/fail and timings come from the console.
//!
//! Suites: `fixtures` (lb-userspace's `xdp_fixtures`, frames through `BPF_PROG_TEST_RUN`),
//! `topology` (xlb-tests' `topology`: xlb and xlb-testd in namespaces) and `eastwest`
//! (xlb-tests' `eastwest`: socket-level balancing in a cgroup v2 child). The Docker tests
//! stay on the host: the guest has no Docker.
//!
//! Kernels are Debian packages fetched with apt through a private configuration (sources,
//! lists and downloads under `target/vm-cache/apt/SUITE`: the host's apt state is not
//! touched) and unpacked under `target/vm-cache/kernels`, so later runs need no network.
mod binaries;
mod cpio;
mod initramfs;
mod kernel;
mod modules;
mod qemu;
mod suite;

use std::{
    env, fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{apt, cmd};

use self::{binaries::build_binaries, kernel::Kernel};
pub use self::{qemu::Accel, suite::Suite};

/// Kernels booted when no `--kernel` is given.
const DEFAULT_KERNELS: &[&str] = &["host", "6.1"];

#[derive(clap::Args)]
pub struct Options {
    /// Kernel to boot; repeatable. `host` (the running kernel's image in /boot), a Debian
    /// kernel line (`5.10`: bullseye, `6.1`: bookworm, `6.12`: bookworm's 6.12), or
    /// `SUITE:PACKAGE` (e.g. `bookworm:linux-image-6.1.0-50-amd64`). Default: host and 6.1.
    #[arg(long = "kernel", value_name = "VERSION")]
    kernels: Vec<String>,
    /// Suite to run in each guest; repeatable. Default: all.
    #[arg(long = "suite", value_enum, value_name = "SUITE")]
    suites: Vec<Suite>,
    /// QEMU accelerator: auto is KVM when /dev/kvm opens and a guest boots with it, else TCG.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    accel: Accel,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048)]
    memory: u32,
    /// Guest CPUs (default: the host's, at most 4).
    #[arg(long)]
    cpus: Option<u32>,
    /// How many times the tests that failed are run again (only those): under TCG a loaded
    /// host can stretch a timing check. A test that passes again is reported as flaky.
    #[arg(long, default_value_t = 1)]
    retries: u32,
    /// Time limit for each kernel (boot and every suite), in seconds.
    #[arg(long, default_value_t = 1200)]
    timeout: u64,
    /// Arguments for the test binaries (filters, `--nocapture`, ...), after `--`.
    #[arg(last = true)]
    args: Vec<String>,
}

/// Builds the test binaries, boots each kernel with them and prints a table of the results;
/// fails if any kernel did not boot or any suite failed.
pub fn vm(opts: &Options) -> Result<()> {
    let started = Instant::now();
    ensure_host_tools()?;
    let suites: Vec<Suite> = if opts.suites.is_empty() {
        Suite::ALL.to_vec()
    } else {
        Suite::ALL
            .into_iter()
            .filter(|s| opts.suites.contains(s))
            .collect()
    };
    let cache = cache_dir();
    // Kernels first: a wrong name should fail before minutes of building.
    let (kernels, skipped) = kernels(opts, &cache)?;

    let bins = build_binaries(&suites, &cache.join("bin"))?;
    let cpus = opts.cpus.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(2, |n| n.get().min(4) as u32)
    });
    let mut accel = opts.accel;
    let mut results = Vec::new();
    for k in &kernels {
        let initrd = cache.join(format!("initramfs-{}.cpio", k.release));
        let t = Instant::now();
        let (run, skip) = suites_for(k, &suites);
        if run.is_empty() {
            results.push(Booted { kernel: k, accel, outcome: None, run, skip });
            continue;
        }
        let modules = initramfs::write(&initrd, k, &bins, &run, &opts.args, opts.retries)?;
        eprintln!(
            "vm: {} ({}): initramfs {} MiB in {:.1}s, modules: {}",
            k.spec,
            k.release,
            fs::metadata(&initrd).map_or(0, |m| m.len() >> 20),
            t.elapsed().as_secs_f64(),
            if modules.is_empty() {
                "none".to_string()
            } else {
                modules.join(" ")
            }
        );
        let mut boot = qemu::Boot {
            label: k.spec.clone(),
            kernel: k,
            initrd: &initrd,
            accel: accel.pick(),
            memory: opts.memory,
            cpus,
            timeout: Duration::from_secs(opts.timeout),
        };
        let mut outcome = qemu::run(&boot)?;
        if !outcome.booted() && boot.accel == qemu::Accel::Kvm && accel == qemu::Accel::Auto {
            eprintln!(
                "vm: KVM did not boot {} ({}): using TCG from here on",
                k.spec, outcome.end
            );
            accel = qemu::Accel::Tcg;
            boot.accel = qemu::Accel::Tcg;
            outcome = qemu::run(&boot)?;
        } else if accel == qemu::Accel::Auto {
            // KVM worked (or was never tried): keep what worked.
            accel = boot.accel;
        }
        results.push(Booted { kernel: k, accel: boot.accel, outcome: Some(outcome), run, skip });
    }
    report(started, &suites, &results, &skipped)
}

/// One kernel's turn: the accelerator it ran with, what the console said (`None`: not
/// booted, every suite skipped), the suites run and those skipped, with why.
struct Booted<'a> {
    kernel: &'a Kernel,
    accel: Accel,
    outcome: Option<qemu::Outcome>,
    run: Vec<Suite>,
    skip: Vec<String>,
}

/// The kernels `--kernel` names (or the defaults), each booted once, and the defaults that
/// are not available here, with why (a named kernel that is not is an error).
fn kernels(opts: &Options, cache: &Path) -> Result<(Vec<Kernel>, Vec<String>)> {
    let explicit = !opts.kernels.is_empty();
    let specs: Vec<String> = if explicit {
        opts.kernels.clone()
    } else {
        DEFAULT_KERNELS.iter().map(|s| s.to_string()).collect()
    };
    let mut kernels: Vec<Kernel> = Vec::new();
    let mut skipped = Vec::new();
    for spec in &specs {
        match kernel::resolve(spec, &cache.join("kernels"), &cache.join("apt"))? {
            kernel::Resolved::Found(k) => {
                if let Some(same) = kernels.iter().find(|o| o.release == k.release) {
                    eprintln!(
                        "vm: {spec} is {} like {}: booted once",
                        k.release, same.spec
                    );
                } else {
                    kernels.push(k);
                }
            }
            kernel::Resolved::Unavailable(why) if !explicit => {
                eprintln!("vm: skipping {spec}: {why}");
                skipped.push(format!("{spec}: {why}"));
            }
            kernel::Resolved::Unavailable(why) => bail!("kernel {spec}: {why}"),
        }
    }
    if kernels.is_empty() {
        bail!("no kernel to boot");
    }
    Ok((kernels, skipped))
}

/// The suites `kernel` can run, and a line for each it cannot.
fn suites_for(kernel: &Kernel, suites: &[Suite]) -> (Vec<Suite>, Vec<String>) {
    let (run, skip): (Vec<Suite>, Vec<Suite>) = suites.iter().partition(|s| {
        s.needs()
            .is_none_or(|(min, _)| kernel.version().is_none_or(|v| v >= min))
    });
    let skip: Vec<String> = skip
        .iter()
        .map(|s| format!("{}: skipped ({})", s.name(), s.needs().map_or("", |n| n.1)))
        .collect();
    for s in &skip {
        eprintln!("vm: {}: {s}", kernel.spec);
    }
    (run, skip)
}

/// Prints the table of results; fails if any kernel did not boot or any suite failed.
fn report(started: Instant, suites: &[Suite], results: &[Booted], skipped: &[String]) -> Result<()> {
    eprintln!(
        "\nvm: results ({:.0}s in all, suites: {})",
        started.elapsed().as_secs_f64(),
        suites
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut failed = Vec::new();
    for Booted { kernel: k, accel, outcome, run, skip } in results {
        let summary = outcome
            .as_ref()
            .map_or("not booted".to_string(), |o| o.summary());
        eprintln!(
            "  {} ({}, {}, {}): {summary}",
            k.spec,
            k.release,
            k.source,
            accel.name()
        );
        for s in outcome.iter().flat_map(|o| &o.suites) {
            eprintln!("      {}", s.line());
        }
        for s in skip {
            eprintln!("      {s}");
        }
        if outcome.as_ref().is_some_and(|o| !o.passed(run)) {
            failed.push(k.spec.clone());
        }
    }
    for s in skipped {
        eprintln!("  skipped {s}");
    }
    if !failed.is_empty() {
        bail!("failed on {}", failed.join(", "));
    }
    Ok(())
}

/// `target/vm-cache` (or under `CARGO_TARGET_DIR`).
fn cache_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root");
    let target = match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    };
    target.join("vm-cache")
}

/// QEMU and a busybox; apt installs them when missing (as root).
fn ensure_host_tools() -> Result<()> {
    if cmd::which("busybox").is_none() {
        apt::ensure(&["busybox-static"])?;
    }
    if cmd::which(qemu::QEMU).is_none() {
        // QEMU's packages must come from the suite of an installed qemu-utils (they share
        // qemu-system-common): some machines carry qemu-utils from backports, which breaks
        // the release's own QEMU.
        let backports = apt::version("qemu-utils").is_some_and(|v| v.contains("~bpo"));
        let release = if backports { Some(apt::enable_backports()?) } else { None };
        apt::ensure_from(&["qemu-system-x86"], release.as_deref())?;
    }
    for tool in ["ldd", "dpkg-deb", "apt-get", "ip", "ethtool", "curl"] {
        if cmd::which(tool).is_none() {
            bail!("{tool} is not on PATH: run `cargo xtask setup` as root");
        }
    }
    Ok(())
}
