//! Debian packages, installed only when missing so that setup stays a fast no-op.
use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::cmd;

/// Installs those of `packages` that are not installed, after one `apt-get update`.
pub fn ensure(packages: &[&str]) -> Result<()> {
    ensure_from(packages, None)
}

/// [`ensure`], taking the packages from `release` (apt's `-t`, e.g. `bookworm-backports`)
/// when one is given.
pub fn ensure_from(packages: &[&str], release: Option<&str>) -> Result<()> {
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
    let mut install = apt_get();
    install.args(["install", "-y", "--no-install-recommends"]);
    if let Some(release) = release {
        install.args(["-t", release]);
    }
    cmd::run(install.args(&missing))
}

/// The installed version of `package`, if any.
pub fn version(package: &str) -> Option<String> {
    let v = cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Version}", package])).ok()?;
    let v = v.trim();
    (installed(package) && !v.is_empty()).then(|| v.to_owned())
}

/// Adds Debian's backports suite of this release (`CODENAME-backports`) to apt's sources,
/// once, and returns its name.
pub fn enable_backports() -> Result<String> {
    let release = fs::read_to_string(OS_RELEASE).with_context(|| format!("reading {OS_RELEASE}"))?;
    let codename = release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"'))
        .filter(|c| !c.is_empty())
        .ok_or_else(|| anyhow!("{OS_RELEASE} names no VERSION_CODENAME: not Debian?"))?;
    let suite = format!("{codename}-backports");
    let source = Path::new(BACKPORTS_SOURCES);
    if !source.exists() {
        fs::write(
            source,
            format!(
                "# Written by `cargo xtask`: packages that must match ones installed from backports.\n\
                 Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {suite}\nComponents: main\n\
                 Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
            ),
        )
        .with_context(|| format!("writing {}", source.display()))?;
    }
    Ok(suite)
}

const OS_RELEASE: &str = "/etc/os-release";
const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/xlb-backports.sources";

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
