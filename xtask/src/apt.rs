//! Debian packages, installed only when missing so that setup stays a fast no-op.
use std::process::Command;

use anyhow::{Result, bail};

use crate::cmd;

/// Installs those of `packages` that are not installed, after one `apt-get update`.
pub fn ensure(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !cmd::is_root() {
        bail!(
            "packages missing: {list}: run `cargo xtask setup` as root (or `sudo apt-get install {list}`)"
        );
    }
    if cmd::which("apt-get").is_none() {
        bail!("packages missing: {list}, and there is no apt-get: install them by hand");
    }
    cmd::run(apt_get().arg("update"))?;
    cmd::run(
        apt_get()
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )
}

/// Whether dpkg has `package` fully installed (not merely known or half-removed).
fn installed(package: &str) -> bool {
    cmd::output(Command::new("dpkg").args(["-s", package]))
        .is_ok_and(|status| status.lines().any(|l| l == "Status: install ok installed"))
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    // CI has no stdin: no package may stop to ask.
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}
