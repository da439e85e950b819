//! The programs each guest runs, built on the host.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, anyhow};

use super::suite::Suite;
use crate::{build, cmd};

/// What goes into each guest: `(path in the guest, file on the host)`.
pub struct Binaries {
    pub tests: Vec<(Suite, PathBuf)>,
    pub xlb: PathBuf,
    pub testd: PathBuf,
}

/// Builds xlb, xlb-testd and the suites' test binaries; returns copies without debug
/// information (a tenth of the size: the initramfs stays small enough to load quickly).
pub fn build_binaries(suites: &[Suite], dir: &Path) -> Result<Binaries> {
    let xlb = build::build(false)?;
    let testd = cargo_executable(
        &["build", "--package", "xlb-tests", "--bin", "xlb-testd"],
        "xlb-testd",
    )?;
    let mut tests = Vec::new();
    for &suite in suites {
        let (package, test) = suite.target();
        let exe = cargo_executable(
            &["test", "--no-run", "--package", package, "--test", test],
            test,
        )?;
        tests.push((suite, exe));
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let strip = |from: &Path, name: &str| -> Result<PathBuf> {
        let to = dir.join(name);
        if cmd::which("objcopy").is_some() {
            cmd::run(
                Command::new("objcopy")
                    .arg("--strip-debug")
                    .arg(from)
                    .arg(&to),
            )?;
        } else {
            fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
        }
        Ok(to)
    };
    Ok(Binaries {
        xlb: strip(&xlb, "xlb")?,
        testd: strip(&testd, "xlb-testd")?,
        tests: tests
            .iter()
            .map(|(suite, exe)| Ok((*suite, strip(exe, suite.name())?)))
            .collect::<Result<_>>()?,
    })
}

/// Runs `cargo ARGS --message-format=json` and returns the executable it built for the
/// target named `target`.
fn cargo_executable(args: &[&str], target: &str) -> Result<PathBuf> {
    let mut cargo = build::cargo();
    cargo
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        // Progress and errors stay visible; stdout carries the JSON.
        .stderr(Stdio::inherit());
    let out = cmd::output(&mut cargo)?;
    let mut found = None;
    for line in out.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["target"]["name"] == target
            && let Some(exe) = msg["executable"].as_str()
        {
            found = Some(PathBuf::from(exe));
        }
    }
    found.ok_or_else(|| {
        anyhow!(
            "cargo {} built no executable named {target}",
            args.join(" ")
        )
    })
}
