//! Time from a Docker event to xlb's map update: xlb follows the containers labelled
//! `xlb.service=NAME` (a SPEC `VIP:81:NAME:8080`), and the benchmark starts and stops
//! containers of the tests' `FROM scratch` xlb-testd image (built by the tests crate's own
//! code, `xlb_tests::docker`), one at a time. For each change it takes the event's time from
//! the Docker engine (`docker events`, `timeNano`): `start`; for `docker stop`, the `kill`
//! that delivers SIGTERM (xlb drains the container) and the `die` (xlb removes it). From
//! xlb's debug log it takes the time it logged the `Docker discovery update` and then
//! `maps synced` (written after the maps were updated). Both clocks are the host's.
//!
//! xlb runs in the LB namespace, as for the other measurements; Docker's socket is a file, so
//! discovery works from there. The containers' bridge subnet is routed from the LB namespace
//! to backend 1, which drops it ([`Topo::route_nowhere`]): xlb needs a route to attach its
//! reply program, and no packet is sent to these containers (the service has no probes).
use std::{
    panic::{self, AssertUnwindSafe},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;
use xlb_tests::docker::{self as testdocker, Container};

use super::{
    contender::{self, Ctx},
    stats::Spread,
    sys,
    topo::VIP,
};

/// The port of the measured service on the VIP (80 is the benchmark's).
const PORT: u16 = 81;
/// What xlb-testd listens on in the containers.
const TESTD_PORT: u16 = 8080;
/// How long xlb may take to react before a repetition counts as failed.
const REACTION_TIMEOUT: Duration = Duration::from_secs(10);
/// xlb-testd's lame duck after SIGTERM (default 1 s): what separates `kill` from `die`.
const LAME_DUCK_MS: &str = "300";

/// One repetition's delays in milliseconds from the Docker event.
#[derive(Debug, Clone, Serialize)]
pub struct Reaction {
    /// To xlb's `Docker discovery update` line (event received, container inspected).
    pub discovered_ms: f64,
    /// To xlb's `maps synced` line: the maps hold the change.
    pub synced_ms: f64,
    /// The map sync alone, as xlb timed it (`elapsed_us`).
    pub sync_ms: f64,
    /// When xlb logged the update (the next reaction is looked for after it).
    #[serde(skip)]
    logged: SystemTime,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct DockerEvents {
    /// `docker run` of a labelled container → its `start` event → xlb adds it.
    pub start: Vec<Reaction>,
    /// `docker stop` → `kill` (SIGTERM) event → xlb drains it (no new flows go to it).
    pub stop: Vec<Reaction>,
    /// The container exits (`die`, after xlb-testd's lame duck) → xlb removes it.
    pub exit: Vec<Reaction>,
    pub error: Option<String>,
}

impl DockerEvents {
    pub fn failed(error: String) -> DockerEvents {
        DockerEvents { error: Some(error), ..DockerEvents::default() }
    }

    /// Median (min–max) of `f` over the repetitions of `which`.
    pub fn spread(which: &[Reaction], f: impl Fn(&Reaction) -> f64) -> Option<Spread> {
        Spread::of(which.iter().map(f))
    }
}

/// `reps` containers started and stopped under a running xlb (the tests crate's helpers
/// panic on failure: a panic becomes this measurement's error, not the benchmark's end).
pub fn measure(ctx: &Ctx, reps: usize) -> Result<DockerEvents> {
    match panic::catch_unwind(AssertUnwindSafe(|| run(ctx, reps))) {
        Ok(result) => result,
        Err(panic) => {
            let msg = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()));
            Err(anyhow!("{}", msg.unwrap_or_else(|| "panicked".into())))
        }
    }
}

fn run(ctx: &Ctx, reps: usize) -> Result<DockerEvents> {
    testdocker::docker_cli(&["info", "--format", "{{.ServerVersion}}"]).map_err(|e| anyhow!("the Docker engine does not answer: {e}"))?;
    let image = testdocker::build_image();
    let subnet = testdocker::docker_cli(&["network", "inspect", "bridge", "--format", "{{(index .IPAM.Config 0).Subnet}}"])
        .map_err(|e| anyhow!("Docker's bridge subnet: {e}"))?;
    ctx.topo.route_nowhere(subnet.trim())?;

    let name = format!("{}d", sys::tag());
    let label = format!("xlb.service={name}");
    let testd = |role: &str| {
        let args = ["--name", role, "--port", &TESTD_PORT.to_string(), "--lame-duck", LAME_DUCK_MS];
        Container::run(role, &["--label", &label], image, &args)
    };
    // One container throughout, so that the service never becomes empty.
    let _anchor = testd("anchor");
    let dir = ctx.topo.dir.join("xlb-docker");
    std::fs::create_dir_all(&dir)?;
    let spec = format!("{VIP}:{PORT}:{name}:{TESTD_PORT}");
    let args = vec!["--iface".into(), ctx.topo.lb_iface.clone().into(), spec.into()];
    let xlb = contender::start_xlb_logging(ctx, &dir, args, "info,xlb=debug")?;
    // The anchor is discovered after `ready`: wait for its map update before the first change.
    let mut last = wait_reaction(&xlb, SystemTime::UNIX_EPOCH, SystemTime::UNIX_EPOCH)
        .context("xlb never added the first container")?
        .logged;

    let mut out = DockerEvents::default();
    for i in 0..reps {
        let c = testd(&format!("r{i}"));
        let since = SystemTime::now() - Duration::from_secs(30);
        let started = event_time(&c, since, "start")?;
        let mut react = |event: SystemTime, what: &str| -> Result<Reaction> {
            let r = wait_reaction(&xlb, event, last).with_context(|| format!("repetition {}: {what}", i + 1))?;
            last = r.logged;
            Ok(r)
        };
        out.start.push(react(started, "start")?);
        let stop = Instant::now();
        c.stop(10);
        let killed = event_time(&c, since, "kill")?;
        out.stop.push(react(killed, "stop")?);
        let died = event_time(&c, since, "die")?;
        out.exit.push(react(died, "exit")?);
        eprintln!(
            "bench: Docker event to map update {}/{reps}: start {:.1} ms, stop {:.1} ms, exit {:.1} ms (docker stop took {:.0} ms)",
            i + 1,
            out.start[i].synced_ms,
            out.stop[i].synced_ms,
            out.exit[i].synced_ms,
            stop.elapsed().as_secs_f64() * 1e3
        );
    }
    xlb.stop()?;
    Ok(out)
}

/// When the engine logged `action` for container `c` (the first since `since`).
fn event_time(c: &Container, since: SystemTime, action: &str) -> Result<SystemTime> {
    testdocker::container_events(&c.id, since)
        .into_iter()
        .find(|(_, a)| a == action)
        .map(|(t, _)| t)
        .with_context(|| format!("no `{action}` event of container {}", c.name))
}

/// Waits for xlb's first `Docker discovery update` logged at or after `event` and after the
/// previous reaction's update (`after`: `kill` and `die` are only the lame duck apart), then
/// the `maps synced` that followed it. The changes are made one at a time, so the first
/// such update is that event's.
fn wait_reaction(xlb: &contender::Running, event: SystemTime, after: SystemTime) -> Result<Reaction> {
    let deadline = Instant::now() + REACTION_TIMEOUT;
    loop {
        let log = xlb.log();
        let lines: Vec<(SystemTime, &str)> =
            log.lines().filter_map(|l| Some((testdocker::parse_rfc3339(l.split_whitespace().next()?)?, l))).collect();
        let update = lines.iter().position(|(t, l)| *t >= event && *t > after && l.contains("Docker discovery update"));
        if let Some(i) = update
            && let Some((synced, line)) = lines[i..].iter().find(|(_, l)| l.contains("maps synced"))
        {
            let ms = |t: SystemTime| t.duration_since(event).unwrap_or_default().as_secs_f64() * 1e3;
            let us: f64 = line.rsplit("elapsed_us=").next().and_then(|v| v.trim().parse().ok()).unwrap_or(f64::NAN);
            return Ok(Reaction { discovered_ms: ms(lines[i].0), synced_ms: ms(*synced), sync_ms: us / 1e3, logged: lines[i].0 });
        }
        if Instant::now() >= deadline {
            bail!("xlb logged no map update within {REACTION_TIMEOUT:?}:\n{}", sys::tail(&log));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
