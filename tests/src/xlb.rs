//! Running `xlb run` under test: readiness, reload, clean stop.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{
    docker::parse_rfc3339,
    load::Report,
    netns::NetNs,
    util::{Proc, STDERR, cmd, try_run},
};

/// How long `xlb run` may take to log `ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `xlb` may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The `xlb` binary from `$XLB_BIN`; panics with a clear message when it is not set or missing.
pub fn xlb_bin() -> PathBuf {
    let Some(p) = std::env::var_os("XLB_BIN") else {
        panic!(
            "XLB_BIN is not set: these tests need the xlb binary. Build it \
             (`cargo build -p lb-userspace`) and run e.g. \
             `XLB_BIN=$PWD/target/debug/xlb cargo test -p xlb-tests -- --test-threads=1` as root"
        );
    };
    let p = PathBuf::from(p);
    assert!(p.is_file(), "XLB_BIN={} does not exist or is not a file", p.display());
    p
}

/// A running `xlb run`. Dropping it stops xlb with SIGTERM and panics (unless already
/// panicking) if it does not exit 0 in time or leaves programs attached; call
/// [`Xlb::stop`] to check that explicitly.
pub struct Xlb {
    proc: Proc,
    ns: Option<String>,
    /// Interfaces that must have no XDP/TC program once xlb has exited.
    ifaces: Vec<String>,
    stopped: bool,
}

/// What to run.
pub struct XlbArgs<'a> {
    /// Namespace to run in (`None`: the root namespace).
    pub ns: Option<&'a NetNs>,
    pub iface: &'a str,
    pub config: Option<&'a Path>,
    pub specs: Vec<String>,
    /// Interfaces besides `iface` that must be clean after exit (e.g. backend-facing ones).
    pub other_ifaces: Vec<String>,
}

impl Xlb {
    /// Spawns `$XLB_BIN run --iface IFACE [--config FILE] SPECS...` and waits for a stderr line
    /// containing the word `ready` (panics with the log after [`READY_TIMEOUT`] or if xlb exits).
    pub fn start(args: XlbArgs<'_>) -> Xlb {
        Xlb::start_with_env(args, &[])
    }

    /// [`Xlb::start`] with extra environment variables (e.g. `RUST_LOG`).
    pub fn start_with_env(args: XlbArgs<'_>, env: &[(&str, &str)]) -> Xlb {
        let bin = xlb_bin();
        let mut c = match args.ns {
            Some(ns) => ns.exec(bin.to_str().expect("utf-8 path"), std::iter::empty::<&str>()),
            None => std::process::Command::new(&bin),
        };
        c.args(["run", "--iface", args.iface]);
        if let Some(cfg) = args.config {
            c.arg("--config").arg(cfg);
        }
        c.args(&args.specs);
        if std::env::var_os("RUST_LOG").is_none() {
            c.env("RUST_LOG", "info");
        }
        c.env("NO_COLOR", "1");
        c.envs(env.iter().copied());
        // `ip netns exec` execs the program, so the child's pid is xlb's.
        let mut proc = Proc::spawn("xlb", c);
        let mut ifaces = vec![args.iface.to_string()];
        ifaces.extend(args.other_ifaces);
        if let Err(e) = proc.wait_word(STDERR, "ready", READY_TIMEOUT) {
            panic!("xlb did not become ready: {e}");
        }
        Xlb { proc, ns: args.ns.map(|n| n.name().to_string()), ifaces, stopped: false }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Everything xlb logged so far.
    pub fn log(&self) -> String {
        self.proc.log().text()
    }

    /// xlb's log lines with their timestamps, on `report`'s time line.
    pub fn log_times(&self, report: &Report) -> Vec<(Instant, String)> {
        self.log()
            .lines()
            .filter_map(|l| {
                let ts = l.strip_prefix("[err] ")?.split_whitespace().next()?;
                Some((report.instant_of(parse_rfc3339(ts)?), l.to_string()))
            })
            .collect()
    }

    /// Panics (with the log) if xlb is no longer running.
    #[track_caller]
    pub fn assert_running(&mut self) {
        if let Some(st) = self.proc.try_wait() {
            panic!("xlb exited unexpectedly ({st}); log:\n{}", self.log());
        }
    }

    /// `GET PATH` on xlb's admin endpoint (127.0.0.1:9100, in xlb's namespace): the body.
    /// xlb refreshes what it serves there every 2 s.
    pub fn admin_get(&self, path: &str) -> Result<String, String> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 9100));
        let path = path.to_string();
        let get = move || match crate::http::request(addr, "GET", &path) {
            Ok(r) if r.status == 200 => Ok(r.body),
            Ok(r) => Err(format!("GET {path} on {addr}: status {} {:?}", r.status, r.body)),
            Err(e) => Err(format!("GET {path} on {addr}: {e}")),
        };
        match self.ns.clone() {
            None => get(),
            Some(ns) => std::thread::spawn(move || {
                crate::netns::setns_current_thread(&ns).map_err(|e| format!("setns {ns}: {e}"))?;
                get()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p)),
        }
    }

    /// The kernel's drop counters from `/metrics` (`xlb_drops_total{reason="..."} N` lines),
    /// after waiting for the next refresh of the snapshot.
    pub fn kernel_drops(&self) -> String {
        std::thread::sleep(Duration::from_millis(2200));
        match self.admin_get("/metrics") {
            Ok(m) => {
                let lines: Vec<&str> = m.lines().filter(|l| l.starts_with("xlb_drops_total")).collect();
                if lines.is_empty() { "no xlb_drops_total in /metrics".into() } else { lines.join(", ") }
            }
            Err(e) => e,
        }
    }

    /// Sends SIGHUP (re-read `--config`) and waits until xlb logs something in reply (at most
    /// 5 s; the contract names no log line for reloads, so callers still poll the data plane
    /// until the change shows). Returns the new log lines.
    pub fn reload(&mut self) -> Vec<String> {
        self.assert_running();
        let before = self.proc.log().len();
        self.proc.drain_lines();
        crate::util::send_signal(self.pid(), libc::SIGHUP);
        let _ = crate::util::wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
            (self.proc.log().len() > before).then_some(())
        });
        // Lines often come in a burst; let it finish.
        std::thread::sleep(Duration::from_millis(200));
        self.assert_running();
        self.proc.log().lines()[before..].to_vec()
    }

    /// SIGTERM, then checks that xlb exits 0 within [`STOP_TIMEOUT`] and that no XDP or TC
    /// program is left on the interfaces it was attached to.
    pub fn stop(&mut self) -> Result<(), String> {
        if self.stopped {
            return Ok(());
        }
        self.stop_while(|| ())
    }

    /// [`Xlb::stop`], running `during` between the SIGTERM and the wait for the exit: what a
    /// client sees while xlb drains. Returns `during`'s result.
    pub fn stop_while<T>(&mut self, during: impl FnOnce() -> T) -> Result<T, String> {
        let seen = self.terminate(during)?;
        let leftovers = self.attached_programs();
        if !leftovers.is_empty() {
            return Err(format!(
                "xlb exited but left programs attached:\n{}\nlog:\n{}",
                leftovers.join("\n"),
                self.log()
            ));
        }
        Ok(seen)
    }

    /// SIGTERM to an xlb run with `--keep-dataplane`: checks that it exits 0 within
    /// [`STOP_TIMEOUT`] and says it kept the data plane, which stays attached.
    pub fn stop_keeping_dataplane(&mut self) -> Result<(), String> {
        self.terminate(|| ())?;
        if !self.log().contains("data plane kept") {
            return Err(format!("xlb exited without keeping the data plane; log:\n{}", self.log()));
        }
        Ok(())
    }

    /// SIGKILL: xlb dies at once and cleans nothing up, as in a crash or at the OOM killer's
    /// hand.
    pub fn kill_9(&mut self) {
        self.stopped = true;
        self.proc.kill();
    }

    /// SIGTERM, `during`, then checks that xlb exits 0 within [`STOP_TIMEOUT`] of the signal.
    fn terminate<T>(&mut self, during: impl FnOnce() -> T) -> Result<T, String> {
        self.stopped = true;
        let sent = Instant::now();
        let seen = match self.proc.signal_and_wait(libc::SIGTERM, Duration::ZERO) {
            Some(st) => return Err(format!("xlb had exited ({st}) before SIGTERM; log:\n{}", self.log())),
            None => during(),
        };
        let left = STOP_TIMEOUT.saturating_sub(sent.elapsed());
        let status = match crate::util::wait_for(left, Duration::from_millis(20), || self.proc.try_wait()) {
            Some(st) => st,
            None => {
                self.proc.kill();
                return Err(format!(
                    "xlb did not exit within {STOP_TIMEOUT:?} of SIGTERM (killed); log:\n{}",
                    self.log()
                ));
            }
        };
        // Let the pumps collect the last lines.
        std::thread::sleep(Duration::from_millis(100));
        if std::env::var_os("XLB_TESTS_VERBOSE").is_some() {
            eprintln!("--- xlb log ---\n{}", self.log());
        }
        if !status.success() {
            return Err(format!("xlb exited with {status} after SIGTERM (want 0); log:\n{}", self.log()));
        }
        Ok(seen)
    }

    /// Panics unless an XDP program is attached to `--iface` (the contract's `xlb_xdp`).
    #[track_caller]
    pub fn assert_xdp_attached(&self) {
        let iface = &self.ifaces[0];
        let mut c = match self.ns.as_deref() {
            Some(ns) => cmd("ip", ["-n", ns]),
            None => std::process::Command::new("ip"),
        };
        let out = try_run(c.args(["-d", "link", "show", "dev", iface])).unwrap_or_else(|e| panic!("{e}"));
        assert!(out.contains(" xdp"), "no XDP program on {iface} while xlb runs:\n{out}\nlog:\n{}", self.log());
    }

    /// Programs still attached to xlb's interfaces (XDP from `ip link`, TC/tcx from
    /// `bpftool net` when available, else `tc filter`).
    pub fn attached_programs(&self) -> Vec<String> {
        let mut found = Vec::new();
        let ns = self.ns.as_deref();
        let run_in = |prog: &str, args: &[&str]| -> Result<String, String> {
            match ns {
                Some(ns) => try_run(cmd("ip", ["netns", "exec", ns, prog]).args(args)),
                None => try_run(&mut cmd(prog, args)),
            }
        };
        for ifc in &self.ifaces {
            let Ok(link) = run_in("ip", &["-d", "link", "show", "dev", ifc]) else { continue };
            if link.contains("prog/xdp") || link.contains(" xdp") {
                found.push(format!("{ifc}: {}", link.trim()));
            }
            if crate::util::have("bpftool") {
                // Shows XDP and clsact programs (TCX links only with bpftool >= 7.3).
                if let Ok(out) = run_in("bpftool", &["net", "show", "dev", ifc]) {
                    let progs: Vec<&str> = out
                        .lines()
                        .filter(|l| l.contains(&format!("{ifc}(")) && l.contains(" id "))
                        .collect();
                    if !progs.is_empty() {
                        found.push(format!("{ifc}: {}", progs.join("; ")));
                    }
                }
            }
            for dir in ["ingress", "egress"] {
                if let Ok(out) = run_in("tc", &["filter", "show", "dev", ifc, dir])
                    && out.contains("bpf") {
                        found.push(format!("{ifc} tc {dir}: {}", out.trim()));
                    }
            }
        }
        found
    }
}

/// Lines of xlb's log printed when a test panics while xlb runs.
pub const LOG_TAIL_ON_PANIC: usize = 150;

impl Drop for Xlb {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.stopped {
            let lines = self.proc.log().lines();
            let skip = lines.len().saturating_sub(LOG_TAIL_ON_PANIC);
            eprintln!(
                "--- xlb log (the test panicked; last {} of {} lines) ---\n{}\n--- end of xlb log ---",
                lines.len() - skip,
                lines.len(),
                lines[skip..].join("\n")
            );
        }
        if let Err(e) = self.stop() {
            if std::thread::panicking() {
                eprintln!("xlb-tests: while unwinding: {e}");
            } else {
                panic!("{e}");
            }
        }
    }
}

/// A BPF file system for the kept data planes of the tests. Not /sys/fs/bpf: xlb runs under
/// `ip netns exec`, which mounts a fresh sysfs over /sys and so hides the host's (and a host
/// may have none there).
pub const BPFFS: &str = "/run/xlb-tests-bpffs";

/// Mounts [`BPFFS`] in the root mount namespace (namespaces `ip netns exec` makes later see
/// it) unless it is mounted already.
pub fn ensure_bpffs() {
    std::fs::create_dir_all(BPFFS).unwrap_or_else(|e| panic!("creating {BPFFS}: {e}"));
    let out = crate::util::run(&mut cmd("stat", ["-f", "-c", "%T", BPFFS]));
    if out.trim() != "bpf_fs" {
        crate::util::run(&mut cmd("mount", ["-t", "bpf", "bpf", BPFFS]));
    }
}
