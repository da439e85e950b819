//! Running external programs. Each command is echoed before it runs, so a log (CI's above
//! all) shows exactly what was done and can be replayed by hand.
use std::{
    env,
    ffi::{OsStr, OsString},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// The cargo that runs this task, so that nested builds use the same toolchain.
pub fn cargo_program() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// A command that takes longer than this says when it is done, and after how long.
const SLOW: Duration = Duration::from_secs(5);

/// Runs `cmd` with inherited stdio; fails unless it exits 0. One that took over [`SLOW`]
/// says so when it ends (a long build or download otherwise looks like a hang).
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = echo(cmd);
    let started = Instant::now();
    let status = cmd.status().with_context(|| start_error(&line))?;
    let took = started.elapsed();
    if took > SLOW {
        let program = cmd.get_program().to_string_lossy();
        eprintln!("  ({program} {} after {:.0} s)", if status.success() { "done" } else { "failed" }, took.as_secs_f64());
    }
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; on failure the error carries the last line of stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let line = echo(cmd);
    let out = cmd.stdin(Stdio::null()).output().with_context(|| start_error(&line))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        bail!("`{line}` failed ({}): {}", out.status, last.trim());
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{line}` printed non-UTF-8 output"))
}

/// Runs `cmd` silently and tells whether it exited 0: for checks whose failure is an answer,
/// not an error.
pub fn probe(cmd: &mut Command) -> bool {
    echo(cmd);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|status| status.success())
}

/// Starts `cmd` without waiting for it.
pub fn spawn(cmd: &mut Command) -> Result<Child> {
    let line = echo(cmd);
    cmd.spawn().with_context(|| start_error(&line))
}

/// Replaces this process with `cmd`, so signals (Ctrl-C) and the exit status go straight to
/// and from it. Returns only on failure.
pub fn exec(cmd: &mut Command) -> anyhow::Error {
    let line = echo(cmd);
    anyhow::Error::new(cmd.exec()).context(start_error(&line))
}

/// The path of `program` on `PATH`, if it is an executable file there.
pub fn which(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Whether this process runs as root: attaching XDP programs, network namespaces, apt and
/// dockerd all need it.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn start_error(line: &str) -> String {
    format!("could not start `{line}` (is it installed and on PATH?)")
}

/// Prints `cmd` as a shell line, with the environment variables it sets.
fn echo(cmd: &Command) -> String {
    let envs = cmd.get_envs().filter_map(|(key, value)| value.map(|value| format!("{}={}", key.to_string_lossy(), quote(value))));
    let words = std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(quote);
    let line = envs.chain(words).collect::<Vec<_>>().join(" ");
    eprintln!("$ {line}");
    line
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c);
    if !word.is_empty() && word.chars().all(plain) { word.into_owned() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}
