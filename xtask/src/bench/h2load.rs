//! HTTP/2 from clients: h2load (Debian's nghttp2-client) in the client namespace, h2c
//! with prior knowledge on `http://` and h2 by ALPN on `https://`. Each of its clients
//! is one connection with up to `STREAMS` requests in flight; its per-request log gives
//! the latency percentiles the summary does not (`--log-file`: start, status, duration).
use std::{fs, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};

use super::{
    sys::Proc,
    topo::Topo,
    wrk::{Errors, Load, Outcome},
};

/// Concurrent streams per connection.
pub const STREAMS: usize = 10;

/// Runs h2load against `url` for `load.seconds` with `load.connections` connections
/// (bounded: killed 30 s past that).
pub fn run(topo: &Topo, url: &str, load: Load) -> Result<Outcome> {
    let log_file = topo.dir.join("h2load-requests.tsv");
    let _ = fs::remove_file(&log_file);
    let mut cmd = topo.client.cmd("h2load");
    cmd.arg(format!("--threads={}", load.threads))
        .arg(format!("--clients={}", load.connections))
        .arg(format!("--max-concurrent-streams={STREAMS}"))
        .arg(format!("--duration={}", load.seconds))
        .arg("--log-file")
        .arg(&log_file)
        .arg(url);
    let log = topo.dir.join("h2load.log");
    let mut h2load = Proc::spawn("h2load", cmd, &log)?;
    let status =
        h2load.wait_timeout(Duration::from_secs(load.seconds + 30)).with_context(|| format!("h2load did not finish within {} s", load.seconds + 30))?;
    let out = h2load.log();
    if !status.success() {
        bail!("h2load failed ({status}):\n{}", super::sys::tail(&out));
    }
    let summary = parse_summary(&out).with_context(|| format!("no summary in h2load's output:\n{}", super::sys::tail(&out)))?;
    let durations = parse_log(&log_file)?;
    Ok(outcome(summary, durations, load.seconds as f64))
}

/// What h2load's summary says.
#[derive(Debug, PartialEq)]
struct Summary {
    /// Completed with a 2xx or 3xx.
    succeeded: u64,
    /// Not succeeded: `errored` (reset, network) and HTTP-level failures.
    failed: u64,
    errored: u64,
    bytes: u64,
}

/// `requests: 10 total, 10 started, 10 done, 9 succeeded, 1 failed, 0 errored, 0 timeout`,
/// `traffic: 1.2MB (1234) total, ...`.
fn parse_summary(out: &str) -> Option<Summary> {
    let after = |prefix: &str| out.lines().find_map(|l| l.trim().strip_prefix(prefix).map(str::to_owned));
    let count = |line: &str, word: &str| -> Option<u64> {
        line.split(',').find_map(|part| {
            let mut it = part.split_whitespace();
            let n = it.next()?.parse().ok()?;
            (it.next()? == word).then_some(n)
        })
    };
    let req = after("requests:")?;
    let traffic = after("traffic:")?;
    let bytes = traffic.split_once('(')?.1.split_once(')')?.0.trim().parse().ok()?;
    Some(Summary { succeeded: count(&req, "succeeded")?, failed: count(&req, "failed")?, errored: count(&req, "errored")?, bytes })
}

/// Durations (µs) of the requests that completed, from h2load's per-request log.
fn parse_log(path: &Path) -> Result<Vec<f64>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut cols = l.split('\t');
            let _start = cols.next()?;
            let status: i64 = cols.next()?.trim().parse().ok()?;
            let us: f64 = cols.next()?.trim().parse().ok()?;
            (status > 0).then_some(us)
        })
        .collect())
}

fn outcome(s: Summary, mut durations: Vec<f64>, seconds: f64) -> Outcome {
    durations.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if durations.is_empty() {
            return 0.0;
        }
        let i = ((p / 100.0) * (durations.len() - 1) as f64).round() as usize;
        durations[i]
    };
    Outcome {
        requests: s.succeeded,
        seconds,
        bytes: s.bytes,
        p50_us: pct(50.0),
        p90_us: pct(90.0),
        p99_us: pct(99.0),
        p999_us: pct(99.9),
        max_us: durations.last().copied().unwrap_or(0.0),
        errors: Errors { connect: 0, read: s.errored, write: 0, status: s.failed.saturating_sub(s.errored), timeout: 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_summary_and_the_log() {
        let out = "finished in 2.00s, 50000.00 req/s, 2.10MB/s\n\
                   requests: 100000 total, 100010 started, 100000 done, 99990 succeeded, 10 failed, 0 errored, 0 timeout\n\
                   status codes: 99980 2xx, 0 3xx, 10 4xx, 0 5xx\n\
                   traffic: 4.20MB (4400000) total, 1.00MB (1000000) headers (space savings 90.00%), 300.00KB (300000) data\n";
        let s = parse_summary(out).unwrap();
        assert_eq!(s, Summary { succeeded: 99990, failed: 10, errored: 0, bytes: 4_400_000 });
        let dir = std::env::temp_dir().join(format!("h2load-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log.tsv");
        fs::write(&log, "1700000000000000\t200\t300\n1700000000000001\t-1\t9\n1700000000000002\t200\t100\n").unwrap();
        let d = parse_log(&log).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(d, vec![300.0, 100.0]);
        let o = outcome(s, d, 2.0);
        assert_eq!((o.requests, o.p50_us, o.max_us, o.errors.total()), (99990, 300.0, 300.0, 10));
    }
}
