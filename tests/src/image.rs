//! The xlb container image, built by `cargo xtask image` and by tests/image.rs: `FROM
//! scratch` with a statically linked xlb (its kernel programs are embedded in the binary)
//! as the entrypoint.

use std::fs;

use crate::{
    docker::{build_image, build_static, docker},
    util::{TempDir, try_run},
};

pub const IMAGE: &str = "xlb:latest";
/// The backend of examples/: the tests' server (`xlb-testd`, answering with its `--name`),
/// under a name that is not the tests'.
pub const BACKEND: &str = "xlb-testd:latest";

/// What `docker run` needs for `xlb run` (tests/image.rs runs the image with exactly these),
/// `bpffs` being the host's BPF file system (/sys/fs/bpf on most hosts):
/// the host's network namespace (the interfaces to attach to), the capabilities of loading
/// and attaching (CAP_SYS_ADMIN stands for CAP_BPF and CAP_PERFMON, which Docker 20.10 does
/// not know; xlb drops all but CAP_NET_ADMIN and CAP_NET_BIND_SERVICE once ready),
/// `/proc/sys` writable for the forwarding switches (Docker mounts it read-only), the Docker
/// socket for discovery, and the BPF file system, so that the data plane outlives a crash.
pub fn run_args(bpffs: &str) -> Vec<String> {
    let fixed = [
        "--network=host",
        "--cap-add=SYS_ADMIN",
        "--cap-add=NET_ADMIN",
        "--security-opt=systempaths=unconfined",
        "--volume=/var/run/docker.sock:/var/run/docker.sock",
    ];
    fixed.iter().map(|a| a.to_string()).chain([format!("--volume={bpffs}:/sys/fs/bpf")]).collect()
}

/// Builds the static xlb (release, in `target/xlb-static`) and the image [`IMAGE`] from it.
pub fn build() -> Result<(), String> {
    let bin = build_static("lb-userspace", "xlb", &[], "xlb-static")?;
    let dir = TempDir::new();
    fs::copy(&bin, dir.path().join("xlb")).map_err(|e| format!("copy {}: {e}", bin.display()))?;
    fs::write(dir.path().join("Dockerfile"), "FROM scratch\nCOPY xlb /xlb\nENTRYPOINT [\"/xlb\"]\nCMD [\"--help\"]\n").map_err(|e| e.to_string())?;
    try_run(docker().args(["build", "--quiet", "--label", "org.opencontainers.image.title=xlb", "-t", IMAGE]).arg(dir.path()))?;
    Ok(())
}

/// Builds [`BACKEND`]: the tests' server image (`docker::build_image`), tagged.
pub fn build_backend() -> Result<(), String> {
    try_run(docker().args(["tag", build_image(), BACKEND]))?;
    Ok(())
}
