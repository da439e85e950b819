//! The Docker daemon the integration tests start their backend containers with.
use std::{
    fs::File,
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

const LOG: &str = "/tmp/dockerd.log";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether a daemon answers.
pub fn answers() -> bool {
    cmd::probe(Command::new("docker").arg("info"))
}

/// Starts dockerd in the background unless a daemon answers: a fresh machine or container
/// often has no init system to start it.
pub fn ensure_running() -> Result<()> {
    if answers() {
        return Ok(());
    }
    if !cmd::is_root() {
        bail!("the Docker daemon does not answer: run `cargo xtask setup` as root to start it");
    }
    if cmd::which("dockerd").is_none() {
        bail!(
            "the Docker daemon does not answer and dockerd is missing: `apt-get install docker.io`"
        );
    }
    let log = File::create(LOG).with_context(|| format!("creating {LOG}"))?;
    let mut dockerd = cmd::spawn(
        Command::new("nohup")
            .arg("dockerd")
            .stdin(Stdio::null())
            .stdout(log.try_clone().with_context(|| format!("opening {LOG}"))?)
            .stderr(log)
            // Its own process group: Ctrl-C on this task, or CI ending a step, leaves it be.
            .process_group(0),
    )?;
    eprintln!(
        "waiting up to {} s for dockerd (log: {LOG})",
        START_TIMEOUT.as_secs()
    );
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        thread::sleep(Duration::from_secs(1));
        if answers() {
            return Ok(());
        }
        if let Some(status) = dockerd.try_wait().context("checking on dockerd")? {
            bail!("dockerd exited ({status}): see {LOG}");
        }
        if Instant::now() >= deadline {
            bail!(
                "dockerd did not answer within {} s: see {LOG}",
                START_TIMEOUT.as_secs()
            );
        }
    }
}
