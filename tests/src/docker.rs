//! Docker helpers: the `FROM scratch` image of xlb-testd, labelled containers with RAII
//! cleanup, timed `docker stop|restart|kill`, Docker's timestamps. Compose projects are in
//! [`crate::compose`].

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::util::{TempDir, cmd, run, try_run, unique_id, wait_for};

pub const IMAGE: &str = "xlb-testd:test";
/// Every container the tests start carries this label ...
pub const LABEL: &str = "xlb-tests";
/// ... and this one, with the pid of the test process (for [`crate::cleanup_stale`]).
pub const OWNER_LABEL: &str = "xlb-tests.owner";

/// The docker CLI, with the classic builder.
pub(crate) fn docker() -> Command {
    let mut c = Command::new("docker");
    // No buildx plugin here, and the engine (20.10) builds fine with the classic builder.
    c.env("DOCKER_BUILDKIT", "0");
    c
}

/// `docker ARGS...` to completion: stdout, or an error with the command line and output.
pub fn docker_cli(args: &[&str]) -> Result<String, String> {
    try_run(docker().args(args))
}

/// When a command was called and when it returned.
#[derive(Debug, Clone, Copy)]
pub struct Timed {
    pub called: Instant,
    pub returned: Instant,
}

impl Timed {
    pub fn took(&self) -> Duration {
        self.returned - self.called
    }
}

/// Runs `f` (a CLI call), noting when it started and returned; panics with its error.
#[track_caller]
pub fn timed(what: &str, f: impl FnOnce() -> Result<String, String>) -> Timed {
    let called = Instant::now();
    if let Err(e) = f() {
        panic!("{what}: {e}");
    }
    Timed { called, returned: Instant::now() }
}

/// `docker inspect --format FORMAT ID` (trimmed; empty when it fails, e.g. the container is gone).
pub fn inspect(id: &str, format: &str) -> String {
    try_run(docker().args(["inspect", "--format", format, id])).unwrap_or_default().trim().to_string()
}

/// When the container's current run started (`State.StartedAt`).
pub fn started_at(id: &str) -> SystemTime {
    let s = inspect(id, "{{.State.StartedAt}}");
    parse_rfc3339(&s).unwrap_or_else(|| panic!("container {id}: bad State.StartedAt {s:?}"))
}

/// Parses Docker's timestamps: `2024-05-01T12:34:56.123456789Z` (any number of fraction
/// digits, `Z` or a `+hh:mm`/`-hh:mm` offset).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let (date, rest) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>());
    let (y, mo, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (time, offset_secs) = if let Some(t) = rest.strip_suffix('Z') {
        (t, 0i64)
    } else {
        let i = rest.rfind(['+', '-'])?;
        let (t, off) = rest.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        (t, sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60))
    };
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>());
    let (h, mi, sec) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    if !frac.chars().all(|c| c.is_ascii_digit()) || !(1..=12).contains(&mo) || !(1..=31).contains(&day) {
        return None;
    }
    let nanos: u32 = if frac.is_empty() { 0 } else { format!("{:0<9}", &frac[..frac.len().min(9)]).parse().ok()? };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// The events Docker logged for container `id` from `since` until now: (time, action), e.g.
/// `health_status: unhealthy`, oldest first.
pub fn container_events(id: &str, since: SystemTime) -> Vec<(SystemTime, String)> {
    let unix = |t: SystemTime| {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
    };
    let out = run(docker().args(["events", "--since", &unix(since), "--until", &unix(SystemTime::now())]).args([
        "--filter",
        &format!("container={id}"),
        "--format",
        "{{.TimeNano}} {{.Action}}",
    ]));
    out.lines()
        .filter_map(|l| {
            let (nanos, action) = l.split_once(' ')?;
            Some((UNIX_EPOCH + Duration::from_nanos(nanos.parse().ok()?), action.to_string()))
        })
        .collect()
}

/// Panics with a clear message unless the Docker engine answers.
pub fn require_docker() {
    if let Err(e) = try_run(docker().args(["info", "--format", "{{.ServerVersion}}"])) {
        panic!("the Docker engine is not reachable (this test needs it): {e}");
    }
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Whether an ELF file is statically linked (has no `PT_INTERP` program header).
pub fn is_static_elf(path: &Path) -> Result<bool, String> {
    let b = fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return Err(format!("{}: not a little-endian ELF64 file", path.display()));
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > b.len() {
            return Err(format!("{}: truncated program headers", path.display()));
        }
        if u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) == 3 {
            return Ok(false); // PT_INTERP
        }
    }
    Ok(true)
}

/// Builds `--bin BIN` of `--package PACKAGE` (with `extra` cargo arguments) statically
/// linked, for a `FROM scratch` image: glibc's static libraries (`-C
/// target-feature=+crt-static`, which needs an explicit `--target`; no musl toolchain here),
/// release mode, in its own target directory `target/DIR` (no wait for the workspace's
/// build lock). Returns the binary, checked to be static.
pub fn build_static(package: &str, bin: &str, extra: &[&str], dir: &str) -> Result<PathBuf, String> {
    let root = workspace_root();
    let target_dir = root.join("target").join(dir);
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut c = Command::new(cargo);
    c.current_dir(&root)
        .args(["build", "--quiet", "-p", package, "--bin", bin, "--release", "--target", &triple])
        .args(extra)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS");
    try_run(&mut c)?;
    checked_static(target_dir.join(triple).join("release").join(bin))
}

fn checked_static(path: PathBuf) -> Result<PathBuf, String> {
    match is_static_elf(&path)? {
        true => Ok(path),
        false => Err(format!("{} is dynamically linked; a FROM scratch image needs a static one", path.display())),
    }
}

/// A statically linked xlb-testd: `$XLB_TESTD_STATIC` if set, else built (once per process)
/// by [`build_static`] with `--no-default-features` into `target/testd-static`.
pub fn static_testd() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("XLB_TESTD_STATIC") {
        Some(p) => checked_static(PathBuf::from(p)),
        None => build_static("xlb-tests", "xlb-testd", &["--no-default-features"], "testd-static"),
    })
    .clone()
    .unwrap_or_else(|e| panic!("static xlb-testd: {e}"))
}

/// Builds `xlb-testd:test` (`FROM scratch`, the static xlb-testd as entrypoint) once per
/// process and returns its name.
pub fn build_image() -> &'static str {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    build_once(&DONE, IMAGE, |dir| {
        let bin = static_testd();
        fs::copy(&bin, dir.join("xlb-testd")).map_err(|e| format!("copy {}: {e}", bin.display()))?;
        Ok("FROM scratch\nCOPY xlb-testd /xlb-testd\nEXPOSE 8080/tcp 8080/udp\nENTRYPOINT [\"/xlb-testd\"]\n".into())
    })
}

/// [`build_image`] with a Docker HEALTHCHECK (built once per process).
pub const HEALTH_IMAGE: &str = "xlb-testd:health";

/// Builds [`HEALTH_IMAGE`]: [`IMAGE`] plus `HEALTHCHECK CMD ["/xlb-testd", "check"]` every
/// second, one failure making the container unhealthy (exec form: a `FROM scratch` image has
/// no shell). A separate image, so that the other tests' containers have no health state
/// (Docker's `starting` would hold each new container out until its first check).
pub fn build_health_image() -> &'static str {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    build_once(&DONE, HEALTH_IMAGE, |_| {
        let base = build_image();
        Ok(format!("FROM {base}\nHEALTHCHECK --interval=1s --timeout=2s --retries=1 CMD [\"/xlb-testd\", \"check\"]\n"))
    })
}

/// Builds `image` once per process (`done` remembers the outcome): `context` puts what the
/// build needs into the context directory and gives the Dockerfile.
fn build_once(done: &'static OnceLock<Result<(), String>>, image: &'static str, context: impl FnOnce(&Path) -> Result<String, String>) -> &'static str {
    done.get_or_init(|| {
        let dir = TempDir::new();
        let dockerfile = context(dir.path())?;
        fs::write(dir.path().join("Dockerfile"), dockerfile).map_err(|e| e.to_string())?;
        try_run(docker().args(["build", "--quiet", "--label", LABEL, "-t", image]).arg(dir.path()))?;
        Ok(())
    })
    .clone()
    .unwrap_or_else(|e| panic!("docker build {image}: {e}"));
    image
}

/// A container, removed (`docker rm -f`) on drop.
pub struct Container {
    pub id: String,
    pub name: String,
}

impl Container {
    /// `docker run -d --name xt<id><role> --label ... [EXTRA...] IMAGE ARGS...`
    pub fn run(role: &str, extra: &[&str], image: &str, args: &[&str]) -> Container {
        let name = format!("xt{}{role}", unique_id());
        let owner = format!("{OWNER_LABEL}={}", std::process::id());
        let out = run(docker()
            .args(["run", "-d", "--name", &name, "--label", LABEL, "--label", &owner])
            .args(extra)
            .arg(image)
            .args(args));
        let c = Container { id: out.trim().to_string(), name };
        // Make sure it is up (and did not exit at once).
        let running = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
            (c.inspect("{{.State.Running}}") == "true").then_some(())
        });
        if running.is_none() {
            let logs = try_run(docker().args(["logs", &c.id])).unwrap_or_default();
            panic!("container {} is not running; logs:\n{logs}", c.name);
        }
        c
    }

    /// A container of [`build_image`] running `xlb-testd --name NAME --port 8080`.
    pub fn testd(name: &str, extra: &[&str]) -> Container {
        let image = build_image();
        Container::run(name, extra, image, &["--name", name, "--port", "8080"])
    }

    pub fn inspect(&self, format: &str) -> String {
        try_run(docker().args(["inspect", "--format", format, &self.id]))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// The IPv4 address on the default bridge.
    pub fn ip(&self) -> Ipv4Addr {
        let s = self.inspect("{{.NetworkSettings.IPAddress}}");
        s.parse().unwrap_or_else(|_| panic!("container {}: no bridge IP ({s:?})", self.name))
    }

    /// The host port published for `port/proto` (e.g. `8080/tcp`).
    pub fn host_port(&self, port_proto: &str) -> u16 {
        let out = run(docker().args(["port", &self.id, port_proto]));
        out.lines()
            .filter_map(|l| l.rsplit_once(':').and_then(|(_, p)| p.trim().parse().ok()))
            .next()
            .unwrap_or_else(|| panic!("container {}: {port_proto} not published: {out:?}", self.name))
    }

    pub fn logs(&self) -> String {
        // xlb-testd prints on stdout; docker logs replays it on its own stdout.
        match docker().args(["logs", &self.id]).output() {
            Ok(o) => format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
            Err(e) => format!("docker logs {}: {e}", self.name),
        }
    }

    /// `docker stop -t SECS` (SIGTERM, SIGKILL after SECS), timed.
    #[track_caller]
    pub fn stop(&self, grace_secs: u32) -> Timed {
        let t = grace_secs.to_string();
        timed(&format!("docker stop {}", self.name), || docker_cli(&["stop", "-t", &t, &self.id]))
    }

    /// `docker restart -t SECS`, timed (returns once it runs again).
    #[track_caller]
    pub fn restart(&self, grace_secs: u32) -> Timed {
        let t = grace_secs.to_string();
        timed(&format!("docker restart {}", self.name), || docker_cli(&["restart", "-t", &t, &self.id]))
    }

    /// `docker kill` (SIGKILL), timed.
    #[track_caller]
    pub fn kill(&self) -> Timed {
        timed(&format!("docker kill {}", self.name), || docker_cli(&["kill", &self.id]))
    }

    /// When its current run started.
    pub fn started_at(&self) -> SystemTime {
        started_at(&self.id)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Err(e) = try_run(docker().args(["rm", "-f", &self.id])) {
            eprintln!("xlb-tests: cleanup: {e}");
        }
    }
}

/// Removes containers left by test processes that no longer run.
pub fn cleanup_stale_containers() {
    cleanup_stale(&["ps", "-a"], &["rm", "-f"]);
}

/// Removes networks (compose projects' default networks) left by test processes that no
/// longer run; a network still in use is left alone.
pub fn cleanup_stale_networks() {
    cleanup_stale(&["network", "ls"], &["network", "rm"]);
}

/// Lists our labelled objects with `list` and removes with `remove` those whose owning
/// test process is gone.
fn cleanup_stale(list: &[&str], remove: &[&str]) {
    let Ok(out) = try_run(docker().args(list).args([
        "--filter",
        &format!("label={LABEL}"),
        "--format",
        &format!("{{{{.ID}}}} {{{{.Label \"{OWNER_LABEL}\"}}}}"),
    ])) else {
        return;
    };
    for l in out.lines() {
        let mut it = l.split_whitespace();
        let (Some(id), owner) = (it.next(), it.next()) else { continue };
        if !owner.and_then(|o| o.parse().ok()).is_some_and(crate::util::pid_alive) {
            let _ = try_run(docker().args(remove).arg(id));
        }
    }
}

/// `iptables -S FORWARD`'s policy line, e.g. `-P FORWARD DROP`.
pub fn forward_policy() -> String {
    let out = run(&mut cmd("iptables", ["-S", "FORWARD"]));
    out.lines()
        .find(|l| l.starts_with("-P FORWARD"))
        .unwrap_or_else(|| panic!("no FORWARD policy in `iptables -S FORWARD`: {out}"))
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_timestamps() {
        let t = parse_rfc3339("2024-05-01T12:34:56.123456789Z").unwrap();
        let d = t.duration_since(UNIX_EPOCH).unwrap();
        assert_eq!((d.as_secs(), d.subsec_nanos()), (1_714_566_896, 123_456_789));
        let t = parse_rfc3339("1970-01-01T00:00:01.5Z").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap(), Duration::from_millis(1500));
        let t = parse_rfc3339("2000-03-01T01:00:00+01:00").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 951_868_800);
        assert!(parse_rfc3339("0001-01-01T00:00:00Z").is_none(), "Docker's zero time is before the epoch");
        assert!(parse_rfc3339("yesterday").is_none());
    }
}
