//! Small helpers: running commands, unique names, waiting, processes with captured logs.

use std::{
    ffi::OsStr,
    fs,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short id, unique on this machine while this process lives: `<pid hex>x<counter>`.
///
/// Names built from it (`xt<id><role>`) let [`crate::cleanup_stale`] find leftovers of dead
/// test processes. Kept short so that `xt<id><role>` fits an interface name (15 bytes).
pub fn unique_id() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:x}x{n}", std::process::id())
}

/// The pid encoded in a name made from [`unique_id`] (`xt<pid hex>x...`).
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("xt")?;
    let (pid, _) = rest.split_once('x')?;
    u32::from_str_radix(pid, 16).ok()
}

pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command to completion; `Err` carries the command line, status, stdout and stderr.
pub fn try_run(cmd: &mut Command) -> Result<String, String> {
    let desc = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`{desc}`: cannot start: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "`{desc}` failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            stdout.trim_end(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        ))
    }
}

/// Runs a command to completion and panics (with its output) if it fails.
#[track_caller]
pub fn run(cmd: &mut Command) -> String {
    try_run(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// `Command::new(prog).args(args)`.
pub fn cmd<S: AsRef<OsStr>>(prog: impl AsRef<OsStr>, args: impl IntoIterator<Item = S>) -> Command {
    let mut c = Command::new(prog);
    c.args(args);
    c
}

/// Whether `prog` is found on PATH (or is an existing path).
pub fn have(prog: &str) -> bool {
    which(prog).is_some()
}

/// Where `prog` is: the first match on PATH (or `prog` itself, when it is an existing path).
pub fn which(prog: &str) -> Option<PathBuf> {
    if prog.contains('/') {
        return Path::new(prog).exists().then(|| prog.into());
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(prog)).find(|p| p.is_file())
}

/// Polls `f` every `every` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(every);
    }
}

/// Signed milliseconds from `a` to `b`.
pub fn delta_ms(a: Instant, b: Instant) -> f64 {
    match b.checked_duration_since(a) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(a - b).as_secs_f64() * 1e3,
    }
}

pub fn send_signal(pid: u32, sig: libc::c_int) -> bool {
    // SAFETY: plain kill(2).
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}

/// A temporary file, deleted on drop.
pub struct TempFile {
    path: PathBuf,
}

impl TempFile {
    pub fn new(suffix: &str, contents: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("xt{}{suffix}", unique_id()));
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        TempFile { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&self, contents: &str) {
        // Write-then-rename, so a reader never sees a half-written file.
        let tmp = self.path.with_extension("tmp");
        fs::write(&tmp, contents).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        fs::rename(&tmp, &self.path).unwrap_or_else(|e| panic!("rename {}: {e}", tmp.display()));
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// A temporary directory, deleted (recursively) on drop.
pub struct TempDir {
    path: PathBuf,
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl TempDir {
    pub fn new() -> TempDir {
        let path = std::env::temp_dir().join(format!("xt{}d", unique_id()));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// The lines a child printed so far (stdout and stderr, in arrival order per stream).
#[derive(Clone, Default)]
pub struct Log {
    lines: Arc<Mutex<Vec<String>>>,
}

impl Log {
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn len(&self) -> usize {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn text(&self) -> String {
        let mut s = self.lines().join("\n");
        s.push('\n');
        s
    }

    fn push(&self, line: String) {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }
}

/// Reads `r` line by line into `log` (prefixed with `prefix`), sending each line on `tx`.
fn pump(r: impl Read + Send + 'static, prefix: &'static str, log: Log, tx: mpsc::Sender<(&'static str, String)>) {
    each_line(r, move |line| {
        log.push(format!("{prefix}{line}"));
        let _ = tx.send((prefix, line));
        true
    });
}

/// Hands each line of `r` (without its line end; invalid UTF-8 replaced) to `f` on a thread
/// of its own, until `r` ends or fails or `f` answers false.
pub fn each_line(r: impl Read + Send + 'static, mut f: impl FnMut(String) -> bool + Send + 'static) {
    thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if !f(String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string()) {
                        break;
                    }
                }
            }
        }
    });
}

/// A child process whose stdout and stderr are collected; killed (SIGKILL) on drop if it is
/// still running.
pub struct Proc {
    pub name: String,
    child: Child,
    log: Log,
    lines: Mutex<mpsc::Receiver<(&'static str, String)>>,
}

pub const STDOUT: &str = "[out] ";
pub const STDERR: &str = "[err] ";

impl Proc {
    /// Spawns `cmd` with piped stdout/stderr (stdin closed).
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        let desc = describe(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start `{desc}`: {e}"));
        let log = Log::default();
        log.push(format!("$ {desc}"));
        let (tx, rx) = mpsc::channel();
        pump(child.stdout.take().unwrap(), STDOUT, log.clone(), tx.clone());
        pump(child.stderr.take().unwrap(), STDERR, log.clone(), tx);
        Proc { name: name.to_string(), child, log, lines: Mutex::new(rx) }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Waits until a line from `stream` ([`STDOUT`] or [`STDERR`]) contains `needle`.
    /// `Err` (with the log) on timeout or if the process exits first.
    pub fn wait_line(&mut self, stream: &str, needle: &str, timeout: Duration) -> Result<String, String> {
        self.wait_match(stream, &format!("{needle:?}"), timeout, |l| l.contains(needle))
    }

    /// Waits until a line from `stream` contains the word `word` (so `ready` does not match
    /// `already`).
    pub fn wait_word(&mut self, stream: &str, word: &str, timeout: Duration) -> Result<String, String> {
        self.wait_match(stream, &format!("the word {word:?}"), timeout, |l| {
            l.split(|c: char| !(c.is_alphanumeric() || c == '_')).any(|w| w == word)
        })
    }

    /// Waits until a line from `stream` satisfies `pred` (`what` describes it in errors).
    pub fn wait_match(
        &mut self,
        stream: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let needle = what;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.get_mut().unwrap_or_else(|e| e.into_inner()).recv_timeout(left.min(Duration::from_millis(200))) {
                Ok((s, line)) if s == stream && pred(&line) => return Ok(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let st = self.child.wait().ok();
                    return Err(format!(
                        "{}: exited ({st:?}) before printing a line containing {needle}; log:\n{}",
                        self.name,
                        self.log.text()
                    ));
                }
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                // Give the pumps a moment to drain the pipes.
                thread::sleep(Duration::from_millis(100));
                while let Ok((s, line)) = self.lines.get_mut().unwrap_or_else(|e| e.into_inner()).try_recv() {
                    if s == stream && pred(&line) {
                        return Ok(line);
                    }
                }
                return Err(format!(
                    "{}: exited ({st}) before printing a line containing {needle}; log:\n{}",
                    self.name,
                    self.log.text()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{}: no line containing {needle} within {timeout:?}; log:\n{}",
                    self.name,
                    self.log.text()
                ));
            }
        }
    }

    /// Drops the lines received so far from the "new lines" queue (the log keeps them).
    pub fn drain_lines(&mut self) {
        while self.lines.get_mut().unwrap_or_else(|e| e.into_inner()).try_recv().is_ok() {}
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `sig`, then waits up to `timeout` for the exit. `None`: still running.
    pub fn signal_and_wait(&mut self, sig: libc::c_int, timeout: Duration) -> Option<ExitStatus> {
        if let Some(st) = self.try_wait() {
            return Some(st);
        }
        send_signal(self.pid(), sig);
        wait_for(timeout, Duration::from_millis(20), || self.try_wait())
    }

    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.signal_and_wait(libc::SIGKILL, Duration::from_secs(5))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            self.kill();
        }
    }
}
