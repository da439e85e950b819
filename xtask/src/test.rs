//! `cargo xtask test`: every test of the workspace, with plain `cargo test` output, then
//! the fuzz targets for a short while; at the end one line per test binary and fuzz
//! target: cases tried, failures.
use std::{
    ffi::OsString,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{build, cmd, fuzz, layers, setup, sizes};

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

/// Runs `cargo test`, echoing its output, and adds to `summary` one line per test binary
/// from its `Running` and `test result:` lines.
fn run_counted(cargo: &mut Command, summary: &mut Vec<String>) -> Result<()> {
    // One pipe for both streams: cargo says `Running` on stderr, the binaries report on stdout.
    let (out, writer) = std::io::pipe().context("pipe")?;
    let mut child = cmd::spawn(cargo.stdout(writer.try_clone().context("pipe")?).stderr(writer))?;
    // Drop the command's copies of the write end, so the read end sees end of file.
    cargo.stdout(Stdio::null()).stderr(Stdio::null());
    let mut binary = String::from("?");
    for line in BufReader::new(out).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        if let Some(name) = line.trim().strip_prefix("Running ").or_else(|| line.trim().strip_prefix("Doc-tests ")) {
            binary = binary_name(name);
        } else if let Some(result) = line.strip_prefix("test result: ") {
            let (passed, failed) = counts(result);
            summary.push(format!("{binary}: {} tests, {failed} failures", passed + failed));
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

/// `unittests src/lib.rs (target/debug/deps/lb_userspace-0123abcd)` as
/// `lb_userspace unittests src/lib.rs`: the crate, then what cargo calls the binary.
fn binary_name(running: &str) -> String {
    match running.split_once(" (") {
        Some((what, path)) => {
            let file = path.trim_end_matches(')').rsplit('/').next().unwrap_or(path);
            let krate = file.rsplit_once('-').map_or(file, |(k, _)| k);
            format!("{krate} {what}")
        }
        None => format!("{running} doc-tests"),
    }
}

/// Passed and failed tests from a `test result:` line's rest
/// (`ok. 3 passed; 1 failed; 0 ignored; ...`).
fn counts(result: &str) -> (u64, u64) {
    let count = |word: &str| {
        result.split("; ").find_map(|p| p.rsplit(". ").next().and_then(|p| p.strip_suffix(word))).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
    };
    (count(" passed"), count(" failed"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn summary_lines() {
        assert_eq!(super::counts("ok. 35 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.2s"), (35, 0));
        assert_eq!(super::counts("FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out"), (3, 2));
        assert_eq!(super::binary_name("unittests src/lib.rs (target/debug/deps/lb_userspace-0123abcd)"), "lb_userspace unittests src/lib.rs");
        assert_eq!(super::binary_name("lb_common"), "lb_common doc-tests");
    }
}
