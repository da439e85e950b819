//! The load generator: wrk in the client namespace, with a Lua script of ours that prints
//! what we need in one machine-readable line when the run is done.
//!
//! wrk prints p50/p75/p90/p99 with `--latency`; p99.9 only through the script's `done`
//! callback (`latency:percentile(99.9)`), which gives the others too. wrk's latency is the
//! time from writing a request to reading its response: with `Connection: close` the TCP
//! handshake of each new connection comes before that and is not in it.
//!
//! The script's `setup` gives each wrk thread its own address when it has targets: the
//! "direct" baseline runs one wrk with thread I talking to backend I, all backends at
//! once and no balancer in between (wrk's documented `thread.addr`; no per-request Lua,
//! so wrk stays on its fast path).
use std::{
    fmt::Write as _,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::{sys::Proc, topo::Topo};

/// How the client loads a contender.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Load {
    pub threads: usize,
    pub connections: usize,
    pub seconds: u64,
}

/// Keep-alive (many requests per connection) or one request per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    KeepAlive,
    Close,
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::KeepAlive, Mode::Close];

    pub fn label(self) -> &'static str {
        match self {
            Mode::KeepAlive => "keep-alive",
            Mode::Close => "new connection per request",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Mode::KeepAlive => "keep-alive",
            Mode::Close => "close",
        }
    }
}

/// What one wrk run measured. Latencies in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub requests: u64,
    pub seconds: f64,
    pub bytes: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// Connect, read, write, non-2xx/3xx status and timeout errors.
    pub errors: Errors,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Errors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub status: u64,
    pub timeout: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.status + self.timeout
    }
}

impl Outcome {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

const MARK: &str = "xlb-bench-result";

/// Writes the script; `targets`, when not empty, are given to wrk's threads in turn.
pub fn script(dir: &Path, name: &str, targets: &[(Ipv4Addr, u16)]) -> Result<PathBuf> {
    let mut list = String::new();
    for (addr, port) in targets {
        write!(list, "{{\"{addr}\", \"{port}\"}}, ").unwrap();
    }
    let lua = format!(
        r#"-- Written by `cargo xtask bench`.
local targets = {{ {list}}}
local next_target = 0

function setup(thread)
  if #targets > 0 then
    local t = targets[(next_target % #targets) + 1]
    next_target = next_target + 1
    thread.addr = wrk.lookup(t[1], t[2])[1]
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "{MARK} requests=%.0f duration_us=%.0f bytes=%.0f p50=%.0f p90=%.0f p99=%.0f p999=%.0f max=%.0f connect=%.0f read=%.0f write=%.0f status=%.0f timeout=%.0f\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"#
    );
    let path = dir.join(format!("{name}.lua"));
    fs::write(&path, lua).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Runs wrk against `url` from the client namespace (from `caller`, see
/// [`Topo::client_cmd`]) for `load.seconds` (bounded: killed 30 s past that) and parses the
/// script's line.
pub fn run(topo: &Topo, script: &Path, url: &str, load: Load, mode: Mode, caller: Option<&Path>) -> Result<Outcome> {
    let mut cmd = topo.client_cmd("wrk", caller);
    cmd.arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.seconds))
        .args(["--timeout", "5s", "-s"])
        .arg(script);
    if mode == Mode::Close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(url);
    let log = topo.dir.join("wrk.log");
    let mut wrk = Proc::spawn("wrk", cmd, &log)?;
    let status = wrk
        .wait_timeout(Duration::from_secs(load.seconds + 30))
        .with_context(|| format!("wrk did not finish within {} s", load.seconds + 30))?;
    let out = wrk.log();
    if !status.success() {
        bail!("wrk failed ({status}):\n{}", super::sys::tail(&out));
    }
    parse(&out).with_context(|| format!("no result line in wrk's output:\n{}", super::sys::tail(&out)))
}

fn parse(out: &str) -> Option<Outcome> {
    let line = out.lines().find_map(|l| l.strip_prefix(MARK))?;
    let field = |key: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    };
    let count = |key: &str| field(key).map(|v| v as u64);
    Some(Outcome {
        requests: count("requests")?,
        seconds: field("duration_us")? / 1e6,
        bytes: count("bytes")?,
        p50_us: field("p50")?,
        p90_us: field("p90")?,
        p99_us: field("p99")?,
        p999_us: field("p999")?,
        max_us: field("max")?,
        errors: Errors {
            connect: count("connect")?,
            read: count("read")?,
            write: count("write")?,
            status: count("status")?,
            timeout: count("timeout")?,
        },
    })
    .filter(|o| o.seconds > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_script_line() {
        let out = "Running 2s test\nxlb-bench-result requests=1000 duration_us=2000000 bytes=5 p50=10 p90=20 p99=30 p999=40 max=50 connect=0 read=1 write=0 status=2 timeout=0\n";
        let o = parse(out).unwrap();
        assert_eq!(o.requests, 1000);
        assert_eq!(o.rps(), 500.0);
        assert_eq!(o.p999_us, 40.0);
        assert_eq!(o.errors.total(), 3);
    }
}
