//! bpf-linker links the kernel programs. It must load the same LLVM that rustc emitted the
//! bitcode with, which no Debian package provides, so it is built against the libLLVM that
//! ships inside the rustup toolchain.
use std::{
    env, fs,
    io::ErrorKind,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow};

use crate::{cmd, toolchain};

/// Whether a bpf-linker is on PATH and starts (it fails to when its libLLVM went away).
pub fn works() -> bool {
    cmd::probe(Command::new("bpf-linker").arg("--version"))
}

/// Builds and installs bpf-linker against the toolchain's libLLVM.
pub fn install() -> Result<()> {
    let (major, minor) = toolchain::llvm_version()?;
    let libllvm = find_libllvm(&toolchain::sysroot()?.join("lib"), major, minor)?;
    let prefix = prefix_dir()?;
    make_prefix(&prefix, &libllvm)?;
    cmd::run(
        Command::new(cmd::cargo_program())
            .args([
                "install",
                "bpf-linker",
                // The release known to offer `llvm-22`; a later one may drop that feature.
                "--version",
                "~0.13",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix)
            // Inherited from the workspace's config; dependencies' build scripts would take
            // the stable compiler for a nightly one.
            .env_remove("RUSTC_BOOTSTRAP"),
    )
    .context("installing bpf-linker")
}

/// Where the fake LLVM prefix lives. The installed binary loads libLLVM from here (rpath),
/// so it sits beside that binary in `CARGO_HOME` rather than in a cache that may be wiped.
fn prefix_dir() -> Result<PathBuf> {
    let cargo_home = match env::var_os("CARGO_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => env::home_dir().ok_or_else(|| anyhow!("neither CARGO_HOME nor HOME is set"))?.join(".cargo"),
    };
    Ok(cargo_home.join("xlb-llvm"))
}

/// The toolchain's `libLLVM.so.<MAJOR>.<MINOR>-rust-*` in `dir`.
fn find_libllvm(dir: &Path, major: u32, minor: u32) -> Result<PathBuf> {
    let wanted = format!("libLLVM.so.{major}.{minor}-rust-");
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry.with_context(|| format!("reading {}", dir.display()))?.path();
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&wanted)) {
            found.push(path);
        }
    }
    found.sort();
    found.pop().ok_or_else(|| anyhow!("no {wanted}* in {}: bpf-linker needs a rustup toolchain's libLLVM", dir.display()))
}

/// Lays out `prefix` like an LLVM install for bpf-linker's build script (`LLVM_PREFIX`):
/// `lib/` holds `libllvm` under the name the linker looks for (`libLLVM.so`) and under its
/// own name, the soname the installed binary loads at run time; `bin/llvm-config` only has
/// to exist for build scripts that locate LLVM through it. Safe to rerun.
fn make_prefix(prefix: &Path, libllvm: &Path) -> Result<()> {
    let (bin, lib) = (prefix.join("bin"), prefix.join("lib"));
    for dir in [&bin, &lib] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let config = bin.join("llvm-config");
    fs::write(&config, "#!/bin/sh\n").with_context(|| format!("writing {}", config.display()))?;
    fs::set_permissions(&config, fs::Permissions::from_mode(0o755)).with_context(|| format!("making {} executable", config.display()))?;
    let name = libllvm.file_name().ok_or_else(|| anyhow!("{} has no file name", libllvm.display()))?;
    for link in [lib.join("libLLVM.so"), lib.join(name)] {
        match fs::remove_file(&link) {
            Err(err) if err.kind() != ErrorKind::NotFound => {
                return Err(err).with_context(|| format!("removing {}", link.display()));
            }
            _ => {}
        }
        symlink(libllvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh scratch directory, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn finds_the_versioned_libllvm() {
        let dir = Scratch::new("find-libllvm");
        for name in ["libLLVM-22-rust-1.95.0-stable.so", "libLLVM.so.21.1-rust-1.90.0-stable", "libLLVM.so.22.1-rust-1.95.0-stable", "librustc_driver-0123.so"]
        {
            fs::write(dir.0.join(name), "").unwrap();
        }
        let found = find_libllvm(&dir.0, 22, 1).unwrap();
        assert_eq!(found, dir.0.join("libLLVM.so.22.1-rust-1.95.0-stable"));
        assert!(find_libllvm(&dir.0, 23, 0).is_err());
    }

    #[test]
    fn makes_the_prefix_twice() {
        let dir = Scratch::new("make-prefix");
        let libllvm = dir.0.join("libLLVM.so.22.1-rust-1.95.0-stable");
        fs::write(&libllvm, "").unwrap();
        let prefix = dir.0.join("prefix");
        make_prefix(&prefix, &libllvm).unwrap();
        make_prefix(&prefix, &libllvm).unwrap();

        let config = fs::metadata(prefix.join("bin/llvm-config")).unwrap();
        assert_ne!(config.permissions().mode() & 0o111, 0);
        for name in ["libLLVM.so", "libLLVM.so.22.1-rust-1.95.0-stable"] {
            assert_eq!(fs::read_link(prefix.join("lib").join(name)).unwrap(), libllvm);
        }
    }
}
