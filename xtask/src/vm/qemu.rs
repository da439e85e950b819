//! Booting a kernel with the test initramfs under QEMU and reading the results from the
//! serial console.
use std::{
    fmt,
    fs::OpenOptions,
    io::Read,
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::ValueEnum;

use super::{
    initramfs::{BOOTED, DONE, RETRY, SUITE_END, SUITE_START},
    kernel::Kernel,
    suite::Suite,
};
use crate::cmd;

pub const QEMU: &str = "qemu-system-x86_64";

/// How long a KVM guest may take to reach `/init`: KVM takes a second or two, so a guest
/// that is silent this long is stuck (some nested setups hang instead of failing).
const KVM_BOOT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Accel {
    /// KVM when /dev/kvm opens and the first guest boots with it, else TCG.
    Auto,
    Kvm,
    /// QEMU's own CPU emulation: slower (about 10x), works everywhere.
    Tcg,
}

impl Accel {
    /// What to try first.
    pub fn pick(self) -> Accel {
        match self {
            Accel::Auto if kvm_opens() => Accel::Kvm,
            Accel::Auto => Accel::Tcg,
            other => other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

fn kvm_opens() -> bool {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

pub struct Boot<'a> {
    /// Prefix of the guest's console lines.
    pub label: String,
    pub kernel: &'a Kernel,
    pub initrd: &'a Path,
    pub accel: Accel,
    pub memory: u32,
    pub cpus: u32,
    /// For the whole boot.
    pub timeout: Duration,
}

/// How the guest ended.
#[derive(Debug)]
pub enum End {
    /// `/init` printed its last marker and QEMU exited.
    Done,
    /// QEMU exited early (a kernel panic reboots, and `-no-reboot` turns that into an exit).
    Exited(String),
    /// Killed after this long: the time limit, or no boot marker in time under KVM.
    Killed { after: Duration, why: &'static str },
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Done => write!(f, "done"),
            End::Exited(how) => write!(f, "QEMU exited before the tests ended: {how}"),
            End::Killed { after, why } => {
                write!(f, "killed after {:.0}s: {why}", after.as_secs_f64())
            }
        }
    }
}

/// One suite's run in the guest.
pub struct SuiteResult {
    pub suite: String,
    /// The test binary's exit status; `None` if it never ended.
    pub rc: Option<i32>,
    /// Wall time on the host, from start marker to end marker.
    pub took: Duration,
    /// libtest's `N passed; M failed; ...` of the binary's last `test result:` line.
    pub counts: Option<String>,
    /// Tests that failed in the last run of the binary.
    pub failed_tests: Vec<String>,
    /// Tests that failed and were run again.
    pub retried: Vec<String>,
}

impl SuiteResult {
    pub fn line(&self) -> String {
        let verdict = match self.rc {
            Some(0) => "ok".to_string(),
            Some(rc) => format!("FAILED (exit {rc})"),
            None => "did not finish".to_string(),
        };
        let mut s = format!(
            "{}: {verdict} in {:.0}s",
            self.suite,
            self.took.as_secs_f64()
        );
        if let Some(c) = &self.counts {
            s += &format!(" ({c})");
        }
        if !self.failed_tests.is_empty() {
            s += &format!("; failed: {}", self.failed_tests.join(", "));
        }
        let flaky: Vec<&str> = self
            .retried
            .iter()
            .filter(|t| !self.failed_tests.contains(t))
            .map(String::as_str)
            .collect();
        if !flaky.is_empty() {
            s += &format!(
                "; FLAKY (failed, then passed when run again): {}",
                flaky.join(", ")
            );
        }
        s
    }
}

pub struct Outcome {
    /// From QEMU's start to `/init`'s first line.
    pub boot: Option<Duration>,
    pub total: Duration,
    pub end: End,
    pub suites: Vec<SuiteResult>,
}

impl Outcome {
    pub fn booted(&self) -> bool {
        self.boot.is_some()
    }

    /// Every suite ran to the end and exited 0.
    pub fn passed(&self, suites: &[Suite]) -> bool {
        matches!(self.end, End::Done)
            && suites.iter().all(|s| {
                self.suites
                    .iter()
                    .any(|r| r.suite == s.name() && r.rc == Some(0))
            })
    }

    pub fn summary(&self) -> String {
        let boot = self.boot.map_or("no boot".to_string(), |b| {
            format!("booted in {:.1}s", b.as_secs_f64())
        });
        format!(
            "{boot}, {:.0}s in all, {}",
            self.total.as_secs_f64(),
            self.end
        )
    }
}

/// Boots the guest and follows its console until it powers off, QEMU exits or the time is up.
pub fn run(boot: &Boot<'_>) -> Result<Outcome> {
    let mut qemu = command(boot);
    eprintln!(
        "vm: booting {} ({}) with {}",
        boot.label,
        boot.kernel.release,
        boot.accel.name()
    );
    let started = Instant::now();
    let mut child = cmd::spawn(&mut qemu)?;
    let (tx, rx) = mpsc::channel();
    pump(child.stdout.take().expect("piped"), tx.clone());
    pump(child.stderr.take().expect("piped"), tx);

    let boot_deadline = (boot.accel == Accel::Kvm).then(|| started + KVM_BOOT_TIMEOUT);
    let deadline = started + boot.timeout;
    let mut console = Console::new(started);
    let killed = loop {
        let now = Instant::now();
        let limit = match boot_deadline {
            Some(b) if console.outcome.boot.is_none() => b.min(deadline),
            _ => deadline,
        };
        if now >= limit {
            break Some(if console.outcome.boot.is_none() && boot_deadline.is_some() {
                "no output from /init (KVM does not boot here?)"
            } else {
                "time limit (--timeout)"
            });
        }
        let line = match rx.recv_timeout(limit - now) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            // Both pipes closed: QEMU is gone.
            Err(mpsc::RecvTimeoutError::Disconnected) => break None,
        };
        println!("[{}] {line}", boot.label);
        console.read(line);
    };
    let Console { mut outcome, mut current, done, last_lines, .. } = console;
    if let Some(why) = killed {
        // Our own child: ends QEMU and with it the guest.
        let _ = child.kill();
        outcome.end = End::Killed {
            after: started.elapsed(),
            why,
        };
    }
    let status = child.wait().context("waiting for QEMU")?;
    outcome.total = started.elapsed();
    if let Some((mut r, t)) = current.take() {
        r.took = t.elapsed();
        outcome.suites.push(r);
    }
    if killed.is_none() {
        outcome.end = if done && status.success() {
            End::Done
        } else {
            End::Exited(format!("{status}; last lines: {}", last_lines.join(" / ")))
        };
    }
    Ok(outcome)
}

/// QEMU's command line for `boot`: serial console on stdio, no devices but the kernel and
/// the initramfs.
fn command(boot: &Boot<'_>) -> Command {
    let mut qemu = Command::new(QEMU);
    qemu.args([
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display",
        "none",
        "-serial",
        "stdio",
    ])
    .args([
        "-m",
        &boot.memory.to_string(),
        "-smp",
        &boot.cpus.to_string(),
    ])
    .arg("-kernel")
    .arg(&boot.kernel.image)
    .arg("-initrd")
    .arg(boot.initrd)
    .args([
        "-append",
        // panic=-1: a panic reboots at once, which -no-reboot turns into QEMU's exit.
        // random.trust_cpu: RDRAND seeds the CRNG, so getrandom() never waits at boot.
        "console=ttyS0 quiet panic=-1 oops=panic random.trust_cpu=on rdinit=/init",
    ]);
    match boot.accel {
        Accel::Kvm => qemu.args(["-accel", "kvm", "-cpu", "host"]),
        _ => qemu.args(["-accel", "tcg,thread=multi", "-cpu", "max"]),
    };
    qemu.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    qemu
}

/// What the guest's console has said so far.
struct Console {
    started: Instant,
    outcome: Outcome,
    /// The suite running now, and when it started.
    current: Option<(SuiteResult, Instant)>,
    /// `/init` printed its last marker.
    done: bool,
    /// The last five lines, for the report when QEMU exits early.
    last_lines: Vec<String>,
}

impl Console {
    fn new(started: Instant) -> Console {
        Console {
            started,
            outcome: Outcome {
                boot: None,
                total: Duration::ZERO,
                end: End::Done,
                suites: Vec::new(),
            },
            current: None,
            done: false,
            last_lines: Vec::new(),
        }
    }

    /// Takes in one line: a marker of `/init`, or a line of a test binary's output.
    fn read(&mut self, line: String) {
        self.last_lines.push(line.clone());
        if self.last_lines.len() > 5 {
            self.last_lines.remove(0);
        }
        if line.starts_with(BOOTED) && self.outcome.boot.is_none() {
            self.outcome.boot = Some(self.started.elapsed());
        } else if let Some(name) = line.strip_prefix(SUITE_START) {
            self.current = Some((
                SuiteResult {
                    suite: name.trim().to_string(),
                    rc: None,
                    took: Duration::ZERO,
                    counts: None,
                    failed_tests: Vec::new(),
                    retried: Vec::new(),
                },
                Instant::now(),
            ));
        } else if let Some(rest) = line.strip_prefix(SUITE_END) {
            if let Some((mut r, t)) = self.current.take() {
                r.took = t.elapsed();
                r.rc = rest.split("rc=").nth(1).and_then(|v| v.trim().parse().ok());
                self.outcome.suites.push(r);
            }
        } else if let Some(rest) = line.strip_prefix(RETRY) {
            if let Some((r, _)) = self.current.as_mut() {
                // "SUITE TEST TEST ..."
                r.retried
                    .extend(rest.split_whitespace().skip(1).map(str::to_string));
                r.failed_tests.clear();
            }
        } else if line.starts_with(DONE) {
            self.done = true;
        } else if let Some((r, _)) = self.current.as_mut() {
            // The first run's counts: a retry runs only the failed tests.
            if let Some(counts) = line
                .strip_prefix("test result: ")
                .filter(|_| r.counts.is_none())
            {
                // "ok. 14 passed; 0 failed; ...; finished in 52.31s"
                r.counts = Some(
                    counts
                        .split_once(". ")
                        .map_or(counts, |(_, c)| c)
                        .split("; finished")
                        .next()
                        .unwrap_or("")
                        .to_string(),
                );
            } else if let Some(name) = line
                .strip_prefix("test ")
                .and_then(|l| l.strip_suffix(" ... FAILED"))
            {
                r.failed_tests.push(name.to_string());
            }
        }
    }
}

/// Sends `from`'s lines (carriage returns dropped, invalid UTF-8 replaced) to `tx`.
fn pump(from: impl Read + Send + 'static, tx: mpsc::Sender<String>) {
    xlb_tests::util::each_line(from, move |line| tx.send(line.replace('\r', "")).is_ok());
}
