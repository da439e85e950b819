//! Builds the kernel programs (`lb-ebpf`) for the BPF target and leaves the object in
//! OUT_DIR, where `dataplane` embeds it into the `xlb` binary.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    // The fuzz targets (fuzz/, `cargo xtask fuzz`) never load the kernel programs: an empty
    // object spares their instrumented build a second build of the kernel crate.
    println!("cargo:rerun-if-env-changed=XLB_NO_KERNEL_OBJECT");
    if std::env::var_os("XLB_NO_KERNEL_OBJECT").is_some() {
        let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?);
        return std::fs::write(out.join("lb-ebpf"), b"").context("writing the empty kernel object");
    }
    let meta = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = meta
        .packages
        .iter()
        .find(|p| p.name.as_str() == "lb-ebpf")
        .ok_or_else(|| anyhow!("lb-ebpf package not found"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    // The kernel object is built from lb-common's shared types too: a change to them must
    // rebuild it (aya-build watches lb-ebpf's own folder only).
    let common = meta.packages.iter().find(|p| p.name.as_str() == "lb-common").ok_or_else(|| anyhow!("lb-common package not found"))?;
    let common_dir = common.manifest_path.parent().ok_or_else(|| anyhow!("no parent for {}", common.manifest_path))?;
    println!("cargo:rerun-if-changed={common_dir}");
    // The toolchain building us (rustup sets RUSTUP_TOOLCHAIN), so the kernel object
    // is compiled by the same rustc whose LLVM bpf-linker links against.
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".to_owned());
    println!("cargo:rerun-if-env-changed=RUSTUP_TOOLCHAIN");
    aya_build::build_ebpf(
        [aya_build::Package { name: "lb-ebpf", root_dir: root.as_str(), ..Default::default() }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}
