//! What the scenarios share: the topology and xlb under test, xlb's log and status, the
//! broken files of the reload and check tests, failure messages.

use std::{fmt::Write as _, fs, path::Path, time::Duration};

use xlb_tests::{
    Topology, Xlb,
    config::{self, BackendCfg, ServiceCfg},
    load::{LoadOpts, Report},
    status::{self, Status},
    topology::{LB_CLIENT_IF, TESTD_PORT, VIP4},
    util::{self, wait_for},
    xlb::XlbArgs,
};

/// The service's name in the configs below.
pub const SERVICE: &str = "web";
/// xlb's admin endpoint (its default), in the LB namespace.
pub const ADMIN: &str = "127.0.0.1:9100";
/// xlb refreshes its status snapshot every 2 s: a change shows within this.
pub const SNAPSHOT_WAIT: Duration = Duration::from_secs(5);

pub fn figure(test: &str, text: &str) {
    println!("OPERATE-FIGURE {test}: {text}");
}

pub fn setup(backends: usize) -> (xlb_tests::Serial, Topology) {
    let g = xlb_tests::serial();
    xlb_tests::preflight();
    (g, Topology::builder().backends(backends).build())
}

/// xlb in the LB namespace on `lc` with `--config cfg` (and no SPEC); at debug level, so the
/// log says when the maps were synced.
pub fn start_xlb(topo: &Topology, cfg: &Path) -> Xlb {
    let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info,xlb=debug".into());
    Xlb::start_with_env(
        XlbArgs { ns: Some(&topo.lb), iface: LB_CLIENT_IF, config: Some(cfg), specs: vec![], other_ifaces: topo.lb_backend_ifaces() },
        &[("RUST_LOG", &log)],
    )
}

/// The YAML of service `web` (VIP4:80/tcp) over the named backends.
pub fn yaml(topo: &Topology, names: &[&str]) -> String {
    let bs = names.iter().map(|n| BackendCfg::new(topo.ip(n, false), TESTD_PORT)).collect();
    config::render(&[ServiceCfg::tcp(SERVICE, VIP4.into(), 80, bs)])
}

/// How xlb names backend `name` in its status: `IP:PORT`.
pub fn addr_of(topo: &Topology, name: &str) -> String {
    format!("{}:{TESTD_PORT}", topo.ip(name, false))
}

/// The sorted status addresses of the named backends.
pub fn addrs_of(topo: &Topology, names: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = names.iter().map(|n| addr_of(topo, n)).collect();
    a.sort();
    a
}

/// `text` padded with a comment line to exactly `len` bytes (so files of different content
/// have the same size).
pub fn padded(text: &str, len: usize) -> String {
    assert!(text.len() + 2 <= len, "cannot pad {} bytes to {len}", text.len());
    let mut s = text.to_string();
    s.push('#');
    s.push_str(&"x".repeat(len - text.len() - 2));
    s.push('\n');
    assert_eq!(s.len(), len);
    s
}

/// Replaces the file at `path` (write to a temporary file, then rename) with `text` of the
/// same size and the same mtime as the old one: xlb's file watcher (mtime and size) cannot see
/// the change, so only a SIGHUP makes xlb read it.
pub fn write_keeping_stamp(path: &Path, text: &str) {
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(meta.len(), text.len() as u64, "write_keeping_stamp: the new text must have the old size");
    let mtime = meta.modified().expect("mtime");
    let tmp = path.with_extension("stamp-tmp");
    fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    let f = fs::File::options().write(true).open(&tmp).expect("reopen");
    f.set_modified(mtime).expect("set mtime");
    drop(f);
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename {}: {e}", tmp.display()));
    let now = fs::metadata(path).expect("stat");
    assert_eq!((now.modified().ok(), now.len()), (Some(mtime), meta.len()), "the file's stamp changed");
}

/// xlb's log, one entry per line.
pub fn log_lines(xlb: &Xlb) -> Vec<String> {
    xlb.log().lines().map(str::to_string).collect()
}

/// Waits (at most `timeout`) for a log line after the first `from` lines that satisfies
/// `pred`; returns its index and text.
pub fn wait_log(xlb: &Xlb, from: usize, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<(usize, String)> {
    wait_for(timeout, Duration::from_millis(10), || log_lines(xlb).into_iter().enumerate().skip(from).find(|(_, l)| pred(l)))
}

pub fn count_log(xlb: &Xlb, from: usize, needle: &str) -> usize {
    log_lines(xlb).iter().skip(from).filter(|l| l.contains(needle)).count()
}

/// The last lines of xlb's log, for failure messages.
pub fn tail(xlb: &Xlb) -> String {
    let lines = log_lines(xlb);
    let start = lines.len().saturating_sub(60);
    format!("--- xlb log (last {} lines) ---\n{}", lines.len() - start, lines[start..].join("\n"))
}

pub fn sighup(xlb: &mut Xlb) {
    xlb.assert_running();
    assert!(util::send_signal(xlb.pid(), libc::SIGHUP), "SIGHUP to xlb ({})", xlb.pid());
}

/// Polls `xlb status --json` (in the LB namespace) until `done` holds, at most `timeout`;
/// `Err` with the last answer otherwise.
pub fn poll_status(topo: &Topology, timeout: Duration, done: impl Fn(&Status) -> bool) -> Result<Status, String> {
    let mut last = Err("never asked".to_string());
    let ok = wait_for(timeout, Duration::from_millis(100), || {
        last = status::xlb_status(&topo.lb);
        last.as_ref().ok().filter(|s| done(s)).cloned()
    });
    ok.ok_or_else(|| match last {
        Ok(s) => format!("xlb status --json never matched within {timeout:?}; the last answer:\n{}", s.raw),
        Err(e) => format!("xlb status --json failed: {e}"),
    })
}

/// The service `web` of a status (panics, with the status, when it is missing).
#[track_caller]
pub fn web(s: &Status) -> &status::ServiceStatus {
    s.service(SERVICE).unwrap_or_else(|| panic!("no service {SERVICE:?} in xlb status:\n{}", s.raw))
}

/// A failure message: what went wrong, the load's report and the end of xlb's log.
pub fn context(what: &str, report: Option<&Report>, xlb: &Xlb) -> String {
    let mut s = format!("{what}\n");
    if let Some(r) = report {
        let _ = writeln!(s, "{r}");
    }
    let _ = write!(s, "{}", tail(xlb));
    s
}

/// Panics with [`context`] unless `$cond`.
macro_rules! ensure {
    ($cond:expr, $xlb:expr, $report:expr, $($fmt:tt)+) => {
        if !$cond {
            panic!("{}", $crate::common::context(&format!($($fmt)+), $report, $xlb));
        }
    };
}

#[track_caller]
pub fn stop(mut xlb: Xlb) {
    if let Err(e) = xlb.stop() {
        panic!("{e}");
    }
}

/// Load options for the reload scenarios: the default steady load, bounded at 60 s.
pub fn load_opts() -> LoadOpts {
    LoadOpts { max_duration: Duration::from_secs(60), ..LoadOpts::default() }
}

/// One broken file: its text, where the error is (1-based line and column) and what the
/// message says.
pub struct Broken {
    pub what: &'static str,
    pub text: String,
    pub line: usize,
    pub col: usize,
    pub says: &'static str,
}

/// The 1-based line and column of the first `needle` in `text`, plus `offset` columns.
#[track_caller]
fn pos(text: &str, needle: &str, offset: usize) -> (usize, usize) {
    let at = text.find(needle).unwrap_or_else(|| panic!("{needle:?} not in:\n{text}"));
    let line = text[..at].matches('\n').count() + 1;
    let col = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1 + offset;
    (line, col)
}

/// A [`Broken`] file whose error is at `needle` (plus `offset` columns).
pub fn broken(what: &'static str, text: String, needle: &str, offset: usize, says: &'static str) -> Broken {
    let (line, col) = pos(&text, needle, offset);
    Broken { what, text, line, col, says }
}
