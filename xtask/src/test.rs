//! `cargo xtask test`: every test of the workspace, with plain `cargo test` output, then
//! the fuzz targets for a short while; at the end one line per test binary and fuzz
//! target: cases tried, failures.
use std::ffi::OsString;

use anyhow::{Result, bail};

use crate::{build, counted::run_counted, fuzz, layers, setup, sizes};

/// Seconds each fuzz target runs in `cargo xtask test`.
const FUZZ_SECONDS: u64 = 10;

/// One `cargo test` run.
struct Suite {
    name: &'static str,
    cargo_args: &'static [&'static str],
    harness_args: &'static [&'static str],
}

const SUITES: &[Suite] = &[
    Suite {
        name: "crate tests",
        // lb-ebpf only builds for the BPF target. The kernel micro-benchmark is built too
        // (it is run only by `cargo xtask bench`), so that it cannot rot unseen.
        cargo_args: &["--workspace", "--exclude", "lb-ebpf", "--exclude", "xlb-tests", "--features", "xtask/kernel-bench"],
        harness_args: &[],
    },
    Suite {
        name: "xlb-tests",
        cargo_args: &["--package", "xlb-tests"],
        // One at a time: they share the host's network namespaces, routes and Docker.
        harness_args: &["--test-threads=1"],
    },
];

/// Checks the host, builds `xlb`, then runs each suite; fails if any test failed.
/// `args` go to the test binaries (filters, `--nocapture`, ...).
pub fn test(args: &[OsString]) -> Result<()> {
    setup::check_test()?;
    layers::check(layers::GATED)?;
    sizes::check(sizes::ALL)?;
    let bin = build::build(false)?;
    let (mut failed, mut summary) = (Vec::new(), Vec::new());
    for suite in SUITES {
        let mut cargo = build::cargo();
        cargo.args(["test", "--no-fail-fast"]).args(suite.cargo_args).env("XLB_BIN", &bin).arg("--").args(suite.harness_args).args(args);
        // A failing suite does not stop the next: CI should report every failure at once.
        if let Err(err) = run_counted(&mut cargo, &mut summary) {
            eprintln!("{}: {err:#}", suite.name);
            failed.push(suite.name);
        }
    }
    // A filter given for the tests selects no fuzz target.
    if args.is_empty() && let Err(err) = fuzz::run(FUZZ_SECONDS, None, &mut summary) {
        eprintln!("fuzz: {err:#}");
        failed.push("fuzz");
    }
    println!("\nsummary (cases tried, failures):");
    for line in &summary {
        println!("  {line}");
    }
    if !failed.is_empty() {
        bail!("{} failed", failed.join(" and "));
    }
    Ok(())
}
