//! Rebuild the kernel programs when bpf-linker changes: cargo cannot see that dependency.
fn main() {
    let linker = which::which("bpf-linker")
        .expect("bpf-linker is not installed: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", linker.display());
}
