//! Facts about the rustc in use (the one rustup picks for this workspace).
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::cmd;

/// The toolchain's root directory (`rustc --print sysroot`).
pub fn sysroot() -> Result<PathBuf> {
    let out = cmd::output(Command::new("rustc").args(["--print", "sysroot"]))?;
    Ok(PathBuf::from(out.trim()))
}

/// Major and minor version of the LLVM rustc is built with: bpf-linker must use the same
/// LLVM to read the bitcode rustc emits.
pub fn llvm_version() -> Result<(u32, u32)> {
    parse_llvm_version(&cmd::output(Command::new("rustc").arg("-vV"))?)
}

/// Whether the standard library's source is there: `-Z build-std=core` compiles `core` for
/// the BPF target from it.
pub fn has_rust_src() -> Result<bool> {
    Ok(sysroot()?
        .join("lib/rustlib/src/rust/library/core")
        .is_dir())
}

/// Installs `rust-src` unless present.
pub fn ensure_rust_src() -> Result<()> {
    if has_rust_src()? {
        return Ok(());
    }
    if cmd::which("rustup").is_none() {
        bail!("rust-src is missing and rustup is not on PATH: install rust-src for this toolchain");
    }
    cmd::run(Command::new("rustup").args(["component", "add", "rust-src"]))
}

fn parse_llvm_version(rustc_vv: &str) -> Result<(u32, u32)> {
    let version = rustc_vv
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))
        .ok_or_else(|| anyhow!("`rustc -vV` printed no `LLVM version:` line"))?
        .trim();
    let mut parts = version.split('.').map(str::parse::<u32>);
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => Ok((major, minor)),
        _ => Err(anyhow!("unexpected LLVM version `{version}`")),
    }
    .context("reading rustc's LLVM version")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_llvm_version() {
        let vv = "rustc 1.95.0 (59807616e 2026-04-14)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.95.0\nLLVM version: 22.1.2\n";
        assert_eq!(parse_llvm_version(vv).unwrap(), (22, 1));
    }

    #[test]
    fn rejects_missing_llvm_version() {
        assert!(parse_llvm_version("rustc 1.95.0\n").is_err());
        assert!(parse_llvm_version("LLVM version: 22\n").is_err());
    }
}
