//! `cargo xtask image`: the `xlb:latest` Docker image (the recipe is `xlb_tests::image`,
//! which tests/image.rs builds and runs too).
use anyhow::Result;
use xlb_tests::image::{BACKEND, IMAGE, run_args};

use crate::{docker, setup};

pub fn image() -> Result<()> {
    setup::check_build()?;
    docker::ensure_running()?;
    eprintln!("building a static xlb in target/xlb-static (minutes the first time), then {IMAGE}");
    xlb_tests::image::build().map_err(anyhow::Error::msg)?;
    eprintln!("building {BACKEND}, the backend of examples/ (a static xlb-testd in target/testd-static)");
    xlb_tests::image::build_backend().map_err(anyhow::Error::msg)?;
    eprintln!("built {IMAGE}; run it as\n  docker run -d --name xlb {} {IMAGE} run --iface IFACE SPEC...", run_args("/sys/fs/bpf").join(" "));
    Ok(())
}
