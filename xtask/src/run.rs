//! `cargo xtask run`: build, then hand the terminal over to `xlb run`.
use std::{ffi::OsString, process::Command};

use anyhow::{Result, bail};

use crate::{build, cmd};

/// Builds, then replaces this process with `xlb run ARGS`, through sudo when not root
/// (attaching XDP and TC programs needs root).
pub fn run(release: bool, args: &[OsString]) -> Result<()> {
    let bin = build::build(release)?;
    let mut xlb = if cmd::is_root() {
        Command::new(&bin)
    } else if cmd::which("sudo").is_some() {
        let mut sudo = Command::new("sudo");
        sudo.arg(&bin);
        sudo
    } else {
        bail!("xlb needs root and sudo is not installed: run `cargo xtask run` as root");
    };
    xlb.arg("run").args(args);
    Err(cmd::exec(&mut xlb))
}
