//! `cargo xtask build`, and where the workspace's cargo and outputs are.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;

use crate::{cmd, setup};

/// Builds `xlb` (lb-userspace's build script builds and embeds the kernel programs) and
/// returns the binary's absolute path.
pub fn build(release: bool) -> Result<PathBuf> {
    setup::check_build()?;
    let mut cargo = cargo();
    cargo.args(["build", "--package", "lb-userspace"]);
    if release {
        cargo.arg("--release");
    }
    cmd::run(&mut cargo)?;
    Ok(target_dir().join(if release { "release" } else { "debug" }).join("xlb"))
}

/// cargo, run in the workspace root with `-Z` flags allowed on the stable toolchain
/// (aya-build compiles the kernel crate with `-Z build-std=core`).
pub fn cargo() -> Command {
    let mut cmd = Command::new(cmd::cargo_program());
    cmd.current_dir(root()).env("RUSTC_BOOTSTRAP", "1");
    cmd
}

/// The workspace root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace root")
}

/// The workspace's target directory, as absolute path: `XLB_BIN` must point at the binary
/// from any test's working directory.
fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        // Relative paths are relative to the workspace root, where `cargo()` runs.
        Some(dir) => root().join(dir),
        None => root().join("target"),
    }
}
