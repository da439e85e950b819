//! `cargo xtask image`: the `xlb:latest` Docker image (the recipe is `xlb_tests::image`,
//! which tests/image.rs builds and runs too).
use anyhow::Result;
use xlb_tests::image::{IMAGE, RUN_ARGS};

use crate::{docker, setup};

pub fn image() -> Result<()> {
    setup::check_build()?;
    docker::ensure_running()?;
    xlb_tests::image::build().map_err(anyhow::Error::msg)?;
    eprintln!("built {IMAGE}; run it as\n  docker run -d --name xlb {} {IMAGE} run --iface IFACE SPEC...", RUN_ARGS.join(" "));
    Ok(())
}
