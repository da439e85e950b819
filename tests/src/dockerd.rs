//! Stopping and starting the machine's Docker daemon under a test, and putting it back.
//!
//! Only for a plain `dockerd` process (as on the CI machine, or as `cargo xtask setup` starts
//! it), not one a service manager runs: the daemon is started again exactly as it ran (same
//! argv, environment, working directory and log file, in its own session so that it outlives
//! the test). Live restore (`"live-restore": true` in daemon.json, reloaded with SIGHUP) keeps
//! the containers running while it is away: their shims and fuse-overlayfs mounts belong to
//! init, not to dockerd; the containerd dockerd manages dies with it (dockerd starts it with a
//! parent-death signal) and the new daemon starts a new one that reattaches to the shims.
//!
//! [`Daemon`] is a guard: on drop, also when the test panics, it starts dockerd again if
//! none answers and restores the live-restore setting and daemon.json's exact bytes. While
//! dockerd is stopped a detached watchdog shell also waits to start it, in case the test
//! process is killed (no drop then); daemon.json keeps live restore on in that case.

use std::{
    ffi::{OsStr, OsString},
    fs::{self, OpenOptions},
    os::unix::{ffi::OsStringExt as _, process::CommandExt as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    docker::docker_cli,
    util::{pid_alive, wait_for},
};

/// How long dockerd may take to exit after SIGTERM, and to answer after it was started.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
const START_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_CONFIG: &str = "/etc/docker/daemon.json";
/// Where a restarted dockerd logs when the original's output was not a file.
const FALLBACK_LOG: &str = "/tmp/dockerd.log";
/// How long the watchdog waits before it starts a dockerd the test did not start again.
const WATCHDOG_AFTER: Duration = Duration::from_secs(30);

/// How the running dockerd was started, read from `/proc/PID`.
#[derive(Debug, Clone)]
struct Launch {
    argv: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: PathBuf,
    log: PathBuf,
}

/// The machine's dockerd, with live restore on while this guard lives.
pub struct Daemon {
    launch: Launch,
    /// Its pid while it runs (`None` between [`Daemon::stop`] and [`Daemon::start`]).
    pid: Option<u32>,
    /// The one this guard started (reaped when it is stopped again).
    child: Option<Child>,
    /// See [`Daemon::spawn_watchdog`].
    watchdog: Option<Child>,
    config: PathBuf,
    /// daemon.json's bytes before (`None`: there was none), when this guard changed it.
    changed_config: Option<Option<Vec<u8>>>,
}

/// When [`Daemon::stop`] signalled dockerd and when it had exited.
#[derive(Debug, Clone, Copy)]
pub struct Stopped {
    pub signalled: Instant,
    pub exited: Instant,
}

/// When [`Daemon::start`] spawned dockerd and when `docker info` first answered.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    pub spawned: Instant,
    pub answered: Instant,
}

/// The pids of the processes named `dockerd`.
fn dockerd_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "dockerd"))
        .filter(|pid| !is_zombie(*pid))
        .collect()
}

/// A process that exited but was not reaped yet (state `Z` in `/proc/PID/stat`).
fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false)
}

/// `docker info --format {{.LiveRestoreEnabled}}`: `Some(on)` when the daemon answers.
fn live_restore() -> Option<bool> {
    docker_cli(&["info", "--format", "{{.LiveRestoreEnabled}}"]).ok().map(|s| s.trim() == "true")
}

fn read_launch(pid: u32) -> Result<Launch, String> {
    let read = |what: &str| fs::read(format!("/proc/{pid}/{what}")).map_err(|e| format!("/proc/{pid}/{what}: {e}"));
    let split = |b: Vec<u8>| -> Vec<OsString> { b.split(|&c| c == 0).filter(|s| !s.is_empty()).map(|s| OsString::from_vec(s.to_vec())).collect() };
    let argv = split(read("cmdline")?);
    let env = split(read("environ")?)
        .into_iter()
        .filter_map(|kv| {
            let kv = kv.into_vec();
            let i = kv.iter().position(|&c| c == b'=')?;
            Some((OsString::from_vec(kv[..i].to_vec()), OsString::from_vec(kv[i + 1..].to_vec())))
        })
        .collect();
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).map_err(|e| format!("/proc/{pid}/cwd: {e}"))?;
    // Its stdout, when that is a file (a pipe or socket cannot be reopened).
    let log = fs::read_link(format!("/proc/{pid}/fd/1"))
        .ok()
        .filter(|p| p.is_absolute() && fs::metadata(p).is_ok_and(|m| m.is_file()))
        .unwrap_or_else(|| PathBuf::from(FALLBACK_LOG));
    if argv.is_empty() {
        return Err(format!("dockerd {pid}: empty command line"));
    }
    Ok(Launch { argv, env, cwd, log })
}

/// The daemon.json dockerd reads: `--config-file` on its command line, else the default.
fn config_file(argv: &[OsString]) -> PathBuf {
    let args: Vec<String> = argv.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    for (i, a) in args.iter().enumerate() {
        if let Some(v) = a.strip_prefix("--config-file=") {
            return PathBuf::from(v);
        }
        if a == "--config-file"
            && let Some(v) = args.get(i + 1)
        {
            return PathBuf::from(v);
        }
    }
    PathBuf::from(DEFAULT_CONFIG)
}

/// `text` (a JSON object, or `None`: no file) with `"live-restore": on` added at the top.
fn with_live_restore(text: Option<&str>, on: bool) -> Result<String, String> {
    let text = text.unwrap_or("{}");
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("daemon.json: {e}"))?;
    if json.get("live-restore").is_some() {
        return Err("daemon.json already sets live-restore (to false): not editing it".into());
    }
    let body = text.trim_start().strip_prefix('{').ok_or("daemon.json: not a JSON object")?;
    let sep = if body.trim_start().starts_with('}') { "" } else { "," };
    Ok(format!("{{\"live-restore\": {on}{sep}{body}"))
}

/// Sends SIGHUP to `pid` (dockerd reloads daemon.json) and waits until `docker info` shows
/// live restore `on`.
fn reload(pid: u32, on: bool) -> Result<(), String> {
    // SAFETY: kill(2) with a pid and a signal number.
    if unsafe { libc::kill(pid as i32, libc::SIGHUP) } != 0 {
        return Err(format!("SIGHUP dockerd {pid}: {}", std::io::Error::last_os_error()));
    }
    wait_for(Duration::from_secs(10), Duration::from_millis(100), || (live_restore() == Some(on)).then_some(()))
        .ok_or_else(|| format!("dockerd {pid} did not report Live Restore Enabled: {on} after SIGHUP (now {:?})", live_restore()))
}

impl Daemon {
    /// Finds the one running dockerd and turns live restore on (daemon.json plus SIGHUP)
    /// unless it is on. Panics, saying why, when this cannot be done safely: not exactly one
    /// dockerd, one run by a service manager (systemd would restart it itself), a daemon
    /// that is not the local one, or a daemon.json it cannot edit.
    pub fn take() -> Daemon {
        if let Some(h) = std::env::var_os("DOCKER_HOST").filter(|h| h != "unix:///var/run/docker.sock") {
            panic!("DOCKER_HOST={h:?}: this test restarts the local dockerd, so it needs the local daemon");
        }
        let pids = dockerd_pids();
        let [pid] = pids[..] else { panic!("want exactly one dockerd process to restart, found {pids:?}") };
        let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if let Some(unit) = cgroup.lines().find(|l| l.contains(".service")) {
            panic!("dockerd {pid} runs under a service manager ({unit}): this test restarts a plain dockerd process only");
        }
        let launch = read_launch(pid).unwrap_or_else(|e| panic!("{e}"));
        let config = config_file(&launch.argv);
        let mut d = Daemon { launch, pid: Some(pid), child: None, watchdog: None, config, changed_config: None };
        match live_restore() {
            None => panic!("the Docker daemon does not answer"),
            Some(true) => {}
            Some(false) => {
                let before = match fs::read(&d.config) {
                    Ok(b) => Some(b),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => panic!("{}: {e}", d.config.display()),
                };
                let text = before.as_deref().map(|b| String::from_utf8_lossy(b).into_owned());
                let on = with_live_restore(text.as_deref(), true).unwrap_or_else(|e| panic!("{}: {e}", d.config.display()));
                fs::write(&d.config, on).unwrap_or_else(|e| panic!("{}: {e}", d.config.display()));
                d.changed_config = Some(before);
                // From here on, drop restores the file.
                reload(pid, true).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        d
    }

    /// How dockerd was started (argv), and where it logs.
    pub fn describe(&self) -> String {
        let argv: Vec<_> = self.launch.argv.iter().map(|a| a.to_string_lossy()).collect();
        format!("`{}` (cwd {}, log {})", argv.join(" "), self.launch.cwd.display(), self.launch.log.display())
    }

    /// SIGTERM to dockerd, then waits until it has exited.
    pub fn stop(&mut self) -> Stopped {
        let pid = self.pid.expect("dockerd is not running");
        self.spawn_watchdog().unwrap_or_else(|e| panic!("{e}"));
        let signalled = Instant::now();
        // SAFETY: kill(2) with a pid and a signal number.
        if unsafe { libc::kill(pid as i32, libc::SIGTERM) } != 0 {
            panic!("SIGTERM dockerd {pid}: {}", std::io::Error::last_os_error());
        }
        let exited = wait_for(STOP_TIMEOUT, Duration::from_millis(20), || {
            if let Some(c) = &mut self.child {
                let _ = c.try_wait();
            }
            (!pid_alive(pid) || is_zombie(pid)).then(Instant::now)
        });
        let Some(exited) = exited else { panic!("dockerd {pid} still runs {STOP_TIMEOUT:?} after SIGTERM") };
        self.pid = None;
        self.child = None;
        Stopped { signalled, exited }
    }

    /// Starts dockerd the way it ran before and waits until `docker info` answers.
    pub fn start(&mut self) -> Started {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// A command run the way dockerd ran (environment, working directory, output to its
    /// log), detached from the test process.
    fn detached(&self, program: &OsStr, args: &[OsString]) -> Result<Command, String> {
        let l = &self.launch;
        let log = OpenOptions::new().create(true).append(true).open(&l.log).map_err(|e| format!("{}: {e}", l.log.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let mut c = Command::new(program);
        c.args(args).env_clear().envs(l.env.iter().cloned()).current_dir(&l.cwd);
        c.stdin(Stdio::null()).stdout(log).stderr(err);
        // SAFETY: setsid(2) and close_range(2) are async-signal-safe. Its own session (no
        // signal of the test's terminal or process group reaches it) and no descriptor of the
        // test process (the tests' flock among them) kept open.
        unsafe {
            c.pre_exec(|| {
                libc::setsid();
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                Ok(())
            });
        }
        Ok(c)
    }

    /// Started before dockerd is stopped: should the test process die before it starts dockerd
    /// again (SIGKILL, a timeout: no drop runs), this starts it after [`WATCHDOG_AFTER`] unless
    /// a daemon answers or runs by then. Ended by [`Daemon::start`].
    fn spawn_watchdog(&mut self) -> Result<(), String> {
        let script = format!(
            "sleep {}; docker info >/dev/null 2>&1 || pgrep -x dockerd >/dev/null || exec \"$@\"",
            WATCHDOG_AFTER.as_secs()
        );
        let mut args = vec![OsString::from("-c"), script.into(), "xlb-tests-dockerd-watchdog".into()];
        args.extend(self.launch.argv.iter().cloned());
        let mut c = self.detached(OsStr::new("/bin/sh"), &args)?;
        self.watchdog = Some(c.spawn().map_err(|e| format!("starting the dockerd watchdog: {e}"))?);
        Ok(())
    }

    /// Ends the watchdog (this guard started it).
    fn end_watchdog(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            // SAFETY: kill(2) of our own child, before it is reaped (its pid is still ours).
            unsafe { libc::kill(w.id() as i32, libc::SIGKILL) };
            let _ = w.wait();
        }
    }

    fn try_start(&mut self) -> Result<Started, String> {
        let mut c = self.detached(&self.launch.argv[0], &self.launch.argv[1..])?;
        let spawned = Instant::now();
        let mut child = c.spawn().map_err(|e| format!("starting {}: {e}", self.describe()))?;
        let pid = child.id();
        let deadline = spawned + START_TIMEOUT;
        loop {
            if live_restore().is_some() {
                let answered = Instant::now();
                self.end_watchdog();
                self.pid = Some(pid);
                self.child = Some(child);
                return Ok(Started { spawned, answered });
            }
            if let Ok(Some(st)) = child.try_wait() {
                return Err(format!("dockerd exited at start ({st}): see {}", self.launch.log.display()));
            }
            if Instant::now() >= deadline {
                return Err(format!("dockerd {pid} did not answer within {START_TIMEOUT:?}: see {}", self.launch.log.display()));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// What drop does: a running, answering dockerd, and live restore as it was.
    fn restore(&mut self) -> Result<(), String> {
        if live_restore().is_none() {
            let running = dockerd_pids();
            if running.is_empty() {
                eprintln!("xlb-tests: dockerd is not running: starting it again");
                self.try_start()?;
            } else if wait_for(START_TIMEOUT, Duration::from_millis(100), live_restore).is_none() {
                return Err(format!("dockerd {running:?} runs but does not answer"));
            }
        }
        self.end_watchdog();
        let Some(before) = self.changed_config.take() else { return Ok(()) };
        let pid = *dockerd_pids().first().ok_or("no dockerd after the restart")?;
        // A key missing from the file keeps its current value on SIGHUP: say false, reload,
        // then put back the exact bytes (which the next start reads).
        let text = before.as_deref().map(|b| String::from_utf8_lossy(b).into_owned());
        let off = with_live_restore(text.as_deref(), false)?;
        fs::write(&self.config, off).map_err(|e| format!("{}: {e}", self.config.display()))?;
        let reloaded = reload(pid, false);
        let put_back = match &before {
            Some(b) => fs::write(&self.config, b),
            None => fs::remove_file(&self.config),
        };
        put_back.map_err(|e| format!("restoring {}: {e}", self.config.display()))?;
        reloaded
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.restore() {
            eprintln!("xlb-tests: PUTTING THE DOCKER DAEMON BACK FAILED: {e}\n(dockerd was started as {})", self.describe());
            if !thread::panicking() {
                panic!("putting the Docker daemon back: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_restore_is_added_to_daemon_json() {
        assert_eq!(with_live_restore(None, true).unwrap(), "{\"live-restore\": true}");
        assert_eq!(with_live_restore(Some(" { } "), false).unwrap(), "{\"live-restore\": false } ");
        let t = with_live_restore(Some("{\"mtu\": 1400}\n"), true).unwrap();
        assert_eq!(t, "{\"live-restore\": true,\"mtu\": 1400}\n");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&t).unwrap()["mtu"].as_u64(), Some(1400));
        assert!(with_live_restore(Some("{\"live-restore\": false}"), true).is_err());
        assert!(with_live_restore(Some("[1]"), true).is_err());
    }

    #[test]
    fn config_file_from_the_command_line() {
        let argv = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(config_file(&argv(&["/usr/sbin/dockerd"])), PathBuf::from(DEFAULT_CONFIG));
        assert_eq!(config_file(&argv(&["dockerd", "--config-file", "/x.json"])), PathBuf::from("/x.json"));
        assert_eq!(config_file(&argv(&["dockerd", "--config-file=/y.json"])), PathBuf::from("/y.json"));
    }
}
