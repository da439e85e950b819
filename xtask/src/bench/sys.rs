//! Network namespaces, veth pairs and child processes for the benchmark: a small, quiet
//! cousin of `tests/src/netns.rs` (errors are `Result`s here, where the tests' helpers panic).
//!
//! Everything the benchmark creates is named `xb<pid hex>-<role>`; namespaces left behind
//! by a benchmark that was killed are removed by the next one.
use std::{
    ffi::OsStr,
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// `xb<pid hex>`: the prefix of this benchmark's namespaces and host-unique names.
pub fn tag() -> String {
    format!("xb{:x}", std::process::id())
}

/// Runs `cmd` without echoing it; returns stdout, or an error with the command and the
/// last line of its stderr.
pub fn sh(cmd: &mut Command) -> Result<String> {
    let line = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        bail!("`{line}` failed ({}): {}", out.status, last.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `ip ARGS` (split on whitespace).
pub fn ip(args: &str) -> Result<()> {
    sh(Command::new("ip").args(args.split_whitespace())).map(drop)
}

/// A network namespace, deleted on drop with every process still in it.
pub struct Ns {
    name: String,
}

impl Ns {
    /// Creates `xb<pid hex>-<role>` with `lo` up.
    pub fn new(role: &str) -> Result<Ns> {
        let name = format!("{}-{role}", tag());
        ip(&format!("netns add {name}"))?;
        let ns = Ns { name };
        ns.ip("link set lo up")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NS PROG`: `ip` execs PROG, so the child's pid is PROG's.
    pub fn cmd(&self, prog: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(prog);
        cmd
    }

    /// `ip -n NS ARGS` (split on whitespace).
    pub fn ip(&self, args: &str) -> Result<()> {
        sh(Command::new("ip").args(["-n", &self.name]).args(args.split_whitespace())).map(drop)
    }

    /// `sysctl -w KEY=VALUE...` inside the namespace.
    pub fn sysctls(&self, settings: &[(&str, &str)]) -> Result<()> {
        let mut cmd = self.cmd("sysctl");
        cmd.args(["-q", "-w"]);
        for (key, value) in settings {
            cmd.arg(format!("{key}={value}"));
        }
        sh(&mut cmd).map(drop)
    }

    /// Pids of the processes in the namespace.
    pub fn pids(&self) -> Vec<u32> {
        pids_in(&self.name)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        delete_ns(&self.name);
    }
}

fn pids_in(ns: &str) -> Vec<u32> {
    sh(Command::new("ip").args(["netns", "pids", ns]))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Ends every process in `ns` (TERM, then KILL after a second) and deletes it.
fn delete_ns(ns: &str) {
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        let pids = pids_in(ns);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            send(pid, signal);
        }
        for _ in 0..20 {
            if pids_in(ns).is_empty() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
    if let Err(err) = ip(&format!("netns del {ns}")) {
        eprintln!("bench: cleanup: {err:#}");
    }
}

/// Deletes the namespaces of benchmarks that are no longer running.
pub fn remove_stale() {
    let Ok(list) = sh(Command::new("ip").args(["netns", "list"])) else { return };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix("xb")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(hex, _)| u32::from_str_radix(hex, 16).ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("bench: removing namespace {name} left by a benchmark that is gone");
            delete_ns(name);
        }
    }
}

/// A veth pair with end `a_name` in `a` and `b_name` in `b`, both up.
pub fn veth(a: &Ns, a_name: &str, b: &Ns, b_name: &str) -> Result<()> {
    ip(&format!("link add {a_name} netns {} type veth peer name {b_name} netns {}", a.name, b.name))?;
    a.ip(&format!("link set {a_name} up"))?;
    b.ip(&format!("link set {b_name} up"))
}

pub fn send(pid: u32, signal: i32) {
    // SAFETY: kill(2) with a pid we started or found in our own namespace.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// A child process whose stdout and stderr go to a log file; killed on drop if it still
/// runs.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let line = describe(&cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("could not start `{line}`"))?;
        Ok(Proc { name: name.to_owned(), child, log: log.to_owned(), status: None })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits at most `timeout` for `word` in the log; fails if the process exits first.
    pub fn wait_log(&mut self, word: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(word) {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                bail!("{} exited ({status}) before saying {word:?}:\n{}", self.name, tail(&self.log()));
            }
            if Instant::now() >= deadline {
                bail!("{} did not say {word:?} within {timeout:?}:\n{}", self.name, tail(&self.log()));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `timeout`.
    pub fn stop(&mut self, timeout: Duration) -> Result<()> {
        if self.exited().is_some() {
            return Ok(());
        }
        send(self.pid(), libc::SIGTERM);
        if self.wait_timeout(timeout).is_none() {
            let _ = self.child.kill();
            self.wait_timeout(Duration::from_secs(5));
            bail!("{} did not exit within {timeout:?} of SIGTERM (killed)", self.name);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last lines of a log, for error messages.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Runs `f` on a new thread that lives in `ns`: the sockets it opens belong there.
pub fn enter<R: Send>(ns: &Ns, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
    use std::os::fd::AsRawFd as _;
    let file = File::open(format!("/run/netns/{}", ns.name())).with_context(|| format!("opening namespace {}", ns.name()))?;
    thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns(2) on a descriptor we own; it moves only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns into {}: {}", ns.name(), std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
