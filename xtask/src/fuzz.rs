//! `cargo xtask fuzz`: the libFuzzer targets of `fuzz/` (its own workspace), built with
//! coverage instrumentation on the stable toolchain (`-Cpasses=sancov-module`, as
//! cargo-fuzz does, without its nightly-only sanitizer flags) and run each for a bounded
//! time from its committed seeds (`fuzz/corpus/TARGET`). Inputs found on the way go to
//! `fuzz/target/corpus/TARGET` (not committed); a crash, a hang (10 s) or 1 GiB of memory
//! leaves its input in `fuzz/target/artifacts/TARGET/` and fails the run.
//!
//! `--dataplane` runs the data plane's differential test instead (lb-userspace's
//! `xdp_fixtures`, `differential`): generated frames through the real XDP program and a
//! reference model, fresh seeds for `--seconds` (root, like every fixture).
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{build, cmd, counted};

pub const TARGETS: &[&str] = &["config", "docker_labels", "guard", "headers", "route", "tls_hello"];

/// The instrumentation libFuzzer steers by, and `cfg(fuzzing)`.
const RUSTFLAGS: &str = "-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing";

#[derive(clap::Args)]
pub struct Options {
    /// How long each target runs.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Only this target (config, docker_labels, guard, headers, route).
    #[arg(long, conflicts_with = "dataplane")]
    target: Option<String>,
    /// The data plane's differential test (generated frames against a reference model)
    /// with fresh seeds, instead of the libFuzzer targets.
    #[arg(long)]
    dataplane: bool,
}

pub fn fuzz(o: &Options) -> Result<()> {
    if o.dataplane { dataplane(o.seconds, &mut Vec::new()) } else { run(o.seconds, o.target.as_deref(), &mut Vec::new()) }
}

/// Runs the differential data plane test with fresh seeds for `seconds`; its summary line
/// goes to `summary`.
fn dataplane(seconds: u64, summary: &mut Vec<String>) -> Result<()> {
    let mut cargo = build::cargo();
    cargo
        .args(["test", "--package", "lb-userspace", "--test", "xdp_fixtures", "--", "--exact", "differential::kernel_agrees_with_the_model", "--nocapture"])
        .env("XLB_DIFFERENTIAL_SECONDS", seconds.to_string());
    counted::run_counted(&mut cargo, summary).context("the differential data plane test")
}

/// Builds the targets, then runs each (or `only`) for `seconds`, printing one summary line
/// per target (also added to `summary`); fails if any found a failure.
pub fn run(seconds: u64, only: Option<&str>, summary: &mut Vec<String>) -> Result<()> {
    let targets: Vec<&str> = match only {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("no fuzz target {t:?}: one of {}", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    let bins = build_targets()?;
    let mut failed = Vec::new();
    for target in targets {
        let (tried, failure) = run_one(&bins, target, seconds)?;
        let line = format!("fuzz {target}: {tried} inputs tried in {seconds} s, {} failures", usize::from(failure.is_some()));
        println!("{line}");
        summary.push(line);
        if let Some(f) = failure {
            eprintln!("{f}");
            failed.push(target);
        }
    }
    if !failed.is_empty() {
        bail!("fuzz targets failed: {} (inputs in {})", failed.join(", "), dir().join("artifacts").display());
    }
    Ok(())
}

fn dir() -> PathBuf {
    build::root().join("fuzz/target")
}

/// Builds every target; returns the directory of the binaries.
fn build_targets() -> Result<PathBuf> {
    let vv = cmd::output(Command::new("rustc").arg("-vV"))?;
    let host = vv.lines().find_map(|l| l.strip_prefix("host: ")).context("`rustc -vV` printed no host")?.trim().to_owned();
    let mut cargo = build::cargo();
    // With --target, RUSTFLAGS reach the targets' code and not the build scripts; no target
    // loads the kernel programs, so lb-userspace embeds an empty object instead of building them.
    cargo
        .args(["build", "--release", "--bins", "--manifest-path", "fuzz/Cargo.toml", "--target", &host])
        .env("CARGO_TARGET_DIR", dir())
        .env("RUSTFLAGS", RUSTFLAGS)
        .env("XLB_NO_KERNEL_OBJECT", "1")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    cmd::run(&mut cargo)?;
    Ok(dir().join(host).join("release"))
}

/// Runs one target; the inputs it tried and, on a failure, what libFuzzer said.
fn run_one(bins: &Path, target: &str, seconds: u64) -> Result<(u64, Option<String>)> {
    let (corpus, artifacts) = (dir().join("corpus").join(target), dir().join("artifacts").join(target));
    for d in [&corpus, &artifacts] {
        fs::create_dir_all(d).with_context(|| format!("mkdir {}", d.display()))?;
    }
    let seeds = build::root().join("fuzz/corpus").join(target);
    let mut c = Command::new(bins.join(target));
    c.arg(format!("-max_total_time={seconds}"))
        .args(["-timeout=10", "-rss_limit_mb=1024", "-print_final_stats=1"])
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(&corpus)
        .arg(&seeds);
    eprintln!("$ {c:?}");
    let out = c.output().with_context(|| format!("running the fuzz target {target}"))?;
    let log = String::from_utf8_lossy(&out.stderr);
    let tried = log.lines().find_map(|l| l.strip_prefix("stat::number_of_executed_units:")).and_then(|n| n.trim().parse().ok()).unwrap_or(0);
    if out.status.success() {
        return Ok((tried, None));
    }
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    Ok((tried, Some(format!("fuzz {target} failed ({}):\n{}", out.status, tail.into_iter().rev().collect::<Vec<_>>().join("\n")))))
}
